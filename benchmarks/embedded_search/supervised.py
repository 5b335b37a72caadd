"""How much can an architecture learn of the embedded task in the demo's budget, *with labels*?

    python benchmarks/embedded_search/supervised.py NAME --arch vit_nano --patch 8 --steps 368 \
        [--layerscale 1e-5|none] [--lr 1e-3] [--width 128 --depth 4 --heads 4]

Trains with analysis.ceiling's supervised recipe (AdamW, warm-up + cosine, padded crops and flips),
scores val top-1 and appends a row to supervised.csv beside this script. It separates "the backbone
cannot learn the task in this budget" from "self-distillation does not learn it".
"""

from __future__ import annotations

import argparse
import csv
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from analysis.ceiling import CeilingConfig, _augment, _lr_at
from fdbench import models
from fdbench.data import load_split_tensor
from fdbench.features import IMAGENET_MEAN, IMAGENET_STD, to_float01
from fdbench.synthetic import default_dataset

HERE = Path(__file__).parent


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("name")
    ap.add_argument("--arch", default="vit_nano")
    ap.add_argument("--width", type=int)
    ap.add_argument("--depth", type=int)
    ap.add_argument("--heads", type=int)
    ap.add_argument("--patch", type=int, default=8)
    ap.add_argument("--steps", type=int, default=368)
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--lr", type=float, default=1e-3)
    ap.add_argument("--layerscale", default="1e-5")
    args = ap.parse_args()
    torch.set_num_threads(1)
    if args.width:
        models.ARCHS["vit_custom"] = (args.width, args.depth, args.heads)
        args.arch = "vit_custom"
    root = default_dataset()
    tx, ty, classes = load_split_tensor(root, "train", 32)
    vx, vy, _ = load_split_tensor(root, "val", 32)
    ls = None if args.layerscale == "none" else float(args.layerscale)
    cfg = models.BackboneConfig(arch=args.arch, patch_size=args.patch, img_size=32, layerscale=ls)
    torch.manual_seed(0)
    model = models.build_backbone(cfg).train()
    head = nn.Linear(model.embed_dim, len(classes))
    opt = torch.optim.AdamW(list(model.parameters()) + list(head.parameters()), lr=args.lr, weight_decay=0.05)
    mean = torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1)
    std = torch.tensor(IMAGENET_STD).view(1, 3, 1, 1)
    gen = torch.Generator().manual_seed(0)
    rc = CeilingConfig(lr=args.lr)
    t0 = time.time()
    for step in range(args.steps):
        idx = torch.randint(0, len(tx), (args.batch,), generator=gen)
        x = _augment(to_float01(tx[idx]), gen)
        for g in opt.param_groups:
            g["lr"] = _lr_at(step, args.steps, rc)
        cls, _ = model((x - mean) / std)
        loss = F.cross_entropy(head(cls), ty[idx])
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
    train_s = time.time() - t0
    model.eval()
    with torch.no_grad():
        pred = torch.cat([head(model((to_float01(v) - mean) / std)[0]).argmax(1) for v in vx.split(256)])
    acc = float((pred == vy).float().mean())
    row = dict(
        name=args.name,
        arch=args.arch,
        width=model.embed_dim,
        depth=args.depth or "",
        patch=args.patch,
        layerscale=args.layerscale,
        lr=args.lr,
        steps=args.steps,
        batch=args.batch,
        train_s=round(train_s, 1),
        s_per_step=round(train_s / args.steps, 3),
        val_top1=acc,
    )
    print(row, flush=True)
    path = HERE / "supervised.csv"
    new = not path.exists()
    with open(path, "a", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(row))
        if new:
            w.writeheader()
        w.writerow(row)


if __name__ == "__main__":
    main()
