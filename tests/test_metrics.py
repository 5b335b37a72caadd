"""CE / mCE / relative CE against hand-computed values; parsing; baselines from results.csv."""

from __future__ import annotations

import math

import pandas as pd
import pytest
import torch

from analysis.metrics import (
    ALEXNET_CLEAN_ERROR,
    ALEXNET_MEAN_ERRORS,
    COMMON,
    EXTRA,
    UNNORMALISED,
    Baseline,
    alexnet_baseline,
    baseline_from_results,
    parse_corruptions,
    parse_severities,
    summarise,
    topk_accuracy,
)
from fdbench.errors import FdbenchError

COLUMNS = ["checkpoint", "protocol", "corruption", "severity", "n", "top1", "top5"]


def _rows(ckpt, protocol, clean_top1, accs: dict):
    rows = [(ckpt, protocol, "clean", 0, 100, clean_top1, 1.0)]
    for name, per_sev in accs.items():
        rows += [(ckpt, protocol, name, s, 100, a, 1.0) for s, a in zip(range(1, 6), per_sev)]
    return rows


def test_alexnet_own_errors_give_ce_and_relative_ce_of_one():
    # a model whose error at every severity equals AlexNet's mean error has CE_c = 1 for every c
    accs = {c: [1 - ALEXNET_MEAN_ERRORS[c]] * 5 for c in COMMON + EXTRA}
    frame = pd.DataFrame(_rows("alex", "linear", 1 - ALEXNET_CLEAN_ERROR, accs), columns=COLUMNS)
    rows, agg = summarise(frame, alexnet_baseline())
    assert len(rows) == 19
    assert rows["ce"].tolist() == pytest.approx([1.0] * 19, abs=1e-12)
    assert rows["relative_ce"].tolist() == pytest.approx([1.0] * 19, abs=1e-12)
    a = agg["alex"]["linear"]
    assert a["mCE"] == pytest.approx(1.0) and a["relative_mCE"] == pytest.approx(1.0)
    assert a["common_corruptions"] == 15 and a["extra"]["ce"] == pytest.approx(1.0)
    assert a["normalisation"] == "AlexNet"


def test_crafted_table_against_hand_computation():
    # baseline run: clean error 0.2; gaussian_noise errors 0.5..0.9; contrast errors 0.3 at every severity
    base = pd.DataFrame(
        _rows("ref", "knn", 0.8, {"gaussian_noise": [0.5, 0.4, 0.3, 0.2, 0.1], "contrast": [0.7] * 5}), columns=COLUMNS
    )
    # model: clean error 0.1; gaussian_noise errors 0.2, 0.3, 0.4, 0.5, 0.6; contrast errors 0.15
    model = pd.DataFrame(
        _rows("m", "knn", 0.9, {"gaussian_noise": [0.8, 0.7, 0.6, 0.5, 0.4], "contrast": [0.85] * 5}), columns=COLUMNS
    )
    rows, agg = summarise(
        model,
        {
            "knn": Baseline(
                "ref", 0.2, {(c, s): 1 - a for _, _, c, s, _, a, _ in base.itertuples(index=False) if c != "clean"}
            )
        },
    )
    ce_gauss = (0.2 + 0.3 + 0.4 + 0.5 + 0.6) / (0.5 + 0.6 + 0.7 + 0.8 + 0.9)  # 2.0 / 3.5
    rel_gauss = (0.1 + 0.2 + 0.3 + 0.4 + 0.5) / (0.3 + 0.4 + 0.5 + 0.6 + 0.7)  # 1.5 / 2.5
    ce_contrast = 0.75 / 1.5
    rel_contrast = (5 * 0.05) / (5 * 0.1)
    got = rows.set_index("corruption")
    assert got.loc["gaussian_noise", "ce"] == pytest.approx(ce_gauss)
    assert got.loc["gaussian_noise", "relative_ce"] == pytest.approx(rel_gauss)
    assert got.loc["contrast", "ce"] == pytest.approx(ce_contrast)
    assert got.loc["contrast", "relative_ce"] == pytest.approx(rel_contrast)
    assert got.loc["gaussian_noise", "top1"] == pytest.approx(0.6)
    a = agg["m"]["knn"]
    assert a["mCE"] == pytest.approx((ce_gauss + ce_contrast) / 2)
    assert a["relative_mCE"] == pytest.approx((rel_gauss + rel_contrast) / 2)
    assert a["common_corruptions"] == 2
    assert a["groups"]["noise"]["ce"] == pytest.approx(ce_gauss)
    assert a["groups"]["digital"]["top1"] == pytest.approx(0.85)
    assert a["clean_error"] == pytest.approx(0.1)


def test_baseline_from_results_csv_matches_hand_built_baseline(tmp_path):
    frame = pd.DataFrame(
        _rows("ref", "linear", 0.8, {"snow": [0.5, 0.4, 0.3, 0.2, 0.1]})
        + _rows("other", "linear", 0.5, {"snow": [0.1] * 5}),
        columns=COLUMNS,
    )
    path = tmp_path / "results.csv"
    frame.to_csv(path, index=False)
    with pytest.raises(FdbenchError, match="2 checkpoints"):
        baseline_from_results(path)
    base = baseline_from_results(f"{path}#ref")["linear"]
    assert base.clean_error == pytest.approx(0.2)
    assert base.severity_errors("snow", [1, 3]) == pytest.approx([0.5, 0.7])
    assert base.severity_errors("fog", [1]) is None
    with pytest.raises(FdbenchError, match="not in baseline"):
        baseline_from_results(f"{path}#nope")
    with pytest.raises(FdbenchError, match="not found"):
        baseline_from_results(tmp_path / "missing.csv")


def test_alexnet_needs_all_five_severities_and_unnormalised_is_labelled():
    frame = pd.DataFrame(
        [("m", "linear", "clean", 0, 10, 0.9, 1.0), ("m", "linear", "fog", 2, 10, 0.6, 0.9)], columns=COLUMNS
    )
    rows, agg = summarise(frame, alexnet_baseline())
    assert math.isnan(rows["ce"].iloc[0])  # only a mean over 5 severities is published
    rows, agg = summarise(frame, None)
    assert rows["normalisation"].iloc[0] == UNNORMALISED == agg["m"]["linear"]["normalisation"]
    assert rows["error"].iloc[0] == pytest.approx(0.4) and math.isnan(agg["m"]["linear"]["mCE"])
    assert agg["m"]["linear"]["mean_corrupted_error"] == pytest.approx(0.4)


def test_topk_accuracy_counts_by_hand():
    logits = torch.tensor([[0.1, 0.9, 0.0], [0.8, 0.15, 0.05], [0.2, 0.3, 0.5], [0.3, 0.4, 0.3]])
    labels = torch.tensor([1, 1, 0, 2])
    acc = topk_accuracy(logits, labels, ks=(1, 2, 5))
    # top-1 hits: row 0 only; top-2 hits: rows 0, 1 (0.15 second), 3 (tie 0.3/0.3: index order decides)
    assert acc[1] == pytest.approx(1 / 4)
    assert acc[2] == pytest.approx((logits.topk(2).indices == labels[:, None]).any(1).float().mean().item())
    assert acc[5] == 1.0  # capped at 3 classes


def test_parsing_corruptions_and_severities():
    assert parse_corruptions("common") == list(COMMON)
    assert parse_corruptions("all")[-4:] == list(EXTRA)
    assert parse_corruptions("noise,fog,gaussian_noise") == ["gaussian_noise", "shot_noise", "impulse_noise", "fog"]
    assert parse_severities("1-5") == [1, 2, 3, 4, 5]
    assert parse_severities("2-3,5") == [2, 3, 5]
    assert parse_severities(3) == [3]
    with pytest.raises(FdbenchError, match="unknown corruption 'fogg'"):
        parse_corruptions("fogg")
    for bad in ("0-5", "6", "a-b", ""):
        with pytest.raises(FdbenchError, match="severities"):
            parse_severities(bad)


def test_group_ce_counts_brightness_as_weather():
    # hand computation: AlexNet-normalised CE per corruption, weather = mean over snow, frost, fog, brightness
    errs = {"snow": 0.6, "frost": 0.5, "fog": 0.4, "brightness": 0.2, "contrast": 0.7, "pixelate": 0.3}
    frame = pd.DataFrame(_rows("m", "knn", 0.9, {c: [1 - e] * 5 for c, e in errs.items()}), columns=COLUMNS)
    _, agg = summarise(frame, alexnet_baseline())
    ce = {c: 5 * e / (5 * ALEXNET_MEAN_ERRORS[c]) for c, e in errs.items()}
    groups = agg["m"]["knn"]["groups"]
    assert groups["weather"]["ce"] == pytest.approx((ce["snow"] + ce["frost"] + ce["fog"] + ce["brightness"]) / 4)
    assert groups["digital"]["ce"] == pytest.approx((ce["contrast"] + ce["pixelate"]) / 2)
