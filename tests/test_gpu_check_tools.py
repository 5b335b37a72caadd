"""The helpers of benchmarks/launch_count.py and benchmarks/gpu_summary.py, on hand-made inputs."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pandas as pd
import pytest
import torch
from torch.profiler import ProfilerActivity, profile, record_function

ROOT = Path(__file__).resolve().parents[1] / "benchmarks"


def _load(name):
    spec = importlib.util.spec_from_file_location(name, ROOT / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_count_ops_counts_top_level_kernel_ops_per_innermost_part():
    lc = _load("launch_count")
    x = torch.randn(4, 4)
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        with record_function("forward_backward"):
            y = x + 1  # 1
            y = y.view(16).view(4, 4)  # views: no kernel
            y = y.to(torch.float32)  # same dtype: no copy
            with record_function("student"):
                z = torch.nn.functional.linear(y, x)  # 1 (its addmm/mm inside is part of it)
                z = z.double()  # a real copy: 1
        with record_function("ema"):
            torch._foreach_mul_([x, y], 0.5)  # 1 for the whole list
        x * 2  # outside every part: not counted
    counts = lc.count_ops(prof)
    assert (counts["forward_backward"], counts["student"], counts["ema"]) == (1, 2, 1)
    assert sum(counts.values()) == 4


def test_summary_verdicts_and_compile_estimate(tmp_path):
    gs = _load("gpu_summary")
    assert gs._verdict(None, 1.0) == "not measured"
    assert "NOT met" in gs._verdict(0.9, 0.95) and "met" in gs._verdict(0.96, 0.95)
    assert "NOT met" in gs._verdict(0.5, 0.4, higher_is_better=False)
    # two stages logged every 5 steps at 0.1 s a step; the first window of each stage took 3 s more
    rows, elapsed = [], 0.0
    for step in range(5, 41, 5):
        stage = 0 if step <= 20 else 1
        elapsed += 0.5 + (3.0 if step in (5, 25) else 0.0)
        rows.append({"row": "train", "step": step, "stage": stage, "elapsed_s": elapsed})
    rows.append({"row": "knn", "step": 40, "stage": None, "elapsed_s": elapsed})
    pd.DataFrame(rows).to_csv(tmp_path / "metrics.csv", index=False)
    assert gs.compile_seconds(tmp_path / "metrics.csv") == pytest.approx(6.0)
    assert gs.compile_seconds(tmp_path / "missing.csv") is None
