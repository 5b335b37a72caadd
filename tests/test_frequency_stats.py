"""Error bars of the frequency analysis against independent computations on small hand-made maps."""

import numpy as np
import pytest
from scipy import stats

from analysis import frequency_stats as fstats

# a 3 x 3 window of cells (ky, kx in -1..1) and 6 images; 1 = the image is misclassified at that cell
KY, KX = np.meshgrid([-1, 0, 1], [-1, 0, 1], indexing="ij")
RADIUS = np.hypot(KY, KX).ravel()  # rings: round(0)=0, round(1)=1, round(1.414)=1
WRONG_A = np.array(
    [
        [1, 0, 0, 1, 0, 0],
        [0, 0, 0, 1, 0, 0],
        [1, 1, 0, 1, 0, 0],
        [0, 0, 0, 0, 0, 1],
        [0, 0, 0, 0, 0, 0],
        [1, 0, 0, 1, 1, 0],
        [1, 1, 1, 1, 0, 0],
        [0, 0, 0, 1, 0, 0],
        [1, 0, 1, 1, 0, 0],
    ],
    dtype=bool,
)
WRONG_B = WRONG_A.copy()
WRONG_B[[0, 2, 6, 8], 4] = True  # B also misses image 4 at the four corner cells
WRONG_B[1, 3] = False


def _ring_reference(wrong, resamples=200, seed=3):
    """Ring means and percentile intervals by explicit loops over rings, resamples and images."""
    idx = np.random.default_rng(seed).integers(0, wrong.shape[1], size=(resamples, wrong.shape[1]))
    out = {}
    for ring, members in ((0, [4]), (1, [0, 1, 2, 3, 5, 6, 7, 8])):
        per_image = [np.mean([wrong[c, i] for c in members]) for i in range(wrong.shape[1])]
        boots = [100 * np.mean([per_image[i] for i in idx[b]]) for b in range(resamples)]
        out[ring] = (100 * np.mean(per_image), np.percentile(boots, 2.5), np.percentile(boots, 97.5))
    return out


def test_ring_curve_and_interval_match_explicit_loops():
    curve = fstats.ring_curve(WRONG_A, RADIUS, size=8, resamples=200, seed=3).set_index("ring")
    ref = _ring_reference(WRONG_A)
    assert list(curve.index) == [0, 1] and list(curve["cells"]) == [1, 8]
    # ring 1 pools the 4 edge and 4 corner cells: 18 wrong of 8 cells x 6 images
    assert curve.loc[1, "error_pct"] == pytest.approx(100 * 18 / 48)
    for ring, (mean, lo, hi) in ref.items():
        assert curve.loc[ring, "error_pct"] == pytest.approx(mean)
        assert curve.loc[ring, "error_pct_lo"] == pytest.approx(lo)
        assert curve.loc[ring, "error_pct_hi"] == pytest.approx(hi)
    assert curve.loc[1, "radius_frac"] == pytest.approx(1 / 4)


def test_ring_difference_is_paired_over_the_same_resampled_images():
    diff = fstats.ring_difference(WRONG_A, WRONG_B, RADIUS, size=8, resamples=200, seed=3).set_index("ring")
    idx = np.random.default_rng(3).integers(0, 6, size=(200, 6))
    members = [0, 1, 2, 3, 5, 6, 7, 8]
    d = [100 * (WRONG_B[members, i].mean() - WRONG_A[members, i].mean()) for i in range(6)]
    boots = [np.mean([d[i] for i in idx[b]]) for b in range(200)]
    assert diff.loc[1, "diff_pp"] == pytest.approx(100 * (4 - 1) / 48)
    assert diff.loc[1, "diff_pp_lo"] == pytest.approx(np.percentile(boots, 2.5))
    assert diff.loc[1, "diff_pp_hi"] == pytest.approx(np.percentile(boots, 97.5))
    # the centre cell is identical in both: a zero-width interval at 0, not significant
    assert diff.loc[0, "diff_pp"] == 0 and not diff.loc[0, "significant"]
    assert bool(diff.loc[1, "significant"]) == (np.percentile(boots, 2.5) > 0 or np.percentile(boots, 97.5) < 0)


def test_mcnemar_matches_scipy_binomtest_on_the_discordant_images():
    rng = np.random.default_rng(0)
    a = rng.random((20, 40)) < 0.3
    b = rng.random((20, 40)) < 0.5
    p = fstats.mcnemar_p(a, b)
    for c in range(20):
        n01, n10 = int((a[c] & ~b[c]).sum()), int((b[c] & ~a[c]).sum())
        expected = stats.binomtest(n01, n01 + n10, 0.5).pvalue if n01 + n10 else 1.0
        assert p[c] == pytest.approx(expected)


def test_benjamini_hochberg_on_a_hand_table():
    # sorted p: .001 .008 .039 .041 .042 .06; thresholds q*i/m with q=.05, m=6: .0083 .0167 .025 .033 .042 .05
    # the largest i with p_(i) <= threshold is i = 5 (.042 <= .0417? no) -> i = 2
    p = np.array([0.041, 0.001, 0.06, 0.008, 0.042, 0.039])
    assert list(fstats.benjamini_hochberg(p, 0.05)) == [False, True, False, True, False, False]
    assert not fstats.benjamini_hochberg(np.array([0.5, 0.9])).any()


def test_outcomes_round_trip_as_packed_bits(tmp_path):
    path = tmp_path / "o.npz"
    wrong = np.random.default_rng(1).random((5, 13)) < 0.5
    fstats.save_outcomes(path, wrong=wrong, index=np.arange(6).reshape(2, 3))
    back = fstats.load_outcomes(path)
    assert back["wrong"].dtype == bool and np.array_equal(back["wrong"], wrong)
    assert np.array_equal(back["index"], np.arange(6).reshape(2, 3))
    with np.load(path) as raw:  # 13 images fit in 2 bytes per cell
        assert raw["wrong__bits"].shape == (5, 2)


def test_bandpass_samples_reproduce_the_point_estimates_with_unit_weights():
    fracs = np.array([0.0, 0.5, 1.0])
    low = np.array([[1, 1, 1, 1], [1, 0, 0, 1], [0, 0, 0, 0]], dtype=bool)  # acc 0, 50, 100
    high = np.array([[0, 0, 0, 0], [0, 0, 1, 1], [1, 1, 1, 1]], dtype=bool)  # acc 100, 50, 0
    s = fstats.bandpass_samples(fracs, low, high, np.full((1, 4), 0.25))
    assert s["crossing_frac"][0] == pytest.approx(0.5)
    assert s["lowpass_auc_pct"][0] == pytest.approx(50.0) and s["highpass_auc_pct"][0] == pytest.approx(50.0)
