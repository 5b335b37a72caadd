"""The two batches of the data pipelines, as typed records instead of string-keyed dicts.

- :class:`CropBatch`: a training batch, what :meth:`pretrain.meta_arch.MetaArch.forward_backward`
  takes. The cpu pipeline's collate (``pretrain.augment.collate_multicrop``) makes it in the workers;
  the gpu pipeline's :class:`pretrain.gpu_augment.GpuMultiCrop` makes it on the device.
- :class:`DecodedBatch`: the gpu pipeline's loader batch (decoded, padded uint8 images and what the
  on-device augmentation needs to be reproducible), made by ``pretrain.decode.DecodeCollate`` and
  ``pretrain.data.DecodeBatchCollate``.

Both are crop-major where they hold crops (rows ``c*B:(c+1)*B`` are crop ``c`` of every image) and
both can be pinned by a ``DataLoader(pin_memory=True)`` (it calls their ``pin_memory``).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import torch


def _pinned(batch):
    return dataclasses.replace(
        batch,
        **{
            f.name: getattr(batch, f.name).pin_memory()
            for f in dataclasses.fields(batch)
            if isinstance(getattr(batch, f.name), torch.Tensor)
        },
    )


@dataclass
class CropBatch:
    """Multi-crop views of ``B`` images and their iBOT masks.

    ``mask_indices`` / ``mask_weights`` are the masked tokens' flat positions in ``masks`` and their
    iBOT weights, computed on the CPU by the collate so that the step never waits for the device; a
    hand-made batch may leave them None (``forward_backward`` then computes them from ``masks``).
    """

    global_crops: torch.Tensor  # [2B, 3, S, S]
    local_crops: torch.Tensor | None  # [n_local * B, 3, s, s], None without local crops
    masks: torch.Tensor | None  # bool [2B, (S/patch)^2], one per global crop
    labels: torch.Tensor  # long [B]
    mask_indices: torch.Tensor | None = None  # long [M]
    mask_weights: torch.Tensor | None = None  # float [M]

    def pin_memory(self) -> CropBatch:
        return _pinned(self)


@dataclass
class DecodedBatch:
    """``B`` decoded images padded to one uint8 tensor, before the on-device multi-crop.

    ``masks`` (with ``mask_indices`` / ``mask_weights``) are drawn in the workers when the collate
    knows the mask grid, else None (the augmenter draws them); ``aug_seed`` seeds the device generator
    that draws the crops (None: the caller's generator as it is).
    """

    images: torch.Tensor  # uint8 [B, 3, H, W], image i in its top-left sizes[i]
    sizes: torch.Tensor  # long [B, 2] = (h, w)
    labels: torch.Tensor  # long [B]
    masks: torch.Tensor | None = None  # bool [2B, g*g]
    mask_indices: torch.Tensor | None = None
    mask_weights: torch.Tensor | None = None
    aug_seed: int | None = None

    def pin_memory(self) -> DecodedBatch:
        return _pinned(self)
