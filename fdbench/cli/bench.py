"""``fdbench bench-train``: training-step and data-pipeline throughput for both curriculum stages."""

from __future__ import annotations

from pathlib import Path

import click

from fdbench.cli.common import config_option, echo, out_option, sets_option
from pretrain.config import OPTIONS, parse_assignment, set_option

# the recipe fields bench-train names as flags (help from the field); any other: --set section.field=value
BENCH_FLAGS = (
    "arch",
    "patch_size",
    "batch_size",
    "global_size",
    "local_size",
    "n_local",
    "stage1_scale",
    "prototypes",
    "hidden_dim",
    "bottleneck_dim",
    "data",
    "class_list",
    "workers",
    "device",
    "seed",
)


def recipe_flags(f):
    from pretrain.bench_config import RECIPE_SHORTHANDS, bench_recipe

    recipe = bench_recipe()
    for name in reversed(BENCH_FLAGS):
        option = OPTIONS[RECIPE_SHORTHANDS[name]]
        section, field = option.key.split(".")
        default = getattr(getattr(recipe, section), field)
        kind = {int: int, float: float}.get(type(default), str)
        f = click.option(
            "--" + name.replace("_", "-"),
            name,
            type=kind,
            default=default,
            show_default=default is not None,
            help=option.help,
        )(f)
    return f


@click.command("bench-train")
@recipe_flags
@sets_option("Set any other recipe field, e.g. --set loss.koleo_weight=0.5 (repeatable).")
@click.option("--stages", default="stage1,stage2", show_default=True, help="Comma-separated: stage1, stage2.")
@click.option("--steps", type=int, default=20, show_default=True, help="Timed steps per measurement.")
@click.option(
    "--warmup", type=int, default=5, show_default=True, help="Untimed steps first (compilation happens here)."
)
@click.option(
    "--data-pipeline",
    "pipeline",
    type=click.Choice(["gpu", "cpu"]),
    default=None,
    help="Pipeline of the fast variant [gpu on CUDA, cpu on CPU]; gpu also runs on CPU tensors.",
)
@click.option("--compile/--no-compile", "compile_", default=None, help="torch.compile the backbones [on for CUDA].")
@click.option("--reference", is_flag=True, help="Also run the plain eager step + CPU pipeline in the same run.")
@click.option(
    "--activation-checkpointing/--no-activation-checkpointing",
    "activation_checkpointing",
    default=False,
    help="Recompute the student blocks in the backward pass (compare peak memory with and without).",
)
@click.option("--no-e2e", is_flag=True, help="Model-only (synthetic tensors), skip the end-to-end runs.")
@click.option(
    "--decode-slack",
    type=float,
    default=1.0,
    show_default=True,
    help="Decode JPEGs this many times smaller than the smallest crop needs (gpu pipeline).",
)
@out_option("bench", help="Folder for bench.csv and bench.json.")
@config_option
def bench_train(
    sets,
    stages,
    steps,
    warmup,
    pipeline,
    compile_,
    reference,
    activation_checkpointing,
    no_e2e,
    decode_slack,
    out,
    **recipe,
):
    """Measure model-only and end-to-end img/s, TFLOP/s, MFU and peak memory of a training step.

    \b
    fdbench bench-train --reference                         # ViT-S/16, batch 128, both stages
    fdbench bench-train --arch vit_base --data /imagenet    # real JPEGs through the GPU pipeline
    fdbench bench-train --arch vit_pico --patch-size 8 --global-size 32 --local-size 16 \\
        --batch-size 8 --prototypes 256 --steps 2 --device cpu   # a quick look on a CPU
    """
    from pretrain.bench import BenchConfig, format_table, run_bench, summarise, write_results

    cfg = BenchConfig(
        stages=tuple(s.strip() for s in stages.split(",") if s.strip()),
        steps=steps,
        warmup=warmup,
        pipeline=pipeline,
        compile=compile_,
        reference=reference,
        end_to_end=not no_e2e,
        decode_slack=decode_slack,
        **recipe,
    )
    cfg.recipe.run.activation_checkpointing = activation_checkpointing
    for text in sets:
        set_option(cfg.recipe, *parse_assignment(text))
    rows = run_bench(cfg, log=echo, on_row=lambda done: write_results(done, Path(out), cfg))
    paths = write_results(rows, Path(out), cfg)
    click.echo(format_table(rows))
    for line in summarise(rows):
        click.echo(line)
    echo(f"wrote {paths['csv']} and {paths['json']}")
