"""Datasets: ImageFolder roots (ImageNet layout), class subsets, CIFAR/STL local files, robust decoding.

``open_dataset(root, split)`` is the one loader every command uses. It returns a torch ``Dataset``
of ``(PIL RGB image, label)`` pairs (or transformed images) with ``classes`` and ``targets``.

Accepted roots:
- an ImageFolder root with ``train/`` and ``val/`` sub-folders of ``<class>/<image>`` files
  (ImageNet layout; ``--class-list FILE`` keeps a subset, e.g. ImageNet-100's class list);
- ``cifar10:DIR``, ``cifar100:DIR``, ``stl10:DIR`` (or a DIR holding the standard
  ``cifar-10-batches-py`` / ``cifar-100-python`` / ``stl10_binary`` folders): torchvision's readers on
  local files, never a download;
- ``None``: the embedded synthetic dataset (generated into the cache on first use).
"""

from __future__ import annotations

import json
import os
import warnings
from collections import Counter
from pathlib import Path
from typing import Callable

import numpy as np
import torch
from PIL import Image, ImageFile
from torch.utils.data import DataLoader, Dataset

from fdbench.errors import FdbenchError
from fdbench.io import progress

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".ppm", ".bmp", ".pgm", ".tif", ".tiff", ".webp", ".gif", ".jfif")
SPLIT_ALIASES = {"train": ("train",), "val": ("val", "validation", "test")}
SCAN_LIMIT = 20_000  # folders up to this size are fully decoded up front; larger ones lazily


def to_rgb(img: Image.Image) -> Image.Image:
    """Convert any PIL mode (L, LA, P, RGBA, CMYK, I;16, I, F, ...) to 8-bit RGB."""
    if img.mode == "RGB":
        return img
    if img.mode in ("I;16", "I;16B", "I;16L", "I", "F"):
        arr = np.asarray(img, dtype=np.float64)
        top = 65535.0 if img.mode.startswith("I;16") or arr.max() > 255 else 255.0
        arr = np.clip(arr / top * 255.0 + 0.5, 0, 255).astype(np.uint8)
        return Image.fromarray(arr).convert("RGB")
    if img.mode == "P" and "transparency" in img.info:
        img = img.convert("RGBA")
    return img.convert("RGB")


def decode_image(path: str | os.PathLike) -> Image.Image:
    """Open and fully decode an image as RGB; raises ``OSError``/``ValueError`` on broken files."""
    ImageFile.LOAD_TRUNCATED_IMAGES = False
    with Image.open(path) as img:
        img.load()
        return to_rgb(img)


class ImageFolderDataset(Dataset):
    """``root/<class>/<image>`` with robust decoding and an optional class subset."""

    def __init__(
        self,
        root: str | os.PathLike,
        transform: Callable | None = None,
        classes: list[str] | None = None,
        scan: bool | None = None,
    ):
        self.root = Path(root)
        if not self.root.is_dir():
            raise FdbenchError(f"data folder not found: {self.root}")
        found = sorted(d.name for d in self.root.iterdir() if d.is_dir() and not d.name.startswith("."))
        if classes is not None:
            missing = [c for c in classes if c not in found]
            if missing:
                raise FdbenchError(
                    f"{len(missing)} class(es) of the class list are not in {self.root}: {', '.join(missing[:5])}"
                )
            found = list(classes)
        self.classes = found
        self.class_to_idx = {c: i for i, c in enumerate(self.classes)}
        self.samples = [
            (str(p), self.class_to_idx[c])
            for c in self.classes
            for p in sorted((self.root / c).iterdir())
            if p.suffix.lower() in IMAGE_EXTENSIONS and not p.name.startswith(".")
        ]
        if not self.samples:
            raise FdbenchError(f"no images found in {self.root} (expected <class>/<image> files)")
        self.transform = transform
        self.skipped: list[str] = []
        if scan if scan is not None else len(self.samples) <= SCAN_LIMIT:
            self._drop_unreadable()

    @property
    def targets(self) -> list[int]:
        return [label for _, label in self.samples]

    def _drop_unreadable(self) -> None:
        good = []
        for path, label in self.samples:
            try:
                decode_image(path)
                good.append((path, label))
            except (OSError, ValueError, Image.DecompressionBombError):
                self.skipped.append(path)
        if self.skipped:
            warnings.warn(
                f"skipped {len(self.skipped)} unreadable image(s) in {self.root} (first: {self.skipped[0]})",
                stacklevel=3,
            )
        if not good:
            raise FdbenchError(f"no readable images in {self.root}")
        self.samples = good

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, index: int):
        # a broken file found late (large folders are not scanned) is replaced by the next good one
        for offset in range(len(self.samples)):
            path, label = self.samples[(index + offset) % len(self.samples)]
            try:
                img = decode_image(path)
                break
            except (OSError, ValueError, Image.DecompressionBombError):
                if path not in self.skipped:
                    self.skipped.append(path)
                    warnings.warn(f"skipping unreadable image {path} ({len(self.skipped)} so far)", stacklevel=2)
        else:
            raise FdbenchError(f"no readable images in {self.root}")
        return (self.transform(img) if self.transform else img), label


class _TorchvisionDataset(Dataset):
    """CIFAR/STL arrays from torchvision's readers, yielding PIL RGB images like the folder loader."""

    def __init__(self, kind: str, root: Path, split: str, transform: Callable | None):
        import torchvision.datasets as tvd

        train = split == "train"
        try:
            if kind == "cifar10":
                ds = tvd.CIFAR10(str(root), train=train, download=False)
            elif kind == "cifar100":
                ds = tvd.CIFAR100(str(root), train=train, download=False)
            else:
                ds = tvd.STL10(str(root), split="train" if train else "test", download=False)
        except RuntimeError as err:
            raise FdbenchError(f"cannot read {kind} files under {root}: {err}") from None
        self._ds, self.transform = ds, transform
        self.classes = list(ds.classes)
        self._targets = list(ds.targets if hasattr(ds, "targets") else ds.labels)

    @property
    def targets(self) -> list[int]:
        return [int(t) for t in self._targets]

    def __len__(self) -> int:
        return len(self._ds)

    def __getitem__(self, index: int):
        img, label = self._ds[index]
        img = to_rgb(img)
        return (self.transform(img) if self.transform else img), int(label)


_TV_MARKERS = {"cifar10": "cifar-10-batches-py", "cifar100": "cifar-100-python", "stl10": "stl10_binary"}


def resolve_root(root: str | os.PathLike | None, announce: Callable[[str], None] | None = None) -> str:
    """``None`` becomes the embedded dataset's folder; anything else is returned as given."""
    if root is None or str(root) == "":
        from fdbench.synthetic import default_dataset

        return str(default_dataset(announce))
    return str(root)


def dataset_fingerprint(root: str | os.PathLike | None) -> str | None:
    """A cheap identity of the dataset at ``root``, stored beside its path in runs and evaluations so
    that another dataset at the same path is noticed (``None`` where there is nothing to read).

    SHA-256 over the sorted relative paths of the split folders' files (``train/``, ``val/``, ...;
    for CIFAR/STL the files of its folder) and, for up to :data:`SCAN_LIMIT` files, their sizes:
    adding, removing, renaming or re-encoding images changes it; reading is one directory walk (a
    stat per file on small sets), not a read of the images. Hidden files are left out."""
    import hashlib

    spec = resolve_root(root)
    kind, _, rest = spec.partition(":")
    base = Path(rest) if kind in _TV_MARKERS and rest else Path(spec)
    if not base.is_dir():
        return None
    parts = [base / m for m in _TV_MARKERS.values() if (base / m).is_dir()]
    parts = parts or [base / n for names in SPLIT_ALIASES.values() for n in names if (base / n).is_dir()]
    files = []
    for part in parts or [base]:
        for folder, dirs, names in os.walk(part):
            dirs[:] = sorted(d for d in dirs if not d.startswith("."))
            files += [Path(folder, n) for n in names if not n.startswith(".")]
    files.sort()
    sized = len(files) <= SCAN_LIMIT
    digest = hashlib.sha256()
    for path in files:
        digest.update(path.relative_to(base).as_posix().encode())
        digest.update(f"\0{path.stat().st_size if sized else ''}\n".encode())
    return f"{len(files)}:{digest.hexdigest()[:16]}"


def check_fingerprint(recorded: dict | None, root: str, announce: Callable[[str], None] | None) -> None:
    """Warn when the dataset at the path a checkpoint was trained on is not the one it was trained on
    (evaluating another dataset is legitimate; numbers silently labelled with the old one are not)."""
    recorded = recorded or {}
    then = recorded.get("fingerprint")
    if not then or announce is None or str(recorded.get("root")) != str(root):
        return
    now = dataset_fingerprint(root)
    if now is not None and now != then:
        announce(
            f"warning: the dataset at {root} changed since the checkpoint was trained on it "
            f"(fingerprint {then}, now {now}: images added, removed or replaced); the results are for "
            f"the data as it is now"
        )


def check_same_classes(train: list[str], val: list[str], root) -> None:
    """Labels are indices into each split's class list: two lists that differ would score the val
    images against other classes' names. One line naming the classes that differ."""
    if list(train) == list(val):
        return
    only_train = [c for c in train if c not in set(val)]
    only_val = [c for c in val if c not in set(train)]

    def some(names: list[str]) -> str:
        return ", ".join(names[:5]) + (f" and {len(names) - 5} more" if len(names) > 5 else "")

    parts = [
        f"only in train: {some(only_train)}" if only_train else "",
        f"only in val: {some(only_val)}" if only_val else "",
    ]
    detail = "; ".join(p for p in parts if p) or "the same names in another order"
    raise FdbenchError(
        f"the train and val splits of {root} have different classes ({detail}); "
        f"give both the same class folders (or use --class-list)"
    )


def recorded_root(meta: dict, announce: Callable[[str], None], fallback: str) -> str | None:
    """The dataset root a checkpoint's ``meta`` recorded, when it is here (a folder that exists or a
    torchvision ``kind:DIR`` root); else ``None``, announcing ``fallback`` (what the caller does
    instead) when a root was recorded but is missing."""
    recorded = (meta.get("data") or {}).get("root")
    kind, colon, _ = str(recorded).partition(":")
    if recorded and (Path(recorded).exists() or (colon and kind in _TV_MARKERS)):
        return str(recorded)
    if recorded:
        announce(f"the checkpoint's training data {recorded} is not here; {fallback}")
    return None


def read_class_list(path: str | os.PathLike) -> list[str]:
    path = Path(path)
    if not path.is_file():
        raise FdbenchError(f"class list not found: {path}")
    names = [line.split()[0] for line in path.read_text().splitlines() if line.strip() and not line.startswith("#")]
    if not names:
        raise FdbenchError(f"class list {path} is empty")
    return names


def open_dataset(
    root: str | os.PathLike | None,
    split: str = "train",
    transform: Callable | None = None,
    class_list: str | os.PathLike | None = None,
    announce=None,
) -> Dataset:
    """Open one split of a dataset (see the module docstring for what ``root`` may be)."""
    if split not in SPLIT_ALIASES:
        raise FdbenchError(f"unknown split {split!r}: use train or val")
    spec = resolve_root(root, announce)
    kind, _, rest = spec.partition(":")
    if kind in _TV_MARKERS and rest:
        return _TorchvisionDataset(kind, Path(rest), split, transform)
    base = Path(spec)
    if not base.exists():
        raise FdbenchError(f"data folder not found: {base}")
    for kind, marker in _TV_MARKERS.items():
        if (base / marker).is_dir():
            return _TorchvisionDataset(kind, base, split, transform)
    classes = read_class_list(class_list) if class_list else None
    for name in SPLIT_ALIASES[split]:
        if (base / name).is_dir():
            return ImageFolderDataset(base / name, transform, classes)
    raise FdbenchError(
        f"{base} has no {split}/ folder (expected the ImageNet layout: "
        f"{base}/train/<class>/*.jpg and {base}/val/<class>/*.jpg)"
    )


def dataset_resolution(root: str | os.PathLike | None) -> int | None:
    """The native image size of an embedded/CIFAR/STL dataset, or None for general folders."""
    spec = resolve_root(root)
    kind = spec.partition(":")[0]
    if kind in ("cifar10", "cifar100"):
        return 32
    if kind == "stl10":
        return 96
    meta = Path(spec) / "dataset.json"
    if meta.exists():
        return int(json.loads(meta.read_text())["size"])
    for kind, marker in _TV_MARKERS.items():
        if (Path(spec) / marker).is_dir():
            return 32 if kind.startswith("cifar") else 96
    return None


def eval_transform(size: int, resize: int | None = None):
    """Resize (shorter side, bicubic) + CenterCrop to ``size``, as uint8 CHW tensors.

    The resize defaults to ``size * 256 / 224`` (the ImageNet 256 -> 224 ratio); for datasets stored
    at their native resolution pass ``resize=size`` to keep every pixel.
    """
    from torchvision.transforms import v2

    resize = resize or round(size * 256 / 224)
    return v2.Compose(
        [
            v2.PILToTensor(),
            v2.Resize(resize, interpolation=v2.InterpolationMode.BICUBIC, antialias=True),
            v2.CenterCrop(size),
        ]
    )


def load_split_tensor(
    root: str | os.PathLike | None,
    split: str,
    size: int,
    *,
    resize: int | None = None,
    max_per_class: int | None = None,
    class_list=None,
    workers: int = 0,
    batch_size: int = 256,
    desc: str = "",
) -> tuple[torch.Tensor, torch.Tensor, list[str]]:
    """Load a whole split into memory as ``uint8 [N,3,size,size]`` plus labels and class names.

    Meant for evaluation-sized data (the embedded dataset, CIFAR, ImageNet-100 val); ``max_per_class``
    keeps the first images of each class for a quick look at larger ones.
    """
    ds = open_dataset(root, split, eval_transform(size, resize), class_list)
    indices = list(range(len(ds)))
    if max_per_class is not None:
        taken: Counter = Counter()
        indices = []
        for i, label in enumerate(ds.targets):
            if taken[label] < max_per_class:
                taken[label] += 1
                indices.append(i)
        ds = torch.utils.data.Subset(ds, indices)
    loader = DataLoader(ds, batch_size=batch_size, num_workers=workers, shuffle=False)
    images, labels = [], []
    for x, y in progress(loader, desc=desc or f"loading {split}", unit="batch"):
        images.append(x)
        labels.append(y)
    classes = (ds.dataset if isinstance(ds, torch.utils.data.Subset) else ds).classes
    return torch.cat(images), torch.cat(labels), list(classes)
