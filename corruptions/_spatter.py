"""Batched versions of the OpenCV steps in ImageNet-C's water spatter: Canny edges, OpenCV's truncated
5x5 chamfer distance transform, histogram equalisation, and the saturating 8-bit filter.

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


def _opencv():
    """OpenCV when importable (it comes with the reference package fdbench depends on), else None:
    on CPU the exact OpenCV steps are then OpenCV itself, the fastest way to them."""
    try:
        import cv2
    except Exception:  # noqa: BLE001 - any import failure: the torch implementations below
        return None
    return cv2


def _per_image_u8(x: torch.Tensor, fn) -> torch.Tensor:
    """``fn`` (uint8 [H, W] array -> array) on every image of a single-channel CPU batch [N, 1, H, W]."""
    arr = x.reshape(-1, *x.shape[-2:]).to(torch.uint8).numpy()
    return torch.from_numpy(np.stack([fn(a) for a in arr])).reshape(x.shape)


def canny(img: torch.Tensor, low: float, high: float) -> torch.Tensor:
    """OpenCV ``Canny(img, low, high)`` (aperture 3, L1 gradient) -> bool edge map [N, 1, H, W].

    1. Sobel gradients with replicated borders; magnitude |gx| + |gy|.
    2. Non-maximum suppression along the gradient direction quantised to 0/45/90/135 degrees, with
       OpenCV's tie rule (strictly greater than the previous neighbour, >= the next one; strict on
       diagonals) and zero magnitude outside the image.
    3. Hysteresis: pixels above ``high`` seed edges that grow through 8-connected pixels above ``low``.

    On CPU with OpenCV importable, ``cv2.Canny`` itself (exact; the steps above agree with it on all
    but ~0.2% of pixels, tested).
    """
    cv2 = _opencv() if img.device.type == "cpu" else None
    if cv2 is not None:
        return _per_image_u8(img, lambda a: cv2.Canny(a, low, high) > 0)
    return _canny_torch(img, low, high)


def _canny_torch(img: torch.Tensor, low: float, high: float) -> torch.Tensor:
    # Sobel, separably ([1, 2, 1] smoothing x [-1, 0, 1] difference): integer sums, exact in float32
    p = pad2d(img, 1, 1, 1, 1, "edge")
    rows = p[..., :-2, :] + 2 * p[..., 1:-1, :] + p[..., 2:, :]
    cols = p[..., :, :-2] + 2 * p[..., :, 1:-1] + p[..., :, 2:]
    gx = rows[..., :, 2:] - rows[..., :, :-2]
    gy = cols[..., 2:, :] - cols[..., :-2, :]
    mag = gx.abs() + gy.abs()
    mp = F.pad(mag, (1, 1, 1, 1))  # zero magnitude outside the image

    def nb(dy: int, dx: int) -> torch.Tensor:
        h, w = mag.shape[-2:]
        return mp[..., 1 + dy : 1 + dy + h, 1 + dx : 1 + dx + w]

    # integer gradients (|g| <= 1020): OpenCV's fixed-point test is exact in int32
    xs = gx.abs().int()
    ys = gy.abs().int() * (1 << 15)
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
    if img.device.type == "cpu":
        return _hysteresis_labels(weak, strong)
    # hysteresis by repeated 3x3 dilation restricted to weak pixels, until nothing changes
    for step in range(mag.shape[-1] * mag.shape[-2]):
        grown = weak & _dilate3(strong)
        if step % 8 == 7 and torch.equal(grown, strong):
            break
        strong = grown
    return strong


def _hysteresis_labels(weak: torch.Tensor, strong: torch.Tensor) -> torch.Tensor:
    """The weak pixels 8-connected (through weak pixels) to a strong one: the fixed point the dilation
    loop reaches, found at once by labelling the weak pixels' connected components (scipy) and
    keeping the components that hold a strong pixel. Each image is its own plane of one 3-D labelling."""
    from scipy import ndimage

    shape = weak.shape
    w = weak.reshape(-1, *shape[-2:]).numpy()
    structure = np.zeros((3, 3, 3), dtype=bool)
    structure[1] = True  # 8-neighbourhood within an image, nothing across images
    labels, count = ndimage.label(w, structure=structure)
    keep = np.zeros(count + 1, dtype=bool)
    keep[labels[strong.reshape(w.shape).numpy()]] = True
    keep[0] = False
    return torch.from_numpy(keep[labels]).reshape(shape)


def _dilate3(m: torch.Tensor) -> torch.Tensor:
    """3x3 binary dilation (8-neighbourhood), separable, nothing outside the image."""
    p = F.pad(m, (0, 0, 1, 1))
    v = p[..., :-2, :] | p[..., 1:-1, :] | p[..., 2:, :]
    p = F.pad(v, (1, 1, 0, 0))
    return p[..., :, :-2] | p[..., :, 1:-1] | p[..., :, 2:]


# OpenCV's 5x5 DIST_L2 mask: axial 1, diagonal 1.4, knight's move 2.1969 (float32 sums, as OpenCV)
_HV, _DIAG, _LONG = 1.0, 1.4, 2.1969
_CHAMFER_5X5 = tuple(
    (dy, dx, {1: _HV, 2: _DIAG, 5: _LONG}[dy * dy + dx * dx])
    for dy in range(-2, 3)
    for dx in range(-2, 3)
    if dy * dy + dx * dx in (1, 2, 5)
)


def chamfer_distance_5x5(edges: torch.Tensor, limit: int, method: str | None = None) -> torch.Tensor:
    """OpenCV ``distanceTransform(255 - edges, DIST_L2, 5)`` truncated at ``limit``: the cheapest path to
    an edge pixel with steps of cost 1 (axial), 1.4 (diagonal) and 2.1969 (knight's move), inside the image.

    This is what the reference's spatter uses; it differs from the Euclidean distance by up to ~0.4
    px, enough to move pixels across the integer levels that histogram equalisation spreads out.
    Distances start (and stay) truncated at the limit: min(limit, .) commutes with every min-plus step.
    ``method``: ``opencv`` (``cv2.distanceTransform`` itself), ``scan`` (OpenCV's two raster passes,
    vectorised over images and, within a row, over pixels: the same-row step is a running minimum;
    bit-exact with OpenCV, tested) or ``relax`` (parallel Bellman-Ford: a path of cost < ``limit``
    has fewer than ``limit`` steps, so ``limit`` rounds of the 16 moves are exact below the limit;
    for GPUs). Default: ``opencv`` on CPU when importable, else ``scan``; ``relax`` on accelerators.
    All give the cheapest path; ``relax`` differs only in float32 rounding (a few 1e-6).
    """
    if method is None:
        if edges.device.type != "cpu":
            method = "relax"
        else:
            method = "opencv" if _opencv() is not None else "scan"
    if method == "opencv":
        cv2 = _opencv()
        return _per_image_u8(
            edges,
            lambda a: np.minimum(cv2.distanceTransform(np.where(a, 0, 255).astype(np.uint8), cv2.DIST_L2, 5), limit),
        ).float()
    if method == "scan":
        return _chamfer_scan(edges, float(limit))
    return _chamfer_relax(edges, float(limit), int(limit))


def _chamfer_relax(edges: torch.Tensor, big: float, rounds: int) -> torch.Tensor:
    d = torch.where(edges, 0.0, big).float()
    h, w = d.shape[-2:]
    for _ in range(rounds):
        padded = F.pad(d, (2, 2, 2, 2), value=2 * big)  # paths stay inside the image
        new = d
        for dy, dx, cost in _CHAMFER_5X5:
            new = torch.minimum(new, padded[..., 2 + dy : 2 + dy + h, 2 + dx : 2 + dx + w] + cost)
        new = new.clamp_max(big)
        if torch.equal(new, d):
            break
        d = new
    return d


def _chamfer_scan(edges: torch.Tensor, big: float) -> torch.Tensor:
    """OpenCV's forward (rows top-down, each row left to right) and backward passes of the 5x5 mask,
    on the CPU in numpy (a loop over rows of small vector operations: numpy's per-call overhead is a
    fraction of torch's).

    Within a row the pass is t[j] = min(c[j], t[j -/+ 1] + 1) for the candidates c from the rows
    already done, i.e. t[j] = min_k c[j - k] + k = j + cummin_j (c[j] - j), evaluated in float64 (exact
    for these magnitudes) and rounded once to float32. Values above ``big`` are left to grow (they
    can never come back below it) and truncated at the end."""
    shape = edges.shape
    h, w = shape[-2:]
    # layout [row, column, image]: a row is a [w, n] block, and the running minimum along the row
    # (axis 0) runs n images wide at every step
    e = edges.reshape(-1, h, w).permute(1, 2, 0).cpu().numpy()
    n = e.shape[2]
    d = np.full((h + 4, w + 4, n), 2 * big, dtype=np.float32)  # outside the image: never the cheapest
    # 0 on edge pixels, +inf elsewhere: min(c, seeds) puts the zeros in
    seeds = np.where(e, np.float32(0), np.float32(np.inf))
    ramp = np.arange(w, dtype=np.float64)[:, None]
    rramp = ramp[::-1].copy()
    c64 = np.empty((w, n), dtype=np.float64)
    long_, diag, hv = np.float32(_LONG), np.float32(_DIAG), np.float32(_HV)

    def candidates(a: np.ndarray, b: np.ndarray) -> np.ndarray:
        # a: the adjacent row (offsets -2..2), b: the row two away (offsets -1, +1); min(x, y) + k is
        # min(x + k, y + k) exactly, so each cost is added once per class of move
        c = np.minimum(np.minimum(a[0:w], a[4 : w + 4]), np.minimum(b[1 : w + 1], b[3 : w + 3]))
        c += long_
        t = np.minimum(a[1 : w + 1], a[3 : w + 3])
        t += diag
        np.minimum(c, t, out=c)
        t = a[2 : w + 2] + hv
        return np.minimum(c, t, out=c)

    for i in range(h):
        np.subtract(np.minimum(candidates(d[i + 1], d[i]), seeds[i]), ramp, out=c64)
        d[i + 2, 2 : w + 2] = np.minimum.accumulate(c64, axis=0) + ramp
    for i in range(h - 1, -1, -1):
        np.subtract(np.minimum(candidates(d[i + 3], d[i + 4]), d[i + 2, 2 : w + 2]), rramp, out=c64)
        d[i + 2, 2 : w + 2] = np.minimum.accumulate(c64[::-1], axis=0)[::-1] + rramp
    out = np.minimum(d[2 : h + 2, 2 : w + 2], np.float32(big))
    return torch.from_numpy(np.ascontiguousarray(out.transpose(2, 0, 1))).reshape(shape).to(edges.device)


def equalize_hist(img: torch.Tensor) -> torch.Tensor:
    """OpenCV ``equalizeHist`` per image: lut[j] = round(255 * sum_{i0 < k <= j} hist[k] / (total - hist[i0]))
    where i0 is the smallest value present; an image with a single value is left unchanged."""
    n = img.shape[0]
    v = img.reshape(n, -1).long().clamp(0, 255)
    total = v.shape[1]
    offsets = torch.arange(n, device=img.device)[:, None] * 256
    hist = torch.bincount((v + offsets).reshape(-1), minlength=256 * n).reshape(n, 256).double()
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
