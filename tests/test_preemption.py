"""SIGTERM / SIGUSR1: a run finishes its step, saves last.pt, exits with code 75, and the re-run
continues exactly (the weights equal an uninterrupted run's, bit for bit)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import TINY_RUN
import torch

from fdbench.checkpoint import read_checkpoint
from pretrain.preemption import EXIT_REQUEUE

REPO = Path(__file__).resolve().parents[1]

# 2 epochs x 4 iterations (80 images, batch 20): stage 1 (16 px) is epoch 0, stage 2 (32 px) epoch 1
OPTS = {**TINY_RUN, "epochs": 2, "log_every": 1, "eval_every": 0, "threads": 1, "drop_path_rate": 0.1}


def _flags(root, out) -> list[str]:
    opts = {**OPTS, "data": str(root), "out": str(out), "preset": "cpu-tiny"}
    flags = [f"--{k.replace('_', '-')}={v}" for k, v in opts.items()]
    return [*flags, "--set", "run.knn_train_per_class=10"]


def _signal_during(monkeypatch, sig: signal.Signals | None, at: int) -> None:
    """The ``at``-th training step of the next run (1-based) gets ``sig`` after its forward/backward,
    before its optimiser step and EMA: the handler must let the step finish."""
    import pretrain.engine as engine

    real, calls = engine.train_step, [0]

    def step(meta, *args, **kwargs):
        calls[0] += 1
        if calls[0] == at:
            forward_backward = meta.forward_backward

            def signalled(*a, **k):
                out = forward_backward(*a, **k)
                os.kill(os.getpid(), sig)
                return out

            meta.forward_backward = signalled
            try:
                return real(meta, *args, **kwargs)
            finally:
                del meta.forward_backward
        return real(meta, *args, **kwargs)

    monkeypatch.setattr(engine, "train_step", step)


@pytest.fixture
def _restore_threads():
    threads = torch.get_num_threads()
    yield
    torch.set_num_threads(threads)


def test_signals_stop_after_the_step_and_resume_exactly(tiny_dataset, tmp_path, monkeypatch, capsys, _restore_threads):
    from fdbench.cli import main
    from pretrain.config import build_config
    from pretrain.engine import train

    def cfg(out):
        c = build_config("cpu-tiny", **OPTS, data=str(tiny_dataset), out=str(out))
        c.run.knn_train_per_class = 10
        return c

    handlers = signal.getsignal(signal.SIGTERM), signal.getsignal(signal.SIGUSR1)
    reference = train(cfg(tmp_path / "reference"))
    assert reference.finished and not reference.preempted
    out = tmp_path / "preempted"
    # the command line: SIGTERM during step 4, the last of epoch 0 (stage 1): the epoch ends as usual
    # (its checkpoint), then `fdbench pretrain` exits with the requeue code
    _signal_during(monkeypatch, signal.SIGTERM, 4)
    with pytest.raises(SystemExit) as exited:
        main(["pretrain", *_flags(tiny_dataset, out)])
    assert exited.value.code == EXIT_REQUEUE
    err = capsys.readouterr().err
    assert "SIGTERM received" in err and "preempted; re-run" in err
    assert read_checkpoint(out / "checkpoints" / "last.pt")["step"] == 4 and not (out / "final.pt").exists()
    # SIGUSR1 during the re-run's second step (step 6, mid epoch 1, stage 2): stops right after it
    _signal_during(monkeypatch, signal.SIGUSR1, 2)
    second = train(cfg(out))
    assert second.preempted and not second.finished and second.resumed_from == 4
    assert read_checkpoint(out / "checkpoints" / "last.pt")["step"] == 6
    monkeypatch.undo()
    third = train(cfg(out))
    assert third.finished and third.resumed_from == 6

    a, b = read_checkpoint(reference.final), read_checkpoint(third.final)
    assert a["step"] == b["step"] == 8
    for key in ("student", "teacher"):
        assert a[key].keys() == b[key].keys()
        for name in a[key]:
            assert torch.equal(a[key][name], b[key][name]), f"{key}.{name}"
    for loss in ("dino", "ibot"):
        assert torch.equal(a["losses"][loss]["center"], b["losses"][loss]["center"])
    import pandas as pd

    steps = pd.read_csv(out / "metrics.csv").query("row == 'train'")["step"].tolist()
    assert steps == list(range(1, 9))
    # train() gave the process its own handlers back
    assert signal.getsignal(signal.SIGTERM) is handlers[0] and signal.getsignal(signal.SIGUSR1) is handlers[1]


def test_watch_restores_handlers_and_ignores_repeats():
    from pretrain.preemption import PreemptionWatch

    before = signal.getsignal(signal.SIGTERM), signal.getsignal(signal.SIGUSR1)
    with PreemptionWatch() as watch:
        assert watch.requested is None and watch.flag == 0.0
        os.kill(os.getpid(), signal.SIGUSR1)
        assert watch.requested == "SIGUSR1" and watch.flag == 1.0
        os.kill(os.getpid(), signal.SIGTERM)  # the same request forwarded again: still alive, first kept
        os.kill(os.getpid(), signal.SIGUSR1)
        assert watch.requested == "SIGUSR1"
    assert (signal.getsignal(signal.SIGTERM), signal.getsignal(signal.SIGUSR1)) == before


# Under torchrun: only rank 1 is signalled (during its step 2); both ranks must stop after that same
# step (the checkpoint is a collective), with one last.pt at step 2
RANK_SCRIPT = """
import json, os, signal, sys
import torch
import torch.distributed as dist
import pretrain.engine as engine
from pretrain.config import build_config

torch.set_num_threads(1)
real, calls = engine.train_step, [0]
def step(*args, **kwargs):
    calls[0] += 1
    out = real(*args, **kwargs)
    if calls[0] == 2 and dist.get_rank() == 1:
        os.kill(os.getpid(), signal.SIGUSR1)
    return out
engine.train_step = step
cfg = build_config("cpu-tiny", **json.loads(sys.argv[1]))
cfg.run.knn_train_per_class = 10
result = engine.train(cfg)
rank = int(os.environ["RANK"])
with open(f"{cfg.run.out}/rank{rank}.json", "w") as fh:
    json.dump({"preempted": result.preempted, "finished": result.finished, "steps": calls[0]}, fh)
"""


@pytest.mark.slow
def test_a_signal_to_one_ddp_rank_stops_every_rank_after_the_same_step(tiny_dataset, tmp_path):
    import json

    out = tmp_path / "ddp"
    out.mkdir()
    script = tmp_path / "rank_script.py"
    script.write_text(RANK_SCRIPT)
    opts = {**OPTS, "data": str(tiny_dataset), "out": str(out), "log_every": 1}
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO)}
    proc = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2", str(script)]
        + [json.dumps(opts)],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    ranks = [json.loads((out / f"rank{r}.json").read_text()) for r in range(2)]
    assert ranks == [{"preempted": True, "finished": False, "steps": 2}] * 2
    assert read_checkpoint(out / "checkpoints" / "last.pt")["step"] == 2
