"""The report's tables: one pandas frame each, computed from what discovery found (nothing expensive
is recomputed). Each is also written as ``<name>.csv`` by :func:`analysis.report.compare`.
"""

from __future__ import annotations

import math
from typing import Sequence

import pandas as pd

from analysis.metrics import CLEAN, EXTRA, GROUPS, Baseline, alexnet_baseline, summarise
from analysis.report_discovery import FrequencyData, RunRecord

GROUP_ORDER = ("noise", "blur", "weather", "digital", "extra")


def pct(x) -> float:
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
                "final_knn_top1_pct": pct((s.get("knn") or {}).get("final_top1")),
            }
        )
    totals = pd.DataFrame(total_rows)
    if "curriculum" not in totals.columns:
        totals = totals.reindex(columns=["run", "status"])
    return totals, pd.DataFrame(stage_rows)


def wilson_interval(p, n, z: float = 1.959964) -> tuple[float | None, float | None]:
    """95% Wilson score interval of an accuracy ``p`` measured on ``n`` images (None when unknown)."""
    if p is None or n is None or _isnan(p) or not n:
        return None, None
    p, n = float(p), float(n)
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    return centre - half, centre + half


# the training rows' columns kept in convergence_loss.csv: losses, lr, speed and the teacher's
# collapse signals (pretrain.collapse; absent from runs older than the signal: left blank)
LOSS_ROW_COLUMNS = (
    "loss",
    "dino",
    "ibot",
    "koleo",
    "lr",
    "img_per_s",
    "teacher_entropy",
    "teacher_batch_entropy",
    "teacher_prototypes",
    "teacher_rank",
)


def convergence_tables(records: list[RunRecord]) -> tuple[pd.DataFrame, pd.DataFrame, pd.DataFrame]:
    """(kNN rows, loss rows, stage switches), epochs as fractions (step / iterations per epoch)."""
    knn_rows, loss_rows, switch_rows = [], [], []
    for r in records:
        iters_per_epoch = _iters_per_epoch(r)
        m = r.metrics
        # how many val images each online kNN point was measured on (older runs: unknown)
        n_val = {int(c["step"]): c.get("n_val") for c in ((r.summary or {}).get("knn") or {}).get("curve") or []}
        if m is not None and iters_per_epoch:

            def at(row: dict, per_epoch: float = iters_per_epoch) -> dict:
                return {"run": r.label, "epoch": row["step"] / per_epoch, "step": int(row["step"])}

            for row in m[m["row"] == "knn"].to_dict("records"):
                n = n_val.get(int(row["step"]))
                lo, hi = wilson_interval(row.get("knn_top1"), n)
                knn_rows.append(
                    {
                        **at(row),
                        "wall_clock_s": row.get("elapsed_s"),
                        "knn_top1_pct": pct(row.get("knn_top1")),
                        "knn_top1_lo_pct": pct(lo),
                        "knn_top1_hi_pct": pct(hi),
                        "n_val": n,
                        "knn_top5_pct": pct(row.get("knn_top5")),
                    }
                )
            for row in m[m["row"] == "train"].to_dict("records"):
                loss_rows.append(
                    {
                        **at(row),
                        "stage": row.get("stage_name"),
                        "wall_clock_s": row.get("elapsed_s"),
                        **{k: row.get(k) for k in LOSS_ROW_COLUMNS},
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
    cols_knn = [
        "run",
        "epoch",
        "step",
        "wall_clock_s",
        "knn_top1_pct",
        "knn_top1_lo_pct",
        "knn_top1_hi_pct",
        "n_val",
        "knn_top5_pct",
    ]
    cols_loss = ["run", "epoch", "step", "stage", "wall_clock_s", *LOSS_ROW_COLUMNS]
    return (
        pd.DataFrame(knn_rows, columns=cols_knn),
        pd.DataFrame(loss_rows, columns=cols_loss),
        pd.DataFrame(switch_rows, columns=["run", "stage", "epoch", "wall_clock_s"]),
    )


def _baseline_from_rows(results: pd.DataFrame, label: str) -> dict:
    """Per-protocol :class:`analysis.metrics.Baseline` from one run's results rows (CE denominators)."""
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
                    "clean_top1_pct": pct(agg["clean_top1"]),
                    "mean_corrupted_top1_pct": pct(agg["mean_corrupted_top1"]),
                    "mean_corruption_error_pct": pct(agg["mean_corrupted_error"]),
                    "mCE_vs_ref_pct": pct(a_ref.get("mCE")),
                    "relative_mCE_vs_ref_pct": pct(a_ref.get("relative_mCE")),
                    **(
                        {
                            "mCE_alexnet_pct": pct(a_ax.get("mCE")),
                            "relative_mCE_alexnet_pct": pct(a_ax.get("relative_mCE")),
                        }
                        if alexnet
                        else {}
                    ),
                    **{f"{g}_top1_pct": pct(groups[g]["top1"]) if g in groups else math.nan for g in GROUPS},
                    "extra_top1_pct": pct(agg["extra"]["top1"]) if agg.get("extra") else math.nan,
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
            "top1_pct": pct(r.top1),
            "error_pct": pct(r.error),
            "drop_pp": pct(clean.get((r.checkpoint, r.protocol), math.nan)) - pct(r.top1),
            "ce_vs_ref_pct": pct(ce),
            "relative_ce_vs_ref_pct": pct(rel),
        }
        if alexnet:
            row["ce_alexnet_pct"] = pct(ax_ce.get((r.checkpoint, r.protocol, r.corruption), (math.nan,))[0])
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
                        "top1_pct": pct(base.iloc[0]),
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
                        "top1_pct": pct(part["top1"].mean()),
                        "corruptions": int(part["corruption"].nunique()),
                    }
                )
    return main, per, pd.DataFrame(sev_rows)


def missing_table(
    records: list[RunRecord], eval_found: dict, freq: dict[str, FrequencyData], eval_dirs: Sequence, freq_dirs: Sequence
) -> pd.DataFrame:
    """One row per (run, piece) that is missing, with what to run to produce it."""
    rows = []
    for r in records:

        def add(piece: str, how_to_get_it: str, status: str = "missing") -> None:
            rows.append({"run": r.label, "piece": piece, "status": status, "how_to_get_it": how_to_get_it})

        ckpt = str(r.checkpoint) if r.checkpoint else f"{r.path}/final.pt"
        if r.is_run:
            if not r.summary:
                add(
                    "training summary (summary.json)",
                    f"finish the run: re-run its `fdbench pretrain` command (--out {r.path})",
                )
            elif not r.summary.get("finished"):
                add("training", f"re-run its `fdbench pretrain` command (--out {r.path}) to continue", "unfinished")
            if r.metrics is None:
                add("training metrics (metrics.csv)", "written by `fdbench pretrain` while training")
        found = eval_found.get(r.label) or {}
        if r.checkpoint is None:
            add("checkpoint (final.pt)", "finish training; evaluation needs final.pt")
        for protocol in ("linear", "knn"):
            if protocol not in found.get("protocols", set()):
                add(
                    f"eval-corruptions ({protocol} probe)",
                    f"fdbench eval-corruptions {ckpt} --protocol {protocol} "
                    f"--corruptions all (then pass --evals DIR to compare)",
                )
        if found and found.get("common", 0) < 15:
            add(
                "eval-corruptions (common corruptions)",
                f"{found.get('common', 0)} of the 15 common corruptions evaluated; mCE averages only those",
                "partial",
            )
        data = freq.get(r.label)
        if data is None:
            add(
                "frequency-analysis",
                f"fdbench frequency-analysis {ckpt} --results <eval dir>/results.csv "
                f"(then pass --frequency DIR to compare)",
            )
        else:
            if data.heatmap is None:
                add("Fourier heat map", f"fdbench frequency-analysis {ckpt} --analyses heatmap")
            if data.bandpass is None:
                add("band-pass curves", f"fdbench frequency-analysis {ckpt} --analyses bandpass")
    return pd.DataFrame(rows, columns=["run", "piece", "status", "how_to_get_it"])
