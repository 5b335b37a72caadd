"""Decode-only data loading for the on-device augmentation pipeline (:mod:`pretrain.gpu_augment`).

CPU workers do the one thing a GPU cannot easily do: turn files into pixels. Each sample is decoded
to a ``uint8 [3,h,w]`` tensor at the smallest size the current stage needs, the batch is padded to
its largest image and pinned; crops, colour ops, blur, noise and normalisation happen on the device.

Decode size: a JPEG is decoded with PIL's draft mode (DCT scaling by 1/2, 1/4 or 1/8, nearly free)
to the smallest scale whose shorter side is still ``>= decode_side``; other formats that are more
than twice that size are shrunk with ``Image.reduce`` (box filter by an integer factor). By default
``decode_side`` is what the smallest crop of the stage needs to avoid upsampling beyond what the
full-size image would see (:func:`needed_side`): a crop covering a fraction ``a`` of the area,
resized to ``S`` px, samples the full image at about ``S / sqrt(a)`` px per side.
"""

from __future__ import annotations

import math
import os

import numpy as np
import torch
from PIL import Image, ImageFile
from torch.utils.data import Dataset

from fdbench.data import to_rgb
from fdbench.errors import FdbenchError
from pretrain.batch import DecodedBatch
from pretrain.masking import make_masks


def needed_side(
    global_size: int,
    local_size: int = 0,
    global_min_scale: float = 0.32,
    local_min_scale: float = 0.05,
    n_local: int = 8,
    slack: float = 1.0,
) -> int:
    """Shorter side an image must keep so the smallest crop of each kind is not upsampled by the decode.

    ``max(S_g / sqrt(a_g), S_l / sqrt(a_l)) / slack`` (locals ignored when ``n_local == 0``). ``slack > 1``
    trades a little sharpness of the smallest crops for faster decoding.
    """
    need = global_size / math.sqrt(global_min_scale)
    if n_local and local_size:
        need = max(need, local_size / math.sqrt(local_min_scale))
    return max(1, int(math.ceil(need / slack)))


def decode_file(path: str | os.PathLike, decode_side: int | None = None) -> Image.Image:
    """Decode an image file to RGB, shrunk (JPEG draft / integer reduce) while the short side stays >= decode_side."""
    ImageFile.LOAD_TRUNCATED_IMAGES = False
    with Image.open(path) as img:
        if decode_side and img.format == "JPEG":
            # draft picks the largest DCT scale keeping both sides >= the requested box
            img.draft("RGB", (decode_side, decode_side))
        img.load()
        img = to_rgb(img)
    return shrink(img, decode_side)


def shrink(img: Image.Image, decode_side: int | None) -> Image.Image:
    """``Image.reduce`` by the largest integer factor keeping the shorter side >= decode_side (only when >= 2)."""
    if not decode_side:
        return img
    factor = min(img.size) // decode_side
    return img.reduce(factor) if factor >= 2 else img


def to_uint8_tensor(img: Image.Image) -> torch.Tensor:
    """PIL RGB -> contiguous ``uint8 [3,h,w]``."""
    return torch.from_numpy(np.asarray(img, dtype=np.uint8).copy()).permute(2, 0, 1).contiguous()


class DecodeDataset(Dataset):
    """Wraps an ``open_dataset`` dataset: ``(uint8 [3,h,w], label)``, decoded at ``decode_side``.

    ImageFolder datasets are read from their file paths (so JPEG draft mode applies and broken files
    are skipped the way ``fdbench.data`` does); other datasets (CIFAR/STL) through their own
    ``__getitem__`` (PIL images), shrunk when large.
    """

    def __init__(self, dataset: Dataset, decode_side: int | None = None):
        self.dataset, self.decode_side = dataset, decode_side
        self.samples = getattr(dataset, "samples", None)
        self.classes = getattr(dataset, "classes", None)

    @property
    def targets(self) -> list[int]:
        return list(self.dataset.targets)

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, index: int):
        if self.samples is None:
            img, label = self.dataset[index]
            if not isinstance(img, Image.Image):
                raise FdbenchError("DecodeDataset needs a dataset without a transform (PIL images)")
            return to_uint8_tensor(shrink(to_rgb(img), self.decode_side)), int(label)
        for offset in range(len(self.samples)):  # a broken file is replaced by the next good one
            path, label = self.samples[(index + offset) % len(self.samples)]
            try:
                return to_uint8_tensor(decode_file(path, self.decode_side)), int(label)
            except (OSError, ValueError, Image.DecompressionBombError):
                continue
        raise FdbenchError("no readable images in the dataset")


class DecodeCollate:
    """Pads a list of ``(uint8 [3,h,w], label)`` to one ``uint8 [B,3,H,W]`` batch; optionally makes iBOT masks.

    Returns a :class:`~pretrain.batch.DecodedBatch` (``sizes`` long [B,2] = h, w; ``masks`` bool
    [2B, g*g] or None).
    Masks are made here, in the workers, because the block-wise mask sampler (``pretrain.masking``) is
    a Python loop that would otherwise sit on the training loop's critical path. ``mask_grid=None`` leaves them to the
    augmenter. Picklable, so it works with worker processes.
    """

    def __init__(self, mask_grid: int | None = None, mask_probability: float = 0.5, mask_ratio_range=(0.1, 0.5)):
        self.mask_grid, self.mask_probability, self.mask_ratio_range = (
            mask_grid,
            mask_probability,
            tuple(mask_ratio_range),
        )

    def __call__(self, samples):
        heights = [img.shape[1] for img, _ in samples]
        widths = [img.shape[2] for img, _ in samples]
        batch = torch.zeros(len(samples), 3, max(heights), max(widths), dtype=torch.uint8)
        for i, (img, _) in enumerate(samples):
            batch[i, :, : img.shape[1], : img.shape[2]] = img
        out = DecodedBatch(
            images=batch,
            sizes=torch.tensor(list(zip(heights, widths)), dtype=torch.long),
            labels=torch.tensor([int(label) for _, label in samples], dtype=torch.long),
        )
        if self.mask_grid:
            out.masks = make_masks(
                2 * len(samples),
                grid=(self.mask_grid, self.mask_grid),
                mask_probability=self.mask_probability,
                ratio_range=self.mask_ratio_range,
            )
        return out
