"""``--strategy fsdp`` (FSDP2) and ``--activation-checkpointing``: the same training as DDP / as
without, within float rounding, 2 gloo processes on CPU across the stage switch; FSDP checkpoints are
the consolidated fdbench/1 files, and a resumed FSDP run equals an uninterrupted one bit for bit."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
from conftest import TINY_RUN
import torch

from fdbench.checkpoint import load_backbone, read_checkpoint

REPO = Path(__file__).resolve().parents[1]

# Each rank runs the listed trainings one after the other in one process group (one start-up).
# ``slow_stop_save`` seconds: rank 0 writes the checkpoint before a stop_after_steps stop that much
# later, as on a loaded machine. Every rank must still start the next run from that checkpoint:
# a rank that read the previous last.pt would resume a step behind and meet the other rank's
# collectives out of order (gloo's "14784 vs 4 ... collective mismatch", once 1 run in 4 here).
RANK_SCRIPT = """
import json, sys, time
import torch
import torch.distributed as dist
import pretrain.engine as engine
from pretrain.config import build_config

torch.set_num_threads(1)
dist.init_process_group("gloo")
opts = json.loads(sys.argv[1])
slow_stop_save = float(sys.argv[3])
real_save = engine.Trainer.save
def save(self, final=False):
    stop = self.cfg.run.stop_after_steps
    if dist.get_rank() == 0 and stop and self.steps_this_process >= stop:
        time.sleep(slow_stop_save)
    return real_save(self, final)
engine.Trainer.save = save
for name, extra in json.loads(sys.argv[2]):
    cfg = build_config("cpu-tiny", **{**opts, **extra, "out": f"{opts['out']}/{name}"})
    cfg.run.knn_train_per_class = 10
    engine.train(cfg)
dist.destroy_process_group()
"""

# 2 epochs x 4 iterations of a global batch of 20 (10 per rank); stage 2 (32 px) starts at epoch 1
OPTS = {**TINY_RUN, "epochs": 2, "eval_every": 0, "log_every": 1, "drop_path_rate": 0.1}


def _torchrun(tmp_path, root, runs: list, slow_stop_save: float = 0.0) -> Path:
    out = tmp_path / "runs"
    script = tmp_path / "rank_script.py"
    script.write_text(RANK_SCRIPT)
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO)}
    opts = json.dumps({**OPTS, "data": str(root), "out": str(out)})
    proc = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2", str(script), opts]
        + [json.dumps(runs), str(slow_stop_save)],
        env=env,
        capture_output=True,
        text=True,
        timeout=240,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    return out


def _max_diff(a: dict, b: dict, key: str) -> float:
    assert a[key].keys() == b[key].keys()
    return max((a[key][n].float() - b[key][n].float()).abs().max().item() for n in a[key])


@pytest.mark.slow
def test_fsdp_with_activation_checkpointing_trains_like_ddp(tiny_dataset, tmp_path):
    out = _torchrun(
        tmp_path,
        tiny_dataset,
        [["ddp", {"strategy": "ddp"}], ["fsdp", {"strategy": "fsdp", "activation_checkpointing": True}]],
    )
    ddp, fsdp = (pd.read_csv(out / name / "metrics.csv") for name in ("ddp", "fsdp"))
    train = [frame.query("row == 'train'") for frame in (ddp, fsdp)]
    assert train[0]["step"].tolist() == train[1]["step"].tolist() == list(range(1, 9))
    assert train[1]["global_size"].tolist() == [16] * 4 + [32] * 4  # across the stage switch
    for column in ("loss", "dino", "koleo", "ibot", "grad_norm", "teacher_rank"):
        a, b = train[0][column].to_numpy(), train[1][column].to_numpy()
        assert abs(a - b).max() <= 1e-5 * max(1.0, abs(a).max()), column  # the CSV keeps 5-6 decimals
    a, b = read_checkpoint(out / "ddp" / "final.pt"), read_checkpoint(out / "fsdp" / "final.pt")
    # one consolidated file, the same entries as DDP's (no DTensors: weights_only loading worked)
    assert set(a) == set(b) and all(type(v) is torch.Tensor for v in b["student"].values())
    assert _max_diff(a, b, "student") < 1e-4 and _max_diff(a, b, "teacher") < 1e-5
    for loss in ("dino", "ibot"):
        torch.testing.assert_close(a["losses"][loss]["center"], b["losses"][loss]["center"], rtol=1e-5, atol=1e-6)
    # the kNN monitor saw the whole teacher (gathered into rank 0's copy)
    knn = [frame.query("row == 'knn'")["knn_top1"].tolist() for frame in (ddp, fsdp)]
    assert len(knn[1]) == 1 and knn[0] == pytest.approx(knn[1], abs=0.03)
    assert load_backbone(out / "fsdp" / "final.pt").config.arch == "vit_pico"
    last = read_checkpoint(out / "fsdp" / "checkpoints" / "last.pt")
    # the optimiser state is the unsharded layout DDP saves: same parameters, same shapes
    last_ddp = read_checkpoint(out / "ddp" / "checkpoints" / "last.pt")
    assert last["optimizer"]["state"].keys() == last_ddp["optimizer"]["state"].keys()
    for i, s in last["optimizer"]["state"].items():
        assert s["exp_avg"].shape == last_ddp["optimizer"]["state"][i]["exp_avg"].shape


@pytest.mark.slow
def test_fsdp_resumes_exactly_and_across_strategies(tiny_dataset, tmp_path):
    stop = {"save_every_steps": 1, "stop_after_steps": 5}  # mid epoch 1, after the switch
    out = _torchrun(
        tmp_path,
        tiny_dataset,
        [
            ["whole", {"strategy": "fsdp"}],
            ["resumed", {"strategy": "fsdp", **stop}],
            ["resumed", {"strategy": "fsdp"}],
            ["switched", {"strategy": "ddp", "save_every_steps": 1, "stop_after_steps": 3}],
            ["switched", {"strategy": "fsdp"}],
        ],
        slow_stop_save=2.0,
    )
    whole, resumed, switched = (read_checkpoint(out / n / "final.pt") for n in ("whole", "resumed", "switched"))
    for key in ("student", "teacher"):
        for name in whole[key]:
            assert torch.equal(whole[key][name], resumed[key][name]), f"{key}.{name}"
    # begun under DDP, finished under FSDP: the same run up to float rounding
    assert _max_diff(whole, switched, "student") < 1e-4 and _max_diff(whole, switched, "teacher") < 1e-5


def test_activation_checkpointing_changes_memory_not_maths(tiny_dataset, tmp_path):
    from pretrain.config import build_config
    from pretrain.engine import train

    threads = torch.get_num_threads()
    finals = []
    try:
        for ac in (False, True):
            cfg = build_config(
                "cpu-tiny",
                **{**OPTS, "epochs": 1, "threads": 1},
                activation_checkpointing=ac,
                data=str(tiny_dataset),
                out=str(tmp_path / f"ac{int(ac)}"),
            )
            cfg.run.knn_train_per_class = 10
            finals.append(read_checkpoint(train(cfg).final))
    finally:
        torch.set_num_threads(threads)
    # the recomputed blocks replay the same drop-path masks: the same weights (recomputation may
    # round differently in principle; on CPU it does not)
    assert _max_diff(finals[0], finals[1], "student") < 1e-6 and _max_diff(finals[0], finals[1], "teacher") < 1e-7
    # and it does recompute: each checkpointed block's forward runs again in the backward pass
    from pretrain.meta_arch import MetaArch
    from pretrain.sharding import checkpoint_blocks

    meta = MetaArch(build_config("cpu-tiny", **OPTS), "cpu")
    checkpoint_blocks(meta.student.backbone)
    calls = []
    for block in meta.student.backbone.blocks:
        block.attn.register_forward_hook(lambda *a: calls.append(1))
    cls, _ = meta.student.backbone(torch.rand(2, 3, 32, 32))
    assert len(calls) == 2
    cls.sum().backward()
    assert len(calls) == 4
