"""The on-device multi-crop pipeline: exact per-crop semantics and the same distributions as the CPU pipeline (pretrain.augment).

Everything runs on CPU tensors (the pipeline code is device-agnostic); one CUDA test checks the
float16 resampling there and skips without CUDA.
"""

from __future__ import annotations

import math
from collections import defaultdict

import numpy as np
import pytest
import torch
import torchvision.transforms as T
import torchvision.transforms.functional as TF
from PIL import Image
from scipy.stats import ks_2samp

from fdbench.errors import FdbenchError
from pretrain import gpu_augment as ga
from pretrain import gpu_ops
from pretrain.batch import DecodedBatch
from pretrain.gpu_augment import AugParams, GpuMultiCrop

MEAN = torch.tensor(ga.IMAGENET_MEAN).view(3, 1, 1)
STD = torch.tensor(ga.IMAGENET_STD).view(3, 1, 1)


def smooth_images(sizes, seed=0):
    """uint8 images with smooth colour gradients (little bicubic overshoot), padded into one batch."""
    g = torch.Generator().manual_seed(seed)
    hmax, wmax = max(h for h, _ in sizes), max(w for _, w in sizes)
    batch = torch.zeros(len(sizes), 3, hmax, wmax, dtype=torch.uint8)
    for i, (h, w) in enumerate(sizes):
        low = torch.rand(1, 3, 4, 5, generator=g)
        img = torch.nn.functional.interpolate(low, size=(h, w), mode="bilinear", align_corners=True)[0]
        batch[i, :, :h, :w] = (img * 255).round().to(torch.uint8)
    return batch, torch.tensor(sizes, dtype=torch.long)


# ---------------------------------------------------------------------- exact building blocks
def test_resampling_matches_pil_crop_and_resize():
    rng = np.random.default_rng(0)
    arr = (rng.random((60, 80, 3)) * 255).astype(np.uint8)
    x = torch.from_numpy(arr).permute(2, 0, 1).float() / 255
    for top, left, h, w, size, flip in [
        (5, 7, 40, 50, 24, False),
        (0, 0, 60, 80, 96, True),
        (10, 3, 17, 20, 48, False),
    ]:
        ref = Image.fromarray(arr).crop((left, top, left + w, top + h)).resize((size, size), Image.BICUBIC)
        if flip:
            ref = ref.transpose(Image.FLIP_LEFT_RIGHT)
        ref = np.asarray(ref).astype(np.float32) / 255
        wx = gpu_ops.resample_matrix(
            torch.tensor([left]), torch.tensor([w]), 80, size, torch.tensor([flip]), torch.float32
        )[0]
        wy = gpu_ops.resample_matrix(torch.tensor([top]), torch.tensor([h]), 60, size, None, torch.float32)[0]
        out = (wy @ (x @ wx.T).clamp(0, 1)).clamp(0, 1).permute(1, 2, 0).numpy()
        # PIL rounds to 8 bits between its two passes: at most ~1 grey level apart
        assert np.abs(out - ref).max() <= 1.5 / 255
        assert np.abs(out - ref).mean() <= 0.5 / 255


def test_hue_matches_torchvision():
    x = torch.rand(5, 3, 9, 11, generator=torch.Generator().manual_seed(1))
    x[0, :, :2] = 0.5  # grey pixels: hue undefined, must stay grey
    shifts = torch.tensor([0.0, 0.1, -0.1, 0.05, -0.073])
    out = gpu_ops.adjust_hue(x, shifts)
    for i, s in enumerate(shifts.tolist()):
        torch.testing.assert_close(out[i], TF.adjust_hue(x[i], s), atol=2e-6, rtol=0)


def test_blur_matches_torchvision():
    x = torch.rand(3, 3, 20, 20, generator=torch.Generator().manual_seed(2))
    sigma = torch.tensor([0.1, 1.3, 2.0])
    apply = torch.tensor([True, True, False])
    out = gpu_ops.gaussian_blur(x, apply, sigma)
    for i in range(3):
        ref = TF.gaussian_blur(x[i], [9, 9], [sigma[i].item()] * 2) if apply[i] else x[i]
        torch.testing.assert_close(out[i], ref, atol=1e-6, rtol=0)


def test_rrc_fallback_is_torchvisions_central_crop():
    # scale far above what fits: every try fails, torchvision's central crop (ratio clamped) remains
    h, w = torch.tensor([30, 100, 40]), torch.tensor([100, 30, 40])
    scale = torch.tensor([[50.0, 60.0]] * 3)
    top, left, ch, cw = gpu_ops.sample_rrc_boxes(h, w, scale, lambda *s: torch.rand(*s))
    for i in range(3):
        ref = T.RandomResizedCrop.get_params(torch.zeros(1, int(h[i]), int(w[i])), [50.0, 60.0], [3 / 4, 4 / 3])
        assert (int(top[i]), int(left[i]), int(ch[i]), int(cw[i])) == ref


# ---------------------------------------------------------------------- whole pipeline, exact per crop
def reference_crop(image_f, p: AugParams, r: int, size: int) -> torch.Tensor:
    """One crop through torchvision's functional ops on float tensors, in DINOv2's order."""
    x = TF.resized_crop(
        image_f,
        int(p.top[r]),
        int(p.left[r]),
        int(p.height[r]),
        int(p.width[r]),
        [size, size],
        T.InterpolationMode.BICUBIC,
        antialias=True,
    ).clamp(0, 1)
    if p.flip[r]:
        x = TF.hflip(x)
    if p.jitter_apply[r]:
        fb, fc, fs, fh = p.jitter_factors[r].tolist()
        for op in p.jitter_order[r].tolist():
            x = [
                lambda v: TF.adjust_brightness(v, fb),
                lambda v: TF.adjust_contrast(v, fc),
                lambda v: TF.adjust_saturation(v, fs),
                lambda v: TF.adjust_hue(v, fh),
            ][op](x)
    if p.gray[r]:
        x = TF.rgb_to_grayscale(x, num_output_channels=3)
    if p.blur_apply[r]:
        x = TF.gaussian_blur(x, [9, 9], [float(p.blur_sigma[r])] * 2)
    if p.solarize[r]:
        x = TF.solarize(x, 128 / 255)
    return TF.normalize(x, ga.IMAGENET_MEAN, ga.IMAGENET_STD)


def test_every_crop_equals_torchvision_ops_with_the_same_parameters():
    sizes = [(48, 64), (60, 40), (33, 57)]
    images, sz = smooth_images(sizes)
    aug = GpuMultiCrop(global_size=32, local_size=16, n_local=2, patch_size=8, jitter_p=0.9)
    params = aug.sample_params(sz, torch.Generator().manual_seed(3))
    glob, loc = aug.apply(images, sz, params)
    assert glob.shape == (6, 3, 32, 32) and loc.shape == (6, 3, 16, 16)
    assert params.jitter_apply.any() and params.flip.any() and params.blur_apply.any()
    for r in range(12):
        b, size = r % 3, (32 if r < 6 else 16)
        h, w = sizes[b]
        ref = reference_crop(images[b, :, :h, :w].float() / 255, params, r, size)
        mine = glob[r] if r < 6 else loc[r - 6]
        diff = ((mine - ref) * STD).abs()  # in [0,1] pixel units
        # float ties at the solarise threshold may flip single pixels; everything else agrees closely
        assert (diff > 2e-3).float().mean() < 0.01, (r, diff.max())
        assert diff.median() < 1e-4


def test_color_jitter_skipped_crops_are_untouched_bit_for_bit():
    g = torch.Generator().manual_seed(5)
    x = torch.rand(6, 3, 8, 8, generator=g)
    order = torch.argsort(torch.rand(6, 4, generator=g), dim=1)
    factors = torch.rand(6, 4, generator=g) + 0.5
    apply = torch.tensor([True, False, True, False, False, True])
    out = gpu_ops.color_jitter(x, apply, order, factors)
    assert torch.equal(out[~apply], x[~apply])
    assert not torch.allclose(out[apply], x[apply])


def test_color_jitter_equals_torchvision_ops_in_each_crops_order():
    g = torch.Generator().manual_seed(6)
    n = 24
    x = torch.rand(n, 3, 6, 6, generator=g)
    order = torch.stack([torch.randperm(4, generator=g) for _ in range(n)])
    factors = torch.cat([0.6 + 0.8 * torch.rand(n, 3, generator=g), 0.2 * torch.rand(n, 1, generator=g) - 0.1], 1)
    apply = torch.rand(n, generator=g) < 0.8
    out = gpu_ops.color_jitter(x, apply, order, factors)
    ops = (TF.adjust_brightness, TF.adjust_contrast, TF.adjust_saturation, TF.adjust_hue)
    for r in range(n):
        ref = x[r]
        if apply[r]:
            for op in order[r].tolist():
                ref = ops[op](ref, float(factors[r, op]))
        torch.testing.assert_close(out[r], ref, rtol=0, atol=2e-5)


class _OpCount(torch.utils._python_dispatch.TorchDispatchMode):
    """Counts every aten op that reaches the backend (what a device would launch, views included)."""

    def __init__(self):
        super().__init__()
        self.n = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        self.n += 1
        return func(*args, **(kwargs or {}))


def test_op_count_per_batch_does_not_grow_with_crops_or_images():
    """Launch cost: a batch costs a fixed number of ops, whatever the number of local crops or images
    (no per-crop or per-image Python loop), so the GPU pipeline stays a few hundred launches a batch."""
    counts = {}
    for n_local, n_img in ((2, 3), (8, 3), (8, 6)):
        images, sz = smooth_images([(48, 64), (60, 40), (33, 57)] * (n_img // 3))
        aug = GpuMultiCrop(global_size=32, local_size=16, n_local=n_local, patch_size=8, noise_patching=True)
        params = aug.sample_params(sz, torch.Generator().manual_seed(3))
        with _OpCount() as ops:
            aug.apply(images, sz, params, torch.Generator().manual_seed(4))
        counts[(n_local, n_img)] = ops.n
    assert len(set(counts.values())) == 1, counts


def test_crop_major_order_and_batch_dict():
    # each image one flat colour, photometric ops off: every crop row r must carry image r % B's colour
    colours = torch.tensor([[200, 10, 10], [10, 200, 10], [10, 10, 200], [120, 120, 0]], dtype=torch.uint8)
    images = colours.view(4, 3, 1, 1).expand(4, 3, 40, 50).clone()
    sizes = torch.tensor([[40, 50], [30, 50], [40, 20], [35, 45]])
    for i, (h, w) in enumerate(sizes.tolist()):
        images[i, :, h:, :] = 0
        images[i, :, :, w:] = 0  # padding must never leak into a crop
    aug = GpuMultiCrop(
        global_size=16, local_size=8, n_local=3, patch_size=8, jitter_p=0, gray_p=0, blur_probs=(0, 0, 0), solarize_p=0
    )
    out = aug(
        DecodedBatch(images=images, sizes=sizes, labels=torch.arange(4), masks=torch.zeros(8, 4, dtype=torch.bool)),
        torch.Generator().manual_seed(0),
    )
    assert out.global_crops.shape == (8, 3, 16, 16) and out.local_crops.shape == (12, 3, 8, 8)
    assert out.masks.shape == (8, 4) and out.labels.tolist() == [0, 1, 2, 3]
    assert out.mask_indices.numel() == 0 and out.mask_weights.numel() == 0  # nothing masked
    expected = (colours.float() / 255 - MEAN.view(1, 3)) / STD.view(1, 3)
    for name, n in (("global_crops", 8), ("local_crops", 12)):
        means = getattr(out, name).mean(dim=(2, 3))
        torch.testing.assert_close(means, expected[torch.arange(n) % 4], atol=1e-4, rtol=0)


def test_masks_from_a_make_masks_when_the_batch_has_none():
    images, sizes = smooth_images([(40, 40)] * 4)
    aug = GpuMultiCrop(global_size=32, local_size=16, n_local=0, patch_size=8)
    out = aug(
        DecodedBatch(images=images, sizes=sizes, labels=torch.zeros(4, dtype=torch.long)),
        torch.Generator().manual_seed(0),
        mask_generator=torch.Generator().manual_seed(0),
    )
    assert out.local_crops is None
    assert out.masks.shape == (8, 16) and out.masks.dtype == torch.bool
    assert (out.masks.sum(1) > 0).sum() == 4  # mask_probability 0.5 of 8 global crops
    assert torch.equal(out.mask_indices, out.masks.flatten().nonzero().flatten())
    assert out.mask_weights.shape == out.mask_indices.shape


def test_noise_patch_semantics():
    x = torch.full((2, 3, 40, 50), 0.5)
    p = AugParams(
        noise_apply=torch.tensor([True, False]),
        noise_side=torch.tensor([20, 20]),
        noise_top=torch.tensor([5, 5]),
        noise_left=torch.tensor([10, 10]),
        noise_sigma=torch.tensor([0.1, 0.1]),
        **{
            k: torch.zeros(1)
            for k in (
                "top",
                "left",
                "height",
                "width",
                "flip",
                "jitter_apply",
                "jitter_order",
                "jitter_factors",
                "gray",
                "blur_apply",
                "blur_sigma",
                "solarize",
            )
        },
    )
    out = ga._noise_patch(x, p, torch.Generator().manual_seed(0))
    inside = out[0, :, 5:25, 10:30]
    outside = out[0].clone()
    outside[:, 5:25, 10:30] = 0.5
    assert torch.equal(outside, x[0]) and torch.equal(out[1], x[1])
    assert abs(inside.std().item() - 0.1) < 0.01 and abs(inside.mean().item() - 0.5) < 0.01
    assert out.min() >= 0 and out.max() <= 1


def test_bad_inputs_are_user_errors():
    with pytest.raises(FdbenchError, match="multiple of the patch"):
        GpuMultiCrop(global_size=30, patch_size=16)
    with pytest.raises(FdbenchError, match="global_scale"):
        GpuMultiCrop(global_scale=(0.5, 1.5))
    aug = GpuMultiCrop(global_size=16, local_size=16, patch_size=16, n_local=1)
    with pytest.raises(FdbenchError, match="uint8"):
        aug.apply(torch.zeros(1, 3, 8, 8), torch.tensor([[8, 8]]), aug.sample_params(torch.tensor([[8, 8]])))


# ---------------------------------------------------------------------- distributions vs the CPU pipeline
N_LOCAL = 4
SIZES = [(48, 64), (36, 120)]  # a 4:3 image and a wide one (exercises the central fallback)


@pytest.fixture(scope="module")
def cpu_pipeline_draws():
    """Run the CPU MultiCropAugmentation on PIL images and record every parameter it draws.

    Only the draws matter here, so the pixel work (resizing, colour adjustments, blurring) is
    replaced by cheap stand-ins; its sampling code and control flow run unchanged.
    """
    from pretrain import augment as A

    rec = defaultdict(list)
    state = {"crop": -1, "size": None}
    n_crops = 2 + N_LOCAL
    mp = pytest.MonkeyPatch()
    orig_rrc, orig_cj = T.RandomResizedCrop.get_params, T.ColorJitter.get_params
    orig_hflip, orig_gray, orig_sol = TF.hflip, TF.rgb_to_grayscale, TF.solarize
    orig_draw = A.GaussianNoisePatch.draw

    def kind():
        c = state["crop"] % n_crops
        return "global1" if c == 0 else "global2" if c == 1 else "local"

    def rrc(img, scale, ratio):
        i, j, h, w = orig_rrc(img, scale, ratio)
        state["crop"] += 1
        W, H = img.size
        rec[f"crop_{(W, H)}"].append((kind(), h * w / (H * W), w / h))
        rec["crop_kind"].append(kind())
        return i, j, h, w

    def cj(*args):
        out = orig_cj(*args)
        rec["jitter"].append((kind(), [int(v) for v in out[0]], out[1:]))
        return out

    def hflip(img):
        rec["flip"].append(kind())
        return orig_hflip(img)

    def gray(img, num_output_channels=1):
        rec["gray"].append(kind())
        return orig_gray(img, num_output_channels)

    def solarize(img, threshold):
        rec["solarize"].append(kind())
        return orig_sol(img, threshold)

    def blur(self, img, sigma):
        rec["blur"].append((kind(), sigma))
        return img

    def draw(self, height, width, generator=None):
        out = orig_draw(self, height, width, generator)
        rec["noise"].append((height, width, out))
        return out

    def resized_crop(img, i, j, h, w, size, *args, **kwargs):
        return Image.new("RGB", (size[-1], size[0]), (120, 80, 40))

    mp.setattr(TF, "resized_crop", resized_crop)
    for name in ("adjust_brightness", "adjust_contrast", "adjust_saturation", "adjust_hue"):
        mp.setattr(TF, name, lambda img, factor: img)
    mp.setattr(T.RandomResizedCrop, "get_params", staticmethod(rrc))
    mp.setattr(T.ColorJitter, "get_params", staticmethod(cj))
    mp.setattr(TF, "hflip", hflip)
    mp.setattr(TF, "rgb_to_grayscale", gray)
    mp.setattr(TF, "solarize", solarize)
    mp.setattr(A.RandomGaussianBlur, "_blur", blur)
    mp.setattr(A.GaussianNoisePatch, "draw", draw)
    try:
        torch.manual_seed(0)
        aug = A.MultiCropAugmentation(
            global_size=16, local_size=8, n_local=N_LOCAL, noise_patch=A.GaussianNoisePatch(max_sigma=0.5)
        )
        imgs = [Image.new("RGB", (w, h), (120, 80, 40)) for h, w in SIZES]
        for i in range(500):
            aug(imgs[i % 2])
    finally:
        mp.undo()
    return rec


@pytest.fixture(scope="module")
def gpu_pipeline_draws():
    aug = GpuMultiCrop(global_size=16, local_size=8, n_local=N_LOCAL, patch_size=8, noise_patching=True)
    n = 10_000
    sizes = torch.tensor(SIZES * (n // 2))
    return aug.sample_params(sizes, torch.Generator().manual_seed(0)), sizes, n


def _kinds(n_img):
    return np.array(["global1"] * n_img + ["global2"] * n_img + ["local"] * (N_LOCAL * n_img))


def _rate_close(k_a, n_a, k_b, n_b):
    """Two proportions agree within 4.5 standard errors."""
    pa, pb = k_a / n_a, k_b / n_b
    p = (k_a + k_b) / (n_a + n_b)
    se = math.sqrt(max(p * (1 - p), 1e-12) * (1 / n_a + 1 / n_b))
    assert abs(pa - pb) <= 4.5 * se + 1e-9, (pa, pb)


def _same_distribution(a, b):
    assert ks_2samp(np.asarray(a, float), np.asarray(b, float)).pvalue > 1e-3


def test_crop_geometry_distributions_match(cpu_pipeline_draws, gpu_pipeline_draws):
    params, sizes, n = gpu_pipeline_draws
    kinds = _kinds(n)
    img = np.tile(np.arange(n), 2 + N_LOCAL)
    area = (params.height * params.width).numpy() / (sizes[img, 0] * sizes[img, 1]).numpy()
    aspect = (params.width.double() / params.height.double()).numpy()
    for h, w in SIZES:
        cpu = cpu_pipeline_draws[f"crop_{(w, h)}"]
        on = sizes[img, 0].numpy() == h
        for group in (("global1", "global2"), ("local",)):
            sel_cpu = [(a, r) for k, a, r in cpu if k in group]
            sel = on & np.isin(kinds, group)
            assert len(sel_cpu) > 200
            _same_distribution([a for a, _ in sel_cpu], area[sel])
            _same_distribution([r for _, r in sel_cpu], aspect[sel])
    n_cpu = len(cpu_pipeline_draws["crop_kind"])
    _rate_close(len(cpu_pipeline_draws["flip"]), n_cpu, int(params.flip.sum()), len(params.flip))


def test_photometric_rates_match(cpu_pipeline_draws, gpu_pipeline_draws):
    params, _, n = gpu_pipeline_draws
    kinds = _kinds(n)
    cpu_kinds = np.array(cpu_pipeline_draws["crop_kind"])
    for kind in ("global1", "global2", "local"):
        n_cpu, sel = int((cpu_kinds == kind).sum()), kinds == kind
        count = lambda key: sum(1 for e in cpu_pipeline_draws[key] if (e[0] if isinstance(e, tuple) else e) == kind)
        _rate_close(count("jitter"), n_cpu, int(params.jitter_apply[sel].sum()), int(sel.sum()))
        _rate_close(count("gray"), n_cpu, int(params.gray[sel].sum()), int(sel.sum()))
        _rate_close(count("blur"), n_cpu, int(params.blur_apply[sel].sum()), int(sel.sum()))
        _rate_close(count("solarize"), n_cpu, int(params.solarize[sel].sum()), int(sel.sum()))
    # the intended DINOv2 values, as a sanity anchor for both
    assert abs(params.blur_apply[kinds == "global1"].float().mean() - 1.0) < 1e-9
    assert abs(params.solarize[kinds == "global2"].float().mean() - 0.2) < 0.02
    assert not params.solarize[kinds != "global2"].any()


def test_jitter_and_blur_parameter_distributions_match(cpu_pipeline_draws, gpu_pipeline_draws):
    params, _, _ = gpu_pipeline_draws
    cpu = cpu_pipeline_draws["jitter"]
    on = params.jitter_apply
    factors, order = params.jitter_factors[on], params.jitter_order[on]
    for i in range(4):
        _same_distribution([float(e[2][i]) for e in cpu], factors[:, i].numpy())
    # the op order: where hue sits, and which op comes first, are uniform over the four slots
    for op in range(4):
        cpu_pos = [e[1].index(op) for e in cpu]
        mine_pos = (order == op).int().argmax(1).numpy()
        for slot in range(4):
            _rate_close(sum(p == slot for p in cpu_pos), len(cpu_pos), int((mine_pos == slot).sum()), len(mine_pos))
    lo, hi = factors.min(0).values, factors.max(0).values
    assert torch.all(lo >= torch.tensor([0.6, 0.6, 0.8, -0.1])) and torch.all(hi <= torch.tensor([1.4, 1.4, 1.2, 0.1]))
    _same_distribution([s for _, s in cpu_pipeline_draws["blur"]], params.blur_sigma[params.blur_apply].numpy())


def test_noise_patch_distributions_match(cpu_pipeline_draws, gpu_pipeline_draws):
    params, sizes, _ = gpu_pipeline_draws
    cpu = [(h, w, d) for h, w, d in cpu_pipeline_draws["noise"] if d is not None]
    assert len(cpu) == len(cpu_pipeline_draws["noise"])  # p = 1
    assert params.noise_apply.all()
    short = torch.minimum(sizes[:, 0], sizes[:, 1]).float()
    _same_distribution([d[0] / min(h, w) for h, w, d in cpu], (params.noise_side / short).numpy())
    _same_distribution([d[3] for _, _, d in cpu], params.noise_sigma.numpy())
    rel_top = (params.noise_top.float() + 0.5) / (sizes[:, 0] - params.noise_side + 1).float()
    _same_distribution([(d[1] + 0.5) / (h - d[0] + 1) for h, _, d in cpu], rel_top.numpy())
    assert torch.all(params.noise_side >= 1) and torch.all(params.noise_side <= short.long())
    assert torch.all(params.noise_top + params.noise_side <= sizes[:, 0])
    assert torch.all(params.noise_left + params.noise_side <= sizes[:, 1])


def test_inverted_blur_probabilities():
    aug = GpuMultiCrop(inverted_blur=True)
    assert aug.blur_probs == (0.0, pytest.approx(0.9), 0.5)


# ---------------------------------------------------------------------- decode-only loader
def test_decode_uses_jpeg_draft_and_pads_batches(tmp_path):
    from torch.utils.data import DataLoader

    from fdbench.data import open_dataset
    from pretrain.decode import DecodeCollate, DecodeDataset, decode_file, needed_side

    for cls in ("a", "b"):
        (tmp_path / "train" / cls).mkdir(parents=True)
        for i in range(3):
            size = (400, 300) if i % 2 == 0 else (240, 360)
            Image.new("RGB", size, (40 * i, 100, 200)).save(tmp_path / "train" / cls / f"{i}.jpg", quality=90)
        Image.new("RGB", (400, 300)).save(tmp_path / "train" / cls / "big.png")
    img = decode_file(tmp_path / "train" / "a" / "0.jpg", decode_side=100)
    assert img.size == (200, 150)  # DCT scale 1/2 keeps the short side >= 100
    assert decode_file(tmp_path / "train" / "a" / "0.jpg", None).size == (400, 300)
    assert decode_file(tmp_path / "train" / "a" / "big.png", 100).size == (math.ceil(400 / 3), 100)  # reduce(3)
    assert needed_side(224, 96, 0.32, 0.05, 8) == math.ceil(96 / math.sqrt(0.05))
    assert needed_side(224, 96, 0.32, 0.05, 0) == math.ceil(224 / math.sqrt(0.32))

    dataset = DecodeDataset(open_dataset(tmp_path, "train"), 120)
    batch = next(iter(DataLoader(dataset, batch_size=4, shuffle=True, collate_fn=DecodeCollate(mask_grid=2))))
    assert batch.images.dtype == torch.uint8 and batch.images.shape[:2] == (4, 3)
    h, w = batch.sizes.max(0).values.tolist()
    assert batch.images.shape[2:] == (h, w) and batch.masks.shape == (8, 4)
    for img, (hh, ww) in zip(batch.images, batch.sizes.tolist()):
        assert min(hh, ww) >= 120 and img[:, hh:, :].sum() == 0 and img[:, :, ww:].sum() == 0

    ds = DecodeDataset([(torch.zeros(3, 2, 2), 0)], None)  # a dataset with a transform already applied
    with pytest.raises(FdbenchError, match="without a transform"):
        ds[0]
    out = DecodeCollate()([(torch.ones(3, 2, 3, dtype=torch.uint8), 1), (torch.ones(3, 4, 1, dtype=torch.uint8), 0)])
    assert out.images.shape == (2, 3, 4, 3) and out.masks is None


@pytest.mark.cuda
def test_cuda_float16_resampling_matches_float32_cpu():
    if not torch.cuda.is_available():
        pytest.skip("needs CUDA")
    images, sizes = smooth_images([(300, 400), (375, 500)] * 4)
    aug = GpuMultiCrop()
    params = aug.sample_params(sizes, torch.Generator().manual_seed(0))
    g_cpu, l_cpu = aug.apply(images, sizes, params)
    g_gpu, l_gpu = aug.apply(images.cuda(), sizes.cuda(), params.to("cuda"))
    assert ((g_gpu.cpu() - g_cpu) * STD).abs().mean() < 2e-3
    assert ((l_gpu.cpu() - l_cpu) * STD).abs().mean() < 2e-3
