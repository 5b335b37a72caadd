"""``bench-train``'s outputs: the plain-language summary, the text table, ``bench.csv`` and
``bench.json``."""

from __future__ import annotations

from dataclasses import asdict
from pathlib import Path

import pandas as pd

from fdbench.io import atomic_write_csv, atomic_write_json
from pretrain.bench_config import BenchConfig


def summarise(rows: list[dict]) -> list[str]:
    """Plain-language lines: speed-ups of fast over reference, stage-1 vs stage-2 time and memory."""
    lines = []
    by = {(r["variant"], r["stage"]): r for r in rows}
    for stage in ("stage1", "stage2"):
        f, r = by.get(("fast", stage)), by.get(("reference", stage))
        if f and r and f.get("e2e_img_s") and r.get("e2e_img_s"):
            lines.append(
                f"{stage}: end-to-end {f['e2e_img_s']:.0f} img/s fast vs {r['e2e_img_s']:.0f} reference "
                f"({f['e2e_img_s'] / r['e2e_img_s']:.2f}x)"
            )
    for variant in ("fast", "reference"):
        s1, s2 = by.get((variant, "stage1")), by.get((variant, "stage2"))
        if s1 and s2:
            line = f"{variant}: stage-1 step takes {s1['model_step_ms'] / s2['model_step_ms']:.2f} of stage-2's (model-only)"
            if s1.get("peak_mem_gib") and s2.get("peak_mem_gib"):
                line += f", peak memory {s1['peak_mem_gib'] / s2['peak_mem_gib']:.2f} of stage-2's"
            lines.append(line)
    return lines


TABLE_COLUMNS = (
    "variant",
    "stage",
    "global",
    "local",
    "batch",
    "compile",
    "act_ckpt",
    "pipeline",
    "model_img_s",
    "e2e_img_s",
    "e2e_vs_model",
    "tflop_per_step",
    "achieved_tflops",
    "mfu",
    "peak_mem_gib",
)


def format_table(rows: list[dict], columns=TABLE_COLUMNS) -> str:
    """A fixed-width text table of the rows (blank for missing values)."""

    def cell(v):
        if v is None:
            return ""
        if isinstance(v, float):
            return f"{v:.4g}" if abs(v) < 10 else f"{v:.1f}"
        return str(v)

    table = [list(columns)] + [[cell(r.get(c)) for c in columns] for r in rows]
    widths = [max(len(row[i]) for row in table) for i in range(len(columns))]
    return "\n".join("  ".join(v.rjust(w) for v, w in zip(row, widths)) for row in table)


def write_results(rows: list[dict], out, cfg: BenchConfig) -> dict:
    """``bench.csv`` (every column) and ``bench.json`` (config + rows + summary) under ``out``."""
    out = Path(out)
    paths = {"csv": out / "bench.csv", "json": out / "bench.json"}
    atomic_write_csv(paths["csv"], pd.DataFrame(rows))
    atomic_write_json(paths["json"], {"config": asdict(cfg), "rows": rows, "summary": summarise(rows)})
    return paths
