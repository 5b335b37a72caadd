"""Batched on-device DINOv2 multi-crop: every augmentation of a whole batch in a few tensor ops.

CPU workers only decode images into uint8 tensors (:mod:`pretrain.decode`); this module turns a padded
uint8 batch (:class:`pretrain.batch.DecodedBatch`: ``images [B,3,H,W]`` + true sizes ``sizes [B,2]
(h, w)``) into the same :class:`pretrain.batch.CropBatch` as :func:`pretrain.augment.collate_multicrop`:
``global_crops [2B,3,S,S]``, ``local_crops [L*B,3,s,s]`` (crop-major: rows ``[c*B:(c+1)*B]`` are crop
``c``), ``masks [2B,(S/p)^2]`` and ``labels [B]``. It runs on any device, so the same code is tested on
CPU tensors. The per-crop image operations live in :mod:`pretrain.gpu_ops`.

Semantics follow DINOv2's CPU pipeline (torchvision transforms on PIL images), per crop:

1. noise patching (optional, stage 2 of FastDINOv2), once per image on the whole image before any
   crop: a square of side ``U{1..min(h,w)}`` at a uniform position gets ``x + N(0, sigma^2)``,
   ``sigma ~ U(0, max_sigma)``, clamped to [0, 1];
2. ``RandomResizedCrop``: torchvision's box sampler (10 tries of area ``U(scale) * h * w`` and
   log-uniform aspect ratio in [3/4, 4/3], else the central fallback), then PIL's bicubic
   antialiased resampling of the box (separable; kernel ``a = -0.5`` widened by the downscale factor),
   written as two batched matrix products ``Wy @ crop @ Wx^T`` so every crop has its own box;
3. horizontal flip p=0.5 (folded into ``Wx``);
4. ``ColorJitter(0.4, 0.4, 0.2, 0.1)`` with p=0.8, the four ops in a random order per crop:
   brightness ``f*x``, contrast ``f*x + (1-f)*mean(gray(x))``, saturation ``f*x + (1-f)*gray(x)``
   (each clamped to [0, 1]) and hue ``H <- (H + f) mod 1`` in HSV; ``gray = .2989 R + .587 G + .114 B``;
5. grayscale p=0.2;
6. Gaussian blur, kernel 9, ``sigma ~ U(blur_sigma)`` (DINOv2: 0.1-2), reflect padding, p = 1.0 / 0.1 / 0.5 for global-1 /
   global-2 / local crops (``inverted_blur``: ``1 - p``, as DINOv2's released code does);
7. solarise (``x >= 128/255 -> 1 - x``) p=0.2 on global-2 only;
8. normalise with the ImageNet mean and std.

All random parameters of a batch are drawn up front by :meth:`GpuMultiCrop.sample_params` (on the
device, from an optional ``torch.Generator``) and returned as :class:`AugParams`; :meth:`apply`
is deterministic given them. Tests use that split to compare distributions with the CPU pipeline.
No step reads a value back to the host, so a batch queues without synchronising.
"""

from __future__ import annotations

from dataclasses import dataclass, fields

import torch

from fdbench.errors import FdbenchError
from fdbench.features import IMAGENET_MEAN, IMAGENET_STD
from pretrain.batch import CropBatch, DecodedBatch
from pretrain.gpu_ops import color_jitter, gaussian_blur, gray_of, resample_matrix, sample_rrc_boxes
from pretrain.masking import make_masks, masked_token_indices

BLUR_SIGMA = (0.1, 2.0)
SOLARIZE_THRESHOLD = 128.0 / 255.0


@dataclass
class AugParams:
    """Every random choice for one batch. Per-image fields have B rows; per-crop fields have
    ``(2 + n_local) * B`` rows in crop-major order (global-1, global-2, local-1, ...)."""

    # per image: noise patch
    noise_apply: torch.Tensor  # bool [B]
    noise_side: torch.Tensor  # long [B]  side in pixels of the original image
    noise_top: torch.Tensor  # long [B]
    noise_left: torch.Tensor  # long [B]
    noise_sigma: torch.Tensor  # float [B]
    # per crop: geometry (boxes in pixels of the original image, torchvision's (i, j, h, w))
    top: torch.Tensor  # long [N]
    left: torch.Tensor  # long [N]
    height: torch.Tensor  # long [N]
    width: torch.Tensor  # long [N]
    flip: torch.Tensor  # bool [N]
    # per crop: photometric
    jitter_apply: torch.Tensor  # bool [N]
    jitter_order: torch.Tensor  # long [N,4]  a permutation of (0 brightness, 1 contrast, 2 saturation, 3 hue)
    jitter_factors: torch.Tensor  # float [N,4] (brightness, contrast, saturation, hue) factors
    gray: torch.Tensor  # bool [N]
    blur_apply: torch.Tensor  # bool [N]
    blur_sigma: torch.Tensor  # float [N]
    solarize: torch.Tensor  # bool [N] (only ever True on global-2 rows)

    def to(self, device) -> "AugParams":
        return AugParams(**{f.name: getattr(self, f.name).to(device) for f in fields(self)})


class GpuMultiCrop:
    """DINOv2 multi-crop (+ FastDINOv2 noise patching) for a whole padded uint8 batch on its device.

    The arguments mirror :class:`pretrain.augment.MultiCropAugmentation`; ``patch_size`` and the mask
    settings mirror :func:`pretrain.augment.collate_multicrop`. ``noise_patching`` enables the noise
    patch with ``noise_max_sigma`` and probability ``noise_p``. ``resample_dtype`` is the dtype of the
    resampling matrix products: None = float16 on CUDA (tensor cores; 11-bit mantissa is ample for
    8-bit pixels, accumulation is fp32) and float32 elsewhere.
    """

    def __init__(
        self,
        global_size: int = 224,
        local_size: int = 96,
        n_local: int = 8,
        global_scale=(0.32, 1.0),
        local_scale=(0.05, 0.32),
        blur_probs=(1.0, 0.1, 0.5),
        inverted_blur: bool = False,
        blur_sigma=BLUR_SIGMA,
        noise_patching: bool = False,
        noise_max_sigma: float = 0.5,
        noise_p: float = 1.0,
        patch_size: int = 16,
        mask_probability: float = 0.5,
        mask_ratio_range=(0.1, 0.5),
        jitter=(0.4, 0.4, 0.2, 0.1),
        jitter_p: float = 0.8,
        gray_p: float = 0.2,
        solarize_p: float = 0.2,
        flip_p: float = 0.5,
        mean=IMAGENET_MEAN,
        std=IMAGENET_STD,
        resample_dtype: torch.dtype | None = None,
    ):
        if global_size % patch_size:
            raise FdbenchError(f"global crop size {global_size} is not a multiple of the patch size {patch_size}")
        if local_size % patch_size and n_local:
            raise FdbenchError(f"local crop size {local_size} is not a multiple of the patch size {patch_size}")
        if n_local < 0:
            raise FdbenchError(f"n_local must be >= 0, got {n_local}")
        for name, (lo, hi) in (("global_scale", global_scale), ("local_scale", local_scale)):
            if not 0 < lo <= hi <= 1:
                raise FdbenchError(f"{name} must satisfy 0 < min <= max <= 1, got ({lo}, {hi})")
        self.global_size, self.local_size, self.n_local = int(global_size), int(local_size), int(n_local)
        self.global_scale, self.local_scale = tuple(global_scale), tuple(local_scale)
        probs = tuple(float(p) for p in blur_probs)
        self.blur_probs = tuple(1.0 - p for p in probs) if inverted_blur else probs
        if not 0.0 < float(blur_sigma[0]) <= float(blur_sigma[1]):
            raise FdbenchError(f"blur sigma range must satisfy 0 < min <= max, got {tuple(blur_sigma)}")
        self.blur_sigma = (float(blur_sigma[0]), float(blur_sigma[1]))
        self.noise_patching, self.noise_max_sigma, self.noise_p = (
            bool(noise_patching),
            float(noise_max_sigma),
            float(noise_p),
        )
        self.patch_size = int(patch_size)
        self.mask_probability, self.mask_ratio_range = float(mask_probability), tuple(mask_ratio_range)
        b, c, s, h = jitter
        self.jitter_ranges = ((1 - b, 1 + b), (1 - c, 1 + c), (1 - s, 1 + s), (-h, h))
        self.jitter_p, self.gray_p, self.solarize_p, self.flip_p = jitter_p, gray_p, solarize_p, flip_p
        self.mean, self.std = tuple(mean), tuple(std)
        self.resample_dtype = resample_dtype
        self._constants: dict = {}

    @classmethod
    def from_stage(cls, stage, patch_size: int, **kwargs) -> "GpuMultiCrop":
        """Build from a :class:`pretrain.curriculum.Stage` (sizes already multiples of the patch)."""
        return cls(
            global_size=stage.global_size,
            local_size=stage.local_size,
            n_local=stage.n_local,
            global_scale=tuple(stage.global_scale),
            local_scale=tuple(stage.local_scale),
            noise_patching=stage.noise_patching,
            noise_max_sigma=stage.noise_max_sigma,
            patch_size=patch_size,
            **kwargs,
        )

    @property
    def n_crops(self) -> int:
        return 2 + self.n_local

    # ------------------------------------------------------------------ parameters
    def sample_params(self, sizes: torch.Tensor, generator: torch.Generator | None = None) -> AugParams:
        """Draw every random choice for a batch whose true image sizes are ``sizes [B,2] (h, w)``."""
        device = sizes.device
        n_img, n_crop = sizes.shape[0], self.n_crops
        n = n_img * n_crop

        def rand(*shape):
            return torch.rand(*shape, generator=generator, device=device)

        h_img = sizes[:, 0].long()
        w_img = sizes[:, 1].long()
        # noise patch, per image: side ~ U{1..min(h,w)}, top ~ U{0..h-side}, left ~ U{0..w-side}
        short = torch.minimum(h_img, w_img)
        side = 1 + (rand(n_img) * short).long().clamp_max(short - 1)
        top_n = (rand(n_img) * (h_img - side + 1)).long().clamp_max(h_img - side)
        left_n = (rand(n_img) * (w_img - side + 1)).long().clamp_max(w_img - side)
        sigma_n = rand(n_img) * self.noise_max_sigma
        noise_apply = (rand(n_img) < self.noise_p) & self.noise_patching

        # crops: crop-major, so image index of row r is r % B
        h_rep = h_img.repeat(n_crop)
        w_rep = w_img.repeat(n_crop)
        # per-row constants built on the device from Python scalars: a torch.tensor(list, device=cuda)
        # would be a blocking copy that waits for the queued training step
        row = torch.arange(n, device=device)
        is_global = row < 2 * n_img
        scale = torch.stack(
            [
                torch.where(is_global, self.global_scale[0], self.local_scale[0]),
                torch.where(is_global, self.global_scale[1], self.local_scale[1]),
            ],
            dim=1,
        ).float()
        top, left, height, width = sample_rrc_boxes(h_rep, w_rep, scale, rand)
        flip = rand(n) < self.flip_p

        jitter_apply = rand(n) < self.jitter_p
        order = torch.argsort(rand(n, 4), dim=1)  # a uniform random permutation per crop
        u = rand(n, 4)
        factors = torch.stack([lo + (hi - lo) * u[:, i] for i, (lo, hi) in enumerate(self.jitter_ranges)], dim=1)
        gray = rand(n) < self.gray_p
        blur_p = torch.where(
            row < n_img, self.blur_probs[0], torch.where(is_global, self.blur_probs[1], self.blur_probs[2])
        )
        blur_apply = rand(n) < blur_p
        blur_sigma = self.blur_sigma[0] + (self.blur_sigma[1] - self.blur_sigma[0]) * rand(n)
        is_global2 = (row >= n_img) & is_global
        solarize = (rand(n) < self.solarize_p) & is_global2
        return AugParams(
            noise_apply,
            side,
            top_n,
            left_n,
            sigma_n,
            top,
            left,
            height,
            width,
            flip,
            jitter_apply,
            order,
            factors,
            gray,
            blur_apply,
            blur_sigma,
            solarize,
        )

    # ------------------------------------------------------------------ application
    def apply(
        self, images: torch.Tensor, sizes: torch.Tensor, params: AugParams, generator: torch.Generator | None = None
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Crops of a padded uint8 batch ``images [B,3,H,W]`` -> ``(global [2B,3,S,S], local [L*B,3,s,s] | None)``.

        ``generator`` only feeds the Gaussian noise values of the noise patch.
        """
        if images.dtype != torch.uint8 or images.dim() != 4 or images.shape[1] != 3:
            raise FdbenchError(f"expected a uint8 batch [B,3,H,W], got {tuple(images.shape)} {images.dtype}")
        device = images.device
        rdtype = self.resample_dtype or (torch.float16 if device.type == "cuda" else torch.float32)
        n_img, _, canvas_h, canvas_w = images.shape
        x = images.to(rdtype).div_(255.0)
        if self.noise_patching:
            x = _noise_patch(x, params, generator)

        # horizontal pass: one matmul per image for all its crops: [B,3H,W] @ [B,W,sum S]. The
        # matrices are built per crop kind (2 calls, not one per crop: fewer small kernels)
        wx = torch.cat(
            [
                self._group_matrix(params, first, count, size, n_img, canvas_w, rdtype)
                for first, count, size in ((0, 2, self.global_size), (2, self.n_local, self.local_size))
                if count
            ],
            dim=1,
        )  # [B, sum S, W]
        xh = torch.matmul(x.reshape(n_img, 3 * canvas_h, canvas_w), wx.transpose(1, 2)).clamp_(0, 1)
        xh = xh.reshape(n_img, 3, canvas_h, -1)
        outputs, offset = [], 0
        for first, count, size in ((0, 2, self.global_size), (2, self.n_local, self.local_size)):
            if count == 0:
                outputs.append(None)
                continue
            part = xh[..., offset : offset + count * size].reshape(n_img, 3, canvas_h, count, size)
            part = part.permute(0, 3, 2, 1, 4).reshape(n_img, count, canvas_h, 3 * size)
            offset += count * size
            rows = slice(first * n_img, (first + count) * n_img)
            wy = resample_matrix(params.top[rows], params.height[rows], canvas_h, size, None, rdtype)
            wy = wy.reshape(count, n_img, size, canvas_h).transpose(0, 1)  # [B, count, S, H]
            crops = torch.matmul(wy, part).clamp_(0, 1)  # [B, count, S, 3S]
            crops = crops.reshape(n_img, count, size, 3, size).permute(1, 0, 3, 2, 4)
            crops = crops.reshape(count * n_img, 3, size, size).float()
            outputs.append(self._photometric(crops, params, rows))
        return outputs[0], outputs[1]

    @staticmethod
    def _group_matrix(
        params: AugParams, first: int, count: int, size: int, n_img: int, canvas_w: int, rdtype: torch.dtype
    ) -> torch.Tensor:
        """Horizontal resampling weights of crops ``first..first+count-1`` as ``[B, count*size, W]``
        (image-major: crop ``first``'s ``size`` rows, then the next crop's)."""
        rows = slice(first * n_img, (first + count) * n_img)
        w = resample_matrix(params.left[rows], params.width[rows], canvas_w, size, params.flip[rows], rdtype)
        return w.reshape(count, n_img, size, canvas_w).transpose(0, 1).reshape(n_img, count * size, canvas_w)

    def _photometric(self, x: torch.Tensor, p: AugParams, rows: slice) -> torch.Tensor:
        x = color_jitter(x, p.jitter_apply[rows], p.jitter_order[rows], p.jitter_factors[rows])
        x = torch.where(p.gray[rows].view(-1, 1, 1, 1), gray_of(x).expand_as(x), x)
        x = gaussian_blur(x, p.blur_apply[rows], p.blur_sigma[rows])
        x = torch.where(p.solarize[rows].view(-1, 1, 1, 1) & (x >= SOLARIZE_THRESHOLD), 1.0 - x, x)
        mean, std = self._mean_std(x.device, x.dtype)
        return (x - mean) / std

    def _mean_std(self, device, dtype):
        """Normalisation constants, copied to each device once (not once per batch)."""
        key = (str(device), dtype)
        if key not in self._constants:
            self._constants[key] = (
                torch.tensor(self.mean, dtype=dtype).view(1, 3, 1, 1).to(device),
                torch.tensor(self.std, dtype=dtype).view(1, 3, 1, 1).to(device),
            )
        return self._constants[key]

    def masks(self, n_images: int, generator: torch.Generator | None = None) -> torch.Tensor:
        """iBOT masks for the global crops via ``pretrain.masking.make_masks`` (CPU)."""
        grid = self.global_size // self.patch_size
        return make_masks(
            n_images,
            grid=(grid, grid),
            mask_probability=self.mask_probability,
            ratio_range=self.mask_ratio_range,
            generator=generator,
        )

    def __call__(
        self,
        batch: DecodedBatch,
        generator: torch.Generator | None = None,
        mask_generator: torch.Generator | None = None,
    ) -> CropBatch:
        """A :class:`~pretrain.batch.DecodedBatch` (optional ``masks``) -> a training :class:`~pretrain.batch.CropBatch`.

        ``images`` may still be on the CPU (pinned): it is moved to ``generator``'s device, or the
        images' own device when no generator is given. Masks made by the decode workers are used as is,
        with their ``mask_indices``/``mask_weights`` when the batch has them; otherwise these are
        computed here from the masks, before the masks leave the CPU (no host sync in the step).
        """
        images, sizes = batch.images, batch.sizes
        device = generator.device if generator is not None else images.device
        images = images.to(device, non_blocking=True)
        sizes = sizes.to(device, non_blocking=True)
        params = self.sample_params(sizes, generator)
        global_crops, local_crops = self.apply(images, sizes, params, generator)
        masks, indices, weights = batch.masks, batch.mask_indices, batch.mask_weights
        if masks is None:
            masks, indices = self.masks(2 * images.shape[0], mask_generator), None
        if indices is None:
            indices, weights = masked_token_indices(masks)
        return CropBatch(
            global_crops,
            local_crops,
            masks.to(device, non_blocking=True),
            batch.labels.to(device, non_blocking=True),
            indices.to(device, non_blocking=True),
            weights.to(device, non_blocking=True),
        )


def _noise_patch(x: torch.Tensor, p: AugParams, generator: torch.Generator | None) -> torch.Tensor:
    """Add ``N(0, sigma^2)`` inside each image's square patch and clamp to [0, 1] (float canvas)."""
    n_img, _, height, width = x.shape
    rows = torch.arange(height, device=x.device).view(1, -1)
    cols = torch.arange(width, device=x.device).view(1, -1)
    in_rows = (rows >= p.noise_top.view(-1, 1)) & (rows < (p.noise_top + p.noise_side).view(-1, 1))
    in_cols = (cols >= p.noise_left.view(-1, 1)) & (cols < (p.noise_left + p.noise_side).view(-1, 1))
    inside = in_rows.view(n_img, 1, height, 1) & in_cols.view(n_img, 1, 1, width) & p.noise_apply.view(n_img, 1, 1, 1)
    noise = torch.randn(x.shape, generator=generator, device=x.device, dtype=torch.float32)
    noise = noise * (p.noise_sigma.view(n_img, 1, 1, 1) * inside)
    return (x.float() + noise).clamp_(0, 1).to(x.dtype)
