"""``fdbench ablation``: the paper's four arms x seeds on one dataset, evaluated, analysed, judged.

Steps (outputs under ``out``)::

    train-<arm>-s<seed>   out/runs/<arm>-s<seed>/   fdbench pretrain with the arm's options and seed
    eval-corruptions      out/evals/corruptions/   every checkpoint + the floors, all cells, both probes
    frequency             out/evals/frequency/     band-pass curves, heat maps, spectra per checkpoint
    report                out/report/              findings.csv, comparisons.csv, arms.csv, report.md,
                                                   differences.png/.pdf

The arms (:data:`analysis.ablation.ARMS`) differ only in ``--curriculum`` and ``--noise-patching``;
every other option is the preset's (or ``train_options``), the same for every arm: no per-arm tuning.
Like ``fdbench demo`` it resumes: ``out/ablation.json`` records finished steps with a fingerprint of
their inputs, and each step's own command continues where it stopped.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable

from fdbench.demo import SharedCorruptions, StepLog, StepRecord, _stable, _train, fingerprint, run_step
from fdbench.errors import FdbenchError

STATE_FILE = "ablation.json"


@dataclass
class AblationConfig:
    """Options of ``fdbench ablation``; the fields after ``arms`` are for tests and quick looks."""

    out: str = "runs/ablation"
    seeds: int = 3
    epochs: int | None = None  # None: the preset's
    device: str = "auto"
    preset: str | None = None  # None: cpu-tiny on a CPU, gpu-small on CUDA
    data: str | None = None  # None: the embedded synthetic dataset
    arms: tuple[str, ...] = ("none", "curriculum-only", "noise-only", "two-stage")
    train_options: dict[str, Any] = field(default_factory=dict)  # extra `pretrain` options (CLI names)
    corruptions: str = "all"
    severities: str = "1-5"
    protocol: str = "both"  # probes evaluated
    finding_protocol: str = "linear"  # the probe the findings are judged with (the paper's)
    eval_batch_size: int = 256
    # the findings read the band-pass AUCs (bandpass_images); the 12 heat maps are illustrative, and
    # at the demo's 400 images they would add about half an hour of CPU
    heatmap_images: int = 32
    bandpass_images: int = 500
    window: int | None = None  # None: 33 on CPU, the full spectrum on CUDA
    radii: int | None = None  # None: 8 on CPU, 16 on CUDA
    figures: bool = True


@dataclass
class AblationResult:
    out: Path
    steps: list[StepRecord]
    findings: Any  # pandas DataFrame: findings.csv (one row per component)
    report: Path
    tables: dict = field(default_factory=dict)


def _check(config: AblationConfig) -> None:
    from analysis.ablation import ARMS, REFERENCE

    if config.seeds < 1:
        raise FdbenchError(f"--seeds must be at least 1 (got {config.seeds})")
    if config.epochs is not None and config.epochs < 1:
        raise FdbenchError(f"--epochs must be at least 1 (got {config.epochs})")
    unknown = [a for a in config.arms if a not in ARMS]
    if unknown:
        raise FdbenchError(f"unknown arm(s) {', '.join(unknown)}: choose from {', '.join(ARMS)}")
    if REFERENCE not in config.arms or len(config.arms) < 2:
        raise FdbenchError(f"the arms must include {REFERENCE!r} (every finding is measured against it) and one more")
    clash = {"curriculum", "noise_patching", "seed", "out"} & set(config.train_options)
    if clash:
        raise FdbenchError(f"the ablation sets {', '.join(sorted(clash))} itself; remove it from the training options")
    if config.finding_protocol not in ("linear", "knn"):
        raise FdbenchError(f"--finding-protocol must be linear or knn (got {config.finding_protocol!r})")


def ablation(
    config: AblationConfig = AblationConfig(), announce: Callable[[str], None] | None = None
) -> AblationResult:
    """Train every arm and seed, evaluate, analyse, judge the findings; skip what is already done."""
    from analysis.ablation import ARMS, label
    from analysis.evaluate import EvalConfig, default_corrupt_fn, evaluate_corruptions
    from analysis.frequency import run_frequency_analysis
    from analysis.metrics import parse_corruptions
    from fdbench.config import load_yaml
    from fdbench.demo import _settings, frequency_config
    from fdbench.device import resolve_device
    from pretrain.config import build_config
    from pretrain.engine import check_same_run, train

    announce = announce or (lambda message: None)
    _check(config)
    device = resolve_device(config.device)
    preset, window, radii = _settings(config, device.type == "cuda")
    out = Path(config.out)
    out.mkdir(parents=True, exist_ok=True)
    log = StepLog(out, STATE_FILE)
    records: list[StepRecord] = []
    seeds = list(range(config.seeds))
    announce(
        f"[ablation] {out}: preset {preset} on {device}, arms {', '.join(config.arms)}, seeds {seeds}, "
        f"data {config.data or 'embedded synthetic dataset'}"
    )

    # 1. every arm x seed with the same recipe (the engine resumes an interrupted run)
    finals, run_dirs = [], []
    for arm in config.arms:
        for seed in seeds:
            run_dir = out / "runs" / label(arm, seed)
            cfg = build_config(
                preset,
                epochs=config.epochs,
                device=config.device,
                seed=seed,
                out=str(run_dir),
                data=config.data,
                **ARMS[arm],
                **config.train_options,
            )
            if (run_dir / "config.yaml").exists():
                check_same_run(load_yaml(run_dir / "config.yaml"), cfg, run_dir)
            final = run_dir / "final.pt"
            fp = fingerprint([], {"config": _stable(cfg.to_dict())})
            run_step(
                log,
                f"train-{label(arm, seed)}",
                fp,
                [final, run_dir / "summary.json"],
                lambda cfg=cfg: _train(train, cfg, announce),
                announce,
                records,
            )
            finals.append(final)
            run_dirs.append(run_dir)

    # 2. every checkpoint and the floors on the same corrupted images
    evals = out / "evals" / "corruptions"
    eval_config = EvalConfig(
        data=config.data,
        protocol=config.protocol,
        corruptions=config.corruptions,
        severities=config.severities,
        batch_size=config.eval_batch_size,
        device=config.device,
        seed=0,  # the same images and corruption draws for every arm and seed
    )
    fp = fingerprint(finals, {"eval": _stable(asdict(eval_config))})

    def evaluate():
        shared = SharedCorruptions(default_corrupt_fn(), reuses=len(finals) - 1 + 2)
        evaluate_corruptions(finals, evals, eval_config, corrupt_fn=shared, announce=announce)

    run_step(log, "eval-corruptions", fp, [evals / "results.csv", evals / "outcomes.npz"], evaluate, announce, records)

    # 3. the frequency analysis of every checkpoint (band-pass curves carry the frequency findings)
    freq_dir = out / "evals" / "frequency"
    freq_config = frequency_config(config, finals, evals, freq_dir, window, radii, seed=0)
    fp = fingerprint([*finals, evals / "results.csv"], {"frequency": _stable(asdict(freq_config))})
    names = parse_corruptions(config.corruptions)
    run_step(
        log,
        "frequency",
        fp,
        [freq_dir / "summary.csv"],
        lambda: run_frequency_analysis(freq_config, announce=announce, corruption_names=names),
        announce,
        records,
    )

    # 4. the findings and the report (cheap: rebuilt whenever an input changed)
    from analysis.ablation_report import write_report

    report_dir = out / "report"
    holder: dict = {}
    fp = fingerprint(
        [evals / "outcomes.npz", freq_dir / "summary.csv", *[d / "summary.json" for d in run_dirs]],
        {"report": 2, "protocol": config.finding_protocol, "figures": config.figures},
    )

    def report():
        holder["result"] = write_report(
            report_dir,
            runs=out / "runs",
            evals=evals,
            frequency=freq_dir,
            arms=list(config.arms),
            seeds=seeds,
            protocol=config.finding_protocol,
            preset=preset,
            device=str(device),
            figures=config.figures,
        )

    if not run_step(
        log, "report", fp, [report_dir / "report.md", report_dir / "findings.csv"], report, announce, records
    ):
        from analysis.ablation_report import read_report

        holder["result"] = read_report(report_dir)
    found, tables = holder["result"]
    log.note(preset=preset, device=str(device), total_seconds=round(sum(r.seconds for r in records), 2))
    return AblationResult(out, records, found, report_dir / "report.md", tables)


def summary_line(result: AblationResult) -> str:
    """``finding: verdict; ...`` from the findings table."""
    verdicts = result.findings.drop_duplicates("finding")
    parts = [f"{r.finding}: {r.finding_verdict}" for r in verdicts.itertuples()]
    return "; ".join(parts) if parts else "no finding could be judged"
