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
   kNN top-1 vs epochs and vs training wall-clock, loss curves, the teacher's collapse signals
   (``convergence_teacher``: target entropy, prototypes per batch), stage switches marked.
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
7. seeds (``seeds.csv``): runs whose recipe differs only in the seed are grouped into one arm, with
   mean, standard deviation and a 95% t-interval over seeds (:mod:`analysis.report_seeds`).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Sequence

import pandas as pd

from analysis import plots, report_figures
from analysis.frequency_analyses import crossing_radius
from analysis.metrics import COMMON
from analysis.paired import floor_headline, paired_findings, paired_tables
from analysis.report_discovery import (
    OutputCache,
    RunRecord,
    choose_reference,
    expand_runs,
    find_eval_rows,
    find_frequency,
    labels_for,
    load_run,
)
from analysis.report_findings import (
    CLEAN_TOLERANCE_PP,
    chance_pct,
    findings,
    headline_frame,
    headline_numbers,
    headline_table,
)
from analysis.report_render import Document
from analysis.report_retrieval import retrieval_tables
from analysis.report_seeds import seed_groups, seeds_table
from analysis.report_frequency_tables import frequency_extras, frequency_table
from analysis.report_tables import convergence_tables, cost_tables, missing_table, robustness_tables, runs_table
from fdbench.errors import FdbenchError
from analysis.report_segmentation import add_segmentation_section, segmentation_missing, segmentation_table
from fdbench.io import atomic_write_csv, atomic_write_json, atomic_write_text, json_safe

__all__ = [
    "CLEAN_TOLERANCE_PP",
    "CompareReport",
    "RunRecord",
    "choose_reference",
    "compare",
    "expand_runs",
    "findings",
    "headline_frame",
    "headline_numbers",
    "headline_table",
    "load_run",
]


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


# ---- the command -----------------------------------------------------------------------------------


def compare(
    runs: Sequence[str | Path],
    out: str | Path = "reports/compare",
    *,
    evals: Sequence[str | Path] = (),
    frequency: Sequence[str | Path] = (),
    segmentation: Sequence[str | Path] = (),
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
    for p in [*evals, *frequency, *segmentation]:
        if not Path(p).exists():
            raise FdbenchError(f"folder not found: {p}")
    paths = expand_runs(runs, announce)
    labels = labels_for(paths)
    records = [load_run(p, label) for p, label in zip(paths, labels)]
    ref = choose_reference(records, reference)
    out = Path(out)
    report = CompareReport(out, out / "report.md", out / "report.html", ref, labels)

    # gather the evaluation and frequency outputs of every run
    cache = OutputCache()
    result_parts, eval_found, eval_sources, freq = [], {}, {}, {}
    for r in records:
        rows, sources = find_eval_rows(r, evals, cache)
        if rows is not None:
            result_parts.append(rows)
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
    # eval-retrieval, with its floors and paired differences
    t["retrieval"], t["retrieval_differences"], retrieval_missing = retrieval_tables(records, evals, ref)
    if retrieval_missing:
        t["missing"] = pd.concat([t["missing"], pd.DataFrame(retrieval_missing)], ignore_index=True)
    t["segmentation"] = segmentation_table(records, segmentation)
    seg_missing = segmentation_missing(records, t["segmentation"])
    if not seg_missing.empty:
        parts = [t["missing"], seg_missing] if not t["missing"].empty else [seg_missing]
        t["missing"] = pd.concat(parts, ignore_index=True)
    t["cost"], t["cost_stages"] = cost_tables(records, ref)
    t["convergence_knn"], t["convergence_loss"], t["convergence_switches"] = convergence_tables(records)
    t["robustness"], t["robustness_per_corruption"], t["robustness_severity"] = robustness_tables(
        results, labels, ref, alexnet
    )
    t["frequency"] = frequency_table(records, freq)
    extra_tables = frequency_extras(records, freq, results, ref)
    t.update(extra_tables)
    report.missing = t["missing"]
    report.headline = headline_numbers(labels, t["cost"], t["robustness"], t["frequency"])
    paired = paired_tables(labels, ref, eval_sources)
    t.update(paired)
    floor_headline(report.headline, paired["floors"])
    # the statistics first: a run that does not beat its floors makes the point-estimate lines moot
    report.findings = paired_findings(labels, ref, paired) + findings(labels, ref, report.headline, chance_pct(freq))
    t["headline"] = headline_frame(report.headline)
    t["seeds"] = seeds_table(seed_groups(records), report.headline)

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
        json_safe(
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


def _default_title(records: list[RunRecord], ref: str | None) -> str:
    names = [r.label for r in records]
    return "fdbench comparison: " + " vs ".join(names) + (f" (reference: {ref})" if ref else "")


def _draw(folder: Path, t: dict[str, pd.DataFrame], labels: list[str], freq: dict, extras: dict) -> dict:
    figures = {}

    def emit(name, fig):
        figures[name] = plots.save_figure(fig, folder / name)

    if not t["cost_stages"].empty:
        emit("cost", report_figures.cost_figure(t["cost_stages"], t["cost"], labels))
    if not t["convergence_knn"].empty:
        emit(
            "convergence_knn",
            report_figures.convergence_figure(t["convergence_knn"], t["convergence_switches"], labels),
        )
    if not t["convergence_loss"].empty:
        emit("convergence_loss", report_figures.loss_figure(t["convergence_loss"], t["convergence_switches"], labels))
        if t["convergence_loss"][[c for c, _, _ in report_figures.TEACHER_SIGNALS]].notna().any().any():
            emit(
                "convergence_teacher",
                report_figures.teacher_figure(t["convergence_loss"], t["convergence_switches"], labels),
            )
    per = t["robustness_per_corruption"]
    if not per.empty:
        protocols = [p for p in ("linear", "knn") if p in set(per["protocol"])]
        emit(
            "robustness_per_corruption", report_figures.corruption_bars_figure(per, t["robustness"], protocols, labels)
        )
        emit("robustness_severity", report_figures.severity_figure(t["robustness_severity"], labels))
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
        chance = chance_pct(freq)
        crossings = {l: crossing_radius(bp[bp["checkpoint"] == l]) for l in dict.fromkeys(bp["checkpoint"])}
        emit("frequency_bandpass", plots.bandpass_figure(bp, chance_pct=chance, crossings=crossings))
    if "robustness_vs_frequency" in extras:
        emit(
            "robustness_vs_frequency",
            plots.robustness_frequency_figure(extras["robustness_vs_frequency"].rename(columns={"run": "checkpoint"})),
        )
    return figures


def _document(report: CompareReport, records, t, eval_sources, freq, title: str) -> Document:
    doc = Document(title, report.out)
    ref = report.reference
    f = report.figures
    missing_runs = lambda have: [r.label for r in records if r.label not in have]  # noqa: E731

    doc.heading("Runs")
    doc.text(
        f"Reference run: **{ref}** (ratios and CE are relative to it)."
        if ref
        else "No reference run: none of the runs was trained with `--curriculum none` (choose one with `--reference`)."
    )
    doc.table("runs", t["runs"], "What was compared")
    doc.heading("Missing pieces")
    if t["missing"].empty:
        doc.text("Nothing is missing: every run has its training record, both evaluations and the frequency analysis.")
    else:
        doc.text("These pieces were not found; the sections below leave them out and say so.")
        doc.table("missing", t["missing"], "Not found, and how to produce it")
    doc.heading("Headline numbers")
    doc.table("headline", t["headline"], "Per run (details in the sections below)")
    if not t["seeds"].empty:
        doc.heading("Seeds")
        doc.text(
            "Runs whose recipe differs only in the seed form one arm: mean, sample standard deviation and "
            "a 95% t-interval of the mean over seeds, per quantity (the seed-to-seed spread)."
        )
        doc.table("seeds", t["seeds"], "Each arm over its seeds")
    if report.findings:
        doc.heading("Findings")
        doc.items(report.findings)
    if not t["floors"].empty:
        doc.heading("Floors and paired differences")
        doc.text(
            "Floors: the same probes on raw pixels and on the architecture at random initialisation, on the "
            "same images and corrupted pixels. Intervals: paired bootstrap over val images (95%); p: McNemar's "
            "exact test. A difference whose interval covers 0 is not distinguishable at this sample size."
        )
        doc.table("floors", t["floors"], "Clean top-1 of each run beside its floors (run minus floor)")
    if not t["differences"].empty:
        doc.table("differences", t["differences"], "Each run minus the reference, per metric")

    doc.heading("Cost")
    doc.text(
        "Wall-clock counts the training steps with their data loading (not the kNN evaluations or "
        "checkpoint writes). FLOPs are counted with torch's FLOP counter on one real training step per "
        "stage (student forward + backward on every crop, teacher forward, heads, losses). "
        "`speedup_vs_ref` = wall-clock of the reference / wall-clock of the run; `flops_ratio_vs_ref` = "
        "FLOPs of the reference / FLOPs of the run; `flops_ratio_vs_none_schedule` = the run's own schedule "
        "counted with full-resolution crops throughout / its actual FLOPs."
    )
    doc.table("cost", t["cost"], "Per run")
    doc.table("cost_stages", t["cost_stages"], "Per stage (peak memory: CUDA peak allocated, or CPU resident set)")
    doc.figure(f.get("cost"), "Training wall-clock per stage and total training FLOPs", "cost_stages")

    doc.heading("Convergence")
    absent = missing_runs(set(t["convergence_knn"]["run"]))
    if absent:
        doc.items([f"{r}: no training metrics (kNN / loss curves) found" for r in absent], "missing")
    doc.figure(
        f.get("convergence_knn"),
        "Online kNN top-1 of the teacher vs epochs and vs training wall-clock; dotted lines: stage switch",
        "convergence_knn",
    )
    doc.figure(f.get("convergence_loss"), "Training losses vs epochs; dotted lines: stage switch", "convergence_loss")
    doc.figure(
        f.get("convergence_teacher"),
        "The teacher's targets vs epochs: near 1 ln K they are uniform (the DINO term teaches nothing); "
        "near 0 with one prototype per batch, every image gets the same target (collapse)",
        "convergence_teacher",
    )
    if not t["convergence_switches"].empty:
        doc.table("convergence_switches", t["convergence_switches"], "Stage switches (epoch, training second)")
    if not t["convergence_knn"].empty:
        doc.table("convergence_knn", t["convergence_knn"], "kNN accuracy during training")

    doc.heading("Robustness")
    absent = missing_runs(set(t["robustness"]["run"]) if not t["robustness"].empty else set())
    if absent:
        doc.items([f"{r}: never evaluated with eval-corruptions (missing)" for r in absent], "missing")
    if not t["robustness"].empty:
        sources = "; ".join(f"{run}: {', '.join(s['folder'] for s in srcs)}" for run, srcs in eval_sources.items())
        doc.text(
            "Top-1 accuracy of frozen features with a linear probe and a kNN probe (k = 20), clean and "
            "under the corruptions (mean over severities). `mean_corruption_error_pct` is the unnormalised "
            "mean error over the common corruptions evaluated; `mCE_vs_ref_pct` = mean over corruptions of "
            f"sum_s E_run / sum_s E_{ref or 'ref'} (100 = as robust as the reference); relative mCE "
            f"subtracts each model's clean error first. Sources: {sources}."
        )
        doc.table("robustness", t["robustness"], "Per run and probe")
        doc.figure(
            f.get("robustness_per_corruption"),
            "Accuracy per corruption (mean over severities); dashed: clean",
            "robustness_per_corruption",
        )
        doc.figure(
            f.get("robustness_severity"),
            "Accuracy vs severity per corruption group (0 = clean); solid: linear probe, dashed: kNN",
            "robustness_severity",
        )
        doc.table("robustness_per_corruption", t["robustness_per_corruption"], "Per corruption")
        doc.table("robustness_severity", t["robustness_severity"], "Per group and severity")

    doc.heading("Instance retrieval")
    if t["retrieval"].empty:
        doc.items(["no eval-retrieval results found (missing; see Missing pieces)"], "missing")
    else:
        doc.text(
            "eval-retrieval: mAP of the revisited Oxford/Paris protocol (Easy, Medium, Hard) from the class "
            "token, next to its floors (raw pixels, random init); corrupted: mean over the corrupted-query cells."
        )
        doc.table("retrieval", t["retrieval"], "Per run, with the floors")
        if not t["retrieval_differences"].empty:
            doc.table(
                "retrieval_differences",
                t["retrieval_differences"],
                "Clean mAP differences with paired bootstrap 95% intervals over the queries",
            )
    add_segmentation_section(doc, t["segmentation"], [r.label for r in records])

    doc.heading("Frequency bias")
    absent = missing_runs(set(freq))
    if absent:
        doc.items([f"{r}: no frequency analysis found (missing)" for r in absent], "missing")
    if not t["frequency"].empty:
        doc.text(
            "Heat map: error rate under `x + eps * r * U(k)` per frequency k (low frequencies at the centre); "
            "`heatmap_centroid_frac` = error-increase-weighted mean |k| (fraction of Nyquist; larger = "
            "sensitive to higher frequencies). Band-pass: accuracy of low-pass / high-pass filtered images "
            "vs the radius; `crossing_frac` = radius where low-pass accuracy reaches high-pass accuracy. "
            "`noise_minus_blur_pp` = noise-group minus blur-group accuracy (linear probe)."
        )
        doc.table("frequency", t["frequency"], "Frequency-bias numbers")
    for name in report.figures:
        if name.startswith("frequency_heatmap_"):
            doc.figure(f[name], "Fourier heat maps side by side and their difference (B - A, percentage points)", name)
    doc.figure(
        f.get("frequency_bandpass"),
        "Low-pass (solid) and high-pass (dashed) accuracy vs filter radius",
        "frequency_bandpass",
    )
    doc.figure(
        f.get("robustness_vs_frequency"),
        "Accuracy drop vs the corruption's spectral centroid",
        "robustness_vs_frequency",
    )
    if "robustness_vs_frequency" in t:
        doc.table("robustness_vs_frequency", t["robustness_vs_frequency"], "Robustness vs corruption frequency")

    doc.heading("Files")
    doc.text(
        "Every table above is in this folder as `<name>.csv`; figures are in `figures/` as PNG and PDF; "
        "`summary.json` holds the headline numbers."
    )
    return doc
