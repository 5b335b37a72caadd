"""``fdbench demo``: the whole FastDINOv2-vs-DINOv2 story on the embedded dataset, in one call.

Steps (each one's outputs live under ``out``)::

    train-none         out/none/            fdbench pretrain --curriculum none
    train-two-stage    out/two-stage/       fdbench pretrain --curriculum two-stage (same preset)
    ceiling            out/ceiling/         fdbench ceiling out/none (supervised, the none run's budget)
    eval-corruptions   out/evals/corruptions/   all 19 corruptions x 5 severities, linear + kNN probes,
                                            with the pixels / random-init floors and the ceiling
    frequency          out/evals/frequency/     heat maps, band-pass curves, corruption spectra
    eval-retrieval     out/evals/retrieval/     instance retrieval (mAP E/M/H) on the embedded retrieval
                                            set, clean + 4 corruptions at severity 3 on the queries, floors
    segmentation       out/evals/segmentation/  linear segmentation probe (mIoU), clean + a few corruptions
    report             out/report/          fdbench compare (report.html, report.md, CSVs, figures)

Preset: ``cpu-tiny`` (ViT-nano/8, 32 px, 8 epochs) on a CPU, ``gpu-small`` (ViT-S/8, 100 epochs) when
the device is CUDA. On a CPU the frequency analysis uses a centred 33 x 33 heat-map window (up to half
the Nyquist frequency) and 8 band-pass radii to fit the time budget; on CUDA the full spectrum and
16 radii.

Resuming: ``out/demo.json`` records each finished step with a fingerprint of its inputs (checkpoint
sizes and modification times, the step's settings). Re-running skips a step whose fingerprint is
unchanged and whose outputs exist; an interrupted step continues where it stopped, because every
step's own command resumes (training from ``checkpoints/last.pt``, evaluation per finished cell,
frequency analysis per finished analysis).

The two checkpoints see identical corrupted images (eval-corruptions seeds every chunk of images);
:class:`SharedCorruptions` remembers each corrupted chunk so the second checkpoint reuses the first
one's images instead of corrupting them again.
"""

from __future__ import annotations

import hashlib
import json
import resource
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable

from fdbench.errors import FdbenchError
from fdbench.io import atomic_write_json

CURRICULA = ("none", "two-stage")
STEPS = (
    "train-none",
    "train-two-stage",
    "ceiling",
    "eval-corruptions",
    "frequency",
    "eval-retrieval",
    "segmentation",
    "report",
)
STATE_FILE = "demo.json"


@dataclass
class DemoConfig:
    """Options of ``fdbench demo``; the fields after ``seed`` are for tests and quick looks."""

    out: str = "runs/demo"
    epochs: int | None = None  # None: the preset's (4 for cpu-tiny, 100 for gpu-small)
    device: str = "auto"
    seed: int = 0
    seeds: int = 1  # runs per curriculum, seeds seed..seed+N-1; N > 1 adds the seed-interval report
    preset: str | None = None  # None: cpu-tiny on a CPU, gpu-small on CUDA
    data: str | None = None  # None: the embedded synthetic dataset
    train_options: dict[str, Any] = field(default_factory=dict)  # extra `pretrain` options (CLI names)
    corruptions: str = "all"
    severities: str = "1-5"
    protocol: str = "both"
    eval_batch_size: int = 256
    heatmap_images: int = 400  # the ring curve's 95% interval about +-3 points (32 images: +-9.7)
    bandpass_images: int = 256
    window: int | None = None  # None: 33 on CPU, the full spectrum on CUDA
    radii: int | None = None  # None: 8 on CPU, 16 on CUDA
    segmentation_corruptions: str = "gaussian_noise,defocus_blur,contrast"  # eval-segmentation, at severity 3
    figures: bool = True  # False: the report's tables and text only (fast)
    retrieval_corruptions: str = "gaussian_noise,defocus_blur,fog,jpeg_compression"  # on the queries
    retrieval_severities: str = "3"


@dataclass
class StepRecord:
    name: str
    status: str  # "done" (ran now) or "skipped" (finished earlier)
    seconds: float = 0.0  # wall-clock of this call
    cpu_seconds: float = 0.0  # CPU time of this process and its finished children


@dataclass
class DemoResult:
    out: Path
    steps: list[StepRecord]
    report: Any  # analysis.report.CompareReport
    device: str
    preset: str

    @property
    def report_html(self) -> Path:
        return self.report.html


# ---- shared corrupted images --------------------------------------------------------------------------


class SharedCorruptions:
    """A ``corrupt_fn`` that remembers its outputs, keyed by (corruption, severity, seed, input bytes).

    eval-corruptions corrupts each chunk of val images with a seed derived from the chunk's position,
    so every checkpoint asks for exactly the same corrupted chunks; the second asks are answered from
    memory. Each entry is dropped after ``reuses`` hits (the number of checkpoints after the first).
    A call without an integer seed is not cached (its output is not reproducible).
    """

    def __init__(self, corrupt_fn: Callable, reuses: int = 1):
        self.fn, self.reuses = corrupt_fn, reuses
        self.store: dict[tuple, list] = {}
        self.hits = self.misses = 0

    def __call__(self, images, name, severity, generator=None):
        if not isinstance(generator, int) or self.reuses < 1:
            return self.fn(images, name, severity, generator=generator)
        digest = hashlib.blake2b(images.detach().cpu().contiguous().numpy().tobytes(), digest_size=16).hexdigest()
        key = (name, int(severity), generator, tuple(images.shape), str(images.dtype), digest)
        entry = self.store.get(key)
        if entry is not None:
            self.hits += 1
            entry[1] -= 1
            if entry[1] <= 0:
                del self.store[key]
            return entry[0].to(images.device)
        self.misses += 1
        out = self.fn(images, name, severity, generator=generator)
        self.store[key] = [out.detach().cpu(), self.reuses]
        return out


# ---- step bookkeeping ----------------------------------------------------------------------------------


def fingerprint(files: list[Path], settings: dict) -> str:
    """Hash of the files' (name, size, mtime) and the settings: changes when an input changes."""
    parts = []
    for f in files:
        st = f.stat() if f.exists() else None
        parts.append([str(f), st.st_size if st else None, st.st_mtime_ns if st else None])
    blob = json.dumps({"files": parts, "settings": settings}, sort_keys=True, default=str)
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


class StepLog:
    """``out/demo.json`` (or ``name``): which steps finished, with which input fingerprint, and what they cost."""

    def __init__(self, out: Path, name: str = STATE_FILE):
        self.path = out / name
        self.tag = f"[{Path(name).stem}]"  # the prefix of the step messages: [demo], [ablation]
        self.state: dict = {"steps": {}}
        if self.path.exists():
            try:
                self.state = json.loads(self.path.read_text())
                self.state.setdefault("steps", {})
            except (OSError, ValueError):
                self.state = {"steps": {}}  # an unreadable log only costs re-checking the steps

    def finished(self, step: str, fp: str, outputs: list[Path]) -> bool:
        entry = self.state["steps"].get(step) or {}
        return entry.get("done") is True and entry.get("fingerprint") == fp and all(p.exists() for p in outputs)

    def record(self, step: str, fp: str, seconds: float, cpu_seconds: float) -> None:
        self.state["steps"][step] = {
            "done": True,
            "fingerprint": fp,
            "seconds": round(seconds, 2),
            "cpu_seconds": round(cpu_seconds, 2),
            "finished_at": time.strftime("%Y-%m-%d %H:%M:%S"),
        }
        atomic_write_json(self.path, self.state)

    def note(self, **info) -> None:
        self.state.update(info)
        atomic_write_json(self.path, self.state)


def _cpu_time() -> float:
    own = resource.getrusage(resource.RUSAGE_SELF)
    kids = resource.getrusage(resource.RUSAGE_CHILDREN)  # finished DataLoader workers
    return own.ru_utime + own.ru_stime + kids.ru_utime + kids.ru_stime


def run_step(
    log: StepLog,
    name: str,
    fp: str,
    outputs: list[Path],
    fn: Callable[[], Any],
    announce: Callable[[str], None],
    records: list[StepRecord],
) -> bool:
    """Run ``fn`` unless the step finished before with the same fingerprint; True when it ran."""
    if log.finished(name, fp, outputs):
        announce(f"{log.tag} {name}: already done, skipping")
        records.append(StepRecord(name, "skipped"))
        return False
    announce(f"{log.tag} {name}: running")
    t0, c0 = time.perf_counter(), _cpu_time()
    fn()
    seconds, cpu = time.perf_counter() - t0, _cpu_time() - c0
    log.record(name, fp, seconds, cpu)
    records.append(StepRecord(name, "done", seconds, cpu))
    announce(f"{log.tag} {name}: done in {seconds:.0f} s (CPU time {cpu:.0f} s)")
    return True


# ---- the demo -------------------------------------------------------------------------------------------


def _settings(config: DemoConfig, cuda: bool) -> tuple[str, int | None, int]:
    from pretrain.config import default_preset_name

    preset = config.preset or default_preset_name(config.device)
    window = config.window if config.window is not None else (None if cuda else 33)
    radii = config.radii if config.radii is not None else (16 if cuda else 8)
    return preset, window, radii


def frequency_config(config, checkpoints, evals: Path, out: Path, window, radii, *, seed: int):
    """The frequency step of the demo and the ablation (``config``: a DemoConfig or AblationConfig):
    every checkpoint, joined with the evaluation's results, into a folder the command owns."""
    from analysis.frequency import FrequencyConfig

    return FrequencyConfig(
        checkpoints=[str(p) for p in checkpoints],
        data=config.data,
        n_images=config.heatmap_images,
        bandpass_images=config.bandpass_images,
        window=heatmap_window(window, config.window, config.data),
        radii=radii,
        results=str(evals / "results.csv"),
        batch_size=config.eval_batch_size,
        device=config.device,
        seed=seed,
        out=str(out),
        # the command re-runs the step only when its inputs changed (its fingerprint), so it may replace
        overwrite=True,
    )


def heatmap_window(window: int | None, explicit: int | None, data: str | None) -> int | None:
    """The heat-map window to use: an explicit one as given; the CPU default (33, the central
    low-frequency window) becomes the full spectrum (None) on images of at most 33 px, where a
    33 x 33 window would not fit (the embedded dataset is 32 px)."""
    from fdbench.data import dataset_resolution

    if explicit is not None or window is None:
        return window
    native = dataset_resolution(data)
    return None if native is not None and native <= window else window


def demo(config: DemoConfig = DemoConfig(), announce: Callable[[str], None] | None = None) -> DemoResult:
    """Train both curricula, evaluate, analyse, compare; skip what is already done (see module doc)."""
    from analysis.ceiling import CeilingConfig, train_ceiling
    from analysis.evaluate import EvalConfig, default_corrupt_fn, evaluate_corruptions
    from analysis.frequency import run_frequency_analysis
    from analysis.metrics import parse_corruptions
    from analysis.report import compare
    from fdbench.device import resolve_device
    from pretrain.config import build_config
    from pretrain.engine import check_same_run, train

    announce = announce or (lambda message: None)
    if config.epochs is not None and config.epochs < 1:
        raise FdbenchError(f"--epochs must be at least 1 (got {config.epochs})")
    if config.seeds < 1:
        raise FdbenchError(f"--seeds must be at least 1 (got {config.seeds})")
    device = resolve_device(config.device)
    cuda = device.type == "cuda"
    preset, window, radii = _settings(config, cuda)
    out = Path(config.out)
    out.mkdir(parents=True, exist_ok=True)
    log = StepLog(out)
    records: list[StepRecord] = []
    announce(
        f"[demo] {out}: preset {preset} on {device}, curricula none and two-stage, data "
        f"{config.data or 'embedded synthetic dataset'}"
    )

    # 1-2. train both curricula with the same preset, once per seed (the engine resumes an interrupted run)
    seeds = [config.seed + k for k in range(config.seeds)]
    names = {(c, s): run_name(c, s, config.seeds) for c in CURRICULA for s in seeds}
    finals = {}
    for curriculum in CURRICULA:
        for seed in seeds:
            name = names[(curriculum, seed)]
            run_dir = out / name
            cfg = build_config(
                preset,
                curriculum=curriculum,
                epochs=config.epochs,
                device=config.device,
                seed=seed,
                out=str(run_dir),
                data=config.data,
                **config.train_options,
            )
            finals[name] = run_dir / "final.pt"
            if (run_dir / "config.yaml").exists():
                from fdbench.config import load_yaml

                # a different recipe in the same folder is an error (with the fix), never silently reused
                check_same_run(load_yaml(run_dir / "config.yaml"), cfg, run_dir)
            fp = fingerprint([], {"config": _stable(cfg.to_dict())})
            run_step(
                log,
                f"train-{name}",
                fp,
                [finals[name], run_dir / "summary.json"],
                lambda cfg=cfg: _train(train, cfg, announce),
                announce,
                records,
            )
    reference = names[("none", seeds[0])]

    # the supervised ceiling of the reference run's budget (same steps and batch, with labels)
    ceiling_dir = out / "ceiling"
    fp = fingerprint([finals[reference]], {"ceiling": 1, "seed": config.seed})
    run_step(
        log,
        "ceiling",
        fp,
        [ceiling_dir / "ceiling.pt"],
        lambda: train_ceiling(
            out / reference, ceiling_dir, CeilingConfig(seed=config.seed, device=config.device), announce=announce
        ),
        announce,
        records,
    )

    # 3. both checkpoints, the floors and the ceiling on every corruption and severity, both probes
    evals = out / "evals" / "corruptions"
    checkpoints = list(finals.values())
    eval_config = EvalConfig(
        data=config.data,
        protocol=config.protocol,
        corruptions=config.corruptions,
        severities=config.severities,
        batch_size=config.eval_batch_size,
        device=config.device,
        seed=config.seed,
        ceiling=str(ceiling_dir / "ceiling.pt"),
    )
    fp = fingerprint([*checkpoints, ceiling_dir / "ceiling.pt"], {"eval": _stable(asdict(eval_config))})

    def evaluate():
        # every encoder after the first asks for the same chunks: the other checkpoints, 2 floors, the ceiling
        shared = SharedCorruptions(default_corrupt_fn(), reuses=len(checkpoints) - 1 + 2 + 1)
        report = evaluate_corruptions(checkpoints, evals, eval_config, corrupt_fn=shared, announce=announce)
        announce(
            f"[demo] eval-corruptions: {report.computed_cells} cell(s) computed, {report.skipped_cells} "
            f"reused; corrupted chunks made {shared.misses}, reused {shared.hits}"
        )

    run_step(log, "eval-corruptions", fp, [evals / "results.csv", evals / "summary.json"], evaluate, announce, records)

    # 4. frequency analysis of both checkpoints, joined with the evaluation results
    freq_dir = out / "evals" / "frequency"
    freq_config = frequency_config(config, checkpoints, evals, freq_dir, window, radii, seed=config.seed)
    fp = fingerprint([*checkpoints, evals / "results.csv"], {"frequency": _stable(asdict(freq_config))})
    names = parse_corruptions(config.corruptions)  # spectra of the corruptions that were evaluated
    run_step(
        log,
        "frequency",
        fp,
        [freq_dir / "summary.csv"],
        lambda: run_frequency_analysis(freq_config, announce=announce, corruption_names=names),
        announce,
        records,
    )

    # 4b. instance retrieval on the embedded retrieval set (seconds; the database stays clean)
    retrieval_dir = out / "evals" / "retrieval"
    retrieval_step(config, checkpoints, retrieval_dir, log, announce, records)

    # 5. the linear segmentation probe on the embedded data's masks (another --data has none)
    seg_dir = out / "evals" / "segmentation"
    if config.data is None or (Path(config.data) / "dataset.json").is_file():
        _segmentation_step(config, checkpoints, seg_dir, log, announce, records)

    # 6. the comparison report (cheap: always rebuilt when any input changed)
    report_dir = out / "report"
    run_dirs = [out / name for name in finals]
    inputs = (
        [d / "summary.json" for d in run_dirs]
        + [d / "metrics.csv" for d in run_dirs]
        + [evals / "results.csv", freq_dir / "summary.csv", retrieval_dir / "results.csv", seg_dir / "summary.csv"]
    )
    fp = fingerprint(inputs, {"report": 1, "figures": config.figures})
    holder: dict = {}

    def build_report():
        holder["report"] = compare(
            run_dirs,
            report_dir,
            evals=[evals],
            frequency=[freq_dir],
            segmentation=[seg_dir] if seg_dir.is_dir() else [],
            title=f"fdbench demo: FastDINOv2 (two-stage) vs DINOv2 (none), preset {preset}",
            figures=config.figures,
            announce=announce,
        )

    if not run_step(
        log, "report", fp, [report_dir / "report.html", report_dir / "summary.json"], build_report, announce, records
    ):
        holder["report"] = _stored_report(report_dir)

    # 7. with several seeds: both curricula compared over seeds and images (the ablation's statistics)
    if config.seeds > 1:
        from analysis.ablation_report import write_report

        seeds_dir = out / "seeds"
        fp = fingerprint(
            [evals / "outcomes.npz", freq_dir / "summary.csv", *[d / "summary.json" for d in run_dirs]],
            {"seeds": seeds, "figures": config.figures},
        )
        run_step(
            log,
            "seeds-report",
            fp,
            [seeds_dir / "report.md", seeds_dir / "findings.csv"],
            lambda: write_report(
                seeds_dir,
                runs=out,
                evals=evals,
                frequency=freq_dir,
                arms=list(CURRICULA),
                seeds=seeds,
                preset=preset,
                device=str(device),
                figures=config.figures,
                title=f"fdbench demo over seeds {', '.join(map(str, seeds))}: two-stage vs none",
            ),
            announce,
            records,
        )
    log.note(preset=preset, device=str(device), total_seconds=round(sum(r.seconds for r in records), 2))
    return DemoResult(out, records, holder["report"], str(device), preset)


def retrieval_step(config: DemoConfig, checkpoints, out: Path, log, announce, records) -> None:
    """eval-retrieval of the demo's checkpoints (and the floors) on the embedded retrieval set."""
    from analysis.retrieval import RetrievalConfig, evaluate_retrieval

    rconfig = RetrievalConfig(
        corruptions=config.retrieval_corruptions,
        severities=config.retrieval_severities,
        device=config.device,
        seed=config.seed,
    )
    fp = fingerprint(list(checkpoints), {"retrieval": _stable(asdict(rconfig))})

    def run():
        report = evaluate_retrieval(checkpoints, out, rconfig, announce=announce)
        announce(f"[demo] eval-retrieval: {report.computed_cells} cell(s) computed, {report.skipped_cells} reused")

    run_step(log, "eval-retrieval", fp, [out / "results.csv", out / "summary.json"], run, announce, records)


def _segmentation_step(config: DemoConfig, checkpoints, seg_dir: Path, log, announce, records) -> None:
    """eval-segmentation of the demo's checkpoints and the random-init floor: clean and a few
    corruptions at severity 3 (about a minute on 2 CPU cores)."""
    from analysis.segmentation import SegConfig, evaluate_segmentation

    seg_config = SegConfig(
        data=config.data,
        corruptions=config.segmentation_corruptions,
        severities="3",
        device=config.device,
        seed=config.seed,
    )
    fp = fingerprint(checkpoints, {"segmentation": _stable(asdict(seg_config))})

    def segment():
        from analysis.eval_features import default_corrupt_fn

        # the second checkpoint and the floor ask for the first one's corrupted chunks: from memory
        shared = SharedCorruptions(default_corrupt_fn(), reuses=len(checkpoints))
        report = evaluate_segmentation(checkpoints, seg_dir, seg_config, corrupt_fn=shared, announce=announce)
        announce(f"[demo] eval-segmentation: {report.computed_cells} cell(s) computed, {report.skipped_cells} reused")

    run_step(
        log, "segmentation", fp, [seg_dir / "summary.csv", seg_dir / "differences.csv"], segment, announce, records
    )


def run_name(curriculum: str, seed: int, seeds: int) -> str:
    """``none`` / ``two-stage`` for a one-seed demo; ``<curriculum>-s<seed>`` with several seeds."""
    return curriculum if seeds == 1 else f"{curriculum}-s{seed}"


def _train(train_fn, cfg, announce) -> None:
    result = train_fn(cfg, log=announce)
    if not result.finished:
        raise FdbenchError(f"training of {result.out} stopped before the end; re-run the demo to continue it")


def _stable(obj):
    """Settings as plain JSON values (tuples -> lists) so fingerprints are stable."""
    return json.loads(json.dumps(obj, default=str))


def _stored_report(report_dir: Path):
    """The CompareReport of a report built by an earlier call (headline numbers from its summary.json)."""
    import pandas as pd

    from analysis.report import CompareReport

    summary = json.loads((report_dir / "summary.json").read_text())
    missing = pd.DataFrame(summary.get("missing") or [], columns=["run", "piece", "status", "how_to_get_it"])
    headline = {
        run: {k: (float("nan") if v is None else v) for k, v in values.items()}
        for run, values in (summary.get("headline") or {}).items()
    }
    return CompareReport(
        report_dir,
        report_dir / "report.md",
        report_dir / "report.html",
        summary.get("reference"),
        list(headline),
        missing=missing,
        headline=headline,
        findings=summary.get("findings") or [],
    )
