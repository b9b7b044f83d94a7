"""One writer per folder, with real processes: a second `charnn train` into a run that is
training, a `--resume` of it, and a `charnn prepare` into a folder being prepared stop at once
with an error naming the writer; readers keep working; a killed writer's lock never blocks."""

import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

from charnn import locks
from charnn.run_folder import list_checkpoints
from conftest import SRC, run_cli

SMALL = ["--embedding-dim", "8", "--hidden-size", "16", "--seq-len", "10", "--batch-size", "4", "--precision", "fp32",
         "--threads", "1", "--seed", "3"]  # fmt: skip


def _start_training(corpus: Path, run: Path) -> subprocess.Popen:
    env = dict(os.environ, PYTHONPATH=str(SRC), OMP_NUM_THREADS="1")
    # A writer that runs until it is killed: no early stopping (the default's patience would end it).
    argv = ["train", str(corpus), "--out", str(run), "--epochs", "100000", "--patience", "none", "--checkpoint-every",
            "5", *SMALL]  # fmt: skip
    return subprocess.Popen([sys.executable, "-m", "charnn", *argv], env=env, stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE, text=True)  # fmt: skip


def _wait_for_a_checkpoint(process: subprocess.Popen, run: Path) -> None:
    deadline = time.monotonic() + 300  # a safety net only: the condition is the checkpoint
    while not (run.is_dir() and list_checkpoints(run)):
        assert process.poll() is None, process.communicate()
        assert time.monotonic() < deadline, "no checkpoint"
        time.sleep(0.05)


def _one_line_error(result: subprocess.CompletedProcess) -> str:
    assert result.returncode == 2, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("charnn: error: "), result.stderr
    return lines[0]


def test_a_run_that_is_training_has_one_writer_and_any_number_of_readers(tiny_corpus, tmp_path):
    run = tmp_path / "live"
    writer = _start_training(tiny_corpus, run)
    try:
        _wait_for_a_checkpoint(writer, run)
        # A second run into the same folder, even with --overwrite, and a resume of it: refused at once.
        second = run_cli("train", str(tiny_corpus), "--out", str(run), "--overwrite", *SMALL)
        line = _one_line_error(second)
        assert f"run folder {run} is in use by process {writer.pid} (charnn train" in line, line
        resumed = run_cli("train", "--resume", str(run))
        assert f"is in use by process {writer.pid}" in _one_line_error(resumed)
        assert writer.poll() is None and list_checkpoints(run), "the refused writers touched the live run"
        # Readers need no lock.
        generated = run_cli("generate", str(run), "--prime", "Pip", "--length", "20", "--precision", "fp32")
        assert generated.returncode == 0, generated.stderr
        assert run_cli("info", str(run)).returncode == 0
    finally:
        writer.kill()  # SIGKILL: the operating system drops its lock with it
        writer.communicate()
    # The lock of a killed writer never blocks: the run resumes (and stops at once at its new limit).
    step = int(list_checkpoints(run)[-1].name.rsplit("_", 1)[-1])
    resumed = run_cli("train", "--resume", str(run), "--max-steps", str(step + 2))
    assert resumed.returncode == 0, resumed.stderr
    assert "none written" not in resumed.stderr


def test_prepare_refuses_a_folder_another_process_is_preparing(tiny_corpus, tmp_path):
    data = tmp_path / "data"
    data.mkdir()
    with locks.hold(data, f"data folder {data}"):  # this test's own process stands for the other writer
        line = _one_line_error(run_cli("prepare", str(tiny_corpus), "--out", str(data), "--overwrite"))
        assert f"data folder {data} is in use by process {os.getpid()}" in line, line
    prepared = run_cli("prepare", str(tiny_corpus), "--out", str(data))
    assert prepared.returncode == 0, prepared.stderr
    assert (data / "manifest.json").is_file()


def test_a_lock_dies_with_its_process(tmp_path):
    code = f"from charnn import locks; import os, pathlib; l = locks.Lock(pathlib.Path({str(tmp_path)!r}) / 'x'); "
    code += "assert l.acquire(); print(os.getpid(), flush=True); os.kill(os.getpid(), 9)"
    holder = subprocess.run([sys.executable, "-c", code], env=dict(os.environ, PYTHONPATH=str(SRC)),
                            capture_output=True, text=True)  # fmt: skip
    assert holder.returncode == -signal.SIGKILL
    lock = locks.Lock(tmp_path / "x")
    assert lock.acquire(), "the lock of a process killed with SIGKILL is still held"
    assert lock.holder().startswith(f"process {os.getpid()} (")
    other = locks.Lock(tmp_path / "x")
    assert not other.acquire()  # and it is exclusive
    lock.release()
    assert other.acquire()
    other.release()


def test_a_resumed_run_already_at_its_limit_names_its_last_checkpoint(tiny_run, tmp_path):
    run = tmp_path / "run"
    shutil.copytree(tiny_run, run)  # a copy: other tests share the run
    done = run_cli("train", "--resume", str(run), "--epochs", "2")
    assert done.returncode == 0, done.stderr
    assert f"last checkpoint: {list_checkpoints(run)[-1]}" in done.stderr, done.stderr


def test_a_corpus_that_is_not_a_regular_file_is_named_as_such(tmp_path):
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)
    for corpus in ("/dev/zero", str(fifo)):
        line = _one_line_error(run_cli("train", corpus, "--out", str(tmp_path / "run")))
        assert f"{corpus} is not a regular file or folder" in line, line
