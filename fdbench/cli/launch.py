"""``fdbench launch slurm``: an sbatch script for a multi-node ``fdbench pretrain`` that requeues itself."""

from __future__ import annotations

from pathlib import Path

import click

from fdbench.cli.common import echo


@click.group("launch")
def launch():
    """Launch fdbench pretrain on a cluster (SLURM)."""


@launch.command("slurm", context_settings={"ignore_unknown_options": True, "allow_interspersed_args": False})
@click.option("--nodes", type=int, default=1, show_default=True, help="Nodes of the allocation.")
@click.option("--gpus-per-node", type=int, default=1, show_default=True, help="GPUs (= processes) per node.")
@click.option("--partition", default=None, help="SLURM partition [the cluster's default].")
@click.option("--time", "time_limit", default=None, help="Time limit HH:MM:SS or D-HH:MM:SS [the partition's].")
@click.option("--cpus-per-gpu", type=int, default=8, show_default=True, help="CPU cores per GPU (data workers).")
@click.option(
    "--signal-seconds",
    type=int,
    default=120,
    show_default=True,
    help="Warn the run this long before the time limit (it saves last.pt, the job requeues).",
)
@click.option("--port", type=int, default=29500, show_default=True, help="c10d rendezvous port on the first node.")
@click.option("--job-name", default="fdbench", show_default=True)
@click.option(
    "--script",
    type=click.Path(dir_okay=False, path_type=Path),
    default=None,
    help="Where to write the script [RUN_FOLDER/launch.sbatch].",
)
@click.option("--submit", is_flag=True, help="Also submit it with sbatch.")
@click.argument("command", nargs=-1, type=click.UNPROCESSED, required=True)
def slurm(
    nodes, gpus_per_node, partition, time_limit, cpus_per_gpu, signal_seconds, port, job_name, script, submit, command
):
    """Write (and with --submit, submit) an sbatch script running COMMAND on every GPU of N nodes.

    \b
    fdbench launch slurm --nodes 4 --gpus-per-node 8 --partition gpu --time 24:00:00 -- \\
        pretrain --preset vit-b-in1k --data /datasets/imagenet --out runs/vitb
    """
    from fdbench.launch import SlurmSpec, submit as sbatch, write_slurm_script

    spec = SlurmSpec(nodes, gpus_per_node, partition, time_limit, cpus_per_gpu, signal_seconds, port, job_name)
    run_dir = pretrain_run_folder(list(command), nodes * gpus_per_node)
    path = write_slurm_script(spec, list(command[1:]), run_dir, script)
    echo(f"wrote {path} ({nodes} x {gpus_per_node} GPUs, run folder {run_dir})")
    if submit:
        echo(sbatch(path))
    else:
        echo(f"submit with: sbatch {path}")
    click.echo(str(path))


def pretrain_run_folder(command: list[str], world_size: int) -> Path:
    """Check COMMAND is a valid ``pretrain ...`` for ``world_size`` processes; returns its run folder."""
    from fdbench.errors import FdbenchError
    from fdbench.cli.pretrain import pretrain, recipe_from_command_line

    if not command or command[0] != "pretrain":
        raise FdbenchError(f"the command after -- must be `pretrain ...` (got {' '.join(command) or 'nothing'})")
    ctx = pretrain.make_context("fdbench pretrain", command[1:])
    params = dict(ctx.params)
    preset, config_file, sets = params.pop("preset"), params.pop("config_file"), params.pop("sets")
    params.pop("resume")
    # the GPU nodes' `auto` preset is gpu-small, whatever the machine that writes the script has
    cfg = recipe_from_command_line(preset or "gpu-small", config_file, params, sets)
    if cfg.run.batch_size % world_size:
        raise FdbenchError(f"--batch-size {cfg.run.batch_size} must be divisible by the {world_size} processes")
    return Path(cfg.run.out or Path("runs") / cfg.run_name)
