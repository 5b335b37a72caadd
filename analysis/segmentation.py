"""``eval-segmentation``: DINOv2's linear segmentation probe on frozen backbones, clean and corrupted.

Per checkpoint (and the random-init floor, the first checkpoint's architecture at a fixed seed):

1. the patch-token maps of the train images are computed once, in memory, and the linear head is
   trained on them (:mod:`analysis.segmentation_probe`); the trained head is cached in
   ``OUT/cache`` so a resumed run does not train it again;
2. per *cell* (corruption, severity; ``("clean", 0)`` first) the val images are corrupted exactly as
   ``eval-corruptions`` corrupts them (the same chunked seeds: the same corrupted pixels), encoded,
   segmented, and scored against the unchanged labels; the cell's per-image counts are written to
   ``OUT/cells/<checkpoint>/<corruption>-<severity>.npz`` (atomically), so a second call skips
   finished cells.

Corruptions that move pixels (:data:`GEOMETRIC`: elastic_transform's affine step and elastic
displacement, zoom_blur's superimposed zoomed copies, which shift content by many pixels away from
the centre) are left out by default: the corruption functions do not expose their displacement, so
the labels cannot be warped with the image, and scoring moved pixels against unmoved labels would
count misregistration as a segmentation error. ``include_geometric`` evaluates them anyway against
the unwarped labels (marked ``labels = unwarped`` in results.csv). glass_blur's local pixel swaps
(1-2 px) and motion_blur's one-sided kernel are blurs of a few pixels and stay in.

Outputs (rewritten after every cell): ``results.csv`` (checkpoint x cell: mIoU, pixel accuracy,
mean accuracy), ``per_class.csv`` (per-class IoU of every cell), ``summary.csv`` / ``summary.json``
(per checkpoint: clean and mean-corrupted mIoU and pixel accuracy; settings; classes) and, at the
end, ``differences.csv``: each checkpoint minus the random-init floor (and minus the first
checkpoint) with paired-bootstrap 95% intervals over the val images.
"""

from __future__ import annotations

import hashlib
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable, Sequence

import torch

from analysis.eval_features import corrupted_features, default_corrupt_fn
from analysis.floors import RANDOM_INIT, floors
from analysis.metrics import CLEAN, parse_corruptions, parse_severities
from analysis.segmentation_outputs import (
    cell_path,
    read_cell,
    read_settings,
    write_cell,
    write_differences,
    write_outputs,
)
from analysis.segmentation_probe import HeadConfig, LinearSegHead, PatchMapEncoder, image_counts, predict, train_head
from fdbench.checkpoint import checkpoint_labels, load_backbone
from fdbench.data import dataset_fingerprint, recorded_root, resolve_root
from fdbench.device import resolve_device
from fdbench.errors import FdbenchError
from fdbench.features import eval_image_size, extract_features
from fdbench.io import atomic_torch_save, file_sha256, progress
from fdbench.segmentation_data import (
    DATASETS,
    detect_dataset,
    load_segmentation_split,
    open_segmentation,
    segmentation_loader,
)

GEOMETRIC = ("elastic_transform", "zoom_blur")
REAL_DATA_SIZE = 448  # a multiple of 14 and 16; DINOv2's linear config trains on 512 crops


@dataclass
class SegConfig:
    """Options of ``fdbench eval-segmentation`` (see the CLI help for each)."""

    data: str | None = None
    dataset: str = "auto"  # ade20k | voc | embedded | auto (from the folder's layout)
    size: int | None = None  # None: the embedded dataset's native size, else REAL_DATA_SIZE
    corruptions: str = "common"  # as eval-corruptions, plus "none" for clean only
    severities: str = "1-5"
    include_geometric: bool = False
    n_last_blocks: int = 1
    head: HeadConfig = field(default_factory=HeadConfig)
    max_train_images: int | None = None
    max_val_images: int | None = None
    max_cache_gb: float = 8.0  # the train patch maps must fit in this much memory
    batch_size: int = 64  # images per encoder batch
    workers: int = 0
    device: str = "auto"
    seed: int = 0
    floors: bool = True
    overwrite: bool = False


@dataclass
class SegReport:
    out: Path
    results: object  # pandas DataFrame (results.csv)
    summary: object  # pandas DataFrame (summary.csv)
    differences: object | None
    computed_cells: int = 0
    skipped_cells: int = 0
    files: dict = field(default_factory=dict)


@dataclass
class _Entry:
    label: str
    kind: str  # pretrained | floor
    loaded: object
    fingerprint: str


def select_cells(config: SegConfig, announce) -> list[tuple[str, int]]:
    """``("clean", 0)`` and the requested (corruption, severity) cells, geometric ones left out
    unless asked for (said when any is dropped)."""
    if (config.corruptions or "").strip().lower() in ("none", "clean", ""):
        return [(CLEAN, 0)]
    names = parse_corruptions(config.corruptions)
    severities = parse_severities(config.severities)
    dropped = [n for n in names if n in GEOMETRIC and not config.include_geometric]
    if dropped:
        announce(f"leaving out {', '.join(dropped)} (they move pixels; --include-geometric scores them anyway)")
    names = [n for n in names if n not in dropped]
    return [(CLEAN, 0)] + [(c, s) for c in names for s in severities]


def evaluate_segmentation(
    checkpoints: Sequence[str | Path],
    out: str | Path,
    config: SegConfig = SegConfig(),
    *,
    corrupt_fn: Callable | None = None,
    announce: Callable[[str], None] | None = None,
) -> SegReport:
    """Train the linear segmentation head on each frozen backbone and score it on every cell."""
    announce = announce or (lambda message: None)
    out = Path(out)
    if not checkpoints:
        raise FdbenchError("no checkpoint given: pass one or more .pt / .safetensors / .pth files")
    if config.dataset not in (*DATASETS, "auto"):
        raise FdbenchError(f"unknown segmentation dataset {config.dataset!r}: use {', '.join(DATASETS)} or auto")
    cells = select_cells(config, announce)
    device = resolve_device(config.device)
    labels = checkpoint_labels(checkpoints)
    loaded = [load_backbone(path) for path in checkpoints]  # bad files fail here, before any work
    for path, ckpt in zip(checkpoints, loaded):
        if not 1 <= config.n_last_blocks <= len(ckpt.model.blocks):
            raise FdbenchError(
                f"--n-last-blocks must be between 1 and {len(ckpt.model.blocks)} for {path}, got {config.n_last_blocks}"
            )
    entries = [_Entry(lb, "pretrained", ck, file_sha256(ck.meta["path"])) for lb, ck in zip(labels, loaded)]
    if config.floors:
        floor = next(f for f in floors(loaded[0], config.seed) if f.label == RANDOM_INIT)
        label = RANDOM_INIT if RANDOM_INIT not in labels else f"floor-{RANDOM_INIT}"
        entries.append(_Entry(label, "floor", floor.loaded, floor.fingerprint))

    root = Path(config.data or _recorded_synthetic(loaded[0].meta, announce) or resolve_root(None, announce=announce))
    kind = detect_dataset(root) if config.dataset == "auto" else config.dataset
    train_source, val_source = open_segmentation(root, kind, "train"), open_segmentation(root, kind, "val")
    classes = val_source.classes
    base_size = config.size or (_native_size(root) if kind == "embedded" else REAL_DATA_SIZE)
    settings = {
        "data": str(root),
        "dataset": kind,
        "data_fingerprint": dataset_fingerprint(root),
        "size": base_size,
        "n_last_blocks": config.n_last_blocks,
        "head": asdict(config.head),
        "max_train_images": config.max_train_images,
        "max_val_images": config.max_val_images,
        "seed": config.seed,
        "checkpoints": {e.label: e.fingerprint for e in entries},
    }
    if config.overwrite:
        _clear(out)
    else:  # the checksums of checkpoints evaluated earlier stay on record (their cells stay on disk)
        settings["checkpoints"] = {**read_settings(out, settings), **settings["checkpoints"]}
    corrupt_fn = corrupt_fn or (default_corrupt_fn() if len(cells) > 1 else None)

    info: dict[str, dict] = {}
    val_cache: dict[int, tuple] = {}
    computed = skipped = 0
    bar = progress(total=len(entries) * len(cells), desc="eval-segmentation", unit="cell")
    try:
        for entry in entries:
            size = eval_image_size(None, base_size, (entry.loaded or loaded[0]).config.patch_size)
            info[entry.label] = {
                "kind": entry.kind,
                "path": entry.loaded.meta.get("path"),
                "sha256": entry.fingerprint,
                "arch": entry.loaded.config.arch,
                "patch_size": entry.loaded.config.patch_size,
                "image_size": size,
            }
            todo = [c for c in cells if read_cell(cell_path(out, entry.label, *c), announce) is None]
            skipped += len(cells) - len(todo)
            bar.update(len(cells) - len(todo))
            if not todo:
                continue
            if size not in val_cache:
                val_cache[size] = load_segmentation_split(
                    val_source, size, limit=config.max_val_images, batch_size=config.batch_size,
                    workers=config.workers, desc="loading val",
                )  # fmt: skip
            val_images, val_labels = val_cache[size]
            encoder = PatchMapEncoder(entry.loaded.model, config.n_last_blocks).to(device)
            head = _head(entry, encoder, train_source, size, len(classes), config, out, settings, device, bar, announce)
            for corruption, severity in todo:
                bar.set_postfix_str(f"{entry.label} {corruption} {severity}" if severity else f"{entry.label} clean")
                if corruption == CLEAN:
                    maps = extract_features(encoder, val_images, batch_size=config.batch_size)
                else:
                    maps = corrupted_features(
                        encoder, val_images, corruption, severity, corrupt_fn, batch_size=config.batch_size,
                        seed=config.seed,
                    )  # fmt: skip
                counts = image_counts(predict(head, maps, tuple(val_labels.shape[-2:])), val_labels, len(classes))
                write_cell(cell_path(out, entry.label, corruption, severity), counts)
                computed += 1
                write_outputs(out, entries_info=info, cells=cells, classes=classes, settings=settings,
                              geometric=GEOMETRIC)  # fmt: skip
                bar.update(1)
            encoder.cpu()
    finally:
        bar.close()
    files = write_outputs(out, entries_info=info, cells=cells, classes=classes, settings=settings, geometric=GEOMETRIC)
    files["differences"], differences = write_differences(out, info, cells, len(classes), seed=config.seed)
    return SegReport(out, files.pop("results_frame"), files.pop("summary_frame"), differences, computed, skipped, files)


def _recorded_synthetic(meta: dict, announce) -> str | None:
    """The synthetic dataset the checkpoint was trained on, when it is here (it has masks to segment);
    other training data (an ImageFolder of classes) has no labels to segment, so it is not used."""
    recorded = recorded_root(meta, announce, "falling back to the embedded dataset")
    if recorded and (Path(recorded) / "dataset.json").is_file():
        announce(f"no --data given: using the synthetic dataset the checkpoint was trained on: {recorded}")
        return recorded
    return None


def _native_size(root: Path) -> int:
    from fdbench.data import dataset_resolution

    return dataset_resolution(root) or REAL_DATA_SIZE


def _clear(out: Path) -> None:
    import shutil

    for name in ("cells", "cache"):
        shutil.rmtree(out / name, ignore_errors=True)
    (out / "settings.json").unlink(missing_ok=True)


def _head(entry, encoder, source, size, num_classes, config, out, settings, device, bar, announce) -> LinearSegHead:
    """The head trained on this encoder's train patch maps (cached in OUT/cache by model and settings)."""
    shared = {k: v for k, v in settings.items() if k != "checkpoints"}  # another checkpoint: same head
    key = hashlib.blake2b(f"{entry.fingerprint}|{size}|{shared}".encode(), digest_size=6).hexdigest()
    cache = out / "cache" / f"{entry.label}-head-{key}.pt"
    channels = encoder.backbone.embed_dim * config.n_last_blocks
    head = LinearSegHead(channels, num_classes)
    if cache.exists():
        try:
            head.load_state_dict(torch.load(cache, weights_only=True, map_location="cpu"))
            return head.to(device).eval()
        except Exception:  # noqa: BLE001 - damaged: train again
            cache.unlink(missing_ok=True)
    n = min(len(source.pairs), config.max_train_images or len(source.pairs))
    grid = size // entry.loaded.config.patch_size
    need = n * (channels * grid * grid * 2 + size * size)
    if need > config.max_cache_gb * 1e9:
        raise FdbenchError(
            f"the train patch maps of {n} images at {size} px need {need / 1e9:.1f} GB of memory, more than "
            f"--max-cache-gb {config.max_cache_gb:g}: use --max-train-images, a smaller --size or a larger --max-cache-gb"
        )
    announce(f"{entry.label}: encoding {n} train images at {size} px, training the linear head")
    maps, labels = [], []
    loader = segmentation_loader(source, size, limit=n, batch_size=config.batch_size, workers=config.workers)
    for images, lab in progress(loader, desc=f"{entry.label} train maps", unit="batch"):
        maps.append(encoder(images).cpu())
        labels.append(lab)
    head = train_head(
        torch.cat(maps), torch.cat(labels), num_classes, config.head, seed=config.seed, device=device, bar=bar
    )
    atomic_torch_save(head.state_dict(), cache)
    return head
