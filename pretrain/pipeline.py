"""The training data pipelines behind one interface: the batches of one curriculum stage, on the device.

- ``cpu``: DataLoader workers decode and augment every image (PIL, :mod:`pretrain.augment`), each
  image under its own seed; the collate stacks the crops and draws the iBOT masks
  (:class:`pretrain.data.MultiCropCollate`). The choice for CPU runs.
- ``gpu``: workers only decode (JPEG draft mode, down to the size the stage needs: :mod:`pretrain.decode`)
  and draw the masks; the whole batch is then cropped and augmented on the training device by
  :class:`pretrain.gpu_augment.GpuMultiCrop`, from a generator seeded by the step
  (:class:`pretrain.data.DecodeBatchCollate`). Same distributions as ``cpu``; it runs on CPU tensors
  too, which is how it is tested.

Both read the engine's resumable data order (:class:`pretrain.data.ResumableBatchSampler`), so a run
resumed mid-epoch sees the same batches and crops as an uninterrupted one, whichever the pipeline.
A :class:`StageFeed` is built per stage: crop sizes, noise patching and decode size change at a switch.
``fdbench pretrain`` and ``fdbench bench-train`` both use this module.
"""

from __future__ import annotations

from typing import Iterator

import torch
from torch.utils.data import DataLoader

from fdbench.errors import FdbenchError
from pretrain.augment import GaussianNoisePatch, MultiCropAugmentation
from pretrain.batch import CropBatch, DecodedBatch
from pretrain.data import AugmentedDataset, DecodeBatchCollate, DecodedDataset, MultiCropCollate, make_loader
from pretrain.decode import DecodeDataset, needed_side
from pretrain.gpu_augment import GpuMultiCrop

PIPELINES = ("cpu", "gpu")


def resolve_pipeline(name: str | None, device: torch.device | str) -> str:
    """``auto`` (or None) -> ``gpu`` on CUDA, ``cpu`` otherwise; ``cpu``/``gpu`` as given."""
    name = name or "auto"
    if name == "auto":
        return "gpu" if torch.device(device).type == "cuda" else "cpu"
    if name not in PIPELINES:
        raise FdbenchError(f"unknown data pipeline {name!r}: use auto, cpu or gpu")
    return name


def make_augment(cfg, stage):
    """The CPU pipeline's per-image multi-crop for a stage (:class:`pretrain.stages.StagePlan`)."""
    noise = GaussianNoisePatch(max_sigma=stage.noise_max_sigma) if stage.noise_patching else None
    return MultiCropAugmentation(
        global_size=stage.global_size,
        local_size=stage.local_size or 1,
        n_local=stage.n_local,
        global_scale=stage.global_scale,
        local_scale=stage.local_scale,
        inverted_blur=cfg.crops.inverted_blur,
        blur_sigma=cfg.crops.blur_sigma,
        noise_patch=noise,
    )


def make_gpu_augment(cfg, stage):
    """The on-device multi-crop for a stage: the same crops, blur choice, noise patching and masks."""
    return GpuMultiCrop.from_stage(
        stage,
        cfg.model.patch_size,
        inverted_blur=cfg.crops.inverted_blur,
        blur_sigma=cfg.crops.blur_sigma,
        mask_probability=cfg.loss.mask_probability,
        mask_ratio_range=(cfg.loss.mask_ratio_min, cfg.loss.mask_ratio_max),
    )


def decode_side(stage, slack: float = 1.0) -> int:
    """Shorter side the workers decode to for a stage: no crop of the stage is upsampled by it."""
    return needed_side(
        stage.global_size, stage.local_size, stage.global_scale[0], stage.local_scale[0], stage.n_local, slack=slack
    )


class StageFeed:
    """Training batches of one stage in the engine's data order, ready for ``MetaArch.forward_backward``.

    ``cfg`` is the run's :class:`pretrain.config.PretrainConfig` (batch size, seed, patch, masks,
    blur), ``stage`` a :class:`pretrain.stages.StagePlan`, ``train_set`` a dataset of PIL images.
    ``decode_slack > 1`` decodes smaller than the smallest crop needs (faster, a little softer).
    """

    def __init__(
        self,
        cfg,
        stage,
        train_set,
        *,
        pipeline: str,
        device: torch.device | str,
        workers: int,
        rank: int = 0,
        world_size: int = 1,
        decode_slack: float = 1.0,
    ):
        self.cfg, self.stage, self.pipeline = cfg, stage, resolve_pipeline(pipeline, device)
        self.device = torch.device(device)
        self.workers, self.rank, self.world_size = workers, rank, world_size
        masks = (cfg.loss.mask_probability, (cfg.loss.mask_ratio_min, cfg.loss.mask_ratio_max))
        if self.pipeline == "gpu":
            self.augment = make_gpu_augment(cfg, stage)
            self.decode_side = decode_side(stage, decode_slack)
            self.dataset = DecodedDataset(DecodeDataset(train_set, self.decode_side))
            self.collate = DecodeBatchCollate(stage.global_size // cfg.model.patch_size, *masks)
            self.generator = torch.Generator(device=self.device)
        else:
            self.augment = make_augment(cfg, stage)
            self.decode_side = None
            self.dataset = AugmentedDataset(train_set, self.augment)
            self.collate = MultiCropCollate(cfg.model.patch_size, *masks)

    def loader(self, epoch: int, start_step: int = 0) -> DataLoader:
        """This rank's loader batches of ``epoch`` from ``start_step`` on (decoded or augmented)."""
        return make_loader(
            self.dataset,
            self.collate,
            self.cfg.run.batch_size,
            seed=self.cfg.run.seed,
            epoch=epoch,
            start_step=start_step,
            rank=self.rank,
            world_size=self.world_size,
            workers=self.workers,
            pin_memory=self.device.type == "cuda",
        )

    def prepare(self, batch: CropBatch | DecodedBatch) -> CropBatch:
        """A loader batch -> a training batch. The gpu pipeline makes its crops here, on the device,
        from a generator reseeded per batch, so the crops depend on the step only (not on the history
        of the generator): that is what lets a resumed run match an uninterrupted one."""
        if self.pipeline == "cpu":
            return batch  # forward_backward moves it to the device
        self.generator.manual_seed(batch.aug_seed)
        return self.augment(batch, self.generator)

    def batches(self, epoch: int, start_step: int = 0) -> Iterator[CropBatch]:
        for batch in self.loader(epoch, start_step):
            yield self.prepare(batch)
