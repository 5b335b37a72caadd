"""``fdbench pretrain``: DINOv2 (``--curriculum none``) or FastDINOv2 (``--curriculum two-stage``)."""

from __future__ import annotations

import sys
import typing

import click

from fdbench.cli.common import absolute_data, echo, sets_option
from pretrain.config import NAMED_OPTIONS, PRESETS, Option, build_config, load_config_file, parse_assignment


def _flag(option: Option):
    """The click option of a named recipe field, built from the field's type and metadata."""
    args = typing.get_args(option.hint)
    base = next((a for a in args if a is not type(None)), option.hint)
    if base is bool:
        spelled = option.flag[2:]
        return click.option(f"--{spelled}/--no-{spelled}", option.option, default=None, help=option.help)
    kind = click.Choice(option.choices) if option.choices else {int: int, float: float}.get(base, str)
    return click.option(option.flag, option.option, type=kind, default=None, help=option.help)


def recipe_flags(f):
    """One named flag per field whose metadata asks for one (``pretrain.config.opt(option=...)``)."""
    for option in reversed(list(NAMED_OPTIONS.values())):
        f = _flag(option)(f)
    return f


@click.command("pretrain")
@click.option(
    "--preset",
    type=click.Choice(["auto", *PRESETS]),
    default=None,
    help="Recipe to start from: auto = cpu-tiny on CPU, gpu-small on CUDA [auto].",
)
@recipe_flags
@sets_option("Set any recipe field, e.g. --set loss.koleo_weight=0.5 (repeatable; wins over the flags).")
@click.option(
    "--config",
    "config_file",
    type=click.Path(dir_okay=False),
    default=None,
    help="YAML recipe: a run's own config.yaml (nested sections), flag names (batch-size: 64) "
    "or dotted keys; the command line wins over the file.",
)
@click.option(
    "--resume",
    is_flag=True,
    help="Insist on continuing the run in --out (re-running the same command continues it anyway).",
)
def pretrain(preset, sets, config_file, resume, **options):
    """Pretrain a ViT with DINOv2, with or without the FastDINOv2 curriculum.

    \b
    fdbench pretrain --curriculum two-stage          # embedded dataset, cpu-tiny on a CPU
    fdbench pretrain --curriculum none               # the DINOv2 baseline, same recipe
    fdbench pretrain --curriculum two-stage --preset vit-s-in100 --data /imagenet --class-list in100.txt
    fdbench pretrain --set loss.koleo_weight=0.5 --set optim.weight_decay_end=0.2
    fdbench pretrain --config runs/none/config.yaml --out runs/none-again   # reproduce a run
    fdbench pretrain --data-pipeline gpu --compile   # crops on the GPU, compiled step (the CUDA default)
    torchrun --nproc-per-node 4 -m fdbench pretrain ...   # data-parallel
    """
    from pretrain.engine import train

    cfg = recipe_from_command_line(preset, config_file, options, sets)
    echo(
        f"pretrain: curriculum {cfg.curriculum.name}, preset {cfg.preset}, {cfg.model.arch}/{cfg.model.patch_size}, "
        f"{cfg.run.epochs} epochs, batch {cfg.run.batch_size}, data {cfg.data.root or 'embedded synthetic'}"
    )
    result = train(cfg, resume=resume, log=echo)
    if result.preempted:  # SIGTERM/SIGUSR1: last.pt is saved; a batch script requeues on this code
        from pretrain.preemption import EXIT_REQUEUE

        echo(f"preempted; re-run the same command to continue {result.out} (exit code {EXIT_REQUEUE})")
        sys.exit(EXIT_REQUEUE)
    if not result.finished:
        echo(f"stopped early; re-run the same command to continue {result.out}")
        return
    _print_report(result)
    click.echo(str(result.final))


def recipe_from_command_line(preset: str | None, config_file: str | None, options: dict, sets: tuple[str, ...]):
    """preset -> the --config file -> the named flags given -> --set, later ones winning."""
    file_preset, file_values = load_config_file(config_file) if config_file else (None, {})
    chosen = preset if preset is not None else file_preset
    given = {NAMED_OPTIONS[name].key: value for name, value in options.items() if value is not None}
    assignments = dict(parse_assignment(text) for text in sets)
    values = {**file_values, **given, **assignments}
    if values.get("data.root"):  # stored resolved: resumes and evaluations work from any folder
        values["data.root"] = absolute_data(values["data.root"])
    return build_config(None if chosen in (None, "auto") else chosen, sets=values)


def _print_report(result) -> None:
    s = result.summary
    for st in s.get("stages", []):
        gflops = st["flops_per_image"] / 1e9 if st.get("flops_per_image") else float("nan")
        echo(
            f"  stage {st['name']:<8} epochs {st['start_epoch']}-{st['end_epoch'] - 1}  "
            f"{st['global_size']}/{st['local_size']} px  {st['wall_clock_s']:.1f} s  {st['img_per_s']:.0f} img/s  "
            f"{1000 * st['step_time_s']:.0f} ms/step  {st['peak_memory_bytes'] / 2**20:.0f} MiB  "
            f"{gflops:.3f} GFLOPs/img"
        )
    flops = s.get("flops") or {}
    if flops:
        echo(
            f"  training FLOPs {flops['total_flops'] / 1e12:.2f} TFLOPs; the same schedule as `none`: "
            f"{flops['none_total_flops'] / 1e12:.2f} TFLOPs (ratio {flops['flops_ratio_vs_none']:.2f}x)"
        )
    knn = s.get("knn", {})
    if knn.get("final_top1") is not None:
        echo(f"  final kNN top-1 {100 * knn['final_top1']:.1f}% (k={knn['k']}, T={knn['temperature']})")
    echo(f"checkpoint: {result.final}")
    echo(f"metrics:    {result.metrics}  (per-stage costs: {result.out / 'costs.csv'})")
    echo(f"summary:    {result.summary_path}")
    echo(f"next:       fdbench eval-corruptions {result.final}")
