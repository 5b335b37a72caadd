"""Probes on frozen features: a linear classifier and a weighted k-nearest-neighbour vote.

Both take cached feature tensors ``[N, D]`` (float) and integer labels ``[N]`` and return an object
with ``logits(feats) -> [N, C]`` (scores whose ordering gives top-1/top-5) and ``predict(feats)``.

Linear probe (as in DINOv2's linear evaluation, simplified to cached features):
    z = (x - mu) / sigma            mu, sigma: per-dimension mean/std of the training features
    logits = z W + b                W: [D, C], b: [C]
trained by minimising  mean cross-entropy + wd/2 * ||W||_F^2  (an L2 penalty on W, not on b) with
Adam under a cosine learning-rate schedule. The penalty defines the optimum, so the weight-decay grid
means the same thing whatever the optimiser's step sizes. The standardisation is part of the (still linear) classifier; it makes one small grid of
learning rates meaningful for every backbone width and feature scale. Every (lr, weight decay) pair of
the grid is trained *at once* as a stack of G independent classifiers ``W[g]`` (each loss term only
touches its own slice, so the stacked training equals G separate runs). The pair with the best
accuracy on a stratified held-out part of train is then refit on all of train.

kNN probe (DINO / DINOv2 kNN evaluation):
    s_i = <x/|x|, t_i/|t_i|>        cosine similarity to every training feature t_i
    N_k = the k most similar training samples
    score_c = sum_{i in N_k, y_i = c} exp(s_i / T)
with k = 20 and T = 0.07 by default.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F

from fdbench.errors import FdbenchError
from fdbench.scoring import knn_votes

__all__ = ["LinearProbe", "KNNProbe", "fit_linear_probe", "knn_probe", "stratified_split", "DEFAULT_LRS", "DEFAULT_WDS"]

DEFAULT_LRS = (1e-3, 3e-3, 1e-2, 3e-2)
DEFAULT_WDS = (0.0, 1e-4, 1e-3, 1e-2)


def _check_inputs(feats: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    if not isinstance(feats, torch.Tensor) or feats.ndim != 2:
        raise FdbenchError(f"features must be a 2-D tensor [N, D], got shape {tuple(getattr(feats, 'shape', ()))}")
    labels = torch.as_tensor(labels)
    if labels.ndim != 1 or len(labels) != len(feats):
        raise FdbenchError(
            f"labels must be 1-D with one entry per feature row: {tuple(labels.shape)} labels for {len(feats)} features"
        )
    if len(feats) == 0:
        raise FdbenchError("no training features: the probe needs at least one labelled example")
    if labels.dtype.is_floating_point or labels.min() < 0:
        raise FdbenchError("labels must be non-negative integers")
    return feats.float(), labels.long()


def stratified_split(labels: torch.Tensor, fraction: float, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """Indices (fit, held_out): ``round(fraction * n_c)`` random samples of each class c are held out,
    but never a class's last sample (every class stays trainable)."""
    gen = torch.Generator().manual_seed(seed)
    fit, held = [], []
    for c in torch.unique(labels).tolist():
        idx = torch.nonzero(labels == c).flatten()
        idx = idx[torch.randperm(len(idx), generator=gen)]
        n_held = min(round(fraction * len(idx)), len(idx) - 1)
        held.append(idx[:n_held])
        fit.append(idx[n_held:])
    return torch.cat(fit).sort().values, torch.cat(held).sort().values


@dataclass
class LinearProbe:
    """A trained linear classifier on standardised features; see the module docstring."""

    mean: torch.Tensor  # [D]
    std: torch.Tensor  # [D]
    weight: torch.Tensor  # [D, C]
    bias: torch.Tensor  # [C]
    lr: float
    weight_decay: float
    val_accuracy: float | None = None  # accuracy of the chosen pair on the held-out part
    grid: list[dict] = field(default_factory=list)  # every pair: {"lr", "weight_decay", "val_accuracy"}

    @property
    def num_classes(self) -> int:
        return self.weight.shape[1]

    def to(self, device) -> "LinearProbe":
        for name in ("mean", "std", "weight", "bias"):
            setattr(self, name, getattr(self, name).to(device))
        return self

    @torch.no_grad()
    def logits(self, feats: torch.Tensor) -> torch.Tensor:
        """Class scores ``[N, C]``, on the device of ``feats``."""
        x = feats.to(self.weight.device, torch.float32)
        return (((x - self.mean) / self.std) @ self.weight + self.bias).to(feats.device)

    def predict(self, feats: torch.Tensor) -> torch.Tensor:
        return self.logits(feats).argmax(dim=1)


def _train_stack(
    z: torch.Tensor,
    y: torch.Tensor,
    num_classes: int,
    lrs: torch.Tensor,
    wds: torch.Tensor,
    epochs: int,
    batch_size: int,
    gen: torch.Generator,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Train G = len(lrs) linear classifiers on the same standardised features at once.

    Adam by hand because each classifier has its own learning rate and weight decay:
        g <- g + wd W   (gradient of the L2 penalty; weights only)
        m <- b1 m + (1-b1) g;  v <- b2 v + (1-b2) g^2
        W <- W - lr_t (m / (1-b1^t)) / (sqrt(v / (1-b2^t)) + eps)
    with lr_t = lr * (1 + cos(pi (t-1) / T)) / 2, i.e. ``torch.optim.Adam(weight_decay=wd)`` on W.
    Each slice W[g] gets exactly its own classifier's gradient of its mean cross-entropy.
    """
    n, d = z.shape
    g_count = len(lrs)
    weight = torch.zeros(g_count, d, num_classes, device=z.device)
    bias = torch.zeros(g_count, 1, num_classes, device=z.device)
    params = [weight, bias]
    m = [torch.zeros_like(p) for p in params]
    v = [torch.zeros_like(p) for p in params]
    b1, b2, eps = 0.9, 0.999, 1e-8
    batch_size = min(batch_size, n)
    steps_per_epoch = math.ceil(n / batch_size)
    total = max(1, epochs * steps_per_epoch)
    lr_col, wd_col = lrs.view(-1, 1, 1).to(z.device), wds.view(-1, 1, 1).to(z.device)
    t = 0
    for _ in range(epochs):
        order = torch.randperm(n, generator=gen).to(z.device) if steps_per_epoch > 1 else None
        for s in range(steps_per_epoch):
            idx = order[s * batch_size : (s + 1) * batch_size] if order is not None else slice(None)
            xb, yb = z[idx], y[idx]
            # gradient of the mean cross-entropy in closed form (no autograd: this loop is overhead-bound
            # on small data): dL/dlogits = (softmax - onehot) / B, dL/dW = x^T dL/dlogits, dL/db = sum
            probs = (torch.einsum("nd,gdc->gnc", xb, weight) + bias).softmax(dim=2)  # [G, B, C]
            probs[:, torch.arange(len(yb), device=z.device), yb] -= 1
            probs /= len(yb)
            grads = (torch.einsum("nd,gnc->gdc", xb, probs), probs.sum(dim=1, keepdim=True))
            t += 1
            lr_t = lr_col * 0.5 * (1 + math.cos(math.pi * (t - 1) / total))
            with torch.no_grad():
                for i, (p, grad) in enumerate(zip(params, grads)):
                    if i == 0:  # L2 penalty on the weights only, not the bias (as usual for probes)
                        grad = grad + wd_col * p
                    m[i].mul_(b1).add_(grad, alpha=1 - b1)
                    v[i].mul_(b2).addcmul_(grad, grad, value=1 - b2)
                    step = (m[i] / (1 - b1**t)) / ((v[i] / (1 - b2**t)).sqrt() + eps)
                    p.sub_(lr_t * step)
    return weight.detach(), bias.detach()


def fit_linear_probe(
    train_feats: torch.Tensor,
    train_labels: torch.Tensor,
    *,
    val_fraction: float = 0.2,
    lrs=DEFAULT_LRS,
    wds=DEFAULT_WDS,
    epochs: int = 100,
    batch_size: int = 4096,
    seed: int = 0,
    device=None,
    num_classes: int | None = None,
) -> LinearProbe:
    """Pick (lr, weight decay) from the grid on a stratified held-out ``val_fraction`` of train,
    then refit on all of train with the chosen pair (see the module docstring).

    ``epochs`` passes over the data with mini-batches of ``batch_size`` (full batch when the data is
    smaller); ``device`` defaults to the features' device.
    """
    feats, labels = _check_inputs(train_feats, train_labels)
    device = torch.device(device) if device is not None else feats.device
    num_classes = num_classes or int(labels.max()) + 1
    if int(labels.max()) >= num_classes:
        raise FdbenchError(f"label {int(labels.max())} is out of range for {num_classes} classes")
    lrs, wds = tuple(float(x) for x in lrs), tuple(float(x) for x in wds)
    if not lrs or not wds or min(lrs) <= 0 or min(wds) < 0:
        raise FdbenchError("the probe grid needs at least one lr > 0 and one weight decay >= 0")
    if epochs < 1:
        raise FdbenchError(f"epochs must be at least 1, got {epochs}")
    if not 0 <= val_fraction < 1:
        raise FdbenchError(f"val_fraction must be in [0, 1), got {val_fraction}")
    pairs = [(lr, wd) for lr in lrs for wd in wds]
    gen = torch.Generator().manual_seed(seed)
    feats, labels = feats.to(device), labels.to(device)

    def standardise(x):
        mu = x.mean(dim=0)
        # constant dimensions (std 0) carry no information; dividing by 1 keeps them harmless
        sd = x.std(dim=0, unbiased=False).clamp_min(1e-6) if len(x) > 1 else torch.ones_like(mu)
        return mu, sd

    grid, chosen, best_acc = [], pairs[0], None
    fit_idx, held_idx = stratified_split(labels.cpu(), val_fraction, seed)
    if len(pairs) > 1 and len(held_idx) > 0:
        fit_idx, held_idx = fit_idx.to(device), held_idx.to(device)
        mu, sd = standardise(feats[fit_idx])
        z_fit, z_held = (feats[fit_idx] - mu) / sd, (feats[held_idx] - mu) / sd
        w, b = _train_stack(
            z_fit,
            labels[fit_idx],
            num_classes,
            torch.tensor([p[0] for p in pairs]),
            torch.tensor([p[1] for p in pairs]),
            epochs,
            batch_size,
            gen,
        )
        with torch.no_grad():
            pred = (torch.einsum("nd,gdc->gnc", z_held, w) + b).argmax(dim=2)  # [G, N_held]
            accs = (pred == labels[held_idx]).float().mean(dim=1).cpu().tolist()
        grid = [{"lr": lr, "weight_decay": wd, "val_accuracy": acc} for (lr, wd), acc in zip(pairs, accs)]
        # first best in grid order: ties go to the smaller lr / smaller decay
        best = max(range(len(pairs)), key=lambda i: (accs[i], -i))
        chosen, best_acc = pairs[best], accs[best]
    elif len(pairs) > 1:
        raise FdbenchError(
            "choosing among several lr / weight-decay values needs a held-out part of "
            "train: use val_fraction > 0 (and at least 2 samples per class) or a single pair"
        )
    mu, sd = standardise(feats)
    w, b = _train_stack(
        (feats - mu) / sd,
        labels,
        num_classes,
        torch.tensor([chosen[0]]),
        torch.tensor([chosen[1]]),
        epochs,
        batch_size,
        gen,
    )
    return LinearProbe(
        mean=mu,
        std=sd,
        weight=w[0],
        bias=b[0, 0],
        lr=chosen[0],
        weight_decay=chosen[1],
        val_accuracy=best_acc,
        grid=grid,
    )


@dataclass
class KNNProbe:
    """Weighted kNN vote over L2-normalised training features; see the module docstring."""

    train_feats: torch.Tensor  # [N, D], rows of unit norm
    train_labels: torch.Tensor  # [N]
    num_classes: int
    k: int = 20
    temperature: float = 0.07
    max_chunk_elements: int = 1 << 27  # similarity entries per chunk (512 MiB of float32)

    def to(self, device) -> "KNNProbe":
        self.train_feats, self.train_labels = self.train_feats.to(device), self.train_labels.to(device)
        return self

    @torch.no_grad()
    def logits(self, feats: torch.Tensor) -> torch.Tensor:
        """Vote scores ``[N, C]`` = sum of exp(sim / T) over the k nearest neighbours of each class,
        on the device of ``feats``."""
        # queries per chunk: the [chunk, N_train] similarity matrix stays within max_chunk_elements
        chunk = max(1, min(4096, self.max_chunk_elements // max(1, len(self.train_feats))))
        votes = knn_votes(
            self.train_feats,
            self.train_labels,
            feats,
            self.num_classes,
            k=self.k,
            temperature=self.temperature,
            chunk=chunk,
        )
        return votes.to(feats.device)

    def predict(self, feats: torch.Tensor) -> torch.Tensor:
        return self.logits(feats).argmax(dim=1)


def knn_probe(
    train_feats: torch.Tensor,
    train_labels: torch.Tensor,
    *,
    k: int = 20,
    temperature: float = 0.07,
    device=None,
    num_classes: int | None = None,
) -> KNNProbe:
    """A kNN probe over the given training features (k = 20, T = 0.07 as in DINO/DINOv2)."""
    feats, labels = _check_inputs(train_feats, train_labels)
    if k < 1:
        raise FdbenchError(f"k must be at least 1, got {k}")
    if temperature <= 0:
        raise FdbenchError(f"the kNN temperature must be positive, got {temperature}")
    device = torch.device(device) if device is not None else feats.device
    num_classes = num_classes or int(labels.max()) + 1
    return KNNProbe(F.normalize(feats.to(device), dim=1), labels.to(device), num_classes, k, temperature)
