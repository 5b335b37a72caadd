"""The supervised ceiling of a pretraining budget: the same architecture trained *with labels*.

``train_ceiling(run)`` reads the run's architecture and training data from its ``final.pt`` and its
number of optimiser steps and batch size from its ``summary.json``, trains a fresh backbone of that
architecture for as many steps at that batch size with a plain supervised recipe (cross-entropy on the
final-norm CLS token through a linear head, AdamW, linear warm-up then cosine decay, random crops with
4-pixel reflection padding and horizontal flips), and writes a backbone checkpoint that
``eval-corruptions --ceiling`` evaluates exactly like the pretrained ones (frozen features, same
probes, same images, same corrupted pixels) under the kind ``ceiling``.

The whole training split is held in memory as uint8 (``load_split_tensor``): meant for the
evaluation-sized datasets the demo uses, not for ImageNet.
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable

import torch
import torch.nn.functional as F
from torch import nn

from fdbench.checkpoint import load_backbone, save_checkpoint
from fdbench.data import dataset_resolution, load_split_tensor
from fdbench.device import resolve_device
from fdbench.errors import FdbenchError
from fdbench.features import IMAGENET_MEAN, IMAGENET_STD, to_float01
from fdbench.io import atomic_write_json, progress
from fdbench.models import build_backbone


@dataclass
class CeilingConfig:
    steps: int | None = None  # default: the run's optimiser steps
    batch_size: int | None = None  # default: the run's global batch
    lr: float = 1e-3
    weight_decay: float = 0.05
    warmup_fraction: float = 0.1
    seed: int = 0
    device: str = "auto"


def run_budget(run: Path) -> tuple[int, int]:
    """(optimiser steps, batch size) of a finished pretraining run, from its summary.json."""
    path = run / "summary.json"
    try:
        summary = json.loads(path.read_text())
    except (OSError, ValueError) as err:
        raise FdbenchError(f"cannot read the run's budget from {path}: {err}") from None
    steps, batch = summary.get("step") or summary.get("iterations"), summary.get("batch_size")
    if not steps or not batch:
        raise FdbenchError(f"{path} records no step count or batch size: is it a `fdbench pretrain` run?")
    return int(steps), int(batch)


def _augment(x: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
    """Random 4-px-padded crops and horizontal flips of a float batch (one draw per image)."""
    n, _, h, w = x.shape
    padded = F.pad(x, (4, 4, 4, 4), mode="reflect")
    dy = torch.randint(0, 9, (n,), generator=gen).tolist()
    dx = torch.randint(0, 9, (n,), generator=gen).tolist()
    flip = torch.rand(n, generator=gen) < 0.5
    out = torch.stack([padded[i, :, dy[i] : dy[i] + h, dx[i] : dx[i] + w] for i in range(n)])
    return torch.where(flip.view(-1, 1, 1, 1).to(x.device), out.flip(3), out)


def _lr_at(step: int, steps: int, config: CeilingConfig) -> float:
    warmup = max(1, int(config.warmup_fraction * steps))
    if step < warmup:
        return config.lr * (step + 1) / warmup
    return config.lr * 0.5 * (1 + math.cos(math.pi * (step - warmup) / max(1, steps - warmup)))


def train_ceiling(
    run: str | Path,
    out: str | Path,
    config: CeilingConfig = CeilingConfig(),
    *,
    announce: Callable[[str], None] | None = None,
) -> Path:
    """Train the supervised ceiling of ``run``; returns the path of the written checkpoint."""
    announce = announce or (lambda message: None)
    run, out = Path(run), Path(out)
    if not (run / "final.pt").is_file():
        raise FdbenchError(f"{run} is not a finished pretraining run (no final.pt)")
    steps, batch = run_budget(run)
    steps, batch = config.steps or steps, config.batch_size or batch
    first = load_backbone(run / "final.pt")
    data = first.meta.get("data") or {}
    root = data.get("root")
    if not root:
        raise FdbenchError(f"{run / 'final.pt'} records no training data root")
    size = int(data.get("image_size") or first.config.img_size)
    native = dataset_resolution(root)
    images, labels, classes = load_split_tensor(
        root, "train", size, resize=size if native else None, desc="loading train"
    )
    device = resolve_device(config.device)
    torch.manual_seed(config.seed)
    model = build_backbone(first.config).to(device).train()
    head = nn.Linear(model.embed_dim, len(classes)).to(device)
    params = list(model.parameters()) + list(head.parameters())
    optimiser = torch.optim.AdamW(params, lr=config.lr, weight_decay=config.weight_decay)
    mean = torch.tensor(IMAGENET_MEAN, device=device).view(1, 3, 1, 1)
    std = torch.tensor(IMAGENET_STD, device=device).view(1, 3, 1, 1)
    gen = torch.Generator().manual_seed(config.seed)
    announce(
        f"ceiling: {first.config.arch} with labels, {steps} AdamW steps of batch {batch} "
        f"(the budget of {run.name}), {len(images)} train images at {size} px"
    )
    correct = seen = 0
    loss = torch.zeros(())
    for step in progress(range(steps), desc="ceiling", unit="step"):
        idx = torch.randint(0, len(images), (batch,), generator=gen)
        x = _augment(to_float01(images[idx].to(device)), gen)
        y = labels[idx].to(device)
        for group in optimiser.param_groups:
            group["lr"] = _lr_at(step, steps, config)
        cls, _ = model((x - mean) / std)
        logits = head(cls)
        loss = F.cross_entropy(logits, y)
        optimiser.zero_grad(set_to_none=True)
        loss.backward()
        optimiser.step()
        if step >= steps - max(1, steps // 10):  # training accuracy over the last tenth of steps
            correct += int((logits.argmax(1) == y).sum())
            seen += len(y)
    model.eval()
    path = out / "ceiling.pt"
    record = {
        "run": str(run),
        "steps": steps,
        "batch_size": batch,
        "recipe": asdict(config),
        "final_loss": float(loss.detach()),
        "train_accuracy_last_tenth": correct / seen if seen else None,
    }
    save_checkpoint(
        {
            "kind": "backbone",
            "model": first.config.to_dict(),
            "teacher_backbone": {k: v.cpu() for k, v in model.state_dict().items()},
            "data": data,
            "run_name": f"ceiling-{run.name}",
        },
        path,
    )
    atomic_write_json(out / "ceiling.json", record)
    return path
