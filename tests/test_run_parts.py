"""The training loop's parts: the run state round-trips through its state dict, the checkpoint is
assembled from the parts, and ``train()`` takes a user's backbone and dataset."""

from __future__ import annotations

import torch
from torch.utils.data import Subset

from fdbench.checkpoint import read_checkpoint
from fdbench.data import open_dataset
from fdbench.models import build_backbone
from pretrain.costs import StageCost
from pretrain.run_folder import RunFolder
from pretrain.run_state import RunState


def test_run_state_round_trips():
    state = RunState(
        step=7,
        iters_per_epoch=3,
        elapsed_s=1.5,
        knn=[{"epoch": 1, "step": 6, "top1": 0.5}],
        costs=[StageCost("a", 16, 8, 2)],
        none_flops_per_image=123,
    )
    saved = state.state_dict()
    assert (saved["epoch"], saved["step"]) == (2, 7) and saved["run_time_s"] >= 0
    again = RunState(iters_per_epoch=3)
    again.load_state_dict(saved)
    assert (again.step, again.epoch, again.step_in_epoch, again.elapsed_s) == (7, 2, 1, 1.5)
    assert again.knn == state.knn and again.costs == state.costs and again.none_flops_per_image == 123
    assert again.resumed_from == 7 and again.run_time() >= saved["run_time_s"]


def test_run_folder_cleans_stale_temps_and_truncates_metrics(tmp_path):
    folder = RunFolder(tmp_path / "run")
    (folder.out / "checkpoints").mkdir(parents=True)
    stale = [folder.out / ".metrics.csv.1.tmp", folder.out / "checkpoints" / ".last.pt.2.tmp"]
    for path in stale:
        path.write_text("half")
    folder.clean_stale_temps()
    assert not any(p.exists() for p in stale)
    folder.metrics = [{"row": "train", "step": s, "loss": 1.0 / s} for s in (1, 2, 3)]
    folder.write_metrics()
    folder.load_metrics(up_to_step=2)
    assert [r["step"] for r in folder.metrics] == [1, 2]


def test_train_with_a_user_backbone_and_dataset(tiny_dataset, tmp_path, one_epoch_config):
    from pretrain.engine import train

    torch.set_num_threads(1)
    cfg = one_epoch_config(tmp_path / "run")
    torch.manual_seed(5)
    backbone = build_backbone("vit_pico", img_size=32, patch_size=8, drop_path_rate=0.0, layerscale=None)
    initial = {k: v.clone() for k, v in backbone.state_dict().items()}
    train_set = Subset(open_dataset(tiny_dataset, "train"), range(40))
    result = train(cfg, backbone=backbone, train_set=train_set)
    assert result.finished and result.summary["iters_per_epoch"] == 2  # 40 images / batch 20
    ckpt = read_checkpoint(result.final)
    assert ckpt["model"]["layerscale"] is None and ckpt["teacher_backbone"].keys() == initial.keys()
    # the student trained the object we passed in
    assert any(not torch.equal(backbone.state_dict()[k], initial[k]) for k in initial)


def test_package_exports_its_public_pieces_lazily():
    import subprocess
    import sys

    code = (
        "import sys, pretrain.masking; assert 'pretrain.engine' not in sys.modules; "
        "from pretrain import DINOLoss, DINOHead, GaussianNoisePatch, build_curriculum, train; "
        "import pretrain; assert set(pretrain.__all__) >= {'DINOLoss', 'train'}; "
        "from pretrain.losses import DINOLoss as D; assert DINOLoss is D"
    )
    subprocess.run([sys.executable, "-c", code], check=True)
