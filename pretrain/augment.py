"""CPU augmentations: DINOv2's multi-crop, FastDINOv2's Gaussian noise patching, and the batch collate.

Multi-crop (DINOv2 ``DataAugmentationDINO``), per image:

- geometry: bicubic ``RandomResizedCrop`` (antialiased: this is where low-resolution stages
  downsample) and horizontal flip (p 0.5), drawn independently for every crop;
- colour: ``ColorJitter(0.4, 0.4, 0.2, 0.1)`` with p 0.8, then grayscale with p 0.2;
- ``ToTensor``; Gaussian blur (kernel 9, sigma ~ U(blur_sigma), DINOv2: 0.1-2) with p 1.0 / 0.1 / 0.5 for global
  crop 1 / global crop 2 / local crops, and solarize (threshold 128 of 255) with p 0.2 on global
  crop 2 only;
- ImageNet mean/std normalisation.

DINOv2's reference code passes ``1 - p`` to ``RandomApply`` and so blurs with p 0.0 / 0.9 / 0.5;
the released models were trained that way. ``inverted_blur=True`` reproduces it.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from PIL import Image
from torchvision import transforms as T
from torchvision.transforms import functional as TF

from fdbench.errors import FdbenchError
from fdbench.features import IMAGENET_MEAN, IMAGENET_STD
from pretrain.batch import CropBatch
from pretrain.masking import make_masks, masked_token_indices

__all__ = ["GaussianNoisePatch", "RandomGaussianBlur", "MultiCropAugmentation", "collate_multicrop"]


class GaussianNoisePatch:
    """FastDINOv2's Gaussian noise patching, a standalone transform.

    With probability ``p``, per image: a square patch of side ``s ~ U{1, ..., min(H, W)}`` at a
    uniformly random position (top ``~ U{0..H-s}``, left ``~ U{0..W-s}``) gets
    ``x <- clamp(x + n, 0, 1)``, ``n ~ N(0, sigma^2)`` i.i.d. per pixel and channel, with
    ``sigma ~ U(0, max_sigma)`` drawn per image. Pixels outside the patch are untouched.

    Accepts a PIL image (returns PIL; noise added on ``[0, 1]`` pixels, then rounded back to 8
    bits), a float tensor in ``[0, 1]`` of shape ``[3, H, W]`` or ``[N, 3, H, W]`` (each image
    its own patch), or a uint8 tensor (treated as ``/255``, returned as uint8). Randomness comes
    from ``generator`` (call argument, else the constructor's, else torch's global RNG).
    """

    def __init__(self, max_sigma: float = 0.5, p: float = 1.0, generator: torch.Generator | None = None):
        if max_sigma < 0:
            raise FdbenchError(f"noise max sigma must be >= 0, got {max_sigma}")
        if not 0.0 <= p <= 1.0:
            raise FdbenchError(f"noise patching probability must be in [0, 1], got {p}")
        self.max_sigma, self.p, self.generator = float(max_sigma), float(p), generator

    def __repr__(self) -> str:
        return f"GaussianNoisePatch(max_sigma={self.max_sigma}, p={self.p})"

    def draw(self, height: int, width: int, generator: torch.Generator | None = None):
        """One image's draw: ``None`` (not applied) or ``(side, top, left, sigma)``."""
        if self.p < 1.0 and torch.rand((), generator=generator).item() >= self.p:
            return None
        side = int(torch.randint(1, min(height, width) + 1, (), generator=generator))
        top = int(torch.randint(0, height - side + 1, (), generator=generator))
        left = int(torch.randint(0, width - side + 1, (), generator=generator))
        sigma = torch.rand((), generator=generator).item() * self.max_sigma
        return side, top, left, sigma

    def apply_tensor(self, x: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        """Float ``[..., C, H, W]`` in [0, 1] -> a new tensor with one noise patch per image."""
        out = x.clone()
        flat = out.reshape(-1, *x.shape[-3:])
        for image in flat:
            params = self.draw(image.shape[-2], image.shape[-1], generator)
            if params is None:
                continue
            side, top, left, sigma = params
            region = image[:, top : top + side, left : left + side]
            noise = torch.randn(region.shape, generator=generator, dtype=torch.float32).to(region)
            region.copy_((region + noise * sigma).clamp_(0.0, 1.0))
        return out

    def __call__(self, img, generator: torch.Generator | None = None):
        generator = generator if generator is not None else self.generator
        if isinstance(img, Image.Image):
            arr = torch.from_numpy(np.asarray(img.convert("RGB"), dtype=np.float32) / 255.0).permute(2, 0, 1)
            noisy = self.apply_tensor(arr, generator)
            return Image.fromarray((noisy.permute(1, 2, 0).numpy() * 255.0).round().astype(np.uint8), mode="RGB")
        if isinstance(img, torch.Tensor):
            if img.dim() not in (3, 4):
                raise FdbenchError(f"noise patching needs [3,H,W] or [N,3,H,W] images, got shape {tuple(img.shape)}")
            if img.dtype == torch.uint8:
                noisy = self.apply_tensor(img.float() / 255.0, generator)
                return (noisy * 255.0).round().to(torch.uint8)
            if not img.is_floating_point():
                raise FdbenchError(f"noise patching needs float [0,1] or uint8 images, got {img.dtype}")
            return self.apply_tensor(img, generator)
        raise FdbenchError(f"noise patching needs a PIL image or a tensor, got {type(img).__name__}")


def _gaussian_blur(img: torch.Tensor, sigma: float) -> torch.Tensor:
    return TF.gaussian_blur(img, kernel_size=9, sigma=sigma)


class RandomGaussianBlur:
    """With probability ``p``: Gaussian blur, kernel 9, ``sigma ~ U(sigma_min, sigma_max)`` (torch RNG)."""

    def __init__(self, p: float, sigma_min: float = 0.1, sigma_max: float = 2.0):
        self.p, self.sigma_min, self.sigma_max = float(p), sigma_min, sigma_max

    def __repr__(self) -> str:
        return f"RandomGaussianBlur(p={self.p}, sigma=({self.sigma_min}, {self.sigma_max}))"

    def __call__(self, img):
        if torch.rand(()).item() >= self.p:
            return img
        sigma = self.sigma_min + (self.sigma_max - self.sigma_min) * torch.rand(()).item()
        return self._blur(img, sigma)

    def _blur(self, img, sigma: float):
        return _gaussian_blur(img, sigma)


def _check_sigma(sigma) -> tuple[float, float]:
    lo, hi = float(sigma[0]), float(sigma[1])
    if not 0.0 < lo <= hi:
        raise FdbenchError(f"blur sigma range must satisfy 0 < min <= max, got ({lo}, {hi})")
    return lo, hi


def _check_scale(name: str, scale) -> tuple[float, float]:
    lo, hi = float(scale[0]), float(scale[1])
    if not 0.0 < lo <= hi <= 1.0:
        raise FdbenchError(f"{name} must satisfy 0 < min <= max <= 1, got ({lo}, {hi})")
    return lo, hi


class MultiCropAugmentation:
    """PIL image -> ``{"global_crops": [2 x float 3xSxS], "local_crops": [n_local x float 3xsxs]}``.

    See the module docstring for the recipe. ``blur_probs`` are the intended probabilities for
    (global 1, global 2, local); ``inverted_blur=True`` uses ``1 - p`` instead, as the reference
    code does by mistake. ``blur_probs_effective`` holds what is applied. ``noise_patch`` (if set)
    is applied to the whole image before any crop, so every crop of an image can carry the patch.
    """

    def __init__(
        self,
        global_size: int = 224,
        local_size: int = 96,
        n_local: int = 8,
        global_scale: tuple[float, float] = (0.32, 1.0),
        local_scale: tuple[float, float] = (0.05, 0.32),
        blur_probs: tuple[float, float, float] = (1.0, 0.1, 0.5),
        inverted_blur: bool = False,
        noise_patch: GaussianNoisePatch | None = None,
        blur_sigma: tuple[float, float] = (0.1, 2.0),
    ):
        if global_size < 1 or local_size < 1:
            raise FdbenchError(f"crop sizes must be positive, got global {global_size}, local {local_size}")
        if n_local < 0:
            raise FdbenchError(f"number of local crops must be >= 0, got {n_local}")
        if len(blur_probs) != 3 or not all(0.0 <= p <= 1.0 for p in blur_probs):
            raise FdbenchError(f"blur probabilities must be 3 values in [0, 1], got {tuple(blur_probs)}")
        self.global_size, self.local_size, self.n_local = int(global_size), int(local_size), int(n_local)
        self.global_scale = _check_scale("global crop scale", global_scale)
        self.local_scale = _check_scale("local crop scale", local_scale)
        self.blur_probs = tuple(float(p) for p in blur_probs)
        self.inverted_blur = bool(inverted_blur)
        self.blur_probs_effective = tuple(1.0 - p for p in self.blur_probs) if inverted_blur else self.blur_probs
        self.noise_patch = noise_patch
        self.blur_sigma = _check_sigma(blur_sigma)

        bicubic = T.InterpolationMode.BICUBIC
        self.global_geometry = T.Compose(
            [
                T.RandomResizedCrop(self.global_size, scale=self.global_scale, interpolation=bicubic, antialias=True),
                T.RandomHorizontalFlip(p=0.5),
            ]
        )
        self.local_geometry = T.Compose(
            [
                T.RandomResizedCrop(self.local_size, scale=self.local_scale, interpolation=bicubic, antialias=True),
                T.RandomHorizontalFlip(p=0.5),
            ]
        )
        color = T.Compose(
            [
                T.RandomApply([T.ColorJitter(brightness=0.4, contrast=0.4, saturation=0.2, hue=0.1)], p=0.8),
                T.RandomGrayscale(p=0.2),
            ]
        )
        # blur and solarize run on the float tensor after ToTensor: the same operations as on the
        # 8-bit PIL image (solarize's 128 becomes 128/255) without PIL <-> tensor round trips,
        # which cost more than the blur itself on small crops
        to_tensor, normalize = T.ToTensor(), T.Normalize(IMAGENET_MEAN, IMAGENET_STD)
        self.blur_global1 = RandomGaussianBlur(self.blur_probs_effective[0], *self.blur_sigma)
        self.blur_global2 = RandomGaussianBlur(self.blur_probs_effective[1], *self.blur_sigma)
        self.blur_local = RandomGaussianBlur(self.blur_probs_effective[2], *self.blur_sigma)
        self.global1 = T.Compose([color, to_tensor, self.blur_global1, normalize])
        self.global2 = T.Compose(
            [color, to_tensor, self.blur_global2, T.RandomSolarize(threshold=128 / 255, p=0.2), normalize]
        )
        self.local = T.Compose([color, to_tensor, self.blur_local, normalize])

    def __repr__(self) -> str:
        return (
            f"MultiCropAugmentation(global={self.global_size}@{self.global_scale}, "
            f"local={self.n_local}x{self.local_size}@{self.local_scale}, blur={self.blur_probs_effective}@{self.blur_sigma}, "
            f"noise_patch={self.noise_patch})"
        )

    def __call__(self, image) -> dict[str, list[torch.Tensor]]:
        if isinstance(image, torch.Tensor):
            image = TF.to_pil_image(image)
        elif not isinstance(image, Image.Image):
            raise FdbenchError(f"multi-crop needs a PIL image or an image tensor, got {type(image).__name__}")
        image = image.convert("RGB")
        if self.noise_patch is not None:
            image = self.noise_patch(image)
        return {
            "global_crops": [self.global1(self.global_geometry(image)), self.global2(self.global_geometry(image))],
            "local_crops": [self.local(self.local_geometry(image)) for _ in range(self.n_local)],
        }


def collate_multicrop(
    samples: list[tuple[dict[str, list[torch.Tensor]], Any]],
    *,
    patch_size: int,
    mask_probability: float = 0.5,
    mask_ratio_range: tuple[float, float] = (0.1, 0.5),
    generator: torch.Generator | None = None,
) -> CropBatch:
    """Stack ``(crops, label)`` samples crop-major and draw the iBOT masks for the global crops.

    Returns a :class:`~pretrain.batch.CropBatch`: ``global_crops [G*B,3,S,S]`` (rows ``c*B:(c+1)*B`` =
    crop ``c`` of every image), ``local_crops [L*B,3,s,s]`` or ``None`` without local crops, ``masks bool [G*B, (S/p)^2]`` (see
    :func:`pretrain.masking.make_masks`), ``mask_indices long [M]`` and ``mask_weights float [M]``
    (the masked tokens' flat indices and iBOT weights, :func:`pretrain.masking.masked_token_indices`,
    computed here on the CPU so the training step needs no host sync to gather them) and ``labels [B]``.
    """
    if not samples:
        raise ValueError("cannot collate an empty batch")
    n_global = len(samples[0][0]["global_crops"])
    n_local = len(samples[0][0]["local_crops"])
    global_crops = torch.stack([crops["global_crops"][c] for c in range(n_global) for crops, _ in samples])
    local_crops = (
        torch.stack([crops["local_crops"][c] for c in range(n_local) for crops, _ in samples]) if n_local else None
    )
    height, width = global_crops.shape[-2:]
    if height % patch_size or width % patch_size:
        raise FdbenchError(f"global crops of {height}x{width} px are not a multiple of the patch size {patch_size}")
    masks = make_masks(
        len(global_crops), (height // patch_size, width // patch_size), mask_probability, mask_ratio_range, generator
    )
    mask_indices, mask_weights = masked_token_indices(masks)
    labels = torch.as_tensor([int(label) for _, label in samples], dtype=torch.long)
    return CropBatch(global_crops, local_crops, masks, labels, mask_indices, mask_weights)
