"""``fdbench launch slurm``: the sbatch script's content, and its requeue logic run for real with
stand-ins for srun and scontrol (a fake cluster: shell scripts on PATH that record their calls)."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import time
from pathlib import Path

import pytest

from fdbench.cli import main

PRETRAIN = ["pretrain", "--preset", "vit-s-in100", "--data", "/datasets/in100", "--out", "runs/vits", "--set"]
PRETRAIN += ["loss.koleo_weight=0.5", "--batch-size", "256"]


def _launch(args: list[str], capsys) -> tuple[int, str, str]:
    with pytest.raises(SystemExit) as exited:
        main(["launch", "slurm", *args])
    captured = capsys.readouterr()
    return exited.value.code, captured.out, captured.err


def _write(tmp_path, monkeypatch, capsys, *extra: str) -> Path:
    monkeypatch.chdir(tmp_path)
    code, out, err = _launch(
        ["--nodes", "2", "--gpus-per-node", "4", "--partition", "gpu", "--time", "12:00:00", *extra, "--", *PRETRAIN],
        capsys,
    )
    assert code == 0, err
    return Path(out.strip())


def test_script_content_and_syntax(tmp_path, monkeypatch, capsys):
    script = _write(tmp_path, monkeypatch, capsys)
    assert script == tmp_path / "runs" / "vits" / "launch.sbatch" and os.access(script, os.X_OK)
    text = script.read_text()
    lines = text.splitlines()
    for directive in (
        "--nodes=2",
        "--ntasks-per-node=1",
        "--gpus-per-node=4",
        "--cpus-per-task=32",
        "--partition=gpu",
        "--time=12:00:00",
        "--signal=B:USR1@120",
        "--requeue",
        f"--output={tmp_path}/runs/vits/slurm-%j.out",
    ):
        assert f"#SBATCH {directive}" in lines, directive
    # the directives come before the first command (sbatch stops reading them there)
    first_command = next(i for i, line in enumerate(lines) if line and not line.startswith("#"))
    assert all(i < first_command for i, line in enumerate(lines) if line.startswith("#SBATCH"))
    assert f"cd {tmp_path}" in lines and f"RUN_DIR={tmp_path}/runs/vits" in lines
    command = " ".join(line.rstrip("\\").strip() for line in text.split("srun ", 1)[1].split("&\n")[0].splitlines())
    assert command.startswith("--kill-on-bad-exit=1 --ntasks-per-node=1 ")
    assert "-m torch.distributed.run --nnodes=2 --nproc-per-node=4 --rdzv-backend=c10d" in command
    assert '--rdzv-endpoint="$MASTER_ADDR:$MASTER_PORT" --rdzv-id="$SLURM_JOB_ID"' in command
    assert "--signals-to-handle=SIGTERM,SIGINT,SIGHUP,SIGQUIT,SIGUSR1 --shutdown-timeout=105" in command
    assert command.endswith("-m fdbench pretrain " + " ".join(PRETRAIN[1:]))
    assert 'scontrol requeue "$SLURM_JOB_ID"' in text
    assert subprocess.run(["bash", "-n", str(script)], capture_output=True).returncode == 0


def test_bad_commands_are_one_line_errors(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    code, _, err = _launch(["--nodes", "3", "--gpus-per-node", "4", "--", *PRETRAIN], capsys)
    assert code == 2 and "--batch-size 256 must be divisible by the 12 processes" in err
    code, _, err = _launch(["--", "eval-corruptions", "x.pt"], capsys)
    assert code == 2 and "must be `pretrain ...`" in err
    code, _, err = _launch(["--", "pretrain", "--no-such-flag"], capsys)
    assert code == 2 and "no-such-flag" in err and len(err.strip().splitlines()) == 1
    code, _, err = _launch(["--time", "tomorrow", "--", *PRETRAIN], capsys)
    assert code == 2 and "--time must be" in err
    assert not (tmp_path / "runs").exists() or not list((tmp_path / "runs").rglob("launch.sbatch"))


def _fake_bin(tmp_path: Path, sbatch: bool = False) -> Path:
    """srun: records its arguments, then 'trains' until USR1 (torchrun reports the workers' exit 75
    as 1) or for FAKE_TRAIN_S seconds, writing final.pt if FAKE_FINISH; scontrol: hostnames and requeue."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir(exist_ok=True)
    scripts = {
        "srun": """#!/bin/bash
printf '%s\\n' "$@" > "$FAKE_LOG/srun.args"
trap 'echo USR1 >> "$FAKE_LOG/signals"; exit 1' USR1
touch "$FAKE_LOG/started"
end=$((SECONDS + FAKE_TRAIN_S))
while [ $SECONDS -lt $end ]; do sleep 0.05; done
[ -n "${FAKE_FINISH:-}" ] && touch "$FAKE_RUN/final.pt"
exit "${FAKE_EXIT:-0}"
""",
        "scontrol": """#!/bin/bash
case "$1" in
  show) echo node-a; echo node-b ;;
  requeue) echo "$2" > "$FAKE_LOG/requeued" ;;
esac
""",
    }
    if sbatch:
        scripts["sbatch"] = '#!/bin/bash\necho "Submitted batch job 4242"\n'
    for name, text in scripts.items():
        (bin_dir / name).write_text(text)
        (bin_dir / name).chmod(0o755)
    return bin_dir


def _run_job(script: Path, tmp_path: Path, *, usr1: bool = False, **env) -> tuple[int, Path]:
    log = tmp_path / f"log-{time.monotonic_ns()}"
    log.mkdir()
    environ = {
        **os.environ,
        "PATH": f"{_fake_bin(tmp_path)}{os.pathsep}{os.environ['PATH']}",
        "SLURM_JOB_ID": "777",
        "SLURM_JOB_NODELIST": "node-[a-b]",
        "FAKE_LOG": str(log),
        "FAKE_RUN": str(script.parent),
        "FAKE_TRAIN_S": "0",
        **env,
    }
    proc = subprocess.Popen(["bash", str(script)], env=environ, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    if usr1:
        deadline = time.monotonic() + 10
        while not (log / "started").exists() and time.monotonic() < deadline:
            time.sleep(0.02)
        proc.send_signal(signal.SIGUSR1)  # what SLURM's --signal=B:USR1 does
    proc.communicate(timeout=30)
    return proc.returncode, log


@pytest.mark.skipif(shutil.which("bash") is None, reason="needs bash")
def test_the_script_requeues_only_an_unfinished_signalled_run(tmp_path, monkeypatch, capsys):
    script = _write(tmp_path, monkeypatch, capsys)
    # the time-limit warning: forwarded to the step, the run is not finished -> requeued
    code, log = _run_job(script, tmp_path, usr1=True, FAKE_TRAIN_S="20")
    assert code == 0 and (log / "signals").read_text() == "USR1\n" and (log / "requeued").read_text() == "777\n"
    args = (log / "srun.args").read_text().splitlines()
    assert "--rdzv-endpoint=node-a:29500" in args and "--rdzv-id=777" in args
    # finished: no requeue, success
    code, log = _run_job(script, tmp_path, FAKE_FINISH="1")
    assert code == 0 and not (log / "requeued").exists()
    (script.parent / "final.pt").unlink()
    # a crash without a signal is not requeued (no endless loop of failing jobs)
    code, log = _run_job(script, tmp_path, FAKE_EXIT="1")
    assert code == 1 and not (log / "requeued").exists()
    # a launcher that passes the engine's exit code 75 on: requeued
    code, log = _run_job(script, tmp_path, FAKE_EXIT="75")
    assert code == 0 and (log / "requeued").exists()


def test_submit(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("PATH", str(tmp_path / "empty"))
    monkeypatch.chdir(tmp_path)
    code, _, err = _launch(["--submit", "--", *PRETRAIN], capsys)
    errors = [line for line in err.splitlines() if line.startswith("error:")]
    assert code == 2 and len(errors) == 1 and errors[0].startswith("error: sbatch not found on PATH")
    assert "launch.sbatch" in errors[0] and (tmp_path / "runs" / "vits" / "launch.sbatch").is_file()
    monkeypatch.setenv("PATH", str(_fake_bin(tmp_path, sbatch=True)))
    code, _, err = _launch(["--submit", "--", *PRETRAIN], capsys)
    assert code == 0 and "Submitted batch job 4242" in err
