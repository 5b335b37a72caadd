"""The fidelity tool at the small-image sizes: the reference package driven with the CIFAR-10-C and
Tiny-ImageNet-C constants, and the spread criterion catching planted discrepancies there."""

import numpy as np
import pytest

from corruptions import _filters as flt
from corruptions import torch_backend as tb
from corruptions.fidelity import compare, default_images, fidelity_table
from corruptions.reference import corrupt_one, table_function

pytest.importorskip("imagecorruptions")
pytest.importorskip("skimage")


def _gray(size):
    return np.full((size, size, 3), 128, dtype=np.uint8)


@pytest.mark.parametrize("name", ["gaussian_noise", "zoom_blur", "glass_blur", "spatter", "pixelate"])
def test_rebuilt_function_with_the_imagenet_table_is_the_package_function(name):
    # rebuilding a package function with the constants it already has changes nothing: the swap
    # touches the constant list only
    import imagecorruptions as ic
    from PIL import Image

    from corruptions.reference import _rebuilt

    img = (np.random.RandomState(1).rand(40, 36, 3) * 255).astype(np.uint8)
    for severity in (1, 4):
        kwargs = {"seed": 3} if name == "glass_blur" else {}
        np.random.seed(7)
        want = np.uint8(ic.corruption_dict[name](Image.fromarray(img), severity, **kwargs))
        np.random.seed(7)
        got = np.uint8(_rebuilt(name, "imagenet")(Image.fromarray(img), severity, **kwargs))
        np.testing.assert_array_equal(got, want)


@pytest.mark.parametrize("table,severity,sigma", [("cifar10", 1, 0.04), ("tiny-imagenet", 5, 0.18)])
def test_small_table_reference_uses_the_scripts_constants(table, severity, sigma):
    # make_cifar_c.py / make_tinyimagenet_c.py: gaussian_noise c = [.04, ...] / [..., .18]; on mid-gray
    # (no clipping within 3 sigma) the change's std is c * 255, up to sampling error
    out = corrupt_one(_gray(64), "gaussian_noise", severity, seed=0, table=table).astype(float)
    assert np.std(out - 128) == pytest.approx(sigma * 255, rel=0.03)
    # and the ImageNet-C constant (0.08 at severity 1) is something else
    if severity == 1:
        ref = corrupt_one(_gray(64), "gaussian_noise", 1, seed=0).astype(float)
        assert np.std(ref - 128) == pytest.approx(0.08 * 255, rel=0.03)
    with pytest.raises(Exception, match="elastic_transform"):
        table_function("elastic_transform", table)


def _louder(fn, factor):
    def planted(x, p, ctx):
        return (x + (fn(x, p, ctx) - x) * factor).clamp(0, 1)

    return planted


def _smoother(fn):
    # the same change blurred a little and rescaled to its former std: mean |change| stays
    def planted(x, p, ctx):
        d = fn(x, p, ctx) - x
        b = flt.gaussian_filter(d, 0.5)
        return (x + b * (d.std() / b.std())).clamp(0, 1)

    return planted


@pytest.mark.parametrize(
    "size,table,name,severity,plant",
    [(32, "cifar10", "gaussian_noise", 2, "louder"), (64, "tiny-imagenet", "motion_blur", 3, "smoother")],
)
def test_spread_criterion_catches_a_planted_discrepancy_at_small_sizes(monkeypatch, size, table, name, severity, plant):
    # 5% more noise at 32 px, or a motion blur whose change is slightly smoother at 64 px (same std):
    # within the first criteria's 10% / 0.95, outside the reference's draw-to-draw spread
    imgs = default_images(size, 2)
    honest = compare(imgs, name, severity, repeats=8, seed=1, table=table)
    assert honest["table"] == table and honest["passed"], honest
    original = tb.FUNCTIONS[name]
    planted = _louder(original, 1.05) if plant == "louder" else _smoother(original)
    monkeypatch.setitem(tb.FUNCTIONS, name, planted)
    row = compare(imgs, name, severity, repeats=8, seed=1, table=table)
    # the first criteria let it through ...
    assert abs(row["mean_abs_ratio"] - 1) <= 0.10 and row["spectrum_corr"] >= 0.95
    # ... the spread criterion does not
    assert not row["spread_passed"] and not row["passed"]
    if plant == "louder":
        assert all(abs(row[f"std_{c}_ratio"] - 1.05) < 0.02 for c in "rgb")
        assert all(row[f"std_{c}_ratio"] - 1 > row[f"std_{c}_tol"] for c in "rgb")
    else:
        assert 1 - row["centroid_ratio"] > row["centroid_tol"]


def test_fidelity_table_picks_the_small_table_by_size():
    imgs = default_images(32, 1)
    frame = fidelity_table(imgs, ["contrast", "elastic_transform"], (3,), repeats=2, show_progress=False)
    assert list(frame["table"]) == ["cifar10", "imagenet"]  # elastic: no package path for the small table
    assert frame["passed"].all()
