"""A crash test: kill -9 a training run at random moments, some during a checkpoint write,
resume each time, and end with exactly the weights of a run that was never interrupted.

Nothing depends on the machine's speed: the random moments are drawn in units of the time
between two checkpoints, measured in the same test, and a kill meant for a checkpoint write
freezes the process first and checks that the write is still under way."""

import os
import random
import signal
import subprocess
import sys
import time

import torch
from safetensors.torch import load_file

from charnn.checkpoint import WEIGHTS
from charnn.run_folder import list_checkpoints, load_checkpoint
from conftest import SRC, TINY_TEXT

SMALL = ["--embedding-dim", "8", "--hidden-size", "24", "--seq-len", "10", "--batch-size", "4", "--precision",
         "fp32", "--threads", "1", "--dropout", "0.1", "--num-layers", "2", "--checkpoint-every", "4", "--epochs", "4",
         "--eval-every", "7", "--seed", "5"]  # fmt: skip


def _start(*args):
    env = dict(os.environ, PYTHONPATH=str(SRC), OMP_NUM_THREADS="1")
    return subprocess.Popen([sys.executable, "-m", "charnn", "train", *args], env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)  # fmt: skip


def _newest_step(run):
    checkpoints = list_checkpoints(run) if run.exists() else []
    return len(checkpoints), (checkpoints[-1].name if checkpoints else None)


def _wait_for_progress(process, run, before, timeout=120):  # the timeout is only a safety net
    """Wait until a checkpoint newer than `before` exists; False if the process ended first."""
    deadline = time.monotonic() + timeout
    while _newest_step(run) == before:
        if process.poll() is not None:
            return False
        assert time.monotonic() < deadline, "no progress"
        time.sleep(0.01)
    return True


def _writing(run) -> bool:
    return any(".tmp-" in name for name in os.listdir(run))


def _state(process) -> str:
    """The process's state letter in /proc: R, S, D, T (stopped), Z (ended, not yet reaped), ..."""
    with open(f"/proc/{process.pid}/stat") as f:
        return f.read().rsplit(")", 1)[1].split()[0]


def _stopped_in_a_write(process, run, timeout=120) -> bool:
    """Spin until a checkpoint is being written (its temporary folder exists), then stop the process
    (SIGSTOP) there: True once it is stopped with the write still under way. A write that ended
    before the stop took hold is let go on (SIGCONT) and the next one tried. False if it ended."""
    deadline = time.monotonic() + timeout  # only a safety net
    while process.poll() is None:
        assert time.monotonic() < deadline, "no checkpoint write seen"
        if not _writing(run):
            continue
        process.send_signal(signal.SIGSTOP)
        while (state := _state(process)) not in "TtZ":
            assert time.monotonic() < deadline, f"the process did not stop ({state})"
        if state == "Z":
            return False
        if _writing(run):
            return True
        process.send_signal(signal.SIGCONT)
    return False


def test_sigkill_at_random_moments_then_resume_gives_identical_weights(tmp_path):
    corpus = tmp_path / "corpus.txt"
    corpus.write_text(TINY_TEXT * 40, encoding="utf-8")
    straight = tmp_path / "straight"
    done = _start(str(corpus), "--out", str(straight), *SMALL)
    assert done.wait(timeout=300) == 0, done.stderr.read()
    # The time between two checkpoints here and now (training time, without the start-up).
    training_seconds = load_checkpoint(straight / "ckpt_4").training["elapsed_seconds"]
    between_checkpoints = training_seconds / len(list_checkpoints(straight))

    run = tmp_path / "killed"
    rng = random.Random(7)
    process = _start(str(corpus), "--out", str(run), *SMALL)
    kills, during_write = 0, 0
    while kills < 6:
        before = _newest_step(run)
        if not _wait_for_progress(process, run, before):
            break  # finished before we could kill it again
        if kills % 2:
            # Stop the process inside a checkpoint write and kill it there.
            if not _stopped_in_a_write(process, run):
                break
        else:
            # Anywhere within the next two checkpoints, however fast they come.
            time.sleep(rng.uniform(0, 2) * between_checkpoints)
        process.send_signal(signal.SIGKILL)
        process.wait()
        kills += 1
        during_write += any(".tmp-" in name for name in os.listdir(run))
        process = _start("--resume", str(run))
    assert process.wait(timeout=300) == 0, process.stderr.read()
    print(f"\n{kills} kills, {during_write} of them during a checkpoint write")
    assert kills >= 5
    assert during_write >= 1  # at least one kill left a half-written checkpoint behind

    straight_names = [p.name for p in list_checkpoints(straight)]
    assert straight_names[-1] == "ckpt_4"
    for name in straight_names:
        if (run / name).exists():
            a, b = load_file(straight / name / WEIGHTS), load_file(run / name / WEIGHTS)
            assert all(torch.equal(a[k], b[k]) for k in a), name
    final_a, final_b = load_file(straight / "ckpt_4" / WEIGHTS), load_file(run / "ckpt_4" / WEIGHTS)
    assert all(torch.equal(final_a[k], final_b[k]) for k in final_a)
    assert not [p for p in run.iterdir() if ".tmp-" in p.name or ".old-" in p.name]
