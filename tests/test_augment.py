"""Multi-crop shapes and blur probabilities, Gaussian noise patching statistics, the collate."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from fdbench.errors import FdbenchError
from pretrain.augment import GaussianNoisePatch, MultiCropAugmentation, RandomGaussianBlur, collate_multicrop


@pytest.fixture(autouse=True)
def _one_thread():
    # the crops are tiny: with several intra-op threads on a busy machine each blur waits on
    # thread hand-offs (30 ms instead of 0.2 ms). DataLoader workers run single-threaded too.
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def _image(w=40, h=30, seed=0):
    rng = np.random.default_rng(seed)
    return Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8), mode="RGB")


# ---------------------------------------------------------------- multi-crop
def test_crop_sizes_and_counts():
    torch.manual_seed(0)
    out = MultiCropAugmentation(global_size=32, local_size=16, n_local=3)(_image())
    assert len(out["global_crops"]) == 2 and len(out["local_crops"]) == 3
    assert all(c.shape == (3, 32, 32) and c.dtype == torch.float32 for c in out["global_crops"])
    assert all(c.shape == (3, 16, 16) for c in out["local_crops"])
    # normalised with ImageNet statistics: values leave [0, 1]
    assert out["global_crops"][0].min() < 0
    assert MultiCropAugmentation(24, 8, n_local=0)(_image())["local_crops"] == []
    # uint8 tensors are accepted too
    tensor_img = torch.randint(0, 256, (3, 30, 40), dtype=torch.uint8)
    assert MultiCropAugmentation(16, 8, n_local=1)(tensor_img)["global_crops"][0].shape == (3, 16, 16)


def _count_blurs(aug, n_images):
    counts = {"global1": 0, "global2": 0, "local": 0}

    def counter(key):
        def blur(img, sigma):
            assert 0.1 <= sigma <= 2.0
            counts[key] += 1
            return img

        return blur

    # instance attributes shadow the method: the Compose pipelines hold these very objects
    aug.blur_global1._blur = counter("global1")
    aug.blur_global2._blur = counter("global2")
    aug.blur_local._blur = counter("local")
    img = _image(16, 16)
    for _ in range(n_images):
        aug(img)
    return counts


def test_blur_probabilities_intended_and_inverted():
    torch.manual_seed(1)
    n = 200
    intended = MultiCropAugmentation(8, 8, n_local=2)
    assert intended.blur_probs_effective == (1.0, 0.1, 0.5)
    counts = _count_blurs(intended, n)
    assert counts["global1"] == n  # p = 1.0
    assert 5 <= counts["global2"] <= 40  # p = 0.1: mean 20, sd 4.2
    assert 150 <= counts["local"] <= 250  # p = 0.5 over 2 local crops: mean 200, sd 10
    inverted = MultiCropAugmentation(8, 8, n_local=2, inverted_blur=True)
    assert inverted.blur_probs_effective == pytest.approx((0.0, 0.9, 0.5))
    counts = _count_blurs(inverted, n)
    assert counts["global1"] == 0  # the reference code never blurs global crop 1
    assert 160 <= counts["global2"] <= 195  # p = 0.9: mean 180, sd 4.2
    assert 150 <= counts["local"] <= 250


def test_random_gaussian_blur_frequency_and_effect():
    torch.manual_seed(2)
    x = torch.zeros(3, 15, 15)
    x[:, 7, 7] = 1.0
    blurred = [not torch.equal(RandomGaussianBlur(0.3)(x), x) for _ in range(2000)]
    assert abs(np.mean(blurred) - 0.3) < 0.04  # 4.5 standard deviations
    out = RandomGaussianBlur(1.0)(x)
    assert out[:, 7, 7].max() < 1.0 and out[:, 7, 8].min() > 0.0  # mass spread to the neighbours
    assert out.sum().item() == pytest.approx(3.0, rel=1e-4)  # a normalised kernel


def test_noise_patch_is_applied_once_to_the_whole_image_before_cropping():
    seen = []

    class Spy(GaussianNoisePatch):
        def __call__(self, img, generator=None):
            seen.append(img.size)
            return super().__call__(img, generator)

    aug = MultiCropAugmentation(16, 8, n_local=4, noise_patch=Spy())
    aug(_image(40, 30))
    assert seen == [(40, 30)]  # full image, once, before the 6 crops


# ---------------------------------------------------------------- Gaussian noise patching
def _changed(before, after):
    return (before != after).any(dim=-3)  # [.., H, W] any channel changed


def test_noise_patch_side_and_position_distribution():
    n, size = 4000, 8
    x = torch.full((n, 3, size, size), 0.5)
    out = GaussianNoisePatch(max_sigma=0.5)(x, generator=torch.Generator().manual_seed(3))
    changed = _changed(x, out)
    sides, tops = [], []
    for m in changed:
        rows, cols = m.any(dim=1).nonzero().flatten(), m.any(dim=0).nonzero().flatten()
        if len(rows) == 0:  # sigma ~ U(0, 0.5) can be tiny, but never exactly 0 change in float
            continue
        h, w = rows.max() - rows.min() + 1, cols.max() - cols.min() + 1
        assert h == w  # a square
        sides.append(int(h))
        tops.append(int(rows.min()))
    assert len(sides) == n
    counts = np.bincount(sides, minlength=size + 1)[1:]
    # side ~ U{1..8}: chi-square with 7 dof; 24.3 is its 0.999 quantile
    expected = n / size
    assert ((counts - expected) ** 2 / expected).sum() < 24.3
    # position: for side 4 the top is uniform on 0..4
    top_for_4 = np.bincount([t for s, t in zip(sides, tops) if s == 4], minlength=5)
    assert top_for_4.min() > 0.5 * top_for_4.mean()


def test_noise_patch_sigma_range_and_untouched_outside():
    patcher = GaussianNoisePatch(max_sigma=0.1)
    sigmas = [patcher.draw(64, 64, torch.Generator().manual_seed(s))[3] for s in range(500)]
    assert 0.0 <= min(sigmas) and max(sigmas) < 0.1
    assert abs(np.mean(sigmas) - 0.05) < 0.005  # U(0, 0.1): mean 0.05, se 0.0013
    # the applied noise matches its draw: same generator seed -> same patch and sigma
    checked = 0
    for seed in range(40):
        side, top, left, sigma = patcher.draw(64, 64, torch.Generator().manual_seed(seed))
        x = torch.full((3, 64, 64), 0.5)
        out = patcher(x, generator=torch.Generator().manual_seed(seed))
        inside = torch.zeros(64, 64, dtype=torch.bool)
        inside[top : top + side, left : left + side] = True
        assert torch.equal(out[:, ~inside], x[:, ~inside])  # pixels outside the patch untouched
        if side >= 16 and sigma > 0.01:  # enough pixels, no clamping at 0.5 +- 5 sigma
            noise = out[:, inside] - 0.5
            assert noise.std().item() == pytest.approx(sigma, rel=0.15)
            assert abs(noise.mean().item()) < 4 * sigma / np.sqrt(noise.numel()) + 1e-6
            checked += 1
    assert checked >= 5


def test_noise_patch_clamps_and_keeps_types():
    gen = torch.Generator().manual_seed(4)
    patcher = GaussianNoisePatch(max_sigma=5.0)
    ones = torch.ones(50, 3, 16, 16)
    out = patcher(ones, generator=gen)
    assert out.max() <= 1.0 and out.min() >= 0.0
    assert (out < 1.0).any()  # noise went below 1 and stayed in range
    assert torch.equal(ones, torch.ones_like(ones))  # input not modified in place
    img = _image(20, 12)
    pil_out = patcher(img, generator=gen)
    assert isinstance(pil_out, Image.Image) and pil_out.size == (20, 12) and pil_out.mode == "RGB"
    u8 = torch.full((3, 10, 10), 128, dtype=torch.uint8)
    u8_out = patcher(u8, generator=gen)
    assert u8_out.dtype == torch.uint8 and u8_out.shape == u8.shape
    zeros_out = patcher(torch.zeros(50, 3, 16, 16), generator=gen)
    assert zeros_out.min() >= 0.0 and (zeros_out > 0).any()  # clamped at 0 from below as well


def test_noise_patch_probability_and_bad_input():
    x = torch.full((400, 3, 6, 6), 0.5)
    gen = torch.Generator().manual_seed(5)
    assert torch.equal(GaussianNoisePatch(p=0.0)(x, generator=gen), x)
    frac = _changed(x, GaussianNoisePatch(p=0.5)(x, generator=gen)).flatten(1).any(1).float().mean()
    assert 0.4 < frac < 0.6
    with pytest.raises(FdbenchError, match="sigma"):
        GaussianNoisePatch(max_sigma=-1)
    with pytest.raises(FdbenchError, match="shape"):
        GaussianNoisePatch()(torch.zeros(6, 6))
    with pytest.raises(FdbenchError, match="scale"):
        MultiCropAugmentation(16, 8, global_scale=(0.0, 1.0))
    with pytest.raises(FdbenchError, match="blur"):
        MultiCropAugmentation(16, 8, blur_probs=(1.0, 0.1))


# ---------------------------------------------------------------- collate
def test_collate_is_crop_major_with_masks():
    b, n_local = 3, 2
    samples = []
    for i in range(b):
        # every crop is filled with 10 * crop + image so its origin can be read back
        crops = {
            "global_crops": [torch.full((3, 32, 32), 10.0 * c + i) for c in range(2)],
            "local_crops": [torch.full((3, 16, 16), 100.0 + 10 * c + i) for c in range(n_local)],
        }
        samples.append((crops, i + 7))
    batch = collate_multicrop(samples, patch_size=16, mask_probability=0.5, generator=torch.Generator().manual_seed(0))
    assert batch.global_crops.shape == (2 * b, 3, 32, 32) and batch.local_crops.shape == (n_local * b, 3, 16, 16)
    assert batch.global_crops[:, 0, 0, 0].tolist() == [0, 1, 2, 10, 11, 12]  # rows c*B:(c+1)*B = crop c
    assert batch.local_crops[:, 0, 0, 0].tolist() == [100, 101, 102, 110, 111, 112]
    assert batch.masks.shape == (6, 4) and batch.masks.dtype == torch.bool  # (32 / 16)^2 patches
    # the iBOT gather, computed here on the CPU: flat indices of the masked tokens and their weights
    per_image = batch.masks.sum(1).clamp(min=1).float()
    assert torch.equal(batch.mask_indices, batch.masks.flatten().nonzero().flatten())
    assert torch.equal(batch.mask_weights, (1 / per_image).repeat_interleave(4)[batch.mask_indices])
    assert batch.labels.tolist() == [7, 8, 9]
    no_local = [({"global_crops": c["global_crops"], "local_crops": []}, y) for c, y in samples]
    assert collate_multicrop(no_local, patch_size=16).local_crops is None
    with pytest.raises(FdbenchError, match="multiple of the patch size"):
        collate_multicrop(samples, patch_size=14)


def test_augment_then_collate_end_to_end():
    torch.manual_seed(6)
    aug = MultiCropAugmentation(32, 16, n_local=2, noise_patch=GaussianNoisePatch())
    batch = collate_multicrop([(aug(_image(seed=s)), s) for s in range(4)], patch_size=8)
    assert batch.global_crops.shape == (8, 3, 32, 32) and batch.masks.shape == (8, 16)
    assert int((batch.masks.sum(1) > 0).sum()) == 4  # half the global crops


def test_blur_sigma_range_reaches_both_pipelines():
    """crops.blur_sigma sets the blur's sigma range in the CPU and the on-device multi-crop."""
    from pretrain.config import preset
    from pretrain.pipeline import make_augment, make_gpu_augment
    from pretrain.stages import plan_stages, resolve_curriculum

    cfg = preset("cpu-tiny")
    cfg.crops.blur_sigma = (0.2, 0.6)
    stage = plan_stages(cfg, resolve_curriculum(cfg))[0]
    cpu = make_augment(cfg, stage)
    for blur in (cpu.blur_global1, cpu.blur_global2, cpu.blur_local):
        assert (blur.sigma_min, blur.sigma_max) == (0.2, 0.6)
    gpu = make_gpu_augment(cfg, stage)
    sizes = torch.tensor([[32, 32]] * 64)
    params = gpu.sample_params(sizes, torch.Generator().manual_seed(0))
    assert 0.2 <= float(params.blur_sigma.min()) and float(params.blur_sigma.max()) <= 0.6
    assert float(params.blur_sigma.max() - params.blur_sigma.min()) > 0.2  # drawn over the range
    with pytest.raises(FdbenchError, match="blur sigma"):
        MultiCropAugmentation(blur_sigma=(0.0, 1.0))
