"""The evaluation's inputs and features: corrupted images made in fixed chunks of ``CHUNK`` images,
each chunk with its own seed derived from (seed, corruption, severity, index of its first image), so
the corrupted images do not depend on the batch size, the checkpoint or the order of evaluation; and
the frozen features of image tensors and datasets, and of one evaluation cell (:func:`cell_features`)."""

from __future__ import annotations

import hashlib
from typing import Callable

import torch
from torch.utils.data import DataLoader

from analysis.metrics import CLEAN
from fdbench.data import ImageFolderDataset, eval_transform
from fdbench.errors import FdbenchError
from fdbench.features import extract_features
from fdbench.io import progress

CHUNK = 32  # images per corruption seed; batches are whole numbers of chunks


def chunk_seed(seed: int, corruption: str, severity: int, start: int) -> int:
    """A 63-bit seed for the chunk of images starting at index ``start`` (stable across runs)."""
    digest = hashlib.blake2b(f"{seed}|{corruption}|{severity}|{start}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "little") & ((1 << 63) - 1)


def corrupt_images(
    images: torch.Tensor, start: int, corruption: str, severity: int, corrupt_fn: Callable, seed: int = 0
) -> torch.Tensor:
    """Corrupt images whose first one has dataset index ``start`` (a multiple of ``CHUNK``), chunk by
    chunk, each chunk with its own seed ``chunk_seed(seed, corruption, severity, chunk start)``."""
    if start % CHUNK:
        raise ValueError(f"batches must start at a multiple of {CHUNK}, got {start}")

    def one(i: int) -> torch.Tensor:
        return corrupt_fn(
            images[i : i + CHUNK], corruption, severity, generator=chunk_seed(seed, corruption, severity, start + i)
        )

    starts = range(0, len(images), CHUNK)
    if images.device.type == "cpu" and getattr(corrupt_fn, "thread_safe", False):
        from corruptions.registry import cpu_map

        # chunks side by side on the cores; each has its own seed, so the bytes do not depend on it
        # (only for functions marked thread-safe: a user's corrupt_fn is called one chunk at a time)
        return cpu_map(one, starts, combine=torch.cat)
    return torch.cat([one(i) for i in starts])


def default_corrupt_fn() -> Callable:
    """``corruptions.corrupt`` with the torch backend and the severity table picked by image size."""
    from corruptions import corrupt  # the corruption engine loads only when images are corrupted here

    def fn(images, name, severity, generator=None):
        return corrupt(images, name, severity, backend="torch", generator=generator, params="auto")

    fn.thread_safe = True  # corrupt() may run on several chunks at once (corrupt_images)
    return fn


def _batch_size(requested: int) -> int:
    # whole chunks per batch, so a chunk never straddles two batches (its seed covers all of it)
    return max(CHUNK, requested // CHUNK * CHUNK)


@torch.no_grad()
def corrupted_features(
    encoder,
    images: torch.Tensor,
    corruption: str,
    severity: int,
    corrupt_fn: Callable,
    *,
    batch_size: int = 256,
    seed: int = 0,
) -> torch.Tensor:
    """Features of ``images`` (uint8 [N,3,H,W], on any device) corrupted on the encoder's device."""
    bs = _batch_size(batch_size)
    out = []
    for start in range(0, len(images), bs):
        batch = images[start : start + bs].to(encoder.device, non_blocking=True)
        out.append(encoder(corrupt_images(batch, start, corruption, severity, corrupt_fn, seed)).cpu())
    return torch.cat(out) if out else torch.empty(0, encoder.dim)


@torch.no_grad()
def dataset_features(encoder, dataset, *, batch_size: int = 256, workers: int = 0, desc: str = ""):
    """Stream a dataset of (uint8 CHW tensor, label) through the encoder: (features, labels) on CPU."""
    loader = DataLoader(dataset, batch_size=batch_size, num_workers=workers, shuffle=False)
    feats, labels = [], []
    for x, y in progress(loader, desc=desc, unit="batch"):
        feats.append(encoder(x).cpu())
        labels.append(torch.as_tensor(y))
    if not feats:
        raise FdbenchError(f"no images to encode ({desc or 'dataset'})")
    return torch.cat(feats), torch.cat(labels)


def cell_features(
    encoder, val_images, val_labels, corruption, severity, corrupt_fn, corrupted_root, classes, size, config
) -> tuple[torch.Tensor, torch.Tensor]:
    """(features, labels) of one cell's val images; the labels are the val labels except for a
    ``--corrupted-root`` folder, which carries its own."""
    if corruption == CLEAN:
        return extract_features(encoder, val_images, batch_size=config.batch_size), val_labels
    if corrupted_root is not None:
        # stored corrupted images are already cropped: only resize to the evaluation size
        ds = ImageFolderDataset(corrupted_root / corruption / str(severity), eval_transform(size, size), classes)
        return dataset_features(encoder, ds, batch_size=config.batch_size, workers=config.workers)
    return corrupted_features(
        encoder, val_images, corruption, severity, corrupt_fn, batch_size=config.batch_size, seed=config.seed
    ), val_labels
