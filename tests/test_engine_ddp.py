"""Data-parallel training: 2 gloo processes on CPU under torchrun, a few steps across the stage switch."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

REPO = Path(__file__).resolve().parents[1]

# Run by torchrun on each rank: train, then save this rank's student and centres for comparison.
RANK_SCRIPT = """
import json, sys
import torch
import torch.distributed as dist
import pretrain.engine as engine
from pretrain.config import build_config

torch.set_num_threads(1)
built = []
class Recorded(engine.MetaArch):
    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        built.append(self)
engine.MetaArch = Recorded
dist.init_process_group("gloo")            # our own group, so it outlives train()
cfg = build_config("cpu-tiny", **json.loads(sys.argv[1]))
cfg.run.knn_train_per_class = 10
result = engine.train(cfg)
meta = built[0]                            # the run's model (measure_flops builds scratch copies later)
rank = dist.get_rank()
torch.save({"student": meta.student.state_dict(), "teacher": meta.teacher.state_dict(),
            "dino_center": meta.dino_loss.center, "ibot_center": meta.ibot_loss.center,
            "finished": result.finished}, f"{cfg.run.out}/rank{rank}.pt")
dist.destroy_process_group()
"""


@pytest.mark.slow
def test_two_gloo_processes_train_in_sync(tiny_run_options, tmp_path):
    out = tmp_path / "ddp"
    out.mkdir()
    script = tmp_path / "rank_script.py"
    script.write_text(RANK_SCRIPT)
    # 2 epochs x 4 iterations of a global batch of 20 (10 per rank); stage 2 starts at epoch 1
    opts = tiny_run_options(out, epochs=2, eval_every=0, log_every=1)
    env = {
        **os.environ,
        "OMP_NUM_THREADS": "1",
        "PYTHONPATH": str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", ""),
    }
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "torch.distributed.run",
            "--standalone",
            "--nproc-per-node",
            "2",
            str(script),
            json.dumps(opts),
        ],
        env=env,
        capture_output=True,
        text=True,
        timeout=240,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]

    ranks = [torch.load(out / f"rank{r}.pt", weights_only=True) for r in range(2)]
    assert all(r["finished"] for r in ranks)
    # gradients were averaged (DDP) and centring statistics all-reduced: both ranks hold the same model
    for key in ("student", "teacher"):
        for name, value in ranks[0][key].items():
            assert torch.equal(value, ranks[1][key][name]), f"{key}.{name}"
    assert torch.equal(ranks[0]["dino_center"], ranks[1]["dino_center"])
    assert torch.equal(ranks[0]["ibot_center"], ranks[1]["ibot_center"])
    assert ranks[0]["dino_center"].abs().sum() > 0

    summary = json.loads((out / "summary.json").read_text())
    assert summary["world_size"] == 2 and summary["iterations"] == 8 and summary["finished"]
    assert [s["global_size"] for s in summary["stages"]] == [16, 32]
    assert (out / "final.pt").is_file() and not list(out.glob("checkpoints/rank*"))
