"""BEiT block masks: how many crops are masked, mask ratios, any grid, reproducibility."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from fdbench.errors import FdbenchError
from pretrain.masking import BlockMaskGenerator, make_masks


@pytest.mark.parametrize("grid", [(14, 14), (7, 7), (16, 16), (4, 4), (3, 8), (2, 2), (1, 5)])
def test_masked_count_and_ratio_range(grid):
    n_images, n_patches = 400, grid[0] * grid[1]
    masks = make_masks(
        n_images, grid, mask_probability=0.5, ratio_range=(0.1, 0.5), generator=torch.Generator().manual_seed(0)
    )
    assert masks.shape == (n_images, n_patches) and masks.dtype == torch.bool
    counts = masks.sum(dim=1)
    # never more than int(n_patches * 0.5) patches, and only int(400 * 0.5) images can carry a mask
    assert int(counts.max()) <= int(n_patches * 0.5)
    assert int((counts > 0).sum()) <= 200
    if n_patches * 0.1 >= 4:
        # every selected crop's target is at least the 4-patch minimum block, so all 200 get a mask
        assert int((counts > 0).sum()) == 200
        ratios = counts[counts > 0].double() / n_patches
        assert ratios.min() >= int(n_patches * 0.1) / n_patches - 1e-9
        # ratios are spread over [0.1, 0.5] (stratified): both halves of the range are populated
        assert 0.35 < float((ratios < 0.3).double().mean()) < 0.7
        assert 0.22 < float(ratios.mean()) < 0.32  # 0.3 minus the blocks that stop short of target
    else:
        # tiny grids: still masks, but some targets round down to 0 patches
        assert int((counts > 0).sum()) > 0


def test_mask_probability_and_ratio_bounds_respected():
    for p, n in [(0.0, 10), (1.0, 10), (0.25, 12), (0.5, 7)]:
        counts = make_masks(n, (14, 14), mask_probability=p).sum(dim=1)
        assert int((counts > 0).sum()) == int(n * p)
    counts = make_masks(50, (14, 14), mask_probability=1.0, ratio_range=(0.2, 0.2)).sum(dim=1)
    assert (counts <= int(196 * 0.2)).all() and (counts > 0).all()


def test_masked_crops_are_shuffled_across_the_batch():
    masks = make_masks(64, (8, 8), generator=torch.Generator().manual_seed(3))
    masked_rows = (masks.sum(1) > 0).nonzero().flatten()
    # not simply the first half (the reference collate shuffles masked and unmasked crops)
    assert masked_rows.tolist() != list(range(32))
    assert (masked_rows >= 32).any()


def test_block_generator_makes_rectangles_within_target():
    gen = BlockMaskGenerator((10, 12))
    rng = np.random.default_rng(0)
    for target in (4, 9, 20, 40, 60):
        mask = gen(target, rng)
        assert 0 < mask.sum() <= target
    # blocks, not scattered patches: almost every masked patch has a masked 4-neighbour
    # (for 20 of 120 patches masked at random that holds for only about half of them)
    with_neighbour = []
    for _ in range(200):
        m = np.pad(gen(20, rng), 1)
        core = m[1:-1, 1:-1]
        near = m[:-2, 1:-1] | m[2:, 1:-1] | m[1:-1, :-2] | m[1:-1, 2:]
        with_neighbour.append((core & near).sum() / core.sum())
    assert np.mean(with_neighbour) > 0.9


def test_reproducible_with_generator_and_bad_input():
    a = make_masks(16, (6, 6), generator=torch.Generator().manual_seed(7))
    b = make_masks(16, (6, 6), generator=torch.Generator().manual_seed(7))
    c = make_masks(16, (6, 6), generator=torch.Generator().manual_seed(8))
    assert torch.equal(a, b) and not torch.equal(a, c)
    assert make_masks(5, 3).shape == (5, 9)  # an int grid is square
    with pytest.raises(FdbenchError, match="ratio range"):
        make_masks(4, (4, 4), ratio_range=(0.6, 0.2))
    with pytest.raises(FdbenchError, match="probability"):
        make_masks(4, (4, 4), mask_probability=1.5)
    with pytest.raises(FdbenchError, match="grid"):
        make_masks(4, (0, 4))
