"""One writer per output folder: an exclusive advisory lock on ``<folder>/.fdbench.lock``.

``fcntl.flock`` locks belong to the open file, so the kernel drops them when the process exits or
is killed (kill -9 included): a dead holder's lock is reclaimed by the next command without any
staleness guess. A clean exit removes the file; the file keeps the holder's PID and command so a refused second writer can say
who holds the folder. Locks are re-entrant within one process (the demo runs commands in-process).
"""

from __future__ import annotations

import atexit
import contextlib
import fcntl
import os
from pathlib import Path

import click

from fdbench.errors import FdbenchError

LOCK_NAME = ".fdbench.lock"
_held: dict[str, list] = {}  # resolved lock file -> [fd, depth, folders this lock created]


class FolderLock:
    def __init__(self, key: str):
        self.key, self.released = key, False

    def release(self) -> None:
        entry = _held.get(self.key)
        if entry is None or self.released:
            return
        self.released = True
        entry[1] -= 1
        if entry[1] <= 0:
            _held.pop(self.key, None)
            try:
                # removed while still held, so no other process can be holding this inode; a
                # killed process leaves the file behind, unlocked, and the next command reuses it
                with contextlib.suppress(OSError):
                    os.unlink(self.key)
                fcntl.flock(entry[0], fcntl.LOCK_UN)
            finally:
                os.close(entry[0])
            # a command that failed before writing anything leaves no empty output folder behind
            # (only folders it created, deepest first; rmdir refuses a folder that holds anything)
            for folder in entry[2]:
                try:
                    os.rmdir(folder)
                except OSError:
                    break

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.release()


def lock_folder(folder: str | os.PathLike, command: str, *, name: str = LOCK_NAME) -> FolderLock:
    """Create ``folder`` if needed and hold its lock; FdbenchError naming the holder if taken.

    ``name`` lets a command that swaps a whole folder (make-dataset) lock a sibling file instead.
    The lock is released by ``release()`` / leaving the ``with`` block, at exit, or by the kernel
    when the process dies.
    """
    folder = Path(folder)
    created = [p for p in [folder.absolute(), *folder.absolute().parents] if not p.exists()]  # deepest first
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise FdbenchError(f"cannot create output folder {folder}: {err.strerror}") from None
    key = str(folder.resolve() / name)
    if key in _held:
        _held[key][1] += 1
        return _until_command_ends(FolderLock(key))
    path = Path(key)
    while True:
        try:
            fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        except FileNotFoundError:  # a holder that had created the folder just removed it, empty
            folder.mkdir(parents=True, exist_ok=True)
            continue
        except OSError as err:
            raise FdbenchError(f"cannot write to output folder {folder}: {err.strerror}") from None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = _read_holder(fd)
            os.close(fd)
            raise FdbenchError(
                f"{folder} is in use by another fdbench process ({holder}); wait for it to "
                f"finish or use another output folder"
            ) from None
        # the holder we waited on may have removed the file on release: lock the file now at `path`
        try:
            if os.fstat(fd).st_ino == os.stat(path).st_ino:
                break
        except FileNotFoundError:
            pass
        os.close(fd)
    os.ftruncate(fd, 0)
    os.pwrite(fd, f"{os.getpid()} {command}\n".encode(), 0)
    _held[key] = [fd, 1, [str(p) for p in created]]
    return _until_command_ends(FolderLock(key))


def _until_command_ends(lock: FolderLock) -> FolderLock:
    # inside a CLI command the lock ends with the command (in-process callers run several)
    ctx = click.get_current_context(silent=True)
    if ctx is not None:
        ctx.call_on_close(lock.release)
    return lock


def _read_holder(fd: int) -> str:
    text = os.pread(fd, 200, 0).decode(errors="replace").strip()
    pid, _, command = text.partition(" ")
    return f"PID {pid}, {command}" if pid.isdigit() else "PID unknown"


@atexit.register
def _release_all() -> None:
    for key in list(_held):
        _held[key][1] = 1
        FolderLock(key).release()
