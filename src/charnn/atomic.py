"""Writing files and folders so that a crash leaves the old version or the new one, never a mix.

Everything is written under a temporary name beside its target (`.NAME.tmp-PID`), flushed to
disk, then renamed into place; a folder being replaced is first moved aside (`.NAME.old-PID`).
`tidy` clears what a process killed mid-write leaves behind, and puts back a folder it had
moved aside but not yet replaced.

    write_bytes(path, data)                 # a file, replaced whole
    with replacing_folder(path) as tmp:     # a folder, filled in private, then renamed into place
        write_bytes(tmp / "a.json", data)
"""

import contextlib
import os
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import BinaryIO


def temporary(path: Path) -> Path:
    """The private name `path` is written under, beside it, until it is complete."""
    path = Path(path)
    return path.with_name(f".{path.name}.tmp-{os.getpid()}")


def is_temporary(path: Path) -> bool:
    """A name `temporary` or `replacing_folder` gives: a write in progress, or one a crash cut short."""
    name = Path(path).name
    return name.startswith(".") and (".tmp-" in name or ".old-" in name)


def write_bytes(path: Path, data: bytes) -> None:
    """Replace the file `path` with `data`; a failure (a full disk) leaves the old file as it was."""
    path = Path(path)
    tmp = temporary(path)
    try:
        with open(tmp, "wb") as f:
            f.write(data)
            commit(f, tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def commit(file: BinaryIO, tmp: Path, path: Path) -> None:
    """Flush `file`, open on `tmp` and complete, to disk, close it, and rename it to `path`."""
    file.flush()
    os.fsync(file.fileno())
    file.close()
    os.replace(tmp, path)
    _fsync(Path(path).parent)


@contextlib.contextmanager
def replacing_folder(path: Path) -> Iterator[Path]:
    """A new, empty private folder; when the block ends without an error it replaces `path`."""
    path = Path(path)
    tmp = temporary(path)
    shutil.rmtree(tmp, ignore_errors=True)
    try:
        tmp.mkdir(parents=True)
        yield tmp
        _fsync(tmp)
        _replace_folder(tmp, path)
        _fsync(path.parent)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def tidy(folder: Path) -> None:
    """Remove the temporaries a killed writer left in `folder`; put back a folder moved aside."""
    for child in Path(folder).iterdir():
        if not is_temporary(child):
            continue
        if ".tmp-" in child.name:
            _remove(child)
            continue
        original = child.with_name(child.name[1:].rsplit(".old-", 1)[0])
        if original.exists():
            _remove(child)
        else:
            os.rename(child, original)


def _replace_folder(source: Path, target: Path) -> None:
    # rename() cannot replace a non-empty folder, so the old one is moved aside first; a crash
    # between the two renames leaves it there for `tidy` to put back.
    if target.exists():
        old = target.with_name(f".{target.name}.old-{os.getpid()}")
        shutil.rmtree(old, ignore_errors=True)
        os.rename(target, old)
        os.rename(source, target)
        shutil.rmtree(old, ignore_errors=True)
    else:
        os.rename(source, target)


def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path, ignore_errors=True)
    else:
        path.unlink(missing_ok=True)


def _fsync(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
