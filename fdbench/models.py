"""Backbones: timm Vision Transformers that accept any crop size and can mask patch tokens.

``build_backbone`` is the single entry point. Every backbone is a :class:`MaskableViT`: a timm
``VisionTransformer`` built with ``dynamic_img_size=True`` (so one model takes 224, 112, 96 or 48 px
crops, its positional embeddings resampled bicubically on the fly) plus the learnable mask token
that iBOT's masked-image modelling needs and timm's ViT lacks.

Resampling the position table to another grid follows the checkpoint's own rule
(``BackboneConfig.pos_interp_offset`` / ``pos_interp_antialias``): fdbench's models and the official
DINOv2 register models resample to the target grid size with antialiased bicubic (offset 0, timm's
rule); the official DINOv2 models without registers use ``interpolate_offset=0.1`` and no
antialiasing, i.e. bicubic with a scale factor of (grid + 0.1) / native grid per axis.

Positional embeddings cover the patch grid only (``no_embed_class=True``); the class token carries
its own position. This is equivalent to DINOv2's layout (whose class-token position embedding is a
constant that folds into the class token) and keeps register tokens position-free, as in DINOv2.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields

import torch
import torch.nn.functional as F
from timm.layers import DropPath
from timm.models.vision_transformer import VisionTransformer
from torch import nn

from fdbench.errors import FdbenchError

# name -> (embed_dim, depth, num_heads). The first two are for CPU runs and tests.
ARCHS: dict[str, tuple[int, int, int]] = {
    "vit_pico": (64, 2, 2),  # unit tests: a few milliseconds per step
    "vit_nano": (192, 4, 3),  # the cpu-tiny preset: trains in minutes on 2 cores
    "vit_tiny": (192, 12, 3),
    "vit_small": (384, 12, 6),
    "vit_base": (768, 12, 12),
    "vit_large": (1024, 24, 16),
}
PATCH_SIZES = (4, 8, 14, 16)  # 4: small images (the 32 px embedded dataset)


@dataclass
class BackboneConfig:
    """Everything needed to rebuild a backbone; stored inside every checkpoint."""

    arch: str = "vit_small"
    patch_size: int = 16
    img_size: int = 224  # the size the positional-embedding table is stored at
    reg_tokens: int = 0
    drop_path_rate: float = 0.0
    # True: the same drop-path rate in every block (DINOv2's drop_path_uniform); False: timm's linear
    # ramp from 0 in the first block to the rate in the last (mean rate half the configured one)
    drop_path_uniform: bool = False
    layerscale: float | None = 1e-5  # DINOv2 default; None disables LayerScale
    mlp_ratio: float = 4.0
    # how the position table is resampled to another grid (see the module docstring): offset 0 with
    # antialiasing resamples to the target size; offset > 0 resamples by scale factor (grid + offset) /
    # native grid, as the official DINOv2 models without registers do (offset 0.1, no antialiasing)
    pos_interp_offset: float = 0.0
    pos_interp_antialias: bool = True

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict) -> "BackboneConfig":
        known = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in data.items() if k in known})

    @property
    def embed_dim(self) -> int:
        return ARCHS[self.arch][0]


def resample_pos_table(
    table: torch.Tensor, native: tuple[int, int], grid: tuple[int, int], *, offset: float = 0.0, antialias: bool = True
) -> torch.Tensor:
    """Resample a patch position table [1, h*w, D] stored at grid ``native`` to ``grid`` (rows, cols).

    ``offset == 0``: bicubic to the target size (timm, DINOv2 register models). ``offset > 0``: bicubic
    by scale factor (grid + offset) / native per axis, whose output size floors to the grid (DINOv2
    without registers; the offset keeps the floor from dropping a row to float error).
    """
    if tuple(grid) == tuple(native):
        return table
    dim = table.shape[-1]
    x = table.float().reshape(1, native[0], native[1], dim).permute(0, 3, 1, 2)
    if offset:
        scale = ((grid[0] + offset) / native[0], (grid[1] + offset) / native[1])
        x = F.interpolate(x, scale_factor=scale, mode="bicubic", antialias=antialias)
    else:
        x = F.interpolate(x, size=tuple(grid), mode="bicubic", antialias=antialias)
    if tuple(x.shape[-2:]) != tuple(grid):
        raise FdbenchError(f"position table resampled to {tuple(x.shape[-2:])} instead of {tuple(grid)}")
    return x.permute(0, 2, 3, 1).reshape(1, -1, dim).to(table.dtype)


class MaskableViT(VisionTransformer):
    """A timm ViT whose forward takes optional boolean patch masks and returns (cls, patch tokens)."""

    def __init__(self, *, pos_interp_offset: float = 0.0, pos_interp_antialias: bool = True, **kwargs):
        super().__init__(**kwargs)
        self.mask_token = nn.Parameter(torch.zeros(1, self.embed_dim))
        nn.init.normal_(self.mask_token, std=0.02)
        self.pos_interp_offset = pos_interp_offset
        self.pos_interp_antialias = pos_interp_antialias

    def _pos_embed(self, x: torch.Tensor) -> torch.Tensor:
        # replaces timm's dynamic resampling (always size-based and antialiased) with the
        # checkpoint's own rule; the layout is timm's no_embed_class one: add, then prepend prefix tokens
        b, h, w, c = x.shape
        pos = resample_pos_table(
            self.pos_embed,
            self.patch_embed.grid_size,
            (h, w),
            offset=self.pos_interp_offset,
            antialias=self.pos_interp_antialias,
        )
        x = x.reshape(b, h * w, c) + pos
        prefix = [t.expand(b, -1, -1) for t in (self.cls_token, self.reg_token) if t is not None]
        return self.pos_drop(torch.cat(prefix + [x], dim=1))

    def _embed(self, x: torch.Tensor, masks: torch.Tensor | None) -> torch.Tensor:
        x = self.patch_embed(x)  # [B, h, w, D] because dynamic_img_size=True
        if masks is not None:
            masks = masks.reshape(x.shape[:3]).to(torch.bool)
            x = torch.where(masks.unsqueeze(-1), self.mask_token.to(x.dtype), x)
        x = self._pos_embed(x)
        x = self.patch_drop(x)
        return self.norm_pre(x)

    def forward(self, x: torch.Tensor, masks: torch.Tensor | None = None):
        """Images [B,3,H,W] (H, W multiples of the patch size) and optional masks [B,h,w] or [B,h*w].

        Returns ``(cls [B,D], patch_tokens [B,h*w,D])`` after the final norm.
        """
        x = self.blocks(self._embed(x, masks))
        x = self.norm(x)
        return x[:, 0], x[:, self.num_prefix_tokens :]

    def forward_last_blocks(self, x: torch.Tensor, n: int = 1):
        """(cls, patch) of each of the last ``n`` blocks, each through the final norm (DINOv2 eval):
        timm's ``forward_intermediates`` (which embeds through this class's ``_pos_embed``)."""
        blocks = self.forward_intermediates(
            x,
            indices=min(n, len(self.blocks)),
            norm=True,
            output_fmt="NLC",
            intermediates_only=True,
            return_prefix_tokens=True,
        )
        return [(prefix[:, 0], patch) for patch, prefix in blocks]


def build_backbone(
    arch: str | BackboneConfig = "vit_small",
    img_size: int = 224,
    patch_size: int = 16,
    *,
    reg_tokens: int = 0,
    drop_path_rate: float = 0.0,
    drop_path_uniform: bool = False,
    layerscale: float | None = 1e-5,
    mlp_ratio: float = 4.0,
) -> MaskableViT:
    """Build a backbone by name (see ``ARCHS``) or from a :class:`BackboneConfig`."""
    cfg = (
        arch
        if isinstance(arch, BackboneConfig)
        else BackboneConfig(
            arch=arch,
            patch_size=patch_size,
            img_size=img_size,
            reg_tokens=reg_tokens,
            drop_path_rate=drop_path_rate,
            drop_path_uniform=drop_path_uniform,
            layerscale=layerscale,
            mlp_ratio=mlp_ratio,
        )
    )
    if cfg.arch not in ARCHS:
        raise FdbenchError(f"unknown architecture {cfg.arch!r}: choose one of {', '.join(ARCHS)}")
    if cfg.patch_size not in PATCH_SIZES:
        raise FdbenchError(f"unsupported patch size {cfg.patch_size}: choose one of {PATCH_SIZES}")
    if cfg.img_size % cfg.patch_size:
        raise FdbenchError(f"image size {cfg.img_size} is not a multiple of the patch size {cfg.patch_size}")
    dim, depth, heads = ARCHS[cfg.arch]
    model = MaskableViT(
        img_size=cfg.img_size,
        patch_size=cfg.patch_size,
        embed_dim=dim,
        depth=depth,
        num_heads=heads,
        mlp_ratio=cfg.mlp_ratio,
        num_classes=0,
        global_pool="",
        reg_tokens=cfg.reg_tokens,
        no_embed_class=True,
        dynamic_img_size=True,
        init_values=cfg.layerscale,
        drop_path_rate=cfg.drop_path_rate,
        pos_interp_offset=cfg.pos_interp_offset,
        pos_interp_antialias=cfg.pos_interp_antialias,
    )
    if cfg.drop_path_uniform and cfg.drop_path_rate > 0:
        # timm only ramps; DINOv2's uniform rule puts the full rate in every block
        for block in model.blocks:
            block.drop_path1 = DropPath(cfg.drop_path_rate)
            block.drop_path2 = DropPath(cfg.drop_path_rate)
    model.config = cfg
    return model
