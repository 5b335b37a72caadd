"""The embedded default dataset: a deterministic ImageFolder with a frequency story.

Each class is a global shape or layout (disk, square, triangle, ring, plus, ...): low-frequency
structure that survives heavy blur. Everything else varies per image and carries no class
information (:class:`Nuisances`): position, scale and rotation, the grey levels of shape and
background (either polarity), a smooth illumination gradient, one to three small clutter blobs,
and fresh pixel noise over the whole image. The structure layer (shape, clutter, lighting) is
blurred before the noise is added, so its spectrum dies off well below Nyquist: the band above
about 0.35 cycles/px holds the class-free noise only, the band below 0.15 cycles/px identifies the
class (``tests/test_synthetic.py`` checks both with an independent classifier on each band's
amplitude spectrum). A model can therefore solve the task from low frequencies alone, and noise
and blur corruptions hit exactly the two ends of that spectrum.

Why version 3: on version 2 (64 px, shapes near the centre, sharp edges, three high-frequency
texture *types* with random tints) raw pixels already reached about 86% kNN top-1, so the task
did not need invariance, and the texture type and tint were per-image cues that survive every
augmentation; cpu-tiny encoders stayed near 38%. Version 3 widens position (+-0.3 of the half
width), scale (0.55-1.0) and lighting, adds clutter, uses one texture kind (fresh noise, so its
exact pattern is no instance cue after cropping) and softens the edges; at 32 px raw-pixel kNN
falls to about 54% (``benchmarks/embedded_search/results.csv``), and each image is a quarter of
the pixels, so the same CPU minutes buy four times the optimiser steps.

Why version 4: on version 3 the cpu-tiny encoders stayed within a few points of the raw-pixel kNN
floor. Version 4 widens position (+-0.45 of the half width, was 0.3) and scale (0.4-1.0, was
0.55-1.0): a wider invariance problem, exactly what random-resized crops teach. Raw-pixel kNN falls
from about 54% to 39% at 32 px, a cpu-tiny encoder (with the centre momentum 0.99 the preset now
uses) loses less: 49.7% against 60.3% on v3 (``benchmarks/embedded_search/results.csv``, rows
``j6_c99_hard`` and ``i9_center099``), so the gap to pixels grows from +6 to +10 points.

Why grey shapes (since version 2): with a random colour pair per image (version 1), the colour
pair is an instance cue that survives DINOv2's colour jitter, so self-distillation learned colour
identity and the cpu-tiny runs' kNN accuracy stayed at chance (12.6%).

Same arguments, same bytes: every image has its own RNG seeded from (seed, split, class, index),
and PNGs are written with fixed compression settings.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from concurrent.futures import ProcessPoolExecutor
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
from PIL import Image
from scipy.ndimage import gaussian_filter

from fdbench.errors import FdbenchError
from fdbench.io import atomic_write_json, folder_written_atomically, move_folder_into_place

CLASS_NAMES = (
    "disk",
    "square",
    "triangle",
    "ring",
    "plus",
    "hbars",
    "vbars",
    "two_disks",
    "lshape",
    "xcross",
    "frame",
    "halfmoon",
)
VERSION = 4


@dataclass(frozen=True)
class SyntheticSpec:
    classes: int = 10
    train_per_class: int = 300
    val_per_class: int = 50
    size: int = 32  # version 3: a quarter of v2's pixels, four times the steps per minute
    seed: int = 0
    nuisances: Nuisances | None = None  # None: NUISANCES (the documented default)

    def folder_name(self) -> str:
        return (
            f"synthetic-v{VERSION}-c{self.classes}-t{self.train_per_class}-v{self.val_per_class}"
            f"-s{self.size}-seed{self.seed}"
        )


def _shape_mask(name: str, u: np.ndarray, v: np.ndarray) -> np.ndarray:
    """Soft-free boolean mask of a class shape in canonical coordinates u, v in [-1, 1]."""
    r = np.hypot(u, v)
    if name == "disk":
        return r < 0.55
    if name == "square":
        return np.maximum(abs(u), abs(v)) < 0.48
    if name == "triangle":
        return (v < 0.45) & (v > -0.55 + 1.7 * abs(u))
    if name == "ring":
        return (r < 0.62) & (r > 0.36)
    if name == "plus":
        return ((abs(u) < 0.17) & (abs(v) < 0.62)) | ((abs(v) < 0.17) & (abs(u) < 0.62))
    if name == "hbars":
        return (abs(u) < 0.62) & ((abs(v - 0.33) < 0.14) | (abs(v + 0.33) < 0.14))
    if name == "vbars":
        return (abs(v) < 0.62) & ((abs(u - 0.33) < 0.14) | (abs(u + 0.33) < 0.14))
    if name == "two_disks":
        return (np.hypot(u - 0.32, v - 0.32) < 0.27) | (np.hypot(u + 0.32, v + 0.32) < 0.27)
    if name == "lshape":
        return ((abs(u + 0.35) < 0.17) & (abs(v) < 0.6)) | ((abs(v - 0.43) < 0.17) & (abs(u) < 0.6))
    if name == "xcross":
        a, b = (u + v) / np.sqrt(2), (u - v) / np.sqrt(2)
        return ((abs(a) < 0.15) & (abs(b) < 0.65)) | ((abs(b) < 0.15) & (abs(a) < 0.65))
    if name == "frame":
        m = np.maximum(abs(u), abs(v))
        return (m < 0.58) & (m > 0.36)
    if name == "halfmoon":
        return (r < 0.6) & (v > 0.0)
    raise ValueError(name)


@dataclass(frozen=True)
class Nuisances:
    """The per-image factors that vary independently of the class (see the module docstring)."""

    scale: tuple[float, float] = (0.4, 1.0)
    rotation_deg: float = 18.0  # +-; below 22.5 so plus/xcross and hbars/vbars stay distinct
    shift: float = 0.45  # centre offset, in half-widths of the image
    min_contrast: float = 0.25
    fixed_polarity: bool = False  # True: the shape is always brighter than its background
    gradient: float = 0.4  # strength of the smooth illumination gradient
    distractors: tuple[int, int] = (1, 3)  # small class-free blobs (clutter), min/max count
    texture: str = "noise"  # "noise": fresh pixel noise; "mixed": v2's three texture types
    texture_amp: tuple[float, float] = (0.04, 0.12)
    edge_blur: float = 1.2  # px (Gaussian sigma) of the structure layer; 0: sharp edges


NUISANCES = Nuisances()


def render_image(
    class_index: int,
    rng: np.random.Generator,
    size: int,
    nuisances: Nuisances | None = None,
    *,
    with_mask: bool = False,
):
    """One uint8 HxWx3 image of class ``class_index``; ``with_mask``: ``(image, mask)`` with the
    segmentation label map of :func:`shape_label_map` (the image's bytes are the same either way)."""
    nz = nuisances or NUISANCES
    ss = 2  # supersampling: edges are anti-aliased, so class structure sits in low frequencies
    n = size * ss
    grid = (np.arange(n) + 0.5) / n * 2 - 1
    y, x = np.meshgrid(grid, grid, indexing="ij")

    def place(scale, angle, cx, cy):
        xs, ys = (x - cx) / scale, (y - cy) / scale
        return np.cos(angle) * xs + np.sin(angle) * ys, -np.sin(angle) * xs + np.cos(angle) * ys

    def downsample(m):
        return m.astype(np.float32).reshape(size, ss, size, ss).mean(axis=(1, 3))

    scale = rng.uniform(*nz.scale)
    angle = np.deg2rad(rng.uniform(-nz.rotation_deg, nz.rotation_deg))
    cx, cy = rng.uniform(-nz.shift, nz.shift, size=2)
    mask = downsample(_shape_mask(CLASS_NAMES[class_index], *place(scale, angle, cx, cy)))

    while True:  # grey levels are random but the shape must stay visible
        fg, bg = rng.uniform(0, 1, size=2)
        if abs(fg - bg) > nz.min_contrast and (not nz.fixed_polarity or fg > bg):
            break
    img = mask * fg + (1 - mask) * bg

    # clutter: small blobs of any grey at random places, drawn behind the shape; their size
    # (radius <= 0.14) keeps them far smaller than any class shape
    for _ in range(rng.integers(nz.distractors[0], nz.distractors[1] + 1)):
        bx, by = rng.uniform(-0.9, 0.9, size=2)
        radius = rng.uniform(0.07, 0.14)
        blob = downsample(np.hypot(x - bx, y - by) < radius) * (1 - mask)
        img = img * (1 - blob) + blob * rng.uniform(0, 1)

    g = np.linspace(-1, 1, size)
    gy, gx = np.meshgrid(g, g, indexing="ij")
    direction = rng.uniform(0, 2 * np.pi)
    img = img * (1 + rng.uniform(0, nz.gradient) * (np.cos(direction) * gx + np.sin(direction) * gy))
    if nz.edge_blur > 0:
        # soft edges: the structure's spectrum dies off well below Nyquist (amplitude < 4% above
        # 0.35 cycles/px at sigma 1.2), so the top band holds the class-free texture only
        img = gaussian_filter(img, nz.edge_blur, mode="nearest")
    img = np.repeat(img[..., None], 3, axis=2) + _texture(rng, size, nz)
    img = (np.clip(img, 0, 1) * 255 + 0.5).astype(np.uint8)
    return (img, shape_label_map(mask, class_index)) if with_mask else img


def shape_label_map(coverage: np.ndarray, class_index: int) -> np.ndarray:
    """The segmentation labels of one image: ``class_index + 1`` where the class shape covers at
    least half of the pixel (its anti-aliased coverage, before the blur), 0 (background) elsewhere.
    Clutter blobs are drawn behind the shape and count as background."""
    return np.where(coverage >= 0.5, class_index + 1, 0).astype(np.uint8)


def _texture(rng: np.random.Generator, size: int, nz: Nuisances) -> np.ndarray:
    """High-frequency texture over the whole image, independent of the class."""
    amp = rng.uniform(*nz.texture_amp)
    if nz.texture == "noise":
        return amp * rng.uniform(-1, 1, size=(size, size, 3))
    kind = rng.integers(3)
    yy, xx = np.mgrid[0:size, 0:size]
    if kind == 0:
        period = rng.integers(1, 3)
        pattern = (((yy // period) + (xx // period)) % 2) * 2.0 - 1
        pattern = np.repeat(pattern[..., None], 3, axis=2)
    elif kind == 1:
        theta = rng.uniform(0, np.pi)
        freq = rng.uniform(0.3, 0.5)  # cycles per pixel: close to Nyquist
        pattern = np.sin(2 * np.pi * freq * (np.cos(theta) * xx + np.sin(theta) * yy) + rng.uniform(0, 6.3))
        pattern = np.repeat(pattern[..., None], 3, axis=2)
    else:
        pattern = rng.uniform(-1, 1, size=(size, size, 3))
    return amp * pattern * rng.uniform(0.5, 1.0, size=3)


MASKS = "masks"  # masks/<split>/<class>/<image>.png: the segmentation labels (shape_label_map)


def _render_split_class(args) -> None:
    root, mask_root, split, split_id, class_index, count, spec, what = args
    name = CLASS_NAMES[class_index]
    folder, masks = Path(root) / split / name, Path(mask_root) / MASKS / split / name
    for i in range(count):
        rng = np.random.default_rng([spec.seed, split_id, class_index, i, VERSION])
        img, mask = render_image(class_index, rng, spec.size, spec.nuisances, with_mask=True)
        file = f"{name}_{i:05d}.png"
        if what == "images":
            _save_png(img, folder / file)
        elif not np.array_equal(_read_png(folder / file), img):
            raise FdbenchError(
                f"{folder / file} is not the image this dataset's settings render (written by another "
                f"fdbench version?), so its mask cannot be made: rewrite the dataset with `fdbench "
                f"make-dataset --overwrite`"
            )
        _save_png(mask, masks / file)


def _read_png(path: Path) -> np.ndarray | None:
    try:
        with Image.open(path) as stored:
            return np.asarray(stored.convert("RGB"))
    except OSError:
        return None  # missing or unreadable: not the rendered image either


def _save_png(array: np.ndarray, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(array).save(path, format="PNG", optimize=False, compress_level=6)


def make_synthetic_dataset(
    out: str | Path, spec: SyntheticSpec = SyntheticSpec(), *, workers: int | None = None, overwrite: bool = False
) -> Path:
    """Write the dataset to ``out`` (``train/<class>/*.png``, ``val/<class>/*.png``, ``dataset.json``).

    Written into a temporary sibling folder and renamed into place, so an interrupted run never
    leaves a half-written dataset that looks complete.
    """
    if not 2 <= spec.classes <= len(CLASS_NAMES):
        raise FdbenchError(f"--classes must be between 2 and {len(CLASS_NAMES)}, got {spec.classes}")
    if not 32 <= spec.size <= 1024:
        raise FdbenchError(f"--size must be between 32 and 1024 px, got {spec.size}")
    if spec.train_per_class < 1 or spec.val_per_class < 1:
        raise FdbenchError("--train-per-class and --val-per-class must be at least 1")
    out = Path(out)
    existing = _existing_dataset(out)
    if existing is not None and not overwrite:
        if existing != _marker(spec):
            raise FdbenchError(
                f"{out} already holds a different synthetic dataset ({_describe(existing)}); "
                f"add --overwrite to replace it, or choose another --out"
            )
        ensure_masks(out, workers=workers)  # a folder written before the masks existed gets them
        return out
    if existing is None and out.exists() and (not out.is_dir() or any(out.iterdir())):
        # never delete what fdbench did not write, --overwrite or not
        raise FdbenchError(
            f"{out} exists and is not an fdbench synthetic dataset (no dataset.json marker); "
            f"refusing to write into or delete it: choose another --out"
        )
    with folder_written_atomically(out, replace=existing is not None, marker=MARKER) as tmp:
        _render_all(tmp, tmp, spec, "images", workers)
        atomic_write_json(tmp / MARKER, _marker(spec))
    return out


def _render_all(root: Path, mask_root: Path, spec: SyntheticSpec, what: str, workers: int | None) -> None:
    """Render every image of ``spec``; ``what`` "images": write the images into ``root`` and the
    masks into ``mask_root/masks``; "masks": the masks only, checking that each image already in
    ``root`` is the one rendered."""
    jobs = [
        (root, mask_root, split, sid, c, n, spec, what)
        for sid, (split, n) in enumerate((("train", spec.train_per_class), ("val", spec.val_per_class)))
        for c in range(spec.classes)
    ]
    workers = workers or min(len(jobs), os.cpu_count() or 1)
    if workers > 1:
        with ProcessPoolExecutor(workers) as pool:
            list(pool.map(_render_split_class, jobs))
    else:
        for job in jobs:
            _render_split_class(job)
    labels = ["background", *CLASS_NAMES[: spec.classes]]  # label value = index; nothing is void
    atomic_write_json(Path(mask_root) / MASKS / MARKER, {"name": "fdbench-synthetic-masks", "labels": labels})


def ensure_masks(root: str | Path, *, workers: int | None = None, announce=None) -> Path:
    """The segmentation masks of the synthetic dataset at ``root`` (``root/masks``), written first
    when absent: datasets written before the masks existed get them added beside the untouched
    images (rendered again from the settings in ``dataset.json`` and checked against the images on
    disk), so an old folder needs no new version. Written into a temporary folder and renamed."""
    root = Path(root)
    marker = _existing_dataset(root)
    if marker is None:
        raise FdbenchError(f"{root} is not an fdbench synthetic dataset (no {MARKER} marker)")
    masks = root / MASKS
    if (masks / MARKER).exists():
        return masks
    if announce:
        announce(f"adding segmentation masks to the synthetic dataset at {root} (once)")
    nuisances = marker.get("nuisances")
    spec = SyntheticSpec(
        **{k: marker[k] for k in ("classes", "train_per_class", "val_per_class", "size", "seed")},
        nuisances=Nuisances(**{k: tuple(v) if isinstance(v, list) else v for k, v in nuisances.items()})
        if nuisances
        else None,
    )
    tmp = Path(tempfile.mkdtemp(prefix=f".{MASKS}.", suffix=".tmp", dir=root))
    try:
        _render_all(root, tmp, spec, "masks", workers)
        move_folder_into_place(tmp / MASKS, masks, MARKER)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return masks


MARKER = "dataset.json"


def _marker(spec: SyntheticSpec) -> dict:
    marker = {
        "name": "fdbench-synthetic",
        "version": VERSION,
        **asdict(spec),
        "class_names": list(CLASS_NAMES[: spec.classes]),
    }
    # as it reads back from dataset.json (tuples become lists), so a stored marker compares equal
    return json.loads(json.dumps(marker))


def _describe(marker: dict) -> str:
    keys = ("classes", "train_per_class", "val_per_class", "size", "seed", "version")
    return ", ".join(f"{k.replace('_', '-')} {marker.get(k)}" for k in keys)


def _existing_dataset(out: Path) -> dict | None:
    """The marker of the fdbench dataset at ``out``, or None when ``out`` is not one."""
    try:
        marker = json.loads((out / MARKER).read_text())
    except (OSError, ValueError):
        return None
    return marker if isinstance(marker, dict) and marker.get("name") == "fdbench-synthetic" else None


def cache_dir() -> Path:
    return Path(os.environ.get("FDBENCH_CACHE", Path.home() / ".cache" / "fdbench"))


def default_dataset(announce=None, spec: SyntheticSpec = SyntheticSpec()) -> Path:
    """The embedded dataset's folder in the cache, generated on first use."""
    root = cache_dir() / spec.folder_name()
    if not (root / "dataset.json").exists():
        if announce:
            announce(f"no --data given: generating the embedded synthetic dataset into {root} (once)")
        make_synthetic_dataset(root, spec)
    elif announce:
        announce(f"no --data given: using the embedded synthetic dataset at {root}")
    return root
