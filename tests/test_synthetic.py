import hashlib
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from fdbench.errors import FdbenchError
from fdbench.synthetic import CLASS_NAMES, SyntheticSpec, make_synthetic_dataset, render_image

SMALL = SyntheticSpec(classes=3, train_per_class=4, val_per_class=2, size=32, seed=7)


def _digest(root: Path) -> dict[str, str]:
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file()}


def test_same_seed_same_bytes(tmp_path):
    a = make_synthetic_dataset(tmp_path / "a", SMALL, workers=1)
    b = make_synthetic_dataset(tmp_path / "b", SMALL, workers=2)
    assert _digest(a) == _digest(b)
    assert len([p for p in a.rglob("*.png")]) == 3 * (4 + 2)


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


def test_class_is_low_frequency_and_colour_is_nuisance():
    """Blurring keeps the class (shape) while mean colour carries no class information, and the
    shapes are grey: colour is no instance cue (the texture's faint tint aside)."""
    from scipy.ndimage import gaussian_filter

    size, n = 64, 40
    masks, colours = {}, {}
    for c in (0, 1):  # disk vs square
        imgs = np.stack([render_image(c, np.random.default_rng([1, c, i]), size) for i in range(n)]).astype(float)
        colours[c] = imgs.mean(axis=(1, 2))
        imgs = gaussian_filter(imgs, (0, 1.5, 1.5, 0))  # drop the texture before finding the shape
        # foreground: pixels nearer the centre's colour than the corner's (both shapes cover the
        # centre, neither the corner), then heavy blur: the shape survives
        border = imgs[:, :4, :4, :].mean(axis=(1, 2), keepdims=True)
        centre = imgs[:, 30:34, 30:34, :].mean(axis=(1, 2), keepdims=True)
        fg = (np.abs(imgs - border).sum(-1) > np.abs(imgs - centre).sum(-1)).astype(float)
        masks[c] = np.stack([gaussian_filter(m, 3) for m in fg])
    # the two classes' mean colours overlap heavily ...
    assert abs(colours[0].mean() - colours[1].mean()) < colours[0].std()
    # ... while blurred shapes differ: a square fills its corners' diagonal band more than a disk
    def corners(m):
        return np.mean([m[:, 16:20, 16:20].mean(), m[:, -20:-16, -20:-16].mean(),
                        m[:, 16:20, -20:-16].mean(), m[:, -20:-16, 16:20].mean()])
    assert corners(masks[1]) > corners(masks[0]) + 0.05
    # shapes and backgrounds are grey: channels differ only by the faint texture tint
    img = render_image(2, np.random.default_rng(3), size).astype(float)
    assert np.abs(img - img.mean(-1, keepdims=True)).mean() < 0.1 * 255


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
    assert len(list(out.rglob("*.png"))) == 3 * (4 + 2)
    assert not [p for p in out.parent.iterdir() if p.name.startswith(".")]  # no temp folders left
