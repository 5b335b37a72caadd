"""A checkpoint's probes for eval-corruptions: the clean train features (extracted once and cached
under ``OUT/cache``, keyed by the checkpoint's checksum, the data and the settings; a damaged cache
is recomputed) and the linear / kNN probes fitted on them."""

from __future__ import annotations

import hashlib
from pathlib import Path

import torch

from analysis.eval_features import dataset_features
from analysis.probes import fit_linear_probe, knn_probe
from fdbench.data import check_same_classes, eval_transform, open_dataset
from fdbench.io import atomic_torch_save


def fit_probes(encoder, label, root, size, resize, classes, protocols, config, out, sha, device, announce):
    """Clean train features (cached in OUT/cache, keyed by checkpoint checksum and settings) -> probes."""
    key = hashlib.blake2b(f"{sha}|{root}|{size}|{resize}|{config.n_last_blocks}".encode(), digest_size=6).hexdigest()
    cache = out / "cache" / f"{label}-train-{key}.pt"
    stored = read_feature_cache(cache, announce)
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


def read_feature_cache(cache: Path, announce) -> tuple[torch.Tensor, torch.Tensor] | None:
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
