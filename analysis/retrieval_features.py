"""Global descriptors for instance retrieval, as DINO's ``eval_image_retrieval.py`` computes them.

- A checkpoint: the class token of the (teacher) backbone's last block after its final norm
  (:class:`fdbench.features.FrozenEncoder` with one block and no patch mean), L2-normalised.
  ``multiscale``: DINO's ``multi_scale`` (``utils.py``): the class tokens at scales 1, 1/sqrt(2) and
  1/2 of the image (bilinear, ``align_corners=False``) are averaged, then L2-normalised. DINO rescales
  by ``scale_factor`` and lets the patch embedding drop the remainder; here each side is rounded to a
  whole number of patches instead (the models here need whole patches).
- The ``pixels`` floor: the image resized to a square of the evaluation size and pooled by
  :class:`analysis.floors.PixelEncoder` (each image's mean removed), L2-normalised: cosine similarity
  of mean-free pixels, i.e. their correlation. One scale only.

Images come as a list of uint8 [3, H, W] tensors of varying shapes (aspect ratios kept); those of
one shape are encoded together in batches, so the descriptors do not depend on the batch size
beyond floating-point rounding.
"""

from __future__ import annotations

import math
from collections import defaultdict

import torch
import torch.nn.functional as F

from fdbench.features import to_float01
from fdbench.io import progress

SCALES = (1.0, 1 / math.sqrt(2), 0.5)


def _scaled(x: torch.Tensor, scale: float, patch: int) -> torch.Tensor:
    if scale == 1:
        return x
    h, w = (max(patch, round(n * scale / patch) * patch) for n in x.shape[-2:])
    return F.interpolate(x, size=(h, w), mode="bilinear", align_corners=False)


@torch.no_grad()
def backbone_descriptors(encoder, images, *, patch: int, multiscale: bool, batch_size: int = 64, desc: str = ""):
    """float32 [N, D] on the CPU, one L2-normalised descriptor per image of ``images``."""
    scales = SCALES if multiscale else (1.0,)

    def encode(batch):
        x = to_float01(batch.to(encoder.device))
        total = sum(encoder(_scaled(x, s, patch)) for s in scales) / len(scales)
        return F.normalize(total, dim=1)

    return _by_shape(encode, images, batch_size, desc)


@torch.no_grad()
def pixel_descriptors(pixel_encoder, images, *, size: int, batch_size: int = 256, desc: str = ""):
    def encode(batch):
        x = to_float01(batch.to(pixel_encoder.device))
        x = F.interpolate(x, size=(size, size), mode="bilinear", align_corners=False, antialias=True)
        return F.normalize(pixel_encoder(x), dim=1)

    return _by_shape(encode, images, batch_size, desc)


def _by_shape(encode, images, batch_size: int, desc: str) -> torch.Tensor:
    groups: dict[tuple, list[int]] = defaultdict(list)
    for i, img in enumerate(images):
        groups[tuple(img.shape)].append(i)
    batches = [idx[s : s + batch_size] for idx in groups.values() for s in range(0, len(idx), batch_size)]
    out: list[torch.Tensor | None] = [None] * len(images)
    for idx in progress(batches, desc=desc, unit="batch", disable=None if desc else True):
        feats = encode(torch.stack([images[i] for i in idx])).float().cpu()
        for i, f in zip(idx, feats):
            out[i] = f
    return torch.stack(out)


def corrupt_queries(queries, corruption: str, severity: int, corrupt_fn, device, seed: int = 0):
    """Each query corrupted on ``device`` with its own seed ``chunk_seed(seed, corruption, severity, i)``
    (query ``i``), as eval-corruptions seeds a chunk by its first image: the corrupted queries do not
    depend on the checkpoint, the batch size or the order of evaluation."""
    from analysis.eval_features import chunk_seed

    return [
        corrupt_fn(q[None].to(device), corruption, severity, generator=chunk_seed(seed, corruption, severity, i))[0]
        for i, q in enumerate(queries)
    ]
