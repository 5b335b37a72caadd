"""The checkpoints a frequency analysis runs on, each turned into a classifier (frozen backbone +
probe fitted on clean training features) with the class-balanced evaluation images it is analysed on."""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Sequence

import torch

from analysis.eval_features import dataset_features
from analysis.frequency_analyses import Classifier
from analysis.probes import fit_linear_probe, knn_probe
from fdbench.checkpoint import checkpoint_labels, load_backbone
from fdbench.data import (
    check_fingerprint,
    check_same_classes,
    dataset_resolution,
    eval_transform,
    load_split_tensor,
    open_dataset,
    recorded_root,
)
from fdbench.errors import FdbenchError
from fdbench.features import FrozenEncoder, eval_image_size

if TYPE_CHECKING:  # the runner's options; imported for the annotations only (frequency imports this module)
    from analysis.frequency import FrequencyConfig

__all__ = ["Model", "checkpoint_labels", "eval_setup", "find_checkpoints", "load_model", "stratified"]


def find_checkpoints(paths: Sequence[str], runs: str | Path = "runs", announce=None) -> list[Path]:
    """The given checkpoint files, or every ``<runs>/*/final.pt`` when none are given."""
    if paths:
        return [Path(p) for p in paths]
    found = sorted(Path(runs).glob("*/final.pt"))
    if not found:
        raise FdbenchError(
            f"no checkpoints given and none found under {runs}/*/final.pt: train some with "
            f"`fdbench pretrain` first, or pass checkpoint files"
        )
    if announce:
        announce(f"analysing {len(found)} checkpoint(s) found under {runs}/: " + ", ".join(str(p) for p in found))
    return found


def data_root(config: FrequencyConfig, meta: dict, announce) -> str | None:
    """``--data``, else the checkpoint's recorded training data when it is here, else the embedded set."""
    recorded = (meta.get("data") or {}).get("root")
    check_fingerprint(meta.get("data"), config.data or recorded, announce)  # another dataset at that path
    if config.data is not None:
        return config.data
    return recorded_root(meta, announce, "using the embedded dataset")


@dataclass
class Model:
    """A checkpoint turned into a classifier, with the evaluation images it is analysed on."""

    classifier: Classifier
    size: int
    root: str
    val_images: torch.Tensor
    val_labels: torch.Tensor
    num_classes: int
    curriculum: str


def stratified(labels: torch.Tensor, n: int, seed: int) -> torch.Tensor:
    """Indices of ``n`` samples taken round-robin over classes (each class in a seeded random order)."""
    gen = torch.Generator().manual_seed(seed)
    per_class = [torch.nonzero(labels == c).flatten() for c in torch.unique(labels)]
    per_class = [idx[torch.randperm(len(idx), generator=gen)] for idx in per_class]
    order = [int(idx[j]) for j in range(max(len(i) for i in per_class)) for idx in per_class if j < len(idx)]
    return torch.tensor(order[:n], dtype=torch.long)


def eval_setup(loaded, config: FrequencyConfig, announce=lambda m: None) -> tuple[str | None, int, int | None]:
    """(data root, evaluation size, resize) of a loaded checkpoint: ``--data`` or its training data, at
    the dataset's native size (every pixel kept) or the training size, a multiple of the patch."""
    root = data_root(config, loaded.meta, announce)
    native = dataset_resolution(root)
    trained = (loaded.meta.get("data") or {}).get("image_size") or loaded.config.img_size
    size = eval_image_size(trained, native, loaded.config.patch_size)
    return root, size, (size if native else None)


def load_model(path: Path, config: FrequencyConfig, device: torch.device, label: str, announce) -> Model:
    loaded = load_backbone(path, map_location=device)
    root, size, resize = eval_setup(loaded, config, announce)
    encoder = FrozenEncoder(loaded.model).to(device)

    train = open_dataset(root, "train", eval_transform(size, resize))
    check_same_classes(list(train.classes), list(open_dataset(root, "val").classes), root)
    feats, labels = dataset_features(encoder, train, batch_size=config.batch_size, desc=f"{label}: train features")
    num_classes = len(train.classes)
    if config.probe == "linear":
        probe = fit_linear_probe(feats, labels, seed=config.seed, num_classes=num_classes)
    else:
        probe = knn_probe(feats, labels, num_classes=num_classes)
    probe.to(device)

    need = max(config.n_images, config.bandpass_images)
    val_x, val_y, _ = load_split_tensor(
        root, "val", size, resize=resize, max_per_class=math.ceil(need / num_classes), desc=f"{label}: val"
    )
    announce(
        f"{label}: {loaded.config.arch}/{loaded.config.patch_size} at {size} px, {config.probe} probe "
        f"on {len(feats)} train images, data {root or 'embedded synthetic dataset'}"
    )

    def classify(images: torch.Tensor) -> torch.Tensor:
        return probe.logits(encoder(images))

    curriculum = loaded.meta.get("curriculum")
    if isinstance(curriculum, dict):
        curriculum = curriculum.get("name") or json.dumps(curriculum, sort_keys=True)
    return Model(classify, size, str(root) if root else "", val_x, val_y, num_classes, str(curriculum or ""))
