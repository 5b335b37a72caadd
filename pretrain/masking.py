"""Block-wise (BEiT-style) patch masks for iBOT, generated for any patch grid.

``make_masks`` reproduces DINOv2's collate: of ``n`` global crops, ``int(n * mask_probability)``
get a mask; their target ratios are spread evenly over ``ratio_range`` (crop ``i`` of ``m`` draws
its ratio uniformly from the ``i``-th of ``m`` equal sub-intervals), each mask covers
``int(n_patches * ratio)`` patches with rectangular blocks, the other crops stay unmasked, and the
order is shuffled.

Block placement (BEiT): repeatedly draw a block of area ``U(min_num_patches, room)`` and aspect
ratio ``exp(U(log 0.3, log 1/0.3))``, place it uniformly, and keep it if it adds between 1 and
``room`` new patches, where ``room`` is what is left of the target (capped at half the grid).
After 10 failed draws in a row the mask stops short of its target, so a mask never exceeds its
target but may fall below it on tiny grids. Unlike BEiT's strict ``<`` bound, a block may span the
whole grid side, so 1-row and 2x2 grids (small crops) can be masked too.

``masked_token_indices`` turns a batch of masks into what the iBOT loss gathers: the flat indices of
the masked tokens and their per-token weights. The collates compute them on the CPU, where the masks
are made (as DINOv2's collate does), so the training step gathers with ``index_select`` on indices
whose number the host already knows, instead of boolean indexing on the device, whose output size
the host would have to wait for.
"""

from __future__ import annotations

import math

import numpy as np
import torch

from fdbench.errors import FdbenchError

__all__ = ["BlockMaskGenerator", "make_masks", "masked_token_indices", "numpy_rng"]


def numpy_rng(generator: torch.Generator | None = None) -> np.random.Generator:
    """A NumPy generator seeded by one draw from ``generator`` (or torch's global RNG).

    Seeding from torch keeps masks reproducible under ``torch.manual_seed`` and distinct across
    DataLoader workers (each worker has its own torch seed), while NumPy draws are cheap in loops.
    """
    seed = torch.randint(0, 2**62, (1,), generator=generator).item()
    return np.random.default_rng(seed)


class BlockMaskGenerator:
    """BEiT block masks on an ``(h, w)`` patch grid; ``gen(n_target, rng) -> bool [h, w]``."""

    def __init__(
        self,
        grid: tuple[int, int],
        min_num_patches: int = 4,
        max_num_patches: float | None = None,
        min_aspect: float = 0.3,
        max_aspect: float | None = None,
        max_tries: int = 10,
    ):
        self.height, self.width = int(grid[0]), int(grid[1])
        self.num_patches = self.height * self.width
        self.min_num_patches = min_num_patches
        # DINOv2 caps one block at half the grid
        self.max_num_patches = 0.5 * self.num_patches if max_num_patches is None else max_num_patches
        max_aspect = max_aspect or 1.0 / min_aspect
        self.log_aspect = (math.log(min_aspect), math.log(max_aspect))
        self.max_tries = max_tries

    def _add_block(self, mask: np.ndarray, room: float, rng: np.random.Generator) -> int:
        """Try up to ``max_tries`` blocks; return how many new patches the first useful one masked."""
        for _ in range(self.max_tries):
            # U(a, b) with a > b is allowed (as Python's random.uniform): then it draws from [b, a]
            area = self.min_num_patches + (room - self.min_num_patches) * rng.random()
            aspect = math.exp(self.log_aspect[0] + (self.log_aspect[1] - self.log_aspect[0]) * rng.random())
            h = int(round(math.sqrt(area * aspect)))
            w = int(round(math.sqrt(area / aspect)))
            if 0 < h <= self.height and 0 < w <= self.width:
                top = int(rng.integers(0, self.height - h + 1))
                left = int(rng.integers(0, self.width - w + 1))
                block = mask[top : top + h, left : left + w]
                new = h * w - int(block.sum())
                if 0 < new <= room:
                    block[...] = True
                    return new
        return 0

    def __call__(self, n_target: int, rng: np.random.Generator) -> np.ndarray:
        mask = np.zeros((self.height, self.width), dtype=bool)
        count = 0
        while count < n_target:
            added = self._add_block(mask, min(n_target - count, self.max_num_patches), rng)
            if added == 0:
                break
            count += added
        return mask


def make_masks(
    n_images: int,
    grid: tuple[int, int] | int = (14, 14),
    mask_probability: float = 0.5,
    ratio_range: tuple[float, float] = (0.1, 0.5),
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """Masks ``bool [n_images, h*w]`` for ``n_images`` global crops (see the module docstring)."""
    h, w = (grid, grid) if isinstance(grid, int) else (int(grid[0]), int(grid[1]))
    if h < 1 or w < 1:
        raise FdbenchError(f"mask grid must be at least 1x1 patches, got {h}x{w}")
    if not 0.0 <= mask_probability <= 1.0:
        raise FdbenchError(f"mask probability must be in [0, 1], got {mask_probability}")
    lo, hi = float(ratio_range[0]), float(ratio_range[1])
    if not 0.0 <= lo <= hi <= 1.0:
        raise FdbenchError(f"mask ratio range must satisfy 0 <= min <= max <= 1, got ({lo}, {hi})")
    rng = numpy_rng(generator)
    n_patches = h * w
    n_masked = int(n_images * mask_probability)
    gen = BlockMaskGenerator((h, w))
    bounds = np.linspace(lo, hi, n_masked + 1)
    masks = np.zeros((n_images, n_patches), dtype=bool)
    for i in range(n_masked):
        ratio = bounds[i] + (bounds[i + 1] - bounds[i]) * rng.random()
        masks[i] = gen(int(n_patches * ratio), rng).reshape(-1)
    masks = masks[rng.permutation(n_images)]
    return torch.from_numpy(masks)


def masked_token_indices(masks: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``(indices long [M], weights float32 [M])`` of the masked tokens of ``masks`` ``[N, P]`` (or ``[N, h, w]``).

    ``indices`` are positions in ``masks.flatten()`` (so in the ``[N*P, D]`` flattened patch tokens),
    in increasing order: the order of boolean indexing ``tokens[masks]``. ``weights[j]`` is
    ``1 / max(1, n_i)`` where ``n_i`` counts the masked tokens of the image that token ``j`` belongs to
    (the iBOT loss's per-image weighting). Computed on the masks' device: call it where the masks are
    made, on the CPU; on a GPU it would wait for the device (``nonzero`` has a data-dependent size).
    """
    masks = masks.reshape(masks.shape[0], -1).bool()
    indices = masks.flatten().nonzero().flatten()
    per_image = masks.sum(dim=1).clamp(min=1).float()
    weights = (1.0 / per_image)[torch.div(indices, masks.shape[1], rounding_mode="floor")]
    return indices, weights
