"""The 19 ImageNet-C corruptions on batched tensors (CPU or CUDA).

Every function takes ``x``: float32 [N, 3, H, W] in [0, 1], ``p``: the severity's parameters from
``corruptions.params`` and ``ctx``: a :class:`Context` (random generator, table style, whether the
input was 8-bit), and returns float32 [N, 3, H, W] in [0, 1]. Each follows the reference
``imagecorruptions`` function step by step; the docstrings give the formula and where the torch
version departs from it (only in how random numbers are drawn, and glass blur's pixel shuffle, which
is the same random process resolved in parallel). The weather corruptions live in
:mod:`corruptions._weather`.
Random parameters (angles, crops, frost pictures, noise fields) are drawn per image, as the
reference does when called once per image.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from corruptions import _filters as flt
from corruptions._rng import Rng
from corruptions._weather import fog, frost, snow, spatter


@dataclass
class Context:
    rng: Rng
    table: str
    style: dict
    quantized: bool  # input was uint8: steps the reference does on 8-bit images round to 1/255
    frost_index: torch.Tensor | None = None  # fixed frost picture per image (fidelity checks only)


# ---------------------------------------------------------------------------------------- noise


def gaussian_noise(x, p, ctx):
    """clip(x + N(0, c^2))."""
    return (x + ctx.rng.normal(x.shape, std=p)).clamp(0, 1)


def shot_noise(x, p, ctx):
    """clip(Poisson(c x) / c)."""
    return (ctx.rng.poisson(x * p) / p).clamp(0, 1)


def impulse_noise(x, p, ctx):
    """skimage ``random_noise(mode='s&p', amount=c)``: each value (pixel and channel independently) is
    replaced with probability c, by 1 or 0 with equal odds (one uniform u per value: replaced when
    u < c, by salt when u < c / 2)."""
    u = ctx.rng.uniform(x.shape)
    return torch.where(u < p, (u < p / 2).to(x.dtype), x)


def speckle_noise(x, p, ctx):
    """clip(x + x * N(0, c^2))."""
    return (x + x * ctx.rng.normal(x.shape, std=p)).clamp(0, 1)


# ----------------------------------------------------------------------------------------- blur


def gaussian_blur(x, p, ctx):
    """skimage ``gaussian(x, sigma=c)``: separable Gaussian, truncate 4, edge borders."""
    return flt.gaussian_filter(x, p).clamp(0, 1)


def defocus_blur(x, p, ctx):
    """OpenCV ``filter2D`` with the anti-aliased disk kernel of radius c[0] (reflect-101 borders)."""
    radius, alias = p
    return flt.filter2d(x, flt.disk_kernel(float(radius), float(alias)), "reflect").clamp(0, 1)


def motion_blur(x, p, ctx):
    """The reference ``_motion_blur`` (radius, sigma) at an angle ~ U(-45, 45) degrees per image.

    On uint8 inputs with the small-image tables the result is rounded to 8 bits, as ImageMagick's
    motion blur in the 32/64 px scripts returns it (the ImageNet-C package's float result is
    truncated by the caller instead)."""
    radius, sigma = p
    angles = ctx.rng.uniform((x.shape[0],), -45.0, 45.0)
    y = flt.motion_blur(x * 255, int(radius), float(sigma), angles).clamp(0, 255)
    if ctx.quantized and ctx.style.get("motion_round", False):
        y = torch.round(y)
    return y / 255


def zoom_blur(x, p, ctx):
    """(x + sum_z clipped_zoom(x, z)) / (len(z) + 1) for z in arange(start, stop, step)."""
    zooms = np.arange(*p)
    out = x.clone()
    xc = x.contiguous(memory_format=torch.channels_last)  # 2-3x faster bilinear resize on CPU
    for z in zooms:
        out += flt.clipped_zoom(xc, float(z))
    return (out / (len(zooms) + 1)).clamp(0, 1)


def glass_sources(n: int, h: int, w: int, delta: int, rng: Rng, device) -> torch.Tensor:
    """Flat source index [n, h * w] of every pixel after one pass of the reference's pixel shuffle.

    The reference visits (row, col) for row = H - delta .. delta + 1 and col = W - delta .. delta + 1
    (descending) and runs ``x[h, w], x[h', w'] = x[h', w'], x[h, w]`` with (h', w') = (h + dy, w + dx),
    dx, dy ~ randint(-delta, delta). On an [H, W, 3] array both sides are views, so this is not a swap:
    x[h, w] receives x[h', w'] and x[h', w'] keeps its value. Hence the result at p is
    x_orig[q] when q = p + offset was not visited yet (or q = p, or q outside the visited band), and
    the result already written at q when q was visited before p (q later in raster order). Those
    chains always move to later raster positions, so they end, and pointer jumping resolves all of
    them at once in O(log chain length) gathers instead of a sequential loop over pixels.
    """
    yy = torch.arange(h, device=device).reshape(1, h, 1).expand(n, h, w)
    xx = torch.arange(w, device=device).reshape(1, 1, w).expand(n, h, w)
    draws = rng.randint(-delta, delta, (n, h, w, 2)).to(device)
    band = (yy > delta) & (yy <= h - delta) & (xx > delta) & (xx <= w - delta)
    qy = torch.where(band, yy + draws[..., 1], yy)
    qx = torch.where(band, xx + draws[..., 0], xx)
    p_idx = (yy * w + xx).reshape(n, -1)
    q_idx = (qy * w + qx).reshape(n, -1)
    band = band.reshape(n, -1)
    # visited before p: q is in the band and later in raster order (the loop runs backwards)
    q_band = band.gather(1, q_idx)
    done = ~(band & q_band & (q_idx > p_idx))
    ptr = q_idx
    for _ in range(64):
        if bool(done.all()):
            break
        # a finished pixel keeps its source; an unfinished one jumps to its target's pointer
        ptr, done = torch.where(done, ptr, ptr.gather(1, ptr)), done | done.gather(1, ptr)
    return ptr


def glass_blur(x, p, ctx):
    """gaussian(sigma) -> 8-bit truncation -> local pixel shuffle (``iterations`` passes, offsets in
    [-delta, delta)) -> gaussian(sigma), all as the reference; the shuffle is :func:`glass_sources`."""
    sigma, delta, iterations = p
    n, c, h, w = x.shape
    y = flt.gaussian_filter(x, sigma)
    y = torch.floor(y * 255 + 1e-4).clamp(0, 255) / 255  # np.uint8(... * 255)
    y = y.reshape(n, c, h * w)
    for _ in range(int(iterations)):
        src = glass_sources(n, h, w, int(delta), ctx.rng, x.device)
        y = y.gather(2, src[:, None, :].expand(n, c, h * w))
    return flt.gaussian_filter(y.reshape(n, c, h, w), sigma).clamp(0, 1)


# -------------------------------------------------------------------------------------- digital


def contrast(x, p, ctx):
    """clip((x - mean_c) * c + mean_c), mean per image and channel."""
    means = x.mean(dim=(-2, -1), keepdim=True)
    return ((x - means) * p + means).clamp(0, 1)


def brightness(x, p, ctx):
    """HSV value + c (clipped), exactly, without the HSV round trip.

    With V = max_c x, every channel is V * (1 - S * k_c(H)), so raising V to V' = min(V + c, 1) at
    fixed H, S scales the pixel by V' / V; a black pixel (V = 0, S = 0) becomes gray V'.
    """
    v = x.amax(dim=1, keepdim=True)
    v2 = (v + p).clamp(0, 1)
    return torch.where(v > 0, x * (v2 / v.clamp_min(1e-12)), v2.expand_as(x)).clamp(0, 1)


def saturate(x, p, ctx):
    """HSV saturation S' = clip(S * a + b), exactly, without the HSV round trip.

    Channels are V - S * V * k_c(H), so at fixed H, V: x' = V - (S' / S) (V - x). Gray pixels
    (S = 0, hue 0 in skimage) become (V, V (1 - S'), V (1 - S')).
    """
    a, b = p
    v = x.amax(dim=1, keepdim=True)
    mn = x.amin(dim=1, keepdim=True)
    delta = v - mn
    s = torch.where(v > 0, delta / v.clamp_min(1e-12), torch.zeros_like(v))
    s2 = (s * a + b).clamp(0, 1)
    colour = v - (s2 / s.clamp_min(1e-12)) * (v - x)
    gray = torch.cat([v, v * (1 - s2), v * (1 - s2)], dim=1)
    return torch.where(delta > 0, colour, gray).clamp(0, 1)


def _pil_each(u8: torch.Tensor, fn) -> torch.Tensor:
    """``fn`` (PIL image -> PIL image) on every image of a uint8 CPU batch [N, 3, H, W] -> uint8 batch.

    One NHWC copy in and one out: PIL reads a C-contiguous array without copying it again."""
    from PIL import Image

    arr = u8.permute(0, 2, 3, 1).contiguous().numpy()
    out = None
    for i, img in enumerate(arr):
        res = fn(Image.fromarray(img))
        if res.mode != "RGB":
            res = res.convert("RGB")
        if out is None:
            out = np.empty((len(arr), res.size[1], res.size[0], 3), dtype=np.uint8)
        out[i] = np.asarray(res)
    return torch.from_numpy(out).permute(0, 3, 1, 2)


def _jpeg_u8(u8: torch.Tensor, quality: int) -> torch.Tensor:
    """JPEG encode + decode of a uint8 batch with torchvision (libjpeg-turbo on CPU: the same bytes as
    the reference's PIL round trip, without PIL's per-image objects and copies; nvJPEG on CUDA)."""
    from torchvision.io import decode_jpeg, encode_jpeg

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # torchvision >= 0.29 deprecation notice
        data = encode_jpeg(list(u8.contiguous().unbind(0)), quality=int(quality))
        out = decode_jpeg([d.cpu() for d in data], device=u8.device)
    return torch.stack(out)


def jpeg_compression(x, p, ctx):
    """Encode as JPEG at quality c and decode: torchvision's libjpeg-turbo on CPU (bit-exact with the
    reference's PIL), nvJPEG on CUDA."""
    u8 = torch.round(x * 255).clamp(0, 255).to(torch.uint8)
    return _jpeg_u8(u8, int(p)).to(x.dtype) / 255


def pixelate(x, p, ctx):
    """PIL: resize to (int(W c), int(H c)) with BOX, back to (W, H) with NEAREST (ImageNet-C) or BOX
    (the 32/64 px scripts)."""
    h, w = x.shape[-2:]
    small = flt.pil_resize(x, max(int(h * p), 1), max(int(w * p), 1), "box", quantize=ctx.quantized)
    return flt.pil_resize(small, h, w, ctx.style["pixelate_up"], quantize=ctx.quantized).clamp(0, 1)


def jpeg_compression_u8(u8, p, ctx):
    """:func:`jpeg_compression` of a uint8 CPU batch, uint8 out (no float round trip)."""
    return _jpeg_u8(u8, int(p))


def pixelate_u8(u8, p, ctx):
    """:func:`pixelate` of a uint8 CPU batch with PIL itself (what the reference and the 32/64 px
    scripts run: 8-bit fixed-point resampling), uint8 out."""
    from PIL import Image

    h, w = u8.shape[-2:]
    size = (max(int(w * p), 1), max(int(h * p), 1))
    up = {"nearest": Image.NEAREST, "box": Image.BOX}[ctx.style["pixelate_up"]]
    return _pil_each(u8, lambda im: im.resize(size, Image.BOX).resize((w, h), up))


def _pixel_grid(n, h, w, device) -> tuple[torch.Tensor, torch.Tensor]:
    yy = torch.arange(h, device=device, dtype=torch.float32).reshape(1, h, 1).expand(n, h, w)
    xx = torch.arange(w, device=device, dtype=torch.float32).reshape(1, 1, w).expand(n, h, w)
    return yy, xx


def _sample(x, sy, sx, align_corners: bool):
    """Bilinear sample of x [N, C, H, W] at pixel coordinates (sy, sx) [N, H, W], reflecting outside:
    about the border pixels' centres (align_corners=True, OpenCV reflect-101) or about the image
    edges (align_corners=False, scipy ``reflect``)."""
    h, w = x.shape[-2:]
    if align_corners:
        gx = sx / max(w - 1, 1) * 2 - 1
        gy = sy / max(h - 1, 1) * 2 - 1
    else:
        gx = (2 * sx + 1) / w - 1
        gy = (2 * sy + 1) / h - 1
    grid = torch.stack([gx, gy], dim=-1)
    return F.grid_sample(x, grid, mode="bilinear", padding_mode="reflection", align_corners=align_corners)


def elastic_transform(x, p, ctx):
    """Displacement-field warp, sampled bilinearly with scipy ``reflect`` borders.

    ``displace`` (ImageNet-C, reference package): dx, dy = gaussian(U(-0.005 H, 0.005 H),
    sigma = (0.01 H, 0.01 W), truncate 3) * alpha.
    ``affine`` (32/64 px scripts): first a random affine (three points around the centre moved by
    U(-a, a), reflect-101 borders), then dx, dy = gaussian(U(-1, 1), sigma, truncate 3) * alpha,
    with alpha, sigma, a given as fractions of the image side.
    """
    n, _, h, w = x.shape
    yy, xx = _pixel_grid(n, h, w, x.device)
    if ctx.style["elastic"] == "displace":
        (alpha,) = p
        amp, sigma = h * 0.005, (h * 0.01, w * 0.01)
    else:
        side = min(h, w)
        alpha, sigma_f, affine = p[0] * side, p[1] * side, p[2] * side
        amp, sigma = 1.0, (sigma_f, sigma_f)
        # the scripts' triangle, as OpenCV (x, y) points: c + s, (c0 + s, c1 - s), c - s with the centre
        # c = (H // 2, W // 2) in numpy's (row, col) order used as (x, y) (the same for square images)
        c0, c1 = float(h // 2), float(w // 2)
        s = float(side // 3)
        pts1 = torch.tensor([[c0 + s, c1 + s], [c0 + s, c1 - s], [c0 - s, c1 - s]], device=x.device)
        pts1 = pts1.expand(n, 3, 2)
        pts2 = pts1 + ctx.rng.uniform((n, 3, 2), -affine, affine)
        # the map destination -> source takes pts2 to pts1: [pts2, 1] @ A = pts1
        ones = torch.ones(n, 3, 1, device=x.device)
        a_mat = torch.linalg.solve(torch.cat([pts2, ones], 2).double(), pts1.double()).float()
        src = torch.stack([xx, yy, torch.ones_like(xx)], -1).reshape(n, -1, 3) @ a_mat
        src = src.reshape(n, h, w, 2)
        x = _sample(x, src[..., 1], src[..., 0], align_corners=True)
    dx = flt.gaussian_filter(ctx.rng.uniform((n, 1, h, w), -amp, amp), sigma, mode="symmetric", truncate=3.0)
    dy = flt.gaussian_filter(ctx.rng.uniform((n, 1, h, w), -amp, amp), sigma, mode="symmetric", truncate=3.0)
    out = _sample(x, yy + alpha * dy[:, 0], xx + alpha * dx[:, 0], align_corners=False)
    return out.clamp(0, 1)


# uint8 [N, 3, H, W] CPU batch -> uint8 batch: used by ``corrupt`` for 8-bit images on CPU, where
# the PIL-bound corruptions are fastest (and exact) on the bytes themselves
UINT8_CPU = {"jpeg_compression": jpeg_compression_u8, "pixelate": pixelate_u8}

FUNCTIONS = {
    "gaussian_noise": gaussian_noise,
    "shot_noise": shot_noise,
    "impulse_noise": impulse_noise,
    "defocus_blur": defocus_blur,
    "glass_blur": glass_blur,
    "motion_blur": motion_blur,
    "zoom_blur": zoom_blur,
    "snow": snow,
    "frost": frost,
    "fog": fog,
    "brightness": brightness,
    "contrast": contrast,
    "elastic_transform": elastic_transform,
    "pixelate": pixelate,
    "jpeg_compression": jpeg_compression,
    "speckle_noise": speckle_noise,
    "gaussian_blur": gaussian_blur,
    "spatter": spatter,
    "saturate": saturate,
}
