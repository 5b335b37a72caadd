"""The reference backend: ``imagecorruptions.corrupt`` (package ``imagecorruptions-imaug``) on one
numpy uint8 [H, W, 3] image at a time, for fidelity checks and exact published ImageNet-C behaviour.

Seeding: before each image, numpy's global RNG is seeded with that image's seed, and the corruptions
that take their own ``seed`` argument (glass blur, impulse noise) get it too, so a torch generator
seed makes the reference backend deterministic as well.
"""

from __future__ import annotations

import warnings

import numpy as np
import torch

from fdbench.errors import FdbenchError

SEEDED_KWARG = ("glass_blur", "impulse_noise")


def reference_module():
    """Import ``imagecorruptions`` or raise a clear error naming the package to install."""
    try:
        import imagecorruptions
    except Exception as err:  # noqa: BLE001 - any import failure means the same fix
        raise FdbenchError(
            f"the reference backend needs the 'imagecorruptions-imaug' package "
            f"(pip install imagecorruptions-imaug): {err}"
        ) from None
    return imagecorruptions


def corrupt_one(image: np.ndarray, name: str, severity: int, seed: int) -> np.ndarray:
    """Reference corruption of one uint8 [H, W, 3] array, numpy's RNG seeded with ``seed``."""
    ic = reference_module()
    np.random.seed(seed % (2**32))
    kwargs = {"seed": seed} if name in SEEDED_KWARG else {}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        out = ic.corrupt(np.ascontiguousarray(image), severity=severity, corruption_name=name, **kwargs)
    return np.asarray(out, dtype=np.uint8)


def corrupt_reference(images: torch.Tensor, name: str, severity: int, seeds: list[int]) -> torch.Tensor:
    """Reference corruption of a uint8 [N, 3, H, W] tensor (any device), returned on that device."""
    arr = images.detach().cpu().permute(0, 2, 3, 1).numpy()
    out = np.stack([corrupt_one(img, name, severity, s) for img, s in zip(arr, seeds)])
    return torch.from_numpy(out).permute(0, 3, 1, 2).contiguous().to(images.device)
