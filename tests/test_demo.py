"""``fdbench demo``: a very small end-to-end run (tiny model and data, two corruptions), step skipping,
the shared corrupted-image cache and bad input."""

from __future__ import annotations

import json
import math

import pytest
import torch

from fdbench.demo import STEPS, DemoConfig, SharedCorruptions, demo, fingerprint
from fdbench.errors import FdbenchError


def test_shared_corruptions_compute_each_chunk_once():
    calls = []

    def corrupt(images, name, severity, generator=None):
        calls.append((name, severity, generator))
        return images + severity

    shared = SharedCorruptions(corrupt, reuses=1)
    x = torch.arange(12, dtype=torch.float32).view(1, 3, 2, 2)
    first = shared(x, "fog", 2, generator=7)
    again = shared(x.clone(), "fog", 2, generator=7)  # equal content, another tensor: a hit
    assert torch.equal(first, x + 2) and torch.equal(again, x + 2)
    assert calls == [("fog", 2, 7)] and (shared.hits, shared.misses) == (1, 1)
    assert not shared.store  # dropped after its one reuse
    shared(x, "fog", 2, generator=8)  # another seed: computed
    shared(x + 1, "fog", 2, generator=8)  # other images: computed
    shared(x, "fog", 2)  # no seed: never cached
    shared(x, "fog", 2)
    assert len(calls) == 5 and shared.hits == 1


def test_fingerprint_follows_files_and_settings(tmp_path):
    f = tmp_path / "a.csv"
    f.write_text("1")
    fp = fingerprint([f], {"x": 1})
    assert fingerprint([f], {"x": 1}) == fp and fingerprint([f], {"x": 2}) != fp
    f.write_text("12")  # another size
    assert fingerprint([f], {"x": 1}) != fp


@pytest.fixture(scope="module")
def tiny_demo(tiny_dataset, tmp_path_factory):
    out = tmp_path_factory.mktemp("demo") / "demo"
    config = DemoConfig(
        out=str(out),
        epochs=2,
        device="cpu",
        data=str(tiny_dataset),
        # one epoch per stage, kNN monitor only at the end: the smallest run that still has a stage switch
        train_options=dict(
            arch="vit_pico",
            global_size=32,
            local_size=16,
            n_local=2,
            batch_size=16,
            prototypes=64,
            workers=0,
            stage1_fraction=0.5,
            eval_every=0,
        ),
        corruptions="gaussian_noise,defocus_blur",
        severities="1,3",
        eval_batch_size=64,
        heatmap_images=4,
        bandpass_images=8,
        window=5,
        radii=2,
        figures=False,
    )
    messages = []
    first = demo(config, announce=messages.append)
    return config, first, messages


def test_demo_runs_every_step_and_writes_the_report(tiny_demo):
    import pandas as pd

    config, result, messages = tiny_demo
    out = result.out
    assert [s.name for s in result.steps] == list(STEPS) and {s.status for s in result.steps} == {"done"}
    for curriculum in ("none", "two-stage"):
        assert (out / curriculum / "final.pt").is_file() and (out / curriculum / "summary.json").is_file()
    results = pd.read_csv(out / "evals" / "corruptions" / "results.csv")
    # 2 checkpoints x 2 probes x (clean + 2 corruptions x 2 severities), beside 2 floors and the ceiling
    pretrained = results[results["kind"] == "pretrained"]
    assert len(pretrained) == 2 * 2 * 5 and set(pretrained["checkpoint"]) == {"none", "two-stage"}
    assert dict(zip(results["checkpoint"], results["kind"])) == {
        "none": "pretrained",
        "two-stage": "pretrained",
        "pixels": "floor",
        "random-init": "floor",
        "ceiling": "ceiling",
    }
    assert len(results) == 5 * 2 * 5
    assert (out / "ceiling" / "ceiling.json").is_file()
    assert (out / "evals" / "frequency" / "summary.csv").is_file()
    retrieval = pd.read_csv(out / "evals" / "retrieval" / "results.csv")  # clean + 4 corruptions at severity 3
    assert len(retrieval) == 4 * 5 and set(retrieval["checkpoint"]) == {"none", "two-stage", "pixels", "random-init"}
    assert set(result.report.tables["retrieval"]["run"]) == {"none", "two-stage", "pixels", "random-init"}
    assert result.report_html == out / "report" / "report.html" and result.report_html.is_file()
    head = result.report.headline
    assert set(head) == {"none", "two-stage"} and result.report.reference == "none"
    assert head["two-stage"]["flops_ratio_vs_ref"] > 1.2  # half the epochs at half resolution
    for run in head:
        assert 0 <= head[run]["knn_pixels_floor_clean_top1_pct"] <= 100
        assert 0 <= head[run]["linear_ceiling_clean_top1_pct"] <= 100
        assert 0 <= head[run]["linear_clean_top1_pct"] <= 100 and not math.isnan(head[run]["heatmap_mean_error_pct"])
    assert result.report.missing["status"].eq("partial").all()  # only 2 of the 15 common corruptions
    state = json.loads((out / "demo.json").read_text())
    assert set(state["steps"]) == set(STEPS) and all(s["done"] for s in state["steps"].values())
    assert any("corrupted chunks made" in m for m in messages)


def test_rerun_skips_finished_steps(tiny_demo):
    config, first, _ = tiny_demo
    results = first.out / "evals" / "corruptions" / "results.csv"
    before = results.stat().st_mtime_ns
    second = demo(config)
    assert {s.status for s in second.steps} == {"skipped"}
    assert results.stat().st_mtime_ns == before
    assert second.report.headline["two-stage"]["flops_ratio_vs_ref"] == pytest.approx(
        first.report.headline["two-stage"]["flops_ratio_vs_ref"]
    )
    # a lost output re-runs its own step only
    (first.out / "report" / "report.html").unlink()
    third = demo(config)
    assert {s.name: s.status for s in third.steps} == {**{s: "skipped" for s in STEPS}, "report": "done"}
    assert (first.out / "report" / "report.html").is_file()


def test_other_recipe_in_the_same_folder_is_an_error(tiny_demo):
    import dataclasses

    config, _, _ = tiny_demo
    with pytest.raises(FdbenchError, match="different settings"):
        demo(dataclasses.replace(config, epochs=3))


def test_cli_bad_epochs(tmp_path, capsys):
    from fdbench.cli import main

    with pytest.raises(SystemExit) as exit_:
        main(["demo", "--out", str(tmp_path / "d"), "--epochs", "0", "--device", "cpu"])
    assert exit_.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1].startswith("error: --epochs must be at least 1")


def test_demo_with_two_seeds_reports_intervals_over_seeds(tiny_demo, tmp_path):
    """--seeds 2: every curriculum trained per seed, one evaluation of all four, a seed-interval report."""
    import dataclasses

    import pandas as pd

    from fdbench.demo import run_name

    config, _, _ = tiny_demo
    seeded = dataclasses.replace(
        config, out=str(tmp_path / "seeds"), seeds=2, corruptions="gaussian_noise", severities="1"
    )
    result = demo(seeded)
    names = [run_name(c, s, 2) for c in ("none", "two-stage") for s in (0, 1)]
    assert names == ["none-s0", "none-s1", "two-stage-s0", "two-stage-s1"]
    for name in names:
        assert (result.out / name / "final.pt").is_file()
    results = pd.read_csv(result.out / "evals" / "corruptions" / "results.csv")
    assert set(results.loc[results["kind"] == "pretrained", "checkpoint"]) == set(names)
    assert [s.name for s in result.steps][-1] == "seeds-report"
    findings = pd.read_csv(result.out / "seeds" / "findings.csv")
    assert set(findings["arm"]) == {"two-stage"}  # the demo's two curricula: finding 3 only
    comps = pd.read_csv(result.out / "seeds" / "comparisons.csv")
    clean = comps[comps["statistic"] == "clean"].iloc[0]
    assert clean["ci_lo"] <= clean["difference"] <= clean["ci_hi"]
    assert len(clean["per_seed_differences"].split()) == 2
    assert result.report.reference == "none-s0"
    # compare grouped the seeds of each curriculum into one arm
    seeds = pd.read_csv(result.out / "report" / "seeds.csv")
    clean = seeds[seeds["quantity"] == "clean top-1, linear (%)"].set_index("arm")
    assert set(clean.index) == {"none", "two-stage"} and set(clean["seeds"]) == {2}
    assert clean.loc["none", "runs"] == "none-s0 none-s1"
    with pytest.raises(FdbenchError, match="--seeds"):
        demo(dataclasses.replace(seeded, seeds=0))


def test_seed_grouping_and_its_interval():
    """Same recipe but the seed (and run-only options) -> one arm; t-interval from its definition."""
    import math

    from scipy import stats as sps

    from analysis.report_seeds import mean_interval, recipe_key

    a = {"run": {"seed": 0, "out": "x", "epochs": 2}, "loss": {"koleo_weight": 0.1}}
    b = {"run": {"seed": 1, "out": "y", "epochs": 2}, "loss": {"koleo_weight": 0.1}}
    c = {"run": {"seed": 1, "out": "y", "epochs": 3}, "loss": {"koleo_weight": 0.1}}
    assert recipe_key(a) == recipe_key(b) != recipe_key(c)
    values = [40.0, 44.0, 45.0]
    mean, sd, lo, hi = mean_interval(values)
    sd_ref = math.sqrt(sum((v - 43.0) ** 2 for v in values) / 2)
    half = sps.t.ppf(0.975, 2) * sd_ref / math.sqrt(3)
    assert (mean, sd, lo, hi) == pytest.approx((43.0, sd_ref, 43.0 - half, 43.0 + half))


def test_cpu_heatmap_window_fits_the_embedded_images():
    """The CPU default window (33) would not fit 32 px images: the full spectrum is used instead."""
    from fdbench.demo import heatmap_window

    assert heatmap_window(33, None, None) is None  # embedded dataset: 32 px
    assert heatmap_window(33, 33, None) == 33  # an explicit window is kept (and refused later if too big)
    assert heatmap_window(None, None, None) is None  # CUDA: the full spectrum anyway
