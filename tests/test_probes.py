"""Linear and kNN probes: accuracy on separable data, exact agreement with independent references."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from analysis.probes import _train_stack, fit_linear_probe, knn_probe, stratified_split
from fdbench.errors import FdbenchError


def _blobs(n_per_class: int, classes: int = 5, dim: int = 32, spread: float = 0.3, seed: int = 0):
    gen = torch.Generator().manual_seed(seed)
    centers = torch.randn(classes, dim, generator=torch.Generator().manual_seed(123)) * 3
    labels = torch.arange(classes).repeat_interleave(n_per_class)
    feats = centers[labels] + spread * torch.randn(len(labels), dim, generator=gen)
    return feats, labels


def test_linear_probe_separable_features_are_classified_perfectly():
    x, y = _blobs(40)
    xt, yt = _blobs(20, seed=1)
    probe = fit_linear_probe(x, y, epochs=30)
    assert (probe.predict(xt) == yt).float().mean().item() == 1.0
    assert probe.logits(xt).shape == (len(xt), 5)
    # the whole grid was tried and the chosen pair is the best one on the held-out part
    assert len(probe.grid) == 16
    assert probe.val_accuracy == max(g["val_accuracy"] for g in probe.grid)
    assert {"lr": probe.lr, "weight_decay": probe.weight_decay} in [
        {"lr": g["lr"], "weight_decay": g["weight_decay"]} for g in probe.grid
    ]


def test_linear_probe_is_invariant_to_feature_offset_and_scale():
    # a huge constant offset and scale on the features must not change the predictions
    x, y = _blobs(30)
    xt, _ = _blobs(10, seed=2)
    a = fit_linear_probe(x, y, epochs=20).predict(xt)
    b = fit_linear_probe(x * 1000 + 50, y, epochs=20).predict(xt * 1000 + 50)
    assert torch.equal(a, b)


def test_stacked_training_equals_torch_adam_run_separately():
    """The G-classifier stack must match G independent runs of torch.optim.Adam with L2 decay on W."""
    x, y = _blobs(12, classes=3, dim=6, spread=1.5)
    # unbalanced classes: with balanced ones the bias gradient starts at ~0, where Adam's g / (|g| + eps)
    # turns float rounding noise into full steps and any two exact implementations drift apart
    x, y = x[:-5], y[:-5]
    lrs, wds, epochs = [0.05, 0.01], [0.1, 0.0], 7
    w, b = _train_stack(x, y, 3, torch.tensor(lrs), torch.tensor(wds), epochs, 10_000, torch.Generator())
    for g, (lr, wd) in enumerate(zip(lrs, wds)):
        weight = torch.zeros(6, 3, requires_grad=True)
        bias = torch.zeros(3, requires_grad=True)
        opt = torch.optim.Adam(
            [{"params": [weight], "weight_decay": wd}, {"params": [bias], "weight_decay": 0.0}], lr=lr
        )
        sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda t: 0.5 * (1 + math.cos(math.pi * t / epochs)))
        for _ in range(epochs):
            opt.zero_grad()
            F.cross_entropy(x @ weight + bias, y).backward()
            opt.step()
            sched.step()
        torch.testing.assert_close(w[g], weight.detach(), rtol=1e-4, atol=1e-5)
        torch.testing.assert_close(b[g, 0], bias.detach(), rtol=1e-4, atol=1e-5)


def test_minibatch_training_also_separates():
    x, y = _blobs(40)
    probe = fit_linear_probe(x, y, epochs=5, batch_size=32, lrs=(0.01,), wds=(0.0,), val_fraction=0.0)
    assert (probe.predict(x) == y).float().mean().item() == 1.0
    assert probe.grid == [] and probe.val_accuracy is None


def test_stratified_split_holds_out_the_fraction_of_every_class():
    labels = torch.tensor([0] * 10 + [1] * 5 + [2] * 1)
    fit, held = stratified_split(labels, 0.2, seed=3)
    assert sorted(torch.cat([fit, held]).tolist()) == list(range(16))
    assert torch.bincount(labels[held], minlength=3).tolist() == [2, 1, 0]  # the lone class 2 stays in fit


def test_knn_scores_match_a_hand_written_weighted_vote():
    gen = torch.Generator().manual_seed(0)
    train = torch.randn(30, 8, generator=gen)
    labels = torch.randint(0, 4, (30,), generator=gen)
    queries = torch.randn(7, 8, generator=gen)
    k, temp = 5, 0.1
    probe = knn_probe(train, labels, k=k, temperature=temp)
    probe.max_chunk_elements = 3 * 30  # 3 queries per chunk: exercise the chunked path
    scores = probe.logits(queries)
    for qi, q in enumerate(queries):
        sims = [(float(q @ t / (q.norm() * t.norm())), int(lab)) for t, lab in zip(train, labels)]
        sims.sort(reverse=True)
        expected = [0.0] * 4
        for s, lab in sims[:k]:
            expected[lab] += math.exp(s / temp)
        torch.testing.assert_close(scores[qi], torch.tensor(expected), rtol=1e-4, atol=1e-4)


def test_knn_separable_features_and_k_larger_than_train():
    x, y = _blobs(20)
    xt, yt = _blobs(10, seed=4)
    assert (knn_probe(x, y).predict(xt) == yt).all()
    small = knn_probe(x[:3], y[:3], k=20)  # k is capped at the number of training samples
    assert small.logits(xt).shape == (len(xt), int(y[:3].max()) + 1)


@pytest.mark.parametrize(
    "call",
    [
        lambda: fit_linear_probe(torch.randn(4), torch.zeros(4)),
        lambda: fit_linear_probe(torch.randn(4, 3), torch.zeros(5, dtype=torch.long)),
        lambda: fit_linear_probe(torch.randn(0, 3), torch.zeros(0, dtype=torch.long)),
        lambda: fit_linear_probe(torch.randn(4, 3), torch.zeros(4, dtype=torch.long), val_fraction=1.5),
        lambda: fit_linear_probe(torch.randn(4, 3), torch.zeros(4, dtype=torch.long), val_fraction=0.0),
        lambda: knn_probe(torch.randn(4, 3), torch.zeros(4, dtype=torch.long), k=0),
        lambda: knn_probe(torch.randn(4, 3), torch.tensor([0, 1, -1, 0])),
    ],
)
def test_bad_probe_inputs_are_user_errors(call):
    with pytest.raises(FdbenchError):
        call()
