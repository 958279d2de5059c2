"""Writes that never leave a half-written or lost user file.

A temp file with a predictable name (``.NAME.<pid>.snw-tmp``) in the same directory is written and fsynced, then
renamed over the target with ``os.replace`` (atomic on POSIX). What the user had is kept: the target's mode, owner
and group; a symlink is edited through its target (the link stays a link); a read-only file is refused unless
``force``; a new file gets the umask's permissions like any other file the user creates. Temp files a killed run
left behind are recognised by their name and swept (:func:`sweep_temp_files`).

Backups are made once and never overwritten (the very first original survives any number of later edits), and
are themselves written atomically and read back before the edit goes ahead. :func:`atomic_write_pair` commits a
``.param``/``.bin`` pair so a consumer never sees a new ``.bin`` beside an old ``.param``.
"""
from __future__ import annotations

import json
import os
from pathlib import Path

BACKUP_SUFFIX = ".orig"
TEMP_SUFFIX = ".snw-tmp"
PAIR_JOURNAL_SUFFIX = ".snw-pair"


class WriteError(Exception):
    """A write failed; the target is unchanged. The message names the file and what to do."""


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def resolve_target(path: str | os.PathLike) -> Path:
    """The file a write to ``path`` changes: a symlink's final target (the link itself is kept)."""
    path = Path(path)
    if path.is_symlink():
        return Path(os.path.realpath(path))
    return path


def temp_name(path: Path) -> Path:
    """Where the new content of ``path`` is written before the rename; the pid makes leftovers attributable."""
    return path.with_name(f".{path.name}.{os.getpid()}{TEMP_SUFFIX}")


def atomic_write_bytes(path: str | os.PathLike, data: bytes, *, force: bool = False) -> Path:
    """Replace ``path`` with ``data`` atomically; returns the file actually written (a link's target)."""
    target = resolve_target(path)
    tmp = _write_temp(target, data, force=force)
    _commit(tmp, target)
    return target


def atomic_same_file(source: str | os.PathLike, path: str | os.PathLike) -> Path:
    """Make ``path`` hold ``source``'s bytes atomically without copying them where possible: a hard link (a run's
    intermediate copy of hundreds of MB of weights costs nothing), else a copy. Only for files nobody rewrites in
    place (the run's steps delete an output before writing it anew)."""
    import shutil
    target = resolve_target(path)
    tmp = temp_name(target)
    _unlink(tmp)
    try:
        os.link(source, tmp)
    except OSError:  # another file system, or links not allowed: copy
        try:
            shutil.copyfile(source, tmp)
        except OSError as exc:
            _unlink(tmp)
            raise WriteError(f"{target}: cannot be written from {source} ({exc.strerror})") from None
    _commit(tmp, target)
    return target


def _write_temp(target: Path, data: bytes, *, force: bool = False) -> Path:
    directory = target.parent
    try:
        st = os.stat(target) if target.exists() else None
    except OSError as exc:
        raise WriteError(f"{target}: cannot read its attributes ({exc.strerror})") from None
    if st is not None and not _is_regular(st):
        raise WriteError(f"{target}: not a regular file (a directory or device); choose a file path")
    if st is not None and not force and not (st.st_mode & 0o222):
        raise WriteError(f"{target}: the file is read-only; make it writable (chmod u+w) if it should be changed")
    tmp = temp_name(target)
    try:
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o666)  # the umask applies, as for any new file
    except OSError as exc:
        raise WriteError(f"{target}: cannot write in {directory} ({exc.strerror}); "
                         "check that the directory exists and is writable") from None
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        if st is not None:
            os.chmod(tmp, st.st_mode & 0o7777)
            if (st.st_uid, st.st_gid) != _owner(tmp):
                try:
                    os.chown(tmp, st.st_uid, st.st_gid)
                except PermissionError:
                    pass  # only root can give a file away; as the owner, the file stays ours anyway
    except OSError as exc:
        _unlink(tmp)
        raise WriteError(_space_message(target, exc, len(data))) from None
    return tmp


def _commit(tmp: Path, target: Path) -> None:
    try:
        os.replace(tmp, target)
    except OSError as exc:
        _unlink(tmp)
        raise WriteError(f"{target}: writing failed ({exc.strerror}); the original is unchanged") from None
    _fsync_dir(target.parent)


def atomic_write_pair(param: str | os.PathLike, param_data: bytes, binary: str | os.PathLike,
                      bin_data: bytes) -> None:
    """Write a ``.param`` and its ``.bin`` so they change together.

    Both are written to temp files first; a journal naming them is written; the old ``.param`` is removed, the
    ``.bin`` renamed, the ``.param`` renamed last, the journal removed. A kill at any point leaves either the old
    pair, or a journal that :func:`recover_pairs` (run by :func:`sweep_temp_files`) rolls forward — never a new
    ``.bin`` beside an old ``.param`` that a loader would accept.
    """
    param, binary = resolve_target(param), resolve_target(binary)
    tmp_bin = _write_temp(binary, bin_data)
    try:
        tmp_param = _write_temp(param, param_data)
    except WriteError:
        _unlink(tmp_bin)
        raise
    journal = param.with_name(f".{param.name}{PAIR_JOURNAL_SUFFIX}")
    moves = [[str(tmp_bin), str(binary)], [str(tmp_param), str(param)]]
    try:
        journal.write_text(json.dumps(moves))
        _fsync_dir(param.parent)
        if param.exists():
            param.unlink()
    except OSError as exc:
        _unlink(tmp_bin), _unlink(tmp_param), _unlink(journal)
        raise WriteError(f"{param}: writing failed ({exc.strerror}); the original pair is unchanged") from None
    _commit(tmp_bin, binary)
    _commit(tmp_param, param)
    _unlink(journal)
    _fsync_dir(param.parent)


def recover_pairs(directory: str | os.PathLike) -> list[str]:
    """Finish the pair commits a killed process left half done (their temp files are whole: they were fsynced)."""
    notes = []
    for journal in Path(directory).glob(f".*{PAIR_JOURNAL_SUFFIX}"):
        try:
            moves = json.loads(journal.read_text())
            for src, dst in moves:
                if Path(src).exists():
                    os.replace(src, dst)
            notes.append(f"completed an interrupted write of {moves[-1][1]}")
        except (OSError, ValueError, TypeError) as exc:
            notes.append(f"{journal}: could not complete an interrupted write ({exc}); run the step again")
            continue
        _unlink(journal)
    return notes


def sweep_temp_files(directory: str | os.PathLike) -> list[str]:
    """Remove temp files of processes that are gone (after finishing their pair commits); say what was removed."""
    directory = Path(directory)
    if not directory.is_dir():
        return []
    notes = recover_pairs(directory)
    for tmp in directory.glob(f".*{TEMP_SUFFIX}"):
        pid = tmp.name[: -len(TEMP_SUFFIX)].rsplit(".", 1)[-1]
        if pid.isdigit() and int(pid) != os.getpid() and _alive(int(pid)):
            continue
        try:
            size = tmp.stat().st_size
            tmp.unlink()
            notes.append(f"removed {tmp.name} ({size:,} bytes) left by an interrupted run")
        except OSError:
            pass
    return notes


def read_if_unchanged(path: str | os.PathLike, sha256: str, redo: str) -> bytes:
    """The file's bytes, provided they are still the ones a preview was made from (``sha256``); WriteError
    otherwise, telling the user to ``redo`` the preview (nothing is written over a file changed meanwhile)."""
    import hashlib
    path = Path(path)
    try:
        current = path.read_bytes()
    except OSError as exc:
        raise WriteError(f"{path}: cannot be read ({exc.strerror})") from None
    if hashlib.sha256(current).hexdigest() != sha256:
        raise WriteError(f"{path}: the file changed since the {redo} was made; {redo} it again before writing")
    return current


def backup_once(path: str | os.PathLike, current: bytes | None = None) -> Path:
    """Copy ``path`` to ``path.orig`` unless that backup already exists; return the backup path.

    The backup is written atomically and read back: a kill leaves no backup or a whole one, never a truncated one.
    """
    path = resolve_target(path)
    backup = path.with_name(path.name + BACKUP_SUFFIX)
    if backup.exists():
        return backup
    try:
        data = path.read_bytes() if current is None else current
        atomic_write_bytes(backup, data)
        st = path.stat()
        os.chmod(backup, st.st_mode & 0o7777)
        if backup.read_bytes() != data:
            _unlink(backup)
            raise WriteError("the backup read back differs")
    except OSError as exc:
        raise WriteError(f"{backup}: cannot write the backup ({exc.strerror}); nothing was changed") from None
    except WriteError as exc:
        raise WriteError(f"{backup}: cannot write the backup ({exc}); nothing was changed") from None
    return backup


def _space_message(target: Path, exc: OSError, size: int) -> str:
    import errno
    if exc.errno == errno.ENOSPC:
        return (f"{target}: the disk is full (needed {size:,} bytes in {target.parent}); free some space and run "
                "again (a run continues with --resume); the original is unchanged")
    return f"{target}: writing failed ({exc.strerror}); the original is unchanged"


def _is_regular(st: os.stat_result) -> bool:
    import stat
    return stat.S_ISREG(st.st_mode)


def _owner(path: Path) -> tuple[int, int]:
    st = os.stat(path)
    return st.st_uid, st.st_gid


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _unlink(path: Path) -> None:
    try:
        os.unlink(path)
    except OSError:
        pass


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
