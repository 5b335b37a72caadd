"""The FastDINOv2 / DINOv2 pretraining engine.

Building blocks (each a small module with one job): ``losses`` (DINO, iBOT, KoLeo), ``heads`` (DINO
projection head), ``masking`` (BEiT block-wise masks), ``schedules`` (cosine schedules, parameter
groups with layer-wise lr decay), ``augment`` (multi-crop + Gaussian noise patching) and
``curriculum`` (training stages as data). For speed: ``decode`` + ``gpu_augment`` (the multi-crop
batched on the device), ``pipeline`` (the cpu and gpu data pipelines behind one per-stage interface)
and ``fast_step`` (compiled backbones, chunked cross-entropies). The engine (model wrapper, loop,
costs, CLI glue) sits on top of them; ``bench`` times the engine's own step and pipelines.

The public pieces are importable from the package (``from pretrain import DINOLoss, DINOHead,
GaussianNoisePatch, build_curriculum, train``), each loaded on first use: ``import pretrain.masking``
must not pull in the engine, and ``fdbench``'s core never imports this package.
"""

from __future__ import annotations

from fdbench.lazy import lazy_exports

_HOMES = {
    "Center": "center",
    "DINOLoss": "losses",
    "iBOTPatchLoss": "losses",
    "KoLeoLoss": "losses",
    "sinkhorn_knopp": "losses",
    "soft_cross_entropy": "losses",
    "DINOHead": "heads",
    "GaussianNoisePatch": "augment",
    "MultiCropAugmentation": "augment",
    "Curriculum": "curriculum",
    "build_curriculum": "curriculum",
    "make_masks": "masking",
    "cosine_schedule": "schedules",
    "MetaArch": "meta_arch",
    "PretrainConfig": "config",
    "build_config": "config",
    "preset": "config",
    "KnnMonitor": "monitor",
    "train": "engine",
    "Trainer": "engine",
    "train_step": "step",
}
__all__ = sorted(_HOMES)

__getattr__ = lazy_exports(__name__, _HOMES)
