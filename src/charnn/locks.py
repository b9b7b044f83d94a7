"""Exclusive locks that die with their process: one writer per run folder, per prepared-data
folder, per kernel build.

Each is an OS lock (flock) on the folder itself (or, for a build, on a small file). The
operating system releases it when its process ends, however it ends (SIGKILL included), so a
lock is never left stale, and a folder holds no lock file. A refused process names the holder,
found in /proc/locks where the system has it.

    with hold(run_dir, what=f"run folder {run_dir}"):
        ...  # write into run_dir; a second writer gets a LockedError at once
"""

import contextlib
import fcntl
import os
import time
from collections.abc import Iterator
from pathlib import Path

from charnn.errors import LockedError


class Lock:
    """An exclusive flock on `path` (a folder, or a file created if missing), held from `acquire` to `release`."""

    def __init__(self, path: Path):
        self.path = Path(path)
        self.fd: int | None = None

    def acquire(self, wait: float = 0.0) -> bool:
        """Take the lock, waiting up to `wait` seconds for another holder to let go; False if it did not."""
        flags = os.O_RDONLY if self.path.is_dir() else os.O_RDONLY | os.O_CREAT
        fd = os.open(self.path, flags, 0o644)
        deadline = time.monotonic() + wait
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                self.fd = fd
                return True
            except BlockingIOError:
                if time.monotonic() >= deadline:
                    os.close(fd)
                    return False
                time.sleep(0.1)  # flock has no timeout of its own

    def holder(self) -> str:
        """Who holds the lock: "process 123 (charnn train ...)", or "another process" where that cannot be told."""
        try:
            stat = self.path.stat()
            device = f"{os.major(stat.st_dev):02x}:{os.minor(stat.st_dev):02x}:{stat.st_ino}"
            with open("/proc/locks", encoding="ascii", errors="replace") as f:
                for line in f:
                    words = line.split()  # 1: FLOCK ADVISORY WRITE PID MAJOR:MINOR:INODE 0 EOF
                    if len(words) > 5 and words[1] == "FLOCK" and words[5] == device:
                        return f"process {words[4]}" + _command_line(int(words[4]))
        except (OSError, ValueError):
            pass
        return "another process"

    def release(self) -> None:
        if self.fd is not None:
            os.close(self.fd)  # closing the last descriptor drops the flock
            self.fd = None


def _command_line(pid: int) -> str:
    """ " (charnn train ...)" for process `pid`, or "" where it cannot be read."""
    try:
        argv = Path(f"/proc/{pid}/cmdline").read_bytes().decode(errors="replace").split("\0")[:-1]
    except OSError:
        return ""
    names = [Path(word).name for word in argv[:2]]  # charnn ..., or python .../bin/charnn ...
    if "-m" in argv[:-1] and argv[argv.index("-m") + 1] == "charnn":
        argv = ["charnn", *argv[argv.index("-m") + 2 :]]
    elif "charnn" in names:
        argv = ["charnn", *argv[names.index("charnn") + 1 :]]
    line = " ".join(argv)
    return f" ({line if len(line) <= 200 else line[:197] + '...'})" if line else ""


@contextlib.contextmanager
def hold(folder: Path, what: str) -> Iterator[Lock]:
    """Hold the lock of `folder` (which must exist) for the block; LockedError at once if another process has it."""
    lock = Lock(folder)
    try:
        acquired = lock.acquire()
    except OSError as error:
        raise LockedError(f"cannot lock {what}: {error.strerror or error}") from None
    if not acquired:
        raise LockedError(
            f"{what} is in use by {lock.holder()}; wait for it to finish or stop it, or choose another folder"
        )
    try:
        yield lock
    finally:
        lock.release()
