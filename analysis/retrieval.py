"""``eval-retrieval``: instance retrieval (revisited Oxford/Paris protocol) of frozen backbones, clean
and with corrupted queries.

One *cell* is (checkpoint, corruption, severity); the clean cell is ``("clean", 0)``. Per entry
(each checkpoint, then the floors ``pixels`` and ``random-init`` as in eval-corruptions), the clean
database is encoded once; per cell, the queries (cropped to their boxes) are corrupted (the
database never is), encoded, and every query ranks the whole database by cosine similarity; mAP and
mP@k follow :mod:`analysis.retrieval_metrics`. Descriptors: :mod:`analysis.retrieval_features`;
data and image sizes: :mod:`fdbench.retrieval_data`; files: :mod:`analysis.retrieval_outputs`.

Evaluation size (``image_size``): the longer side of every image; default the embedded set's native
size, else 224 (DINO's ``--imsize`` default), rounded down to whole patches.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Sequence

from analysis.eval_features import default_corrupt_fn
from analysis.floors import PixelEncoder, floors
from analysis.metrics import CLEAN, parse_corruptions, parse_severities
from analysis.retrieval_features import backbone_descriptors, corrupt_queries, pixel_descriptors
from analysis.retrieval_metrics import KS, evaluate_rankings, rank_database
from analysis.retrieval_outputs import RetrievalStore, format_table, read_previous, write_outputs
from fdbench.checkpoint import checkpoint_labels, load_backbone
from fdbench.device import resolve_device
from fdbench.errors import FdbenchError
from fdbench.features import FrozenEncoder, eval_image_size
from fdbench.io import file_sha256, progress, read_json
from fdbench.retrieval_data import load_images, open_retrieval_set

__all__ = ["RetrievalConfig", "RetrievalReport", "evaluate_retrieval", "format_table"]
DEFAULT_SIZE = 224


@dataclass
class RetrievalConfig:
    """Options of ``fdbench eval-retrieval`` (see the CLI help for each)."""

    data: str | None = None  # a folder with jpg/ + gnd_*.pkl, or the embedded set's; None: the embedded set
    dataset: str | None = None  # roxford5k | rparis6k | ...: which gnd_<name> file when several
    image_size: int | None = None
    multiscale: bool = False
    corruptions: str | None = None  # None: clean only; else as eval-corruptions (common, all, noise, names)
    severities: str = "1-5"
    batch_size: int = 64
    device: str = "auto"
    seed: int = 0
    overwrite: bool = False
    floors: bool = True
    workers: int = 0  # image-decoding processes


@dataclass
class RetrievalReport:
    out: Path
    results: object  # pandas DataFrames
    per_query: object
    table: object
    computed_cells: int = 0
    skipped_cells: int = 0
    files: dict = field(default_factory=dict)


@dataclass
class _Entry:
    label: str
    kind: str
    loaded: object  # LoadedBackbone, None for pixels
    fingerprint: str


def evaluate_retrieval(
    checkpoints: Sequence[str | Path],
    out: str | Path,
    config: RetrievalConfig = RetrievalConfig(),
    *,
    corrupt_fn: Callable | None = None,
    announce: Callable[[str], None] | None = None,
) -> RetrievalReport:
    """Evaluate each checkpoint (and the floors) on the retrieval set; write and return the results."""
    announce = announce or (lambda message: None)
    out = Path(out)
    if not checkpoints:
        raise FdbenchError("no checkpoint given: pass one or more .pt / .safetensors / .pth files")
    names = parse_corruptions(config.corruptions) if config.corruptions else []
    severities = parse_severities(config.severities) if names else []
    if config.batch_size < 1:
        raise FdbenchError(f"--batch-size must be at least 1, got {config.batch_size}")
    if config.image_size is not None and config.image_size < 32:
        raise FdbenchError(f"--image-size must be at least 32, got {config.image_size}")
    device = resolve_device(config.device)
    labels = checkpoint_labels(checkpoints)
    loaded = [load_backbone(path) for path in checkpoints]  # bad files fail here, before any work
    entries = [_Entry(lb, "pretrained", ck, file_sha256(ck.meta["path"])) for lb, ck in zip(labels, loaded)]
    if config.floors:
        for floor in floors(loaded[0], config.seed):
            label = floor.label if floor.label not in labels else f"floor-{floor.label}"
            entries.append(_Entry(label, "floor", floor.loaded, floor.fingerprint))
    data = _data_root(config.data, announce)
    rs = open_retrieval_set(data, config.dataset)
    announce(f"{rs.name}: {len(rs.database)} database images, {len(rs.queries)} queries")
    settings = {
        "data": str(Path(data).resolve()),
        "dataset": rs.name,
        "ground_truth_sha256": rs.fingerprint,
        "image_size": config.image_size,
        "multiscale": config.multiscale,
        "seed": config.seed,
        "descriptor": "class token, final norm, L2-normalised"
        + (" (scales 1, 1/sqrt2, 1/2)" if config.multiscale else ""),
    }
    fingerprints = {e.label: e.fingerprint for e in entries}
    store = RetrievalStore() if config.overwrite else read_previous(out, settings, fingerprints)
    if store.rows:
        announce(f"resuming: {len(store.rows)} finished cells found in {out}/results.csv")
    if names and corrupt_fn is None:
        corrupt_fn = default_corrupt_fn()

    cells = [(CLEAN, 0)] + [(c, s) for c in names for s in severities]
    images: dict[tuple, tuple] = {}  # (size, patch) -> (database, queries) uint8 tensors
    # entries of earlier calls keep their description in summary.json beside their stored rows
    info: dict[str, dict] = (
        {} if config.overwrite else dict((read_json(out / "summary.json") or {}).get("checkpoints", {}))
    )
    computed = skipped = 0
    bar = progress(total=len(entries) * len(cells), desc="eval-retrieval", unit="cell")
    try:
        for entry in entries:
            ckpt = entry.loaded or loaded[0]  # pixels: the first checkpoint's size and images
            patch = ckpt.config.patch_size
            size = eval_image_size(None, config.image_size or rs.native_size or DEFAULT_SIZE, patch)
            info[entry.label] = {
                "kind": entry.kind,
                "path": entry.loaded.meta.get("path") if entry.loaded else None,
                "sha256": entry.fingerprint,
                "source": entry.loaded.source if entry.loaded else "pixels",
                "arch": entry.loaded.config.arch if entry.loaded else "pixels",
                "patch_size": patch if entry.loaded else None,
                "image_size": size,
            }
            todo = [(c, s) for c, s in cells if not store.has(entry.label, c, s)]
            skipped += len(cells) - len(todo)
            bar.update(len(cells) - len(todo))
            if not todo:
                continue
            if (size, patch) not in images:
                images[(size, patch)] = (
                    load_images(rs.database, size, patch, desc="loading database", workers=config.workers),
                    load_images(rs.queries, size, patch, rs.bboxes, desc="loading queries", workers=config.workers),
                )
            database, queries = images[(size, patch)]
            describe = _describer(entry, size, patch, config, device)
            db_feats = describe(database, f"{entry.label} database")
            for corruption, severity in todo:
                bar.set_postfix_str(f"{entry.label} {corruption} {severity}" if severity else f"{entry.label} clean")
                cell_queries = (
                    queries
                    if corruption == CLEAN
                    else corrupt_queries(queries, corruption, severity, corrupt_fn, device, config.seed)
                )
                ranks = rank_database(describe(cell_queries, ""), db_feats)
                store.add(entry.label, entry.kind, corruption, severity, evaluate_rankings(ranks, rs.gnd, KS))
                write_outputs(out, store, settings, info)
                computed += 1
                bar.update(1)
    finally:
        bar.close()
    files = write_outputs(out, store, settings, info)
    results, per_query, table = files.pop("frames")
    return RetrievalReport(out, results, per_query, table, computed, skipped, files)


def _data_root(data: str | None, announce) -> str:
    if data:
        return data
    from fdbench.synthetic_retrieval import default_retrieval_set

    return str(default_retrieval_set(announce))


def _describer(entry: _Entry, size: int, patch: int, config: RetrievalConfig, device):
    """images -> L2-normalised descriptors for one entry (a backbone or the pixels floor)."""
    if entry.loaded is None:
        pixels = PixelEncoder(size).to(device)
        return lambda imgs, desc: pixel_descriptors(pixels, imgs, size=size, batch_size=config.batch_size, desc=desc)
    encoder = FrozenEncoder(entry.loaded.model, n_last_blocks=1, avgpool=False).to(device)
    return lambda imgs, desc: backbone_descriptors(
        encoder, imgs, patch=patch, multiscale=config.multiscale, batch_size=config.batch_size, desc=desc
    )
