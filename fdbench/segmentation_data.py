"""Semantic-segmentation datasets from local folders: images and label maps at one square size.

- ``ade20k``: ``ADEChallengeData2016/images/{training,validation}/*.jpg`` with
  ``annotations/{training,validation}/*.png``; 150 classes. Label 0 ("other") is void: labels shift
  by -1 and 0 becomes :data:`IGNORE`, as mmsegmentation's ``reduce_zero_label`` does. Class names
  from ``objectInfo150.txt`` when present.
- ``voc``: Pascal VOC 2012 (``JPEGImages``, ``SegmentationClass`` palette PNGs,
  ``ImageSets/Segmentation/{train,val}.txt``); 21 classes (0 = background), 255 (the object
  borders) is void.
- ``embedded``: the synthetic dataset with its masks (``fdbench.synthetic.ensure_masks``): label
  ``class + 1`` for shape pixels, 0 for the background (clutter included); nothing is void.

Every image and its labels go through the same geometry: the shorter side resized to ``size``
(image bicubic with antialiasing, labels nearest), then the centre ``size`` x ``size`` crop. An image
at its native size is left as it is.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch.utils.data import DataLoader, Dataset

from fdbench.data import decode_image
from fdbench.errors import FdbenchError
from fdbench.io import progress

IGNORE = 255  # the void label of every dataset here
DATASETS = ("ade20k", "voc", "embedded")
VOC_CLASSES = (
    "background", "aeroplane", "bicycle", "bird", "boat", "bottle", "bus", "car", "cat", "chair", "cow",
    "diningtable", "dog", "horse", "motorbike", "person", "pottedplant", "sheep", "sofa", "train", "tvmonitor",
)  # fmt: skip
SPLIT_FOLDERS = {"ade20k": {"train": "training", "val": "validation"}}


@dataclass
class SegmentationSource:
    """One split of a dataset: image/label file pairs, the class names and the raw -> train-id table."""

    name: str
    root: Path
    pairs: list[tuple[Path, Path]]
    classes: list[str]
    lut: np.ndarray  # uint8 [256]: raw label value -> class index or IGNORE


def _lut(mapping: dict[int, int]) -> np.ndarray:
    lut = np.full(256, IGNORE, dtype=np.uint8)
    for raw, label in mapping.items():
        lut[raw] = label
    return lut


def detect_dataset(root: Path) -> str:
    """The dataset kind of a folder from its layout (for ``--dataset auto``)."""
    if (root / "dataset.json").exists():
        return "embedded"
    if _ade_root(root) is not None:
        return "ade20k"
    if _voc_root(root) is not None:
        return "voc"
    raise FdbenchError(
        f"{root} is neither ADE20K (ADEChallengeData2016/images, annotations), Pascal VOC 2012 "
        f"(JPEGImages, SegmentationClass, ImageSets/Segmentation) nor the embedded dataset: "
        f"check --data or name the layout with --dataset"
    )


def _ade_root(root: Path) -> Path | None:
    for base in (root, root / "ADEChallengeData2016"):
        if (base / "images").is_dir() and (base / "annotations").is_dir():
            return base
    return None


def _voc_root(root: Path) -> Path | None:
    for base in (root, root / "VOC2012", root / "VOCdevkit" / "VOC2012"):
        if (base / "JPEGImages").is_dir() and (base / "SegmentationClass").is_dir():
            return base
    return None


def open_segmentation(root: str | Path, dataset: str, split: str) -> SegmentationSource:
    """The image/label pairs of one split (``train`` or ``val``) of ``dataset`` under ``root``."""
    root = Path(root)
    if not root.is_dir():
        raise FdbenchError(f"data folder not found: {root}")
    if dataset == "auto":
        dataset = detect_dataset(root)
    if dataset == "ade20k":
        return _ade20k(root, split)
    if dataset == "voc":
        return _voc(root, split)
    if dataset == "embedded":
        return _embedded(root, split)
    raise FdbenchError(f"unknown segmentation dataset {dataset!r}: use {', '.join(DATASETS)} or auto")


def _ade20k(root: Path, split: str) -> SegmentationSource:
    base = _ade_root(root)
    if base is None:
        raise FdbenchError(f"{root} has no ADE20K layout (ADEChallengeData2016/images/ and annotations/)")
    folder = SPLIT_FOLDERS["ade20k"][split]
    images = sorted((base / "images" / folder).glob("*.jpg"))
    if not images:
        raise FdbenchError(f"no images in {base / 'images' / folder} (expected *.jpg)")
    pairs = [(p, base / "annotations" / folder / f"{p.stem}.png") for p in images]
    classes = [f"class_{i:03d}" for i in range(150)]
    info = base / "objectInfo150.txt"  # Idx Ratio Train Val Name (tab-separated), one header line
    if info.is_file():
        rows = [line.split("\t") for line in info.read_text(errors="replace").splitlines()[1:] if line.strip()]
        names = [r[-1].split(";")[0].strip() for r in rows if len(r) >= 5]
        classes = names if len(names) == 150 else classes
    return SegmentationSource("ade20k", base, _existing(pairs), classes, _lut({v: v - 1 for v in range(1, 151)}))


def _voc(root: Path, split: str) -> SegmentationSource:
    base = _voc_root(root)
    if base is None:
        raise FdbenchError(f"{root} has no Pascal VOC 2012 layout (JPEGImages/ and SegmentationClass/)")
    listing = base / "ImageSets" / "Segmentation" / f"{split}.txt"
    if not listing.is_file():
        raise FdbenchError(f"split list not found: {listing}")
    ids = [line.split()[0] for line in listing.read_text().splitlines() if line.strip()]
    if not ids:
        raise FdbenchError(f"split list {listing} is empty")
    pairs = [(base / "JPEGImages" / f"{i}.jpg", base / "SegmentationClass" / f"{i}.png") for i in ids]
    return SegmentationSource("voc", base, _existing(pairs), list(VOC_CLASSES), _lut({v: v for v in range(21)}))


def _embedded(root: Path, split: str) -> SegmentationSource:
    from fdbench.synthetic import MARKER, ensure_masks

    masks = ensure_masks(root)
    classes = json.loads((masks / MARKER).read_text())["labels"]
    images = sorted((root / split).glob("*/*.png"))
    if not images:
        raise FdbenchError(f"no images in {root / split}")
    pairs = [(p, masks / split / p.parent.name / p.name) for p in images]
    return SegmentationSource("embedded", root, _existing(pairs), classes, _lut({v: v for v in range(len(classes))}))


def _existing(pairs: list[tuple[Path, Path]]) -> list[tuple[Path, Path]]:
    missing = [label for _, label in pairs if not label.is_file()]
    if missing:
        raise FdbenchError(f"{len(missing)} label file(s) missing, e.g. {missing[0]}")
    return pairs


def read_labels(path: Path, lut: np.ndarray) -> np.ndarray:
    """A label PNG as class indices (uint8, IGNORE for void): palette or greyscale indices, never colours."""
    try:
        img = Image.open(path)
        img.load()
    except OSError as err:
        raise FdbenchError(f"cannot read the label file {path}: {err}") from None
    if img.mode not in ("P", "L", "I;16", "I"):
        raise FdbenchError(
            f"{path} is a {img.mode} image: label files must hold class indices (palette or greyscale PNG), not colours"
        )
    raw = np.asarray(img)
    if raw.max(initial=0) > 255:
        raise FdbenchError(f"{path} holds label values above 255 ({int(raw.max())})")
    return lut[raw.astype(np.uint8)]


def _square(img: Image.Image, labels: Image.Image, size: int, path: Path) -> tuple[Image.Image, Image.Image]:
    """Shorter side to ``size`` (bicubic / nearest), then the centre ``size`` x ``size`` crop."""
    if img.size != labels.size:
        raise FdbenchError(f"{path} and its labels differ in size ({img.size} vs {labels.size})")
    w, h = img.size
    if min(w, h) != size:
        scale = size / min(w, h)
        new = (max(size, round(w * scale)), max(size, round(h * scale)))
        img = img.resize(new, Image.BICUBIC, reducing_gap=None)
        labels = labels.resize(new, Image.NEAREST)
    w, h = img.size
    left, top = (w - size) // 2, (h - size) // 2
    box = (left, top, left + size, top + size)
    return img.crop(box), labels.crop(box)


class SegmentationDataset(Dataset):
    """(uint8 [3,S,S] image, uint8 [S,S] labels) pairs of a :class:`SegmentationSource`."""

    def __init__(self, source: SegmentationSource, size: int):
        self.source, self.size = source, size

    def __len__(self) -> int:
        return len(self.source.pairs)

    def __getitem__(self, i: int):
        image_path, label_path = self.source.pairs[i]
        labels = Image.fromarray(read_labels(label_path, self.source.lut))
        try:
            img = decode_image(image_path)
        except (OSError, ValueError) as err:
            raise FdbenchError(f"cannot read the image {image_path}: {err}") from None
        img, labels = _square(img, labels, self.size, image_path)
        image = torch.from_numpy(np.asarray(img, dtype=np.uint8).copy()).permute(2, 0, 1)
        return image, torch.from_numpy(np.asarray(labels, dtype=np.uint8).copy())


def segmentation_loader(
    source: SegmentationSource, size: int, *, limit: int | None = None, batch_size: int = 64, workers: int = 0
) -> DataLoader:
    """Batches of (images, labels) of the first ``limit`` pairs (sorted order) at ``size`` px."""
    if limit is not None:
        source = SegmentationSource(source.name, source.root, source.pairs[:limit], source.classes, source.lut)
    return DataLoader(SegmentationDataset(source, size), batch_size=batch_size, num_workers=workers, shuffle=False)


def load_segmentation_split(
    source: SegmentationSource,
    size: int,
    *,
    limit: int | None = None,
    batch_size: int = 64,
    workers: int = 0,
    desc: str = "",
) -> tuple[torch.Tensor, torch.Tensor]:
    """A whole split in memory: uint8 images [N,3,S,S] and uint8 labels [N,S,S]."""
    images, labels = [], []
    loader = segmentation_loader(source, size, limit=limit, batch_size=batch_size, workers=workers)
    for x, y in progress(loader, desc=desc or f"loading {source.name}", unit="batch"):
        images.append(x)
        labels.append(y)
    return torch.cat(images), torch.cat(labels)
