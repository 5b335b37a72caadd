"""Issue 16 Part 2's ratios from one ``benchmarks/gpu_check.sh`` run, each next to its goal.

    python benchmarks/gpu_summary.py OUT WORK      # OUT: the check's outputs, WORK: its run folders

Every figure is a ratio of two measurements of the same run; a missing input prints "not measured"
with the reason, never a number. The compile time of a ``fdbench pretrain`` run is estimated from its
metrics.csv (logged every 5 steps): per stage, the first logged window's time minus that window's
steps at the stage's median step time afterwards.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pandas as pd

GOALS = {
    "e2e_vs_model": 0.95,
    "engine_vs_reference": 1.3,
    "two_stage_vs_none": 2.0,
    "stage1_memory_share": 0.40,
    "mfu_224": 0.40,
    "mfu_112": 0.30,
}


def _verdict(value: float | None, goal: float, higher_is_better: bool = True) -> str:
    if value is None:
        return "not measured"
    met = value >= goal if higher_is_better else value <= goal
    return f"{value:.3f} (goal {'>=' if higher_is_better else '<='} {goal}: {'met' if met else 'NOT met'})"


def bench_lines(csv: Path, label: str) -> list[str]:
    if not csv.is_file():
        return [f"{label}: not measured ({csv.name} missing: see log.txt)"]
    rows = pd.read_csv(csv)
    if len(rows):
        label = f"{rows['arch'].iloc[0]}/{rows['patch'].iloc[0]} ({label} slot)"
    lines = []
    for stage, group in rows.groupby("stage"):
        by = {r["variant"]: r for _, r in group.iterrows()}
        fast, ref = by.get("fast"), by.get("reference")
        if fast is None:
            continue
        e2e = fast.get("e2e_vs_model")
        lines.append(
            f"{label} {stage} ({fast['global']}/{fast['local']}): model-only {fast['model_img_s']} img/s, "
            f"end-to-end {fast['e2e_img_s']} img/s, end-to-end share "
            f"{_verdict(None if pd.isna(e2e) else float(e2e), GOALS['e2e_vs_model'])}"
        )
        if ref is not None and not pd.isna(ref.get("e2e_img_s")) and not pd.isna(fast.get("e2e_img_s")):
            lines.append(
                f"{label} {stage}: engine vs --reference end-to-end "
                f"{_verdict(fast['e2e_img_s'] / ref['e2e_img_s'], GOALS['engine_vs_reference'])}, "
                f"model-only {fast['model_img_s'] / ref['model_img_s']:.3f}"
            )
        if not pd.isna(fast.get("mfu")):
            goal = GOALS["mfu_224"] if int(fast["global"]) >= 224 else GOALS["mfu_112"]
            lines.append(
                f"{label} {stage}: MFU {_verdict(float(fast['mfu']), goal)} "
                f"({fast['achieved_tflops']} TFLOP/s), peak {fast['peak_mem_gib']} GiB"
            )
    stages = {s: g[g["variant"] == "fast"] for s, g in rows.groupby("stage")}
    if {"stage1", "stage2"} <= set(stages) and all(len(g) for g in stages.values()):
        m1, m2 = (stages[s]["peak_mem_gib"].iloc[0] for s in ("stage1", "stage2"))
        if not (pd.isna(m1) or pd.isna(m2)) and m2 > 0:
            lines.append(
                f"{label}: bench stage-1 peak memory share of stage 2 "
                f"{_verdict(m1 / m2, GOALS['stage1_memory_share'], higher_is_better=False)}"
            )
    return lines or [f"{label}: no rows in {csv.name}"]


def compile_seconds(metrics_csv: Path) -> float | None:
    """Estimated compile time of a run: per stage, first logged window minus its steps at the median pace."""
    if not metrics_csv.is_file():
        return None
    m = pd.read_csv(metrics_csv)
    m = m[m["row"] == "train"].sort_values("step")
    total, previous_elapsed, previous_step = 0.0, 0.0, 0
    for _, group in m.groupby("stage", sort=True):
        steps, elapsed = group["step"].to_numpy(), group["elapsed_s"].to_numpy()
        start_step = previous_step if len(steps) else 0
        if len(steps) < 3:
            return None
        pace = pd.Series((elapsed[1:] - elapsed[:-1]) / (steps[1:] - steps[:-1])).median()
        first = elapsed[0] - previous_elapsed
        total += max(0.0, first - pace * (steps[0] - start_step))
        previous_elapsed, previous_step = elapsed[-1], steps[-1]
    return total


def train_lines(out: Path, work: Path) -> list[str]:
    runs = {
        c: json.loads((out / f"train_{c}.json").read_text())
        for c in ("two-stage", "none")
        if (out / f"train_{c}.json").is_file()
    }
    lines = []
    for c, s in runs.items():
        comp = compile_seconds(work / f"run_{c}" / "metrics.csv")
        lines.append(
            f"pretrain {c}: finished {s.get('finished')}, {s.get('iterations')} steps, wall-clock "
            f"{s.get('wall_clock_s'):.1f} s (compile about {comp:.1f} s)"
            if comp is not None
            else f"pretrain {c}: finished {s.get('finished')}, wall-clock {s.get('wall_clock_s'):.1f} s"
        )
        stages = s.get("stages") or []
        if c == "two-stage" and len(stages) == 2 and stages[1]["peak_memory_bytes"]:
            share = stages[0]["peak_memory_bytes"] / stages[1]["peak_memory_bytes"]
            lines.append(
                f"pretrain two-stage: stage-1 peak memory share of stage 2 "
                f"{_verdict(share, GOALS['stage1_memory_share'], higher_is_better=False)}"
            )
    if len(runs) == 2 and all(r.get("finished") for r in runs.values()):
        two, none = runs["two-stage"]["wall_clock_s"], runs["none"]["wall_clock_s"]
        lines.append(
            f"two-stage vs none wall-clock, compile included: {_verdict(none / two, GOALS['two_stage_vs_none'])}"
        )
        c2, cn = (compile_seconds(work / f"run_{c}" / "metrics.csv") for c in ("two-stage", "none"))
        if c2 is not None and cn is not None and two - c2 > 0:
            lines.append(
                f"two-stage vs none wall-clock, compile excluded: "
                f"{_verdict((none - cn) / (two - c2), GOALS['two_stage_vs_none'])}"
            )
    else:
        lines.append(
            f"two-stage vs none: not measured (finished runs: "
            f"{[c for c, r in runs.items() if r.get('finished')] or 'none'})"
        )
    return lines


def test_lines(out: Path) -> list[str]:
    path = out / "tests.txt"
    if not path.is_file():
        return ["cuda tests: not run"]
    text = path.read_text().strip().splitlines()
    return [f"cuda tests: {text[-1] if text else 'no output'}"]


def main(argv: list[str]) -> int:
    out, work = Path(argv[1]), Path(argv[2])
    env = (out / "env.txt").read_text().strip().splitlines() if (out / "env.txt").is_file() else []
    lines = ["# gpu_check summary", *env, ""]
    if not any("NVIDIA" in line or "H100" in line or "H200" in line for line in env):
        lines += ["REHEARSAL or CPU run: no GPU was used; none of these figures is a GPU figure", ""]
    lines += test_lines(out)
    lines += bench_lines(out / "bench_vit_small.csv", "ViT-S/16")
    lines += bench_lines(out / "bench_vit_base.csv", "ViT-B/16")
    lines += train_lines(out, work)
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
