"""``compare`` on small fixture run folders with known numbers, written here by hand.

Layout (as `fdbench pretrain` / `eval-corruptions` / `frequency-analysis` write it)::

    tmp/runs/none/          summary.json, metrics.csv, config.yaml, final.pt (bytes, never loaded)
    tmp/runs/two-stage/     same, two stages
    tmp/runs/never-evaluated/   a finished run nobody evaluated
    tmp/runs/evals/corruptions/ results.csv + summary.json for none and two-stage
    tmp/runs/evals/frequency/   summary.csv, <label>/heatmap.csv, <label>/bandpass.csv, spectra_centroids.csv

Expected values are computed in the tests from the fixture numbers, independently of the code.
"""

from __future__ import annotations

import base64
import json
import math
from pathlib import Path

import pandas as pd
import pytest

from analysis.report import compare
from fdbench.errors import FdbenchError

CORRUPTIONS = {
    "gaussian_noise": "noise",
    "shot_noise": "noise",
    "defocus_blur": "blur",
    "fog": "weather",
    "contrast": "digital",
    "speckle_noise": "extra",
}
SEVERITIES = (1, 2, 3)
CLEAN = {"none": {"linear": 0.80, "knn": 0.76}, "two-stage": {"linear": 0.79, "knn": 0.75}}


def top1(run: str, protocol: str, corruption: str, severity: int) -> float:
    """Known accuracies: each corruption loses a fixed amount per severity; two-stage loses less on
    noise and a little more on blur (the paper's direction)."""
    base = CLEAN[run][protocol]
    slope = {"noise": 0.10, "blur": 0.05, "weather": 0.04, "digital": 0.03, "extra": 0.08}[CORRUPTIONS[corruption]]
    if run == "two-stage":
        slope *= {"noise": 0.5, "blur": 1.2}.get(CORRUPTIONS[corruption], 1.0)
    return round(base - slope * severity, 4)


# per-stage records of the two runs (what pretrain's summary.json holds)
STAGES = {
    "none": [
        dict(
            name="full-res",
            start_epoch=0,
            end_epoch=4,
            global_size=64,
            local_size=32,
            n_local=4,
            noise_patching=False,
            iterations=40,
            images=2560,
            wall_clock_s=100.0,
            peak_memory_bytes=800 * 2**20,
            flops_per_image=2_000_000_000,
            img_per_s=25.6,
            step_time_s=2.5,
        )
    ],
    "two-stage": [
        dict(
            name="low-res",
            start_epoch=0,
            end_epoch=3,
            global_size=32,
            local_size=16,
            n_local=4,
            noise_patching=False,
            iterations=30,
            images=1920,
            wall_clock_s=36.0,
            peak_memory_bytes=500 * 2**20,
            flops_per_image=500_000_000,
            img_per_s=53.3,
            step_time_s=1.2,
        ),
        dict(
            name="full-res",
            start_epoch=3,
            end_epoch=4,
            global_size=64,
            local_size=32,
            n_local=4,
            noise_patching=True,
            iterations=10,
            images=640,
            wall_clock_s=24.0,
            peak_memory_bytes=820 * 2**20,
            flops_per_image=2_000_000_000,
            img_per_s=26.7,
            step_time_s=2.4,
        ),
    ],
}
BATCH, IPE = 64, 10
KNN = {"none": [0.30, 0.42, 0.50, 0.55], "two-stage": [0.28, 0.40, 0.47, 0.56]}
FREQ = {
    "none": dict(
        heatmap_mean_error_pct=40.0,
        heatmap_low_error_pct=30.0,
        heatmap_high_error_pct=45.0,
        heatmap_centroid_frac=0.62,
        crossing_frac=0.31,
        lowpass_auc_pct=60.0,
        highpass_auc_pct=35.0,
    ),
    "two-stage": dict(
        heatmap_mean_error_pct=33.0,
        heatmap_low_error_pct=31.0,
        heatmap_high_error_pct=34.0,
        heatmap_centroid_frac=0.41,
        crossing_frac=0.22,
        lowpass_auc_pct=64.0,
        highpass_auc_pct=30.0,
    ),
}


def _total_flops(run):
    return sum(s["iterations"] * BATCH * s["flops_per_image"] for s in STAGES[run])


def write_run(root: Path, name: str, curriculum: str, stages: list[dict], knn: list[float]) -> Path:
    run = root / name
    run.mkdir(parents=True)
    (run / "final.pt").write_bytes(f"weights of {name}".encode())
    (run / "config.yaml").write_text(
        f"preset: cpu-tiny\nmodel:\n  arch: vit_nano\n  patch_size: 8\n"
        f"curriculum:\n  name: {curriculum}\nrun:\n  epochs: 4\n"
    )
    total = sum(s["iterations"] * BATCH * s["flops_per_image"] for s in stages)
    none_total = sum(s["iterations"] for s in stages) * BATCH * 2_000_000_000
    summary = {
        "run_name": name,
        "preset": "cpu-tiny",
        "curriculum": curriculum,
        "finished": True,
        "epochs": 4,
        "iterations": 40,
        "step": 40,
        "iters_per_epoch": IPE,
        "batch_size": BATCH,
        "device": "cpu",
        "arch": "vit_nano",
        "patch_size": 8,
        "data": "/data/embedded",
        "wall_clock_s": sum(s["wall_clock_s"] for s in stages),
        "stages": stages,
        "flops": {
            "total_flops": total,
            "none_flops_per_image": 2_000_000_000,
            "none_total_flops": none_total,
            "flops_ratio_vs_none": none_total / total,
        },
        "knn": {"final_top1": knn[-1], "final_top5": 1.0, "k": 20, "temperature": 0.07},
    }
    (run / "summary.json").write_text(json.dumps(summary))
    rows, elapsed = [], 0.0
    for step in range(1, 41):
        stage = next(i for i, s in enumerate(stages) if s["start_epoch"] * IPE < step <= s["end_epoch"] * IPE)
        elapsed += stages[stage]["step_time_s"]
        rows.append(
            {
                "row": "train",
                "epoch": (step - 1) // IPE,
                "step": step,
                "stage": stage,
                "stage_name": stages[stage]["name"],
                "loss": 5.0 - step / 20,
                "dino": 3.0,
                "ibot": 1.5,
                "koleo": 0.5,
                "teacher_entropy": step / 40,
                "teacher_batch_entropy": 0.5,
                "teacher_prototypes": step,
                "elapsed_s": elapsed,
            }
        )
        if step % IPE == 0:
            rows.append(
                {
                    "row": "knn",
                    "epoch": step // IPE - 1,
                    "step": step,
                    "knn_top1": knn[step // IPE - 1],
                    "knn_top5": 1.0,
                    "elapsed_s": elapsed,
                }
            )
    pd.DataFrame(rows).to_csv(run / "metrics.csv", index=False)
    return run


def write_evals(folder: Path, runs: dict[str, Path]) -> None:
    folder.mkdir(parents=True)
    rows = []
    for label in runs:
        for protocol in ("linear", "knn"):
            rows.append(
                dict(
                    checkpoint=label,
                    protocol=protocol,
                    corruption="clean",
                    severity=0,
                    n=100,
                    top1=CLEAN[label][protocol],
                    top5=1.0,
                )
            )
            for c in CORRUPTIONS:
                for s in SEVERITIES:
                    rows.append(
                        dict(
                            checkpoint=label,
                            protocol=protocol,
                            corruption=c,
                            severity=s,
                            n=100,
                            top1=top1(label, protocol, c, s),
                            top5=1.0,
                        )
                    )
    pd.DataFrame(rows).to_csv(folder / "results.csv", index=False)
    (folder / "summary.json").write_text(
        json.dumps(
            {
                "normalisation": "none (unnormalised mean error)",
                "settings": {"data": "/data/embedded", "seed": 0},
                "checkpoints": {label: {"path": str(path / "final.pt")} for label, path in runs.items()},
            }
        )
    )


def write_frequency(folder: Path, runs: dict[str, Path]) -> None:
    rows = []
    for label, path in runs.items():
        (folder / label).mkdir(parents=True)
        rows.append(
            {
                "checkpoint": label,
                "path": str(path / "final.pt"),
                "image_size": 64,
                "num_classes": 10,
                "curriculum": label,
                "eps": 6.0,
                "window": 3,
                "clean_top1_pct": 100 * CLEAN[label]["linear"],
                **FREQ[label],
            }
        )
        cells = [(ky, kx) for ky in (-1, 0, 1) for kx in (-1, 0, 1)]
        offset = 0.0 if label == "none" else 5.0
        pd.DataFrame(
            {
                "ky": [c[0] for c in cells],
                "kx": [c[1] for c in cells],
                "radius": [math.hypot(*c) for c in cells],
                "radius_frac": [math.hypot(*c) / 32 for c in cells],
                "error_pct": [10.0 * (i + 1) + offset * (i % 2) for i in range(9)],
                "n": 16,
            }
        ).to_csv(folder / label / "heatmap.csv", index=False)
        bp = [
            {
                "filter": f,
                "radius": r * 32,
                "radius_frac": r,
                "accuracy_pct": (70 * r if f == "low" else 70 * (1 - r)),
                "n": 64,
            }
            for r in (0.0, 0.5, 1.0)
            for f in ("low", "high")
        ]
        pd.DataFrame(bp).to_csv(folder / label / "bandpass.csv", index=False)
    pd.DataFrame(rows).to_csv(folder / "summary.csv", index=False)
    pd.DataFrame(
        [
            {"corruption": c, "severity": s, "centroid": 3.0 * s, "centroid_frac": 0.1 * s, "energy": 1.0}
            for c in CORRUPTIONS
            for s in SEVERITIES
        ]
    ).to_csv(folder / "spectra_centroids.csv", index=False)


def make_fixture(root: Path):
    runs = {
        "none": write_run(root, "none", "none", STAGES["none"], KNN["none"]),
        "two-stage": write_run(root, "two-stage", "two-stage", STAGES["two-stage"], KNN["two-stage"]),
    }
    never = write_run(root, "never-evaluated", "two-stage", STAGES["two-stage"], KNN["two-stage"])
    write_evals(root / "evals" / "corruptions", runs)
    write_frequency(root / "evals" / "frequency", runs)
    return root, runs, never


@pytest.fixture()
def fixture_runs(tmp_path, monkeypatch):
    """A fresh copy for tests that change the fixture (tables only: figures are slow to draw)."""
    monkeypatch.chdir(tmp_path)  # ./evals/... of the working directory is searched too: keep it empty
    return make_fixture(tmp_path / "runs")


@pytest.fixture(scope="module")
def report(tmp_path_factory):
    """The full report (with figures) of the three fixture runs, built once for the read-only tests."""
    base = tmp_path_factory.mktemp("report")
    with pytest.MonkeyPatch.context() as mp:
        mp.chdir(base)
        root, runs, never = make_fixture(base / "runs")
        yield compare([runs["none"], runs["two-stage"], never], base / "report")


def csv(report, name):
    return pd.read_csv(report.out / f"{name}.csv")


def test_every_section_csv_and_figure_exists(report):
    md = report.markdown.read_text()
    for heading in (
        "## Runs",
        "## Missing pieces",
        "## Headline numbers",
        "## Findings",
        "## Cost",
        "## Convergence",
        "## Robustness",
        "## Frequency bias",
    ):
        assert heading in md
    names = [
        "runs",
        "missing",
        "headline",
        "cost",
        "cost_stages",
        "convergence_knn",
        "convergence_loss",
        "convergence_switches",
        "robustness",
        "robustness_per_corruption",
        "robustness_severity",
        "frequency",
        "frequency_bandpass",
        "frequency_heatmap_none_vs_two-stage",
        "robustness_vs_frequency",
    ]
    for name in names:
        assert (report.out / f"{name}.csv").is_file(), name
        assert f"{name}.csv" in md, name  # every CSV is a table of the report
    figures = [
        "cost",
        "convergence_knn",
        "convergence_loss",
        "convergence_teacher",
        "robustness_per_corruption",
        "robustness_severity",
        "frequency_heatmap_none_vs_two-stage",
        "frequency_bandpass",
        "robustness_vs_frequency",
    ]
    assert sorted(report.figures) == sorted(figures)
    for name in figures:
        png, pdf = report.out / "figures" / f"{name}.png", report.out / "figures" / f"{name}.pdf"
        assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and pdf.read_bytes()[:4] == b"%PDF"
        assert f"figures/{name}.png" in md


def test_html_is_self_contained(report):
    import re

    text = report.html.read_text()
    assert not re.search(r"src=['\"](?!data:)", text)  # no links to files beside it
    blobs = text.split("data:image/png;base64,")[1:]
    assert len(blobs) == len(report.figures)
    for blob in blobs:
        assert base64.b64decode(blob.split("'", 1)[0])[:4] == b"\x89PNG"
    for heading in ("Cost", "Convergence", "Robustness", "Frequency bias", "Missing pieces"):
        assert f"<h2>{heading}</h2>" in text


def test_cost_tables_hold_the_fixture_numbers(report):
    cost = csv(report, "cost").set_index("run")
    assert cost.loc["none", "wall_clock_s"] == 100.0 and cost.loc["two-stage", "wall_clock_s"] == 60.0
    assert cost.loc["two-stage", "speedup_vs_ref"] == pytest.approx(100.0 / 60.0)
    assert cost.loc["none", "speedup_vs_ref"] == pytest.approx(1.0)
    assert cost.loc["two-stage", "total_tflops"] == pytest.approx(_total_flops("two-stage") / 1e12)
    assert cost.loc["two-stage", "flops_ratio_vs_ref"] == pytest.approx(
        _total_flops("none") / _total_flops("two-stage")
    )
    # own schedule at full resolution: 40 iterations x 64 images x 2 GFLOPs, over the run's FLOPs
    assert cost.loc["two-stage", "flops_ratio_vs_none_schedule"] == pytest.approx(
        40 * 64 * 2e9 / _total_flops("two-stage")
    )
    assert cost.loc["two-stage", "peak_memory_mb"] == pytest.approx(820.0)
    assert cost.loc["two-stage", "final_knn_top1_pct"] == pytest.approx(56.0)
    assert cost.loc["two-stage", "img_per_s"] == pytest.approx((1920 + 640) / 60.0)
    stages = csv(report, "cost_stages")
    low = stages[(stages["run"] == "two-stage") & (stages["stage"] == "low-res")].iloc[0]
    assert (low["wall_clock_s"], low["peak_memory_mb"], low["gflops_per_image"]) == (36.0, 500.0, 0.5)
    assert low["tflops"] == pytest.approx(30 * 64 * 0.5e9 / 1e12) and low["epochs"] == "0-2"
    assert low["step_time_ms"] == pytest.approx(1200.0)


def test_convergence_tables_and_stage_switch(report):
    knn = csv(report, "convergence_knn")
    two = knn[knn["run"] == "two-stage"].sort_values("epoch")
    assert list(two["epoch"]) == [1.0, 2.0, 3.0, 4.0]  # step / iterations per epoch
    assert list(two["knn_top1_pct"]) == pytest.approx([100 * v for v in KNN["two-stage"]])
    # elapsed at the end of epoch 3 = 30 stage-1 steps of 1.2 s
    assert two[two["epoch"] == 3.0]["wall_clock_s"].iloc[0] == pytest.approx(36.0)
    switches = csv(report, "convergence_switches")
    row = switches[switches["run"] == "two-stage"].iloc[0]
    assert (row["stage"], row["epoch"], row["wall_clock_s"]) == ("full-res", 3, 36.0)
    assert "none" not in set(switches["run"])  # one stage: no switch
    loss = csv(report, "convergence_loss")
    assert len(loss[loss["run"] == "none"]) == 40
    at20 = loss[(loss["run"] == "none") & (loss["step"] == 20)].iloc[0]
    assert at20["loss"] == pytest.approx(4.0)
    assert (at20["teacher_entropy"], at20["teacher_prototypes"]) == (pytest.approx(0.5), 20)


def test_robustness_tables_hold_the_fixture_numbers(report):
    rob = csv(report, "robustness").set_index(["run", "protocol"])
    common = [c for c, g in CORRUPTIONS.items() if g != "extra"]
    for run in ("none", "two-stage"):
        for protocol in ("linear", "knn"):
            errors = {c: [1 - top1(run, protocol, c, s) for s in SEVERITIES] for c in common}
            ref = {c: [1 - top1("none", protocol, c, s) for s in SEVERITIES] for c in common}
            row = rob.loc[(run, protocol)]
            assert row["clean_top1_pct"] == pytest.approx(100 * CLEAN[run][protocol])
            assert row["mean_corruption_error_pct"] == pytest.approx(
                100 * sum(sum(e) / 3 for e in errors.values()) / len(common)
            )
            assert row["mCE_vs_ref_pct"] == pytest.approx(
                100 * sum(sum(errors[c]) / sum(ref[c]) for c in common) / len(common)
            )
            clean_err, ref_clean = 1 - CLEAN[run][protocol], 1 - CLEAN["none"][protocol]
            assert row["relative_mCE_vs_ref_pct"] == pytest.approx(
                100
                * sum(sum(e - clean_err for e in errors[c]) / sum(b - ref_clean for b in ref[c]) for c in common)
                / len(common)
            )
            noise = [top1(run, protocol, c, s) for c in ("gaussian_noise", "shot_noise") for s in SEVERITIES]
            assert row["noise_top1_pct"] == pytest.approx(100 * sum(noise) / len(noise))
            assert row["extra_top1_pct"] == pytest.approx(
                100 * sum(top1(run, protocol, "speckle_noise", s) for s in SEVERITIES) / 3
            )
    assert rob.loc[("none", "linear"), "mCE_vs_ref_pct"] == pytest.approx(100.0)
    assert rob.loc[("two-stage", "linear"), "noise_top1_pct"] > rob.loc[("none", "linear"), "noise_top1_pct"]

    per = csv(report, "robustness_per_corruption")
    row = per[(per["run"] == "two-stage") & (per["protocol"] == "knn") & (per["corruption"] == "fog")].iloc[0]
    mean = sum(top1("two-stage", "knn", "fog", s) for s in SEVERITIES) / 3
    assert row["top1_pct"] == pytest.approx(100 * mean)
    assert row["drop_pp"] == pytest.approx(100 * (CLEAN["two-stage"]["knn"] - mean))
    assert row["ce_vs_ref_pct"] == pytest.approx(
        100
        * sum(1 - top1("two-stage", "knn", "fog", s) for s in SEVERITIES)
        / sum(1 - top1("none", "knn", "fog", s) for s in SEVERITIES)
    )
    assert len(per) == 2 * 2 * len(CORRUPTIONS)

    sev = csv(report, "robustness_severity")
    blur = sev[(sev["run"] == "none") & (sev["protocol"] == "linear") & (sev["group"] == "blur")].set_index("severity")
    assert blur.loc[0, "top1_pct"] == pytest.approx(80.0)  # severity 0 = clean
    assert blur.loc[2, "top1_pct"] == pytest.approx(100 * top1("none", "linear", "defocus_blur", 2))
    noise = sev[(sev["run"] == "two-stage") & (sev["protocol"] == "knn") & (sev["group"] == "noise")].set_index(
        "severity"
    )
    assert noise.loc[3, "top1_pct"] == pytest.approx(
        100 * (top1("two-stage", "knn", "gaussian_noise", 3) + top1("two-stage", "knn", "shot_noise", 3)) / 2
    )
    assert set(sev["group"]) == {"noise", "blur", "weather", "digital", "extra"}


def test_frequency_tables_hold_the_fixture_numbers(report):
    freq = csv(report, "frequency").set_index("run")
    for run in ("none", "two-stage"):
        for key, value in FREQ[run].items():
            assert freq.loc[run, key] == pytest.approx(value)
    comp = csv(report, "frequency_heatmap_none_vs_two-stage")
    assert len(comp) == 9
    assert list(comp["diff"]) == pytest.approx(list(comp["error_b"] - comp["error_a"]))
    assert sorted(comp["diff"]) == pytest.approx(sorted([5.0 * (i % 2) for i in range(9)]))
    bp = csv(report, "frequency_bandpass")
    assert set(bp["run"]) == {"none", "two-stage"} and len(bp) == 12
    rvf = csv(report, "robustness_vs_frequency")
    row = rvf[(rvf["run"] == "none") & (rvf["corruption"] == "gaussian_noise")].iloc[0]
    assert row["centroid_frac"] == pytest.approx(0.2)  # mean of 0.1, 0.2, 0.3
    assert row["drop_pp"] == pytest.approx(
        100 * (0.80 - sum(top1("none", "linear", "gaussian_noise", s) for s in SEVERITIES) / 3)
    )


def test_never_evaluated_run_is_reported_missing(report):
    missing = csv(report, "missing")
    never = missing[missing["run"] == "never-evaluated"]
    assert set(never["piece"]) == {
        "eval-corruptions (linear probe)",
        "eval-corruptions (knn probe)",
        "frequency-analysis",
        "eval-retrieval",
        "eval-segmentation",
    }
    assert (never["status"] == "missing").all()
    assert never["how_to_get_it"].str.contains("fdbench eval-corruptions").any()
    # the evaluated runs are complete except for the 9 common corruptions the fixture skipped
    others = missing[
        (missing["run"] != "never-evaluated") & ~missing["piece"].isin(["eval-retrieval", "eval-segmentation"])
    ]
    assert set(others["status"]) == {"partial"}
    assert "never-evaluated" not in set(csv(report, "robustness")["run"])
    md = report.markdown.read_text()
    assert "never-evaluated: never evaluated with eval-corruptions (missing)" in md
    assert "never-evaluated: no frequency analysis found (missing)" in md
    assert math.isnan(report.headline["never-evaluated"]["linear_clean_top1_pct"])
    # its training record is still reported
    assert csv(report, "cost").set_index("run").loc["never-evaluated", "wall_clock_s"] == 60.0
    head = csv(report, "headline").set_index("quantity")
    assert head.loc["clean top-1, linear (%)", "none"] == pytest.approx(80.0)
    assert pd.isna(head.loc["clean top-1, linear (%)", "never-evaluated"])


def test_findings_state_the_direction(report):
    text = " ".join(report.findings)
    assert "**two-stage** vs **none**" in text and "(cheaper)" in text
    assert "linear probe: clean accuracy -1.0 pp (within +-2 pp by point estimate; not a test" in text
    assert "equal" not in text  # never "equal" from point estimates
    assert "noise-group accuracy +" in text and "(up)" in text


def test_results_of_another_file_with_the_same_label_are_not_used(fixture_runs, tmp_path):
    root, runs, _ = fixture_runs
    summary = root / "evals" / "corruptions" / "summary.json"
    data = json.loads(summary.read_text())
    data["checkpoints"]["two-stage"] = {"path": "/elsewhere/two-stage/final.pt", "sha256": "0" * 64}
    summary.write_text(json.dumps(data))
    rep = compare([runs["none"], runs["two-stage"]], tmp_path / "r2", figures=False)
    assert set(csv(rep, "robustness")["run"]) == {"none"}
    missing = csv(rep, "missing")
    assert "eval-corruptions (linear probe)" in set(missing[missing["run"] == "two-stage"]["piece"])


def test_explicit_eval_folder_found_by_checksum(fixture_runs, tmp_path):
    root, runs, _ = fixture_runs
    # a folder far away whose recorded path is stale but whose checksum matches the run's final.pt
    import hashlib

    other = tmp_path / "elsewhere"
    write_evals(other, {"none": Path("/stale/none"), "two-stage": Path("/stale/two-stage")})
    data = json.loads((other / "summary.json").read_text())
    for label in ("none", "two-stage"):
        data["checkpoints"][label]["sha256"] = hashlib.sha256((runs[label] / "final.pt").read_bytes()).hexdigest()
    (other / "summary.json").write_text(json.dumps(data))
    (root / "evals" / "corruptions" / "results.csv").unlink()
    rep = compare([runs["none"], runs["two-stage"]], tmp_path / "r3", evals=[other], figures=False)
    assert set(csv(rep, "robustness")["run"]) == {"none", "two-stage"}


def test_reference_and_bad_input(fixture_runs, tmp_path):
    root, runs, never = fixture_runs
    with pytest.raises(FdbenchError, match="not one of the compared runs"):
        compare([runs["none"]], tmp_path / "x", reference="nope")
    with pytest.raises(FdbenchError, match="run not found"):
        compare([tmp_path / "missing-run"], tmp_path / "x")
    with pytest.raises(FdbenchError, match="no runs given"):
        compare([], tmp_path / "x")
    (tmp_path / "empty").mkdir()
    with pytest.raises(FdbenchError, match="not a run folder"):
        compare([tmp_path / "empty"], tmp_path / "x")
    # without a `none` run there is no reference: ratios are left empty, the findings say why
    rep = compare([runs["two-stage"], never], tmp_path / "r4", figures=False)
    assert rep.reference is None and "No reference run" in rep.findings[0]
    assert csv(rep, "cost")["speedup_vs_ref"].isna().all()
    # an explicit reference works for any run
    rep = compare([runs["two-stage"], never], tmp_path / "r5", reference="two-stage", figures=False)
    assert csv(rep, "cost").set_index("run").loc["never-evaluated", "speedup_vs_ref"] == pytest.approx(1.0)


def test_folder_of_runs_expands(fixture_runs, tmp_path):
    root, runs, never = fixture_runs
    rep = compare([root], tmp_path / "r6", figures=False)
    assert rep.runs == ["never-evaluated", "none", "two-stage"] and rep.reference == "none"


def test_cli(fixture_runs, tmp_path, capsys):
    from fdbench.cli import main

    root, runs, _ = fixture_runs
    with pytest.raises(SystemExit) as exit_:
        main(["compare", str(runs["none"]), str(runs["two-stage"]), "--out", str(tmp_path / "cli"), "--no-figures"])
    assert exit_.value.code == 0
    out = capsys.readouterr().out
    assert str(tmp_path / "cli" / "report.html") in out
    assert "speed-up vs reference" in out and "1.67x" in out
    assert not (tmp_path / "cli" / "figures").exists() and (tmp_path / "cli" / "robustness.csv").is_file()
    with pytest.raises(SystemExit) as exit_:
        main(["compare", str(tmp_path / "nope"), "--out", str(tmp_path / "cli2")])
    assert exit_.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: run not found")


def test_a_checkpoint_file_compares_without_a_training_record(fixture_runs, tmp_path):
    root, runs, _ = fixture_runs
    official = tmp_path / "dinov2_vits14_pretrain.pth"
    official.write_bytes(b"official weights")
    folder = tmp_path / "evals-official"
    write_evals(folder, {"none": runs["none"]})
    results = pd.read_csv(folder / "results.csv")
    extra = results.assign(checkpoint="dinov2_vits14_pretrain")
    pd.concat([results, extra]).to_csv(folder / "results.csv", index=False)
    data = json.loads((folder / "summary.json").read_text())
    data["checkpoints"]["dinov2_vits14_pretrain"] = {"path": str(official)}
    (folder / "summary.json").write_text(json.dumps(data))
    rep = compare([runs["none"], official], tmp_path / "r7", evals=[folder], figures=False)
    assert rep.runs == ["none", "dinov2_vits14_pretrain"]
    rob = csv(rep, "robustness").set_index(["run", "protocol"])
    assert rob.loc[("dinov2_vits14_pretrain", "linear"), "mCE_vs_ref_pct"] == pytest.approx(100.0)  # same numbers
    cost = csv(rep, "cost").set_index("run")
    assert cost.loc["dinov2_vits14_pretrain", "status"].startswith("missing")
    kinds = csv(rep, "runs").set_index("run")["kind"]
    assert kinds["dinov2_vits14_pretrain"] == "checkpoint" and kinds["none"] == "run"


def test_findings_warn_when_models_are_near_chance():
    from analysis.report import findings

    base = {
        "flops_ratio_vs_ref": 1.0,
        "speedup_vs_ref": 1.0,
        "heatmap_centroid_frac": float("nan"),
        "heatmap_mean_error_pct": float("nan"),
    }
    for p in ("linear", "knn"):
        base.update(
            {
                f"{p}_clean_top1_pct": 12.0,
                f"{p}_noise_top1_pct": 11.0,
                f"{p}_blur_top1_pct": 11.0,
                f"{p}_mCE_vs_ref_pct": 100.0,
            }
        )
    strong = {**base, "flops_ratio_vs_ref": 2.0, "speedup_vs_ref": 1.5, "linear_clean_top1_pct": 60.0}
    lines = findings(["none", "two-stage"], "none", {"none": base, "two-stage": strong}, chance_pct=10.0)
    assert len(lines) == 2 and "Caution" in lines[1] and "none 12.0%" in lines[1] and "two-stage" not in lines[1]
    ok = findings(
        ["none", "two-stage"],
        "none",
        {"none": {**base, "linear_clean_top1_pct": 50.0}, "two-stage": strong},
        chance_pct=10.0,
    )
    assert len(ok) == 1 and "Caution" not in ok[0]


def test_floors_and_paired_differences_lead_the_findings(fixture_runs, tmp_path):
    """Per-image outcomes written by hand for the clean cells: none right on images 0-79, two-stage on
    0-78, the pixels floor on 10-99, the random-init floor on 0-29 (100 val images)."""
    import numpy as np
    from scipy.stats import binomtest

    from analysis.outcomes import Outcomes

    root, runs, _ = fixture_runs
    folder = root / "evals" / "corruptions"
    results = pd.read_csv(folder / "results.csv")
    results.insert(1, "kind", "pretrained")
    idx = np.arange(100)
    correct = {"none": idx < 80, "two-stage": idx < 79, "pixels": idx >= 10, "random-init": idx < 30}
    extra, outcomes = [], Outcomes()
    for label, right in correct.items():
        for protocol in ("linear", "knn"):
            outcomes.add((label, protocol, "clean", 0), right)
            if label in ("pixels", "random-init"):
                extra.append(
                    dict(
                        checkpoint=label,
                        kind="floor",
                        protocol=protocol,
                        corruption="clean",
                        severity=0,
                        n=100,
                        top1=right.mean(),
                        top5=1.0,
                    )
                )
    outcomes.save(folder / "outcomes.npz")
    pd.concat([results, pd.DataFrame(extra)]).to_csv(folder / "results.csv", index=False)
    rep = compare([runs["none"], runs["two-stage"]], tmp_path / "report", figures=False)

    floors = csv(rep, "floors").set_index(["run", "floor", "protocol"])
    row = floors.loc[("none", "pixels", "linear")]
    assert row["floor_clean_top1_pct"] == pytest.approx(90.0) and row["difference_pp"] == pytest.approx(-10.0)
    # none right & pixels wrong on images 0-9 (10), the reverse on 80-99 (20)
    assert row["p_value"] == pytest.approx(binomtest(10, 30, 0.5).pvalue)
    assert rep.headline["none"]["knn_pixels_floor_clean_top1_pct"] == pytest.approx(90.0)
    assert rep.headline["none"]["linear_random_init_floor_clean_top1_pct"] == pytest.approx(30.0)
    text = " ".join(rep.findings)
    assert "**none** (linear probe) does not beat its best floor, **pixels**" in text
    assert "robustness comparisons between such encoders are not meaningful" in text
    diffs = csv(rep, "differences")
    clean = diffs[(diffs["metric"] == "clean top-1") & (diffs["protocol"] == "knn")].iloc[0]
    assert clean["difference"] == pytest.approx(-0.01) and clean["p_value"] == pytest.approx(1.0)
    assert clean["verdict"] == "not distinguishable at this sample size (95% CI covers 0)"
    assert "**two-stage** vs **none** (knn probe, paired over 100 images): clean top-1 -1.0 pp" in text
    assert "floor: pixels" in rep.markdown.read_text()


def test_online_knn_interval_is_the_wilson_score_interval():
    """The interval solves (p_hat - p)^2 = z^2 p (1 - p) / n for p (the Wilson score definition)."""
    import numpy as np

    from analysis.report_tables import wilson_interval

    z = 1.959964
    for p_hat, n in ((0.5, 100), (0.37, 500), (0.02, 50)):
        # (1 + z^2/n) p^2 - (2 p_hat + z^2/n) p + p_hat^2 = 0
        roots = sorted(np.roots([1 + z * z / n, -(2 * p_hat + z * z / n), p_hat * p_hat]).real)
        assert wilson_interval(p_hat, n) == pytest.approx(tuple(roots))
    assert wilson_interval(0.4, None) == (None, None)
