"""Online kNN monitor: how well the teacher's features separate the val classes, during training.

Protocol (the DINO weighted kNN): features are the teacher's class token after the final norm,
L2-normalised. For a val image with cosine similarities ``s_j`` to its ``k`` nearest memory-bank
images of labels ``y_j``, class ``c`` gets the vote ``sum_j [y_j = c] * exp(s_j / T)``; the
prediction is the class with the largest vote (k = 20, T = 0.07). The memory bank is the first
``train_per_class`` train images of each class, at the evaluation resolution (the dataset's native
size when known, else the full global crop size), without augmentation.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch.utils.data import DataLoader, Subset

from fdbench.data import check_same_classes, dataset_resolution, eval_transform, open_dataset
from fdbench.features import FrozenEncoder, eval_image_size, extract_features
from fdbench.scoring import knn_votes
from fdbench.scoring import topk_accuracy as scoring_topk


def knn_predict(train_features, train_labels, test_features, n_classes, k=20, temperature=0.07, chunk=1024):
    """:func:`fdbench.scoring.knn_votes` on raw features: the memory bank is normalised here."""
    bank = torch.nn.functional.normalize(train_features.float(), dim=1)
    return knn_votes(bank, train_labels, test_features, n_classes, k=k, temperature=temperature, chunk=chunk)


def topk_accuracy(votes: torch.Tensor, labels: torch.Tensor, k: int) -> float:
    """The top-``k`` accuracy (one ``k``) of :func:`fdbench.scoring.topk_accuracy`."""
    return scoring_topk(votes, labels, (k,))[k]


def _first_per_class(targets: list[int], per_class: int | None) -> list[int]:
    if per_class is None:
        return list(range(len(targets)))
    taken: dict[int, int] = {}
    keep = []
    for i, label in enumerate(targets):
        if taken.get(label, 0) < per_class:
            taken[label] = taken.get(label, 0) + 1
            keep.append(i)
    return keep


@dataclass
class KnnResult:
    top1: float
    top5: float
    n_train: int
    n_val: int


class KnnMonitor:
    """Loads the memory bank and val images once (as uint8 tensors) and scores a backbone on them."""

    def __init__(
        self,
        root: str | None,
        class_list: str | None,
        *,
        trained_size: int,
        patch_size: int,
        train_per_class: int | None = 100,
        val_per_class: int | None = None,
        k: int = 20,
        temperature: float = 0.07,
        workers: int = 0,
        batch_size: int = 256,
    ):
        native = dataset_resolution(root)
        self.size = eval_image_size(trained_size, native, patch_size)
        resize = self.size if native else None
        self.k, self.temperature, self.batch_size = k, temperature, batch_size
        transform = eval_transform(self.size, resize)
        train_set = open_dataset(root, "train", transform, class_list)
        val_set = open_dataset(root, "val", transform, class_list)
        check_same_classes(train_set.classes, val_set.classes, root)  # else a meaningless accuracy
        self.train_images, self.train_labels, self.classes = self._load(train_set, train_per_class, workers)
        self.val_images, self.val_labels, _ = self._load(val_set, val_per_class, workers)

    def _load(self, dataset, per_class, workers):
        subset = Subset(dataset, _first_per_class(dataset.targets, per_class))
        images, labels = [], []
        for x, y in DataLoader(
            subset, batch_size=self.batch_size, num_workers=workers, generator=torch.Generator().manual_seed(0)
        ):
            images.append(x)
            labels.append(y)
        return torch.cat(images), torch.cat(labels), list(dataset.classes)

    @torch.no_grad()
    def evaluate(self, backbone: torch.nn.Module) -> KnnResult:
        """kNN accuracy of ``backbone``'s class token; leaves the backbone's train/eval mode as it was."""
        was_training = backbone.training
        grads = [p.requires_grad for p in backbone.parameters()]
        encoder = FrozenEncoder(backbone, n_last_blocks=1, avgpool=False)
        try:
            device = next(backbone.parameters()).device
            encoder.to(device)
            train = extract_features(encoder, self.train_images, batch_size=self.batch_size)
            val = extract_features(encoder, self.val_images, batch_size=self.batch_size)
        finally:
            backbone.train(was_training)
            for p, g in zip(backbone.parameters(), grads):
                p.requires_grad_(g)
        votes = knn_predict(train, self.train_labels, val, len(self.classes), self.k, self.temperature)
        return KnnResult(
            topk_accuracy(votes, self.val_labels, 1), topk_accuracy(votes, self.val_labels, 5), len(train), len(val)
        )
