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
ImageNet-C-style folder ``<root>/<corruption>/<severity>/<class>/<image>``. The chunked corruption
and the feature extraction are in :mod:`analysis.eval_features`, the probes fitted on cached clean
train features in :mod:`analysis.eval_probes`, the stored rows and the files written from them in
:mod:`analysis.evaluate_outputs`; this module runs the evaluation.

Outputs in ``out`` (rewritten atomically after every cell, so an interrupted run resumes where it
stopped: finished (checkpoint, protocol, corruption, severity) rows are never recomputed):
``results.csv`` (long), ``summary.csv`` (per checkpoint x protocol x corruption), ``summary.json``
(aggregates, settings, checkpoint fingerprints) and ``summary_table.csv`` (the printed table).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Sequence

import torch

from analysis.eval_features import (
    CHUNK,
    chunk_seed,
    corrupt_images,
    corrupted_features,
    cell_features,
    dataset_features,
    default_corrupt_fn,
)
from analysis.evaluate_outputs import (
    RESULT_COLUMNS,
    ResultStore,
    format_table,
    read_previous,
    summary_table,
    write_differences,
    write_outputs,
)
from analysis.eval_probes import fit_probes
from analysis.floors import PixelEncoder, floors
from analysis.metrics import (
    CLEAN,
    alexnet_baseline,
    baseline_from_results,
    normalisation_name,
    parse_corruptions,
    parse_severities,
    topk_accuracy,
)
from analysis.outcomes import FILENAME as OUTCOMES_FILE
from analysis.outcomes import Outcomes
from fdbench.checkpoint import checkpoint_labels, load_backbone
from fdbench.data import (
    check_fingerprint,
    dataset_fingerprint,
    dataset_resolution,
    load_split_tensor,
    open_dataset,
    recorded_root,
    resolve_root,
)
from fdbench.device import resolve_device
from fdbench.errors import FdbenchError
from fdbench.features import FrozenEncoder, eval_image_size
from fdbench.io import (
    file_sha256,
    progress,
)

__all__ = [
    "CHUNK",
    "PROTOCOLS",
    "RESULT_COLUMNS",
    "EvalConfig",
    "EvalReport",
    "checkpoint_labels",
    "chunk_seed",
    "corrupt_images",
    "corrupted_features",
    "dataset_features",
    "default_corrupt_fn",
    "evaluate_corruptions",
    "format_table",
    "parse_protocols",
    "summary_table",
]

PROTOCOLS = ("linear", "knn")


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


# ---- the evaluation -----------------------------------------------------------------------------


def _choose_data(config: EvalConfig, metas: list[dict], announce) -> str:
    for meta in metas:  # a changed dataset at a checkpoint's training path: a warning (see check_fingerprint)
        check_fingerprint(meta.get("data"), config.data or (meta.get("data") or {}).get("root"), announce)
    if config.data:
        return resolve_root(config.data)
    recorded = recorded_root(metas[0], announce, "falling back to the embedded dataset") if metas else None
    if recorded:
        announce(f"no --data given: using the dataset the checkpoint was trained on: {recorded}")
        return recorded
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
    for path, ckpt in zip(checkpoints, loaded):
        if not 1 <= config.n_last_blocks <= len(ckpt.model.blocks):
            raise FdbenchError(
                f"--n-last-blocks must be between 1 and {len(ckpt.model.blocks)} for {path}, got {config.n_last_blocks}"
            )
    fingerprints = {label: file_sha256(ckpt.meta["path"]) for label, ckpt in zip(labels, loaded)}
    entries = [_Entry(label, "pretrained", ckpt, fingerprints[label]) for label, ckpt in zip(labels, loaded)]
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
    root = _choose_data(config, [ckpt.meta for ckpt in loaded], announce)
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
        ResultStore([])
        if config.overwrite
        else ResultStore(read_previous(out, settings, fingerprints), Outcomes.load(out / OUTCOMES_FILE))
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
            label, ckpt = entry.label, entry.loaded
            # floors use the first checkpoint's evaluation size: the same val tensors, the same pixels
            size = _eval_size(ckpt or loaded[0], native)
            resize = size if native else None
            ckpt_info[label] = {
                "kind": entry.kind,
                "path": (ckpt.meta.get("path") if ckpt else None),
                "sha256": entry.fingerprint,
                "source": ckpt.source if ckpt else "pixels",
                "arch": ckpt.config.arch if ckpt else "pixels",
                "patch_size": ckpt.config.patch_size if ckpt else None,
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
            encoder = PixelEncoder(size).to(device) if ckpt is None else _encoder(ckpt, config.n_last_blocks, device)
            probes = fit_probes(
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
                feats, cell_labels = cell_features(
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
                write_outputs(out, store, baseline, settings, ckpt_info)
                bar.update(1)
            encoder.cpu()
    finally:
        bar.close()
    files = write_outputs(out, store, baseline, settings, ckpt_info)
    files["differences"] = write_differences(out, store, baseline, protocols)
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


def _eval_size(ckpt, native: int | None) -> int:
    trained = (ckpt.meta.get("data") or {}).get("image_size") or ckpt.config.img_size
    return eval_image_size(trained, native, ckpt.config.patch_size)


def _encoder(ckpt, n_last_blocks: int, device: torch.device):
    return FrozenEncoder(ckpt.model, n_last_blocks=n_last_blocks).to(device)


def _check_corrupted_root(root: Path, names, severities) -> None:
    if not root.is_dir():
        raise FdbenchError(f"--corrupted-root folder not found: {root}")
    missing = [f"{c}/{s}" for c in names for s in severities if not (root / c / str(s)).is_dir()]
    if missing:
        raise FdbenchError(
            f"{len(missing)} corruption folder(s) missing under {root} (expected "
            f"<root>/<corruption>/<severity>/<class>/<image>), e.g. {', '.join(missing[:3])}"
        )
