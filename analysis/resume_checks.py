"""The checks every resumable evaluation makes before reusing an output folder: the stored cells were
computed with the same settings and on the same checkpoint files (eval-corruptions, eval-retrieval
and eval-segmentation share them, so their errors read alike)."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from pathlib import Path

from fdbench.errors import FdbenchError


def refuse_other_results(
    out: Path,
    old_settings: Mapping,
    settings: Mapping,
    keys: Iterable[str],
    old_checksums: Mapping[str, str | None],
    checksums: Mapping[str, str],
    *,
    what: str = "results",
    reasons: Mapping[str, str] | None = None,
) -> None:
    """A one-line error when ``out`` holds cells computed with other ``keys`` of the settings, or on
    another file under the same checkpoint label (a stored checksum of None is not compared)."""
    changed = [k for k in keys if k in old_settings and old_settings[k] != settings[k]]
    if changed:
        named = ", ".join((reasons or {}).get(k, k) for k in changed)
        raise FdbenchError(
            f"{out} holds {what} computed with other settings ({named}); use another --out, or --overwrite to discard them"
        )
    for label, sha in old_checksums.items():
        if label in checksums and sha not in (None, checksums[label]):
            raise FdbenchError(
                f"{out} holds results of another file named {label!r} (checksum differs); "
                f"use another --out, or --overwrite to discard them"
            )


def refuse_other_summary(out: Path, summary: Mapping, settings: Mapping, keys: Iterable[str], checksums, **kw) -> None:
    """:func:`refuse_other_results` against a ``summary.json`` of the shape eval-corruptions and
    eval-retrieval write (``settings`` and ``checkpoints: {label: {"sha256": ...}}``)."""
    old_checksums = {label: info.get("sha256") for label, info in summary.get("checkpoints", {}).items()}
    refuse_other_results(out, summary.get("settings", {}), settings, keys, old_checksums, checksums, **kw)
