"""The training DataLoader: a deterministic, resumable, DDP-sharded data order with seeded crops.

Resuming mid-epoch must reproduce the very same batches and crops as an uninterrupted run, even
with DataLoader workers. So nothing here depends on hidden RNG state:

- the order of epoch ``e`` is a permutation drawn from a generator seeded with ``(seed, e)``;
  the epoch keeps ``iters_per_epoch * global_batch`` images (drop-last) and rank ``r`` of ``W``
  takes every ``W``-th image of each global batch, so the global batch is the same for any ``W``;
- image ``i`` of epoch ``e`` is augmented under RNGs seeded with ``hash(seed, e, i)``;
- the iBOT masks of step ``t`` come from a generator seeded with ``hash(seed, e, t, rank)``;
- with the on-device pipeline (``--data-pipeline gpu``) workers only decode
  (:class:`DecodedDataset`), and the crops of step ``t`` are drawn on the device from a generator
  seeded with ``hash(mask seed of t)`` (:class:`DecodeBatchCollate` puts that seed in the batch):
  per batch rather than per image, but just as fixed by the step.

A loader is built per epoch, starting at any step of it (``start_step``), which is all resuming needs.
"""

from __future__ import annotations

import contextlib
import os
import random
from typing import Any, Callable, Iterator

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, Sampler

from pretrain.augment import collate_multicrop
from pretrain.batch import CropBatch, DecodedBatch
from pretrain.decode import DecodeCollate
from pretrain.masking import make_masks, masked_token_indices


def derive_seed(*parts: int) -> int:
    """A well-mixed 63-bit seed from integers (numpy's SeedSequence hashing)."""
    state = np.random.SeedSequence([int(p) % (2**63) for p in parts]).generate_state(2, dtype=np.uint32)
    return (int(state[0]) << 31) ^ int(state[1])


def iters_per_epoch(n_images: int, global_batch: int) -> int:
    return n_images // global_batch


def epoch_order(n_images: int, seed: int, epoch: int) -> torch.Tensor:
    """The permutation of image indices used in ``epoch``."""
    gen = torch.Generator().manual_seed(derive_seed(seed, epoch, 0x5EED))
    return torch.randperm(n_images, generator=gen)


class ResumableBatchSampler(Sampler):
    """Yields this rank's batches of one epoch, from ``start_step`` on.

    Each batch is a list of keys ``(image_index, sample_seed)``; the dataset below reads them.
    The mask seed of the batch travels as the first key's third element.
    """

    def __init__(
        self,
        n_images: int,
        global_batch: int,
        *,
        seed: int,
        epoch: int,
        start_step: int = 0,
        rank: int = 0,
        world_size: int = 1,
    ):
        if global_batch % world_size:
            raise ValueError(f"global batch {global_batch} is not divisible by {world_size} ranks")
        self.n_images, self.global_batch = n_images, global_batch
        self.seed, self.epoch, self.start_step = seed, epoch, start_step
        self.rank, self.world_size = rank, world_size
        self.steps = iters_per_epoch(n_images, global_batch)

    def __len__(self) -> int:
        return max(0, self.steps - self.start_step)

    def __iter__(self) -> Iterator[list[tuple[int, int, int]]]:
        order = epoch_order(self.n_images, self.seed, self.epoch)
        for step in range(self.start_step, self.steps):
            chunk = order[step * self.global_batch : (step + 1) * self.global_batch]
            mine = chunk[self.rank :: self.world_size].tolist()
            mask_seed = derive_seed(self.seed, self.epoch, step, self.rank, 0x3A5C)
            yield [(i, derive_seed(self.seed, self.epoch, i), mask_seed) for i in mine]


@contextlib.contextmanager
def seeded_rngs(seed: int):
    """Run a block under torch-CPU, Python and NumPy RNGs seeded with ``seed``, then restore them.

    Restoring keeps the main process's RNG (drop path, ...) untouched when workers == 0.
    """
    py_state, np_state = random.getstate(), np.random.get_state()
    with torch.random.fork_rng(devices=[]):
        torch.default_generator.manual_seed(seed)
        random.seed(seed)
        np.random.seed(seed % (2**32))
        try:
            yield
        finally:
            random.setstate(py_state)
            np.random.set_state(np_state)


class AugmentedDataset(Dataset):
    """Wraps a ``(PIL image, label)`` dataset; item ``(index, sample_seed, mask_seed)`` ->
    ``(augment(image), label, mask_seed)`` with the augmentation's randomness fixed by the seed."""

    def __init__(self, base: Dataset, augment: Callable):
        self.base, self.augment = base, augment

    def __len__(self) -> int:
        return len(self.base)

    def __getitem__(self, key: tuple[int, int, int]):
        index, sample_seed, mask_seed = key
        image, label = self.base[index]
        with seeded_rngs(sample_seed):
            crops = self.augment(image)
        return crops, label, mask_seed


class MultiCropCollate:
    """Batches samples with ``pretrain.augment.collate_multicrop``, masks seeded per batch."""

    def __init__(self, patch_size: int, mask_probability: float, mask_ratio_range: tuple[float, float]):
        self.patch_size = patch_size
        self.mask_probability = mask_probability
        self.mask_ratio_range = tuple(mask_ratio_range)

    def __call__(self, samples: list[tuple[Any, int, int]]) -> CropBatch:
        generator = torch.Generator().manual_seed(samples[0][2])
        return collate_multicrop(
            [(crops, label) for crops, label, _ in samples],
            patch_size=self.patch_size,
            mask_probability=self.mask_probability,
            mask_ratio_range=self.mask_ratio_range,
            generator=generator,
        )


class DecodedDataset(Dataset):
    """The on-device pipeline's counterpart of :class:`AugmentedDataset`: item ``(index, sample_seed,
    mask_seed)`` -> ``(uint8 [3,h,w], label, mask_seed)``. Decoding draws nothing at random, so the
    sample seed is not needed; the crops are drawn later, on the device, for the whole batch."""

    def __init__(self, decoded: Dataset):
        self.decoded = decoded  # a pretrain.decode.DecodeDataset

    def __len__(self) -> int:
        return len(self.decoded)

    def __getitem__(self, key: tuple[int, int, int]):
        index, _, mask_seed = key
        image, label = self.decoded[index]
        return image, label, mask_seed


class DecodeBatchCollate:
    """Pads decoded samples into one uint8 batch (``pretrain.decode.DecodeCollate``) and adds what
    the on-device augmentation needs to be reproducible: the iBOT masks of the batch, drawn here in
    the workers from the batch's mask seed exactly as :class:`MultiCropCollate` draws them (with
    their ``mask_indices`` and ``mask_weights``, computed on the CPU as there), and ``aug_seed``,
    the seed of the device generator that draws the crops."""

    def __init__(self, mask_grid: int, mask_probability: float, mask_ratio_range: tuple[float, float]):
        self.mask_grid = mask_grid
        self.mask_probability = mask_probability
        self.mask_ratio_range = tuple(mask_ratio_range)

    def __call__(self, samples: list[tuple[torch.Tensor, int, int]]) -> DecodedBatch:
        batch = DecodeCollate(mask_grid=None)([(image, label) for image, label, _ in samples])
        mask_seed = samples[0][2]
        generator = torch.Generator().manual_seed(mask_seed)
        batch.masks = make_masks(
            2 * len(samples), (self.mask_grid, self.mask_grid), self.mask_probability, self.mask_ratio_range, generator
        )
        batch.mask_indices, batch.mask_weights = masked_token_indices(batch.masks)
        batch.aug_seed = derive_seed(mask_seed, 0xA06)
        return batch


def default_workers() -> int:
    return max(0, min(8, (os.cpu_count() or 1) - 1))


def make_loader(
    dataset: AugmentedDataset | DecodedDataset,
    collate: Callable,
    global_batch: int,
    *,
    seed: int,
    epoch: int,
    start_step: int,
    rank: int,
    world_size: int,
    workers: int,
    pin_memory: bool = False,
) -> DataLoader:
    """The DataLoader of one epoch from ``start_step`` on (see the module docstring)."""
    sampler = ResumableBatchSampler(
        len(dataset), global_batch, seed=seed, epoch=epoch, start_step=start_step, rank=rank, world_size=world_size
    )
    # a private generator: creating the loader's iterator must not consume the global torch RNG,
    # or a run resumed mid-epoch would diverge from an uninterrupted one
    return DataLoader(
        dataset,
        batch_sampler=sampler,
        collate_fn=collate,
        num_workers=workers,
        pin_memory=pin_memory,
        generator=torch.Generator().manual_seed(seed),
        persistent_workers=False,
        prefetch_factor=4 if workers > 0 else None,
    )
