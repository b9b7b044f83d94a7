"""Building the compiled kernels (charnn.fast.build), with real compiler runs: a build killed midway
leaves nothing that blocks the next command, a build another process holds is waited for only
so long, and two environments never share (and so never undo) a build."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from test_step import VOCAB, make_model

from charnn.checkpoint import save_checkpoint
from charnn.fast import build
from charnn.locks import Lock
from conftest import SRC

pytestmark = [
    pytest.mark.skipif(not build.cpu_supports_generation(), reason="no instruction set for the kernel here"),
    pytest.mark.skipif(build._switched_off(), reason="CHARNN_KERNELS=0: the kernels are switched off"),
]


def _here(role: str) -> build.Kernel:
    """The build of `role`'s kernel that this CPU runs."""
    return build.kernel_for(role, build.chosen_isa(role))


def _env(cache: Path, **extra: str) -> dict[str, str]:
    return {**os.environ, "CHARNN_CACHE": str(cache), "PYTHONPATH": os.pathsep.join([str(SRC), *sys.path]), **extra}


def _generate(checkpoint: Path, env: dict[str, str]) -> subprocess.CompletedProcess:
    argv = ["generate", str(checkpoint), "--prime", "Pip", "--length", "30", "--precision", "int8", "--json"]
    return subprocess.run([sys.executable, "-m", "charnn", *argv], env=env, capture_output=True, text=True,
                          timeout=900)  # fmt: skip


def _session(session: int) -> dict[int, str]:
    """The processes of session `session` (ninja starts each compiler in a process group of its own), by name."""
    found = {}
    for entry in Path("/proc").iterdir():
        try:
            if entry.name.isdigit() and int((entry / "stat").read_text().rsplit(")", 1)[1].split()[3]) == session:
                found[int(entry.name)] = (entry / "comm").read_text().strip()
        except (OSError, IndexError, ValueError):
            continue
    return found


def test_a_build_killed_midway_then_generate_gives_text(tmp_path):
    cache = tmp_path / "cache"
    builder = subprocess.Popen([sys.executable, "-m", "charnn.fast.build"], env=_env(cache), start_new_session=True,
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)  # fmt: skip
    # Wait for the compiler itself to run for the builder's child, then kill them all.
    deadline = time.monotonic() + 300  # a safety net only
    child = None
    while child is None or "cc1plus" not in _session(child).values():
        assert builder.poll() is None and time.monotonic() < deadline, "the build never started"
        private = list((cache / "kernels").glob("*.tmp-*")) if (cache / "kernels").is_dir() else []
        child = int(private[0].name.rsplit("-", 1)[1]) if private else None
        time.sleep(0.05)
    os.kill(builder.pid, signal.SIGKILL)
    for pid in _session(child):
        os.kill(pid, signal.SIGKILL)
    builder.wait()

    save_checkpoint(tmp_path / "ckpt_1", make_model(hidden_size=16), VOCAB, training={"epoch": 1}, corpus={})
    result = _generate(tmp_path / "ckpt_1", _env(cache, CHARNN_KERNEL_WAIT="900"))
    assert result.returncode == 0, result.stderr
    assert len(json.loads(result.stdout)["samples"][0]) == 30
    assert "compiling the int8 generation kernel" in result.stderr and "note:" not in result.stderr, result.stderr
    assert not list((cache / "kernels").glob("*.tmp-*"))
    assert len(list((cache / "kernels").glob(f"*/{_here(build.GENERATION).name}.so"))) == 1


def test_a_build_held_by_another_process_is_waited_for_only_so_long(tmp_path, monkeypatch):
    cache = tmp_path / "cache"
    monkeypatch.setenv("CHARNN_CACHE", str(cache))
    folder = build.build_folder(_here(build.GENERATION))
    folder.parent.mkdir(parents=True)
    lock = Lock(folder.with_name(folder.name + ".lock"))
    assert lock.acquire()  # this test's process stands for a build in progress that never ends
    try:
        save_checkpoint(tmp_path / "ckpt_1", make_model(hidden_size=16), VOCAB, training={"epoch": 1}, corpus={})
        result = _generate(tmp_path / "ckpt_1", _env(cache, CHARNN_KERNEL_WAIT="0"))
    finally:
        lock.release()
    assert result.returncode == 0, result.stderr
    assert len(json.loads(result.stdout)["samples"][0]) == 30
    notes = [line for line in result.stderr.splitlines() if line.startswith("charnn: note:")]
    assert len(notes) == 1 and "still being compiled by another process" in notes[0], result.stderr
    assert not folder.exists()


def test_each_environment_has_its_own_build(monkeypatch, tmp_path):
    monkeypatch.setenv("CHARNN_CACHE", str(tmp_path))
    here = build.build_folder(_here(build.GENERATION))
    assert build.build_folder(_here(build.GENERATION)) == here  # the same build, found again
    assert build.build_folder(_here(build.TRAINING)) != here
    monkeypatch.setattr(torch, "__file__", "/another/venv/lib/python3.11/site-packages/torch/__init__.py")
    assert build.build_folder(_here(build.GENERATION)) != here


def test_a_compiler_without_openmp_still_builds_a_training_kernel_that_matches_pytorch(tmp_path):
    """Apple's clang has no OpenMP. A compiler that refuses -fopenmp (g++ behind a wrapper here) still
    builds the training kernel, whose loops then run on one thread, with the same numbers."""
    compiler = tmp_path / "c++"
    compiler.write_text('#!/bin/sh\nfor word in "$@"; do [ "$word" = -fopenmp ] && { echo "unsupported option '
                        "'-fopenmp'\" >&2; exit 1; }; done\nexec g++ \"$@\"\n")  # fmt: skip
    compiler.chmod(0o755)
    check = ("import pytest, torch; from charnn.fast import build; "
             "from test_recurrence import test_same_logits_and_gradients_as_the_model as same; "
             "same(torch.float32, 1e-5, 48, 1, build.chosen_isa(build.TRAINING), pytest.MonkeyPatch())")  # fmt: skip
    env = _env(tmp_path / "cache", CXX=str(compiler), CHARNN_KERNEL_WAIT="900")
    env["PYTHONPATH"] += os.pathsep + str(Path(__file__).parent)
    result = subprocess.run([sys.executable, "-c", check], env=env, capture_output=True, text=True, timeout=900)
    assert result.returncode == 0, result.stderr
    assert "the C++ compiler has no OpenMP: the GRU training kernel is built without it" in result.stderr
    assert "could not be built" not in result.stderr, result.stderr
    assert len(list((tmp_path / "cache" / "kernels").glob(f"*/{_here(build.TRAINING).name}.so"))) == 1
