"""The collapse monitor: entropy and RankMe against independent computations, a collapsed teacher
flagged, a healthy one not, and the signals in a real run's metrics.csv and summary.json."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from pretrain.collapse import CollapseWatch, batch_entropy_fraction, entropy_fraction, prototypes_used, rankme


def test_entropy_fraction_hand_computed():
    k = 4
    uniform = torch.full((3, k), 1 / k)
    one_hot = torch.eye(k)[:2]
    assert entropy_fraction(uniform) == pytest.approx(1.0, abs=1e-6)
    assert entropy_fraction(one_hot) == pytest.approx(0.0, abs=1e-7)
    half = torch.tensor([[0.5, 0.5, 0.0, 0.0]])  # H = ln 2 = half of ln 4
    assert entropy_fraction(half) == pytest.approx(0.5, abs=1e-6)


def test_batch_signals_tell_a_sharp_collapse_from_a_confident_teacher():
    k = 8
    # Every row one-hot: per-image entropy 0 in both cases; only the batch signals differ.
    collapsed = torch.eye(k)[[3, 3, 3, 3]]
    spread = torch.eye(k)[[0, 1, 2, 3]]
    assert entropy_fraction(collapsed) == entropy_fraction(spread) == pytest.approx(0.0, abs=1e-7)
    assert prototypes_used(collapsed) == 1 and prototypes_used(spread) == 4
    assert batch_entropy_fraction(collapsed) == pytest.approx(0.0, abs=1e-7)
    # The mean of four distinct one-hots is uniform over 4 of 8 prototypes: ln 4 / ln 8 = 2/3.
    assert batch_entropy_fraction(spread) == pytest.approx(math.log(4) / math.log(8), abs=1e-6)
    uniform = torch.full((5, k), 1 / k)
    assert batch_entropy_fraction(uniform) == pytest.approx(1.0, abs=1e-6)


def test_rankme_equals_an_independent_computation():
    rng = np.random.default_rng(0)
    u, _ = np.linalg.qr(rng.standard_normal((40, 40)))
    v, _ = np.linalg.qr(rng.standard_normal((16, 16)))
    s = np.array([3.0, 2.0, 1.0] + [0.0] * 13)
    z = u[:, :16] @ np.diag(s) @ v.T
    p = s / s.sum() + 1e-7
    expected = math.exp(-(p * np.log(p)).sum())  # ~ exp(H(1/2, 1/3, 1/6)) = 2.75
    assert rankme(torch.tensor(z, dtype=torch.float64)) == pytest.approx(expected, rel=1e-4)
    gaussian = torch.tensor(rng.standard_normal((256, 16)), dtype=torch.float32)
    assert 14 < rankme(gaussian) <= 16
    rank_one = torch.outer(torch.randn(64), torch.randn(16))
    assert rankme(rank_one) == pytest.approx(1.0, abs=0.01)


def observe(watch, probs, embeddings, steps=4):
    raised = []
    for step in range(steps):
        raised += watch.observe(step, entropy_fraction(probs), rankme(embeddings), *embeddings.shape)
    return raised


def test_collapsed_teacher_is_flagged_and_a_healthy_one_is_not():
    g = torch.Generator().manual_seed(0)
    k, n, d = 512, 64, 32
    collapsed = CollapseWatch()
    raised = observe(
        collapsed, torch.full((n, k), 1 / k), torch.outer(torch.randn(n, generator=g), torch.randn(d, generator=g))
    )
    assert len(raised) == 2 and "entropy" in raised[0] and "RankMe" in raised[1]
    assert collapsed.warnings == raised  # each kind once, however long it lasts
    healthy = CollapseWatch()
    sharp = torch.softmax(torch.randn(n, k, generator=g) / 0.1, dim=-1)
    assert observe(healthy, sharp, torch.randn(n, d, generator=g)) == [] and healthy.warnings == []


def test_a_short_spell_is_not_flagged_and_state_round_trips():
    k, n, d = 64, 32, 16
    watch = CollapseWatch(patience=3)
    uniform, spread = torch.full((n, k), 1 / k), torch.randn(n, d)
    sharp = torch.eye(k)[:n]
    assert observe(watch, uniform, spread, steps=2) == []
    assert observe(watch, sharp, spread, steps=1) == []  # the streak resets
    again = CollapseWatch(patience=3)
    again.load_state_dict(watch.state_dict())
    assert observe(again, uniform, spread, steps=2) == []
    assert len(observe(again, uniform, spread, steps=1)) == 1


def test_run_writes_the_signals_and_the_warnings(one_epoch_config, tmp_path):
    import json

    import pandas as pd

    from pretrain.engine import train

    torch.set_num_threads(1)
    cfg = one_epoch_config(tmp_path / "run", log_every=1)
    result = train(cfg)
    rows = pd.read_csv(result.metrics).query("row == 'train'")
    assert len(rows) == 4 and rows["teacher_entropy"].between(0, 1).all()
    assert rows["teacher_batch_entropy"].between(0, 1).all() and (rows["teacher_prototypes"] >= 1).all()
    assert rows["teacher_rank"].between(1, 40).all()  # at most min(2 crops x 20 images, width)
    summary = json.loads(result.summary_path.read_text())
    assert isinstance(summary["warnings"], list)
    assert all("teacher collapse" in w for w in summary["warnings"])
