"""fdbench: robustness benchmarking with a bundled FastDINOv2 pretraining engine.

Kept deliberately light: importing ``fdbench`` (or ``fdbench.models``) pulls in no engine and no CLI.
The core's public pieces are importable from the package (``from fdbench import build_backbone,
load_backbone``), each loaded on first use.
"""

from __future__ import annotations

from fdbench.lazy import lazy_exports

__version__ = "0.1.0"

_HOMES = {
    "FdbenchError": "errors",
    "BackboneConfig": "models",
    "MaskableViT": "models",
    "build_backbone": "models",
    "LoadedBackbone": "checkpoint",
    "load_backbone": "checkpoint",
    "read_checkpoint": "checkpoint",
    "save_checkpoint": "checkpoint",
    "FrozenEncoder": "features",
    "extract_features": "features",
    "open_dataset": "data",
    "resolve_device": "device",
    "load_plain_pickle": "safe_pickle",
    "make_retrieval_dataset": "synthetic_retrieval",
    "open_retrieval_set": "retrieval_data",
    "knn_votes": "scoring",
    "topk_accuracy": "scoring",
}
__all__ = ["__version__", *sorted(_HOMES)]

__getattr__ = lazy_exports(__name__, _HOMES)
