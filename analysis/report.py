"""``compare``: one report (Markdown + self-contained HTML + CSVs + figures) over several runs.

``compare(["runs/none", "runs/two-stage"], "reports/compare")`` reads what the other commands wrote and
recomputes nothing expensive:

- a run folder (``fdbench pretrain``): ``summary.json`` (per-stage wall-clock, img/s, peak memory,
  FLOPs per image, total FLOPs, final kNN), ``metrics.csv`` (losses and kNN rows), ``config.yaml``;
  ``final.pt`` is only fingerprinted, never loaded. A checkpoint file (e.g. an official DINOv2
  ``.pth``) may stand in for a run: it then has robustness and frequency numbers but no training record.
- eval-corruptions folders (``results.csv`` + ``summary.json``) found in or beside the run folder
  (``RUN/evals/corruptions``, ``RUN/../evals/corruptions``, ``RUN/../../evals/corruptions``, ``./evals/
  corruptions``, plus any ``--evals DIR``). A folder's rows belong to a run when the checkpoint path it
  recorded is the run's ``final.pt``, or its SHA-256 matches, or (no path recorded) its label is the
  run's name.
- frequency-analysis folders (``summary.csv``, ``<label>/heatmap.csv``, ``<label>/bandpass.csv``,
  ``spectra_centroids.csv``), found the same way (``.../evals/frequency``, ``--frequency DIR``).

Report sections (each table is also written as a CSV in ``out``; figures go to ``out/figures`` as
PNG + PDF and are embedded in ``report.html`` as base64 PNG):

1. runs and missing pieces (``runs.csv``, ``missing.csv``): anything not found is listed, with the
   command that produces it; nothing is silently dropped.
2. cost (``cost.csv``, ``cost_stages.csv``): per stage wall-clock, img/s, peak memory, GFLOPs per
   image and TFLOPs; per run ``speedup_vs_ref = wall_ref / wall_run`` and
   ``flops_ratio_vs_ref = FLOPs_ref / FLOPs_run`` against the reference run (default: the run trained
   with ``--curriculum none``), and the run's own ``flops_ratio_vs_none_schedule`` (its schedule
   counted with full-resolution crops throughout, from ``summary.json``).
3. convergence (``convergence_knn.csv``, ``convergence_loss.csv``, ``convergence_switches.csv``):
   kNN top-1 vs epochs and vs training wall-clock, loss curves, stage switches marked.
4. robustness (``robustness.csv``, ``robustness_per_corruption.csv``, ``robustness_severity.csv``):
   clean accuracy, the unnormalised mean corruption error, and (``analysis.metrics``)
   ``CE_c = sum_s E_run(s,c) / sum_s E_ref(s,c)``, ``mCE`` = mean over the common corruptions,
   relative CE with the clean errors subtracted, all normalised by the reference run (= 100 % for the
   reference itself); AlexNet-normalised values too when the evaluation used AlexNet (1000 classes).
5. frequency bias (``frequency.csv``, ``frequency_bandpass.csv``, ``frequency_heatmap_*.csv``,
   ``robustness_vs_frequency.csv``): heat maps side by side with their difference, band-pass curves,
   accuracy drop vs the corruption's spectral centroid, and the bias summary numbers.
6. findings: the direction of each run against the reference (cheaper? noise robustness up? clean
   accuracy within ``CLEAN_TOLERANCE_PP``?).
"""

from __future__ import annotations

import base64
import hashlib
import html
import json
import math
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

import pandas as pd

from analysis.metrics import check_results
from analysis.paired import floor_headline, paired_findings, paired_tables

from fdbench.errors import FdbenchError
from fdbench.io import atomic_write_csv, atomic_write_json, atomic_write_text

RUN_FILES = ("summary.json", "metrics.csv", "config.yaml", "final.pt")
EVAL_SUBDIRS = ("evals/corruptions", "eval-corruptions", "evals", "corruptions")
FREQ_SUBDIRS = ("evals/frequency", "frequency-analysis", "frequency")
CLEAN_TOLERANCE_PP = 2.0  # "clean accuracy about equal": within this many percentage points
GROUP_ORDER = ("noise", "blur", "weather", "digital", "extra")


# ---- what was found --------------------------------------------------------------------------------


@dataclass
class RunRecord:
    """One compared entry: a run folder (training record) or a bare checkpoint file."""

    label: str
    path: Path
    checkpoint: Path | None
    is_run: bool
    summary: dict | None = None
    metrics: pd.DataFrame | None = None
    config: dict | None = None
    notes: list[str] = field(default_factory=list)
    _sha: str | None = None

    @property
    def curriculum(self) -> str | None:
        if self.summary and self.summary.get("curriculum"):
            return str(self.summary["curriculum"])
        cur = (self.config or {}).get("curriculum")
        if isinstance(cur, dict) and cur.get("name"):
            return str(cur["name"])
        return None

    def sha256(self) -> str | None:
        if self._sha is None and self.checkpoint is not None and self.checkpoint.is_file():
            h = hashlib.sha256()
            with open(self.checkpoint, "rb") as fh:
                for block in iter(lambda: fh.read(1 << 20), b""):
                    h.update(block)
            self._sha = h.hexdigest()
        return self._sha

    def owns(self, label: str, recorded_path: str | None, recorded_sha: str | None = None) -> bool:
        """Whether an output row (labelled ``label``, made from ``recorded_path``) is this entry's."""
        if self.checkpoint is None:
            return False
        if recorded_path:
            try:
                if Path(recorded_path).resolve() == self.checkpoint.resolve():
                    return True
            except OSError:
                pass
        if recorded_sha and recorded_sha == self.sha256():
            return True
        if recorded_path:
            # a relative path recorded from another working directory: same "<run>/final.pt" tail and label
            tail = Path(recorded_path).parts[-2:]
            return label == self.label and tail == self.checkpoint.resolve().parts[-2:] and not recorded_sha
        return label == self.label


@dataclass
class CompareReport:
    out: Path
    markdown: Path
    html: Path
    reference: str | None
    runs: list[str]
    tables: dict[str, pd.DataFrame] = field(default_factory=dict)  # name -> table (also name.csv)
    figures: dict[str, list[Path]] = field(default_factory=dict)  # name -> [png, pdf]
    missing: pd.DataFrame = field(default_factory=pd.DataFrame)
    headline: dict[str, dict] = field(default_factory=dict)  # run -> headline numbers
    findings: list[str] = field(default_factory=list)
    files: list[Path] = field(default_factory=list)


# ---- loading runs ----------------------------------------------------------------------------------


def _is_run_folder(path: Path) -> bool:
    return path.is_dir() and any((path / f).exists() for f in RUN_FILES)


def expand_runs(paths: Sequence[str | Path], announce: Callable[[str], None]) -> list[Path]:
    """Run folders and checkpoint files; a folder holding run folders (e.g. ``runs/demo``) expands to them."""
    out: list[Path] = []
    for raw in paths:
        p = Path(raw)
        if not p.exists():
            raise FdbenchError(
                f"run not found: {p} (pass run folders written by `fdbench pretrain`, or checkpoint files)"
            )
        if p.is_file() and p.name == "final.pt":
            p = p.parent
        if p.is_dir() and not _is_run_folder(p):
            children = sorted(c for c in p.iterdir() if _is_run_folder(c))
            if not children:
                raise FdbenchError(
                    f"{p} is not a run folder (it has none of {', '.join(RUN_FILES)}) and holds no run folders"
                )
            announce(f"{p}: comparing the {len(children)} runs inside it: " + ", ".join(c.name for c in children))
            out.extend(children)
        else:
            out.append(p)
    unique, seen = [], set()
    for p in out:
        if p.resolve() not in seen:
            seen.add(p.resolve())
            unique.append(p)
    return unique


def _read_json(path: Path) -> dict | None:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


def _read_csv(path: Path) -> pd.DataFrame | None:
    try:
        return pd.read_csv(path)
    except (OSError, ValueError, pd.errors.EmptyDataError, pd.errors.ParserError):
        return None


def _read_csv_or_fail(path: Path) -> pd.DataFrame:
    try:
        return pd.read_csv(path)
    except (OSError, ValueError, pd.errors.EmptyDataError, pd.errors.ParserError) as err:
        reason = str(err).splitlines()[0] if str(err) else type(err).__name__
        raise FdbenchError(f"cannot read {path} ({reason}); fix or move it away") from None


def _labels_for(paths: list[Path]) -> list[str]:
    """The names eval-corruptions and frequency-analysis give these entries (run folder -> its name)."""
    from analysis.evaluate import checkpoint_labels

    return checkpoint_labels([p / "final.pt" if p.is_dir() else p for p in paths])


def load_run(path: Path, label: str) -> RunRecord:
    if path.is_file():
        return RunRecord(
            label, path, path, is_run=False, notes=["a checkpoint file, not a run folder: no training record"]
        )
    rec = RunRecord(label, path, path / "final.pt" if (path / "final.pt").exists() else None, is_run=True)
    rec.summary = _read_json(path / "summary.json") if (path / "summary.json").exists() else None
    if (path / "summary.json").exists() and rec.summary is None:
        rec.notes.append(f"{path / 'summary.json'} is unreadable")
    if (path / "metrics.csv").exists():
        rec.metrics = _read_csv(path / "metrics.csv")
        if rec.metrics is None or "row" not in rec.metrics.columns:
            rec.notes.append(f"{path / 'metrics.csv'} is unreadable")
            rec.metrics = None
    if (path / "config.yaml").exists():
        from fdbench.config import load_yaml

        try:
            rec.config = load_yaml(path / "config.yaml")
        except Exception:  # a broken config only costs its details in the runs table
            rec.notes.append(f"{path / 'config.yaml'} is unreadable")
    if rec.checkpoint is None:
        last = path / "checkpoints" / "last.pt"
        rec.notes.append(
            "no final.pt (training unfinished?)" + (" - checkpoints/last.pt exists" if last.exists() else "")
        )
    return rec


def choose_reference(records: list[RunRecord], reference: str | None) -> str | None:
    """The run others are measured against: ``reference`` or the first run trained with curriculum none."""
    labels = [r.label for r in records]
    if reference is not None:
        if reference not in labels:
            raise FdbenchError(f"--reference {reference!r} is not one of the compared runs: {', '.join(labels)}")
        return reference
    for r in records:
        if (r.curriculum or "").lower() == "none":
            return r.label
    return None


# ---- finding eval-corruptions and frequency-analysis outputs -----------------------------------------


def _candidates(record: RunRecord, explicit: Sequence[str | Path], subdirs: Sequence[str], marker: str) -> list[Path]:
    base = record.path if record.path.is_dir() else record.path.parent
    dirs = []
    for p in explicit:
        p = Path(p)
        dirs.append(p.parent if p.is_file() else p)
    for anchor in (base, base.parent, base.parent.parent):
        dirs.extend(anchor / s for s in subdirs)
    dirs.extend(Path.cwd() / s for s in subdirs)
    found, seen = [], set()
    for d in dirs:
        try:
            key = d.resolve()
        except OSError:
            continue
        if key not in seen and (d / marker).is_file():
            seen.add(key)
            found.append(d)
    return found


@dataclass
class EvalSource:
    folder: Path
    results: pd.DataFrame
    summary: dict


class _Cache:
    """Each output folder is read once even when several runs look into it."""

    def __init__(self):
        self.evals: dict[Path, EvalSource | None] = {}
        self.freqs: dict[Path, pd.DataFrame | None] = {}

    def eval_source(self, folder: Path) -> EvalSource | None:
        key = folder.resolve()
        if key not in self.evals:
            results = _read_csv(folder / "results.csv")
            need = {"checkpoint", "protocol", "corruption", "severity", "top1"}
            if results is None and (folder / "results.csv").is_file():
                results = _read_csv_or_fail(folder / "results.csv")  # unreadable: say so, not "missing"
            if results is not None and not {"checkpoint", "top1"}.isdisjoint(results.columns):
                check_results(results, folder / "results.csv")  # text where numbers belong: refused
            if results is None or not need <= set(results.columns):
                self.evals[key] = None
            else:
                results["checkpoint"] = results["checkpoint"].astype(str)
                self.evals[key] = EvalSource(folder, results, _read_json(folder / "summary.json") or {})
        return self.evals[key]

    def freq_summary(self, folder: Path) -> pd.DataFrame | None:
        key = folder.resolve()
        if key not in self.freqs:
            df = _read_csv(folder / "summary.csv")
            self.freqs[key] = df if df is not None and "checkpoint" in df.columns else None
            if self.freqs[key] is not None:
                self.freqs[key]["checkpoint"] = self.freqs[key]["checkpoint"].astype(str)
        return self.freqs[key]


def find_eval_rows(
    record: RunRecord, explicit: Sequence[str | Path], cache: _Cache
) -> tuple[pd.DataFrame | None, list[dict]]:
    """This entry's results.csv rows (relabelled with its label) and where they came from.

    Rows from several folders are merged; the first folder (explicit ``--evals`` first, then the run
    folder, then beside it) wins when two hold the same (protocol, corruption, severity) cell.
    """
    parts, sources = [], []
    for folder in _candidates(record, explicit, EVAL_SUBDIRS, "results.csv"):
        src = cache.eval_source(folder)
        if src is None:
            continue
        infos = src.summary.get("checkpoints", {})
        for label in dict.fromkeys(src.results["checkpoint"]):
            info = infos.get(label, {})
            if record.owns(label, info.get("path"), info.get("sha256")):
                rows = src.results[src.results["checkpoint"] == label].copy()
                rows["checkpoint"] = record.label
                parts.append(rows)
                sources.append(
                    {
                        "folder": str(folder),
                        "label": label,
                        "settings": src.summary.get("settings", {}),
                        "normalisation": src.summary.get("normalisation"),
                    }
                )
                break
    if not parts:
        return None, []
    merged = pd.concat(parts, ignore_index=True)
    merged = merged.drop_duplicates(subset=["protocol", "corruption", "severity"], keep="first")
    return merged.reset_index(drop=True), sources


@dataclass
class FrequencyData:
    folder: Path
    label: str  # the label used inside the frequency folder
    summary: dict
    heatmap: pd.DataFrame | None = None
    bandpass: pd.DataFrame | None = None
    centroids: pd.DataFrame | None = None


def find_frequency(record: RunRecord, explicit: Sequence[str | Path], cache: _Cache) -> FrequencyData | None:
    """The first frequency-analysis folder holding a summary row of this entry, with its CSVs."""
    for folder in _candidates(record, explicit, FREQ_SUBDIRS, "summary.csv"):
        summary = cache.freq_summary(folder)
        if summary is None:
            continue
        for row in summary.to_dict("records"):
            path = row.get("path") if isinstance(row.get("path"), str) else None
            if not record.owns(str(row["checkpoint"]), path):
                continue
            label = str(row["checkpoint"])
            data = FrequencyData(folder, label, row)
            data.heatmap = _read_csv(folder / label / "heatmap.csv")
            data.bandpass = _read_csv(folder / label / "bandpass.csv")
            if data.bandpass is None:
                combined = _read_csv(folder / "bandpass.csv")
                if combined is not None and "checkpoint" in combined.columns:
                    part = combined[combined["checkpoint"].astype(str) == label]
                    data.bandpass = part.drop(columns=["checkpoint"]) if len(part) else None
            data.centroids = _read_csv(folder / "spectra_centroids.csv")
            return data
    return None


# ---- tables ----------------------------------------------------------------------------------------


def _pct(x) -> float:
    return 100.0 * float(x) if x is not None and not _isnan(x) else math.nan


def _isnan(x) -> bool:
    try:
        return x is None or math.isnan(float(x))
    except (TypeError, ValueError):
        return False


def _iters_per_epoch(record: RunRecord) -> float | None:
    if record.summary and record.summary.get("iters_per_epoch"):
        return float(record.summary["iters_per_epoch"])
    m = record.metrics
    if m is None:
        return None
    train = m[m["row"] == "train"].dropna(subset=["epoch", "step"])
    # the engine logs the last step of every epoch, where step = (epoch + 1) * iterations per epoch
    return float((train["step"] / (train["epoch"] + 1)).max()) if len(train) else None


def runs_table(records: list[RunRecord], reference: str | None) -> pd.DataFrame:
    rows = []
    for r in records:
        s = r.summary or {}
        cfg = r.config or {}
        model = cfg.get("model", {}) if isinstance(cfg.get("model"), dict) else {}
        rows.append(
            {
                "run": r.label,
                "reference": r.label == reference,
                "kind": "run" if r.is_run else "checkpoint",
                "curriculum": r.curriculum,
                "preset": s.get("preset", cfg.get("preset")),
                "arch": s.get("arch", model.get("arch")),
                "patch_size": s.get("patch_size", model.get("patch_size")),
                "epochs": s.get(
                    "epochs", (cfg.get("run") or {}).get("epochs") if isinstance(cfg.get("run"), dict) else None
                ),
                "batch_size": s.get("batch_size"),
                "iterations": s.get("iterations"),
                "finished": s.get("finished") if s else None,
                "device": s.get("device"),
                "data": s.get("data"),
                "path": str(r.path),
            }
        )
    return pd.DataFrame(rows)


def cost_tables(records: list[RunRecord], reference: str | None) -> tuple[pd.DataFrame, pd.DataFrame]:
    """(per-run totals, per-stage rows); see the module docstring for the ratios."""
    stage_rows, total_rows = [], []
    ref = next((r for r in records if r.label == reference and r.summary), None)
    ref_wall = float(ref.summary.get("wall_clock_s") or math.nan) if ref else math.nan
    ref_flops = float((ref.summary.get("flops") or {}).get("total_flops") or math.nan) if ref else math.nan
    for r in records:
        s = r.summary
        if not s:
            total_rows.append({"run": r.label, "status": "missing: no summary.json (training record)"})
            continue
        batch = s.get("batch_size") or 0
        peak = 0.0
        for st in s.get("stages", []):
            fpi = st.get("flops_per_image")
            mem = st.get("peak_memory_bytes")
            peak = max(peak, float(mem or 0))
            stage_rows.append(
                {
                    "run": r.label,
                    "stage": st.get("name"),
                    "epochs": f"{st.get('start_epoch')}-{(st.get('end_epoch') or 0) - 1}",
                    "global_px": st.get("global_size"),
                    "local_px": st.get("local_size"),
                    "n_local": st.get("n_local"),
                    "noise_patching": st.get("noise_patching"),
                    "iterations": st.get("iterations"),
                    "wall_clock_s": st.get("wall_clock_s"),
                    "img_per_s": st.get("img_per_s"),
                    "step_time_ms": 1000 * st["step_time_s"] if st.get("step_time_s") is not None else math.nan,
                    "peak_memory_mb": float(mem) / 2**20 if mem is not None else math.nan,
                    "gflops_per_image": fpi / 1e9 if fpi is not None else math.nan,
                    "tflops": (fpi * (st.get("iterations") or 0) * batch / 1e12) if fpi is not None else math.nan,
                }
            )
        flops = s.get("flops") or {}
        wall = float(s.get("wall_clock_s") or math.nan)
        total = float(flops.get("total_flops") or math.nan)
        images = sum(float(st.get("images") or 0) for st in s.get("stages", []))
        total_rows.append(
            {
                "run": r.label,
                "status": "ok" if s.get("finished") else f"unfinished (step {s.get('step')} of {s.get('iterations')})",
                "curriculum": r.curriculum,
                "wall_clock_s": wall,
                "img_per_s": images / wall if wall and not math.isnan(wall) and wall > 0 else math.nan,
                "total_tflops": total / 1e12,
                "peak_memory_mb": peak / 2**20 if peak else math.nan,
                "speedup_vs_ref": ref_wall / wall if wall and not math.isnan(ref_wall) else math.nan,
                "flops_ratio_vs_ref": ref_flops / total if total and not math.isnan(ref_flops) else math.nan,
                "flops_ratio_vs_none_schedule": flops.get("flops_ratio_vs_none", math.nan),
                "final_knn_top1_pct": _pct((s.get("knn") or {}).get("final_top1")),
            }
        )
    totals = pd.DataFrame(total_rows)
    if "curriculum" not in totals.columns:
        totals = totals.reindex(columns=["run", "status"])
    return totals, pd.DataFrame(stage_rows)


def convergence_tables(records: list[RunRecord]) -> tuple[pd.DataFrame, pd.DataFrame, pd.DataFrame]:
    """(kNN rows, loss rows, stage switches), epochs as fractions (step / iterations per epoch)."""
    knn_rows, loss_rows, switch_rows = [], [], []
    for r in records:
        ipe = _iters_per_epoch(r)
        m = r.metrics
        if m is not None and ipe:
            for row in m[m["row"] == "knn"].to_dict("records"):
                knn_rows.append(
                    {
                        "run": r.label,
                        "epoch": row["step"] / ipe,
                        "step": int(row["step"]),
                        "wall_clock_s": row.get("elapsed_s"),
                        "knn_top1_pct": _pct(row.get("knn_top1")),
                        "knn_top5_pct": _pct(row.get("knn_top5")),
                    }
                )
            for row in m[m["row"] == "train"].to_dict("records"):
                loss_rows.append(
                    {
                        "run": r.label,
                        "epoch": row["step"] / ipe,
                        "step": int(row["step"]),
                        "stage": row.get("stage_name"),
                        "wall_clock_s": row.get("elapsed_s"),
                        **{k: row.get(k) for k in ("loss", "dino", "ibot", "koleo", "lr", "img_per_s")},
                    }
                )
        if r.summary and r.summary.get("stages"):
            wall = 0.0
            for i, st in enumerate(r.summary["stages"]):
                if i > 0:
                    switch_rows.append(
                        {"run": r.label, "stage": st.get("name"), "epoch": st.get("start_epoch"), "wall_clock_s": wall}
                    )
                wall += float(st.get("wall_clock_s") or 0.0)
    cols_knn = ["run", "epoch", "step", "wall_clock_s", "knn_top1_pct", "knn_top5_pct"]
    cols_loss = ["run", "epoch", "step", "stage", "wall_clock_s", "loss", "dino", "ibot", "koleo", "lr", "img_per_s"]
    return (
        pd.DataFrame(knn_rows, columns=cols_knn),
        pd.DataFrame(loss_rows, columns=cols_loss),
        pd.DataFrame(switch_rows, columns=["run", "stage", "epoch", "wall_clock_s"]),
    )


def _baseline_from_rows(results: pd.DataFrame, label: str) -> dict:
    """Per-protocol :class:`analysis.metrics.Baseline` from one run's results rows (CE denominators)."""
    from analysis.metrics import CLEAN, Baseline

    out = {}
    part = results[results["checkpoint"] == label]
    for protocol, rows in part.groupby("protocol"):
        clean = rows[rows["corruption"] == CLEAN]["top1"]
        errors = {
            (str(c), int(s)): 1.0 - float(t)
            for c, s, t in zip(rows["corruption"], rows["severity"], rows["top1"])
            if c != CLEAN
        }
        out[str(protocol)] = Baseline(label, 1.0 - float(clean.iloc[0]) if len(clean) else None, errors)
    return out


def robustness_tables(
    results: pd.DataFrame, labels: list[str], reference: str | None, alexnet: bool
) -> tuple[pd.DataFrame, pd.DataFrame, pd.DataFrame]:
    """(per run x protocol, per corruption, per group x severity) from run-labelled results rows."""
    from analysis.metrics import CLEAN, EXTRA, GROUPS, alexnet_baseline, summarise

    if results is None or results.empty:
        return pd.DataFrame(), pd.DataFrame(), pd.DataFrame()
    per_raw, agg_raw = summarise(results, None)
    has_ref = reference is not None and (results["checkpoint"] == reference).any()
    per_ref, agg_ref = summarise(results, _baseline_from_rows(results, reference)) if has_ref else (None, {})
    per_ax, agg_ax = summarise(results, alexnet_baseline()) if alexnet else (None, {})

    def ce_lookup(per):
        if per is None or per.empty:
            return {}
        return {(r.checkpoint, r.protocol, r.corruption): (r.ce, r.relative_ce) for r in per.itertuples()}

    ref_ce, ax_ce = ce_lookup(per_ref), ce_lookup(per_ax)
    main_rows = []
    for run in labels:
        for protocol, agg in agg_raw.get(run, {}).items():
            groups = agg.get("groups", {})
            a_ref = agg_ref.get(run, {}).get(protocol, {})
            a_ax = agg_ax.get(run, {}).get(protocol, {})
            main_rows.append(
                {
                    "run": run,
                    "protocol": protocol,
                    "clean_top1_pct": _pct(agg["clean_top1"]),
                    "mean_corrupted_top1_pct": _pct(agg["mean_corrupted_top1"]),
                    "mean_corruption_error_pct": _pct(agg["mean_corrupted_error"]),
                    "mCE_vs_ref_pct": _pct(a_ref.get("mCE")),
                    "relative_mCE_vs_ref_pct": _pct(a_ref.get("relative_mCE")),
                    **(
                        {
                            "mCE_alexnet_pct": _pct(a_ax.get("mCE")),
                            "relative_mCE_alexnet_pct": _pct(a_ax.get("relative_mCE")),
                        }
                        if alexnet
                        else {}
                    ),
                    **{f"{g}_top1_pct": _pct(groups[g]["top1"]) if g in groups else math.nan for g in GROUPS},
                    "extra_top1_pct": _pct(agg["extra"]["top1"]) if agg.get("extra") else math.nan,
                    "common_corruptions": agg["common_corruptions"],
                }
            )
    main = pd.DataFrame(main_rows)

    clean = {(r.checkpoint, r.protocol): r.top1 for r in results[results["corruption"] == CLEAN].itertuples()}
    per_rows = []
    for r in per_raw.itertuples():
        ce, rel = ref_ce.get((r.checkpoint, r.protocol, r.corruption), (math.nan, math.nan))
        row = {
            "run": r.checkpoint,
            "protocol": r.protocol,
            "corruption": r.corruption,
            "group": r.group,
            "severities": r.severities,
            "top1_pct": _pct(r.top1),
            "error_pct": _pct(r.error),
            "drop_pp": _pct(clean.get((r.checkpoint, r.protocol), math.nan)) - _pct(r.top1),
            "ce_vs_ref_pct": _pct(ce),
            "relative_ce_vs_ref_pct": _pct(rel),
        }
        if alexnet:
            row["ce_alexnet_pct"] = _pct(ax_ce.get((r.checkpoint, r.protocol, r.corruption), (math.nan,))[0])
        per_rows.append(row)
    per = pd.DataFrame(per_rows)

    sev_rows = []
    members = {**GROUPS, "extra": EXTRA}
    for (run, protocol), rows in results.groupby(["checkpoint", "protocol"], sort=False):
        base = rows[rows["corruption"] == CLEAN]["top1"]
        for group in GROUP_ORDER:
            cells = rows[rows["corruption"].isin(members[group])]
            if cells.empty:
                continue
            if len(base):
                sev_rows.append(
                    {
                        "run": run,
                        "protocol": protocol,
                        "group": group,
                        "severity": 0,
                        "top1_pct": _pct(base.iloc[0]),
                        "corruptions": 0,
                    }
                )
            for sev, part in cells.groupby("severity"):
                sev_rows.append(
                    {
                        "run": run,
                        "protocol": protocol,
                        "group": group,
                        "severity": int(sev),
                        "top1_pct": _pct(part["top1"].mean()),
                        "corruptions": int(part["corruption"].nunique()),
                    }
                )
    return main, per, pd.DataFrame(sev_rows)


FREQ_COLUMNS = (
    "clean_top1_pct",
    "heatmap_mean_error_pct",
    "heatmap_low_error_pct",
    "heatmap_high_error_pct",
    "heatmap_centroid_frac",
    "crossing_frac",
    "lowpass_auc_pct",
    "highpass_auc_pct",
    "noise_top1_pct",
    "blur_top1_pct",
    "noise_minus_blur_pp",
)


def frequency_table(records: list[RunRecord], freq: dict[str, FrequencyData]) -> pd.DataFrame:
    rows = []
    for r in records:
        data = freq.get(r.label)
        if data is None:
            continue
        s = data.summary
        rows.append(
            {
                "run": r.label,
                **{c: s.get(c, math.nan) for c in FREQ_COLUMNS},
                "image_size": s.get("image_size"),
                "eps": s.get("eps"),
                "window": s.get("window"),
                "heatmap_images": s.get("heatmap_images"),
                "bandpass_images": s.get("bandpass_images"),
                "source": str(data.folder),
            }
        )
    return pd.DataFrame(rows)


def missing_table(
    records: list[RunRecord], eval_found: dict, freq: dict[str, FrequencyData], eval_dirs: Sequence, freq_dirs: Sequence
) -> pd.DataFrame:
    """One row per (run, piece) that is missing, with what to run to produce it."""
    rows = []
    for r in records:
        ckpt = str(r.checkpoint) if r.checkpoint else f"{r.path}/final.pt"
        if r.is_run:
            if not r.summary:
                rows.append(
                    {
                        "run": r.label,
                        "piece": "training summary (summary.json)",
                        "status": "missing",
                        "how_to_get_it": f"finish the run: re-run its `fdbench pretrain` command (--out {r.path})",
                    }
                )
            elif not r.summary.get("finished"):
                rows.append(
                    {
                        "run": r.label,
                        "piece": "training",
                        "status": "unfinished",
                        "how_to_get_it": f"re-run its `fdbench pretrain` command (--out {r.path}) to continue",
                    }
                )
            if r.metrics is None:
                rows.append(
                    {
                        "run": r.label,
                        "piece": "training metrics (metrics.csv)",
                        "status": "missing",
                        "how_to_get_it": "written by `fdbench pretrain` while training",
                    }
                )
        found = eval_found.get(r.label) or {}
        if r.checkpoint is None:
            rows.append(
                {
                    "run": r.label,
                    "piece": "checkpoint (final.pt)",
                    "status": "missing",
                    "how_to_get_it": "finish training; evaluation needs final.pt",
                }
            )
        for protocol in ("linear", "knn"):
            if protocol not in found.get("protocols", set()):
                rows.append(
                    {
                        "run": r.label,
                        "piece": f"eval-corruptions ({protocol} probe)",
                        "status": "missing",
                        "how_to_get_it": f"fdbench eval-corruptions {ckpt} --protocol {protocol} "
                        f"--corruptions all (then pass --evals DIR to compare)",
                    }
                )
        if found and found.get("common", 0) < 15:
            rows.append(
                {
                    "run": r.label,
                    "piece": "eval-corruptions (common corruptions)",
                    "status": "partial",
                    "how_to_get_it": f"{found.get('common', 0)} of the 15 common corruptions evaluated; mCE "
                    f"averages only those",
                }
            )
        data = freq.get(r.label)
        if data is None:
            rows.append(
                {
                    "run": r.label,
                    "piece": "frequency-analysis",
                    "status": "missing",
                    "how_to_get_it": f"fdbench frequency-analysis {ckpt} --results <eval dir>/results.csv "
                    f"(then pass --frequency DIR to compare)",
                }
            )
        else:
            if data.heatmap is None:
                rows.append(
                    {
                        "run": r.label,
                        "piece": "Fourier heat map",
                        "status": "missing",
                        "how_to_get_it": f"fdbench frequency-analysis {ckpt} --analyses heatmap",
                    }
                )
            if data.bandpass is None:
                rows.append(
                    {
                        "run": r.label,
                        "piece": "band-pass curves",
                        "status": "missing",
                        "how_to_get_it": f"fdbench frequency-analysis {ckpt} --analyses bandpass",
                    }
                )
    return pd.DataFrame(rows, columns=["run", "piece", "status", "how_to_get_it"])


# ---- findings and headline -------------------------------------------------------------------------


def _get(df: pd.DataFrame, run: str, column: str, **where) -> float:
    if df is None or df.empty or column not in df.columns:
        return math.nan
    mask = df["run"] == run
    for k, v in where.items():
        mask &= df[k] == v
    values = df.loc[mask, column]
    return float(values.iloc[0]) if len(values) and pd.notna(values.iloc[0]) else math.nan


def headline_numbers(labels: list[str], cost: pd.DataFrame, robust: pd.DataFrame, freq: pd.DataFrame) -> dict:
    out = {}
    for run in labels:
        h = {
            k: _get(cost, run, k)
            for k in (
                "wall_clock_s",
                "speedup_vs_ref",
                "total_tflops",
                "flops_ratio_vs_ref",
                "flops_ratio_vs_none_schedule",
                "final_knn_top1_pct",
            )
        }
        for protocol in ("linear", "knn"):
            for k in (
                "clean_top1_pct",
                "mean_corruption_error_pct",
                "mCE_vs_ref_pct",
                "relative_mCE_vs_ref_pct",
                "noise_top1_pct",
                "blur_top1_pct",
            ):
                h[f"{protocol}_{k}"] = _get(robust, run, k, protocol=protocol)
        for k in ("heatmap_mean_error_pct", "heatmap_centroid_frac", "crossing_frac", "noise_minus_blur_pp"):
            h[k] = _get(freq, run, k)
        out[run] = h
    return out


def _chance_pct(freq: dict) -> float | None:
    """Chance accuracy (%) from the class count the frequency analysis recorded, if any."""
    classes = [f.summary.get("num_classes") for f in freq.values() if f.summary.get("num_classes")]
    return 100.0 / max(classes) if classes else None


def findings(labels: list[str], reference: str | None, headline: dict, chance_pct: float | None = None) -> list[str]:
    """Plain sentences: each run against the reference, in the paper's three directions.

    With ``chance_pct`` known, a run whose clean linear accuracy is under twice chance gets a
    warning: differences between barely trained models say little about the curriculum.
    """
    if reference is None:
        return [
            "No reference run (none trained with --curriculum none; choose one with --reference): "
            "no ratios or differences."
        ]
    ref = headline[reference]
    out = []
    for run in labels:
        if run == reference:
            continue
        h = headline[run]
        parts = []
        if not math.isnan(h["flops_ratio_vs_ref"]):
            parts.append(
                f"{h['flops_ratio_vs_ref']:.2f}x fewer training FLOPs and a {h['speedup_vs_ref']:.2f}x "
                f"wall-clock speed-up than {reference} "
                f"({'cheaper' if h['flops_ratio_vs_ref'] > 1 and h['speedup_vs_ref'] > 1 else 'NOT cheaper in both'})"
            )
        for protocol in ("linear", "knn"):
            dc = h[f"{protocol}_clean_top1_pct"] - ref[f"{protocol}_clean_top1_pct"]
            dn = h[f"{protocol}_noise_top1_pct"] - ref[f"{protocol}_noise_top1_pct"]
            db = h[f"{protocol}_blur_top1_pct"] - ref[f"{protocol}_blur_top1_pct"]
            if math.isnan(dc):
                continue
            verdict = "about equal" if abs(dc) <= CLEAN_TOLERANCE_PP else ("higher" if dc > 0 else "lower")
            # point estimates only: the statistically worded lines come from analysis.paired
            parts.append(
                f"{protocol} probe: clean accuracy {dc:+.1f} pp ({verdict} by point estimate, tolerance "
                f"{CLEAN_TOLERANCE_PP:g} pp; not a test), noise-group accuracy {dn:+.1f} pp "
                f"({'up' if dn > 0 else 'not up'}), blur-group {db:+.1f} pp, "
                f"mCE vs {reference} {h[f'{protocol}_mCE_vs_ref_pct']:.1f}%"
            )
        if not math.isnan(h["heatmap_centroid_frac"]) and not math.isnan(ref["heatmap_centroid_frac"]):
            parts.append(
                f"heat-map sensitivity centroid {ref['heatmap_centroid_frac']:.3f} -> "
                f"{h['heatmap_centroid_frac']:.3f} of Nyquist, mean heat-map error "
                f"{ref['heatmap_mean_error_pct']:.1f}% -> {h['heatmap_mean_error_pct']:.1f}%"
            )
        out.append(f"**{run}** vs **{reference}**: " + ("; ".join(parts) if parts else "nothing to compare yet"))
    if chance_pct:
        weak = [
            f"{run} {headline[run]['linear_clean_top1_pct']:.1f}%"
            for run in labels
            if headline[run]["linear_clean_top1_pct"] < 2 * chance_pct
        ]
        if weak:
            out.append(
                f"**Caution**: clean linear accuracy under twice chance ({chance_pct:.1f}%): "
                f"{', '.join(weak)}. These models are barely trained, so the differences above "
                "say little about the curriculum; train longer before drawing conclusions."
            )
    return out


HEADLINE_ROWS = [
    ("training wall-clock (s)", "wall_clock_s", "{:.1f}"),
    ("speed-up vs reference", "speedup_vs_ref", "{:.2f}x"),
    ("training TFLOPs", "total_tflops", "{:.3g}"),
    ("FLOPs ratio vs reference", "flops_ratio_vs_ref", "{:.2f}x"),
    ("final online kNN top-1 (%)", "final_knn_top1_pct", "{:.1f}"),
    ("clean top-1, linear (%)", "linear_clean_top1_pct", "{:.1f}"),
    ("clean top-1, kNN (%)", "knn_clean_top1_pct", "{:.1f}"),
    ("  floor: pixels, linear (%)", "linear_pixels_floor_clean_top1_pct", "{:.1f}"),
    ("  floor: pixels, kNN (%)", "knn_pixels_floor_clean_top1_pct", "{:.1f}"),
    ("  floor: random-init, linear (%)", "linear_random_init_floor_clean_top1_pct", "{:.1f}"),
    ("  floor: random-init, kNN (%)", "knn_random_init_floor_clean_top1_pct", "{:.1f}"),
    ("  ceiling: supervised, linear (%)", "linear_ceiling_clean_top1_pct", "{:.1f}"),
    ("  ceiling: supervised, kNN (%)", "knn_ceiling_clean_top1_pct", "{:.1f}"),
    ("mean corruption error, linear (%)", "linear_mean_corruption_error_pct", "{:.1f}"),
    ("mean corruption error, kNN (%)", "knn_mean_corruption_error_pct", "{:.1f}"),
    ("mCE vs reference, linear (%)", "linear_mCE_vs_ref_pct", "{:.1f}"),
    ("mCE vs reference, kNN (%)", "knn_mCE_vs_ref_pct", "{:.1f}"),
    ("noise-group top-1, linear (%)", "linear_noise_top1_pct", "{:.1f}"),
    ("blur-group top-1, linear (%)", "linear_blur_top1_pct", "{:.1f}"),
    ("heat-map mean error (%)", "heatmap_mean_error_pct", "{:.1f}"),
    ("heat-map centroid (x Nyquist)", "heatmap_centroid_frac", "{:.3f}"),
    ("band-pass crossing (x Nyquist)", "crossing_frac", "{:.3f}"),
    ("noise minus blur (pp)", "noise_minus_blur_pp", "{:+.1f}"),
]


def headline_frame(headline: dict) -> pd.DataFrame:
    """The headline numbers as a table: one row per quantity, one column per run."""
    return pd.DataFrame(
        [{"quantity": title, **{run: headline[run].get(key) for run in headline}} for title, key, _ in HEADLINE_ROWS]
    )


def headline_table(headline: dict) -> str:
    """The headline numbers as a plain-text table: one row per quantity, one column per run."""
    runs = list(headline)
    rows = []
    for title, key, fmt in HEADLINE_ROWS:
        values = [headline[r].get(key) for r in runs]
        cells = ["-" if v is None or (isinstance(v, float) and math.isnan(v)) else fmt.format(v) for v in values]
        rows.append([title, *cells])
    widths = [max(len(str(x)) for x in col) for col in zip(["", *runs], *rows)]
    lines = [
        "  ".join(str(c).ljust(w) if i == 0 else str(c).rjust(w) for i, (c, w) in enumerate(zip(row, widths)))
        for row in [["", *runs], *rows]
    ]
    return "\n".join(lines)


# ---- rendering -------------------------------------------------------------------------------------


def _fmt(column: str, value: Any) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "-"
    if isinstance(value, (bool,)) or type(value).__name__ == "bool_":
        return "yes" if value else "no"
    if isinstance(value, float):
        if column.endswith(("_pct", "_pp")):
            return f"{value:.1f}"
        if value.is_integer() and abs(value) < 1e6 and not column.endswith(("ratio_vs_ref", "_frac", "schedule")):
            return str(int(value))
        return f"{value:.4g}"
    return str(value)


def markdown_table(df: pd.DataFrame) -> str:
    if df is None or df.empty:
        return "_(no rows)_"
    cols = list(df.columns)

    def cell(c, v):
        return _fmt(c, v).replace("|", "\\|").replace("\n", " ")

    lines = ["| " + " | ".join(cols) + " |", "|" + "|".join("---" for _ in cols) + "|"]
    lines += ["| " + " | ".join(cell(c, v) for c, v in zip(cols, row)) + " |" for row in df.itertuples(index=False)]
    return "\n".join(lines)


def html_table(df: pd.DataFrame) -> str:
    if df is None or df.empty:
        return "<p><em>(no rows)</em></p>"
    head = "".join(f"<th>{html.escape(str(c))}</th>" for c in df.columns)
    body = "".join(
        "<tr>" + "".join(f"<td>{html.escape(_fmt(c, v))}</td>" for c, v in zip(df.columns, row)) + "</tr>"
        for row in df.itertuples(index=False)
    )
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def _inline_html(text: str) -> str:
    out = html.escape(text)
    out = re.sub(r"\*\*(.+?)\*\*", r"<strong>\1</strong>", out)
    return re.sub(r"`([^`]+)`", r"<code>\1</code>", out)


CSS = """body{font-family:system-ui,sans-serif;max-width:1200px;margin:2em auto;padding:0 1em;color:#222}
table{border-collapse:collapse;margin:.5em 0 1em;font-size:13px}th,td{border:1px solid #ccc;padding:3px 7px;
text-align:right}th{background:#f3f3f3}td:first-child,th:first-child{text-align:left}img{max-width:100%}
figure{margin:1em 0}figcaption{font-size:13px;color:#555}code{background:#f5f5f5;padding:0 3px}
.missing{color:#a00}"""


class _Doc:
    """Blocks rendered twice: Markdown (figures linked) and HTML (figures embedded as base64 PNG)."""

    def __init__(self, title: str, out: Path):
        self.title, self.out, self.blocks = title, out, []

    def heading(self, text: str, level: int = 2):
        self.blocks.append(("h", level, text))

    def text(self, text: str):
        self.blocks.append(("p", text))

    def items(self, items: list[str], css: str = ""):
        if items:
            self.blocks.append(("ul", items, css))

    def table(self, name: str, df: pd.DataFrame, caption: str = ""):
        self.blocks.append(("table", name, df, caption))

    def figure(self, paths: list[Path] | None, caption: str, data: str | None = None):
        """A figure (its PNG); ``data`` names the CSV it was drawn from, shown in the caption."""
        if paths:
            self.blocks.append(("fig", paths[0], caption + (f" (data: {data}.csv)" if data else "")))

    def markdown(self) -> str:
        lines = [f"# {self.title}", ""]
        for b in self.blocks:
            if b[0] == "h":
                lines += ["#" * b[1] + " " + b[2], ""]
            elif b[0] == "p":
                lines += [b[1], ""]
            elif b[0] == "ul":
                lines += [f"- {i}" for i in b[1]] + [""]
            elif b[0] == "table":
                if b[3]:
                    lines += [f"*{b[3]}* (`{b[1]}.csv`)", ""]
                lines += [markdown_table(b[2]), ""]
            elif b[0] == "fig":
                rel = b[1].relative_to(self.out).as_posix()
                pdf = Path(rel).with_suffix(".pdf").as_posix()
                lines += [f"![{b[2]}]({rel})", "", f"*{b[2]}* ([PDF]({pdf}))", ""]
        return "\n".join(lines)

    def html(self) -> str:
        parts = [
            f"<!DOCTYPE html><html><head><meta charset='utf-8'><title>{html.escape(self.title)}</title>"
            f"<style>{CSS}</style></head><body><h1>{html.escape(self.title)}</h1>"
        ]
        for b in self.blocks:
            if b[0] == "h":
                parts.append(f"<h{b[1]}>{html.escape(b[2])}</h{b[1]}>")
            elif b[0] == "p":
                parts.append(f"<p>{_inline_html(b[1])}</p>")
            elif b[0] == "ul":
                cls = f" class='{b[2]}'" if b[2] else ""
                parts.append(f"<ul{cls}>" + "".join(f"<li>{_inline_html(i)}</li>" for i in b[1]) + "</ul>")
            elif b[0] == "table":
                if b[3]:
                    parts.append(f"<p><em>{html.escape(b[3])}</em> (<code>{html.escape(b[1])}.csv</code>)</p>")
                parts.append(html_table(b[2]))
            elif b[0] == "fig":
                data = base64.b64encode(b[1].read_bytes()).decode("ascii")
                parts.append(
                    f"<figure><img alt='{html.escape(b[2])}' src='data:image/png;base64,{data}'>"
                    f"<figcaption>{html.escape(b[2])}</figcaption></figure>"
                )
        parts.append("</body></html>")
        return "\n".join(parts)


# ---- the command -----------------------------------------------------------------------------------


def compare(
    runs: Sequence[str | Path],
    out: str | Path = "reports/compare",
    *,
    evals: Sequence[str | Path] = (),
    frequency: Sequence[str | Path] = (),
    reference: str | None = None,
    title: str | None = None,
    figures: bool = True,
    announce: Callable[[str], None] | None = None,
) -> CompareReport:
    """Write ``report.md``, ``report.html``, ``summary.json``, the CSVs and figures for ``runs`` into ``out``.

    ``runs``: run folders (or a folder of run folders, or checkpoint files). ``evals`` / ``frequency``:
    extra eval-corruptions / frequency-analysis output folders to search first. ``reference``: the
    label of the run the ratios and CE are relative to (default: the run trained with curriculum none).
    ``figures=False`` writes the tables and the report text only (much faster; no PNG/PDF).
    """
    announce = announce or (lambda message: None)
    if not runs:
        raise FdbenchError("no runs given: pass run folders written by `fdbench pretrain` (e.g. runs/*)")
    for p in [*evals, *frequency]:
        if not Path(p).exists():
            raise FdbenchError(f"folder not found: {p}")
    paths = expand_runs(runs, announce)
    labels = _labels_for(paths)
    records = [load_run(p, label) for p, label in zip(paths, labels)]
    ref = choose_reference(records, reference)
    out = Path(out)
    report = CompareReport(out, out / "report.md", out / "report.html", ref, labels)

    # gather the evaluation and frequency outputs of every run
    cache = _Cache()
    result_parts, eval_found, eval_sources, freq = [], {}, {}, {}
    for r in records:
        rows, sources = find_eval_rows(r, evals, cache)
        if rows is not None:
            result_parts.append(rows)
            from analysis.metrics import COMMON

            eval_found[r.label] = {
                "protocols": set(rows["protocol"]),
                "common": int(rows[rows["corruption"].isin(COMMON)]["corruption"].nunique()),
            }
            eval_sources[r.label] = sources
            announce(f"{r.label}: eval-corruptions results from " + ", ".join(s["folder"] for s in sources))
        data = find_frequency(r, frequency, cache)
        if data is not None:
            freq[r.label] = data
            announce(f"{r.label}: frequency analysis from {data.folder}")
    results = pd.concat(result_parts, ignore_index=True) if result_parts else None
    alexnet = any(
        "alexnet" in str(s.get("normalisation") or "").lower() for srcs in eval_sources.values() for s in srcs
    )

    # tables
    t = report.tables
    t["runs"] = runs_table(records, ref)
    t["missing"] = missing_table(records, eval_found, freq, evals, frequency)
    t["cost"], t["cost_stages"] = cost_tables(records, ref)
    t["convergence_knn"], t["convergence_loss"], t["convergence_switches"] = convergence_tables(records)
    t["robustness"], t["robustness_per_corruption"], t["robustness_severity"] = robustness_tables(
        results, labels, ref, alexnet
    )
    t["frequency"] = frequency_table(records, freq)
    extra_tables = _frequency_extras(records, freq, results, ref)
    t.update(extra_tables)
    report.missing = t["missing"]
    report.headline = headline_numbers(labels, t["cost"], t["robustness"], t["frequency"])
    paired = paired_tables(labels, ref, eval_sources)
    t.update(paired)
    floor_headline(report.headline, paired["floors"])
    # the statistics first: a run that does not beat its floors makes the point-estimate lines moot
    report.findings = paired_findings(labels, ref, paired) + findings(labels, ref, report.headline, _chance_pct(freq))
    t["headline"] = headline_frame(report.headline)

    for name, df in t.items():
        path = out / f"{name}.csv"
        atomic_write_csv(path, df)
        report.files.append(path)

    # figures
    report.figures = _draw(out / "figures", t, labels, freq, extra_tables) if figures else {}
    for paths in report.figures.values():
        report.files.extend(paths)

    doc = _document(report, records, t, eval_sources, freq, title or _default_title(records, ref))
    atomic_write_text(report.markdown, doc.markdown())
    atomic_write_text(report.html, doc.html())
    atomic_write_json(
        out / "summary.json",
        _clean(
            {
                "reference": ref,
                "runs": {r.label: str(r.path) for r in records},
                "headline": report.headline,
                "findings": report.findings,
                "missing": t["missing"].to_dict("records"),
                "eval_sources": eval_sources,
                "frequency_sources": {k: str(v.folder) for k, v in freq.items()},
                "tables": {name: f"{name}.csv" for name in t},
                "figures": {k: [str(p) for p in v] for k, v in report.figures.items()},
            }
        ),
    )
    report.files += [report.markdown, report.html, out / "summary.json"]
    return report


def _clean(obj):
    if isinstance(obj, dict):
        return {str(k): _clean(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple, set)):
        return [_clean(v) for v in obj]
    if isinstance(obj, float) and math.isnan(obj):
        return None
    return obj


def _default_title(records: list[RunRecord], ref: str | None) -> str:
    names = [r.label for r in records]
    return "fdbench comparison: " + " vs ".join(names) + (f" (reference: {ref})" if ref else "")


def _frequency_extras(records, freq: dict[str, FrequencyData], results, ref) -> dict[str, pd.DataFrame]:
    """Band-pass curves of all runs, heat-map comparisons against the reference, robustness vs frequency."""
    from analysis.frequency import comparison_frame, robustness_table

    out = {}
    labels = [r.label for r in records]
    bands = [freq[l].bandpass.assign(run=l) for l in labels if l in freq and freq[l].bandpass is not None]
    if bands:
        df = pd.concat(bands, ignore_index=True)
        out["frequency_bandpass"] = df[["run"] + [c for c in df.columns if c != "run"]]
    maps = [l for l in labels if l in freq and freq[l].heatmap is not None]
    if len(maps) >= 2:
        base = ref if ref in maps else maps[0]
        for other in [l for l in maps if l != base]:
            a, b = freq[base].heatmap, freq[other].heatmap
            if len(a) == len(b) and set(zip(a["ky"], a["kx"])) == set(zip(b["ky"], b["kx"])):
                out[f"frequency_heatmap_{_safe(base)}_vs_{_safe(other)}"] = comparison_frame(a, b)
    centroids = next((freq[l].centroids for l in labels if l in freq and freq[l].centroids is not None), None)
    if centroids is not None and results is not None and not results.empty:
        table = robustness_table(results, centroids)
        if not table.empty:
            out["robustness_vs_frequency"] = table.rename(columns={"checkpoint": "run"})
    return out


def _safe(label: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.+-]+", "_", label)


def _draw(folder: Path, t: dict[str, pd.DataFrame], labels: list[str], freq: dict, extras: dict) -> dict:
    from analysis import plots, report_figures as rf

    figures = {}

    def emit(name, fig):
        figures[name] = plots.save_figure(fig, folder / name)

    if not t["cost_stages"].empty:
        emit("cost", rf.cost_figure(t["cost_stages"], t["cost"], labels))
    if not t["convergence_knn"].empty:
        emit("convergence_knn", rf.convergence_figure(t["convergence_knn"], t["convergence_switches"], labels))
    if not t["convergence_loss"].empty:
        emit("convergence_loss", rf.loss_figure(t["convergence_loss"], t["convergence_switches"], labels))
    per = t["robustness_per_corruption"]
    if not per.empty:
        protocols = [p for p in ("linear", "knn") if p in set(per["protocol"])]
        emit("robustness_per_corruption", rf.corruption_bars_figure(per, t["robustness"], protocols, labels))
        emit("robustness_severity", rf.severity_figure(t["robustness_severity"], labels))
    for name, df in extras.items():
        if name.startswith("frequency_heatmap_"):
            a, b = name[len("frequency_heatmap_") :].split("_vs_", 1)
            emit(
                name,
                plots.heatmap_comparison_figure(
                    df, a, b, suptitle="Fourier heat maps: error rate (%) under a unit Fourier-basis perturbation"
                ),
            )
    if "frequency_bandpass" in extras:
        bp = extras["frequency_bandpass"].rename(columns={"run": "checkpoint"})
        from analysis.frequency import crossing_radius

        chance = _chance_pct(freq)
        crossings = {l: crossing_radius(bp[bp["checkpoint"] == l]) for l in dict.fromkeys(bp["checkpoint"])}
        emit("frequency_bandpass", plots.bandpass_figure(bp, chance_pct=chance, crossings=crossings))
    if "robustness_vs_frequency" in extras:
        emit(
            "robustness_vs_frequency",
            plots.robustness_frequency_figure(extras["robustness_vs_frequency"].rename(columns={"run": "checkpoint"})),
        )
    return figures


def _document(report: CompareReport, records, t, eval_sources, freq, title: str) -> _Doc:
    d = _Doc(title, report.out)
    ref = report.reference
    f = report.figures
    missing_runs = lambda have: [r.label for r in records if r.label not in have]  # noqa: E731

    d.heading("Runs")
    d.text(
        f"Reference run: **{ref}** (ratios and CE are relative to it)."
        if ref
        else "No reference run: none of the runs was trained with `--curriculum none` (choose one with `--reference`)."
    )
    d.table("runs", t["runs"], "What was compared")
    d.heading("Missing pieces")
    if t["missing"].empty:
        d.text("Nothing is missing: every run has its training record, both evaluations and the frequency analysis.")
    else:
        d.text("These pieces were not found; the sections below leave them out and say so.")
        d.table("missing", t["missing"], "Not found, and how to produce it")
    d.heading("Headline numbers")
    d.table("headline", t["headline"], "Per run (details in the sections below)")
    if report.findings:
        d.heading("Findings")
        d.items(report.findings)
    if not t["floors"].empty:
        d.heading("Floors and paired differences")
        d.text(
            "Floors: the same probes on raw pixels and on the architecture at random initialisation, on the "
            "same images and corrupted pixels. Intervals: paired bootstrap over val images (95%); p: McNemar's "
            "exact test. A difference whose interval covers 0 is not distinguishable at this sample size."
        )
        d.table("floors", t["floors"], "Clean top-1 of each run beside its floors (run minus floor)")
    if not t["differences"].empty:
        d.table("differences", t["differences"], "Each run minus the reference, per metric")

    d.heading("Cost")
    d.text(
        "Wall-clock counts the training steps with their data loading (not the kNN evaluations or "
        "checkpoint writes). FLOPs are counted with torch's FLOP counter on one real training step per "
        "stage (student forward + backward on every crop, teacher forward, heads, losses). "
        "`speedup_vs_ref` = wall-clock of the reference / wall-clock of the run; `flops_ratio_vs_ref` = "
        "FLOPs of the reference / FLOPs of the run; `flops_ratio_vs_none_schedule` = the run's own schedule "
        "counted with full-resolution crops throughout / its actual FLOPs."
    )
    d.table("cost", t["cost"], "Per run")
    d.table("cost_stages", t["cost_stages"], "Per stage (peak memory: CUDA peak allocated, or CPU resident set)")
    d.figure(f.get("cost"), "Training wall-clock per stage and total training FLOPs", "cost_stages")

    d.heading("Convergence")
    absent = missing_runs(set(t["convergence_knn"]["run"]))
    if absent:
        d.items([f"{r}: no training metrics (kNN / loss curves) found" for r in absent], "missing")
    d.figure(
        f.get("convergence_knn"),
        "Online kNN top-1 of the teacher vs epochs and vs training wall-clock; dotted lines: stage switch",
        "convergence_knn",
    )
    d.figure(f.get("convergence_loss"), "Training losses vs epochs; dotted lines: stage switch", "convergence_loss")
    if not t["convergence_switches"].empty:
        d.table("convergence_switches", t["convergence_switches"], "Stage switches (epoch, training second)")
    if not t["convergence_knn"].empty:
        d.table("convergence_knn", t["convergence_knn"], "kNN accuracy during training")

    d.heading("Robustness")
    absent = missing_runs(set(t["robustness"]["run"]) if not t["robustness"].empty else set())
    if absent:
        d.items([f"{r}: never evaluated with eval-corruptions (missing)" for r in absent], "missing")
    if not t["robustness"].empty:
        sources = "; ".join(f"{run}: {', '.join(s['folder'] for s in srcs)}" for run, srcs in eval_sources.items())
        d.text(
            "Top-1 accuracy of frozen features with a linear probe and a kNN probe (k = 20), clean and "
            "under the corruptions (mean over severities). `mean_corruption_error_pct` is the unnormalised "
            "mean error over the common corruptions evaluated; `mCE_vs_ref_pct` = mean over corruptions of "
            f"sum_s E_run / sum_s E_{ref or 'ref'} (100 = as robust as the reference); relative mCE "
            f"subtracts each model's clean error first. Sources: {sources}."
        )
        d.table("robustness", t["robustness"], "Per run and probe")
        d.figure(
            f.get("robustness_per_corruption"),
            "Accuracy per corruption (mean over severities); dashed: clean",
            "robustness_per_corruption",
        )
        d.figure(
            f.get("robustness_severity"),
            "Accuracy vs severity per corruption group (0 = clean); solid: linear probe, dashed: kNN",
            "robustness_severity",
        )
        d.table("robustness_per_corruption", t["robustness_per_corruption"], "Per corruption")
        d.table("robustness_severity", t["robustness_severity"], "Per group and severity")

    d.heading("Frequency bias")
    absent = missing_runs(set(freq))
    if absent:
        d.items([f"{r}: no frequency analysis found (missing)" for r in absent], "missing")
    if not t["frequency"].empty:
        d.text(
            "Heat map: error rate under `x + eps * r * U(k)` per frequency k (low frequencies at the centre); "
            "`heatmap_centroid_frac` = error-increase-weighted mean |k| (fraction of Nyquist; larger = "
            "sensitive to higher frequencies). Band-pass: accuracy of low-pass / high-pass filtered images "
            "vs the radius; `crossing_frac` = radius where low-pass accuracy reaches high-pass accuracy. "
            "`noise_minus_blur_pp` = noise-group minus blur-group accuracy (linear probe)."
        )
        d.table("frequency", t["frequency"], "Frequency-bias numbers")
    for name in report.figures:
        if name.startswith("frequency_heatmap_"):
            d.figure(f[name], "Fourier heat maps side by side and their difference (B - A, percentage points)", name)
    d.figure(
        f.get("frequency_bandpass"),
        "Low-pass (solid) and high-pass (dashed) accuracy vs filter radius",
        "frequency_bandpass",
    )
    d.figure(
        f.get("robustness_vs_frequency"),
        "Accuracy drop vs the corruption's spectral centroid",
        "robustness_vs_frequency",
    )
    if "robustness_vs_frequency" in t:
        d.table("robustness_vs_frequency", t["robustness_vs_frequency"], "Robustness vs corruption frequency")

    d.heading("Files")
    d.text(
        "Every table above is in this folder as `<name>.csv`; figures are in `figures/` as PNG and PDF; "
        "`summary.json` holds the headline numbers."
    )
    return d
