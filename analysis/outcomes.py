"""Per-image outcomes: which val images each (checkpoint, protocol, corruption, severity) got right.

Stored as one ``outcomes.npz`` beside ``results.csv``: per cell a bit array packed with
``numpy.packbits`` (one bit per val image, in the val set's order) under the key
``checkpoint|protocol|corruption|severity``, and the image count under the same key prefixed ``n:``.
The file is rewritten atomically after every cell, like the CSV, so an interrupted evaluation resumes.
Paired statistics (``analysis.stats``) need these: two checkpoints' accuracies on the same images are
correlated, and only the per-image outcomes let a difference be tested with that correlation.
"""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np

from fdbench.errors import FdbenchError
from fdbench.io import atomic_write_bytes

FILENAME = "outcomes.npz"
Key = tuple[str, str, str, int]  # (checkpoint, protocol, corruption, severity)


def _name(key: Key) -> str:
    checkpoint, protocol, corruption, severity = key
    return f"{checkpoint}|{protocol}|{corruption}|{int(severity)}"


def _key(name: str) -> Key:
    checkpoint, protocol, corruption, severity = name.rsplit("|", 3)
    return checkpoint, protocol, corruption, int(severity)


class Outcomes:
    """An in-memory map cell -> bool array of per-image correctness, saved as packed bits."""

    def __init__(self, cells: dict[Key, np.ndarray] | None = None):
        self.cells: dict[Key, np.ndarray] = dict(cells or {})

    def __contains__(self, key: Key) -> bool:
        return key in self.cells

    def add(self, key: Key, correct) -> None:
        self.cells[key] = np.asarray(correct, dtype=bool).ravel()

    def get(self, key: Key) -> np.ndarray:
        return self.cells[key]

    def checkpoints(self) -> list[str]:
        return list(dict.fromkeys(k[0] for k in self.cells))

    def save(self, path: str | Path) -> None:
        arrays = {}
        for key, correct in self.cells.items():
            arrays[_name(key)] = np.packbits(correct)
            arrays["n:" + _name(key)] = np.asarray(len(correct), dtype=np.int64)
        buffer = io.BytesIO()
        np.savez_compressed(buffer, **arrays)
        atomic_write_bytes(path, buffer.getvalue())

    @classmethod
    def load(cls, path: str | Path) -> "Outcomes":
        path = Path(path)
        if not path.exists():
            return cls()
        try:
            with np.load(path, allow_pickle=False) as data:
                names = [n for n in data.files if not n.startswith("n:")]
                cells = {_key(n): np.unpackbits(data[n], count=int(data["n:" + n])).astype(bool) for n in names}
        except (ValueError, OSError, KeyError) as err:
            raise FdbenchError(
                f"cannot read per-image outcomes {path}: {err}; use another --out or --overwrite"
            ) from None
        return cls(cells)
