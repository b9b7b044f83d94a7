"""The README's Python example and docs/export.md's ONNX example run as written (on small stand-ins)."""

import os
import re
import subprocess
import sys
from pathlib import Path

from conftest import SRC, TINY_TEXT

README = Path(__file__).resolve().parents[1] / "README.md"
EXPORT = Path(__file__).resolve().parents[1] / "docs" / "export.md"


def test_python_api_example_runs(tmp_path):
    section = README.read_text(encoding="utf-8").split("## Python API", 1)[1]
    code = re.search(r"```python\n(.*?)```", section, re.S)[1]
    corpora = tmp_path / "corpora"
    corpora.mkdir()
    (corpora / "great-expectations.txt").write_text("Pip. " + TINY_TEXT * 100, encoding="utf-8")
    env = dict(os.environ, PYTHONPATH=str(SRC), CHARNN_CORPUS_DIR=str(corpora))
    done = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, env=env, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith("max_steps ")
    assert (tmp_path / "runs" / "api-example").is_dir()


def test_onnx_example_runs(tmp_path, tiny_run):
    section = EXPORT.read_text(encoding="utf-8").split("## Export: ONNX and the browser", 1)[1]
    code = re.search(r"```python\n(.*?)```", section, re.S)[1]
    done = subprocess.run([sys.executable, "-m", "charnn", "export", str(tiny_run), "--out", "ge.onnx"], cwd=tmp_path,
                          env=dict(os.environ, PYTHONPATH=str(SRC)), capture_output=True, text=True)  # fmt: skip
    assert done.returncode == 0, done.stderr
    done = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, env=dict(os.environ, PYTHONPATH=str(SRC)),
                          capture_output=True, text=True)  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert len(done.stdout) > 100
