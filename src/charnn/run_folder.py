"""The run folder: where one training run writes its checkpoints and metrics.

    RUN_DIR/ckpt_{epoch}           after each epoch (`charnn.checkpoint` folders)
    RUN_DIR/ckpt_{epoch}_{step}    when a run stops mid-epoch, or every --checkpoint-every steps
    RUN_DIR/best                   the lowest validation loss so far (no trainer state)
    RUN_DIR/metrics.jsonl          one JSON record per line
    RUN_DIR/loss.png               drawn from the metrics by `charnn.training.plot`

A run holds an exclusive lock on its folder for as long as it writes there (`charnn.locks`),
so a second `charnn train --out` or `--resume` on the same folder stops at once with an
error naming the process that writes it. Readers (generate, evaluate, serve, info) take no
lock and keep working on a run that is training.
"""

import contextlib
import json
import re
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch

from charnn import atomic, locks
from charnn.checkpoint import (
    METADATA,
    TRAINER_STATE,
    WEIGHTS,
    Checkpoint,
    is_checkpoint,
    read_checkpoint,
    save_checkpoint,
)
from charnn.errors import CheckpointError, RunDirError, TrainingError
from charnn.model import CharRNN
from charnn.vocab import Vocabulary

BEST = "best"
METRICS = "metrics.jsonl"
# The base model that ships inside the package (pretraining/README.md), found by this name
# wherever a checkpoint is asked for, unless a folder of that name exists where it is asked.
BASE_NAME = "base"
BASE_MODEL = Path(__file__).resolve().parent / "base"
_NUMBERED = re.compile(r"^ckpt_(\d+)(?:_(\d+))?$")


# --- a new run, or an existing one -----------------------------------------------------------


def check_new(run_dir: Path, overwrite: bool) -> None:
    """Refuse a folder that cannot take a new run; changes nothing."""
    run_dir = Path(run_dir)
    if run_dir.exists() and not run_dir.is_dir():
        raise RunDirError(f"{run_dir} is a file, not a folder")
    if run_dir.is_dir() and any(run_dir.iterdir()) and not overwrite:
        raise RunDirError(
            f"{run_dir} already holds files (another run?); pass `overwrite` to replace it, "
            "`resume` to continue it, or choose another folder"
        )


@contextlib.contextmanager
def new_run(run_dir: Path, overwrite: bool) -> Iterator[None]:
    """Create or empty `run_dir` for a new run and hold its lock for the block.

    A run that ends before writing any checkpoint leaves no folder behind if it made one.
    """
    run_dir = Path(run_dir)
    check_new(run_dir, overwrite)
    created = not run_dir.exists()
    try:
        run_dir.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        raise RunDirError(f"cannot create {run_dir}: {error.strerror}") from None
    with locks.hold(run_dir, f"run folder {run_dir}"):
        try:
            check_new(run_dir, overwrite)  # again: another run may have written here before we held the lock
            for child in run_dir.iterdir():
                shutil.rmtree(child) if child.is_dir() else child.unlink()
            yield
        except BaseException:
            if created and not list_checkpoints(run_dir):
                shutil.rmtree(run_dir, ignore_errors=True)
            raise


@contextlib.contextmanager
def existing_run(run_dir: Path) -> Iterator[None]:
    """Hold the lock of an existing run's folder for the block, after tidying what a crash left there."""
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise RunDirError(f"no such run folder: {run_dir}")
    with locks.hold(run_dir, f"run folder {run_dir}"):
        recover(run_dir)
        yield


def recover(run_dir: Path) -> None:
    """Tidy what a crash mid-write can leave: temporary folders, and a folder moved aside."""
    atomic.tidy(run_dir)


# --- its checkpoints -------------------------------------------------------------------------


def list_checkpoints(run_dir: Path) -> list[Path]:
    """The numbered checkpoints of a run, oldest first (by epoch, then step)."""
    found = []
    for child in Path(run_dir).iterdir():
        match = _NUMBERED.match(child.name)
        if match and is_checkpoint(child):
            # An epoch's final checkpoint comes after those written during that epoch.
            found.append(((int(match[1]), int(match[2]) if match[2] else 1 << 62), child))
    return [path for _, path in sorted(found)]


def newest_resumable(run_dir: Path) -> Path:
    """The newest checkpoint that a run can continue from (one with its trainer state)."""
    resumable = [p for p in list_checkpoints(run_dir) if (p / TRAINER_STATE).is_file()]
    if not resumable:
        raise RunDirError(f"{run_dir} holds no complete checkpoint to resume from; start a new run instead")
    return resumable[-1]


def best(run_dir: Path) -> Path | None:
    return Path(run_dir) / BEST if is_checkpoint(Path(run_dir) / BEST) else None


def resolve(path: Path) -> Path:
    """A checkpoint folder as it is; a run folder gives its best checkpoint, else its newest; the
    name `base` (where no such folder exists) the base model that ships with charnn."""
    path = Path(path)
    if not path.exists() and str(path) == BASE_NAME:
        if not is_checkpoint(BASE_MODEL):
            raise CheckpointError(f"the base model is not installed here ({BASE_MODEL} holds no checkpoint)")
        return BASE_MODEL
    if not path.exists():
        raise CheckpointError(f"no such checkpoint or run folder: {path}")
    if is_checkpoint(path):
        return path
    if not path.is_dir():
        raise CheckpointError(f"{path} is not a checkpoint folder (it needs {METADATA} and {WEIGHTS})")
    if is_checkpoint(path / BEST):
        return path / BEST
    checkpoints = list_checkpoints(path)
    if not checkpoints:
        raise CheckpointError(f"{path} holds no checkpoint (expected a folder with {METADATA} and {WEIGHTS})")
    return checkpoints[-1]


def holder(checkpoint_path: Path) -> Path:
    """The run folder a checkpoint belongs to; a checkpoint that stands alone is its own."""
    path = Path(checkpoint_path).resolve()
    folder = path.parent
    if path.name == BEST or _NUMBERED.match(path.name):
        if (folder / METRICS).is_file() or list_checkpoints(folder):
            return folder
    return path


def load_checkpoint(path: Path, device: str | torch.device = "cpu") -> Checkpoint:
    """Load a checkpoint folder, or the checkpoint a run folder points to (see `resolve`)."""
    return read_checkpoint(resolve(path), device)


def write_checkpoint(
    run_dir: Path,
    name: str,
    model: CharRNN,
    vocab: Vocabulary,
    *,
    training: dict[str, Any],
    corpus: dict[str, Any],
    trainer_state: dict[str, Any] | None = None,
    previous: Path | None = None,
) -> Path:
    """Write checkpoint RUN_DIR/name (see `save_checkpoint`); `previous` is the run's last one, named on failure."""
    path = Path(run_dir) / name
    try:
        return save_checkpoint(path, model, vocab, training=training, corpus=corpus, trainer_state=trainer_state)
    except OSError as error:
        raise TrainingError(
            f"cannot write checkpoint {path}: {error.strerror or error}; "
            f"the previous one ({previous or 'none yet'}) is intact"
        ) from None


def prune(run_dir: Path, keep_last: int) -> None:
    """Delete all but the newest `keep_last` numbered checkpoints (never `best`)."""
    for path in list_checkpoints(run_dir)[:-keep_last]:
        shutil.rmtree(path, ignore_errors=True)


# --- its metrics -----------------------------------------------------------------------------


def append_metrics(run_dir: Path, record: dict[str, Any]) -> None:
    path = Path(run_dir) / METRICS
    try:
        with open(path, "a", encoding="utf-8") as f:
            f.write(json.dumps(record) + "\n")
    except OSError as error:
        raise TrainingError(f"cannot write {path}: {error.strerror}") from None


def truncate_metrics(run_dir: Path, step: int) -> None:
    """Drop records written after the checkpoint being resumed from (and any torn last line)."""
    path = Path(run_dir) / METRICS
    if not path.exists():
        return
    kept = []
    for line in path.read_text(encoding="utf-8").splitlines():
        try:
            record = json.loads(line)
        except json.JSONDecodeError:
            continue
        if record.get("step", 0) <= step:
            kept.append(line)
    atomic.write_bytes(path, "".join(line + "\n" for line in kept).encode("utf-8"))
