"""Frozen feature extraction shared by evaluation and frequency analysis.

Features follow DINOv2's linear evaluation: the class token concatenated with the mean of the patch
tokens of the last block (``n_last_blocks=4``: the class tokens of the last four blocks plus the
patch-token mean of the last one). Inputs are images in [0,1] (float) or uint8; normalisation with
the ImageNet mean/std happens here, so callers can perturb pixels (corruptions, Fourier noise)
before it, as the robustness definitions require.
"""

from __future__ import annotations


import torch
from torch import nn

from fdbench.device import autocast
from fdbench.io import progress

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


def to_float01(images: torch.Tensor) -> torch.Tensor:
    """uint8 [0,255] or float [0,1] images -> float32 [0,1]."""
    if images.dtype == torch.uint8:
        return images.float().div_(255)
    return images.float()


class FrozenEncoder(nn.Module):
    """Backbone + input normalisation + DINOv2 linear-eval feature layout, without gradients."""

    def __init__(self, backbone: nn.Module, n_last_blocks: int = 1, avgpool: bool = True):
        super().__init__()
        self.backbone = backbone.eval().requires_grad_(False)
        self.n_last_blocks = n_last_blocks
        self.avgpool = avgpool
        self.register_buffer("mean", torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(IMAGENET_STD).view(1, 3, 1, 1), persistent=False)

    @property
    def dim(self) -> int:
        return self.backbone.embed_dim * (self.n_last_blocks + int(self.avgpool))

    @property
    def device(self) -> torch.device:
        return self.mean.device

    @torch.no_grad()
    def forward(self, images: torch.Tensor) -> torch.Tensor:
        x = (to_float01(images.to(self.device, non_blocking=True)) - self.mean) / self.std
        with autocast(self.device):
            blocks = self.backbone.forward_last_blocks(x, self.n_last_blocks)
        parts = [cls for cls, _ in blocks]
        if self.avgpool:
            parts.append(blocks[-1][1].mean(dim=1))
        return torch.cat(parts, dim=-1).float()


def extract_features(
    encoder: FrozenEncoder, images: torch.Tensor, *, batch_size: int = 256, transform=None, desc: str = ""
) -> torch.Tensor:
    """Features of a whole image tensor, batch by batch, returned as float32 on the CPU.

    ``transform`` (optional) maps a float [0,1] batch on the encoder's device to another one
    (a corruption, a band-pass filter, a Fourier perturbation) before encoding.
    """
    out = []
    for start in progress(range(0, len(images), batch_size), desc=desc, unit="batch", disable=None if desc else True):
        batch = to_float01(images[start : start + batch_size].to(encoder.device, non_blocking=True))
        if transform is not None:
            batch = transform(batch)
        out.append(encoder(batch).cpu())
    if not out:
        return torch.empty(0, encoder.dim)
    return torch.cat(out)


def eval_image_size(trained_size: int | None, dataset_size: int | None, patch_size: int) -> int:
    """The evaluation resolution: the dataset's native size when known, else the training size,
    rounded down to a multiple of the patch size (at least a 2x2 patch grid)."""
    size = dataset_size or trained_size or 224
    return max(2 * patch_size, size // patch_size * patch_size)
