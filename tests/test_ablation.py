"""``fdbench ablation``: the arms, the two-level bootstrap, the verdict rules and a tiny run end to end."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from analysis import ablation as ab
from analysis.outcomes import Outcomes
from fdbench.errors import FdbenchError


def test_arms_differ_only_in_curriculum_and_noise_patching():
    from pretrain.config import build_config
    from pretrain.stages import plan_stages, resolve_curriculum

    plans = {}
    for arm, options in ab.ARMS.items():
        cfg = build_config("cpu-tiny", device="cpu", **options)
        plans[arm] = [(p.name, p.global_size, p.noise_patching) for p in plan_stages(cfg, resolve_curriculum(cfg))]
        base = build_config("cpu-tiny", device="cpu").to_dict()
        mine = cfg.to_dict()
        # nothing but the two options differs from the preset
        diff = {
            (section, key)
            for section, fields in mine.items()
            if isinstance(fields, dict)
            for key, value in fields.items()
            if base[section][key] != value
        }
        assert diff <= {("curriculum", "name"), ("curriculum", "noise_patching")}
    assert plans["none"] == [("full-res", 32, False)]
    assert plans["noise-only"] == [("full-res", 32, True)]
    assert plans["curriculum-only"] == [("low-res", 16, False), ("full-res", 32, False)]
    assert plans["two-stage"] == [("low-res", 16, False), ("full-res", 32, True)]


def test_two_level_bootstrap_against_a_direct_computation():
    """The interval equals one computed by explicit loops over the same seed and image draws."""
    rng = np.random.default_rng(3)
    ref = [rng.random(40) < 0.6 for _ in range(3)]
    oth = [rng.random(40) < 0.7 for _ in range(3)]
    c = ab.compare_scores("clean", "x", ref, oth, resamples=300, seed=5)
    # the same draws, in the same order, recomputed image by image and seed by seed
    draw = np.random.default_rng(5)
    seeds = draw.integers(0, 3, size=(300, 3))
    counts = draw.multinomial(40, np.full(40, 1 / 40), size=300)
    diffs = []
    for b in range(300):
        picked = np.repeat(np.arange(40), counts[b])
        per_seed = [oth[s][picked].mean() - ref[s][picked].mean() for s in seeds[b]]
        diffs.append(np.mean(per_seed))
    lo, hi = np.quantile(diffs, [0.025, 0.975])
    assert c.ci_lo == pytest.approx(100 * lo) and c.ci_hi == pytest.approx(100 * hi)
    assert c.difference == pytest.approx(100 * (np.mean(oth) - np.mean(ref)))
    assert c.per_seed == pytest.approx([100 * (o.mean() - r.mean()) for o, r in zip(oth, ref)])


def test_disagreeing_seeds_widen_the_interval():
    """Seeds that disagree in sign must give a wider interval than seeds that agree."""
    n = 400
    base = np.zeros(n, bool)
    base[: n // 2] = True
    agree = [base.copy() for _ in range(3)]
    up = base.copy()
    up[n // 2 : n // 2 + 40] = True  # +10 points
    down = base.copy()
    down[:40] = False  # -10 points
    steady = ab.compare_scores("s", "x", agree, [up, up, up], resamples=500)
    mixed = ab.compare_scores("s", "x", agree, [up, down, up], resamples=500)
    assert steady.ci_lo > 0
    assert (mixed.ci_hi - mixed.ci_lo) > 2 * (steady.ci_hi - steady.ci_lo)


def _cmp(lo, hi):
    return ab.Comparison("s", "x", 50.0, 50.0 + (lo + hi) / 2, (lo + hi) / 2, lo, hi)


def test_verdict_rules():
    assert ab.direction(_cmp(0.5, 2.0), "up") == ab.YES
    assert ab.direction(_cmp(0.5, 2.0), "down") == ab.NO
    assert ab.direction(_cmp(-0.5, 2.0), "up") == ab.INDISTINCT
    assert ab.equivalence(_cmp(-1.5, 1.0)) == ab.YES  # inside +-2 points
    assert ab.equivalence(_cmp(-3.0, 1.0)) == ab.INDISTINCT  # covers 0, wider than the margin
    assert ab.equivalence(_cmp(0.2, 1.0)) == ab.YES  # a real but small difference: equal within the margin
    assert ab.equivalence(_cmp(2.5, 6.0)) == ab.NO  # entirely outside the margin
    assert ab.equivalence(_cmp(1.0, 6.0)) == ab.INDISTINCT  # straddles the margin's edge
    assert ab.combine([ab.YES, ab.YES]) == ab.YES
    assert ab.combine([ab.YES, ab.INDISTINCT]) == ab.INDISTINCT
    assert ab.combine([ab.YES, ab.NO, ab.INDISTINCT]) == ab.NO


def test_frequency_shift_is_high_minus_low_auc_per_image():
    fracs = np.array([0.0, 0.5, 1.0])
    rows = [{"filter": k, "radius_frac": f} for f in fracs for k in ("low", "high")]
    df = pd.DataFrame(rows)
    n = 4
    wrong = np.zeros((len(df), n), bool)
    wrong[(df["filter"] == "low").to_numpy()] = True  # wrong on every low-pass image
    scores = ab.frequency_shift_scores(df, wrong)
    assert scores == pytest.approx(np.full(n, 100.0))  # high AUC 100, low AUC 0
    # one image right on the low-pass image at radius 1 only: trapezoid (0 + 0)/2*0.5 + (0 + 1)/2*0.5
    wrong[np.flatnonzero((df["filter"] == "low") & (df["radius_frac"] == 1.0)), 0] = False
    assert ab.frequency_shift_scores(df, wrong)[0] == pytest.approx(100.0 - 25.0)


def _outcomes(acc: dict[str, dict[str, float]], n=200, seeds=(0, 1)) -> Outcomes:
    """Outcomes where arm a's seed s is right on the first ``acc[a][cell] * n`` images of a cell."""
    o = Outcomes()
    for arm, cells in acc.items():
        for s in seeds:
            for cell, p in cells.items():
                name, sev = cell.split(":")
                o.add((ab.label(arm, s), "linear", name, int(sev)), np.arange(n) < int(p * n))
    return o


def test_findings_from_planted_outcomes():
    cells = {"clean:0": 0.8, "gaussian_noise:1": 0.4, "defocus_blur:1": 0.6}
    acc = {
        "none": cells,
        "curriculum-only": {**cells, "gaussian_noise:1": 0.3},  # worse on noise
        "noise-only": {**cells, "gaussian_noise:1": 0.6, "defocus_blur:1": 0.5},
        "two-stage": {"clean:0": 0.8, "gaussian_noise:1": 0.5, "defocus_blur:1": 0.7},
    }
    inputs = ab.AblationInputs(_outcomes(acc), [0, 1], flops={"two-stage": 0.45})
    found = {f.arm: f for f in ab.findings(inputs)}
    # no band-pass data: the frequency components cannot be judged, the rest can
    assert [c.verdict for c in found["curriculum-only"].components] == [ab.INDISTINCT, ab.YES]
    assert found["curriculum-only"].verdict == ab.INDISTINCT
    assert [c.verdict for c in found["noise-only"].components] == [ab.INDISTINCT, ab.YES, ab.YES]
    two = found["two-stage"].components
    assert two[0].verdict == ab.YES and "2 of 2 corruptions better" in two[0].detail
    assert two[1].verdict == ab.YES  # identical clean outcomes: difference 0, interval [0, 0]
    assert two[2].verdict == ab.YES and found["two-stage"].verdict == ab.YES
    table = ab.findings_table(list(found.values()))
    assert set(table["verdict"]) <= {ab.YES, ab.NO, ab.INDISTINCT} and len(table) == 8


@pytest.fixture(scope="module")
def tiny_ablation(tiny_dataset, tmp_path_factory):
    from fdbench.ablation import AblationConfig, ablation

    out = tmp_path_factory.mktemp("ablation") / "abl"
    config = AblationConfig(
        out=str(out),
        seeds=2,
        epochs=2,
        device="cpu",
        data=str(tiny_dataset),
        train_options=dict(
            arch="vit_pico",
            global_size=32,
            local_size=16,
            n_local=2,
            batch_size=16,
            prototypes=64,
            workers=0,
            stage1_fraction=0.5,
            eval_every=0,
        ),
        corruptions="gaussian_noise,defocus_blur",
        severities="1",
        eval_batch_size=64,
        heatmap_images=4,
        bandpass_images=8,
        window=5,
        radii=2,
        figures=True,
    )
    messages = []
    return config, ablation(config, announce=messages.append), messages


def test_tiny_ablation_end_to_end(tiny_ablation):
    from pathlib import Path

    config, result, messages = tiny_ablation
    out = Path(config.out)
    runs = sorted(p.name for p in (out / "runs").iterdir())
    assert runs == sorted(ab.label(a, s) for a in config.arms for s in (0, 1))
    for name in ("findings.csv", "comparisons.csv", "arms.csv", "report.md", "differences.png", "differences.pdf"):
        assert (out / "report" / name).is_file(), name
    findings = pd.read_csv(out / "report" / "findings.csv")
    assert list(dict.fromkeys(findings["finding"])) == [
        "1. curriculum alone",
        "2. noise patching alone",
        "3. curriculum + noise patching",
    ]
    assert set(findings["verdict"]) <= {ab.YES, ab.NO, ab.INDISTINCT}
    # the frequency shift was measured (band-pass outcomes of every checkpoint were found)
    comps = pd.read_csv(out / "report" / "comparisons.csv")
    assert ab.FREQ in set(comps["statistic"])
    arms = pd.read_csv(out / "report" / "arms.csv")
    assert {"pixels", "random-init"} <= set(arms["checkpoint"])
    flops = arms.set_index("checkpoint")["flops_share_of_none"]
    assert flops["none-s0"] == pytest.approx(1.0) and flops["two-stage-s0"] < 1.0
    report = (out / "report" / "report.md").read_text()
    assert report.index("Does each finding") < report.index("Arms and floors")


def test_tiny_ablation_rerun_skips_every_step(tiny_ablation):
    from fdbench.ablation import ablation

    config, first, _ = tiny_ablation
    again = ablation(config)
    assert {s.status for s in again.steps} == {"skipped"}
    assert again.findings.equals(pd.read_csv(first.report.parent / "findings.csv", keep_default_na=False))


def test_bad_ablation_options(tmp_path):
    from fdbench.ablation import AblationConfig, ablation

    with pytest.raises(FdbenchError, match="--seeds"):
        ablation(AblationConfig(out=str(tmp_path / "a"), seeds=0))
    with pytest.raises(FdbenchError, match="unknown arm"):
        ablation(AblationConfig(out=str(tmp_path / "a"), arms=("none", "fast")))
    with pytest.raises(FdbenchError, match="must include 'none'"):
        ablation(AblationConfig(out=str(tmp_path / "a"), arms=("two-stage", "noise-only")))
    with pytest.raises(FdbenchError, match="sets curriculum"):
        ablation(AblationConfig(out=str(tmp_path / "a"), train_options={"curriculum": "none"}))
