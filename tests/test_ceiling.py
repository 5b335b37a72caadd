"""fdbench ceiling: the run's budget read from its folder, a supervised checkpoint evaluated as kind ceiling."""

from __future__ import annotations

import json
import math

import pandas as pd
import pytest
import torch

from analysis.evaluate import EvalConfig, evaluate_corruptions
from fdbench.checkpoint import load_backbone, save_checkpoint
from fdbench.cli import main
from fdbench.models import build_backbone


def _run(tmp_path, data, steps=40, batch=16):
    run = tmp_path / "run"
    run.mkdir()
    torch.manual_seed(0)
    model = build_backbone("vit_pico", img_size=32, patch_size=8)
    save_checkpoint(
        {
            "kind": "backbone",
            "model": model.config.to_dict(),
            "teacher_backbone": model.state_dict(),
            "data": {"root": str(data), "image_size": 32},
        },
        run / "final.pt",
    )
    (run / "summary.json").write_text(json.dumps({"step": steps, "iterations": steps, "batch_size": batch}))
    return run


@pytest.fixture(scope="module")
def easy_dataset(tmp_path_factory):
    """4 classes of centred, upright, uncluttered shapes: a supervised ViT learns them in 40 steps, so a
    loss under ln 4 tests the trainer (the default v3 nuisances need far longer, see the README)."""
    from fdbench.synthetic import Nuisances, SyntheticSpec, make_synthetic_dataset

    easy = Nuisances(scale=(0.9, 1.0), rotation_deg=0.0, shift=0.05, fixed_polarity=True, distractors=(0, 0))
    return make_synthetic_dataset(
        tmp_path_factory.mktemp("easy") / "easy",
        SyntheticSpec(classes=4, train_per_class=20, val_per_class=10, size=32, nuisances=easy),
        workers=1,
    )


def test_ceiling_uses_the_runs_budget_learns_and_is_evaluated_as_kind_ceiling(tmp_path, easy_dataset, capsys):
    tiny_dataset = easy_dataset
    run = _run(tmp_path, tiny_dataset)
    with pytest.raises(SystemExit) as exc:
        main(["ceiling", str(run), "--device", "cpu", "--out", str(tmp_path / "ceil")])
    assert exc.value.code == 0, capsys.readouterr().err
    record = json.loads((tmp_path / "ceil" / "ceiling.json").read_text())
    assert record["steps"] == 40 and record["batch_size"] == 16
    assert record["final_loss"] < math.log(4)  # below the loss of a uniform guess over 4 classes
    loaded = load_backbone(tmp_path / "ceil" / "ceiling.pt")
    assert loaded.config == load_backbone(run / "final.pt").config
    cfg = EvalConfig(
        data=str(tiny_dataset),
        corruptions="fog",
        severities="1",
        device="cpu",
        batch_size=32,
        floors=False,
        ceiling=str(tmp_path / "ceil" / "ceiling.pt"),
    )
    evaluate_corruptions([run / "final.pt"], tmp_path / "ev", cfg, corrupt_fn=lambda x, n, s, generator=None: x)
    res = pd.read_csv(tmp_path / "ev" / "results.csv")
    assert dict(zip(res["checkpoint"], res["kind"])) == {"run": "pretrained", "ceiling": "ceiling"}
    diffs = pd.read_csv(tmp_path / "ev" / "differences.csv")
    assert set(zip(diffs["reference"], diffs["checkpoint"])) == {("ceiling", "run")}


def test_ceiling_of_a_folder_without_a_run_is_a_one_line_error(tmp_path, capsys):
    (tmp_path / "empty").mkdir()
    with pytest.raises(SystemExit) as exc:
        main(["ceiling", str(tmp_path / "empty"), "--device", "cpu", "--out", str(tmp_path / "c")])
    err = capsys.readouterr().err.strip().splitlines()
    assert exc.value.code == 2 and len(err) == 1 and "not a finished pretraining run" in err[0]
