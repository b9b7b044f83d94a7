"""The speed and generation-quality benchmarks run on the real code paths; here, that they run.

Their figures are for docs/results.md and docs/log.md; these tests only catch a benchmark that no longer
starts or whose table lost a row.
"""

import os
import subprocess
import sys
from pathlib import Path

from conftest import SRC, TINY_TEXT

BENCHMARKS = SRC.parent / "benchmarks"


def run_benchmark(*args: str, **env_vars: str) -> str:
    env = dict(os.environ, PYTHONPATH=str(SRC), **env_vars)
    result = subprocess.run([sys.executable, *args], capture_output=True, text=True, env=env, timeout=600)
    assert result.returncode == 0, result.stderr[-2000:]
    return result.stdout


def test_generation_quality_compares_every_precision(tiny_run: Path):
    out = run_benchmark(str(BENCHMARKS / "generation_quality.py"), str(tiny_run), "--corpus",
                        str(tiny_run.parent / "corpus.txt"), "--streams", "4")  # fmt: skip
    for label in ("model.forward, fp32", "Stepper, fp32", "Stepper, bf16"):
        assert label in out
    # fp32 steps give the model's own loss.
    lines = {line[:28].strip(): line[28:].split()[0] for line in out.splitlines() if "nats/char" in line}
    assert lines["model.forward, fp32"] == lines["Stepper, fp32"]


def test_speed_quick_prints_its_table(tmp_path: Path):
    # Its text is great-expectations: a stand-in here, so that the run reads the same text wherever
    # it runs, and downloads nothing into the user's cache (the speed does not depend on the text).
    (tmp_path / "great-expectations.txt").write_text(TINY_TEXT * 1500, encoding="utf-8")
    out = run_benchmark(str(BENCHMARKS / "speed.py"), "--quick", "--threads", "1", CHARNN_CORPUS_DIR=str(tmp_path))
    assert "corpus: great-expectations" in out
    assert "| training, batch 64 x window 100 " in out and "| training, the same, 2 x GRU 512" in out
    assert out.count("| generation, 1 stream ") >= 3 and out.count("| generation, 64 streams ") >= 3


def test_finetune_prints_both_runs(tmp_path: Path):
    # Stand-ins for Great Expectations and the other novel; the figures depend on neither.
    (tmp_path / "great-expectations.txt").write_text(TINY_TEXT * 60, encoding="utf-8")
    (tmp_path / "dickens").mkdir()
    (tmp_path / "dickens" / "hard-times.txt").write_text("Ωmega — " + TINY_TEXT * 80, encoding="utf-8")
    out = run_benchmark(str(BENCHMARKS / "finetune.py"), "--parent-minutes", "0.01", "--minutes", "0.01", "--offset",
                        "0", "--chars", "8000", "--hidden-size", "16", "--embedding-dim", "8", "--precision", "fp32",
                        CHARNN_CORPUS_DIR=str(tmp_path))  # fmt: skip
    assert "| fine-tuned from the parent |" in out and "| from scratch |" in out
    assert "2 characters new to the parent: 'gΩ'" in out and "fine-tuned vs scratch:" in out


def test_export_quick_prints_its_tables(tmp_path: Path):
    (tmp_path / "great-expectations.txt").write_text(TINY_TEXT * 200, encoding="utf-8")
    out = run_benchmark(str(BENCHMARKS / "export.py"), "--quick", CHARNN_CORPUS_DIR=str(tmp_path))
    assert "| int8 ONNX |" in out and "| fp32 ONNX |" in out
    for label in ("onnxruntime (CPU, 1 thread), fp32 ONNX", "Stepper, fp32", "browser page"):
        assert label in out
    assert "not run" not in out  # Chromium and Playwright are there, as scripts/test.sh ensures


def test_score_speed_prints_its_table(tmp_path: Path):
    (tmp_path / "great-expectations.txt").write_text(TINY_TEXT * 100, encoding="utf-8")
    out = run_benchmark(str(BENCHMARKS / "score.py"), "--only", "speed", "--chars", "3000", "--repeats", "1",
                        "--steps", "2", CHARNN_CORPUS_DIR=str(tmp_path))  # fmt: skip
    assert "| training (train()" in out
    assert "| charnn score, --precision auto" in out and "| charnn score, --precision fp32" in out


def test_serve_logprobs_prints_its_rows(tmp_path: Path):
    (tmp_path / "great-expectations.txt").write_text(TINY_TEXT * 20, encoding="utf-8")
    out = run_benchmark(str(BENCHMARKS / "serve_logprobs.py"), "--chars", "100", "--repeats", "1", "--hidden-size",
                        "16", "--embedding-dim", "8", CHARNN_CORPUS_DIR=str(tmp_path))  # fmt: skip
    assert "generation, 1 stream" in out
    assert out.count("logprobs 5, fp32, pieces of ") == 3


def test_quality_ablation_prints_every_arm(tmp_path: Path):
    (tmp_path / "tinyshakespeare.txt").write_text(TINY_TEXT * 60, encoding="utf-8")
    small = ["--set", "hidden_size=16", "--set", "embedding_dim=8", "--set", "seq_len=10", "--set", "batch_size=4",
             "--set", 'precision="fp32"', "--set", "warmup_steps=2"]  # fmt: skip
    out = run_benchmark(str(BENCHMARKS / "quality.py"), "--ablation", "--corpora", "tinyshakespeare", "--max-steps",
                        "4", "--threads", "1", "--window", "16", "--num-windows", "8", *small,
                        CHARNN_CORPUS_DIR=str(tmp_path))  # fmt: skip
    for arm in ("recipe", "without dropout", "without weight average (EMA)",
                "without the initial weights' share in the average", "with a cosine schedule",
                "with stateful training", "with weight drop 0.2"):  # fmt: skip
        assert f"| {arm} | 4 |" in out


def test_defaults_trains_with_the_command_and_compares_with_the_ngram(tmp_path: Path):
    text = tmp_path / "novel.txt"
    text.write_text(TINY_TEXT * 60, encoding="utf-8")
    out = run_benchmark(str(BENCHMARKS / "defaults.py"), str(text), "--minutes", "0.02", "--threads", "1",
                        "--hidden-size", "16", "--embedding-dim", "8", "--seq-len", "10", "--batch-size", "4",
                        "--precision", "fp32")  # fmt: skip
    row = next(line for line in out.splitlines() if line.startswith("| novel.txt |"))
    cells = [c.strip() for c in row.strip("|").split("|")]
    assert cells[1] == f"{len(TINY_TEXT * 60):,}" and float(cells[4]) <= float(cells[5])  # best <= end
    assert cells[8].endswith("%")


def test_base_model_compares_fine_tuning_with_training_from_scratch(tmp_path: Path, tiny_run: Path):
    text = tmp_path / "unseen.txt"
    text.write_text("Zoë — " + TINY_TEXT * 60, encoding="utf-8")
    out = run_benchmark(str(BENCHMARKS / "base_model.py"), str(text), "--base", str(tiny_run), "--minutes", "0.01",
                        "0.02", "--scratch-minutes", "0.02", "--hidden-size", "32", "--embedding-dim", "16",
                        "--seq-len", "10", "--batch-size", "4", "--precision", "fp32")  # fmt: skip
    header = "| 5-gram | base alone | from base, 0.01 min | from base, 0.02 min | scratch, 0.02 min |"
    assert header in out
    row = next(line for line in out.splitlines() if line.startswith("| unseen.txt |"))
    cells = [c.strip() for c in row.strip("|").split("|")]
    assert len(cells) == 7 and all(c.endswith("%)") for c in cells[3:])


def test_constraints_times_each_arm(tiny_run: Path):
    out = run_benchmark(str(BENCHMARKS / "constraints.py"), str(tiny_run), "--repeats", "1", "--length", "40",
                        "--streams", "4", "--constrained", "1")  # fmt: skip
    assert "| where | streams | free | --ban eE | --allow a-m[:space:][:punct:] | --require Pip |" in out
    assert out.count("\n| alone | 1 | ") == 1 and out.count("\n| alone | 4 | ") == 1
    assert out.count("\n| batch, one request of 1 rows as named | 4 | ") == 1


def test_contention_times_whole_runs_beside_busy_processes(tmp_path: Path):
    text = tmp_path / "text.txt"
    text.write_text(TINY_TEXT * 20, encoding="utf-8")
    small = "--hidden-size 32 --batch-size 4 --seq-len 20"
    settings = ["--setting", "one thread, passive=--threads 1;OMP_WAIT_POLICY=PASSIVE"]
    out = run_benchmark(str(BENCHMARKS / "contention.py"), "--text", str(text), "--steps", "2", "--length", "200",
                        "--busy", "0", "1", "--rounds", "1", "--train-args", small, *settings)  # fmt: skip
    rows = [line for line in out.splitlines() if line.startswith(("| train ", "| generate "))]
    assert len(rows) == 4 and "| one thread, passive | 1 |" in out, out  # 2 commands x 2 conditions
    assert all(row.rstrip(" |").endswith("%") for row in rows), out
