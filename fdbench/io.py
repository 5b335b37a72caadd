"""Atomic file writes, tolerant reads, file fingerprints and the progress helper: every writer and
every long loop goes through here.

Atomic means: write to a temporary file in the same folder, flush and fsync, then ``os.replace``.
A crash at any point leaves either the old file or the new one, never a truncated mix.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import math
import os
import shutil
import sys
import tempfile
from pathlib import Path
from typing import Any, Iterable, Iterator

__all__ = [
    "atomic_open",
    "atomic_write_bytes",
    "atomic_write_text",
    "atomic_write_json",
    "atomic_write_csv",
    "atomic_torch_save",
    "read_json",
    "json_safe",
    "file_sha256",
    "progress",
    "remove_stale_temps",
]


@contextlib.contextmanager
def atomic_open(path: str | os.PathLike, mode: str = "wb") -> Iterator[io.IOBase]:
    """Open a temp file next to ``path``; on clean exit it replaces ``path``, on error it vanishes."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        os.chmod(tmp, 0o666 & ~_umask())  # mkstemp makes 0600 files; results should read like open()'s
        with os.fdopen(fd, mode) as fh:
            yield fh
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


def remove_stale_temps(folder: str | os.PathLike, depth: int = 1) -> int:
    """Remove the ``.*.tmp`` files that writes interrupted by a kill left in ``folder`` and its
    sub-folders (``depth`` levels); returns how many. Call it only while holding the folder's lock
    (:func:`fdbench.lock.lock_folder`): then no writer of ours is in flight. A sub-folder with a
    lock file of its own belongs to another command and is left alone."""
    folder, removed = Path(folder), 0
    if not folder.is_dir():
        return 0
    levels = [folder]
    for level in range(depth + 1):
        below = []
        for here in levels:
            if level and (here / ".fdbench.lock").exists():
                continue
            for entry in here.iterdir():
                if entry.is_file() and entry.name.startswith(".") and entry.name.endswith(".tmp"):
                    entry.unlink(missing_ok=True)
                    removed += 1
                elif entry.is_dir() and not entry.is_symlink():
                    below.append(entry)
        levels = below
    return removed


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


@contextlib.contextmanager
def folder_written_atomically(out: str | os.PathLike, *, replace: bool, marker: str) -> Iterator[Path]:
    """A temporary sibling of ``out`` to fill; when the block ends without an error it becomes ``out``
    in one rename (readers never see a half-written folder; a kill leaves only the ``.tmp`` sibling).

    ``replace``: ``out`` holds an old folder of ours, swapped out only once the new one is complete (an
    empty folder at ``out`` is swapped out too). Otherwise a folder that another process completed first at ``out``
    (it holds ``marker``) is kept and ours dropped: both wrote the same deterministic content."""
    out = Path(out)
    replace = replace or (out.is_dir() and not any(out.iterdir()))
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.", suffix=".tmp", dir=out.parent))
    try:
        yield tmp
        os.chmod(tmp, 0o777 & ~_umask())  # mkdtemp makes 0700 folders; ours should read like mkdir's
        if replace:
            swap_folder_into_place(tmp, out)
        else:
            move_folder_into_place(tmp, out, marker)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def swap_folder_into_place(tmp: Path, out: Path) -> None:
    """Replace the old folder only once the new one is complete: rename old aside, new in, drop old.

    A kill between the two renames leaves the complete old folder under ``.<name>.*.old`` beside
    ``out`` (never nothing)."""
    old = Path(tempfile.mkdtemp(prefix=f".{out.name}.", suffix=".old", dir=out.parent))
    os.rmdir(old)
    os.rename(out, old)
    try:
        os.rename(tmp, out)
    except BaseException:
        os.rename(old, out)
        raise
    shutil.rmtree(old, ignore_errors=True)


def move_folder_into_place(tmp: Path, out: Path, marker: str) -> None:
    """Rename ``tmp`` to ``out``; when another process finished the same folder first (two commands
    started at once on a fresh cache), keep its byte-identical copy and drop ours."""
    try:
        os.replace(tmp, out)
    except OSError:
        if not (out / marker).exists():
            raise
        shutil.rmtree(tmp, ignore_errors=True)


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> None:
    with atomic_open(path, "wb") as fh:
        fh.write(data)


def atomic_write_text(path: str | os.PathLike, text: str) -> None:
    with atomic_open(path, "w") as fh:
        fh.write(text)


def atomic_write_json(path: str | os.PathLike, obj: Any) -> None:
    atomic_write_text(path, json.dumps(obj, indent=2, sort_keys=False, default=_json_default) + "\n")


def _json_default(obj: Any) -> Any:
    # numpy scalars and Paths show up in summaries; write them as plain JSON values
    if hasattr(obj, "item"):
        return obj.item()
    if isinstance(obj, os.PathLike):
        return os.fspath(obj)
    raise TypeError(f"not JSON serialisable: {type(obj).__name__}")


def read_json(path: str | os.PathLike, default: Any = None) -> Any:
    """The JSON value in ``path``, or ``default`` when the file is missing or unreadable (a report
    or a resume check then treats it as absent instead of failing)."""
    try:
        return json.loads(Path(path).read_text())
    except (OSError, ValueError):
        return default


def json_safe(obj: Any) -> Any:
    """``obj`` with NaN floats as ``None`` (JSON has no NaN), string keys and sets as lists."""
    if isinstance(obj, dict):
        return {str(k): json_safe(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple, set)):
        return [json_safe(v) for v in obj]
    if isinstance(obj, float) and math.isnan(obj):
        return None
    return obj


def file_sha256(path: str | os.PathLike) -> str:
    """The SHA-256 hex digest of a file, read in 1 MiB blocks."""
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def atomic_write_csv(path: str | os.PathLike, frame) -> None:
    """Write a pandas DataFrame as CSV, atomically, without the index."""
    with atomic_open(path, "w") as fh:
        frame.to_csv(fh, index=False)


def atomic_torch_save(obj: Any, path: str | os.PathLike) -> None:
    import torch

    with atomic_open(path, "wb") as fh:
        sink = _RecordingWriter(fh)
        try:
            torch.save(obj, sink)
        except RuntimeError:
            # torch's zip writer turns a failed write (ENOSPC, EIO) into an opaque RuntimeError;
            # raise the OS error itself so the CLI can name it in one line
            if sink.error is not None:
                raise sink.error from None
            raise


class _RecordingWriter:
    """A write-only file wrapper that remembers the first OSError raised by ``write``."""

    def __init__(self, fh):
        self._fh, self.error = fh, None

    def write(self, data) -> int:
        try:
            return self._fh.write(data)
        except OSError as err:
            self.error = self.error or err
            raise

    def flush(self) -> None:
        self._fh.flush()


def progress(
    iterable: Iterable | None = None,
    *,
    total: int | None = None,
    desc: str = "",
    unit: str = "it",
    disable: bool | None = None,
    **kwargs,
):
    """The one progress bar: tqdm on stderr, silent when stderr is not a terminal unless forced.

    ``FDBENCH_PROGRESS=1`` forces bars on (e.g. in logs), ``FDBENCH_PROGRESS=0`` turns them off.
    """
    from tqdm.auto import tqdm

    if disable is None:
        env = os.environ.get("FDBENCH_PROGRESS")
        disable = (env == "0") if env is not None else not sys.stderr.isatty()
    return tqdm(iterable, total=total, desc=desc, unit=unit, disable=disable, dynamic_ncols=True, leave=False, **kwargs)
