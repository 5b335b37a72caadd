"""Fourier basis, perturbation, band-pass and spectrum helpers, checked against direct computations."""

import math

import numpy as np
import pytest
import torch

from analysis import fourier
from fdbench.errors import FdbenchError


def basis(size: int, ky: int, kx: int, **kwargs) -> torch.Tensor:
    """The unit-L2 basis image ``U(ky, kx)`` [N, N]: one row of ``fourier_bases``."""
    return fourier.fourier_bases(size, torch.tensor([[ky, kx]]), **kwargs)[0]


@pytest.mark.parametrize("size", [8, 9, 16])
def test_basis_unit_norm_real_and_two_spikes(size):
    for ky in range(-(size // 2), (size + 1) // 2):
        for kx in range(-(size // 2), (size + 1) // 2):
            u = basis(size, ky, kx, dtype=torch.float64)
            assert u.dtype == torch.float64 and not u.is_complex()
            assert abs(float(u.norm()) - 1.0) < 1e-12
            spec = np.abs(np.fft.fft2(u.numpy())) ** 2
            support = {((ky % size), (kx % size)), ((-ky) % size, (-kx) % size)}
            mask = np.zeros_like(spec, dtype=bool)
            for a, b in support:
                mask[a, b] = True
            # Parseval: all of the energy (N^2 * ||u||^2) sits on k and its mirror
            assert spec[mask].sum() == pytest.approx(size * size, rel=1e-9)
            assert spec[~mask].max(initial=0.0) < 1e-18 * size * size


def test_basis_matches_cosine_formula():
    size, ky, kx = 12, 2, -3
    y, x = np.meshgrid(np.arange(size), np.arange(size), indexing="ij")
    ref = np.cos(2 * np.pi * (ky * y + kx * x) / size)
    ref /= np.linalg.norm(ref)
    assert np.allclose(basis(size, ky, kx, dtype=torch.float64).numpy(), ref, atol=1e-12)


def test_perturbation_norm_equals_eps_before_clamp():
    gen = torch.Generator().manual_seed(0)
    images = torch.rand(5, 3, 16, 16, generator=gen)
    freqs = torch.tensor([[0, 0], [1, 2], [-3, 5], [8, 8], [0, 8]])
    bases = fourier.fourier_bases(16, freqs)
    signs = fourier.random_signs((5, 3), generator=gen)
    eps = 2.5
    out = fourier.fourier_perturb(images, bases, eps, signs, clamp=False)
    delta = out - images
    assert torch.allclose(delta.flatten(2).norm(dim=2), torch.full((5, 3), eps), atol=1e-5)
    # the sign of each channel's perturbation is the drawn sign
    proj = (delta * bases[:, None]).sum(dim=(2, 3))
    assert torch.allclose(proj, eps * signs, atol=1e-5)
    clamped = fourier.fourier_perturb(images, bases, eps, signs)
    assert clamped.min() >= 0 and clamped.max() <= 1
    assert torch.allclose(clamped, out.clamp(0, 1))


def test_random_signs_are_pm_one_and_balanced():
    s = fourier.random_signs((4000,), generator=torch.Generator().manual_seed(1))
    assert set(s.unique().tolist()) == {-1.0, 1.0}
    assert abs(float(s.mean())) < 0.1


def test_half_plane_covers_window_once_per_mirror_pair():
    size, window = 64, 64
    unique, index = fourier.half_plane(size, window)
    assert len(unique) == (size * size - 4) // 2 + 4  # 4 self-mirrored frequencies at even N
    w = fourier.window_frequencies(window).tolist()
    assert w[0] == -32 and w[-1] == 31
    for a in (0, 5, 31, 32, 63):
        for b in (0, 7, 32, 63):
            ky, kx = unique[index[a, b]].tolist()
            # the stored frequency is the cell's own or its mirror (mod N)
            own = ((w[a] - ky) % size, (w[b] - kx) % size) == (0, 0)
            mirror = ((w[a] + ky) % size, (w[b] + kx) % size) == (0, 0)
            assert own or mirror
    # the two mirror cells of a pair point at the same row
    assert index[32 + 3, 32 - 5] == index[32 - 3, 32 + 5]
    odd_unique, _ = fourier.half_plane(224, 63)
    assert len(odd_unique) == (63 * 63 + 1) // 2
    with pytest.raises(FdbenchError):
        fourier.half_plane(16, 17)


def test_default_eps_anchors_and_interpolation():
    assert fourier.default_eps(32) == pytest.approx(4.0)
    assert fourier.default_eps(224) == pytest.approx(15.7)
    assert fourier.default_eps(128) == pytest.approx(4.0 + 11.7 * 96 / 192)
    assert fourier.default_eps(16) == pytest.approx(2.0)
    assert fourier.default_window(64) == 64 and fourier.default_window(224) == 63


def test_low_plus_high_pass_is_identity_and_filters_are_ideal():
    gen = torch.Generator().manual_seed(3)
    images = torch.rand(2, 3, 16, 16, generator=gen)
    for r in (0, 1.5, 4, 8, 20):
        low, high = fourier.band_pass(images, r, "low"), fourier.band_pass(images, r, "high")
        assert torch.allclose(low + high, images, atol=1e-5)
        spec_low = np.fft.fft2(low.numpy())
        k = np.fft.fftfreq(16, 1 / 16)
        outside = np.hypot(k[:, None], k[None, :]) > r
        assert np.abs(spec_low[..., outside]).max(initial=0.0) < 1e-4
    # radius 0 low-pass keeps the per-channel mean only
    assert torch.allclose(
        fourier.band_pass(images, 0, "low"), images.mean(dim=(2, 3), keepdim=True).expand_as(images), atol=1e-6
    )
    with pytest.raises(FdbenchError):
        fourier.band_pass(images, 2, "mid")


def test_radial_power_spectrum_parseval_and_single_frequency():
    size = 16
    u = basis(size, 3, 4)[None, None]  # |k| = 5
    radius, mean_power, total = fourier.radial_power_spectrum(u)
    assert total.sum() == pytest.approx(1.0, rel=1e-5)  # unit norm -> unit energy
    assert int(total.argmax()) == 5 and total[5] == pytest.approx(1.0, rel=1e-5)
    assert fourier.spectral_centroid(u) == pytest.approx(5.0, rel=1e-5)
    # white noise: the mean power per coefficient is flat
    noise = torch.randn(64, 3, size, size, generator=torch.Generator().manual_seed(0))
    _, mp, _ = fourier.radial_power_spectrum(noise)
    assert torch.allclose(mp[1:9], torch.ones(8), rtol=0.15)
    assert fourier.spectral_centroid(torch.zeros(1, 1, 8, 8)) == 0.0


def test_radius_grid_matches_direct_formula():
    g = fourier.radius_grid(6)
    for a in range(6):
        for b in range(6):
            ka = a if a < 3 else a - 6
            kb = b if b < 3 else b - 6
            assert float(g[a, b]) == pytest.approx(math.hypot(ka, kb))
