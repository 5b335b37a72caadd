import math

import numpy as np
import pytest
from scipy.stats import binomtest

from analysis.outcomes import Outcomes
from analysis.stats import INDISTINCT, differences, mcnemar_exact, verdict


def test_mcnemar_hand_table():
    # b = 1, c = 9: p = 2 * (C(10,0) + C(10,1)) / 2^10 = 22 / 1024
    a = np.array([1] * 1 + [0] * 9 + [1] * 5 + [0] * 5, bool)
    b = np.array([0] * 1 + [1] * 9 + [1] * 5 + [0] * 5, bool)
    assert mcnemar_exact(a, b) == (1, 9, pytest.approx(22 / 1024, abs=1e-15))
    assert mcnemar_exact(a, a)[2] == 1.0


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_mcnemar_matches_scipy_binomial_test(seed):
    rng = np.random.default_rng(seed)
    a, b = rng.random(300) < 0.6, rng.random(300) < 0.5
    nb, nc, p = mcnemar_exact(a, b)
    assert (nb, nc) == (int((a & ~b).sum()), int((~a & b).sum()))
    assert p == pytest.approx(binomtest(nb, nb + nc, 0.5).pvalue, rel=1e-9)


def _outcomes(cells):
    o = Outcomes()
    for key, correct in cells.items():
        o.add(key, correct)
    return o


def test_bootstrap_interval_of_clean_difference_matches_the_paired_normal_approximation():
    rng = np.random.default_rng(5)
    n = 4000
    a = rng.random(n) < 0.70
    b = np.where(rng.random(n) < 0.8, a, rng.random(n) < 0.76)  # correlated with a
    o = _outcomes({("A", "knn", "clean", 0): a, ("B", "knn", "clean", 0): b})
    row = differences(o, "A", "B", "knn").set_index("metric").loc["clean top-1"]
    d = b.astype(float) - a.astype(float)
    se = d.std() / math.sqrt(n)  # paired standard error of the difference of two proportions
    assert row["difference"] == pytest.approx(d.mean())
    assert row["ci_hi"] - row["ci_lo"] == pytest.approx(2 * 1.959964 * se, rel=0.12)
    assert row["ci_lo"] < d.mean() < row["ci_hi"]
    assert row["p_value"] == pytest.approx(binomtest(int((a & ~b).sum()), int((a != b).sum()), 0.5).pvalue)


def test_identical_checkpoints_are_not_distinguishable_and_groups_and_mce_are_computed():
    rng = np.random.default_rng(1)
    n = 50
    cells = {}
    for name in ("clean", "gaussian_noise", "shot_noise", "fog"):
        for sev in [0] if name == "clean" else [1, 2]:
            correct = rng.random(n) < 0.5
            cells[("A", "linear", name, sev)] = correct
            cells[("B", "linear", name, sev)] = correct
    table = differences(_outcomes(cells), "A", "B", "linear").set_index("metric")
    assert set(table.index) >= {
        "clean top-1",
        "noise (mean) top-1",
        "weather (mean) top-1",
        "common (mean) top-1",
        "mCE (unnormalised mean error)",
    }
    assert (table["difference"] == 0).all() and (table["ci_lo"] == 0).all() and (table["ci_hi"] == 0).all()
    assert (table["verdict"] == INDISTINCT).all()


def test_mce_point_value_uses_the_baseline_denominators():
    n = 10
    a = {("A", "knn", "clean", 0): np.ones(n, bool)}
    b = {("B", "knn", "clean", 0): np.ones(n, bool)}
    # A: fog errors 0.2, 0.4; noise 0.5 at sev 1. B: fog 0.0, 0.0; noise 1.0
    for key, k in ((("fog", 1), 2), (("fog", 2), 4), (("gaussian_noise", 1), 5)):
        a[("A", "knn", *key)] = np.arange(n) >= k
    for key, k in ((("fog", 1), 0), (("fog", 2), 0), (("gaussian_noise", 1), 10)):
        b[("B", "knn", *key)] = np.arange(n) >= k
    den = {"fog": 1.2, "gaussian_noise": 0.8}
    row = differences(_outcomes({**a, **b}), "A", "B", "knn", denominators=den).set_index("metric").loc["mCE"]
    ce_a = ((0.2 + 0.4) / 1.2 + 0.5 / 0.8) / 2
    ce_b = ((0.0 + 0.0) / 1.2 + 1.0 / 0.8) / 2
    assert row["reference_value"] == pytest.approx(ce_a) and row["value"] == pytest.approx(ce_b)


def test_verdict_wording():
    assert verdict(0.01, 0.03, "accuracy") == "better"
    assert verdict(-0.03, -0.01, "accuracy") == "worse"
    assert verdict(-0.03, -0.01, "error") == "better"
    assert verdict(-0.01, 0.02, "accuracy") == INDISTINCT


def test_outcomes_round_trip(tmp_path):
    rng = np.random.default_rng(0)
    cells = {("run-a", "knn", "clean", 0): rng.random(13) < 0.5, ("run-b", "linear", "fog", 3): rng.random(8) < 0.5}
    _outcomes(cells).save(tmp_path / "outcomes.npz")
    back = Outcomes.load(tmp_path / "outcomes.npz")
    assert set(back.cells) == set(cells)
    for key, value in cells.items():
        np.testing.assert_array_equal(back.get(key), value)
