"""What makes frequency-analysis resumable: the settings a finished result was computed with,
compared with the current ones (a change is refused unless ``--overwrite``), and finished results
read back (a damaged one is recomputed, never a traceback)."""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd

from analysis import fourier
from analysis import frequency_stats as fstats
from fdbench.errors import FdbenchError
from fdbench.io import read_json


def settings_diff(meta_path: Path, params: dict, ignore: tuple[str, ...] = ("mtime",)) -> list[str] | None:
    """How the settings recorded in ``meta_path`` differ from ``params`` (``"key: old -> new"``), the
    checkpoint's mtime aside (``ignore``); None when nothing readable is recorded (then the work is simply done).

    ``eps`` and ``window`` left at their defaults compare by the value they stood for (recorded in
    the result's ``info``), so spelling out the default is not a change."""
    try:
        saved = read_json(meta_path)
        before, info = dict(saved["params"]), dict(saved.get("info") or {})
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        return None
    now = json.loads(json.dumps(params))
    defaults = {"eps": fourier.default_eps, "window": fourier.default_window}
    diffs = []
    for key in sorted(set(before) | set(now)):
        old, new = before.get(key), now.get(key)
        if key in ignore or old == new:
            continue
        if key in defaults and "image_size" in info and (old is None or new is None):
            old = info.get(key, old)
            new = new if new is not None else defaults[key](int(info["image_size"]))
            if old == new:
                continue
        diffs.append(f"{key}: {old!r} -> {new!r}")
    return diffs


def read_finished(csv: Path, meta: Path, npz: Path, announce):
    """A finished analysis' (table, meta, outcomes), or None (with a message) when a file of it is
    damaged: then it is recomputed, never a traceback."""
    try:
        df, saved = pd.read_csv(csv), json.loads(meta.read_text())
        kept = fstats.load_outcomes(npz)
        if not isinstance(saved, dict) or not isinstance(saved.get("info"), dict) or df.empty:
            raise ValueError("incomplete")
    except (OSError, ValueError, FdbenchError) as err:
        announce(
            f"warning: the finished result {csv.parent} is damaged ({str(err).splitlines()[0][:120]}); recomputing"
        )
        return None
    return df, saved, kept


def refuse_changed(meta_path: Path, params: dict, what: str, overwrite: bool) -> None:
    """Like eval-corruptions: results of other settings are not silently replaced."""
    diffs = settings_diff(meta_path, params)
    if diffs and not overwrite:
        raise FdbenchError(
            f"{meta_path.parent} holds a {what} computed with other settings ({'; '.join(diffs[:4])}"
            f"{'; ...' if len(diffs) > 4 else ''}); use another --out, or --overwrite to replace it"
        )
