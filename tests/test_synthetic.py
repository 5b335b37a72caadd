import hashlib
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from fdbench.errors import FdbenchError
from fdbench.synthetic import CLASS_NAMES, NUISANCES, SyntheticSpec, make_synthetic_dataset, render_image

SMALL = SyntheticSpec(classes=3, train_per_class=4, val_per_class=2, size=32, seed=7)


def _digest(root: Path) -> dict[str, str]:
    return {
        str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(root.rglob("*"))
        if p.is_file()
    }


def test_same_seed_same_bytes(tmp_path):
    a = make_synthetic_dataset(tmp_path / "a", SMALL, workers=1)
    b = make_synthetic_dataset(tmp_path / "b", SMALL, workers=2)
    assert _digest(a) == _digest(b)
    assert len([p for p in a.rglob("*.png")]) == 2 * 3 * (4 + 2)  # the images and their masks


def test_other_seed_other_images(tmp_path):
    a = make_synthetic_dataset(tmp_path / "a", SMALL, workers=1)
    c = make_synthetic_dataset(tmp_path / "c", SyntheticSpec(**{**SMALL.__dict__, "seed": 8}), workers=1)
    da, dc = _digest(a), _digest(c)
    pngs = [k for k in da if k.endswith(".png")]
    assert all(da[k] != dc[k] for k in pngs)


def test_layout_and_modes(tmp_path):
    root = make_synthetic_dataset(tmp_path / "d", SMALL, workers=1)
    assert sorted(p.name for p in (root / "train").iterdir()) == sorted(CLASS_NAMES[:3])
    img = Image.open(next((root / "val" / "disk").glob("*.png")))
    assert img.size == (32, 32) and img.mode == "RGB"


def test_grey_level_is_a_nuisance_and_images_are_grey():
    """Mean brightness carries no class information (the classes' distributions overlap), and
    shapes and backgrounds are grey: colour is no instance cue (the texture's noise aside)."""
    size, n = 32, 40
    means = {
        c: np.array([render_image(c, np.random.default_rng([1, c, i]), size).mean() for i in range(n)]) for c in (0, 1)
    }
    assert abs(means[0].mean() - means[1].mean()) < means[0].std()
    img = render_image(2, np.random.default_rng(3), size).astype(float)
    assert np.abs(img - img.mean(-1, keepdims=True)).mean() < 0.1 * 255


def _grey_images(split: int, per_class: int, size: int = 32):
    x, y = [], []
    for c in range(10):
        for i in range(per_class):
            x.append(render_image(c, np.random.default_rng([99, split, c, i]), size).astype(float).mean(-1) / 255)
            y.append(c)
    return np.array(x), np.array(y)


def _band_spectrum_accuracy(band_of, train, test) -> float:
    """Top-1 of a ridge one-vs-all classifier on the log amplitude spectrum of one frequency band.

    The amplitude of the 2-D DFT does not change when the image is shifted, and its log turns the
    per-image contrast into an additive offset that the standardisation absorbs, so this simple
    classifier sees what a band holds about the class, not where the shape sits.
    """
    (xtr, ytr), (xte, yte) = train, test
    size = xtr.shape[-1]
    f = np.fft.fftfreq(size)
    band = band_of(np.hypot(*np.meshgrid(f, f, indexing="ij")))

    def feats(x):
        amp = np.abs(np.fft.fft2(x - x.mean(axis=(1, 2), keepdims=True)))
        return np.log(amp.reshape(len(x), -1)[:, band.ravel()] + 1e-6)

    a, b = feats(xtr), feats(xte)
    mu, sd = a.mean(0), a.std(0) + 1e-9
    a, b = (a - mu) / sd, (b - mu) / sd
    w = np.linalg.solve(a.T @ a + 10 * np.eye(a.shape[1]), a.T @ np.eye(10)[ytr])
    return float(((b @ w).argmax(1) == yte).mean())


def test_class_lives_in_low_frequencies_and_high_frequencies_carry_none():
    """The documented frequency story of version 3, checked by an independent classifier: the band
    below 0.15 cycles/px identifies the class well above chance (10%), the band above 0.35
    cycles/px (texture only, edges are soft) does not."""
    train, test = _grey_images(0, 60), _grey_images(1, 30)
    low = _band_spectrum_accuracy(lambda r: r < 0.15, train, test)
    high = _band_spectrum_accuracy(lambda r: r > 0.35, train, test)
    # 300 test images: chance 10% has a binomial 99.9% upper bound of about 16%
    assert low > 0.5, low
    assert high < 0.17, high


def test_sharp_edges_would_leak_the_class_into_high_frequencies():
    """Why the structure layer is blurred: with sharp edges the top band does identify the class
    (so the test above measures the renderer, not a classifier too weak to see anything)."""
    from dataclasses import replace

    sharp = replace(NUISANCES, edge_blur=0.0)

    def grey(split, n):
        x = [
            render_image(c, np.random.default_rng([99, split, c, i]), 32, sharp).astype(float).mean(-1) / 255
            for c in range(10)
            for i in range(n)
        ]
        return np.array(x), np.repeat(np.arange(10), n)

    assert _band_spectrum_accuracy(lambda r: r > 0.35, grey(0, 60), grey(1, 30)) > 0.17


def test_bad_arguments(tmp_path):
    with pytest.raises(FdbenchError, match="--classes"):
        make_synthetic_dataset(tmp_path / "x", SyntheticSpec(classes=99))
    with pytest.raises(FdbenchError, match="--size"):
        make_synthetic_dataset(tmp_path / "x", SyntheticSpec(size=8))


def _write_small(out: str) -> str:
    return str(make_synthetic_dataset(out, SMALL, workers=1))


def test_concurrent_writers_of_the_same_dataset_both_succeed(tmp_path):
    """Two commands started at once on a fresh cache generate the same dataset concurrently."""
    from concurrent.futures import ProcessPoolExecutor

    out = tmp_path / "cache" / SMALL.folder_name()
    with ProcessPoolExecutor(2) as pool:
        results = list(pool.map(_write_small, [str(out)] * 4))
    assert results == [str(out)] * 4
    assert len(list(out.rglob("*.png"))) == 2 * 3 * (4 + 2)  # the images and their masks
    assert not [p for p in out.parent.iterdir() if p.name.startswith(".")]  # no temp folders left


def test_an_existing_dataset_is_reused_not_refused(tmp_path):
    """The stored marker reads back with lists where the spec has tuples: still the same dataset."""
    root = make_synthetic_dataset(tmp_path / "d", SMALL, workers=1)
    before = _digest(root)
    assert make_synthetic_dataset(tmp_path / "d", SMALL, workers=1) == root
    assert _digest(root) == before
    other = SyntheticSpec(**{**SMALL.__dict__, "seed": 8})
    with pytest.raises(FdbenchError, match="different synthetic dataset"):
        make_synthetic_dataset(tmp_path / "d", other, workers=1)
