"""DINOv2's linear segmentation probe on frozen patch tokens, and the mIoU it is scored by.

The head is DINOv2's ``BNHead`` with the ``linear`` config (``dinov2/eval/segmentation``): the patch
tokens of the last block (``n_last_blocks=4``: of the last four blocks, concatenated along the
channels, DINOv2's multi-layer variant), each through the final norm, as a [B, D, h, w] map; a
BatchNorm over the channels and a 1x1 convolution to the class logits; the logits upsampled
bilinearly to the label size; cross-entropy that ignores the void label. The backbone is frozen, so
the patch maps are computed once and the head trains on them (AdamW, lr 1e-3, weight decay 1e-4,
linear warm-up then polynomial decay of power 1, batch 16, as DINOv2's config; for a fixed number
of epochs instead of its 40,000 iterations, and without its random resize/crop/flip/photometric
augmentation, which would need the backbone in the loop).

Metrics as mmsegmentation defines them, over the pixels whose label is not void: per class
IoU = |pred = c and label = c| / |pred = c or label = c|; mIoU = mean over the classes whose union is
not empty; pixel accuracy (``aAcc``) = correct pixels / labelled pixels; mean accuracy over classes
present in the labels. They are kept as per-image counts (intersection, label area, prediction area
per class), so they add up over images and the paired bootstrap can resample images.
"""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from fdbench.device import autocast
from fdbench.features import FrozenEncoder, to_float01
from fdbench.segmentation_data import IGNORE


class PatchMapEncoder(FrozenEncoder):
    """Frozen backbone -> float16 patch-token maps [B, D * n_last_blocks, h, w] (CPU-friendly cache)."""

    def __init__(self, backbone: nn.Module, n_last_blocks: int = 1):
        super().__init__(backbone, n_last_blocks=n_last_blocks, avgpool=False)

    @torch.no_grad()
    def forward(self, images: torch.Tensor) -> torch.Tensor:
        x = (to_float01(images.to(self.device, non_blocking=True)) - self.mean) / self.std
        patch = self.backbone.patch_embed.patch_size
        grid = (x.shape[-2] // patch[0], x.shape[-1] // patch[1])
        with autocast(self.device):
            blocks = self.backbone.forward_last_blocks(x, self.n_last_blocks)
        maps = [patch.float().transpose(1, 2).reshape(len(x), -1, *grid) for _, patch in blocks]
        return torch.cat(maps, dim=1).half()


class LinearSegHead(nn.Module):
    """BatchNorm + 1x1 convolution on a patch map; logits upsampled bilinearly to ``out_size``."""

    def __init__(self, channels: int, num_classes: int):
        super().__init__()
        self.bn = nn.BatchNorm2d(channels)
        self.conv = nn.Conv2d(channels, num_classes, kernel_size=1)
        nn.init.normal_(self.conv.weight, std=0.01)  # mmseg's decode-head initialisation
        nn.init.zeros_(self.conv.bias)

    def forward(self, maps: torch.Tensor, out_size: tuple[int, int]) -> torch.Tensor:
        logits = self.conv(self.bn(maps.float()))
        return F.interpolate(logits, size=out_size, mode="bilinear", align_corners=False)


@dataclass
class HeadConfig:
    """Training of the head (DINOv2's linear config, for ``epochs`` passes over the train maps)."""

    epochs: int = 10
    batch_size: int = 16
    lr: float = 1e-3
    weight_decay: float = 1e-4
    warmup_frac: float = 0.04  # DINOv2: 1,500 of 40,000 iterations


def lr_at(step: int, total: int, config: HeadConfig) -> float:
    """Linear warm-up from 0, then linear ("poly", power 1) decay to 0 (mmseg's schedule)."""
    warmup = max(1, math.ceil(config.warmup_frac * total))
    if step < warmup:
        return config.lr * (step + 1) / warmup
    return config.lr * max(0.0, 1.0 - (step - warmup) / max(1, total - warmup))


def train_head(
    maps: torch.Tensor, labels: torch.Tensor, num_classes: int, config: HeadConfig, *, seed: int, device, bar=None
) -> LinearSegHead:
    """Fit the head on cached maps [N,C,h,w] and labels [N,S,S] (uint8, IGNORE for void)."""
    torch.manual_seed(seed)
    head = LinearSegHead(maps.shape[1], num_classes).to(device)
    opt = torch.optim.AdamW(head.parameters(), lr=config.lr, weight_decay=config.weight_decay, betas=(0.9, 0.999))
    n = len(maps)
    per_epoch = max(1, n // config.batch_size)  # full batches only: BatchNorm never sees a batch of 1
    total = per_epoch * config.epochs
    order = torch.Generator().manual_seed(seed)
    head.train()
    step = 0
    for _ in range(config.epochs):
        perm = torch.randperm(n, generator=order)
        for b in range(per_epoch):
            idx = perm[b * config.batch_size : (b + 1) * config.batch_size] if n >= config.batch_size else perm
            x, y = maps[idx].to(device), labels[idx].to(device).long()
            for group in opt.param_groups:
                group["lr"] = lr_at(step, total, config)
            loss = F.cross_entropy(head(x, y.shape[-2:]), y, ignore_index=IGNORE)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            step += 1
        if bar is not None:
            bar.set_postfix_str(f"head loss {loss.item():.3f}")
    return head.eval()


@torch.no_grad()
def predict(head: LinearSegHead, maps: torch.Tensor, size: tuple[int, int], *, batch_size: int = 64) -> torch.Tensor:
    """Arg-max class per pixel (uint8 [N,S,S] on the CPU)."""
    device = next(head.parameters()).device
    out = [
        head(maps[i : i + batch_size].to(device), size).argmax(1).to(torch.uint8).cpu()
        for i in range(0, len(maps), batch_size)
    ]
    return torch.cat(out) if out else torch.empty(0, *size, dtype=torch.uint8)


def image_counts(pred: torch.Tensor, labels: torch.Tensor, num_classes: int) -> dict[str, np.ndarray]:
    """Per image and class over the labelled pixels: ``inter`` (pred = label = c), ``label`` (label
    = c), ``pred`` (pred = c); int64 [N, K] each."""
    n = len(labels)
    lab = labels.reshape(n, -1).long()
    prd = pred.reshape(n, -1).long()
    valid = lab != IGNORE
    offset = torch.arange(n).unsqueeze(1) * num_classes

    def count(values: torch.Tensor, mask: torch.Tensor) -> np.ndarray:
        flat = (values + offset)[mask]
        return torch.bincount(flat, minlength=n * num_classes).reshape(n, num_classes).numpy()

    return {
        "inter": count(lab, valid & (lab == prd)),
        "label": count(lab, valid),
        "pred": count(prd.clamp(max=num_classes - 1), valid),
    }


def scores(inter: np.ndarray, label: np.ndarray, pred: np.ndarray) -> dict:
    """mIoU, pixel accuracy, mean accuracy (all in %) and per-class IoU from counts summed over
    images ([K] arrays, or [R, K] for R bootstrap resamples: then each score is an [R] array)."""
    union = label + pred - inter
    with np.errstate(invalid="ignore", divide="ignore"), warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # a resample without any labelled pixel: NaN
        iou = np.where(union > 0, inter / np.where(union > 0, union, 1), np.nan)
        acc = np.where(label > 0, inter / np.where(label > 0, label, 1), np.nan)
        miou = np.nanmean(iou, axis=-1) * 100
        macc = np.nanmean(acc, axis=-1) * 100
    labelled = label.sum(-1)
    pixel_acc = np.where(labelled > 0, inter.sum(-1) / np.maximum(labelled, 1), np.nan) * 100
    return {"miou": miou, "pixel_acc": pixel_acc, "mean_acc": macc, "iou": iou * 100}
