"""Instance-retrieval data: the revisited Oxford 5k / Paris 6k layout and the embedded set.

A retrieval folder holds the images and one ground-truth file in the revisited structure
(``configdataset`` in the public ``revisitop`` code)::

    {"imlist": [database names], "qimlist": [query names],
     "gnd": [{"easy": [db indices], "hard": [...], "junk": [...], "bbx": [x1, y1, x2, y2]}, ...]}

- revisited Oxford / Paris: ``DIR/jpg/<name>.jpg`` and ``DIR/gnd_roxford5k.pkl`` (or
  ``gnd_rparis6k.pkl``), read with :mod:`fdbench.safe_pickle` (never ``pickle.load``);
- the embedded set (:mod:`fdbench.synthetic_retrieval`): ``DIR/gnd_<name>.json`` with the same keys,
  plus ``dir_images`` / ``ext`` / ``image_size``.

Queries are cropped to their bounding box (the protocol's rule; DINO's ``eval_image_retrieval.py``
feeds the full query image instead). Every image is then resized (bicubic, antialiased) so that its
longer side is the evaluation size, aspect ratio kept, each side rounded to a multiple of the patch
size (at least ``min_side`` px, which the corruptions need). DINO's ``thumbnail`` never enlarges;
we do, so that the embedded set's small crops reach the evaluation size.
"""

from __future__ import annotations

import hashlib
import json
import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from fdbench.data import decode_image
from fdbench.errors import FdbenchError
from fdbench.io import progress
from fdbench.safe_pickle import load_plain_pickle

KNOWN = ("roxford5k", "rparis6k")


@dataclass
class RetrievalSet:
    name: str
    root: Path
    gnd_file: Path
    database: list[Path]
    queries: list[Path]
    bboxes: list[tuple[float, float, float, float] | None]
    gnd: list[dict]  # per query: {"easy", "hard", "junk"} int arrays
    native_size: int | None  # the embedded set's image size; None for real photographs
    fingerprint: str  # SHA-256 of the ground-truth file


def find_ground_truth(root: Path, dataset: str | None = None) -> Path:
    if not root.is_dir():
        raise FdbenchError(f"retrieval data folder not found: {root}")
    if dataset:
        found = [p for p in (root / f"gnd_{dataset}.pkl", root / f"gnd_{dataset}.json") if p.is_file()]
        if not found:
            raise FdbenchError(f"no gnd_{dataset}.pkl or gnd_{dataset}.json in {root}")
        return found[0]
    found = sorted(p for p in root.glob("gnd_*") if p.suffix in (".pkl", ".json") and p.is_file())
    if not found:
        raise FdbenchError(
            f"no ground-truth file in {root}: expected gnd_roxford5k.pkl or gnd_rparis6k.pkl beside jpg/ "
            f"(or the embedded set's gnd_*.json, from `fdbench make-dataset synthetic-retrieval`)"
        )
    if len(found) > 1:
        names = ", ".join(p.name for p in found)
        raise FdbenchError(f"several ground-truth files in {root} ({names}): choose one with --dataset NAME")
    return found[0]


def open_retrieval_set(root: str | Path, dataset: str | None = None) -> RetrievalSet:
    """The retrieval set in ``root`` with its ground truth checked; images are read later."""
    root = Path(root)
    gnd_file = find_ground_truth(root, dataset)
    name = gnd_file.stem[len("gnd_") :]
    if gnd_file.suffix == ".pkl":
        cfg = load_plain_pickle(gnd_file)
    else:
        try:
            cfg = json.loads(gnd_file.read_text())
        except (OSError, ValueError) as err:
            raise FdbenchError(f"{gnd_file} is not readable JSON ({str(err).splitlines()[0][:100]})") from None
    imlist, qimlist, gnd = _checked(cfg, gnd_file)
    images = root / str(cfg.get("dir_images", "jpg"))
    ext = str(cfg.get("ext", ".jpg"))
    qext = str(cfg.get("qext", ext))
    database = [images / f"{n}{ext}" for n in imlist]
    queries = [images / f"{n}{qext}" for n in qimlist]
    missing = [p for p in database + queries if not p.is_file()]
    if missing:
        raise FdbenchError(
            f"{len(missing)} of the {len(database) + len(queries)} images listed in {gnd_file.name} are missing "
            f"under {images}, e.g. {missing[0].name}"
        )
    size = cfg.get("image_size")
    return RetrievalSet(
        name=name,
        root=root,
        gnd_file=gnd_file,
        database=database,
        queries=queries,
        bboxes=[g.pop("bbx") for g in gnd],
        gnd=gnd,
        native_size=int(size) if size else None,
        fingerprint=hashlib.sha256(gnd_file.read_bytes()).hexdigest(),
    )


def _checked(cfg, where: Path):
    """(imlist, qimlist, gnd) after checking the structure, with one-line errors naming what is wrong."""
    if not isinstance(cfg, dict) or not {"imlist", "qimlist", "gnd"} <= set(cfg):
        raise FdbenchError(f"{where} is not a revisited ground truth (a dict with imlist, qimlist and gnd)")
    imlist, qimlist, gnd = cfg["imlist"], cfg["qimlist"], cfg["gnd"]
    for key, names in (("imlist", imlist), ("qimlist", qimlist)):
        if not isinstance(names, (list, tuple)) or not names or not all(isinstance(n, str) for n in names):
            raise FdbenchError(f"{where}: {key} must be a non-empty list of image names")
    if not isinstance(gnd, (list, tuple)) or len(gnd) != len(qimlist):
        raise FdbenchError(f"{where}: gnd must have one entry per query ({len(qimlist)})")
    checked = []
    for i, entry in enumerate(gnd):
        if not isinstance(entry, dict):
            raise FdbenchError(f"{where}: gnd[{i}] is not a dict")
        row = {}
        for key in ("easy", "hard", "junk"):
            try:
                ids = np.asarray(entry.get(key, []), dtype=np.int64).ravel()
            except (TypeError, ValueError):
                raise FdbenchError(f"{where}: gnd[{i}][{key!r}] is not a list of database indices") from None
            if len(ids) and (ids.min() < 0 or ids.max() >= len(imlist)):
                raise FdbenchError(f"{where}: gnd[{i}][{key!r}] has indices outside the {len(imlist)} database images")
            row[key] = ids
        row["bbx"] = _bbox(entry.get("bbx"), f"{where}: gnd[{i}]['bbx']")
        checked.append(row)
    return list(imlist), list(qimlist), checked


def _bbox(value, where: str):
    if value is None:
        return None
    try:
        box = tuple(float(v) for v in np.asarray(value, dtype=np.float64).ravel())
    except (TypeError, ValueError):
        raise FdbenchError(f"{where} is not four numbers") from None
    if len(box) != 4 or not all(math.isfinite(v) for v in box) or box[2] <= box[0] or box[3] <= box[1]:
        raise FdbenchError(f"{where} must be [x1, y1, x2, y2] with x2 > x1 and y2 > y1, got {list(box)}")
    return box


def crop_box(width: int, height: int, box) -> tuple[int, int, int, int]:
    """Integer pixel box covering ``box`` (floats), clipped to the image and at least 1 px wide."""
    x1, y1 = max(0, math.floor(box[0])), max(0, math.floor(box[1]))
    x2, y2 = min(width, math.ceil(box[2])), min(height, math.ceil(box[3]))
    return x1, y1, max(x2, x1 + 1), max(y2, y1 + 1)


def eval_shape(height: int, width: int, size: int, patch: int, min_side: int = 32) -> tuple[int, int]:
    """(H, W) with the longer side ``size``, aspect ratio kept, multiples of ``patch``, >= ``min_side``."""
    scale = size / max(height, width)
    floor = -(-min_side // patch) * patch

    def side(n: int) -> int:
        return max(floor, round(n * scale / patch) * patch)

    return side(height), side(width)


def load_image(path: Path, size: int, patch: int, box=None) -> torch.Tensor:
    """uint8 [3, H, W]: decoded, cropped to ``box`` (queries), resized to :func:`eval_shape`."""
    from torchvision.transforms import v2

    try:
        img = decode_image(path)
    except (OSError, ValueError) as err:
        raise FdbenchError(f"cannot decode {path}: {str(err).splitlines()[0][:100]}") from None
    if box is not None:
        img = img.crop(crop_box(img.width, img.height, box))
    x = v2.functional.pil_to_tensor(img)
    h, w = eval_shape(x.shape[1], x.shape[2], size, patch)
    return v2.functional.resize(x, [h, w], interpolation=v2.InterpolationMode.BICUBIC, antialias=True)


class _Images(torch.utils.data.Dataset):
    def __init__(self, paths, size: int, patch: int, boxes):
        self.paths, self.size, self.patch, self.boxes = list(paths), size, patch, boxes or [None] * len(paths)

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, i: int) -> torch.Tensor:
        return load_image(self.paths[i], self.size, self.patch, self.boxes[i])


def load_images(paths, size: int, patch: int, boxes=None, desc: str = "", workers: int = 0) -> list[torch.Tensor]:
    """:func:`load_image` of every path (with its box), in order; ``workers`` decoding processes."""
    loader = torch.utils.data.DataLoader(
        _Images(paths, size, patch, boxes), batch_size=16, num_workers=workers, collate_fn=list
    )
    return [img for batch in progress(loader, desc=desc, unit="batch") for img in batch]
