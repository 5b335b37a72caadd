"""Which runs are compared, and where their evaluation and frequency-analysis outputs are.

A compared entry is a run folder written by ``fdbench pretrain`` (``summary.json``, ``metrics.csv``,
``config.yaml``; ``final.pt`` only fingerprinted, never loaded) or a bare checkpoint file. Its
eval-corruptions and frequency-analysis folders are searched in or beside the run folder, in the
working directory and in the folders given explicitly; a folder's rows belong to the entry when the
checkpoint path recorded there is the entry's, or its SHA-256 matches, or (no path recorded) its
label is the entry's name.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Sequence

import pandas as pd

from analysis.metrics import check_results
from fdbench.checkpoint import checkpoint_labels
from fdbench.config import load_yaml
from fdbench.errors import FdbenchError
from fdbench.io import file_sha256, read_json

RUN_FILES = ("summary.json", "metrics.csv", "config.yaml", "final.pt")
EVAL_SUBDIRS = ("evals/corruptions", "eval-corruptions", "evals", "corruptions")
FREQ_SUBDIRS = ("evals/frequency", "frequency-analysis", "frequency")


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
            self._sha = file_sha256(self.checkpoint)
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


def read_csv(path: Path) -> pd.DataFrame | None:
    """The CSV file as a frame, or ``None`` when it is missing, empty or malformed."""
    try:
        return pd.read_csv(path)
    except (OSError, ValueError, pd.errors.EmptyDataError, pd.errors.ParserError):
        return None


def read_csv_or_fail(path: Path) -> pd.DataFrame:
    """The CSV file as a frame; a one-line error naming it when it cannot be read."""
    try:
        return pd.read_csv(path)
    except (OSError, ValueError, pd.errors.EmptyDataError, pd.errors.ParserError) as err:
        reason = str(err).splitlines()[0] if str(err) else type(err).__name__
        raise FdbenchError(f"cannot read {path} ({reason}); fix or move it away") from None


def labels_for(paths: list[Path]) -> list[str]:
    """The names eval-corruptions and frequency-analysis give these entries (run folder -> its name)."""
    return checkpoint_labels([p / "final.pt" if p.is_dir() else p for p in paths])


def load_run(path: Path, label: str) -> RunRecord:
    if path.is_file():
        return RunRecord(
            label, path, path, is_run=False, notes=["a checkpoint file, not a run folder: no training record"]
        )
    rec = RunRecord(label, path, path / "final.pt" if (path / "final.pt").exists() else None, is_run=True)
    rec.summary = read_json(path / "summary.json")
    if (path / "summary.json").exists() and rec.summary is None:
        rec.notes.append(f"{path / 'summary.json'} is unreadable")
    if (path / "metrics.csv").exists():
        rec.metrics = read_csv(path / "metrics.csv")
        if rec.metrics is None or "row" not in rec.metrics.columns:
            rec.notes.append(f"{path / 'metrics.csv'} is unreadable")
            rec.metrics = None
    if (path / "config.yaml").exists():
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


class OutputCache:
    """Each output folder is read once even when several runs look into it."""

    def __init__(self):
        self.evals: dict[Path, EvalSource | None] = {}
        self.freqs: dict[Path, pd.DataFrame | None] = {}

    def eval_source(self, folder: Path) -> EvalSource | None:
        key = folder.resolve()
        if key not in self.evals:
            results = read_csv(folder / "results.csv")
            need = {"checkpoint", "protocol", "corruption", "severity", "top1"}
            if results is None and (folder / "results.csv").is_file():
                results = read_csv_or_fail(folder / "results.csv")  # unreadable: say so, not "missing"
            if results is not None and not {"checkpoint", "top1"}.isdisjoint(results.columns):
                check_results(results, folder / "results.csv")  # text where numbers belong: refused
            if results is None or not need <= set(results.columns):
                self.evals[key] = None
            else:
                results["checkpoint"] = results["checkpoint"].astype(str)
                self.evals[key] = EvalSource(folder, results, read_json(folder / "summary.json") or {})
        return self.evals[key]

    def freq_summary(self, folder: Path) -> pd.DataFrame | None:
        key = folder.resolve()
        if key not in self.freqs:
            df = read_csv(folder / "summary.csv")
            self.freqs[key] = df if df is not None and "checkpoint" in df.columns else None
            if self.freqs[key] is not None:
                self.freqs[key]["checkpoint"] = self.freqs[key]["checkpoint"].astype(str)
        return self.freqs[key]


def find_eval_rows(
    record: RunRecord, explicit: Sequence[str | Path], cache: OutputCache
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


def find_frequency(record: RunRecord, explicit: Sequence[str | Path], cache: OutputCache) -> FrequencyData | None:
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
            data.heatmap = read_csv(folder / label / "heatmap.csv")
            data.bandpass = read_csv(folder / label / "bandpass.csv")
            if data.bandpass is None:
                combined = read_csv(folder / "bandpass.csv")
                if combined is not None and "checkpoint" in combined.columns:
                    part = combined[combined["checkpoint"].astype(str) == label]
                    data.bandpass = part.drop(columns=["checkpoint"]) if len(part) else None
            data.centroids = read_csv(folder / "spectra_centroids.csv")
            return data
    return None
