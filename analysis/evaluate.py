"""``eval-corruptions``: clean and corrupted accuracy of frozen backbones under linear / kNN probes.

One *cell* is (checkpoint, corruption, severity); the clean cell is ``("clean", 0)``. Per checkpoint:

1. the clean train features are extracted once (and cached under ``OUT/cache``), the probes are fit
   on them;
2. per cell, the val images are corrupted once, encoded once, and every requested probe scores the
   same features, giving one results row per protocol.

Corrupted images are made on the fly on the evaluation device (``corruptions.corrupt``, torch
backend) in fixed chunks of ``CHUNK`` images, each chunk with its own seed derived from
(seed, corruption, severity, index of its first image). The corrupted images therefore do not depend
on the batch size, the checkpoint or the order of evaluation: every checkpoint of every call sees
identical inputs (on a given device type). Alternatively ``corrupted_root`` reads an
ImageNet-C-style folder ``<root>/<corruption>/<severity>/<class>/<image>``.

Outputs in ``out`` (rewritten atomically after every cell, so an interrupted run resumes where it
stopped: finished (checkpoint, protocol, corruption, severity) rows are never recomputed):
``results.csv`` (long), ``summary.csv`` (per checkpoint x protocol x corruption), ``summary.json``
(aggregates, settings, checkpoint fingerprints) and ``summary_table.csv`` (the printed table).
"""

from __future__ import annotations

import hashlib
import json
import math
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Sequence

import torch

from analysis.metrics import (
    CLEAN,
    GROUPS,
    UNNORMALISED,
    alexnet_baseline,
    baseline_from_results,
    check_results,
    normalisation_name,
    parse_corruptions,
    parse_severities,
    summarise,
    topk_accuracy,
)
from analysis.floors import PixelEncoder, floors
from analysis.outcomes import FILENAME as OUTCOMES_FILE
from analysis.outcomes import Outcomes
from analysis.probes import fit_linear_probe, knn_probe
from analysis.stats import differences
from fdbench.errors import FdbenchError

PROTOCOLS = ("linear", "knn")
RESULT_COLUMNS = ["checkpoint", "kind", "protocol", "corruption", "severity", "n", "top1", "top5"]
KINDS = ("pretrained", "floor", "ceiling")
CHUNK = 32  # images per corruption seed; batches are whole numbers of chunks
# settings that must match for stored results to be reused
RESUME_KEYS = ("data", "data_fingerprint", "corrupted_root", "seed", "n_last_blocks", "k", "temperature")


@dataclass
class EvalConfig:
    """Options of ``fdbench eval-corruptions`` (see the CLI help for each)."""

    data: str | None = None
    protocol: str = "both"  # linear | knn | both
    corruptions: str = "common"  # common | extra | all | group | comma-separated names
    severities: str = "1-5"
    corrupted_root: str | None = None
    baseline: str | None = None
    batch_size: int = 256
    device: str = "auto"
    seed: int = 0
    n_last_blocks: int = 1
    k: int = 20
    temperature: float = 0.07
    workers: int = 0
    overwrite: bool = False
    floors: bool = True  # also evaluate the pixels and random-init floors
    ceiling: str | None = None  # a `fdbench ceiling` checkpoint, evaluated as kind "ceiling"


@dataclass
class EvalReport:
    out: Path
    results: "object"  # pandas DataFrame, results.csv
    summary: "object"  # pandas DataFrame, summary.csv
    aggregates: dict  # summary.json["checkpoints"][label]["protocols"]
    table: "object"  # pandas DataFrame, summary_table.csv (the printed table)
    normalisation: str
    computed_cells: int = 0
    skipped_cells: int = 0
    files: dict = field(default_factory=dict)


def parse_protocols(spec: str) -> list[str]:
    spec = (spec or "").strip().lower()
    if spec == "both":
        return list(PROTOCOLS)
    if spec in PROTOCOLS:
        return [spec]
    raise FdbenchError(f"unknown protocol {spec!r}: use linear, knn or both")


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
    parts = [
        corrupt_fn(
            images[i : i + CHUNK], corruption, severity, generator=chunk_seed(seed, corruption, severity, start + i)
        )
        for i in range(0, len(images), CHUNK)
    ]
    return torch.cat(parts)


def default_corrupt_fn() -> Callable:
    """``corruptions.corrupt`` with the torch backend and the severity table picked by image size."""
    from corruptions import corrupt

    def fn(images, name, severity, generator=None):
        return corrupt(images, name, severity, backend="torch", generator=generator, params="auto")

    return fn


def checkpoint_labels(paths: Sequence[str | Path]) -> list[str]:
    """Short unique names: ``runs/x/final.pt`` -> ``x``, ``runs/x/checkpoints/e10.pt`` -> ``x-e10``,
    a run folder -> its name, any other file -> its stem; repeats get ``-2``, ``-3``, ..."""
    labels = []
    for raw in paths:
        p = Path(raw)
        if p.is_dir():
            name = p.resolve().name
        elif p.parent.name == "checkpoints":
            name = f"{p.parent.parent.resolve().name}-{p.stem}"
        elif p.stem == "final":
            name = p.parent.resolve().name
        else:
            name = p.stem
        name = re.sub(r"[^A-Za-z0-9_.+-]+", "_", name) or "checkpoint"
        label, i = name, 2
        while label in labels:
            label, i = f"{name}-{i}", i + 1
        labels.append(label)
    return labels


def file_sha256(path: str | Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


# ---- features -----------------------------------------------------------------------------------


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
    from torch.utils.data import DataLoader

    from fdbench.io import progress

    loader = DataLoader(dataset, batch_size=batch_size, num_workers=workers, shuffle=False)
    feats, labels = [], []
    for x, y in progress(loader, desc=desc, unit="batch"):
        feats.append(encoder(x).cpu())
        labels.append(torch.as_tensor(y))
    if not feats:
        raise FdbenchError(f"no images to encode ({desc or 'dataset'})")
    return torch.cat(feats), torch.cat(labels)


# ---- the evaluation -----------------------------------------------------------------------------


class _Store:
    """results.csv rows and per-image outcomes in memory, keyed by (checkpoint, protocol, corruption,
    severity). A cell counts as finished only with both (older folders without outcomes.npz are
    recomputed cell by cell, so their paired statistics become available)."""

    def __init__(self, rows: list[dict], outcomes: Outcomes | None = None):
        self.rows = {(r["checkpoint"], r["protocol"], r["corruption"], int(r["severity"])): r for r in rows}
        self.outcomes = outcomes or Outcomes()

    def has(self, label, protocol, corruption, severity) -> bool:
        key = (label, protocol, corruption, severity)
        return key in self.rows and key in self.outcomes

    def add(self, row: dict, correct) -> None:
        key = (row["checkpoint"], row["protocol"], row["corruption"], row["severity"])
        self.rows[key] = row
        self.outcomes.add(key, correct)

    def frame(self):
        import pandas as pd

        return pd.DataFrame(list(self.rows.values()), columns=RESULT_COLUMNS)


_CHANGED = {"data_fingerprint": "data_fingerprint: the dataset's files changed"}


def _read_previous(out: Path, settings: dict, fingerprints: dict[str, str]) -> list[dict]:
    """Rows of an earlier run in ``out`` that may be reused; a clear error if its settings differ."""
    import pandas as pd

    results, summary = out / "results.csv", out / "summary.json"
    if not results.exists():
        return []
    try:
        frame = pd.read_csv(results)
        previous = json.loads(summary.read_text()) if summary.exists() else {}
    except (ValueError, OSError) as err:
        raise FdbenchError(f"cannot resume from {out}: {err}; use another --out or --overwrite") from None
    if "kind" not in frame.columns and list(frame.columns) == [c for c in RESULT_COLUMNS if c != "kind"]:
        frame.insert(1, "kind", "pretrained")  # written before floors existed
    if list(frame.columns) != RESULT_COLUMNS:
        raise FdbenchError(f"{results} is not an eval-corruptions results.csv; use another --out or --overwrite")
    try:
        check_results(frame, results)
    except FdbenchError as err:
        raise FdbenchError(f"{err}; use another --out or --overwrite") from None
    old = previous.get("settings", {})
    changed = [k for k in RESUME_KEYS if k in old and old[k] != settings[k]]
    if changed:
        raise FdbenchError(
            f"{out} holds results computed with other settings ({', '.join(_CHANGED.get(k, k) for k in changed)}); "
            f"use another --out, or --overwrite to discard them"
        )
    for label, info in previous.get("checkpoints", {}).items():
        if label in fingerprints and info.get("sha256") not in (None, fingerprints[label]):
            raise FdbenchError(
                f"{out} holds results of another file named {label!r} (checksum differs); "
                f"use another --out, or --overwrite to discard them"
            )
    frame["checkpoint"] = frame["checkpoint"].astype(str)
    return frame.to_dict("records")


def _choose_data(config: EvalConfig, metas: list[dict], announce) -> str:
    from fdbench.data import check_fingerprint, resolve_root

    for meta in metas:  # a changed dataset at a checkpoint's training path: a warning (see check_fingerprint)
        check_fingerprint(meta.get("data"), config.data or (meta.get("data") or {}).get("root"), announce)
    if config.data:
        return resolve_root(config.data)
    recorded = (metas[0].get("data") or {}).get("root") if metas else None
    if recorded and (Path(recorded).exists() or re.match(r"^(cifar10|cifar100|stl10):", str(recorded))):
        announce(f"no --data given: using the dataset the checkpoint was trained on: {recorded}")
        return str(recorded)
    if recorded:
        announce(f"the checkpoint's training data {recorded} is not here; falling back to the embedded dataset")
    return resolve_root(None, announce=announce)


def _choose_baseline(config: EvalConfig, num_classes: int):
    if config.baseline:
        return baseline_from_results(config.baseline)
    if num_classes == 1000:
        return alexnet_baseline()
    return None


def evaluate_corruptions(
    checkpoints: Sequence[str | Path],
    out: str | Path,
    config: EvalConfig = EvalConfig(),
    *,
    corrupt_fn: Callable | None = None,
    announce: Callable[[str], None] | None = None,
) -> EvalReport:
    """Evaluate each checkpoint on clean and corrupted val images; write and return the results.

    ``corrupt_fn(images, name, severity, generator=seed)`` replaces ``corruptions.corrupt`` (tests,
    other corruption sources); it must return images of the same dtype and shape.
    """
    from fdbench.checkpoint import load_backbone
    from fdbench.data import dataset_fingerprint, dataset_resolution, load_split_tensor, open_dataset
    from fdbench.device import resolve_device
    from fdbench.io import progress

    announce = announce or (lambda message: None)
    out = Path(out)
    if not checkpoints:
        raise FdbenchError("no checkpoint given: pass one or more .pt / .safetensors / .pth files")
    protocols = parse_protocols(config.protocol)
    names = parse_corruptions(config.corruptions)
    severities = parse_severities(config.severities)
    if config.batch_size < 1:
        raise FdbenchError(f"--batch-size must be at least 1, got {config.batch_size}")
    device = resolve_device(config.device)

    labels = checkpoint_labels(checkpoints)
    loaded = [load_backbone(path) for path in checkpoints]  # bad files fail here, before any work
    for path, lb in zip(checkpoints, loaded):
        if not 1 <= config.n_last_blocks <= len(lb.model.blocks):
            raise FdbenchError(
                f"--n-last-blocks must be between 1 and {len(lb.model.blocks)} for {path}, got {config.n_last_blocks}"
            )
    fingerprints = {label: file_sha256(lb.meta["path"]) for label, lb in zip(labels, loaded)}
    entries = [_Entry(label, "pretrained", lb, fingerprints[label]) for label, lb in zip(labels, loaded)]
    if config.ceiling:
        ceiling = load_backbone(config.ceiling)
        label = "ceiling" if "ceiling" not in labels else "supervised-ceiling"
        fingerprints[label] = file_sha256(ceiling.meta["path"])
        entries.append(_Entry(label, "ceiling", ceiling, fingerprints[label]))
    if config.floors:
        for floor in floors(loaded[0], config.seed):
            label = floor.label if floor.label not in labels else f"floor-{floor.label}"
            entries.append(_Entry(label, "floor", floor.loaded, floor.fingerprint))
            fingerprints[label] = floor.fingerprint
    root = _choose_data(config, [lb.meta for lb in loaded], announce)
    corrupted_root = Path(config.corrupted_root) if config.corrupted_root else None
    if corrupted_root is not None:
        _check_corrupted_root(corrupted_root, names, severities)
    elif corrupt_fn is None:
        corrupt_fn = default_corrupt_fn()
    settings = {
        "data": root,
        "data_fingerprint": dataset_fingerprint(root),  # another dataset at the same path is not resumed
        "corrupted_root": str(corrupted_root) if corrupted_root else None,
        "seed": config.seed,
        "n_last_blocks": config.n_last_blocks,
        "k": config.k,
        "temperature": config.temperature,
    }
    # opening val checks the data early and gives the class count that picks the normalisation
    num_classes = len(open_dataset(root, "val").classes)
    baseline = _choose_baseline(config, num_classes)
    announce(f"normalisation: {normalisation_name(baseline)}")
    store = (
        _Store([])
        if config.overwrite
        else _Store(_read_previous(out, settings, fingerprints), Outcomes.load(out / OUTCOMES_FILE))
    )
    if store.rows:
        announce(f"resuming: {len(store.rows)} finished result rows found in {out}/results.csv")

    native = dataset_resolution(root)
    cells = [(CLEAN, 0)] + [(c, s) for c in names for s in severities]
    val_cache: dict[int, tuple] = {}
    ckpt_info: dict[str, dict] = {}
    computed = skipped = 0
    bar = progress(total=len(entries) * len(cells), desc="eval-corruptions", unit="cell")
    try:
        for entry in entries:
            label, lb = entry.label, entry.loaded
            # floors use the first checkpoint's evaluation size: the same val tensors, the same pixels
            size = _eval_size(lb or loaded[0], native)
            resize = size if native else None
            ckpt_info[label] = {
                "kind": entry.kind,
                "path": (lb.meta.get("path") if lb else None),
                "sha256": entry.fingerprint,
                "source": lb.source if lb else "pixels",
                "arch": lb.config.arch if lb else "pixels",
                "patch_size": lb.config.patch_size if lb else None,
                "image_size": size,
            }
            todo = [(c, s) for c, s in cells if not all(store.has(label, p, c, s) for p in protocols)]
            skipped += len(cells) - len(todo)
            bar.update(len(cells) - len(todo))
            if not todo:
                continue
            if size not in val_cache:
                val_cache[size] = load_split_tensor(
                    root,
                    "val",
                    size,
                    resize=resize,
                    workers=config.workers,
                    batch_size=config.batch_size,
                    desc="loading val",
                )
            val_images, val_labels, classes = val_cache[size]
            encoder = PixelEncoder(size).to(device) if lb is None else _encoder(lb, config.n_last_blocks, device)
            probes = _fit_probes(
                encoder,
                label,
                root,
                size,
                resize,
                classes,
                protocols,
                config,
                out,
                f"{entry.fingerprint}|{settings['data_fingerprint']}",  # the cache key: model and data
                device,
                announce,
            )
            if "linear" in probes:
                lin = probes["linear"]
                ckpt_info[label]["linear_probe"] = {
                    "lr": lin.lr,
                    "weight_decay": lin.weight_decay,
                    "heldout_train_accuracy": lin.val_accuracy,
                }
            for corruption, severity in todo:
                bar.set_postfix_str(f"{label} {corruption} {severity}" if severity else f"{label} clean")
                feats, cell_labels = _cell_features(
                    encoder,
                    val_images,
                    val_labels,
                    corruption,
                    severity,
                    corrupt_fn,
                    corrupted_root,
                    classes,
                    size,
                    config,
                )
                for protocol in protocols:
                    logits = probes[protocol].logits(feats.to(device))
                    acc = topk_accuracy(logits, cell_labels, ks=(1, 5))
                    # the same top-1 rule as topk_accuracy, per image, for the paired statistics
                    correct = (logits.topk(1, dim=1).indices[:, 0].cpu() == cell_labels.cpu()).numpy()
                    store.add(
                        {
                            "checkpoint": label,
                            "kind": entry.kind,
                            "protocol": protocol,
                            "corruption": corruption,
                            "severity": severity,
                            "n": len(cell_labels),
                            "top1": acc[1],
                            "top5": acc[5],
                        },
                        correct,
                    )
                computed += 1
                _write_outputs(out, store, baseline, settings, ckpt_info)
                bar.update(1)
            encoder.cpu()
    finally:
        bar.close()
    files = _write_outputs(out, store, baseline, settings, ckpt_info)
    files["differences"] = _write_differences(out, store, baseline, protocols)
    return EvalReport(
        out,
        *files["frames"],
        normalisation=files["normalisation"],
        computed_cells=computed,
        skipped_cells=skipped,
        files={k: v for k, v in files.items() if k not in ("frames", "normalisation")},
    )


@dataclass
class _Entry:
    """One encoder to evaluate: a checkpoint (kind pretrained) or a floor (``loaded`` None: pixels)."""

    label: str
    kind: str
    loaded: object
    fingerprint: str


def _eval_size(lb, native: int | None) -> int:
    from fdbench.features import eval_image_size

    trained = (lb.meta.get("data") or {}).get("image_size") or lb.config.img_size
    return eval_image_size(trained, native, lb.config.patch_size)


def _encoder(lb, n_last_blocks: int, device: torch.device):
    from fdbench.features import FrozenEncoder

    return FrozenEncoder(lb.model, n_last_blocks=n_last_blocks).to(device)


def _fit_probes(encoder, label, root, size, resize, classes, protocols, config, out, sha, device, announce):
    """Clean train features (cached in OUT/cache, keyed by checkpoint checksum and settings) -> probes."""
    from fdbench.data import check_same_classes, eval_transform, open_dataset
    from fdbench.io import atomic_torch_save

    key = hashlib.blake2b(f"{sha}|{root}|{size}|{resize}|{config.n_last_blocks}".encode(), digest_size=6).hexdigest()
    cache = out / "cache" / f"{label}-train-{key}.pt"
    stored = _read_feature_cache(cache, announce)
    if stored is not None:
        feats, labels = stored
    else:
        train = open_dataset(root, "train", eval_transform(size, resize))
        check_same_classes(list(train.classes), list(classes), root)
        announce(f"{label}: encoding {len(train)} train images at {size} px")
        feats, labels = dataset_features(
            encoder, train, batch_size=config.batch_size, workers=config.workers, desc=f"{label} train features"
        )
        atomic_torch_save({"feats": feats, "labels": labels}, cache)
    probes = {}
    if "linear" in protocols:
        lin = probes["linear"] = fit_linear_probe(
            feats, labels, seed=config.seed, device=device, num_classes=len(classes)
        )
        announce(
            f"{label}: linear probe lr {lin.lr:g}, weight decay {lin.weight_decay:g}"
            + (f" (held-out train accuracy {lin.val_accuracy:.3f})" if lin.val_accuracy is not None else "")
        )
    if "knn" in protocols:
        probes["knn"] = knn_probe(
            feats, labels, k=config.k, temperature=config.temperature, device=device, num_classes=len(classes)
        )
    return probes


def _read_feature_cache(cache: Path, announce) -> tuple[torch.Tensor, torch.Tensor] | None:
    """The cached (features, labels), or None when absent or damaged (a kill or a full disk mid-way
    through another tool's copy, a hand edit): a damaged cache only costs its recomputation."""
    if not cache.exists():
        return None
    try:
        stored = torch.load(cache, weights_only=True)
        if not isinstance(stored, dict) or not {"feats", "labels"} <= set(stored):
            raise ValueError("no 'feats' and 'labels' tensors")
        feats, labels = stored["feats"], stored["labels"]
        ok = (
            isinstance(feats, torch.Tensor)
            and isinstance(labels, torch.Tensor)
            and feats.ndim == 2
            and labels.ndim == 1
            and len(feats) == len(labels) > 0
            and feats.is_floating_point()
            and not labels.is_floating_point()
        )
        if not ok:
            raise ValueError("the tensors have the wrong shapes or types")
    except Exception as err:  # noqa: BLE001 - the unpickler raises all sorts on a torn file
        first = str(err).strip().splitlines()[0].split(". ")[0][:120] if str(err).strip() else type(err).__name__
        announce(f"warning: the feature cache {cache} is damaged ({first}); recomputing it")
        cache.unlink(missing_ok=True)
        return None
    return feats, labels


def _check_corrupted_root(root: Path, names, severities) -> None:
    if not root.is_dir():
        raise FdbenchError(f"--corrupted-root folder not found: {root}")
    missing = [f"{c}/{s}" for c in names for s in severities if not (root / c / str(s)).is_dir()]
    if missing:
        raise FdbenchError(
            f"{len(missing)} corruption folder(s) missing under {root} (expected "
            f"<root>/<corruption>/<severity>/<class>/<image>), e.g. {', '.join(missing[:3])}"
        )


def _cell_features(
    encoder, val_images, val_labels, corruption, severity, corrupt_fn, corrupted_root, classes, size, config
) -> tuple[torch.Tensor, torch.Tensor]:
    """(features, labels) of one cell's val images; the labels are the val labels except for a
    ``--corrupted-root`` folder, which carries its own."""
    from fdbench.data import ImageFolderDataset, eval_transform
    from fdbench.features import extract_features

    if corruption == CLEAN:
        return extract_features(encoder, val_images, batch_size=config.batch_size), val_labels
    if corrupted_root is not None:
        # stored corrupted images are already cropped: only resize to the evaluation size
        ds = ImageFolderDataset(corrupted_root / corruption / str(severity), eval_transform(size, size), classes)
        return dataset_features(encoder, ds, batch_size=config.batch_size, workers=config.workers)
    return corrupted_features(
        encoder, val_images, corruption, severity, corrupt_fn, batch_size=config.batch_size, seed=config.seed
    ), val_labels


# ---- outputs ------------------------------------------------------------------------------------


def _clean_nan(obj):
    if isinstance(obj, dict):
        return {k: _clean_nan(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_clean_nan(v) for v in obj]
    if isinstance(obj, float) and math.isnan(obj):
        return None
    return obj


def summary_table(summary, aggregates: dict, normalised: bool):
    """The printed table: one row per corruption / aggregate, two columns per checkpoint x protocol
    (mean top-1 accuracy % and CE %, or mean error % when there is no normalisation)."""
    import pandas as pd

    second = "CE %" if normalised else "mean err % (unnormalised)"
    columns, data = [], {}
    order = list(dict.fromkeys(summary["corruption"])) if len(summary) else []
    row_names = (
        ["clean"] + order + [f"{g} (mean)" for g in GROUPS] + ["common (mean)", "mCE", "relative mCE", "extra (mean)"]
    )
    for ckpt, per_protocol in aggregates.items():
        for protocol, agg in per_protocol.items():
            acc_col, err_col = f"{ckpt}:{protocol} top1 %", f"{ckpt}:{protocol} {second}"
            columns += [acc_col, err_col]
            rows = summary[(summary["checkpoint"] == ckpt) & (summary["protocol"] == protocol)].set_index("corruption")
            acc = {"clean": agg["clean_top1"]}
            err = {"clean": agg["clean_error"] if not normalised else math.nan}
            for c in rows.index:
                acc[c] = rows.loc[c, "top1"]
                err[c] = rows.loc[c, "ce"] if normalised else rows.loc[c, "error"]
            for g, block in agg["groups"].items():
                acc[f"{g} (mean)"] = block["top1"]
                err[f"{g} (mean)"] = block["ce"] if normalised else block["error"]
            acc["common (mean)"] = agg["mean_corrupted_top1"]
            err["common (mean)"] = agg["mCE"] if normalised else agg["mean_corrupted_error"]
            if normalised:
                err["mCE"], err["relative mCE"] = agg["mCE"], agg["relative_mCE"]
            if agg["extra"]:
                acc["extra (mean)"] = agg["extra"]["top1"]
                err["extra (mean)"] = agg["extra"]["ce"] if normalised else agg["extra"]["error"]
            # percentages to 3 decimals: the CSV reads like the printed table, without float noise
            data[acc_col] = [round(100 * acc.get(r, math.nan), 3) for r in row_names]
            data[err_col] = [round(100 * err.get(r, math.nan), 3) for r in row_names]
    table = pd.DataFrame({"row": row_names, **{c: data[c] for c in columns}})
    # drop rows with nothing in them (groups not evaluated, mCE rows without normalisation)
    return table[table[columns].notna().any(axis=1)].reset_index(drop=True) if columns else table


def format_table(table) -> str:
    return table.to_string(index=False, float_format=lambda v: f"{v:.1f}", na_rep="-")


def _write_outputs(out: Path, store: _Store, baseline, settings: dict, ckpt_info: dict) -> dict:
    from fdbench.io import atomic_write_csv, atomic_write_json

    results = store.frame()
    summary, aggregates = summarise(results.drop(columns="kind"), baseline)
    kinds = dict(zip(results["checkpoint"], results["kind"]))
    summary.insert(1, "kind", summary["checkpoint"].map(kinds))
    normalisation = normalisation_name(baseline)
    table = summary_table(summary, aggregates, normalised=normalisation != UNNORMALISED)
    paths = {
        "results": out / "results.csv",
        "summary": out / "summary.csv",
        "summary_json": out / "summary.json",
        "table": out / "summary_table.csv",
        "outcomes": out / OUTCOMES_FILE,
    }
    # outcomes first: a row in results.csv without its outcomes is recomputed on resume, never the reverse
    store.outcomes.save(paths["outcomes"])
    atomic_write_csv(paths["results"], results)
    atomic_write_csv(paths["summary"], summary)
    atomic_write_csv(paths["table"], table)
    previous = {}
    if paths["summary_json"].exists():
        try:
            previous = json.loads(paths["summary_json"].read_text()).get("checkpoints", {})
        except (ValueError, OSError):
            previous = {}
    checkpoints = {}
    for label in aggregates:
        info = {**previous.get(label, {}), **ckpt_info.get(label, {})}
        info.pop("protocols", None)
        checkpoints[label] = {**info, "protocols": aggregates[label]}
    atomic_write_json(
        paths["summary_json"],
        _clean_nan(
            {
                "normalisation": normalisation,
                "settings": settings,
                "checkpoints": checkpoints,
                "notes": [
                    "accuracies and errors are fractions in [0, 1]; mCE and relative mCE average the common "
                    "corruptions evaluated (see common_corruptions); group means use the common corruptions only"
                ],
            }
        ),
    )
    return {**paths, "frames": (results, summary, aggregates, table), "normalisation": normalisation}


def _denominators(baseline, protocol: str, store: _Store, label: str) -> dict | None:
    """corruption -> sum_s B(s, c) over the evaluated severities (the mCE denominators), or None."""
    base = baseline.get(protocol) if isinstance(baseline, dict) else baseline
    if base is None:
        return None
    severities: dict[str, list[int]] = {}
    for ck, p, c, s in store.rows:
        if ck == label and p == protocol and c != CLEAN:
            severities.setdefault(c, []).append(s)
    out = {}
    for corruption, sev in severities.items():
        errors = base.severity_errors(corruption, sorted(sev))
        if errors is not None:
            out[corruption] = float(sum(errors))
    return out


def difference_pairs(store: _Store) -> list[tuple[str, str]]:
    """(reference, other): every later pretrained checkpoint against the first, and every pretrained
    checkpoint against each floor and ceiling (the difference is pretrained minus floor)."""
    kinds = dict((r["checkpoint"], r["kind"]) for r in store.rows.values())
    pretrained = [k for k, v in kinds.items() if v == "pretrained"]
    others = [k for k, v in kinds.items() if v != "pretrained"]
    pairs = [(pretrained[0], b) for b in pretrained[1:]] if pretrained else []
    return pairs + [(floor, ckpt) for ckpt in pretrained for floor in others]


def _write_differences(out: Path, store: _Store, baseline, protocols) -> Path:
    """differences.csv: paired bootstrap intervals and McNemar p-values for ``difference_pairs``."""
    import pandas as pd

    from fdbench.io import atomic_write_csv

    frames = [
        differences(store.outcomes, a, b, protocol, denominators=_denominators(baseline, protocol, store, a))
        for a, b in difference_pairs(store)
        for protocol in protocols
    ]
    path = out / "differences.csv"
    frames = [f for f in frames if len(f)]
    atomic_write_csv(path, pd.concat(frames, ignore_index=True) if frames else differences(store.outcomes, "", "", ""))
    return path
