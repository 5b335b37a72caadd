"""The four weather corruptions of ImageNet-C on batched tensors: fog (a plasma fractal), frost (the
reference's six frost pictures), snow (a zoomed, motion-blurred layer) and spatter (water or mud).
Same conventions as :mod:`corruptions.torch_backend`, whose ``FUNCTIONS`` lists them."""

from __future__ import annotations

import math
from functools import lru_cache

import numpy as np
import torch
import torch.nn.functional as F

from corruptions import _filters as flt
from corruptions import _spatter as spt
from corruptions._rng import Rng
from fdbench.errors import FdbenchError


def plasma_fractal(n: int, mapsize: int, wibbledecay: float, rng: Rng, device) -> torch.Tensor:
    """Diamond-square height maps [n, mapsize, mapsize] in [0, 1], one per image (the reference's
    ``plasma_fractal``, vectorised over the batch)."""
    m = torch.zeros(n, mapsize, mapsize, device=device, dtype=torch.float32)
    step = mapsize
    wibble = 100.0
    while step >= 2:
        half = step // 2
        # squares: centre = mean of 4 corners + wibble
        corners = m[:, 0::step, 0::step]
        acc = corners + torch.roll(corners, -1, 1)
        acc = acc + torch.roll(acc, -1, 2)
        m[:, half::step, half::step] = acc / 4 + wibble * rng.uniform(acc.shape, -wibble, wibble)
        # diamonds: edge midpoints = mean of the 2 nearest corners and 2 nearest centres + wibble
        dr = m[:, half::step, half::step]
        ul = m[:, 0::step, 0::step]
        lt = dr + torch.roll(dr, 1, 1) + ul + torch.roll(ul, -1, 2)
        m[:, 0::step, half::step] = lt / 4 + wibble * rng.uniform(lt.shape, -wibble, wibble)
        tt = dr + torch.roll(dr, 1, 2) + ul + torch.roll(ul, -1, 1)
        m[:, half::step, 0::step] = tt / 4 + wibble * rng.uniform(tt.shape, -wibble, wibble)
        step //= 2
        wibble /= wibbledecay
    flat = m.reshape(n, -1)
    flat = flat - flat.amin(1, keepdim=True)
    flat = flat / flat.amax(1, keepdim=True).clamp_min(1e-12)
    return flat.reshape(n, mapsize, mapsize)


def fog(x, p, ctx):
    """clip((x + c0 * plasma) * max(x) / (max(x) + c0)), plasma map of side next_pow2(max(H, W))."""
    strength, decay = p
    n, _, h, w = x.shape
    size = 1 << (max(h, w) - 1).bit_length()
    plasma = plasma_fractal(n, size, decay, ctx.rng, x.device)[:, None, :h, :w]
    max_val = x.reshape(n, -1).amax(1).reshape(n, 1, 1, 1)
    return ((x + strength * plasma) * max_val / (max_val + strength)).clamp(0, 1)


_FROST_FILES = ("frost1.png", "frost2.png", "frost3.png", "frost4.jpg", "frost5.jpg", "frost6.jpg")


@lru_cache(maxsize=8)
def _frost_pictures() -> tuple[np.ndarray, ...]:
    """The six frost photos shipped in the reference package, RGB uint8 [H, W, 3].

    Found without importing the package (its import needs scikit-image, OpenCV and numba, which
    the torch backend does not: a machine with the bare wheel installed still has the photos)."""
    import importlib.util
    from pathlib import Path

    from PIL import Image

    spec = importlib.util.find_spec("imagecorruptions")
    if spec is None or not spec.submodule_search_locations:
        raise FdbenchError(
            "frost needs the photos of the 'imagecorruptions-imaug' package (pip install imagecorruptions-imaug)"
        )
    base = Path(list(spec.submodule_search_locations)[0]) / "frost"
    out = []
    for name in _FROST_FILES:
        with Image.open(base / name) as im:
            out.append(np.array(im.convert("RGB")))
    return tuple(out)


_FROST_CACHE: dict = {}


def _frost_stack(h: int, w: int, style, device) -> tuple[torch.Tensor, torch.Tensor, int]:
    """Frost pictures resized for an h x w image, padded into one tensor [K, 3, Hmax, Wmax] in [0, 255],
    with their sizes [K, 2] and the number K the table draws from."""
    key = (h, w, str(style), str(device))
    if key in _FROST_CACHE:
        return _FROST_CACHE[key]
    pics = _frost_pictures()
    count = 6 if style == "cover" else style[2]
    resized, sizes = [], []
    for pic in pics[:count]:
        fh, fw = pic.shape[:2]
        if style == "cover":
            # reference: scale so the picture covers the image, then x1.1 (cv2 bicubic)
            factor = max(h / fh if fh < h else 1.0, w / fw if fw < w else 1.0) * 1.1
        else:
            # original 32/64 px scripts: a fixed factor at their native size; scaled with the image
            # and never below what is needed to fit a crop
            factor = max(style[1] * min(h, w) / style[3], (h + 1) / fh, (w + 1) / fw)
        nh, nw = int(math.ceil(fh * factor)), int(math.ceil(fw * factor))
        t = torch.from_numpy(pic).permute(2, 0, 1)[None].float().to(device)
        if (nh, nw) != (fh, fw):
            t = F.interpolate(t, size=(nh, nw), mode="bicubic", align_corners=False)
        resized.append(t[0].clamp(0, 255).round())
        sizes.append((nh, nw))
    hmax, wmax = max(s[0] for s in sizes), max(s[1] for s in sizes)
    stack = torch.zeros(len(resized), 3, hmax, wmax, device=device)
    for i, t in enumerate(resized):
        stack[i, :, : t.shape[1], : t.shape[2]] = t
    result = (stack, torch.tensor(sizes, device=device), count)
    if len(_FROST_CACHE) > 16:
        _FROST_CACHE.clear()
    _FROST_CACHE[key] = result
    return result


def frost(x, p, ctx):
    """clip(c0 * x + c1 * frost_crop): a random frost picture, resized, randomly cropped to H x W."""
    a, b = p
    n, _, h, w = x.shape
    stack, sizes, count = _frost_stack(h, w, ctx.style["frost"], x.device)
    if ctx.frost_index is not None:
        idx = ctx.frost_index.to(x.device).long() % count
    else:
        idx = ctx.rng.randint(0, count, (n,)).to(x.device)
    fh, fw = sizes[idx, 0], sizes[idx, 1]
    y0 = ctx.rng.randint(0, fh - h, (n,))
    x0 = ctx.rng.randint(0, fw - w, (n,))
    rows = y0[:, None] + torch.arange(h, device=x.device)[None]
    cols = x0[:, None] + torch.arange(w, device=x.device)[None]
    crop = stack.permute(0, 2, 3, 1)[idx[:, None, None], rows[:, :, None], cols[:, None, :]].permute(0, 3, 1, 2)
    return (a * x + b * crop / 255).clamp(0, 1)


def snow(x, p, ctx):
    """Snow: a zoomed, thresholded N(mean, std) layer streaked by motion blur (angle ~ U(-135, -45)),
    added twice (as is and rotated 180 degrees) to an image brightened towards 1.5 * gray + 0.5."""
    mean, std, zoom, thresh, radius, sigma, keep = p
    n, _, h, w = x.shape
    layer = ctx.rng.normal((n, 1, h, w), mean, std)
    layer = flt.clipped_zoom(layer, float(zoom))
    layer = torch.where(layer < thresh, torch.zeros_like(layer), layer).clamp(0, 1)
    angles = ctx.rng.uniform((n,), -135.0, -45.0)
    layer = flt.motion_blur(layer, int(radius), float(sigma), angles)
    layer = torch.round(layer * 255) / 255
    gray = (0.299 * x[:, 0] + 0.587 * x[:, 1] + 0.114 * x[:, 2])[:, None]
    y = keep * x + (1 - keep) * torch.maximum(x, gray * 1.5 + 0.5)
    return (y + layer + torch.flip(layer, dims=(-2, -1))).clamp(0, 1)


_EMBOSS = np.array([[-2, -1, 0], [-1, 1, 1], [0, 1, 2]], dtype=np.float32)
_WATER = (175 / 255, 238 / 255, 238 / 255)
_MUD = (63 / 255, 42 / 255, 20 / 255)


def spatter(x, p, ctx):
    """Water (mode 0) or mud (mode 1) spatter from a blurred, thresholded N(mean, std) liquid layer.

    Water: edges of the liquid (Canny 50/150), OpenCV's 5x5 chamfer distance to them (truncated at
    20), 3x3 blur, histogram equalisation, emboss filter, 3x3 blur (8-bit result), times the liquid: m = that / max * c4;
    output = clip(x + m * pale turquoise). Mud: m = gaussian(liquid > thresh, c4), zeroed below 0.8;
    output = x (1 - m) + m * mud brown.
    """
    mean, std, blur, thresh, c4, mode = p
    n, _, h, w = x.shape
    liquid = flt.gaussian_filter(ctx.rng.normal((n, 1, h, w), mean, std), blur)
    liquid = torch.where(liquid < thresh, torch.zeros_like(liquid), liquid)
    if mode == 0:
        l8 = torch.floor(liquid * 255).clamp(0, 255)
        edges = spt.canny(l8, 50, 150)
        dist = spt.chamfer_distance_5x5(edges, 20)  # cv2.distanceTransform(DIST_L2, 5)
        dist = torch.floor(spt.box_blur3(dist))  # float blur, then astype(uint8)
        dist = spt.equalize_hist(dist)
        dist = spt.filter2d_u8(dist, _EMBOSS)
        dist = torch.round(spt.box_blur3(dist))  # cv2.blur of a uint8 image returns uint8
        m = l8 * dist
        m = m / m.reshape(n, -1).amax(1).clamp_min(1e-12).reshape(n, 1, 1, 1) * c4
        color = torch.tensor(_WATER, device=x.device, dtype=x.dtype).reshape(1, 3, 1, 1)
        return (x + m * color).clamp(0, 1)
    m = flt.gaussian_filter((liquid > thresh).to(x.dtype), c4)
    m = torch.where(m < 0.8, torch.zeros_like(m), m)
    color = torch.tensor(_MUD, device=x.device, dtype=x.dtype).reshape(1, 3, 1, 1)
    return (x * (1 - m) + color * m).clamp(0, 1)
