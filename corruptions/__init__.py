"""ImageNet-C corruptions on tensors: batched on CPU or CUDA, checked against the reference package.

    from corruptions import corrupt, names
    y = corrupt(images, "glass_blur", 3, generator=0)   # uint8 or float [N, 3, H, W], any device

Self-contained: depends on torch, torchvision, numpy, the reference ``imagecorruptions`` package
(for the frost pictures and the reference backend) and ``fdbench``'s core errors/io helpers only.
"""

from corruptions.params import TABLES
from corruptions.registry import ALL, BACKENDS, COMMON, EXTRA, GROUPS, SEVERITIES, corrupt, names

__all__ = ["corrupt", "names", "GROUPS", "COMMON", "EXTRA", "ALL", "BACKENDS", "SEVERITIES", "TABLES"]
