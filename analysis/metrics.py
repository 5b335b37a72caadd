"""Robustness metrics: top-k accuracy, corruption error (CE), mCE, relative CE, group means.

Definitions (Hendrycks & Dietterich 2019, ImageNet-C), with E(s, c) the top-1 error of the model on
corruption c at severity s, E_clean its clean top-1 error, and B the baseline model's errors:

    CE_c          = sum_s E(s, c) / sum_s B(s, c)
    relative CE_c = sum_s (E(s, c) - E_clean) / sum_s (B(s, c) - B_clean)
    mCE           = mean of CE_c over the 15 common corruptions (relative mCE likewise)

The baseline B is AlexNet for 1000-class ImageNet (published mean errors per corruption, so
sum_s B(s, c) = 5 * mean_c over the five severities; clean error 0.4348), or a previous fdbench run
(its results.csv: errors per (corruption, severity) and its clean error). Without a baseline, only the
unnormalised mean error is reported, and every output says so.

Group means (noise, blur, weather, digital) average over the *common* corruptions of the group, as in
the ImageNet-C paper; the four extra corruptions are reported separately.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable, Mapping, Sequence

import pandas as pd

from corruptions import registry
from fdbench.errors import FdbenchError
from fdbench.scoring import topk_accuracy  # noqa: F401  (re-exported: evaluation's accuracy)

# the ImageNet-C families have one definition, in corruptions.registry (brightness is weather)
GROUPS: dict[str, tuple[str, ...]] = dict(registry.FAMILIES)
COMMON: tuple[str, ...] = registry.COMMON
EXTRA: tuple[str, ...] = registry.EXTRA
ALL: tuple[str, ...] = registry.ALL
SEVERITIES: tuple[int, ...] = (1, 2, 3, 4, 5)


CLEAN = "clean"  # the corruption name of clean rows in results.csv (severity 0)

# AlexNet top-1 error on ImageNet-C, mean over the five severities, as published with ImageNet-C
# (Hendrycks & Dietterich 2019)
ALEXNET_MEAN_ERRORS: dict[str, float] = {
    "gaussian_noise": 0.886428,
    "shot_noise": 0.894468,
    "impulse_noise": 0.922640,
    "defocus_blur": 0.819880,
    "glass_blur": 0.826268,
    "motion_blur": 0.785948,
    "zoom_blur": 0.798360,
    "snow": 0.866816,
    "frost": 0.826572,
    "fog": 0.819324,
    "brightness": 0.564592,
    "contrast": 0.853204,
    "elastic_transform": 0.646056,
    "pixelate": 0.717840,
    "jpeg_compression": 0.606500,
    "speckle_noise": 0.845388,
    "gaussian_blur": 0.787108,
    "spatter": 0.717512,
    "saturate": 0.658248,
}
ALEXNET_CLEAN_ERROR = 0.4348

UNNORMALISED = "none (unnormalised mean error)"


def group_of(corruption: str) -> str:
    """noise / blur / weather / digital for the common corruptions, "extra" for the other four."""
    for group, members in GROUPS.items():
        if corruption in members:
            return group
    if corruption in EXTRA:
        return "extra"
    if corruption == CLEAN:
        return CLEAN
    return "other"


def parse_corruptions(spec: str | Sequence[str]) -> list[str]:
    """``common`` (15), ``extra`` (4), ``all`` (19), a group name, or comma-separated names/sets."""
    items = [s.strip() for s in (spec.split(",") if isinstance(spec, str) else spec) if s.strip()]
    sets = {"common": COMMON, "extra": EXTRA, "all": ALL, **GROUPS}
    out: list[str] = []
    for item in items:
        found = sets.get(item.lower(), (item,) if item in ALL else None)
        if found is None:
            raise FdbenchError(
                f"unknown corruption {item!r}: use common, extra, all, noise, blur, weather, "
                f"digital or names from: {', '.join(ALL)}"
            )
        out.extend(n for n in found if n not in out)
    if not out:
        raise FdbenchError("no corruptions selected: use common, extra, all, a group or names")
    return out


def parse_severities(spec: str | int | Iterable[int]) -> list[int]:
    """``1-5``, ``3``, ``1,3,5`` or ``2-3,5`` -> sorted severities within 1..5."""
    if isinstance(spec, int):
        values = [spec]
    elif isinstance(spec, str):
        values = []
        for part in (p.strip() for p in spec.split(",") if p.strip()):
            try:
                lo, _, hi = part.partition("-")
                values.extend(range(int(lo), int(hi or lo) + 1))
            except ValueError:
                raise FdbenchError(f"bad severities {spec!r}: use a range like 1-5 or a list like 1,3,5") from None
    else:
        values = [int(v) for v in spec]
    bad = [v for v in values if v not in SEVERITIES]
    if bad or not values:
        raise FdbenchError(f"bad severities {spec!r}: severities go from 1 to 5 (e.g. 1-5 or 1,3,5)")
    return sorted(set(values))


def corruption_error(errors: Sequence[float], baseline_errors: Sequence[float]) -> float:
    """CE_c = sum_s E(s, c) / sum_s B(s, c)."""
    return float(sum(errors)) / float(sum(baseline_errors))


def relative_corruption_error(
    errors: Sequence[float], clean_error: float, baseline_errors: Sequence[float], baseline_clean_error: float
) -> float:
    """Relative CE_c = sum_s (E(s, c) - E_clean) / sum_s (B(s, c) - B_clean)."""
    num = sum(e - clean_error for e in errors)
    den = sum(b - baseline_clean_error for b in baseline_errors)
    return float(num) / float(den) if den != 0 else math.nan


@dataclass
class Baseline:
    """The denominators of CE: a baseline model's errors.

    ``errors`` maps (corruption, severity) to a top-1 error; ``mean_errors`` maps a corruption to its
    mean error over all five severities (all that is published for AlexNet).
    """

    name: str
    clean_error: float | None
    errors: dict[tuple[str, int], float] = field(default_factory=dict)
    mean_errors: dict[str, float] = field(default_factory=dict)

    def severity_errors(self, corruption: str, severities: Sequence[int]) -> list[float] | None:
        """B(s, c) for the given severities, or None when the baseline cannot provide all of them.

        From a mean over all five severities only the full set can be rebuilt (as five copies of the
        mean, which gives the same sums): a subset would need per-severity errors.
        """
        if all((corruption, s) in self.errors for s in severities):
            return [self.errors[(corruption, s)] for s in severities]
        if corruption in self.mean_errors and sorted(severities) == list(SEVERITIES):
            return [self.mean_errors[corruption]] * len(SEVERITIES)
        return None


def alexnet_baseline() -> Baseline:
    return Baseline("AlexNet", ALEXNET_CLEAN_ERROR, mean_errors=dict(ALEXNET_MEAN_ERRORS))


RESULT_NEEDS = ("checkpoint", "protocol", "corruption", "severity", "top1")
# numeric columns of an eval-corruptions results.csv: (name, lowest, highest, whole numbers)
RESULT_NUMBERS = (("severity", 0, 5, True), ("n", 0, None, True), ("top1", 0.0, 1.0, False), ("top5", 0.0, 1.0, False))


def check_results(frame, path: str | Path) -> None:
    """One-line error naming the file and column when a results.csv holds text (or impossible
    values) where numbers belong: read as-is it would fail deep inside, or be taken as missing."""
    import pandas as pd

    missing = [c for c in RESULT_NEEDS if c not in frame.columns]
    if missing:
        raise FdbenchError(
            f"{path} is not an eval-corruptions results.csv: it has no column {', '.join(missing)} "
            f"(has {', '.join(map(str, frame.columns))})"
        )
    for column, low, high, whole in RESULT_NUMBERS:
        if column not in frame.columns:
            continue
        values = pd.to_numeric(frame[column], errors="coerce")
        bad = values.isna() & frame[column].notna()
        if column != "top5":  # top-5 is empty where a dataset has fewer than five classes
            bad |= frame[column].isna()
        out_of_range = values.notna() & (
            (values < low) | (values > high if high is not None else False) | ((values % 1 != 0) if whole else False)
        )
        bad |= out_of_range
        if bad.any():
            row = int(bad.to_numpy().nonzero()[0][0])
            kind = "whole numbers" if whole else "numbers"
            span = f" from {low} to {high}" if high is not None else f" of at least {low}"
            value = frame[column].iloc[row]
            shown = "an empty value" if pd.isna(value) else repr(value.item() if hasattr(value, "item") else value)
            raise FdbenchError(
                f"{path}: column {column!r} must hold {kind}{span}, but line {row + 2} has "
                f"{shown}; it is damaged or not an eval-corruptions results.csv"
            )


def baseline_from_results(path: str | Path) -> dict[str, Baseline]:
    """Per-protocol baselines from a previous run's results.csv.

    ``path`` may end in ``#CHECKPOINT`` to pick one checkpoint of a file that holds several.
    """
    text = str(path)
    file, checkpoint = Path(text), None
    if not file.exists() and "#" in text:
        base, _, checkpoint = text.rpartition("#")
        file = Path(base)
    if not file.is_file():
        raise FdbenchError(f"baseline file not found: {file} (pass a results.csv written by eval-corruptions)")
    try:
        frame = pd.read_csv(file)
    except (ValueError, OSError) as err:
        raise FdbenchError(f"cannot read baseline {file}: {err}") from None
    check_results(frame, file)
    frame["checkpoint"] = frame["checkpoint"].astype(str)
    names = list(dict.fromkeys(frame["checkpoint"]))
    if checkpoint is None:
        if len(names) != 1:
            raise FdbenchError(
                f"baseline {file} holds {len(names)} checkpoints ({', '.join(names)}); pick one with {file}#NAME"
            )
        checkpoint = names[0]
    if checkpoint not in names:
        raise FdbenchError(f"checkpoint {checkpoint!r} is not in baseline {file} (it has: {', '.join(names)})")
    frame = frame[frame["checkpoint"] == checkpoint]
    out = {}
    for protocol, rows in frame.groupby("protocol"):
        clean = rows[rows["corruption"] == CLEAN]["top1"]
        errors = {
            (str(r.corruption), int(r.severity)): 1.0 - float(r.top1)
            for r in rows.itertuples()
            if r.corruption != CLEAN
        }
        out[str(protocol)] = Baseline(
            f"{checkpoint} ({file.name})", 1.0 - float(clean.iloc[0]) if len(clean) else None, errors
        )
    return out


def summarise(results, baseline: Baseline | Mapping[str, Baseline] | None = None):
    """Per-(checkpoint, protocol, corruption) rows and per-(checkpoint, protocol) aggregates.

    ``results``: a DataFrame in the results.csv layout (checkpoint, protocol, corruption, severity,
    n, top1, top5), clean rows named ``clean``. ``baseline``: one Baseline for every protocol, a
    dict protocol -> Baseline, or None for unnormalised output.

    Returns ``(rows, aggregates)``: ``rows`` a DataFrame with one row per checkpoint x protocol x
    corruption (mean top-1/top-5 accuracy and error over the severities, CE, relative CE); and
    ``aggregates`` a dict ``{checkpoint: {protocol: {...}}}`` with clean accuracy, mCE, relative mCE,
    mean corrupted accuracy, group means and the extras' means.
    """
    norm_name = normalisation_name(baseline)
    records, aggregates = [], {}
    for (ckpt, protocol), rows in results.groupby(["checkpoint", "protocol"], sort=False):
        base = baseline.get(protocol) if isinstance(baseline, Mapping) else baseline
        clean = rows[rows["corruption"] == CLEAN]
        clean_top1 = float(clean["top1"].iloc[0]) if len(clean) else math.nan
        clean_top5 = float(clean["top5"].iloc[0]) if len(clean) else math.nan
        per = {}
        for corruption, cells in rows[rows["corruption"] != CLEAN].groupby("corruption", sort=False):
            cells = cells.sort_values("severity")
            sev = [int(s) for s in cells["severity"]]
            err = [1.0 - float(a) for a in cells["top1"]]
            ce = rel = math.nan
            denom = base.severity_errors(corruption, sev) if base is not None else None
            if denom is not None:
                ce = corruption_error(err, denom)
                if base.clean_error is not None and not math.isnan(clean_top1):
                    rel = relative_corruption_error(err, 1.0 - clean_top1, denom, base.clean_error)
            per[corruption] = {
                "checkpoint": ckpt,
                "protocol": protocol,
                "corruption": corruption,
                "group": group_of(corruption),
                "severities": ",".join(map(str, sev)),
                "n": int(cells["n"].iloc[0]),
                "top1": float(cells["top1"].mean()),
                "top5": float(cells["top5"].mean()),
                "error": sum(err) / len(err),
                "ce": ce,
                "relative_ce": rel,
                "normalisation": norm_name,
            }
        ordered = sorted(per, key=lambda c: (ALL.index(c) if c in ALL else len(ALL), c))
        records.extend(per[c] for c in ordered)
        aggregates.setdefault(str(ckpt), {})[str(protocol)] = _aggregate(per, clean_top1, clean_top5, norm_name)
    columns = [
        "checkpoint",
        "protocol",
        "corruption",
        "group",
        "severities",
        "n",
        "top1",
        "top5",
        "error",
        "ce",
        "relative_ce",
        "normalisation",
    ]
    return pd.DataFrame.from_records(records, columns=columns), aggregates


def normalisation_name(baseline) -> str:
    if baseline is None or (isinstance(baseline, Mapping) and not baseline):
        return UNNORMALISED
    if isinstance(baseline, Mapping):
        return "baseline " + next(iter(baseline.values())).name
    return baseline.name


def _mean(values: Iterable[float]) -> float:
    values = [v for v in values]
    if not values or any(math.isnan(v) for v in values):
        return math.nan
    return sum(values) / len(values)


def _aggregate(per: dict, clean_top1: float, clean_top5: float, norm_name: str) -> dict:
    common = [c for c in COMMON if c in per]
    extra = [c for c in EXTRA if c in per]

    def block(names):
        return {
            "corruptions": len(names),
            "top1": _mean(per[c]["top1"] for c in names) if names else math.nan,
            "error": _mean(per[c]["error"] for c in names) if names else math.nan,
            "ce": _mean(per[c]["ce"] for c in names) if names else math.nan,
            "relative_ce": _mean(per[c]["relative_ce"] for c in names) if names else math.nan,
        }

    common_block = block(common)
    return {
        "normalisation": norm_name,
        "clean_top1": clean_top1,
        "clean_top5": clean_top5,
        "clean_error": 1.0 - clean_top1 if not math.isnan(clean_top1) else math.nan,
        # mCE / relative mCE: means over the common corruptions that were evaluated (n of 15)
        "common_corruptions": len(common),
        "mean_corrupted_top1": common_block["top1"],
        "mean_corrupted_error": common_block["error"],
        "mCE": common_block["ce"],
        "relative_mCE": common_block["relative_ce"],
        "groups": {
            g: block([c for c in members if c in per])
            for g, members in GROUPS.items()
            if any(c in per for c in members)
        },
        "extra": block(extra) if extra else None,
    }
