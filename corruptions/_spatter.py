"""Batched versions of the OpenCV steps in ImageNet-C's water spatter: Canny edges, OpenCV's truncated
5x5 chamfer distance transform (and an exact Euclidean one), histogram equalisation, and the saturating 8-bit filter.

All functions take [N, 1, H, W] float tensors holding integer values 0-255 (8-bit images stored as
floats so one code path runs on CPU and CUDA).
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

from corruptions._filters import filter2d, pad2d

# OpenCV's fixed-point direction test: tan(22.5 deg) * 2^15, rounded
_TG22 = int(0.4142135623730950488016887242097 * (1 << 15) + 0.5)
_SOBEL_X = np.array([[-1, 0, 1], [-2, 0, 2], [-1, 0, 1]], dtype=np.float32)


def canny(img: torch.Tensor, low: float, high: float) -> torch.Tensor:
    """OpenCV ``Canny(img, low, high)`` (aperture 3, L1 gradient) -> bool edge map [N, 1, H, W].

    1. Sobel gradients with replicated borders; magnitude |gx| + |gy|.
    2. Non-maximum suppression along the gradient direction quantised to 0/45/90/135 degrees, with
       OpenCV's tie rule (strictly greater than the previous neighbour, >= the next one; strict on
       diagonals) and zero magnitude outside the image.
    3. Hysteresis: pixels above ``high`` seed edges that grow through 8-connected pixels above ``low``.
    """
    gx = filter2d(img, _SOBEL_X, mode="edge")
    gy = filter2d(img, np.ascontiguousarray(_SOBEL_X.T), mode="edge")
    mag = gx.abs() + gy.abs()
    mp = F.pad(mag, (1, 1, 1, 1))  # zero magnitude outside the image

    def nb(dy: int, dx: int) -> torch.Tensor:
        h, w = mag.shape[-2:]
        return mp[..., 1 + dy : 1 + dy + h, 1 + dx : 1 + dx + w]

    xs = gx.abs().double()
    ys = gy.abs().double() * (1 << 15)
    tg22x = xs * _TG22
    tg67x = tg22x + xs * (1 << 16)
    horizontal = ys < tg22x
    vertical = ~horizontal & (ys > tg67x)
    diagonal = ~horizontal & ~vertical
    same_sign = (gx * gy) >= 0  # OpenCV: s = (dx ^ dy) < 0 ? -1 : 1
    keep_h = (mag > nb(0, -1)) & (mag >= nb(0, 1))
    keep_v = (mag > nb(-1, 0)) & (mag >= nb(1, 0))
    keep_d = torch.where(same_sign, (mag > nb(-1, -1)) & (mag > nb(1, 1)), (mag > nb(-1, 1)) & (mag > nb(1, -1)))
    peak = (horizontal & keep_h) | (vertical & keep_v) | (diagonal & keep_d)
    weak = peak & (mag > low)
    strong = weak & (mag > high)
    # hysteresis by repeated 3x3 dilation restricted to weak pixels, until nothing changes
    for step in range(mag.shape[-1] * mag.shape[-2]):
        grown = weak & _dilate3(strong)
        if step % 8 == 7 and torch.equal(grown, strong):
            break
        strong = grown
    return strong


def _dilate3(m: torch.Tensor) -> torch.Tensor:
    """3x3 binary dilation (8-neighbourhood), separable, nothing outside the image."""
    p = F.pad(m, (0, 0, 1, 1))
    v = p[..., :-2, :] | p[..., 1:-1, :] | p[..., 2:, :]
    p = F.pad(v, (1, 1, 0, 0))
    return p[..., :, :-2] | p[..., :, 1:-1] | p[..., :, 2:]


def distance_to_edges(edges: torch.Tensor, limit: int) -> torch.Tensor:
    """Euclidean distance from each pixel to the nearest edge pixel, truncated at ``limit``.

    Exact within the limit: two 1-D lower envelopes over a +-limit window,
    g(y, x) = min_k k^2 + [edge at (y + k, x) ? 0 : inf], d^2(y, x) = min_k k^2 + g(y, x + k).
    (OpenCV's DIST_L2 with a 5x5 mask approximates the same distance to within about 2%.)
    """
    big = float(4 * limit * limit + 1)
    e = torch.where(edges, 0.0, big).float()
    h, w = e.shape[-2:]
    ep = F.pad(e, (0, 0, limit, limit), value=big)
    g = ep[..., limit : limit + h, :].clone()
    for k in range(1, limit + 1):  # one shifted minimum per offset: cheap on any device
        g = torch.minimum(
            g, torch.minimum(ep[..., limit - k : limit - k + h, :], ep[..., limit + k : limit + k + h, :]) + k * k
        )
    gp = F.pad(g, (limit, limit, 0, 0), value=big)
    d2 = g.clone()
    for k in range(1, limit + 1):
        d2 = torch.minimum(
            d2, torch.minimum(gp[..., limit - k : limit - k + w], gp[..., limit + k : limit + k + w]) + k * k
        )
    return d2.sqrt().clamp_max(float(limit))


# OpenCV's 5x5 DIST_L2 mask: axial 1, diagonal 1.4, knight's move 2.1969
_CHAMFER_5X5 = tuple(
    (dy, dx, {1: 1.0, 2: 1.4, 5: 2.1969}[dy * dy + dx * dx])
    for dy in range(-2, 3)
    for dx in range(-2, 3)
    if dy * dy + dx * dx in (1, 2, 5)
)


def chamfer_distance_5x5(edges: torch.Tensor, limit: int) -> torch.Tensor:
    """OpenCV ``distanceTransform(255 - edges, DIST_L2, 5)`` truncated at ``limit``: the cheapest path to
    an edge pixel with steps of cost 1 (axial), 1.4 (diagonal) and 2.1969 (knight's move), inside the image.

    This is what the reference's spatter uses; it differs from the Euclidean distance by up to ~0.4
    px, enough to move pixels across the integer levels that histogram equalisation spreads out.
    Relaxed in parallel (Bellman-Ford): a path of cost < ``limit`` has fewer than ``limit`` steps,
    so ``limit`` rounds of the 16 moves are exact below the limit. Distances start (and stay)
    truncated at the limit, min(limit, .) commuting with the relaxation, so the loop stops as soon
    as every distance below the limit has settled.
    """
    big = float(limit)
    d = torch.where(edges, 0.0, big).float()
    h, w = d.shape[-2:]
    for _ in range(limit):
        padded = F.pad(d, (2, 2, 2, 2), value=2 * big)  # paths stay inside the image
        new = d
        for dy, dx, cost in _CHAMFER_5X5:
            new = torch.minimum(new, padded[..., 2 + dy : 2 + dy + h, 2 + dx : 2 + dx + w] + cost)
        new = new.clamp_max(big)
        if torch.equal(new, d):
            break
        d = new
    return d.clamp_max(float(limit))


def equalize_hist(img: torch.Tensor) -> torch.Tensor:
    """OpenCV ``equalizeHist`` per image: lut[j] = round(255 * sum_{i0 < k <= j} hist[k] / (total - hist[i0]))
    where i0 is the smallest value present; an image with a single value is left unchanged."""
    n = img.shape[0]
    v = img.reshape(n, -1).long().clamp(0, 255)
    total = v.shape[1]
    hist = torch.zeros(n, 256, device=img.device, dtype=torch.float64)
    hist.scatter_add_(1, v, torch.ones_like(v, dtype=torch.float64))
    i0 = (hist > 0).float().argmax(dim=1, keepdim=True)
    h0 = hist.gather(1, i0)
    cum = hist.cumsum(dim=1)
    denom = (total - h0).clamp_min(1)
    lut = torch.round((cum - cum.gather(1, i0)).clamp_min(0) * (255.0 / denom)).clamp(0, 255)
    single = h0 == total
    lut = torch.where(single, torch.arange(256, device=img.device, dtype=lut.dtype)[None], lut)
    return lut.gather(1, v).to(img.dtype).reshape(img.shape)


def box_blur3(x: torch.Tensor) -> torch.Tensor:
    """OpenCV ``blur(x, (3, 3))``: 3x3 mean with reflect-101 borders."""
    h, w = x.shape[-2:]
    p = pad2d(x, 1, 1, 1, 1, "reflect")
    v = p[..., :-2, :] + p[..., 1:-1, :] + p[..., 2:, :]
    return (v[..., :, :-2] + v[..., :, 1:-1] + v[..., :, 2:]) / 9


def filter2d_u8(x: torch.Tensor, kernel: np.ndarray) -> torch.Tensor:
    """OpenCV ``filter2D(x, CV_8U, kernel)``: correlation, reflect-101 borders, round and saturate to 0-255."""
    return torch.round(filter2d(x, kernel.astype(np.float32), mode="reflect")).clamp(0, 255)
