"""``fdbench pretrain``: end to end on a tiny dataset, YAML curricula and config files, errors, and a
run killed with SIGKILL that continues to the same weights as an uninterrupted one."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest
import torch

from fdbench.checkpoint import read_checkpoint

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # tiny models: one intra-op thread is fastest (and matches the subprocess)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="session")
def options(tiny_run_options):
    """The tiny run's named options, with a kNN evaluation every 2 epochs."""
    return lambda out, **overrides: tiny_run_options(out, **{"eval_every": 2, **overrides})


def as_args(opts: dict) -> list[str]:
    args = []
    for key, value in opts.items():
        flag = "--lr" if key == "base_lr" else "--" + key.replace("_", "-")
        if isinstance(value, bool):
            args.append(flag if value else "--no-" + flag[2:])
        else:
            args += [flag, str(value)]
    return args


def run_cli(args, capsys) -> tuple[int, str, str]:
    from fdbench.cli import main

    with pytest.raises(SystemExit) as exit_info:
        main(["pretrain", *args])
    captured = capsys.readouterr()
    return exit_info.value.code, captured.out, captured.err


def test_pretrain_none_end_to_end(options, tmp_path, capsys):
    out = tmp_path / "none"
    code, stdout, stderr = run_cli(as_args(options(out, curriculum="none")), capsys)
    assert code == 0, stderr
    final = out / "final.pt"
    assert stdout.strip().splitlines()[-1] == str(final)
    assert f"next:       fdbench eval-corruptions {final}" in stderr
    assert f"metrics:    {out / 'metrics.csv'}" in stderr and f"summary:    {out / 'summary.json'}" in stderr
    summary = json.loads((out / "summary.json").read_text())
    assert [s["name"] for s in summary["stages"]] == ["full-res"]
    assert summary["stages"][0]["noise_patching"] is False
    # `none` against itself: the same step counted twice gives exactly ratio 1
    assert summary["flops"]["flops_ratio_vs_none"] == 1.0
    costs = pd.read_csv(out / "costs.csv")
    assert list(costs["stage"]) == ["full-res", "none (reference)"]
    # running the finished command again does not train again
    code, stdout, stderr = run_cli(as_args(options(out, curriculum="none")), capsys)
    assert code == 0 and "already finished" in stderr


def test_pretrain_gpu_pipeline_on_cpu_tensors_end_to_end(options, tmp_path, capsys):
    """--data-pipeline gpu on --device cpu: decode-only workers + the batched multi-crop on CPU
    tensors, through both stages (one step each), to a loadable final.pt."""
    from fdbench.checkpoint import load_backbone

    out = tmp_path / "gpu"
    opts = options(out, data_pipeline="gpu", compile=False, batch_size=80, epochs=2, eval_every=0)
    code, stdout, stderr = run_cli(as_args(opts), capsys)
    assert code == 0, stderr
    assert "data pipeline gpu, torch.compile off" in stderr
    assert stdout.strip().splitlines()[-1] == str(out / "final.pt")
    summary = json.loads((out / "summary.json").read_text())
    assert summary["pipeline"] == "gpu" and summary["iterations"] == 2
    assert [(s["global_size"], s["noise_patching"]) for s in summary["stages"]] == [(16, False), (32, True)]
    assert load_backbone(out / "final.pt").config.arch == "vit_pico"


def test_yaml_curriculum_config_file_and_default_out(options, tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    curriculum = tmp_path / "progressive.yaml"
    curriculum.write_text(
        "stages:\n"
        "  - {name: low, fraction: 0.34, global_size: 16, local_size: 8, n_local: 1}\n"
        "  - {name: mid, fraction: 0.33, global_size: 23, local_size: 16, n_local: 1}\n"
        "  - {name: full, fraction: 0.33, global_size: 32, local_size: 16, n_local: 2, noise_patching: true}\n"
    )
    config = tmp_path / "recipe.yaml"
    opts = options("unused", epochs=3)
    opts.pop("out")
    config.write_text("".join(f"{k.replace('_', '-')}: {v}\n" for k, v in opts.items()))
    code, _, stderr = run_cli(["--config", str(config), "--curriculum", str(curriculum)], capsys)
    assert code == 0, stderr
    out = tmp_path / "runs" / "progressive"
    metrics = pd.read_csv(out / "metrics.csv").query("row == 'train'")
    # 23 px rounds to 24 (a multiple of the 8 px patch); one epoch per stage
    assert metrics.groupby("epoch")["global_size"].unique().map(list).tolist() == [[16], [24], [32]]
    assert metrics.groupby("epoch")["n_local"].first().tolist() == [1, 1, 2]
    summary = json.loads((out / "summary.json").read_text())
    assert [s["noise_patching"] for s in summary["stages"]] == [False, False, True]
    assert summary["flops"]["flops_ratio_vs_none"] > 1.0


@pytest.mark.parametrize(
    "extra, message",
    [
        (["--curriculum", "bogus"], "unknown curriculum 'bogus'"),
        (["--batch-size", "1"], "--batch-size must be at least 2"),
        (["--batch-size", "500"], "fewer than one batch"),
        (["--data", "/does/not/exist"], "data folder not found"),
        (["--arch", "vit_huge"], "unknown --arch"),
        (["--resume"], "nothing to resume"),
    ],
)
def test_bad_input_is_one_line_and_exit_code_2(options, tmp_path, capsys, extra, message):
    opts = options(tmp_path / "bad")
    code, _, stderr = run_cli(as_args(opts) + extra, capsys)
    assert code == 2
    lines = [line for line in stderr.splitlines() if line.startswith("error:")]
    assert len(lines) == 1 and message in lines[0], stderr
    assert "Traceback" not in stderr


def test_sigkill_then_rerun_gives_the_uninterrupted_weights(options, tmp_path):
    from pretrain.config import build_config
    from pretrain.engine import train

    reference = train(build_config("cpu-tiny", **options(tmp_path / "reference", drop_path_rate=0.1)))

    out = tmp_path / "killed"
    opts = options(out, drop_path_rate=0.1, save_every_steps=1)
    env = {
        **os.environ,
        "OMP_NUM_THREADS": "1",
        "PYTHONPATH": str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", ""),
    }
    proc = subprocess.Popen(
        [sys.executable, "-m", "fdbench", "pretrain", *as_args(opts)],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    last = out / "checkpoints" / "last.pt"
    killed_at = None
    deadline = time.time() + 120
    while time.time() < deadline and proc.poll() is None:
        if last.exists():
            try:
                step = read_checkpoint(last)["step"]
            except Exception:  # noqa: BLE001 - a reader may race the writer's rename; try again
                step = 0
            if step >= 3:
                proc.send_signal(signal.SIGKILL)
                killed_at = step
                break
        time.sleep(0.02)
    proc.wait(timeout=60)
    assert killed_at is not None and proc.returncode == -signal.SIGKILL, proc.stderr.read().decode()[-2000:]
    assert not (out / "final.pt").exists()

    resumed = train(build_config("cpu-tiny", **opts))
    assert resumed.finished and resumed.resumed_from >= killed_at
    a, b = read_checkpoint(reference.final), read_checkpoint(resumed.final)
    for key in ("student", "teacher"):
        for name in a[key]:
            assert torch.equal(a[key][name], b[key][name]), f"{key}.{name}"
    assert torch.equal(a["losses"]["dino"]["center"], b["losses"]["dino"]["center"])
