"""The paper's ablation: four arms x seeds, and whether each of its three findings reproduces.

Arms (FastDINOv2, arXiv 2507.03779, the ablation of its Section 4): ``none`` (DINOv2), ``curriculum-only``
(two-stage without noise patching), ``noise-only`` (``none`` with Gaussian noise patching all run
long) and ``two-stage`` (the curriculum with noise patching in its last stage). Each arm is trained
with the same recipe and seeds ``0..S-1``; a checkpoint's label is ``<arm>-s<seed>``.

Every comparison is ``arm - none`` on the same val images, paired by seed (seed ``s`` of both arms
starts from the same initial weights and sees the same data order). Intervals come from a two-level
bootstrap: each resample draws the seeds with replacement and, independently, the val images with
replacement (the same draw for both arms), then averages the per-image scores over the drawn seeds
and images. With 3 seeds the seed level is coarse; the interval still widens when the seeds disagree,
which an image-only bootstrap would hide.

Per-image scores (each a number per val image, averaged to the statistic):

- accuracy over a set of corruption cells: the share of those cells the image is classified right in
  (linear probe by default); ``clean``, the ``noise`` and ``blur`` groups, and each corruption;
- frequency shift: the image's band-pass ``high-pass AUC - low-pass AUC`` (percentage points, the
  trapezoid rule over the band-pass radii, as :mod:`analysis.frequency`). A model that relies more on
  high frequencies keeps more accuracy on high-pass images and less on low-pass ones, so a positive
  ``arm - none`` difference is a shift toward high frequencies.

A component of a finding reads ``yes`` when its 95% interval lies on the side the paper claims,
``no`` when it lies on the other side, ``not distinguishable`` when it covers 0. "Equal clean
accuracy" is an equivalence claim (as in a two one-sided test): ``yes`` only when the whole interval
lies within ``+-EQUIVALENCE_PP``; ``no`` when it lies entirely outside that margin; otherwise ``not
distinguishable``. A finding is
``yes`` when all its components are, ``no`` when any is, and ``not distinguishable`` otherwise.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np
import pandas as pd

from analysis.metrics import CLEAN, GROUPS
from analysis.outcomes import Outcomes

ARMS: dict[str, dict] = {
    # name -> the options of `fdbench pretrain` that define the arm (nothing else differs)
    "none": {"curriculum": "none", "noise_patching": False},
    "curriculum-only": {"curriculum": "two-stage", "noise_patching": False},
    "noise-only": {"curriculum": "none", "noise_patching": True},
    "two-stage": {"curriculum": "two-stage", "noise_patching": True},
}
REFERENCE = "none"
RESAMPLES = 2000
LEVEL = 0.95
EQUIVALENCE_PP = 2.0  # "equal clean accuracy": the interval of the difference within +-2 points
YES, NO, INDISTINCT = "yes", "no", "not distinguishable"


def label(arm: str, seed: int) -> str:
    """The run folder name (and so the checkpoint label) of one arm and seed."""
    return f"{arm}-s{seed}"


# ---- per-image scores ------------------------------------------------------------------------------------


def accuracy_scores(outcomes: Outcomes, checkpoint: str, protocol: str, cells: list[tuple[str, int]]) -> np.ndarray:
    """Per image: the share of ``cells`` it is classified right in (``[n]`` floats in [0, 1])."""
    return np.mean([outcomes.get((checkpoint, protocol, c, s)).astype(float) for c, s in cells], axis=0)


def trapezoid_weights(fracs: np.ndarray) -> np.ndarray:
    """Weights ``w`` with ``w @ y`` = the trapezoid mean of ``y`` over ``fracs`` (sorted)."""
    fracs = np.asarray(fracs, float)
    if len(fracs) < 2:
        return np.full(len(fracs), 1.0 / max(1, len(fracs)))
    w = np.zeros(len(fracs))
    dx = np.diff(fracs)
    w[:-1] += dx / 2
    w[1:] += dx / 2
    return w / (fracs[-1] - fracs[0])


def frequency_shift_scores(bandpass: pd.DataFrame, wrong: np.ndarray) -> np.ndarray:
    """Per image: high-pass AUC - low-pass AUC in percentage points (``bandpass`` rows align with
    ``wrong [rows, n]``, as ``frequency-analysis`` stores them)."""
    df = bandpass.reset_index(drop=True)
    per_kind = {}
    for kind in ("low", "high"):
        rows = df.index[df["filter"] == kind].to_numpy()
        rows = rows[np.argsort(df.loc[rows, "radius_frac"].to_numpy(float))]
        fracs = df.loc[rows, "radius_frac"].to_numpy(float)
        correct = 1.0 - wrong[rows].astype(float)  # [R, n]
        per_kind[kind] = 100.0 * (trapezoid_weights(fracs) @ correct)
    return per_kind["high"] - per_kind["low"]


# ---- the two-level bootstrap ------------------------------------------------------------------------------


@dataclass
class Comparison:
    """``arm - reference`` of one statistic: point estimate, interval, the per-seed differences."""

    statistic: str
    arm: str
    reference_value: float
    value: float
    difference: float
    ci_lo: float
    ci_hi: float
    per_seed: list[float] = field(default_factory=list)
    scale: float = 100.0  # shown in percentage points


def compare_scores(
    statistic: str,
    arm: str,
    reference: list[np.ndarray],
    other: list[np.ndarray],
    *,
    scale: float = 100.0,
    resamples: int = RESAMPLES,
    seed: int = 0,
    level: float = LEVEL,
) -> Comparison:
    """``other - reference`` for per-image scores of seeds paired by position (``[n]`` each)."""
    ref, oth = np.stack(reference).astype(float), np.stack(other).astype(float)  # [S, n]
    if ref.shape != oth.shape:
        raise ValueError(f"{statistic}: the arms have different seeds or images ({ref.shape} vs {oth.shape})")
    n_seeds, n = ref.shape
    rng = np.random.default_rng(seed)
    seeds = rng.integers(0, n_seeds, size=(resamples, n_seeds))
    weights = rng.multinomial(n, np.full(n, 1.0 / n), size=resamples).astype(float) / n  # [B, n]
    ref_means, oth_means = ref @ weights.T, oth @ weights.T  # [S, B]: each seed under each image draw
    cols = np.arange(resamples)
    diffs = np.mean(oth_means[seeds.T, cols] - ref_means[seeds.T, cols], axis=0)  # [B]
    alpha = (1 - level) / 2
    lo, hi = np.quantile(diffs, [alpha, 1 - alpha])
    per_seed = (oth.mean(1) - ref.mean(1)) * scale
    return Comparison(
        statistic,
        arm,
        float(ref.mean() * scale),
        float(oth.mean() * scale),
        float((oth.mean() - ref.mean()) * scale),
        float(lo * scale),
        float(hi * scale),
        [float(x) for x in per_seed],
        scale,
    )


def direction(c: Comparison, claimed: str) -> str:
    """``claimed`` is ``"up"`` or ``"down"``: yes / no / not distinguishable from the interval."""
    if math.isnan(c.ci_lo) or c.ci_lo <= 0.0 <= c.ci_hi:
        return INDISTINCT
    up = c.ci_lo > 0
    return YES if up == (claimed == "up") else NO


def equivalence(c: Comparison, margin: float = EQUIVALENCE_PP) -> str:
    """Equal within ``+-margin`` points: yes when the interval lies inside the margin, no when it
    lies entirely outside it, not distinguishable when it straddles a margin's edge."""
    if -margin <= c.ci_lo and c.ci_hi <= margin:
        return YES
    if c.ci_lo > margin or c.ci_hi < -margin:
        return NO
    return INDISTINCT


def combine(verdicts: list[str]) -> str:
    if verdicts and all(v == YES for v in verdicts):
        return YES
    if any(v == NO for v in verdicts):
        return NO
    return INDISTINCT


# ---- the findings -----------------------------------------------------------------------------------------


@dataclass
class Component:
    claim: str
    verdict: str
    comparison: Comparison | None = None
    detail: str = ""


@dataclass
class Finding:
    name: str
    arm: str
    claim: str  # the paper's words
    components: list[Component]

    @property
    def verdict(self) -> str:
        return combine([c.verdict for c in self.components])


@dataclass
class AblationInputs:
    """What the findings read: per-image outcomes of the evaluation and, per checkpoint label, the
    band-pass table and its per-image ``wrong`` matrix (``None`` when the frequency analysis is absent);
    ``flops`` maps an arm to its FLOPs as a share of ``none``'s (from the runs' summary.json)."""

    outcomes: Outcomes
    seeds: list[int]
    bandpass: dict[str, tuple[pd.DataFrame, np.ndarray]] = field(default_factory=dict)
    flops: dict[str, float] = field(default_factory=dict)
    protocol: str = "linear"


def _cells(outcomes: Outcomes, checkpoint: str, protocol: str, names) -> list[tuple[str, int]]:
    return sorted((c, s) for (k, p, c, s) in outcomes.cells if k == checkpoint and p == protocol and c in names)


def comparisons(inputs: AblationInputs, arm: str) -> dict[str, Comparison]:
    """``arm - none`` for clean, the noise and blur groups, the mean over every corruption evaluated,
    each corruption, and (when available) the frequency shift."""
    o, p = inputs.outcomes, inputs.protocol
    ref_labels = [label(REFERENCE, s) for s in inputs.seeds]
    arm_labels = [label(arm, s) for s in inputs.seeds]
    first = ref_labels[0]
    corrupted = sorted({c for (k, pr, c, s) in o.cells if k == first and pr == p and c != CLEAN})
    sets = {"clean": [CLEAN]}
    for group in ("noise", "blur"):
        if any(c in GROUPS[group] for c in corrupted):
            sets[f"{group} (mean)"] = list(GROUPS[group])
    if corrupted:
        sets["all corruptions (mean)"] = corrupted
    for name in corrupted:
        sets[name] = [name]
    out = {}
    for statistic, names in sets.items():
        cells = _cells(o, first, p, names)
        ref = [accuracy_scores(o, k, p, cells) for k in ref_labels]
        oth = [accuracy_scores(o, k, p, cells) for k in arm_labels]
        out[statistic] = compare_scores(statistic, arm, ref, oth)
    if all(k in inputs.bandpass for k in ref_labels + arm_labels):
        ref = [frequency_shift_scores(*inputs.bandpass[k]) for k in ref_labels]
        oth = [frequency_shift_scores(*inputs.bandpass[k]) for k in arm_labels]
        out["frequency shift (high-pass - low-pass AUC)"] = compare_scores(
            "frequency shift (high-pass - low-pass AUC)", arm, ref, oth, scale=1.0
        )
    return out


FREQ = "frequency shift (high-pass - low-pass AUC)"


def _component(claim: str, comps: dict, statistic: str, claimed: str) -> Component:
    c = comps.get(statistic)
    if c is None:
        return Component(claim, INDISTINCT, None, f"{statistic}: not measured")
    return Component(claim, direction(c, claimed), c)


def findings(inputs: AblationInputs) -> list[Finding]:
    """The paper's three directional findings, each as components with verdicts."""
    out = []
    if _has_arm(inputs, "curriculum-only"):
        comps = comparisons(inputs, "curriculum-only")
        out.append(
            Finding(
                "1. curriculum alone",
                "curriculum-only",
                "the low-resolution curriculum alone shifts the model toward high frequencies and hurts noise robustness",
                [
                    _component("shifts toward high frequencies", comps, FREQ, "up"),
                    _component("worse on noise", comps, "noise (mean)", "down"),
                ],
            )
        )
    if _has_arm(inputs, "noise-only"):
        comps = comparisons(inputs, "noise-only")
        out.append(
            Finding(
                "2. noise patching alone",
                "noise-only",
                "noise patching alone shifts the model toward low frequencies: much better on noise, slightly worse on blur",
                [
                    _component("shifts toward low frequencies", comps, FREQ, "down"),
                    _component("better on noise", comps, "noise (mean)", "up"),
                    _component("worse on blur", comps, "blur (mean)", "down"),
                ],
            )
        )
    if _has_arm(inputs, "two-stage"):
        comps = comparisons(inputs, "two-stage")
        out.append(
            Finding(
                "3. curriculum + noise patching",
                "two-stage",
                "together: better on most corruptions at equal clean accuracy, at about half the FLOPs",
                [_most_corruptions(comps), _equal_clean(comps), _half_flops(inputs.flops.get("two-stage"))],
            )
        )
    return out


def _has_arm(inputs: AblationInputs, arm: str) -> bool:
    return all(label(arm, s) in inputs.outcomes.checkpoints() for s in inputs.seeds)


def _most_corruptions(comps: dict) -> Component:
    singles = [c for name, c in comps.items() if name not in ("clean", FREQ) and "(mean)" not in name]
    better = sum(direction(c, "up") == YES for c in singles)
    worse = sum(direction(c, "up") == NO for c in singles)
    detail = f"{better} of {len(singles)} corruptions better (95% CI above 0), {worse} worse"
    if not singles:
        return Component("better on most corruptions", INDISTINCT, None, "no corruption evaluated")
    verdict = YES if better > len(singles) / 2 else NO if worse > len(singles) / 2 else INDISTINCT
    return Component("better on most corruptions", verdict, comps.get("all corruptions (mean)"), detail)


def _equal_clean(comps: dict) -> Component:
    c = comps["clean"]
    return Component(
        f"equal clean accuracy (95% CI within +-{EQUIVALENCE_PP:g} points)",
        equivalence(c),
        c,
    )


def _half_flops(share: float | None) -> Component:
    claim = "about half the FLOPs (paper: 0.45 of DINOv2's)"
    if share is None:
        return Component(claim, INDISTINCT, None, "FLOPs not recorded")
    # a deterministic count, not an estimate: "about half" read as 0.35-0.65 of the reference's
    verdict = YES if 0.35 <= share <= 0.65 else NO
    return Component(claim, verdict, None, f"{share:.2f} of none's training FLOPs")


# ---- tables ------------------------------------------------------------------------------------------------


def findings_table(found: list[Finding]) -> pd.DataFrame:
    rows = []
    for f in found:
        for comp in f.components:
            c = comp.comparison
            rows.append(
                {
                    "finding": f.name,
                    "arm": f.arm,
                    "finding_verdict": f.verdict,
                    "component": comp.claim,
                    "verdict": comp.verdict,
                    "statistic": c.statistic if c else "",
                    "none_value": c.reference_value if c else math.nan,
                    "arm_value": c.value if c else math.nan,
                    "difference": c.difference if c else math.nan,
                    "ci_lo": c.ci_lo if c else math.nan,
                    "ci_hi": c.ci_hi if c else math.nan,
                    "per_seed_differences": " ".join(f"{x:+.2f}" for x in c.per_seed) if c else "",
                    "detail": comp.detail,
                }
            )
    return pd.DataFrame(rows)


def comparisons_table(inputs: AblationInputs, arms: list[str]) -> pd.DataFrame:
    """Every statistic of every arm against ``none`` (the CSV behind the report's tables)."""
    rows = []
    for arm in arms:
        if arm == REFERENCE or not _has_arm(inputs, arm):
            continue
        for c in comparisons(inputs, arm).values():
            rows.append(
                {
                    "arm": arm,
                    "statistic": c.statistic,
                    "none_value": c.reference_value,
                    "arm_value": c.value,
                    "difference": c.difference,
                    "ci_lo": c.ci_lo,
                    "ci_hi": c.ci_hi,
                    "verdict": {YES: "higher", NO: "lower", INDISTINCT: INDISTINCT}[direction(c, "up")],
                    "per_seed_differences": " ".join(f"{x:+.2f}" for x in c.per_seed),
                }
            )
    return pd.DataFrame(rows)
