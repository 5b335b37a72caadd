"""The embedded instance-retrieval set: the same *instances* seen again under other views.

An *instance* is one specific object: a class shape of the embedded dataset (:mod:`fdbench.synthetic`)
with a smaller second shape (its "part") attached at a fixed place on it, and a fixed polarity (body
brighter or darker than the background, part brighter or darker than the body). The grey levels
themselves are redrawn in every view (:func:`view_greys`), so the instance is its structure, not a
grey-level signature. Instances share shapes on purpose: each shape is the body of several
instances (three queried, three only in the database), which differ in their part and where it
sits, so recognising the shape class alone does not retrieve the instance.

Views of an instance (rendered with the embedded dataset's shape masks, clutter blobs, blur and
texture noise) differ in crop (position, scale), rotation, illumination (gain and a gradient) and
clutter:

- ``query``: near the centre, upright, mild lighting; its ``bbx`` is the square around the object;
- ``easy``: moderate crop, rotation up to +-20 degrees, lighting x0.85-1.15, one or two blobs;
- ``hard``: small and off-centre, rotated 25-70 degrees, lighting x0.7-1.3 with a strong gradient,
  more clutter and an occluding bar across part of the object;
- ``junk``: the object pushed mostly out of the frame (less than about a third visible), as the
  revisited protocol's junk (``< 25%`` of the object visible).

The database holds the easy / hard / junk views of the queried instances, views of the other
instances (confusers) and plain images of the embedded dataset (single shapes, no part). The ground
truth has the revisited Oxford/Paris structure (per query: ``easy``, ``hard``, ``junk`` database
indices and ``bbx``), written as JSON in ``gnd_synthetic-retrieval.json`` beside ``images/``.

Same spec, same bytes: every image has its own RNG seeded from (seed, role, instance, view).
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
from PIL import Image
from scipy.ndimage import gaussian_filter

from fdbench.errors import FdbenchError
from fdbench.io import atomic_write_json, folder_written_atomically
from fdbench.synthetic import (
    CLASS_NAMES,
    NUISANCES,
    _shape_mask,
    _texture,
    cache_dir,
    render_image,
)

VERSION = 1
NAME = "synthetic-retrieval"
GND_FILE = f"gnd_{NAME}.json"
PART_DISTANCE, PART_SCALE, EXTENT = 0.85, 0.45, 1.15  # canonical units: the part's centre, size; object radius


@dataclass(frozen=True)
class RetrievalSpec:
    queries: int = 36  # queried instances (one query each)
    easy: int = 3  # database views per queried instance
    hard: int = 3
    junk: int = 1
    confusers: int = 36  # instances only in the database
    confuser_views: int = 3
    plain: int = 60  # plain embedded-dataset images (one shape, no part)
    size: int = 32
    seed: int = 0

    def folder_name(self) -> str:
        return f"{NAME}-v{VERSION}-q{self.queries}-s{self.size}-seed{self.seed}"


@dataclass(frozen=True)
class Instance:
    shape: int
    part: int
    part_angle: float
    body: float  # grey levels
    part_grey: float
    background: float


@dataclass(frozen=True)
class View:
    scale: tuple[float, float]
    rotation: tuple[float, float]  # |degrees|, either sign
    shift: tuple[float, float]  # distance of the object's centre from the image centre (half-widths)
    gain: tuple[float, float]
    gradient: float
    blobs: tuple[int, int]
    occluder: bool = False


VIEWS = {
    "query": View((0.78, 0.85), (0, 5), (0, 0.06), (0.95, 1.05), 0.1, (0, 1)),
    "easy": View((0.6, 0.8), (0, 20), (0, 0.2), (0.85, 1.15), 0.3, (1, 2)),
    "hard": View((0.45, 0.6), (25, 70), (0.15, 0.35), (0.7, 1.3), 0.6, (2, 4), occluder=True),
    "junk": View((0.5, 0.6), (0, 40), (1.0, 1.2), (0.8, 1.2), 0.4, (1, 3)),
}


def make_instance(rng: np.random.Generator, shape: int) -> Instance:
    def grey_apart(*others, gap):
        while True:
            g = rng.uniform(0, 1)
            if all(abs(g - o) > gap for o in others):
                return g

    background = rng.uniform(0, 1)
    body = grey_apart(background, gap=0.3)
    return Instance(
        shape=shape,
        part=int(rng.integers(len(CLASS_NAMES))),
        part_angle=float(rng.uniform(0, 2 * np.pi)),
        body=body,
        part_grey=grey_apart(background, body, gap=0.2),
        background=background,
    )


def view_greys(inst: Instance, rng: np.random.Generator) -> tuple[float, float, float]:
    """(body, part, background) greys of one view: drawn afresh (illumination and exposure change
    them), keeping only the instance's polarity (body vs background, part vs body), so raw grey
    levels are no instance cue; the instance is its structure."""
    while True:
        body, part, background = rng.uniform(0, 1, size=3)
        contrast = abs(body - background) > 0.3 and abs(part - background) > 0.2 and abs(part - body) > 0.2
        if (
            contrast
            and (body > background) == (inst.body > inst.background)
            and (part > body) == (inst.part_grey > inst.body)
        ):
            return float(body), float(part), float(background)


def render_view(inst: Instance, view: View, rng: np.random.Generator, size: int):
    """One uint8 HxWx3 view and the square box [x1, y1, x2, y2] (pixels) around the object."""
    ss = 2  # supersampled like the embedded dataset: anti-aliased edges
    n = size * ss
    grid = (np.arange(n) + 0.5) / n * 2 - 1
    y, x = np.meshgrid(grid, grid, indexing="ij")

    def down(m):
        return m.astype(np.float32).reshape(size, ss, size, ss).mean(axis=(1, 3))

    body_grey, part_grey, background = view_greys(inst, rng)
    scale = rng.uniform(*view.scale)
    angle = np.deg2rad(rng.uniform(*view.rotation) * rng.choice([-1, 1]))
    direction, dist = rng.uniform(0, 2 * np.pi), rng.uniform(*view.shift)
    cx, cy = dist * np.cos(direction), dist * np.sin(direction)
    xs, ys = (x - cx) / scale, (y - cy) / scale
    u, v = np.cos(angle) * xs + np.sin(angle) * ys, -np.sin(angle) * xs + np.cos(angle) * ys
    body = down(_shape_mask(CLASS_NAMES[inst.shape], u, v))
    pu, pv = PART_DISTANCE * np.cos(inst.part_angle), PART_DISTANCE * np.sin(inst.part_angle)
    part = down(_shape_mask(CLASS_NAMES[inst.part], (u - pu) / PART_SCALE, (v - pv) / PART_SCALE))
    obj = np.maximum(body, part)

    img = np.full((size, size), background, np.float32)
    for _ in range(rng.integers(view.blobs[0], view.blobs[1] + 1)):  # clutter behind the object
        bx, by = rng.uniform(-0.9, 0.9, size=2)
        blob = down(np.hypot(x - bx, y - by) < rng.uniform(0.07, 0.14))
        img = img * (1 - blob) + blob * rng.uniform(0, 1)
    img = img * (1 - obj) + body * (1 - part) * body_grey + part * part_grey
    if view.occluder:  # a bar across the object, of any grey
        theta, offset = rng.uniform(0, np.pi), rng.uniform(-0.3, 0.3) * scale
        across = np.cos(theta) * (x - cx) + np.sin(theta) * (y - cy) - offset
        along = -np.sin(theta) * (x - cx) + np.cos(theta) * (y - cy)
        bar = down((np.abs(across) < 0.1 * scale) & (np.abs(along) < 0.8 * scale))
        img = img * (1 - bar) + bar * rng.uniform(0, 1)

    g = np.linspace(-1, 1, size)
    gy, gx = np.meshgrid(g, g, indexing="ij")
    light = rng.uniform(0, 2 * np.pi)
    img = (
        img * rng.uniform(*view.gain) * (1 + rng.uniform(0, view.gradient) * (np.cos(light) * gx + np.sin(light) * gy))
    )
    img = gaussian_filter(img, NUISANCES.edge_blur * 0.8, mode="nearest")
    img = np.repeat(img[..., None], 3, axis=2) + _texture(rng, size, NUISANCES)
    half = EXTENT * scale * size / 2
    px, py = (cx + 1) / 2 * size, (cy + 1) / 2 * size
    box = [max(0.0, px - half), max(0.0, py - half), min(float(size), px + half), min(float(size), py + half)]
    return (np.clip(img, 0, 1) * 255 + 0.5).astype(np.uint8), [round(b, 2) for b in box]


def _rng(spec: RetrievalSpec, *key: int) -> np.random.Generator:
    return np.random.default_rng([spec.seed, VERSION, *key])


def build(spec: RetrievalSpec):
    """(database images, query images, ground truth) in memory, all from the spec."""
    k = len(CLASS_NAMES)
    queried = [make_instance(_rng(spec, 0, i), i % k) for i in range(spec.queries)]
    confusers = [make_instance(_rng(spec, 1, j), (spec.queries + j) % k) for j in range(spec.confusers)]
    db, owner = [], []  # owner: (query index, kind) or None
    queries, gnd = [], []
    for i, inst in enumerate(queried):
        img, box = render_view(inst, VIEWS["query"], _rng(spec, 2, i, 0), spec.size)
        queries.append(img)
        gnd.append({"easy": [], "hard": [], "junk": [], "bbx": box})
        for kind, count in (("easy", spec.easy), ("hard", spec.hard), ("junk", spec.junk)):
            for view in range(count):
                db.append(render_view(inst, VIEWS[kind], _rng(spec, 3, i, view, len(kind)), spec.size)[0])
                owner.append((i, kind))
    for j, inst in enumerate(confusers):
        for view in range(spec.confuser_views):
            kind = "easy" if view % 2 == 0 else "hard"
            db.append(render_view(inst, VIEWS[kind], _rng(spec, 4, j, view), spec.size)[0])
            owner.append(None)
    for p in range(spec.plain):
        db.append(render_image(p % k, _rng(spec, 5, p), spec.size))
        owner.append(None)
    order = _rng(spec, 6).permutation(len(db))  # positives are not stored side by side
    for position, index in enumerate(order):
        if owner[index] is not None:
            q, kind = owner[index]
            gnd[q][kind].append(position)
    for entry in gnd:
        for kind in ("easy", "hard", "junk"):
            entry[kind].sort()
    return [db[i] for i in order], queries, gnd


def _marker(spec: RetrievalSpec) -> dict:
    return json.loads(json.dumps({"name": f"fdbench-{NAME}", "version": VERSION, "spec": asdict(spec)}))


def make_retrieval_dataset(out: str | Path, spec: RetrievalSpec = RetrievalSpec(), *, overwrite: bool = False) -> Path:
    """Write ``out/images/*.png`` and ``out/gnd_synthetic-retrieval.json``; keep an identical existing set."""
    if not 32 <= spec.size <= 512:
        raise FdbenchError(f"--size must be between 32 and 512 px for the retrieval set, got {spec.size}")
    if spec.queries < 1 or min(spec.easy, spec.hard) < 1:
        raise FdbenchError("the retrieval set needs at least one query with easy and hard views")
    out = Path(out)
    existing = _existing(out)
    if existing is not None and not overwrite:
        if existing != _marker(spec):
            raise FdbenchError(
                f"{out} already holds another retrieval set ({existing.get('spec')}); "
                f"add --overwrite to replace it, or choose another --out"
            )
        return out
    if existing is None and out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise FdbenchError(f"{out} exists and is not an fdbench retrieval set (no {GND_FILE}); choose another --out")
    with folder_written_atomically(out, replace=existing is not None, marker=GND_FILE) as tmp:
        db, queries, gnd = build(spec)
        (tmp / "images").mkdir()
        imlist = [f"db_{i:05d}" for i in range(len(db))]
        qimlist = [f"query_{i:05d}" for i in range(len(queries))]
        for name, img in zip(imlist + qimlist, db + queries):
            Image.fromarray(img).save(tmp / "images" / f"{name}.png", format="PNG", optimize=False, compress_level=6)
        payload = {**_marker(spec), "image_size": spec.size, "dir_images": "images", "ext": ".png"}
        atomic_write_json(tmp / GND_FILE, {**payload, "imlist": imlist, "qimlist": qimlist, "gnd": gnd})
    return out


def _existing(out: Path) -> dict | None:
    try:
        data = json.loads((out / GND_FILE).read_text())
    except (OSError, ValueError):
        return None
    if not isinstance(data, dict) or data.get("name") != f"fdbench-{NAME}":
        return None
    return {k: data.get(k) for k in ("name", "version", "spec")}


def default_retrieval_set(announce=None, spec: RetrievalSpec = RetrievalSpec()) -> Path:
    """The embedded retrieval set's folder in the cache, generated on first use (seconds)."""
    root = cache_dir() / spec.folder_name()
    if not (root / GND_FILE).exists():
        if announce:
            announce(f"no --data given: generating the embedded retrieval set into {root} (once)")
        make_retrieval_dataset(root, spec)
    elif announce:
        announce(f"no --data given: using the embedded retrieval set at {root}")
    return root
