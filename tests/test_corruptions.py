"""corruptions: API, errors, every corruption x severity on CPU (uint8 and float, several sizes),
determinism, parameter tables."""

from __future__ import annotations

import pytest
import torch

from corruptions import COMMON, EXTRA, GROUPS, corrupt, names
from corruptions import params as ptab
from corruptions.fidelity import DETERMINISTIC
from fdbench.errors import FdbenchError

RANDOM = [n for n in COMMON + EXTRA if n not in DETERMINISTIC]


def _images(n=2, h=32, w=32, seed=0):
    g = torch.Generator().manual_seed(seed)
    # smooth structure plus texture: every corruption changes such images
    yy, xx = torch.meshgrid(torch.linspace(0, 1, h), torch.linspace(0, 1, w), indexing="ij")
    base = torch.stack([yy, xx, (yy + xx) / 2])[None].repeat(n, 1, 1, 1)
    x = (0.7 * base + 0.3 * torch.rand(n, 3, h, w, generator=g)).clamp(0, 1)
    return (x * 255).round().to(torch.uint8)


def test_names_and_groups():
    assert len(names("common")) == 15 and len(names("extra")) == 4 and len(names()) == 19
    assert names("common")[:3] == ["gaussian_noise", "shot_noise", "impulse_noise"]
    assert names("common")[-1] == "jpeg_compression"
    assert names("extra") == ["speckle_noise", "gaussian_blur", "spatter", "saturate"]
    assert sum(len(GROUPS[g]) for g in ("noise", "blur", "weather", "digital")) == 15
    assert set(names("noise,blur,weather,digital")) == set(COMMON)
    assert names("fog,contrast") == ["fog", "contrast"]
    assert names("validation") == list(EXTRA)  # the reference package's name for the extra set


@pytest.mark.parametrize(
    "call, words",
    [
        (lambda x: names("bogus"), ["bogus", "common", "weather"]),
        (lambda x: corrupt(x, "not_a_corruption", 1), ["not_a_corruption", "gaussian_noise", "saturate"]),
        (lambda x: corrupt(x, "fog", 0), ["1-5"]),
        (lambda x: corrupt(x, "fog", 6), ["1-5"]),
        (lambda x: corrupt(x, "fog", 2.0), ["1-5"]),
        (lambda x: corrupt(x, "fog", True), ["1-5"]),
        (lambda x: corrupt(x, "fog", 1, backend="numpy"), ["torch", "reference"]),
        (lambda x: corrupt(x, "fog", 1, params="imagenet-x"), ["auto", "tiny-imagenet", "cifar10"]),
        (lambda x: corrupt(x[..., :31, :], "fog", 1), ["32"]),
        (lambda x: corrupt(x[:, :1], "fog", 1), ["[N, 3, H, W]"]),
        (lambda x: corrupt(x.to(torch.int32), "fog", 1), ["uint8"]),
        (lambda x: corrupt(x.numpy(), "fog", 1), ["torch tensor"]),
        (lambda x: corrupt(x, "fog", 1, generator="seed"), ["generator"]),
        (lambda x: corrupt(x, "fog", 1, backend="reference", params="cifar10"), ["ImageNet-C"]),
    ],
)
def test_bad_input_is_a_clear_error(call, words):
    with pytest.raises(FdbenchError) as err:
        call(_images(1))
    for w in words:
        assert w in str(err.value)


@pytest.mark.parametrize("name", COMMON + EXTRA)
def test_every_severity_uint8_and_float_32px(name):
    x = _images(2, 32, 32)
    xf = x.float() / 255
    for s in range(1, 6):
        y = corrupt(x, name, s, generator=s)
        assert y.dtype == torch.uint8 and y.shape == x.shape and y.device == x.device
        yf = corrupt(xf, name, s, generator=s)
        assert yf.dtype == torch.float32 and yf.shape == x.shape
        assert torch.isfinite(yf).all() and yf.min() >= 0 and yf.max() <= 1
        # the uint8 and float paths compute the same thing (truncation vs none, up to 8-bit steps)
        assert (y.float() - yf * 255).abs().mean() < 3.0
    one = corrupt(x[0], name, 3, generator=0)
    assert one.shape == x[0].shape and one.dtype == torch.uint8
    assert not torch.equal(corrupt(x, name, 5, generator=0), x)


@pytest.mark.parametrize("h, w", [(64, 64), (40, 72), (224, 224)])
def test_sizes_and_float64(h, w):
    x = _images(1, h, w)
    sev = [3] if h == 224 else [1, 5]
    for name in COMMON + EXTRA:
        for s in sev:
            y = corrupt(x, name, s, generator=0)
            assert y.shape == x.shape and y.dtype == torch.uint8
    y = corrupt(x.double() / 255, "motion_blur", 2, generator=0)
    assert y.dtype == torch.float64 and y.shape == x.shape


def test_seeds_give_determinism_and_randomness():
    x = _images(2, 32, 40)
    for name in RANDOM:
        a = corrupt(x, name, 3, generator=7)
        assert torch.equal(a, corrupt(x, name, 3, generator=7)), name
        assert not torch.equal(a, corrupt(x, name, 3, generator=8)), name
    for name in DETERMINISTIC:
        assert torch.equal(corrupt(x, name, 3, generator=1), corrupt(x, name, 3, generator=2)), name


def test_random_parameters_are_drawn_per_image():
    x = _images(1, 48, 48).repeat(2, 1, 1, 1)  # two identical images
    for name in ("motion_blur", "frost", "fog", "glass_blur", "elastic_transform", "snow", "spatter"):
        y = corrupt(x, name, 4, generator=3)
        assert not torch.equal(y[0], y[1]), name


def test_generator_object_and_global_rng():
    x = _images(1)
    g = torch.Generator().manual_seed(5)
    a = corrupt(x, "gaussian_noise", 2, generator=g)
    b = corrupt(x, "gaussian_noise", 2, generator=g)  # the generator advanced
    assert not torch.equal(a, b)
    torch.manual_seed(0)
    c = corrupt(x, "gaussian_noise", 2)
    torch.manual_seed(0)
    assert torch.equal(c, corrupt(x, "gaussian_noise", 2))


def test_auto_table_by_size():
    assert ptab.auto_table(32, 32) == "cifar10"
    assert ptab.auto_table(48, 100) == "cifar10"
    assert ptab.auto_table(64, 64) == "tiny-imagenet"
    assert ptab.auto_table(144, 300) == "tiny-imagenet"
    assert ptab.auto_table(145, 145) == "imagenet"
    assert ptab.auto_table(500, 375) == "imagenet"
    assert ptab.resolve_table("Tiny", 224, 224) == "tiny-imagenet"


def test_tables_cover_every_corruption_and_change_the_result():
    for table in ptab.TABLES:
        for name in COMMON + EXTRA:
            for s in range(1, 6):
                ptab.severity_params(table, name, s)
    # gaussian noise std: the change's std on mid-gray float images is the table's value
    x = torch.full((2, 3, 64, 64), 0.5)
    for table, std in (("imagenet", 0.08), ("tiny-imagenet", 0.04), ("cifar10", 0.04)):
        d = corrupt(x, "gaussian_noise", 1, generator=0, params=table) - x
        assert abs(d.std().item() - std) < 0.004
    # auto at 64 px is the Tiny-ImageNet-C table
    assert torch.equal(
        corrupt(x, "gaussian_noise", 3, generator=1),
        corrupt(x, "gaussian_noise", 3, generator=1, params="tiny-imagenet"),
    )


def test_reference_backend_matches_its_own_seeding():
    x = _images(2, 40, 40)
    a = corrupt(x, "impulse_noise", 2, backend="reference", generator=1)
    assert a.dtype == torch.uint8 and a.shape == x.shape
    assert torch.equal(a, corrupt(x, "impulse_noise", 2, backend="reference", generator=1))
    f = corrupt(x.float() / 255, "contrast", 2, backend="reference")
    assert (
        f.dtype == torch.float32
        and (f * 255 - corrupt(x, "contrast", 2, params="imagenet").float()).abs().max() <= 1.01
    )


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_keeps_device_and_matches_cpu_for_deterministic():
    x = _images(2, 64, 64)
    for name in COMMON + EXTRA:
        for s in (1, 5):
            y = corrupt(x.cuda(), name, s, generator=0)
            assert y.device.type == "cuda" and y.dtype == torch.uint8 and y.shape == x.shape
    for name in DETERMINISTIC:
        if name == "jpeg_compression":
            continue  # nvJPEG and libjpeg differ slightly
        d = (corrupt(x.cuda(), name, 3).cpu().float() - corrupt(x, name, 3).float()).abs()
        assert d.max() <= 1, name


def test_families_match_the_reference_package_and_the_paper():
    # Hendrycks & Dietterich 2019, Figure 1: brightness is a weather corruption
    import imagecorruptions
    from analysis import metrics, plots

    for family in ("noise", "blur", "weather", "digital"):
        assert list(GROUPS[family]) == imagecorruptions.get_corruption_names(family)
        assert metrics.GROUPS[family] == GROUPS[family]
        assert all(plots.FAMILY_OF[c] == family for c in GROUPS[family])
    assert "brightness" in GROUPS["weather"] and "brightness" not in GROUPS["digital"]
    assert metrics.group_of("brightness") == "weather"
