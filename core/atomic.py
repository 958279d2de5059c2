"""Writes that never leave a half-written or lost user file.

A temp file in the same directory is written and fsynced, then renamed over
the target with ``os.replace`` (atomic on POSIX); the original's permission
bits are kept. A backup is made once and never overwritten, so the very first
original survives any number of later edits.
"""
from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path

BACKUP_SUFFIX = ".orig"


class WriteError(Exception):
    """A write failed; the target is unchanged. The message names the file and what to do."""


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> None:
    path = Path(path)
    directory = path.parent
    try:
        mode = path.stat().st_mode & 0o7777 if path.exists() else None
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=directory)
    except OSError as exc:
        raise WriteError(f"{path}: cannot write in {directory} ({exc.strerror}); "
                         "check that the directory is writable") from None
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        if mode is not None:
            os.chmod(tmp, mode)
        os.replace(tmp, path)
    except OSError as exc:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise WriteError(f"{path}: writing failed ({exc.strerror}); the original is unchanged") from None
    _fsync_dir(directory)


def backup_once(path: str | os.PathLike, current: bytes | None = None) -> Path:
    """Copy ``path`` to ``path.orig`` unless that backup already exists; return the backup path."""
    path = Path(path)
    backup = path.with_name(path.name + BACKUP_SUFFIX)
    if backup.exists():
        return backup
    try:
        if current is None:
            shutil.copy2(path, backup)
        else:
            atomic_write_bytes(backup, current)
            shutil.copystat(path, backup)
    except (OSError, WriteError) as exc:
        raise WriteError(f"{backup}: cannot write the backup ({exc}); nothing was changed") from None
    return backup


def _fsync_dir(directory: Path) -> None:
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)
