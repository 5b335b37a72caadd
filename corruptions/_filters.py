"""Batched image filters on [N, C, H, W] float tensors, written to match the numpy/scipy/OpenCV/PIL
operations the reference corruptions use (border modes included).

Border modes (names as in numpy.pad):
- ``edge``: repeat the border pixel (scipy ``nearest``, OpenCV ``BORDER_REPLICATE``);
- ``symmetric``: mirror including the border pixel, ``d c b a | a b c d`` (scipy ``reflect``);
- ``reflect``: mirror excluding the border pixel, ``d c b | a b c d`` (OpenCV ``BORDER_REFLECT_101``,
  OpenCV's default, scipy ``mirror``).
"""

from __future__ import annotations

import math
from functools import lru_cache

import numpy as np
import torch
import torch.nn.functional as F

PAD_MODES = ("edge", "symmetric", "reflect")


def pad_index(n: int, before: int, after: int, mode: str) -> np.ndarray:
    """Source indices in ``[0, n)`` for a padded axis of length ``before + n + after``.

    Works for pads larger than ``n`` (the mirror is folded repeatedly, as numpy.pad does).
    """
    i = np.arange(-before, n + after)
    if mode == "edge":
        return np.clip(i, 0, n - 1)
    if mode == "symmetric":
        period = 2 * n
        j = np.mod(i, period)
        return np.where(j < n, j, period - 1 - j)
    if mode == "reflect":
        if n == 1:
            return np.zeros_like(i)
        period = 2 * n - 2
        j = np.mod(i, period)
        return np.where(j < n, j, period - j)
    raise ValueError(f"unknown pad mode {mode!r}; valid: {', '.join(PAD_MODES)}")


def pad2d(x: torch.Tensor, top: int, bottom: int, left: int, right: int, mode: str) -> torch.Tensor:
    """Pad the last two dims of ``x`` with one of ``PAD_MODES`` (any pad size)."""
    h, w = x.shape[-2:]
    if top or bottom:
        iy = torch.as_tensor(pad_index(h, top, bottom, mode), device=x.device)
        x = x.index_select(-2, iy)
    if left or right:
        ix = torch.as_tensor(pad_index(w, left, right, mode), device=x.device)
        x = x.index_select(-1, ix)
    return x


@lru_cache(maxsize=256)
def _gaussian_weights(sigma: float, truncate: float) -> tuple[float, ...]:
    # scipy.ndimage.gaussian_filter1d: radius = int(truncate * sigma + 0.5), w(x) ~ exp(-x^2 / (2 sigma^2))
    radius = int(truncate * float(sigma) + 0.5)
    x = np.arange(-radius, radius + 1, dtype=np.float64)
    w = np.exp(-0.5 * (x / sigma) ** 2)
    return tuple((w / w.sum()).tolist())


def gaussian_kernel1d(sigma: float, truncate: float = 4.0) -> np.ndarray:
    """scipy's 1-D Gaussian kernel (normalised, ``2 * int(truncate * sigma + 0.5) + 1`` taps)."""
    return np.asarray(_gaussian_weights(float(sigma), float(truncate)))


def conv1d_axis(x: torch.Tensor, weights: np.ndarray | torch.Tensor, axis: int, mode: str) -> torch.Tensor:
    """Correlate the last-two-dims image ``x`` with a centred odd 1-D kernel along ``axis`` (-2 or -1).

    ``weights`` is either one kernel ``[K]`` shared by all images or per-image kernels ``[N, K]``.
    """
    shape = x.shape
    h, w = shape[-2:]
    k = torch.as_tensor(weights, dtype=x.dtype, device=x.device)
    r = k.shape[-1] // 2
    if r == 0:
        return x * k[..., 0].reshape(-1, *([1] * (x.dim() - 1))) if k.dim() == 2 else x * k[0]
    if axis in (-2, x.dim() - 2):
        xp = pad2d(x, r, r, 0, 0, mode)
        kshape = (-1, 1, k.shape[-1], 1)
    else:
        xp = pad2d(x, 0, 0, r, r, mode)
        kshape = (-1, 1, 1, k.shape[-1])
    if k.dim() == 1:
        out = F.conv2d(xp.reshape(-1, 1, *xp.shape[-2:]), k.reshape(kshape))
    else:
        # per-image kernels: images become channels of one grouped convolution
        n = shape[0]
        per = int(np.prod(shape[1:-2])) if x.dim() > 3 else 1
        xg = xp.reshape(1, n * per, *xp.shape[-2:])
        kg = k.repeat_interleave(per, dim=0).reshape(kshape)
        out = F.conv2d(xg, kg, groups=n * per)
    return out.reshape(shape[:-2] + (h, w))


def gaussian_filter(x: torch.Tensor, sigma, *, mode: str = "edge", truncate: float = 4.0) -> torch.Tensor:
    """scipy.ndimage.gaussian_filter over the last two dims (skimage.filters.gaussian's default
    ``mode='nearest'`` is ``edge`` here). ``sigma`` is a number or a ``(sigma_y, sigma_x)`` pair."""
    sy, sx = (sigma, sigma) if np.isscalar(sigma) else sigma
    if sy > 0:
        x = conv1d_axis(x, gaussian_kernel1d(sy, truncate), -2, mode)
    if sx > 0:
        x = conv1d_axis(x, gaussian_kernel1d(sx, truncate), -1, mode)
    return x


def filter2d(x: torch.Tensor, kernel: np.ndarray, mode: str = "reflect") -> torch.Tensor:
    """OpenCV ``filter2D`` (correlation, centred anchor, default border ``reflect``) with one 2-D kernel
    for every image and channel."""
    kh, kw = kernel.shape
    xp = pad2d(x, kh // 2, kh // 2, kw // 2, kw // 2, mode)
    k = torch.as_tensor(kernel, dtype=x.dtype, device=x.device)[None, None]
    out = F.conv2d(xp.reshape(-1, 1, *xp.shape[-2:]), k)
    return out.reshape(x.shape)


def cv2_gaussian_kernel1d(ksize: int, sigma: float) -> np.ndarray:
    """OpenCV ``getGaussianKernel(ksize, sigma)`` for sigma > 0 (exp(-(i - (k-1)/2)^2 / (2 sigma^2)), normalised)."""
    x = np.arange(ksize, dtype=np.float64) - (ksize - 1) / 2
    w = np.exp(-(x ** 2) / (2 * sigma ** 2))
    return w / w.sum()


@lru_cache(maxsize=64)
def disk_kernel(radius: float, alias_blur: float) -> np.ndarray:
    """ImageNet-C's anti-aliased disk: a normalised binary disk on a grid of half-size max(8, radius),
    smoothed by OpenCV's GaussianBlur (3x3 for radius <= 8, else 5x5, border reflect-101)."""
    if radius <= 8:
        half, ksize = 8, 3
    else:
        half, ksize = int(radius), 5
    coords = np.arange(-half, half + 1)
    yy, xx = np.meshgrid(coords, coords, indexing="ij")
    disk = ((xx ** 2 + yy ** 2) <= radius ** 2).astype(np.float64)
    disk /= disk.sum()
    g = cv2_gaussian_kernel1d(ksize, alias_blur)
    t = torch.from_numpy(disk)[None, None]
    t = conv1d_axis(t, g, -2, "reflect")
    t = conv1d_axis(t, g, -1, "reflect")
    return t[0, 0].numpy().astype(np.float32)


@lru_cache(maxsize=256)
def pil_resample_matrix(n_in: int, n_out: int, filt: str) -> np.ndarray:
    """The [n_out, n_in] matrix of PIL's separable resampling (``Image.resize``) along one axis.

    PIL centres output pixel i at (i + 0.5) * scale in input coordinates, scales the filter support
    by max(scale, 1) and weights input pixel j by filter((j + 0.5 - centre) / max(scale, 1)), then
    normalises each row. ``box`` is 1 on [-0.5, 0.5); ``nearest`` picks floor((i + 0.5) * scale).
    """
    scale = n_in / n_out
    m = np.zeros((n_out, n_in), dtype=np.float64)
    if filt == "nearest":
        src = np.minimum(np.floor((np.arange(n_out) + 0.5) * scale).astype(int), n_in - 1)
        m[np.arange(n_out), src] = 1.0
        return m
    if filt != "box":
        raise ValueError(f"unsupported filter {filt!r}")
    fscale = max(scale, 1.0)
    support = 0.5 * fscale
    for i in range(n_out):
        centre = (i + 0.5) * scale
        lo = max(int(centre - support + 0.5), 0)
        hi = min(int(centre + support + 0.5), n_in)
        for j in range(lo, hi):
            t = (j - centre + 0.5) / fscale
            if -0.5 <= t < 0.5:
                m[i, j] = 1.0
        if m[i].sum() == 0:  # cannot happen for box with support >= 0.5, kept as a guard
            m[i, min(int(centre), n_in - 1)] = 1.0
        m[i] /= m[i].sum()
    return m


def pil_resize(x: torch.Tensor, height: int, width: int, filt: str, *, quantize: bool = False) -> torch.Tensor:
    """PIL ``Image.resize((width, height), filt)`` on [..., H, W] float images in [0, 1].

    PIL resizes width first, then height, rounding to 8 bits after each pass on uint8 images;
    ``quantize=True`` reproduces that rounding.
    """
    h, w = x.shape[-2:]
    out = x
    if w != width:
        mw = torch.as_tensor(pil_resample_matrix(w, width, filt), dtype=x.dtype, device=x.device)
        out = out @ mw.T
        if quantize:
            out = torch.round(out * 255) / 255
    if h != height:
        mh = torch.as_tensor(pil_resample_matrix(h, height, filt), dtype=x.dtype, device=x.device)
        out = mh @ out
        if quantize:
            out = torch.round(out * 255) / 255
    return out


def clipped_zoom(x: torch.Tensor, zoom: float) -> torch.Tensor:
    """The reference's ``clipped_zoom`` followed by its ``[:H, :W]`` crop, on [N, C, H, W].

    Take the centred ``ceil(H / zoom) x ceil(W / zoom)`` crop (top-left at ``(H - ch) // 2``), zoom it
    with scipy.ndimage.zoom(order=1) to ``round(ch * zoom)`` pixels (scipy maps output o to input
    o * (in - 1) / (out - 1): bilinear with aligned corners), keep the top-left H x W block.
    """
    h, w = x.shape[-2:]
    ch, cw = int(math.ceil(h / zoom)), int(math.ceil(w / zoom))
    top, left = (h - ch) // 2, (w - cw) // 2
    oh, ow = int(round(ch * zoom)), int(round(cw * zoom))
    crop = x[..., top:top + ch, left:left + cw]
    z = F.interpolate(crop, size=(oh, ow), mode="bilinear", align_corners=True)
    return z[..., :h, :w]


def motion_offsets(radius: int, angles_deg: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-image integer shifts (dy, dx) of the reference ``_motion_blur`` taps, each [N, 2r+1].

    Tap i moves the image by dy = -ceil(i sin(a) - 0.5), dx = -ceil(i cos(a) - 0.5).
    """
    width = 2 * int(radius) + 1
    i = torch.arange(width, dtype=torch.float64, device=angles_deg.device)
    a = torch.deg2rad(angles_deg.to(torch.float64))[:, None]
    dy = -torch.ceil(i * torch.sin(a) - 0.5)
    dx = -torch.ceil(i * torch.cos(a) - 0.5)
    return dy.long(), dx.long()


def motion_blur(x: torch.Tensor, radius: int, sigma: float, angles_deg: torch.Tensor) -> torch.Tensor:
    """The reference ``_motion_blur``: a one-sided Gaussian-weighted sum of shifted copies.

    out = sum_i k_i * shift(x, dx_i, dy_i), k_i = exp(-i^2 / (2 sigma^2)) / sum_j(...), i = 0..2r,
    shift(x)[y, x] = x[clamp(y - dy), clamp(x - dx)] (edge pixels repeat). Like the reference, the
    taps stop (unnormalised) at the first shift as large as the image. ``x`` is [N, C, H, W].
    """
    n, c, h, w = x.shape
    width = 2 * int(radius) + 1
    k = np.exp(-(np.arange(width) ** 2) / (2 * sigma ** 2))
    k = torch.as_tensor(k / k.sum(), dtype=x.dtype, device=x.device)
    dy, dx = motion_offsets(radius, angles_deg.to(x.device))
    valid = ((dy.abs() < h) & (dx.abs() < w)).long().cumprod(dim=1).bool()  # stop at first invalid tap
    weights = k[None, :] * valid.to(x.dtype)
    r = int(max(dy.abs().max().item(), dx.abs().max().item(), 0))
    r = min(r, max(h, w))
    xp = pad2d(x, r, r, r, r, "edge") if r else x
    out = torch.zeros_like(x)
    if x.device.type == "cpu":
        # slicing views are cheapest on CPU: one multiply-add per image and tap
        dyl, dxl, wl, vl = dy.tolist(), dx.tolist(), weights.tolist(), valid.tolist()
        for b in range(n):
            for t in range(width):
                if not vl[b][t]:
                    break
                y0, x0 = r - dyl[b][t], r - dxl[b][t]
                out[b].add_(xp[b, :, y0:y0 + h, x0:x0 + w], alpha=wl[b][t])
        return out
    # on accelerators: one batched gather per tap
    ar_h = torch.arange(h, device=x.device)
    ar_w = torch.arange(w, device=x.device)
    bidx = torch.arange(n, device=x.device)[:, None, None]
    for t in range(width):
        rows = (r - dy[:, t])[:, None] + ar_h[None, :]
        cols = (r - dx[:, t])[:, None] + ar_w[None, :]
        rows = rows.clamp(0, h + 2 * r - 1)
        cols = cols.clamp(0, w + 2 * r - 1)
        patch = xp.permute(0, 2, 3, 1)[bidx, rows[:, :, None], cols[:, None, :]].permute(0, 3, 1, 2)
        out += weights[:, t].reshape(n, 1, 1, 1) * patch
    return out
