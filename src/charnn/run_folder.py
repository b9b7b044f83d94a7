"""The run folder: where one training run writes its checkpoints and metrics.

A run holds an exclusive lock on its folder for as long as it writes there (`charnn.locks`),
so a second `charnn train --out` or `--resume` on the same folder stops at once with an
error naming the process that writes it. Readers (generate, evaluate, serve, info) take no
lock and keep working on a run that is training.
"""

import contextlib
import shutil
from collections.abc import Iterator
from pathlib import Path

from charnn import checkpoint, locks
from charnn.errors import RunDirError


def check_new(run_dir: Path, overwrite: bool) -> None:
    """Refuse a folder that cannot take a new run; changes nothing."""
    run_dir = Path(run_dir)
    if run_dir.exists() and not run_dir.is_dir():
        raise RunDirError(f"--out {run_dir} is a file, not a folder")
    if run_dir.is_dir() and any(run_dir.iterdir()) and not overwrite:
        raise RunDirError(
            f"{run_dir} already holds files (another run?); pass --overwrite to replace it, "
            "--resume to continue it, or choose another --out"
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
            if created and not checkpoint.list_checkpoints(run_dir):
                shutil.rmtree(run_dir, ignore_errors=True)
            raise


@contextlib.contextmanager
def existing_run(run_dir: Path) -> Iterator[None]:
    """Hold the lock of an existing run's folder for the block, after tidying what a crash left there."""
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise RunDirError(f"no such run folder: {run_dir}")
    with locks.hold(run_dir, f"run folder {run_dir}"):
        checkpoint.recover_run_dir(run_dir)
        yield
