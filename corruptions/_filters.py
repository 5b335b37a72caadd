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
    torch_mode = {"edge": "replicate", "reflect": "reflect"}.get(mode)
    fits = mode != "reflect" or (max(top, bottom) < h and max(left, right) < w)
    if torch_mode and fits and x.dim() in (3, 4) and x.is_floating_point():
        # the same copies as the index gathers below, 3-5x faster (F.pad's reflect excludes the border
        # pixel, as OpenCV's reflect-101; it needs pads smaller than the side)
        return F.pad(x, (left, right, top, bottom), mode=torch_mode)
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


@lru_cache(maxsize=256)
def band_matrix(n: int, weights: tuple[float, ...], mode: str) -> np.ndarray:
    """[n, n] matrix M with (M @ v)[i] = sum_k w_k v_pad[i + k] for a centred odd kernel ``weights``
    and padding ``mode``: 1-D correlation, border handling folded into the matrix."""
    r = len(weights) // 2
    src = pad_index(n, r, r, mode)
    m = np.zeros((n, n), dtype=np.float64)
    rows = np.arange(n)
    for k, wk in enumerate(weights):
        np.add.at(m, (rows, src[rows + k]), wk)
    return m


_DEVICE_CACHE: dict = {}


def _on(x: torch.Tensor, key: tuple, make) -> torch.Tensor:
    """A constant tensor for ``x``'s device and dtype, built once by ``make()`` (a numpy array)."""
    full = key + (str(x.device), x.dtype)
    t = _DEVICE_CACHE.get(full)
    if t is None:
        if len(_DEVICE_CACHE) > 512:
            _DEVICE_CACHE.clear()
        t = torch.as_tensor(make(), dtype=x.dtype, device=x.device)
        _DEVICE_CACHE[full] = t
    return t


MATMUL_MAX = 1024  # above this side a dense [n, n] band matrix costs more than shifted adds
SLICES_MAX_TAPS = 25  # on CPU, shifted adds beat the band matmul up to about this kernel length


def conv1d_axis(x: torch.Tensor, weights, axis: int, mode: str) -> torch.Tensor:
    """Correlate images ``x`` [..., H, W] with one centred odd 1-D kernel along ``axis`` (-2 or -1).

    As a matrix product with the banded matrix of :func:`band_matrix` (one BLAS call: best on GPUs and
    for long kernels), or as a sum of shifted slices (short kernels on CPU, very large images).
    """
    w = tuple(float(v) for v in np.asarray(weights).ravel())
    axis = axis if axis < 0 else axis - x.dim()
    n = x.shape[axis]
    short_on_cpu = x.device.type == "cpu" and len(w) <= SLICES_MAX_TAPS
    if n <= MATMUL_MAX and not short_on_cpu:
        m = _on(x, ("band", n, w, mode), lambda: band_matrix(n, w, mode))
        return m @ x if axis == -2 else x @ m.T
    r = len(w) // 2
    if axis == -2:
        xp = pad2d(x, r, r, 0, 0, mode)
        out = xp[..., 0:n, :] * w[0]
        for k in range(1, len(w)):
            out.add_(xp[..., k : k + n, :], alpha=w[k])
    else:
        xp = pad2d(x, 0, 0, r, r, mode)
        out = xp[..., :, 0:n] * w[0]
        for k in range(1, len(w)):
            out.add_(xp[..., :, k : k + n], alpha=w[k])
    return out


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
    for every image and channel. Small kernels run as a convolution, larger ones (like OpenCV,
    which switches to a DFT from 11 x 11) as an FFT product on the padded image."""
    kh, kw = kernel.shape
    h, w = x.shape[-2:]
    xp = pad2d(x, kh // 2, kh // 2, kw // 2, kw // 2, mode)
    if kh * kw <= 49:
        # a sum of shifted slices: single-channel conv2d is far slower on CPU for small kernels
        out = torch.zeros_like(x)
        for i in range(kh):
            for j in range(kw):
                if kernel[i, j] != 0:
                    out.add_(xp[..., i : i + h, j : j + w], alpha=float(kernel[i, j]))
        return out
    ph, pw = xp.shape[-2:]
    # circular convolution with the flipped kernel; rows/cols >= k-1 of the result never wrap. The
    # kernel's spectrum is built once per (size, kernel, device)
    key = ("fftk", ph, pw, kernel.tobytes(), kernel.shape, str(xp.device))
    kspec = _DEVICE_CACHE.get(key)
    if kspec is None:
        padded = np.pad(kernel[::-1, ::-1], ((0, ph - kh), (0, pw - kw))).astype(np.float32)
        kspec = torch.fft.rfft2(torch.as_tensor(padded, device=xp.device))
        if len(_DEVICE_CACHE) > 512:
            _DEVICE_CACHE.clear()
        _DEVICE_CACHE[key] = kspec
    spec = torch.fft.rfft2(xp.float()) * kspec
    out = torch.fft.irfft2(spec, s=(ph, pw))
    return out[..., kh - 1 : kh - 1 + h, kw - 1 : kw - 1 + w].to(x.dtype)


def cv2_gaussian_kernel1d(ksize: int, sigma: float) -> np.ndarray:
    """OpenCV ``getGaussianKernel(ksize, sigma)`` for sigma > 0 (exp(-(i - (k-1)/2)^2 / (2 sigma^2)), normalised)."""
    x = np.arange(ksize, dtype=np.float64) - (ksize - 1) / 2
    w = np.exp(-(x**2) / (2 * sigma**2))
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
    disk = ((xx**2 + yy**2) <= radius**2).astype(np.float64)
    disk /= disk.sum()
    g = cv2_gaussian_kernel1d(ksize, alias_blur)
    t = torch.from_numpy(disk)[None, None]
    t = conv1d_axis(t, g, -2, "reflect")
    t = conv1d_axis(t, g, -1, "reflect")
    return t[0, 0].numpy().astype(np.float32)


@lru_cache(maxsize=256)
def pil_resample_windows(n_in: int, n_out: int, filt: str) -> tuple[np.ndarray, np.ndarray]:
    """Input windows [lo, hi) of PIL's ``Image.resize`` along one axis, for ``box`` and ``nearest``.

    PIL centres output pixel i at c = (i + 0.5) * scale in input coordinates (scale = n_in / n_out),
    scales the filter support by max(scale, 1) and weights input pixel j by
    filter((j + 0.5 - c) / max(scale, 1)), normalised. The box filter (1 on [-0.5, 0.5)) therefore
    averages the contiguous inputs whose centres fall in [c - s/2, c + s/2) with s = max(scale, 1);
    nearest takes the single pixel floor(c).
    """
    scale = n_in / n_out
    i = np.arange(n_out)
    centre = (i + 0.5) * scale
    if filt == "nearest":
        lo = np.minimum(np.floor(centre).astype(np.int64), n_in - 1)
        return lo, lo + 1
    if filt != "box":
        raise ValueError(f"unsupported filter {filt!r}")
    fscale = max(scale, 1.0)
    lo = np.zeros(n_out, dtype=np.int64)
    hi = np.zeros(n_out, dtype=np.int64)
    for k in range(n_out):
        js = np.arange(max(int(centre[k] - 0.5 * fscale + 0.5), 0), min(int(centre[k] + 0.5 * fscale + 0.5), n_in))
        t = (js - centre[k] + 0.5) / fscale
        inside = js[(t >= -0.5) & (t < 0.5)]
        lo[k], hi[k] = (inside[0], inside[-1] + 1) if len(inside) else (min(int(centre[k]), n_in - 1),) * 2
        hi[k] = max(hi[k], lo[k] + 1)
    return lo, hi


def pil_resample_matrix(n_in: int, n_out: int, filt: str) -> np.ndarray:
    """The [n_out, n_in] matrix of :func:`pil_resample_windows` (uniform weights on each window)."""
    lo, hi = pil_resample_windows(n_in, n_out, filt)
    m = np.zeros((n_out, n_in))
    for k in range(n_out):
        m[k, lo[k] : hi[k]] = 1.0 / (hi[k] - lo[k])
    return m


def pil_resize(x: torch.Tensor, height: int, width: int, filt: str, *, quantize: bool = False) -> torch.Tensor:
    """PIL ``Image.resize((width, height), filt)`` (``box`` or ``nearest``) on [..., H, W] images in [0, 1].

    PIL resizes width first, then height, rounding to 8 bits after each pass on uint8 images;
    ``quantize=True`` reproduces that rounding.
    """
    h, w = x.shape[-2:]
    out = x
    for axis, n_in, n_out in ((-1, w, width), (-2, h, height)):
        if n_in == n_out:
            continue
        lo, hi = pil_resample_windows(n_in, n_out, filt)
        if filt == "nearest" or np.all(hi - lo == 1):
            out = out.index_select(axis, torch.as_tensor(lo, device=x.device))
        else:  # one BLAS call beats cumulative sums or pooling here
            m = _on(x, ("pil", n_in, n_out, filt), lambda: pil_resample_matrix(n_in, n_out, filt))
            out = out @ m.T if axis == -1 else m @ out
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
    crop = x[..., top : top + ch, left : left + cw]
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


def motion_blur(
    x: torch.Tensor, radius: int, sigma: float, angles_deg: torch.Tensor, method: str | None = None
) -> torch.Tensor:
    """The reference ``_motion_blur``: a one-sided Gaussian-weighted sum of shifted copies.

    out = sum_i k_i * shift(x, dx_i, dy_i), k_i = exp(-i^2 / (2 sigma^2)) / sum_j(...), i = 0..2r,
    shift(x)[y, x] = x[clamp(y - dy), clamp(x - dx)] (edge pixels repeat). Like the reference, the
    taps stop (unnormalised) at the first shift as large as the image. ``x`` is [N, C, H, W].
    ``method``: ``slices`` (one add per image and tap, fastest on CPU) or ``gather`` (one batched
    gather per tap, for GPUs); default by device.
    """
    n, c, h, w = x.shape
    width = 2 * int(radius) + 1
    k = np.exp(-(np.arange(width) ** 2) / (2 * sigma**2))
    k = torch.as_tensor(k / k.sum(), dtype=x.dtype, device=x.device)
    dy, dx = motion_offsets(radius, angles_deg.to(x.device))
    valid = ((dy.abs() < h) & (dx.abs() < w)).long().cumprod(dim=1).bool()  # stop at first invalid tap
    weights = k[None, :] * valid.to(x.dtype)
    r = int(max(dy.abs().max().item(), dx.abs().max().item(), 0))
    r = min(r, max(h, w))
    xp = pad2d(x, r, r, r, r, "edge") if r else x
    out = torch.zeros_like(x)
    method = method or ("slices" if x.device.type == "cpu" else "gather")
    if method == "slices":
        # slicing views are cheapest on CPU: one multiply-add per image and tap
        dyl, dxl, wl, vl = dy.tolist(), dx.tolist(), weights.tolist(), valid.tolist()
        for b in range(n):
            for t in range(width):
                if not vl[b][t]:
                    break
                y0, x0 = r - dyl[b][t], r - dxl[b][t]
                out[b].add_(xp[b, :, y0 : y0 + h, x0 : x0 + w], alpha=wl[b][t])
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
