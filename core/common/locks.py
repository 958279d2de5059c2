"""Locks that keep two processes from editing one file, or writing one run directory, at the same time.

``edit_lock(path)``: an ``flock`` on the file itself for a read-check-write edit. Atomic replaces give the path a
new inode, so a waiter re-checks after it gets the lock and locks the new file instead: the second ``meta
--apply`` then sees the first one's result (and says "unchanged" or replaces it), instead of losing it.

``run_lock(out_dir)``: a lock file in the run directory, taken without waiting; a second run into the same
directory is refused with the pid and command of the one that holds it.
"""
from __future__ import annotations

import contextlib
import fcntl
import os
import time
from pathlib import Path

RUN_LOCK = ".sherpa-ncnn-wizard.lock"
EDIT_WAIT_SECONDS = 30.0


class LockError(Exception):
    """Someone else holds the lock; the message names them and what to do."""


@contextlib.contextmanager
def edit_lock(path: str | os.PathLike, wait: float = EDIT_WAIT_SECONDS):
    """Hold an exclusive lock on ``path`` (a regular file) for the duration of an edit."""
    path = Path(os.path.realpath(path))
    deadline = time.monotonic() + wait
    while True:
        try:
            fd = os.open(path, os.O_RDONLY)
        except OSError:
            yield  # nothing to lock (the edit itself will report the missing file)
            return
        try:
            _acquire(fd, deadline, f"{path} is being edited by another process; try again when it has finished")
            try:
                same = os.fstat(fd).st_ino == os.stat(path).st_ino
            except OSError:
                same = False
            if same:
                try:
                    yield
                finally:
                    fcntl.flock(fd, fcntl.LOCK_UN)
                return
        finally:
            os.close(fd)
        # the file was replaced while we waited: lock the new one


def _acquire(fd: int, deadline: float, message: str) -> None:
    while True:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            return
        except BlockingIOError:
            if time.monotonic() >= deadline:
                raise LockError(message) from None
            time.sleep(0.05)


class RunLock:
    """An exclusive, non-waiting lock on a run directory (held for the life of the object or until release)."""

    def __init__(self, out_dir: str | os.PathLike, command: str = ""):
        self.path = Path(out_dir) / RUN_LOCK
        self.fd: int | None = None
        self.command = command

    def acquire(self) -> "RunLock":
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o666)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            try:
                holder = os.read(fd, 4096).decode("utf-8", "replace").strip()
            except OSError:
                holder = ""
            os.close(fd)
            who = f" ({holder})" if holder else ""
            raise LockError(f"{self.path.parent}: another sherpa-ncnn-wizard run is writing to this directory{who}; "
                            "wait for it to finish, or choose another --out") from None
        os.ftruncate(fd, 0)
        os.write(fd, f"pid {os.getpid()}{': ' + self.command if self.command else ''}\n".encode())
        self.fd = fd
        return self

    def release(self) -> None:
        if self.fd is not None:
            try:
                fcntl.flock(self.fd, fcntl.LOCK_UN)
            finally:
                os.close(self.fd)
                self.fd = None

    def __enter__(self) -> "RunLock":
        return self.acquire()

    def __exit__(self, *exc) -> None:
        self.release()
