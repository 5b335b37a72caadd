"""Floors: what the probes reach without pretraining, evaluated beside every checkpoint.

- ``pixels``: the probes on the raw pixels at the evaluation size, average-pooled by a fixed integer
  factor so the feature stays under ``MAX_PIXEL_DIMS`` (3 * (size / factor)^2), each image's mean
  subtracted (a brightness offset is no class cue); the linear probe standardises them as it
  standardises any features.
- ``random-init``: the first checkpoint's architecture at random initialisation (``torch.manual_seed``
  with the evaluation seed), through the same frozen-encoder feature layout.

A floor is evaluated exactly like a checkpoint: same val images, same corrupted pixels (the corrupted
batch depends only on the seed, the corruption, the severity and the image index), same probes; it is
one more "checkpoint" in results.csv with kind ``floor``. A pretrained encoder that does not beat its
best floor has not learned anything the probes could not get from its input.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from fdbench.checkpoint import LoadedBackbone
from fdbench.features import to_float01
from fdbench.models import build_backbone

MAX_PIXEL_DIMS = 4096
PIXELS, RANDOM_INIT = "pixels", "random-init"


def pixel_factor(size: int, max_dims: int = MAX_PIXEL_DIMS) -> int:
    """The smallest pooling factor that keeps 3 * ceil(size / f)^2 below ``max_dims``."""
    factor = 1
    while 3 * (-(-size // factor)) ** 2 >= max_dims:
        factor += 1
    return factor


class PixelEncoder(nn.Module):
    """uint8 [N,3,H,W] -> float [N, 3*(H/f)*(W/f)]: pooled pixels in [0, 1], each image's mean removed."""

    def __init__(self, size: int):
        super().__init__()
        self.factor = pixel_factor(size)
        side = -(-size // self.factor)
        self.dim = 3 * side * side
        self.register_buffer("_anchor", torch.zeros(()), persistent=False)  # carries the device

    @property
    def device(self) -> torch.device:
        return self._anchor.device

    @torch.no_grad()
    def forward(self, images: torch.Tensor) -> torch.Tensor:
        x = to_float01(images.to(self.device))
        if self.factor > 1:
            x = F.avg_pool2d(x, self.factor, ceil_mode=True)
        x = x.flatten(1)
        return x - x.mean(dim=1, keepdim=True)


@dataclass
class Floor:
    label: str
    loaded: LoadedBackbone | None  # None for pixels
    fingerprint: str  # stands in for a checkpoint's SHA-256 (cache and resume keys)


def random_init(first: LoadedBackbone, seed: int) -> LoadedBackbone:
    torch.manual_seed(seed)
    model = build_backbone(first.config)
    return LoadedBackbone(model, first.config, "random-init", {"data": first.meta.get("data"), "path": None})


def floors(first: LoadedBackbone, seed: int) -> list[Floor]:
    rand = random_init(first, seed)
    arch = hashlib.sha256(repr(sorted(first.config.to_dict().items())).encode()).hexdigest()[:16]
    return [
        Floor(PIXELS, None, hashlib.sha256(f"pixels|{MAX_PIXEL_DIMS}".encode()).hexdigest()),
        Floor(RANDOM_INIT, rand, hashlib.sha256(f"random-init|{arch}|{seed}".encode()).hexdigest()),
    ]
