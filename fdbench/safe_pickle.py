"""Read a pickle of plain data without ever running code from it.

A pickle names functions to call while it loads (``GLOBAL`` + ``REDUCE``): ``pickle.load`` on a
stranger's file can call ``os.system``. :func:`load_plain_pickle` uses an unpickler whose
``find_class`` admits only the few numpy callables that rebuild arrays, dtypes and numpy scalars
(``numpy.core.multiarray._reconstruct`` / ``numpy._core.multiarray._reconstruct``, ``numpy.ndarray``,
``numpy.dtype``, ``numpy.(_)core.numeric._frombuffer`` (protocol 5), ``numpy.core.multiarray.scalar`` / ``numpy._core.multiarray.scalar``, and
``_codecs.encode`` restricted to the str -> latin-1 bytes call protocol 2 uses for buffers, and ``bytes``); lists,
tuples, dicts, sets, numbers, strings and bytes need no global at all. Any other global is refused
before it is called, with a one-line :class:`~fdbench.errors.FdbenchError`.

The revisited Oxford/Paris ground truth (``gnd_roxford5k.pkl``, ``gnd_rparis6k.pkl``) is a dict of
lists of strings, dicts of integer numpy arrays and bounding boxes: exactly this subset.
"""

from __future__ import annotations

import io
import pickle
from pathlib import Path

import numpy as np

from fdbench.errors import FdbenchError

# the callables numpy's own pickles name, taken from the running numpy (1.x or 2.x), never imported by
# the name the file gives: numpy 2 writes "numpy._core.multiarray", numpy 1 "numpy.core.multiarray"
_RECONSTRUCT = np.zeros(1).__reduce__()[0]
_SCALAR = np.float64(0).__reduce__()[0]
_FROMBUFFER = np.zeros(1).__reduce_ex__(5)[0]  # protocol 5's out-of-band-capable array rebuild


def _latin1_bytes(text, encoding="utf-8", errors="strict"):
    """Protocol 2 writes a ``bytes`` object (a numpy buffer) as ``_codecs.encode(str, "latin1")``:
    admitted for exactly that, string to bytes, nothing else."""
    if not isinstance(text, str) or encoding not in ("latin1", "latin-1") or errors != "strict":
        raise _Refused("_codecs.encode with arguments other than (str, 'latin1')")
    return text.encode("latin1")


ALLOWED = {
    ("_codecs", "encode"): _latin1_bytes,
    ("builtins", "bytes"): bytes,  # protocol 2's empty bytes (``__builtin__`` under Python 2 names)
    ("__builtin__", "bytes"): bytes,
    ("numpy.core.multiarray", "_reconstruct"): _RECONSTRUCT,
    ("numpy._core.multiarray", "_reconstruct"): _RECONSTRUCT,
    ("numpy.core.multiarray", "scalar"): _SCALAR,
    ("numpy._core.multiarray", "scalar"): _SCALAR,
    ("numpy.core.numeric", "_frombuffer"): _FROMBUFFER,
    ("numpy._core.numeric", "_frombuffer"): _FROMBUFFER,
    ("numpy", "ndarray"): np.ndarray,
    ("numpy", "dtype"): np.dtype,
}


class _Refused(Exception):
    pass


class _PlainUnpickler(pickle.Unpickler):
    def find_class(self, module: str, name: str):
        try:
            return ALLOWED[(module, name)]
        except KeyError:
            raise _Refused(f"{module}.{name}") from None

    def persistent_load(self, pid):  # noqa: D401 - pickle's hook; plain data has no persistent ids
        raise _Refused("a persistent id")


def loads_plain(data: bytes, what: str = "the pickle"):
    """Unpickle ``data`` admitting only plain containers, numbers, strings and numpy arrays."""
    try:
        # latin1: numpy arrays pickled by Python 2 carry their buffers as str
        return _PlainUnpickler(io.BytesIO(data), encoding="latin1").load()
    except _Refused as err:
        raise FdbenchError(
            f"{what} holds {err} (code that would run when loaded, or an object that is not plain data); "
            f"refused without running it"
        ) from None
    except Exception as err:  # noqa: BLE001 - a damaged pickle raises anything from EOFError to TypeError
        reason = str(err).strip().splitlines()[0][:120] if str(err).strip() else type(err).__name__
        raise FdbenchError(f"{what} is not a readable pickle of plain data ({reason})") from None


def load_plain_pickle(path: str | Path):
    """:func:`loads_plain` of a file, with a one-line error when it is missing or unreadable."""
    path = Path(path)
    try:
        data = path.read_bytes()
    except OSError as err:
        raise FdbenchError(f"cannot read {path}: {err.strerror or err}") from None
    return loads_plain(data, str(path))
