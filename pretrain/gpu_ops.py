"""Batched image operations of the on-device multi-crop (:mod:`pretrain.gpu_augment`), each the
torchvision / PIL operation of DINOv2's CPU pipeline for many crops at once, each crop with its own
parameters: the ``RandomResizedCrop`` box sampler, PIL's antialiased bicubic resampling as matrices,
grayscale, ``ColorJitter`` (brightness, contrast, saturation, hue in a per-crop order) and the
Gaussian blur. Pure functions of tensors; nothing reads a value back to the host.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

GRAY_WEIGHTS = (0.2989, 0.587, 0.114)  # torchvision's rgb_to_grayscale
RATIO_RANGE = (3.0 / 4.0, 4.0 / 3.0)
RRC_ATTEMPTS = 10
BLUR_KERNEL = 9
# op codes of the colour-jitter order (torchvision's fn_idx numbering)
BRIGHTNESS, CONTRAST, SATURATION, HUE, IDENTITY = 0, 1, 2, 3, -1


def sample_rrc_boxes(h: torch.Tensor, w: torch.Tensor, scale: torch.Tensor, rand):
    """torchvision ``RandomResizedCrop.get_params`` for many crops at once.

    Ten tries per crop, all drawn up front: ``target = h*w*U(scale)``, ``ratio = exp(U(log 3/4, log 4/3))``,
    ``cw = round(sqrt(target*ratio))``, ``ch = round(sqrt(target/ratio))``; the first try with
    ``0 < cw <= w`` and ``0 < ch <= h`` wins, its top/left uniform over the valid positions; with
    no valid try, the central crop with the ratio clamped to the range.
    """
    n = h.shape[0]
    area = (h * w).float().unsqueeze(1)
    lo, hi = scale[:, 0:1], scale[:, 1:2]
    target = area * (lo + (hi - lo) * rand(n, RRC_ATTEMPTS))
    log_lo, log_hi = math.log(RATIO_RANGE[0]), math.log(RATIO_RANGE[1])
    ratio = torch.exp(log_lo + (log_hi - log_lo) * rand(n, RRC_ATTEMPTS))
    cw = torch.round(torch.sqrt(target * ratio)).long()
    ch = torch.round(torch.sqrt(target / ratio)).long()
    valid = (cw > 0) & (cw <= w.unsqueeze(1)) & (ch > 0) & (ch <= h.unsqueeze(1))
    first = torch.argmax(valid.int(), dim=1, keepdim=True)  # index of the first valid try (0 if none)
    found = valid.any(dim=1)
    cw = cw.gather(1, first).squeeze(1)
    ch = ch.gather(1, first).squeeze(1)
    top = (rand(n) * (h - ch + 1).clamp_min(1)).long().clamp_max((h - ch).clamp_min(0))
    left = (rand(n) * (w - cw + 1).clamp_min(1)).long().clamp_max((w - cw).clamp_min(0))
    # central fallback
    in_ratio = w.float() / h.float()
    fb_w = torch.where(in_ratio > RATIO_RANGE[1], torch.round(h * RATIO_RANGE[1]).long(), w)
    fb_h = torch.where(in_ratio < RATIO_RANGE[0], torch.round(w / RATIO_RANGE[0]).long(), h)
    ch = torch.where(found, ch, fb_h)
    cw = torch.where(found, cw, fb_w)
    top = torch.where(found, top, torch.div(h - fb_h, 2, rounding_mode="floor"))
    left = torch.where(found, left, torch.div(w - fb_w, 2, rounding_mode="floor"))
    return top, left, ch, cw


def bicubic(x: torch.Tensor, a: float = -0.5) -> torch.Tensor:
    """PIL's bicubic kernel (Keys, a = -0.5)."""
    x = x.abs()
    inner = ((a + 2.0) * x - (a + 3.0)) * x * x + 1.0
    outer = (((x - 5.0) * x + 8.0) * x - 4.0) * a
    return torch.where(x < 1.0, inner, torch.where(x < 2.0, outer, torch.zeros_like(x)))


def resample_matrix(
    start: torch.Tensor,
    length: torch.Tensor,
    in_size: int,
    out_size: int,
    flip: torch.Tensor | None,
    dtype: torch.dtype,
) -> torch.Tensor:
    """Weights ``[N, out_size, in_size]`` resampling the span ``[start, start+length)`` to ``out_size``.

    PIL's antialiased resampling of a cropped image along one axis: ``scale = length / out``,
    ``fs = max(scale, 1)``, output ``o`` centred at ``c = (o + 0.5) * scale`` (crop coordinates) takes
    input ``x`` in ``[max(floor(c - 2 fs + 0.5), 0), min(floor(c + 2 fs + 0.5), length))`` with weight
    ``k((x - c + 0.5) / fs)``, normalised to sum 1. ``flip`` mirrors the output order.
    """
    start = start.view(-1, 1, 1).float()
    length = length.view(-1, 1, 1).float()
    o = torch.arange(out_size, device=start.device, dtype=torch.float32).view(1, -1, 1)
    if flip is not None:
        o = torch.where(flip.view(-1, 1, 1), out_size - 1 - o, o)
    scale = length / out_size
    fs = scale.clamp_min(1.0)
    support = 2.0 * fs
    centre = (o + 0.5) * scale
    x = torch.arange(in_size, device=start.device, dtype=torch.float32).view(1, 1, -1) - start
    lo = torch.floor(centre - support + 0.5).clamp_min(0.0)
    hi = torch.minimum(torch.floor(centre + support + 0.5), length)
    weight = bicubic((x - centre + 0.5) / fs) * ((x >= lo) & (x < hi))
    weight = weight / weight.sum(dim=2, keepdim=True)
    return weight.to(dtype)


def gray_of(x: torch.Tensor) -> torch.Tensor:
    r, g, b = x.unbind(dim=1)
    return (GRAY_WEIGHTS[0] * r + GRAY_WEIGHTS[1] * g + GRAY_WEIGHTS[2] * b).unsqueeze(1)


def _blend_pass(x: torch.Tensor, op: torch.Tensor, factor_table: torch.Tensor) -> torch.Tensor:
    """One brightness/contrast/saturation op per crop (or none), as one blend ``f*x + (1-f)*ref``.

    brightness: ref = 0; contrast: ref = mean of the grayscale image; saturation: ref = grayscale.
    ``factor_table [N,4]`` holds the (brightness, contrast, saturation) factors and a 1 for crops with
    another op (``op`` = IDENTITY): ``lerp(ref, x, 1)`` is exactly ``x``. Written in few ops (each a
    kernel launch on a GPU, and this pass runs six times per crop kind).
    """
    gray = gray_of(x)
    is_c, is_s = (op == CONTRAST).view(-1, 1, 1, 1), (op == SATURATION).view(-1, 1, 1, 1)
    f = factor_table.gather(1, torch.where(op < 0, 3, op).unsqueeze(1)).view(-1, 1, 1, 1)
    ref = torch.where(is_s, gray, torch.where(is_c, gray.mean(dim=(1, 2, 3), keepdim=True), 0.0))
    return torch.lerp(ref, x, f).clamp_(0, 1)


def adjust_hue(x: torch.Tensor, shift: torch.Tensor) -> torch.Tensor:
    """Per-image hue rotation in HSV: ``H <- (H + shift) mod 1`` (torchvision ``adjust_hue``).

    RGB -> HSV as in ``colorsys``; back with ``c_n = V - V*S*clamp(min(k, 4-k), 0, 1)``,
    ``k = (n + 6H) mod 6`` and ``n = 5, 3, 1`` for R, G, B.
    """
    r, g, b = x.unbind(dim=1)
    maxc = x.amax(dim=1)
    minc = x.amin(dim=1)
    chroma = maxc - minc
    flat = chroma == 0
    safe = torch.where(flat, torch.ones_like(chroma), chroma)
    sat = torch.where(maxc > 0, chroma / torch.where(maxc > 0, maxc, torch.ones_like(maxc)), torch.zeros_like(maxc))
    rc, gc, bc = (maxc - r) / safe, (maxc - g) / safe, (maxc - b) / safe
    hue = torch.where(maxc == r, bc - gc, torch.where(maxc == g, 2.0 + rc - bc, 4.0 + gc - rc))
    hue = torch.where(flat, torch.zeros_like(hue), hue)
    hue = torch.remainder(hue / 6.0 + shift.view(-1, 1, 1), 1.0)
    n = (5.0 - 2.0 * torch.arange(3, device=x.device, dtype=x.dtype)).view(1, 3, 1, 1)  # 5, 3, 1
    k = torch.remainder(n + 6.0 * hue.unsqueeze(1), 6.0)
    ramp = torch.minimum(k, 4.0 - k).clamp(0.0, 1.0)
    return maxc.unsqueeze(1) - (maxc * sat).unsqueeze(1) * ramp


def color_jitter(x: torch.Tensor, apply: torch.Tensor, order: torch.Tensor, factors: torch.Tensor) -> torch.Tensor:
    """torchvision ``ColorJitter`` per crop with its own op order and factors (``apply`` False = skip).

    The hue op is the only non-blend op and each crop has it exactly once, so the batch runs as:
    the blend ops ordered before hue (3 passes), hue once, then the blend ops after it (3 passes),
    instead of evaluating all four ops in all four slots.
    """
    hue_pos = torch.argmax((order == HUE).int(), dim=1)  # [N]
    none = torch.full_like(order[:, 0], IDENTITY)
    table = torch.cat([factors[:, :3], torch.ones_like(factors[:, :1])], dim=1)  # identity -> factor 1
    for j in range(3):  # ops before hue
        op = torch.where(apply & (j < hue_pos), order[:, j], none)
        x = _blend_pass(x, op, table)
    hued = adjust_hue(x, factors[:, 3])
    x = torch.where(apply.view(-1, 1, 1, 1), hued, x)
    for j in range(3):  # ops after hue
        pos = hue_pos + 1 + j
        op = order.gather(1, pos.clamp_max(3).view(-1, 1)).squeeze(1)
        op = torch.where(apply & (pos <= 3), op, none)
        x = _blend_pass(x, op, table)
    return x


def gaussian_blur(x: torch.Tensor, apply: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
    """torchvision ``GaussianBlur(9, sigma)`` per crop: separable, reflect padding; ``apply`` False = skip."""
    n, c, h, w = x.shape
    half = (BLUR_KERNEL - 1) / 2
    t = torch.linspace(-half, half, BLUR_KERNEL, device=x.device, dtype=x.dtype).view(1, -1)
    kernel = torch.exp(-0.5 * (t / sigma.view(-1, 1).to(x.dtype)) ** 2)
    kernel = (kernel / kernel.sum(dim=1, keepdim=True)).repeat_interleave(c, dim=0)  # [N*C, 9]
    pad = BLUR_KERNEL // 2
    y = F.pad(x.reshape(1, n * c, h, w), (pad, pad, pad, pad), mode="reflect")
    y = F.conv2d(y, kernel.view(n * c, 1, BLUR_KERNEL, 1), groups=n * c)
    y = F.conv2d(y, kernel.view(n * c, 1, 1, BLUR_KERNEL), groups=n * c)
    return torch.where(apply.view(-1, 1, 1, 1), y.view(n, c, h, w), x)
