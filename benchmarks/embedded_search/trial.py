"""One trial of the embedded-dataset search: dataset -> floors -> pretrain -> kNN/linear probes.

    python benchmarks/embedded_search/trial.py NAME --data '{"size": 32}' --nuis '{"shift": 0.3}' \
        --set run.epochs=20 --set crops.global_size=32 [--curriculum none]

Appends one row (config diff, floors, pretrained kNN/linear, wall times) to results.csv beside
this script. Probes: kNN k=20 cosine (T=0.07) and the project's linear probe, both fitted on the
whole train split and scored on val; pixels are mean-subtracted per image (kNN) and standardised
per feature (the linear probe standardises). Random-init: the same architecture, seed 0.
"""

from __future__ import annotations

import argparse
import csv
import hashlib
import json
import os
import time
from pathlib import Path

import torch

from analysis.probes import fit_linear_probe, knn_probe
from fdbench.checkpoint import load_backbone
from fdbench.data import load_split_tensor
from fdbench.features import FrozenEncoder, extract_features
from fdbench.models import ARCHS, build_backbone
from fdbench.synthetic import Nuisances, SyntheticSpec, make_synthetic_dataset
from pretrain.config import preset
from pretrain.engine import train

HERE = Path(__file__).parent
WORK = Path("/tmp/embedded_search")


def probes(train_x, train_y, val_x, val_y, *, linear=True):
    knn = knn_probe(train_x, train_y, num_classes=10)
    out = {"knn": float((knn.predict(val_x) == val_y).float().mean())}
    if linear:
        lin = fit_linear_probe(train_x, train_y, num_classes=10, epochs=100)
        out["linear"] = float((lin.predict(val_x) == val_y).float().mean())
    return out


def encode(model, x):
    return extract_features(FrozenEncoder(model), x, batch_size=256)


def set_path(cfg, dotted, value):
    obj = cfg
    *parents, leaf = dotted.split(".")
    for p in parents:
        obj = getattr(obj, p)
    old = getattr(obj, leaf)
    if isinstance(old, tuple):
        value = tuple(value)
    setattr(obj, leaf, value)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("name")
    ap.add_argument("--data", default="{}")
    ap.add_argument("--nuis", default="{}")
    ap.add_argument("--set", action="append", default=[])
    ap.add_argument("--curriculum", default="none")
    ap.add_argument("--floors-only", action="store_true")
    ap.add_argument("--dims", help="WIDTH,DEPTH,HEADS: register and use an architecture 'vit_custom'")
    args = ap.parse_args()
    if args.dims:
        ARCHS["vit_custom"] = tuple(int(v) for v in args.dims.split(","))
    threads = int(os.environ.get("TRIAL_THREADS", "2"))  # 1 beats 2 on a machine shared with other jobs
    torch.set_num_threads(threads)

    nuis = {k: tuple(v) if isinstance(v, list) else v for k, v in json.loads(args.nuis).items()}
    spec = SyntheticSpec(**json.loads(args.data), nuisances=Nuisances(**nuis))
    key = f"{spec.folder_name()}-{hashlib.sha1(repr(spec.nuisances).encode()).hexdigest()[:8]}"
    t0 = time.time()
    root = make_synthetic_dataset(WORK / "data" / key, spec, workers=2)
    gen_s = time.time() - t0
    tx, ty, _ = load_split_tensor(root, "train", spec.size)
    vx, vy, _ = load_split_tensor(root, "val", spec.size)

    def pix(x):
        f = x.float().flatten(1) / 255
        return f - f.mean(1, keepdim=True)

    cfg = preset("cpu-tiny")
    cfg.curriculum.name = args.curriculum
    if args.dims:
        cfg.model.arch = "vit_custom"
    for item in args.set:
        k, v = item.split("=", 1)
        set_path(cfg, k, json.loads(v))
    # the floors depend on the data and the architecture only: computed once per pair
    cache = root / f"floors-{cfg.model.arch}{args.dims or ''}-p{cfg.model.patch_size}.json"
    if cache.exists():
        pixel, rnd = json.loads(cache.read_text())
    else:
        pixel = probes(pix(tx), ty, pix(vx), vy)
        torch.manual_seed(0)
        rand = build_backbone(cfg.model.arch, img_size=spec.size, patch_size=cfg.model.patch_size)
        rnd = probes(encode(rand, tx), ty, encode(rand, vx), vy)
        cache.write_text(json.dumps([pixel, rnd]))
    row = {
        "name": args.name,
        "curriculum": args.curriculum,
        "data": args.data,
        "nuis": repr(spec.nuisances),
        "sets": " ".join(args.set),
        "gen_s": round(gen_s, 1),
        "pix_knn": pixel["knn"],
        "pix_lin": pixel["linear"],
        "rand_knn": rnd["knn"],
        "rand_lin": rnd["linear"],
    }
    print(row, flush=True)
    if not args.floors_only:
        cfg.data.root = str(root)
        cfg.run.out = str(WORK / "runs" / args.name)
        if not any(item.startswith("run.eval_every=") for item in args.set):
            cfg.run.eval_every = 0
        cfg.run.threads = threads
        cfg.run.device = "cpu"
        t0 = time.time()
        result = train(cfg, log=lambda m: None)
        row["train_s"] = round(time.time() - t0, 1)
        model = load_backbone(result.final).model
        pre = probes(encode(model, tx), ty, encode(model, vx), vy)
        row.update(
            pre_knn=pre["knn"],
            pre_lin=pre["linear"],
            steps=result.summary.get("steps") or result.summary.get("iterations"),
        )
        best = max(row["pix_knn"], row["pix_lin"], row["rand_knn"], row["rand_lin"])
        row["gap_knn"] = round(pre["knn"] - best, 4)
        row["gap_lin"] = round(pre["linear"] - best, 4)
    print(row, flush=True)
    path = HERE / "results.csv"
    cols = [
        "name",
        "curriculum",
        "data",
        "nuis",
        "sets",
        "gen_s",
        "pix_knn",
        "pix_lin",
        "rand_knn",
        "rand_lin",
        "train_s",
        "steps",
        "pre_knn",
        "pre_lin",
        "gap_knn",
        "gap_lin",
    ]
    new = not path.exists()
    with open(path, "a", newline="") as f:
        w = csv.DictWriter(f, fieldnames=cols)
        if new:
            w.writeheader()
        w.writerow({c: row.get(c, "") for c in cols})


if __name__ == "__main__":
    main()
