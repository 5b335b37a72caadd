"""Cluster launches: an sbatch script that runs ``fdbench pretrain`` on N nodes x G GPUs and requeues
itself when SLURM warns of the time limit (or preempts the job), continuing from ``last.pt``.

How the pieces meet (see :mod:`pretrain.preemption` for the engine's side)::

    SLURM --signal=B:USR1@T   ->  the batch shell's trap: remember it, forward USR1 to srun
    srun                      ->  USR1 to the torchrun of every node
    torchrun --signals-to-handle ...,SIGUSR1 --shutdown-timeout T'
                              ->  USR1 to every worker, then waits up to T' s before SIGKILL
    fdbench pretrain (worker) ->  finishes its step, all ranks agree, rank 0 writes last.pt, exit 75
    the batch shell           ->  signalled and no final.pt: ``scontrol requeue $SLURM_JOB_ID``

torchrun reports any failed worker as exit code 1, so the script decides on "a signal arrived and
the run has no ``final.pt``", and also on exit code 75 from a launch whose code survives (a
torchrun-less single process). A SIGTERM (preemption, ``scancel``) reaches every process of the job
from SLURM itself; the trap then only remembers it. Nodes rendezvous with torchrun's c10d backend on
the first node of the allocation.
"""

from __future__ import annotations

import shlex
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

from fdbench.errors import FdbenchError
from fdbench.io import atomic_write_text

EXIT_REQUEUE = 75  # pretrain.preemption.EXIT_REQUEUE (not imported: this module must not need torch)
TORCHRUN_SIGNALS = "SIGTERM,SIGINT,SIGHUP,SIGQUIT,SIGUSR1"


@dataclass
class SlurmSpec:
    nodes: int = 1
    gpus_per_node: int = 1
    partition: str | None = None
    time: str | None = None  # HH:MM:SS or D-HH:MM:SS
    cpus_per_gpu: int = 8
    signal_seconds: int = 120  # the warning before the time limit
    port: int = 29500
    job_name: str = "fdbench"
    python: str = sys.executable


def _check(spec: SlurmSpec) -> None:
    import re

    problems = [
        (spec.nodes >= 1, f"--nodes must be at least 1 (got {spec.nodes})"),
        (spec.gpus_per_node >= 1, f"--gpus-per-node must be at least 1 (got {spec.gpus_per_node})"),
        (spec.cpus_per_gpu >= 1, f"--cpus-per-gpu must be at least 1 (got {spec.cpus_per_gpu})"),
        (spec.signal_seconds >= 30, f"--signal-seconds must be at least 30 (got {spec.signal_seconds})"),
        (1 <= spec.port <= 65535, f"--port must be 1-65535 (got {spec.port})"),
        (
            spec.time is None or re.fullmatch(r"(\d+-)?\d{1,3}:\d{2}:\d{2}", spec.time) is not None,
            f"--time must be HH:MM:SS or D-HH:MM:SS (got {spec.time!r})",
        ),
        (re.fullmatch(r"[A-Za-z0-9._-]+", spec.job_name) is not None, f"bad --job-name {spec.job_name!r}"),
    ]
    for ok, message in problems:
        if not ok:
            raise FdbenchError(message)


def slurm_script(spec: SlurmSpec, pretrain_args: list[str], run_dir: Path, workdir: Path) -> str:
    """The sbatch script's text. ``pretrain_args``: the words after ``fdbench pretrain``;
    ``run_dir``: the run folder they name (its ``final.pt`` says "finished"); ``workdir``: where the
    command runs (relative paths in the arguments resolve from there)."""
    _check(spec)
    world = spec.nodes * spec.gpus_per_node
    # torchrun must wait for the workers' checkpoint; SLURM kills everything at the time limit
    grace = max(spec.signal_seconds - 15, 15)
    q = shlex.quote
    lines = [
        "#!/bin/bash",
        f"# written by `fdbench launch slurm`: {spec.nodes} node(s) x {spec.gpus_per_node} GPU(s) = {world}"
        " processes of `fdbench pretrain`,",
        f"# requeued when SLURM warns {spec.signal_seconds} s before the time limit or preempts the job;"
        " each run continues from last.pt",
        f"#SBATCH --job-name={spec.job_name}",
        f"#SBATCH --nodes={spec.nodes}",
        "#SBATCH --ntasks-per-node=1",
        f"#SBATCH --gpus-per-node={spec.gpus_per_node}",
        f"#SBATCH --cpus-per-task={spec.cpus_per_gpu * spec.gpus_per_node}",
        *([f"#SBATCH --partition={spec.partition}"] if spec.partition else []),
        *([f"#SBATCH --time={spec.time}"] if spec.time else []),
        f"#SBATCH --signal=B:USR1@{spec.signal_seconds}",
        "#SBATCH --requeue",
        "#SBATCH --open-mode=append",
        f"#SBATCH --output={run_dir}/slurm-%j.out",
        "",
        "set -u",
        f"cd {q(str(workdir))}",
        f"RUN_DIR={q(str(run_dir))}",
        f"EXIT_REQUEUE={EXIT_REQUEUE}",
        'MASTER_ADDR=$(scontrol show hostnames "$SLURM_JOB_NODELIST" | head -n 1)',
        f"MASTER_PORT={spec.port}",
        f"export OMP_NUM_THREADS={spec.cpus_per_gpu}",
        "",
        "# USR1 (the time-limit warning, to this shell only): forward it to the job step, whose torchrun",
        "# passes it to every worker. TERM (preemption, scancel) reaches every process from SLURM itself.",
        "signalled=0",
        'on_usr1() { signalled=1; echo "fdbench: USR1 (time limit near): saving last.pt, then requeueing";'
        ' [ -n "${step_pid:-}" ] && kill -USR1 "$step_pid" 2>/dev/null; }',
        'on_term() { signalled=1; echo "fdbench: TERM (preempted or cancelled): saving last.pt"; }',
        "trap on_usr1 USR1",
        "trap on_term TERM",
        "",
        "# one torchrun per node (c10d rendezvous on the first node), each starting one worker per GPU",
        "srun --kill-on-bad-exit=1 --ntasks-per-node=1 \\",
        f"    {q(spec.python)} -m torch.distributed.run \\",
        f"    --nnodes={spec.nodes} --nproc-per-node={spec.gpus_per_node} \\",
        '    --rdzv-backend=c10d --rdzv-endpoint="$MASTER_ADDR:$MASTER_PORT" --rdzv-id="$SLURM_JOB_ID" \\',
        f"    --signals-to-handle={TORCHRUN_SIGNALS} --shutdown-timeout={grace} \\",
        "    -m fdbench pretrain " + " ".join(q(a) for a in pretrain_args) + " &",
        "step_pid=$!",
        "# a trapped signal interrupts `wait`: wait again until the step has really ended",
        'wait "$step_pid"; status=$?',
        'while kill -0 "$step_pid" 2>/dev/null; do wait "$step_pid"; status=$?; done',
        "",
        'if [ ! -f "$RUN_DIR/final.pt" ] && { [ "$signalled" = 1 ] || [ "$status" -eq "$EXIT_REQUEUE" ]; }; then',
        '    echo "fdbench: run not finished (exit $status): requeueing job $SLURM_JOB_ID"',
        '    scontrol requeue "$SLURM_JOB_ID"',
        "    exit 0",
        "fi",
        'exit "$status"',
        "",
    ]
    return "\n".join(lines)


def write_slurm_script(spec: SlurmSpec, pretrain_args: list[str], run_dir: Path, script: Path | None = None) -> Path:
    """Write the script (default ``RUN_DIR/launch.sbatch``; the run folder is created for SLURM's log)."""
    run_dir = Path(run_dir).absolute()
    text = slurm_script(spec, pretrain_args, run_dir, Path.cwd())
    script = Path(script) if script else run_dir / "launch.sbatch"
    run_dir.mkdir(parents=True, exist_ok=True)
    script.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(script, text)
    script.chmod(0o755)
    return script


def submit(script: Path) -> str:
    """``sbatch SCRIPT``; returns sbatch's answer (``Submitted batch job N``)."""
    sbatch = shutil.which("sbatch")
    if sbatch is None:
        raise FdbenchError(f"sbatch not found on PATH; the script is written: submit it with `sbatch {script}`")
    proc = subprocess.run([sbatch, str(script)], capture_output=True, text=True)
    if proc.returncode != 0:
        detail = (proc.stderr or proc.stdout).strip().splitlines()
        raise FdbenchError(f"sbatch {script} failed: {detail[-1] if detail else f'exit code {proc.returncode}'}")
    return proc.stdout.strip()
