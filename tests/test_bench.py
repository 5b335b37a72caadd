"""bench-train on a CPU: tiny model, a couple of steps, both pipelines, the CSV and the CLI conventions."""

from __future__ import annotations

import json

import pandas as pd
import pytest
import torch
from click.testing import CliRunner

from fdbench.cli import cli
from fdbench.errors import FdbenchError
from pretrain.bench import BenchConfig, bench_stages, format_table, peak_tflops, run_bench, summarise

TINY = [
    "--arch",
    "vit_pico",
    "--patch-size",
    "8",
    "--global-size",
    "32",
    "--local-size",
    "16",
    "--n-local",
    "2",
    "--batch-size",
    "4",
    "--prototypes",
    "64",
    "--hidden-dim",
    "32",
    "--bottleneck-dim",
    "16",
    "--steps",
    "1",
    "--warmup",
    "0",
    "--workers",
    "0",
    "--device",
    "cpu",
]


def test_peak_table():
    assert peak_tflops("NVIDIA H100 80GB HBM3") == 989.0
    assert peak_tflops("NVIDIA H100 PCIe") == 756.0
    assert peak_tflops("NVIDIA H200") == 989.0
    assert peak_tflops("NVIDIA A100-SXM4-80GB") == 312.0
    assert peak_tflops("NVIDIA L40S") == 362.0
    assert peak_tflops("NVIDIA GeForce GTX 1080") is None and peak_tflops("cpu") is None


def test_stage_sizes_follow_the_curriculum_rounding():
    stages = bench_stages(BenchConfig(global_size=224, local_size=96, patch_size=16))
    assert [(s.name, s.global_size, s.local_size, s.noise_patching) for s in stages] == [
        ("stage1", 112, 48, False),
        ("stage2", 224, 96, True),
    ]
    assert (
        bench_stages(BenchConfig(global_size=224, local_size=98, patch_size=14, stages=("stage1",)))[0].global_size
        == 112
    )
    with pytest.raises(FdbenchError, match="unknown stage"):
        bench_stages(BenchConfig(stages=("stage3",)))


def test_run_bench_model_only_counts_flops(tiny_dataset):
    cfg = BenchConfig(
        arch="vit_pico",
        patch_size=8,
        global_size=32,
        local_size=16,
        n_local=2,
        batch_size=4,
        prototypes=64,
        hidden_dim=32,
        bottleneck_dim=16,
        steps=1,
        warmup=0,
        end_to_end=False,
        device="cpu",
        stages=("stage1", "stage2"),
    )
    seen = []
    rows = run_bench(cfg, on_row=lambda done: seen.append(len(done)))
    assert [r["stage"] for r in rows] == ["stage1", "stage2"] and seen == [1, 2]
    s1, s2 = rows
    assert s1["model_img_s"] > 0 and s1["e2e_img_s"] is None and s1["mfu"] is None
    # on CPU the peak memory is the process's RSS (issue 19; it was blank before)
    from pretrain.costs import rss_bytes

    assert 0 < s1["peak_mem_gib"] <= rss_bytes() / 2**30 * 1.5 and s1["act_ckpt"] is False
    # FLOPs grow with the token count: 4x the pixels per crop is at least 3x the FLOPs per step
    assert s2["tflop_per_step"] > 3 * s1["tflop_per_step"] > 0
    # the backbone alone: 2 matmul FLOPs per multiply-add, x3 for forward + backward, is a lower bound
    from fdbench.models import build_backbone

    n_params = sum(p.numel() for p in build_backbone("vit_pico", 32, 8).blocks.parameters())
    tokens = 2 * 4 * (16 + 1) + 2 * 4 * (4 + 1)  # stage 2: 8 global crops of 16 patches, 8 local of 4, + cls
    assert s2["flops_per_step"] > 2 * 2 * n_params * tokens  # student fwd+bwd (>= 2x fwd) over its tokens
    text = format_table(rows)
    assert "model_img_s" in text.splitlines()[0] and len(text.splitlines()) == 3


def test_cli_writes_csv_and_json_with_reference_side_by_side(tiny_dataset, tmp_path):
    out = tmp_path / "bench"
    result = CliRunner().invoke(
        cli,
        [
            "bench-train",
            *TINY,
            "--stages",
            "stage2",
            "--reference",
            "--data-pipeline",
            "gpu",
            "--data",
            str(tiny_dataset),
            "--out",
            str(out),
        ],
    )
    assert result.exit_code == 0, result.output
    frame = pd.read_csv(out / "bench.csv")
    assert list(frame["variant"]) == ["fast", "reference"]
    assert list(frame["pipeline"]) == ["gpu", "cpu"]
    assert (frame["e2e_img_s"] > 0).all() and (frame["model_img_s"] > 0).all()
    assert (frame["e2e_vs_model"] > 0).all() and frame["loss"].notna().all()
    saved = json.loads((out / "bench.json").read_text())
    assert saved["config"]["reference"] is True and len(saved["rows"]) == 2
    assert "e2e_img_s" in result.output


def test_summary_lines():
    rows = [
        {"variant": v, "stage": s, "e2e_img_s": e, "model_step_ms": m, "peak_mem_gib": g}
        for v, s, e, m, g in [
            ("fast", "stage1", 3000.0, 40.0, 4.0),
            ("fast", "stage2", 1300.0, 100.0, 12.0),
            ("reference", "stage1", 1000.0, 45.0, 5.0),
            ("reference", "stage2", 1100.0, 110.0, 16.0),
        ]
    ]
    lines = summarise(rows)
    assert any("stage1: end-to-end 3000 img/s fast vs 1000 reference (3.00x)" in line for line in lines)
    assert any("fast: stage-1 step takes 0.40 of stage-2's (model-only), peak memory 0.33" in line for line in lines)


@pytest.mark.parametrize(
    "args, message",
    [
        (["--arch", "vit_giant"], "unknown architecture"),
        (["--stages", "stage9"], "unknown stage"),
        (["--batch-size", "0"], "batch-size must be >= 1"),
        (["--batch-size", "1000", "--data", "DATA"], "fewer than one batch"),
    ],
)
def test_bad_input_is_one_line_error(args, message, tiny_dataset, capsys):
    from fdbench.cli import main

    args = [str(tiny_dataset) if a == "DATA" else a for a in args]
    with pytest.raises(SystemExit) as exit_info:
        main(["bench-train", *TINY, *args])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: ") and message in err[0]


@pytest.mark.cuda
def test_cuda_bench_reports_memory_and_mfu(tiny_dataset):
    if not torch.cuda.is_available():
        pytest.skip("needs CUDA")
    cfg = BenchConfig(
        arch="vit_pico",
        patch_size=8,
        global_size=32,
        local_size=16,
        n_local=2,
        batch_size=8,
        prototypes=64,
        hidden_dim=32,
        bottleneck_dim=16,
        steps=2,
        warmup=1,
        data=str(tiny_dataset),
        workers=0,
        compile=False,
        device="cuda",
        stages=("stage2",),
    )
    row = run_bench(cfg)[0]
    assert row["peak_mem_gib"] > 0 and row["pipeline"] == "gpu" and row["e2e_img_s"] > 0
