"""Fourier tools for the frequency analysis: basis images, perturbations, band-pass filters, spectra.

Conventions (all images are ``[..., N, N]`` tensors, one 2-D transform per channel):

- A frequency is an integer pair ``k = (ky, kx)`` in cycles per image. ``ky`` counts cycles along the
  rows (vertical), ``kx`` along the columns (horizontal). Indices are taken modulo N, so ``-1`` and
  ``N - 1`` are the same frequency; windows are centred on 0 (the FFT-shift layout, low frequencies
  in the middle).
- ``|k| = sqrt(ky^2 + kx^2)`` with ky, kx taken in ``[-N/2, N/2)``; Nyquist is ``N/2``.

Fourier basis (Yin et al. 2019, "A Fourier perspective on model robustness"):

    U(k)[y, x] = cos(2 pi (ky y + kx x) / N) / || cos(...) ||_2

a real image of unit L2 norm whose DFT is non-zero only at ``k`` and its mirror ``-k``. Because
``U(k) = U(-k)``, the heat map is symmetric through the origin and each mirror pair is evaluated once
(:func:`half_plane`).

Perturbation: ``x~ = clamp(x + eps * r_c * U(k), 0, 1)`` per channel c, with an independent random
sign ``r_c`` in {-1, +1} per image and channel, on [0,1] pixels before any normalisation. Before the
clamp each channel's perturbation has L2 norm exactly ``eps``.

Band-pass (Wang et al. 2020, "High-frequency component helps explain the generalization of CNNs"):

    low_r(x)  = IFFT( FFT(x) * [|k| <= r] )      high_r(x) = IFFT( FFT(x) * [|k| > r] )

so ``low_r(x) + high_r(x) = x`` exactly; no clamping (the filter stays linear; a high-passed image
has zero mean and negative pixels, which the encoder's normalisation takes as they are).
"""

from __future__ import annotations

import math

import torch

from fdbench.errors import FdbenchError

__all__ = [
    "EPS_ANCHORS",
    "default_eps",
    "default_window",
    "window_frequencies",
    "canonical",
    "half_plane",
    "fourier_bases",
    "random_signs",
    "fourier_perturb",
    "radius_grid",
    "band_pass",
    "power_spectrum",
    "radial_power_spectrum",
    "spectral_centroid",
]

# Yin et al.'s eps: 4.0 for 32 px CIFAR-10, 15.7 for 224 px ImageNet
EPS_ANCHORS = ((32, 4.0), (224, 15.7))


def default_eps(size: int) -> float:
    """The perturbation norm for images of side ``size``.

    Linear in ``size`` between the two anchors (32 px -> 4.0, 224 px -> 15.7). Outside that range eps
    grows in proportion to ``size`` from the nearest anchor, which keeps the per-pixel amplitude of
    the perturbation (``eps * sqrt(2) / N`` for a cosine) the same as at that anchor.
    """
    (s0, e0), (s1, e1) = EPS_ANCHORS
    if size <= s0:
        return e0 * size / s0
    if size >= s1:
        return e1 * size / s1
    return e0 + (e1 - e0) * (size - s0) / (s1 - s0)


def default_window(size: int) -> int:
    """The whole spectrum up to 64 px, else the central 63 x 63 low-frequency window (as Yin et al.)."""
    return size if size <= 64 else 63


def window_frequencies(window: int) -> torch.Tensor:
    """Signed frequencies of a centred window: ``arange(window) - window // 2``.

    ``window = 64`` gives -32..31 (the whole 64 px spectrum), ``63`` gives -31..31.
    """
    if window < 1:
        raise FdbenchError(f"the heat-map window must be at least 1 frequency wide, got {window}")
    return torch.arange(window) - window // 2


def _signed(k: torch.Tensor, size: int) -> torch.Tensor:
    # map any integer frequency to its representative in [-N/2, N/2)
    return (k + size // 2) % size - size // 2


def canonical(freqs: torch.Tensor, size: int) -> torch.Tensor:
    """One representative of each mirror pair {k, -k} (mod N), in signed form ``[..., 2]``.

    The representative is the lexicographically smaller of ``k mod N`` and ``-k mod N``.
    """
    a = freqs % size
    b = (-freqs) % size
    a_first = (a[..., 0] < b[..., 0]) | ((a[..., 0] == b[..., 0]) & (a[..., 1] <= b[..., 1]))
    rep = torch.where(a_first.unsqueeze(-1), a, b)
    return _signed(rep, size)


def half_plane(size: int, window: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The frequencies to evaluate for a ``window x window`` heat map of ``size`` px images.

    Returns ``(unique [F, 2], index [window, window])``: ``unique`` holds one signed ``(ky, kx)`` per
    mirror pair met in the window, and ``index[a, b]`` is the row of ``unique`` that the window cell
    ``(ky, kx) = (w[a], w[b])`` shows (``w = window_frequencies(window)``). For the full 64 px
    spectrum that is 2,050 frequencies instead of 4,096.
    """
    if window > size:
        raise FdbenchError(f"the heat-map window ({window}) cannot exceed the image size ({size})")
    w = window_frequencies(window)
    grid = torch.stack(torch.meshgrid(w, w, indexing="ij"), dim=-1)  # [W, W, 2] = (ky, kx)
    reps = canonical(grid, size).reshape(-1, 2)
    unique, index = torch.unique(reps, dim=0, return_inverse=True)
    return unique, index.reshape(window, window)


def fourier_bases(size: int, freqs: torch.Tensor, *, device=None, dtype=torch.float32) -> torch.Tensor:
    """Unit-L2 real Fourier basis images ``[F, N, N]`` for signed integer frequencies ``[F, 2]``."""
    freqs = torch.as_tensor(freqs, device=device).reshape(-1, 2).to(torch.float64)
    pos = torch.arange(size, device=freqs.device, dtype=torch.float64)
    # phase in float64: 2 pi k n / N must be exact enough that the DFT is clean at k and -k only
    phase = freqs[:, 0, None, None] * pos[None, :, None] + freqs[:, 1, None, None] * pos[None, None, :]
    basis = torch.cos(2 * math.pi * (phase % size) / size)
    basis = basis / basis.flatten(1).norm(dim=1).view(-1, 1, 1)
    return basis.to(dtype)


def random_signs(shape, generator: torch.Generator | None = None) -> torch.Tensor:
    """Independent +/-1 values (float32) of the given shape."""
    return torch.randint(0, 2, tuple(shape), generator=generator).float().mul_(2).sub_(1)


def fourier_perturb(
    images: torch.Tensor, bases: torch.Tensor, eps: float, signs: torch.Tensor, *, clamp: bool = True
) -> torch.Tensor:
    """``x + eps * r_c * U`` per channel, clamped to [0,1] unless ``clamp=False``.

    ``images``: float [B, C, N, N] in [0,1]; ``bases``: [B, N, N] (one basis per image) or [N, N];
    ``signs``: [B, C] of +/-1.
    """
    if bases.ndim == 2:
        bases = bases.expand(images.shape[0], *bases.shape)
    out = images + eps * signs.to(images)[:, :, None, None] * bases.to(images)[:, None]
    return out.clamp_(0, 1) if clamp else out


def radius_grid(size: int, *, device=None) -> torch.Tensor:
    """``|k|`` in cycles/image for every DFT coefficient, in ``torch.fft.fft2`` (unshifted) order."""
    k = torch.fft.fftfreq(size, d=1.0 / size, device=device)  # 0, 1, ..., -N/2, ..., -1
    return torch.sqrt(k[:, None] ** 2 + k[None, :] ** 2)


def band_pass(images: torch.Tensor, radius: float, kind: str) -> torch.Tensor:
    """Keep the DFT inside (``kind="low"``: ``|k| <= radius``) or outside (``"high"``) a circle.

    Per channel over the last two dimensions; returns a real tensor of the input's dtype.
    """
    if kind not in ("low", "high"):
        raise FdbenchError(f"unknown band-pass kind {kind!r}: use low or high")
    n = images.shape[-1]
    if images.shape[-2] != n:
        raise FdbenchError(f"band-pass filtering needs square images, got {tuple(images.shape[-2:])}")
    keep = radius_grid(n, device=images.device) <= radius
    if kind == "high":
        keep = ~keep
    spectrum = torch.fft.fft2(images.to(torch.float32))
    return torch.fft.ifft2(spectrum * keep).real.to(images.dtype if images.is_floating_point() else torch.float32)


def power_spectrum(images: torch.Tensor) -> torch.Tensor:
    """``|FFT(x)|^2 / N^2`` averaged over every leading dimension: ``[N, N]`` in fft2 order.

    With this scaling the coefficients sum to the mean over images and channels of ``sum(x^2)``
    (Parseval), so the spectrum of a difference image sums to its squared L2 norm.
    """
    n = images.shape[-1]
    power = torch.fft.fft2(images.to(torch.float32)).abs().square() / (n * n)
    return power.reshape(-1, n, n).mean(dim=0)


def radial_power_spectrum(images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Radially averaged power spectrum of ``images`` ``[..., N, N]``.

    Returns ``(radius [R], mean_power [R], total_power [R])`` for integer radius bins
    ``round(|k|) = 0, 1, ..., R - 1`` (up to the corner, ``N / sqrt(2)``): ``mean_power`` is the average
    of :func:`power_spectrum` over the coefficients of a bin, ``total_power`` their sum.
    """
    power = power_spectrum(images)
    bins = radius_grid(images.shape[-1], device=power.device).round().long().flatten()
    n_bins = int(bins.max()) + 1
    total = torch.zeros(n_bins, dtype=power.dtype, device=power.device).scatter_add_(0, bins, power.flatten())
    count = torch.bincount(bins, minlength=n_bins).to(power.dtype)
    return torch.arange(n_bins, dtype=torch.float32), (total / count).cpu(), total.cpu()


def spectral_centroid(images: torch.Tensor) -> float:
    """Power-weighted mean frequency ``sum_k |k| P(k) / sum_k P(k)`` in cycles/image (0 if no power)."""
    power = power_spectrum(images)
    weight = power.sum()
    if weight <= 0:
        return 0.0
    return float((radius_grid(images.shape[-1], device=power.device) * power).sum() / weight)
