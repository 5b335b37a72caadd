"""``fdbench bench-train``: training-step and data-pipeline throughput for both curriculum stages."""

from __future__ import annotations

from pathlib import Path

import click

from fdbench.cli.common import config_option, device_option, echo, out_option, seed_option


@click.command("bench-train")
@click.option("--arch", default="vit_small", show_default=True, help="Backbone (vit_pico ... vit_large).")
@click.option("--patch-size", type=int, default=16, show_default=True)
@click.option("--batch-size", type=int, default=128, show_default=True, help="Images per step.")
@click.option("--global-size", type=int, default=224, show_default=True, help="Stage-2 global crop size (px).")
@click.option("--local-size", type=int, default=96, show_default=True, help="Stage-2 local crop size (px).")
@click.option("--n-local", type=int, default=8, show_default=True, help="Local crops per image.")
@click.option("--stage1-scale", type=float, default=0.5, show_default=True, help="Stage-1 sizes as a share of stage 2.")
@click.option("--stages", default="stage1,stage2", show_default=True, help="Comma-separated: stage1, stage2.")
@click.option("--prototypes", type=int, default=65536, show_default=True, help="DINO/iBOT head prototypes.")
@click.option("--hidden-dim", type=int, default=2048, show_default=True, help="DINO head hidden width.")
@click.option("--bottleneck-dim", type=int, default=256, show_default=True, help="DINO head bottleneck width.")
@click.option("--steps", type=int, default=20, show_default=True, help="Timed steps per measurement.")
@click.option("--warmup", type=int, default=5, show_default=True, help="Untimed steps first (compilation happens here).")
@click.option("--data", default=None, help="Images for the end-to-end runs [default: the embedded dataset].")
@click.option("--class-list", type=click.Path(dir_okay=False), default=None, help="Class folders to keep.")
@click.option("--workers", type=int, default=None, help="DataLoader workers [cores - 1].")
@click.option("--data-pipeline", "pipeline", type=click.Choice(["gpu", "cpu"]), default=None,
              help="Pipeline of the fast variant [gpu on CUDA, cpu on CPU]; gpu also runs on CPU tensors.")
@click.option("--compile/--no-compile", "compile_", default=None, help="torch.compile the backbones [on for CUDA].")
@click.option("--reference", is_flag=True, help="Also run the plain eager step + CPU pipeline in the same run.")
@click.option("--no-e2e", is_flag=True, help="Model-only (synthetic tensors), skip the end-to-end runs.")
@click.option("--decode-slack", type=float, default=1.0, show_default=True,
              help="Decode JPEGs this many times smaller than the smallest crop needs (gpu pipeline).")
@out_option("bench", help="Folder for bench.csv and bench.json.")
@device_option
@seed_option
@config_option
def bench_train(arch, patch_size, batch_size, global_size, local_size, n_local, stage1_scale, stages, prototypes,
                hidden_dim, bottleneck_dim, steps, warmup, data, class_list, workers, pipeline, compile_, reference,
                no_e2e, decode_slack, out, device, seed):
    """Measure model-only and end-to-end img/s, TFLOP/s, MFU and peak memory of a training step.

    \b
    fdbench bench-train --reference                         # ViT-S/16, batch 128, both stages
    fdbench bench-train --arch vit_base --data /imagenet    # real JPEGs through the GPU pipeline
    fdbench bench-train --arch vit_pico --patch-size 8 --global-size 32 --local-size 16 \\
        --batch-size 8 --prototypes 256 --steps 2 --device cpu   # a quick look on a CPU
    """
    from pretrain.bench import BenchConfig, format_table, run_bench, summarise, write_results

    cfg = BenchConfig(arch=arch, patch_size=patch_size, batch_size=batch_size, global_size=global_size,
                      local_size=local_size, n_local=n_local, stage1_scale=stage1_scale,
                      stages=tuple(s.strip() for s in stages.split(",") if s.strip()), prototypes=prototypes,
                      hidden_dim=hidden_dim, bottleneck_dim=bottleneck_dim, steps=steps, warmup=warmup,
                      data=data, class_list=class_list, workers=workers, pipeline=pipeline, compile=compile_,
                      reference=reference, end_to_end=not no_e2e, decode_slack=decode_slack, device=device, seed=seed)
    rows = run_bench(cfg, log=echo, on_row=lambda done: write_results(done, Path(out), cfg))
    paths = write_results(rows, Path(out), cfg)
    click.echo(format_table(rows))
    for line in summarise(rows):
        click.echo(line)
    echo(f"wrote {paths['csv']} and {paths['json']}")
