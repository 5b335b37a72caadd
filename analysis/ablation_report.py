"""The ablation's report: findings first, then the arms beside their floors, then every comparison.

Reads what the ablation's steps wrote (run folders, the eval folder's ``results.csv`` and
``outcomes.npz``, the frequency folder's band-pass tables and per-image outcomes) and writes
``findings.csv``, ``comparisons.csv``, ``arms.csv``, ``report.md`` and ``differences.png``/``.pdf``.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pandas as pd

from analysis import ablation as ab
from analysis.metrics import CLEAN, GROUPS
from analysis.outcomes import FILENAME as OUTCOMES_FILE
from analysis.outcomes import Outcomes
from fdbench.errors import FdbenchError
from fdbench.io import atomic_write_csv, atomic_write_text

SHOWN = ("clean", "noise (mean)", "blur (mean)", "all corruptions (mean)", ab.FREQ)


def _read_json(path: Path) -> dict:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError) as err:
        raise FdbenchError(f"cannot read {path}: {err}") from None


def load_inputs(runs: Path, evals: Path, frequency: Path, arms: list[str], seeds: list[int], protocol: str):
    """The :class:`analysis.ablation.AblationInputs` of an ablation folder."""
    from analysis.frequency_stats import load_outcomes

    outcomes = Outcomes.load(evals / OUTCOMES_FILE)
    missing = [ab.label(a, s) for a in arms for s in seeds if ab.label(a, s) not in outcomes.checkpoints()]
    if missing:
        raise FdbenchError(f"{evals / OUTCOMES_FILE} has no per-image outcomes of {', '.join(missing)}")
    bandpass = {}
    for arm in arms:
        for seed in seeds:
            name = ab.label(arm, seed)
            csv, npz = frequency / name / "bandpass.csv", frequency / name / "bandpass_outcomes.npz"
            if csv.is_file() and npz.is_file():
                bandpass[name] = (pd.read_csv(csv), load_outcomes(npz)["wrong"])
    flops = {}
    for arm in arms:
        shares = [
            (_read_json(runs / ab.label(arm, s) / "summary.json").get("flops") or {}).get("flops_fraction_of_none")
            for s in seeds
        ]
        if all(x is not None for x in shares):
            flops[arm] = float(np.mean(shares))
    return ab.AblationInputs(outcomes, seeds, bandpass, flops, protocol)


def arms_table(results: pd.DataFrame, runs: Path, arms: list[str], seeds: list[int]) -> pd.DataFrame:
    """Per arm and seed (and the floors): clean kNN and linear top-1, noise, blur, all-corruption
    means (linear, %), FLOPs share of ``none`` and training wall time."""
    rows = []
    labels = [(a, s, ab.label(a, s)) for a in arms for s in seeds]
    floors = [(k, None, k) for k in dict.fromkeys(results.loc[results["kind"] != "pretrained", "checkpoint"])]
    for arm, seed, name in labels + floors:
        own = results[results["checkpoint"] == name]
        row = {"arm": arm, "seed": "" if seed is None else seed, "checkpoint": name}
        for protocol in ("knn", "linear"):
            clean = own[(own["protocol"] == protocol) & (own["corruption"] == CLEAN)]["top1"]
            row[f"clean_{protocol}_pct"] = 100 * float(clean.iloc[0]) if len(clean) else math.nan
        lin = own[(own["protocol"] == "linear") & (own["corruption"] != CLEAN)]
        for group in ("noise", "blur"):
            cells = lin[lin["corruption"].isin(GROUPS[group])]["top1"]
            row[f"{group}_linear_pct"] = 100 * float(cells.mean()) if len(cells) else math.nan
        row["all_corruptions_linear_pct"] = 100 * float(lin["top1"].mean()) if len(lin) else math.nan
        if seed is not None:
            summary = _read_json(runs / name / "summary.json")
            row["flops_share_of_none"] = (summary.get("flops") or {}).get("flops_fraction_of_none")
            row["train_wall_s"] = summary.get("wall_clock_s")
        rows.append(row)
    return pd.DataFrame(rows)


def write_report(
    out: Path,
    *,
    runs: Path,
    evals: Path,
    frequency: Path,
    arms: list[str],
    seeds: list[int],
    protocol: str = "linear",
    preset: str = "",
    device: str = "",
    figures: bool = True,
    title: str = "FastDINOv2 ablation",
):
    """Judge the findings and write the report; returns ``(findings table, {name: table})``."""
    from analysis.frequency import read_results

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    inputs = load_inputs(runs, evals, frequency, arms, seeds, protocol)
    found = ab.findings(inputs)
    findings = ab.findings_table(found)
    comparisons = ab.comparisons_table(inputs, arms)
    arm_rows = arms_table(read_results(evals / "results.csv"), runs, arms, seeds)
    tables = {"findings": findings, "comparisons": comparisons, "arms": arm_rows}
    for name, table in tables.items():
        atomic_write_csv(out / f"{name}.csv", table)
    figure_files = differences_figure(comparisons, out) if figures and len(comparisons) else []
    atomic_write_text(
        out / "report.md",
        render_markdown(found, comparisons, arm_rows, seeds, protocol, preset, device, figure_files, title),
    )
    return findings, tables


def read_report(out: Path):
    """What :func:`write_report` returned, from its CSVs (a re-run whose inputs did not change)."""
    names = ("findings", "comparisons", "arms")
    try:
        tables = {n: pd.read_csv(out / f"{n}.csv", keep_default_na=False) for n in names}
    except (OSError, pd.errors.ParserError, pd.errors.EmptyDataError) as err:
        raise FdbenchError(f"cannot read the ablation report in {out}: {err}; delete it to rebuild") from None
    return tables["findings"], tables


# ---- rendering --------------------------------------------------------------------------------------------


def _pp(x) -> str:
    return "n/a" if x is None or (isinstance(x, float) and math.isnan(x)) else f"{x:+.1f}"


def _pct(x) -> str:
    return "n/a" if x is None or (isinstance(x, float) and math.isnan(x)) else f"{x:.1f}"


def _table(header: list[str], rows: list[list[str]]) -> list[str]:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
    return lines + [""]


def render_markdown(
    found, comparisons, arm_rows, seeds, protocol, preset, device, figure_files, title="FastDINOv2 ablation"
) -> str:
    lines = [
        f"# {title}",
        "",
        f"Preset `{preset}` on `{device}`; seeds {', '.join(map(str, seeds))} per arm; the same recipe for "
        f"every arm. Differences are `arm - none` in percentage points ({protocol} probe), with 95% intervals "
        "from a two-level bootstrap over seeds and val images (see `analysis/ablation.py`).",
        "",
        "## Does each finding of the paper reproduce here?",
        "",
    ]
    rows = []
    for f in found:
        parts = []
        for comp in f.components:
            c = comp.comparison
            numbers = f"{_pp(c.difference)} [{_pp(c.ci_lo)}, {_pp(c.ci_hi)}]" if c else ""
            extra = f"; {comp.detail}" if comp.detail else ""
            parts.append(f"{comp.claim}: **{comp.verdict}** {numbers}{extra}")
        rows.append([f.name, f.claim, f"**{f.verdict}**", "<br>".join(parts)])
    lines += _table(["finding", "the paper", "here", "components (difference [95% CI])"], rows)
    lines += ["## Arms and floors (single values per seed; %)", ""]
    header = ["arm", "seed", "clean kNN", "clean linear", "noise", "blur", "all corruptions", "FLOPs / none", "train s"]
    body = []
    for _, r in arm_rows.iterrows():
        flops = r.get("flops_share_of_none")
        wall = r.get("train_wall_s")
        body.append(
            [
                r["arm"],
                r["seed"],
                _pct(r["clean_knn_pct"]),
                _pct(r["clean_linear_pct"]),
                _pct(r["noise_linear_pct"]),
                _pct(r["blur_linear_pct"]),
                _pct(r["all_corruptions_linear_pct"]),
                "" if flops is None or (isinstance(flops, float) and math.isnan(flops)) else f"{flops:.2f}",
                "" if wall is None or (isinstance(wall, float) and math.isnan(wall)) else f"{wall:.0f}",
            ]
        )
    lines += _table(header, body)
    shown = comparisons[comparisons["statistic"].isin(SHOWN)]
    lines += ["## Every arm against none (selected statistics; all in comparisons.csv)", ""]
    lines += _table(
        ["arm", "statistic", "none", "arm", "difference [95% CI]", "per-seed differences"],
        [
            [
                r["arm"],
                r["statistic"],
                _pct(r["none_value"]),
                _pct(r["arm_value"]),
                f"{_pp(r['difference'])} [{_pp(r['ci_lo'])}, {_pp(r['ci_hi'])}]",
                r["per_seed_differences"],
            ]
            for _, r in shown.iterrows()
        ],
    )
    for path in figure_files:
        if path.suffix == ".png":
            lines += [f"![differences against none]({path.name})", ""]
    return "\n".join(lines)


def differences_figure(comparisons: pd.DataFrame, out: Path) -> list[Path]:
    """Bar chart: each arm's difference from ``none`` per statistic, with its 95% interval."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    stats = [s for s in SHOWN if s in set(comparisons["statistic"])]
    arms = list(dict.fromkeys(comparisons["arm"]))
    fig, axes = plt.subplots(1, len(stats), figsize=(3.2 * len(stats), 3.6), squeeze=False)
    colours = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    for ax, stat in zip(axes[0], stats):
        sub = comparisons[comparisons["statistic"] == stat].set_index("arm").reindex(arms)
        x = np.arange(len(arms))
        err = np.vstack([sub["difference"] - sub["ci_lo"], sub["ci_hi"] - sub["difference"]])
        ax.bar(x, sub["difference"], yerr=err, capsize=4, color=colours[: len(arms)], label=None)
        ax.axhline(0, color="black", linewidth=0.8)
        ax.set_xticks(x, arms, rotation=30, ha="right")
        ax.set_title(stat if len(stat) < 28 else stat.replace(" (", "\n("), fontsize=9)
        ax.set_ylabel("arm - none (percentage points)")
    handles = [plt.Rectangle((0, 0), 1, 1, color=colours[i]) for i in range(len(arms))]
    fig.legend(handles, arms, loc="upper center", ncol=len(arms), title="arm (bars: 95% CI)", fontsize=8)
    fig.tight_layout(rect=(0, 0, 1, 0.84))
    files = []
    for ext in ("png", "pdf"):
        path = out / f"differences.{ext}"
        tmp = path.with_name(f".{path.name}.tmp")
        fig.savefig(tmp, dpi=130, format=ext)
        tmp.replace(path)
        files.append(path)
    plt.close(fig)
    return files
