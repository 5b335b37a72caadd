"""The frequency-analysis runner: heat maps of known models, band-pass, spectra, summaries, files, CLI."""

import json
import math

import numpy as np
import pandas as pd
import pytest
import torch

from analysis import fourier, frequency, plots
from analysis import frequency_stats as fstats
from fdbench.errors import FdbenchError

N = 16


def _centroid_model(kind: str, cutoff: float = 4, amp: float = 0.05, seed: int = 0):
    """4 classes whose centroids differ only in low (|k| <= 3) or only in high (|k| > 5) frequencies, and a
    nearest-centroid classifier that sees the image only through an ideal low-/high-pass at ``cutoff``."""
    gen = torch.Generator().manual_seed(seed)
    field = torch.randn(4, 3, N, N, generator=gen)
    field = fourier.band_pass(field, 3, "low") if kind == "low" else fourier.band_pass(field, 5, "high")
    centroids = 0.5 + amp * field / field.abs().amax(dim=(1, 2, 3), keepdim=True)
    ref = fourier.band_pass(centroids, cutoff, kind)

    def classify(x):
        return -((fourier.band_pass(x, cutoff, kind)[:, None] - ref[None]) ** 2).flatten(2).sum(-1)

    images = centroids.repeat(4, 1, 1, 1)
    labels = torch.arange(4).repeat(4)
    return classify, images, labels


def test_low_frequency_model_errs_only_at_low_frequencies():
    # eps 2 at 16 px: amplitude <= 2*sqrt(2)/16 = 0.18 around 0.5 +- 0.05, so nothing is clamped and a
    # perturbation above the cutoff is removed exactly by the model's own low-pass filter
    classify, images, labels = _centroid_model("low")
    df = frequency.fourier_heatmap(classify, images, labels, eps=2.0, batch_size=512)
    assert len(df) == N * N and set(df["n"]) == {16}
    low = df["radius"] <= 4
    assert df.loc[~low, "error_pct"].max() == 0.0
    assert df.loc[low, "error_pct"].mean() > 10.0
    summary = frequency.heatmap_summary(df, clean_error_pct=0.0, size=N)
    assert summary["heatmap_centroid_frac"] < 4 / (N / 2)
    assert summary["heatmap_low_error_pct"] > summary["heatmap_high_error_pct"] == 0.0


def test_high_frequency_model_errs_only_at_high_frequencies():
    classify, images, labels = _centroid_model("high")
    df = frequency.fourier_heatmap(classify, images, labels, eps=2.0, batch_size=512)
    high = df["radius"] > 4
    assert df.loc[~high, "error_pct"].max() == 0.0
    assert df.loc[high, "error_pct"].mean() > 2.0
    assert frequency.heatmap_summary(df, 0.0, N)["heatmap_centroid_frac"] > 4 / (N / 2)


def test_heatmap_is_point_symmetric_and_evaluates_each_pair_once():
    calls = []

    def count(x):
        calls.append(len(x))
        return torch.zeros(len(x), 2)

    images = torch.rand(3, 3, N, N, generator=torch.Generator().manual_seed(1))
    labels = torch.tensor([0, 1, 1])
    df = frequency.fourier_heatmap(count, images, labels, eps=1.0, batch_size=7)
    assert sum(calls) == ((N * N - 4) // 2 + 4) * 3
    assert np.allclose(df["error_pct"], 100 * 2 / 3)
    # a sign-sensitive model: mirror cells of the map always agree
    classify, imgs, labs = _centroid_model("low")
    df = frequency.fourier_heatmap(classify, imgs, labs, eps=2.0, window=9)
    table = df.set_index(["ky", "kx"])["error_pct"]
    for (ky, kx), value in table.items():
        if (-ky, -kx) in table.index:
            assert table[(-ky, -kx)] == value


def test_bandpass_accuracy_of_a_brightness_classifier():
    # class = whether the mean brightness is above 0.5: low-pass keeps the mean (DC) at every radius,
    # high-pass removes it at every radius (prediction is then always class 0)
    gen = torch.Generator().manual_seed(0)
    base = torch.rand(40, 3, N, N, generator=gen) * 0.2
    labels = torch.arange(40) % 2
    images = base + 0.3 + 0.4 * labels.view(-1, 1, 1, 1).float()

    def classify(x):
        return (x.mean(dim=(1, 2, 3)) > 0.5).long()

    df = frequency.bandpass_accuracy(classify, images, labels, fractions=frequency.radius_fractions(4))
    assert list(df["radius_frac"].unique()) == pytest.approx([0, 0.25, 0.5, 0.75, 1.0, math.sqrt(2)])
    assert (df[df["filter"] == "low"]["accuracy_pct"] == 100).all()
    assert (df[df["filter"] == "high"]["accuracy_pct"] == 50).all()
    assert frequency.crossing_radius(df) == 0.0


def test_crossing_radius_and_auc_against_hand_values():
    fr = [0.0, 0.5, 1.0]
    df = pd.DataFrame(
        {"filter": ["low"] * 3 + ["high"] * 3, "radius_frac": fr * 2, "accuracy_pct": [10, 40, 90, 80, 60, 10]}
    )
    # gap low - high: -70, -20, 80 -> zero at 0.5 + 0.5 * 20 / 100 = 0.6
    assert frequency.crossing_radius(df) == pytest.approx(0.6)
    assert frequency.bandpass_auc(df, "low") == pytest.approx((25 * 0.5 + 65 * 0.5) / 1.0)
    never = df.assign(accuracy_pct=[10, 10, 10, 90, 90, 90])
    assert math.isnan(frequency.crossing_radius(never))


def test_heatmap_summary_against_direct_sums():
    df = pd.DataFrame({"ky": [0, 0, 1, 1], "kx": [0, 1, 0, 1], "error_pct": [10.0, 30.0, 50.0, 20.0]})
    df["radius"] = np.hypot(df["ky"], df["kx"])
    s = frequency.heatmap_summary(df, clean_error_pct=20.0, size=4)
    excess = np.array([0, 10, 30, 0])
    expected = (excess * df["radius"]).sum() / excess.sum() / 2
    assert s["heatmap_centroid_frac"] == pytest.approx(expected)
    assert s["heatmap_mean_error_pct"] == pytest.approx(27.5)
    # window 2 -> split at |k| < 0.5: only the DC cell is "low"
    assert s["heatmap_low_error_pct"] == 10.0 and s["heatmap_high_error_pct"] == pytest.approx(100 / 3)


def test_corruption_spectra_place_a_single_frequency_corruption():
    images = torch.full((2, 3, N, N), 0.5)
    basis = fourier.fourier_bases(N, torch.tensor([[0, 5]]))[0]

    def add_wave(x, name, severity, generator=None):
        return x + 0.01 * severity * basis

    spectra, centroids = frequency.corruption_spectra(images, add_wave, ["wave"], severities=(1, 2))
    assert list(centroids["centroid"]) == pytest.approx([5.0, 5.0], rel=1e-4)
    assert list(centroids["energy"]) == pytest.approx([1e-4, 4e-4], rel=1e-3)
    s2 = spectra[spectra["severity"] == 2]
    assert float(s2.loc[s2["radius"] == 5, "total_power"].iloc[0]) == pytest.approx(4e-4, rel=1e-3)


# ---- the runner on checkpoints ------------------------------------------------------------------


@pytest.fixture(scope="module")
def two_runs(tmp_path_factory, tiny_dataset):
    from fdbench.checkpoint import save_checkpoint
    from fdbench.models import build_backbone

    runs = tmp_path_factory.mktemp("freq") / "runs"
    for i, curriculum in enumerate(["two-stage", "none"]):
        torch.manual_seed(i)
        model = build_backbone("vit_pico", 32, 8)
        save_checkpoint(
            {
                "kind": "backbone",
                "model": model.config.to_dict(),
                "teacher_backbone": model.state_dict(),
                "data": {"root": str(tiny_dataset), "image_size": 32},
                "curriculum": curriculum,
            },
            runs / curriculum / "final.pt",
        )
    return runs


def _config(runs, out, **kw):
    base = dict(
        runs=str(runs),
        out=str(out),
        n_images=4,
        spectra_images=3,
        bandpass_images=16,
        radii=2,
        window=8,
        batch_size=128,
    )
    base.update(kw)
    return frequency.FrequencyConfig(**base)


def _spectra_kw():
    from analysis.evaluate import default_corrupt_fn

    return {"corrupt_fn": default_corrupt_fn(), "corruption_names": ["gaussian_noise", "defocus_blur", "contrast"]}


def test_runner_files_match_figures_and_resume(two_runs, tmp_path, monkeypatch):
    out = tmp_path / "freq"
    results = tmp_path / "results.csv"
    rows = []
    for label, clean in (("none", 0.8), ("two-stage", 0.7)):
        rows.append(
            {
                "checkpoint": label,
                "protocol": "linear",
                "corruption": "clean",
                "severity": 0,
                "n": 40,
                "top1": clean,
                "top5": 1.0,
            }
        )
        for name, acc in (("gaussian_noise", 0.3), ("defocus_blur", 0.6), ("contrast", 0.5)):
            for sev in range(1, 6):
                rows.append(
                    {
                        "checkpoint": label,
                        "protocol": "linear",
                        "corruption": name,
                        "severity": sev,
                        "n": 40,
                        "top1": acc,
                        "top5": 1.0,
                    }
                )
    pd.DataFrame(rows).to_csv(results, index=False)
    messages = []
    report = frequency.run_frequency_analysis(
        _config(two_runs, out, results=str(results)), announce=messages.append, **_spectra_kw()
    )
    assert any("found under" in m for m in messages)
    # the heat map and the spectra draw their own numbers of images
    assert json.loads((out / "spectra.json").read_text())["params"]["n_images"] == 3
    assert set(report.summary["heatmap_images"]) == {4}
    for name in (
        "none/heatmap",
        "two-stage/heatmap",
        "heatmap_comparison",
        "bandpass",
        "spectra",
        "robustness_vs_frequency",
    ):
        assert (out / f"{name}.png").stat().st_size > 0 and (out / f"{name}.pdf").stat().st_size > 0

    # every heat map: the image drawn is the CSV pivoted (ky rows, kx columns), shared 0..vmax scale
    for label in ("none", "two-stage"):
        csv = pd.read_csv(out / label / "heatmap.csv")
        assert len(csv) == 64 and sorted(csv["kx"].unique()) == list(range(-4, 4))
        image = report.figures[f"{label}/heatmap"].axes[0].images[0]
        arr = np.asarray(image.get_array())
        assert np.allclose(arr, csv.pivot(index="ky", columns="kx", values="error_pct").to_numpy())
    comp = pd.read_csv(out / "heatmap_comparison.csv")
    fig = report.figures["heatmap_comparison"]
    assert fig.axes[0].get_title() == "A: none" and fig.axes[1].get_title() == "B: two-stage"
    a = pd.read_csv(out / "none" / "heatmap.csv").pivot(index="ky", columns="kx", values="error_pct").to_numpy()
    b = pd.read_csv(out / "two-stage" / "heatmap.csv").pivot(index="ky", columns="kx", values="error_pct").to_numpy()
    diff = np.asarray(fig.axes[2].images[0].get_array())
    assert np.allclose(diff, b - a)
    assert np.allclose(comp.pivot(index="ky", columns="kx", values="diff").to_numpy(), b - a)

    # ring curves: each ring's error is the mean of its heat-map cells (all cells see the same n images),
    # inside its bootstrap interval; the per-image outcomes reproduce the heat map
    rings = pd.read_csv(out / "heatmap_rings.csv")
    for label in ("none", "two-stage"):
        csv = pd.read_csv(out / label / "heatmap.csv")
        kept = fstats.load_outcomes(out / label / "heatmap_outcomes.npz")
        assert np.allclose(100 * kept["wrong"][kept["index"].ravel()].mean(axis=1), csv["error_pct"])
        by_ring = csv.groupby(np.floor(csv["radius"] + 0.5).astype(int))["error_pct"].mean()
        mine = rings[rings["checkpoint"] == label].set_index("ring")
        assert np.allclose(mine["error_pct"], by_ring.loc[mine.index])
        assert (mine["error_pct_lo"] <= mine["error_pct"] + 1e-9).all()
        assert (mine["error_pct"] <= mine["error_pct_hi"] + 1e-9).all()
    ring_diff = pd.read_csv(out / "heatmap_rings_difference.csv")
    by_ring = comp.groupby(np.floor(comp["radius_frac"] * 16 + 0.5).astype(int))["diff"].mean()
    assert np.allclose(ring_diff.set_index("ring")["diff_pp"], by_ring.loc[ring_diff["ring"]])
    assert {"crossing_frac_lo", "crossing_frac_hi", "heatmap_centroid_frac_lo"} <= set(pd.read_csv(out / "summary.csv"))

    # band-pass lines carry the CSV's numbers
    bp = pd.read_csv(out / "bandpass.csv")
    line = next(l for l in report.figures["bandpass"].axes[0].lines if l.get_label() == "none, low-pass")
    rows_low = bp[(bp["checkpoint"] == "none") & (bp["filter"] == "low")].sort_values("radius_frac")
    assert np.allclose(line.get_xdata(), rows_low["radius_frac"]) and np.allclose(
        line.get_ydata(), rows_low["accuracy_pct"]
    )

    # robustness vs frequency: drop = clean - corrupted (pp), centroid = mean over severities
    rob = pd.read_csv(out / "robustness_vs_frequency.csv")
    cent = pd.read_csv(out / "spectra_centroids.csv")
    row = rob[(rob["checkpoint"] == "none") & (rob["corruption"] == "gaussian_noise")].iloc[0]
    assert row["drop_pp"] == pytest.approx(50.0)
    assert row["centroid_frac"] == pytest.approx(cent[cent["corruption"] == "gaussian_noise"]["centroid_frac"].mean())
    # white-ish noise sits higher on the frequency axis than contrast (a global, low-frequency change)
    by_name = cent.groupby("corruption")["centroid_frac"].mean()
    assert by_name["gaussian_noise"] > by_name["contrast"]

    summary = pd.read_csv(out / "summary.csv").set_index("checkpoint")
    assert summary.loc["none", "noise_top1_pct"] == pytest.approx(30.0)
    assert summary.loc["none", "noise_minus_blur_pp"] == pytest.approx(-30.0)
    assert summary.loc["none", "eps"] == pytest.approx(4.0)
    assert json.loads((out / "summary.json").read_text())["checkpoints"][0]["checkpoint"] == "none"

    # a second run reuses every analysis without loading a model
    def no_load(*args, **kwargs):
        raise AssertionError("the model should not be loaded again")

    monkeypatch.setattr(frequency, "_load_model", no_load)
    again = []
    report2 = frequency.run_frequency_analysis(
        _config(two_runs, out, results=str(results)), announce=again.append, **_spectra_kw()
    )
    assert sum("already done" in m for m in again) == 5
    pd.testing.assert_frame_equal(
        report2.summary.reset_index(drop=True), pd.read_csv(out / "summary.csv"), check_dtype=False
    )
    # a changed parameter is refused like eval-corruptions refuses it (issue 20), before any work;
    # with --overwrite that analysis is rerun
    with pytest.raises(FdbenchError, match=r"other settings \(eps: 4.0 -> 1.0\).*--overwrite"):
        frequency.run_frequency_analysis(_config(two_runs, out, eps=1.0), **_spectra_kw())
    with pytest.raises(AssertionError, match="loaded again"):
        frequency.run_frequency_analysis(_config(two_runs, out, eps=1.0, overwrite=True), **_spectra_kw())


def test_runner_errors_are_one_line(tmp_path, two_runs):
    with pytest.raises(FdbenchError, match="fdbench pretrain"):
        frequency.run_frequency_analysis(_config(tmp_path / "empty", tmp_path / "o"))
    with pytest.raises(FdbenchError, match="heatmap, bandpass, spectra"):
        frequency.run_frequency_analysis(_config(two_runs, tmp_path / "o", analyses=["fourier"]))
    with pytest.raises(FdbenchError, match="eps"):
        frequency.run_frequency_analysis(_config(two_runs, tmp_path / "o", eps=-1.0))
    with pytest.raises(FdbenchError, match="results file not found"):
        frequency.run_frequency_analysis(_config(two_runs, tmp_path / "o", results=str(tmp_path / "nope.csv")))


def test_cli_without_checkpoints_says_to_pretrain(tmp_path, monkeypatch, capsys):
    from fdbench.cli import main

    monkeypatch.chdir(tmp_path)
    with pytest.raises(SystemExit) as exit_info:
        main(["frequency-analysis"])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: ") and "fdbench pretrain" in err[0]


def test_cli_runs_bandpass_on_a_checkpoint(tmp_path, two_runs, capsys):
    from fdbench.cli import main

    with pytest.raises(SystemExit) as exit_info:
        main(
            [
                "frequency-analysis",
                str(two_runs / "none" / "final.pt"),
                "--analyses",
                "bandpass",
                "--bandpass-images",
                "8",
                "--radii",
                "2",
                "--out",
                str(tmp_path / "cli"),
                "--device",
                "cpu",
            ]
        )
    assert exit_info.value.code == 0
    assert "none" in capsys.readouterr().out
    assert (tmp_path / "cli" / "bandpass.png").exists() and (tmp_path / "cli" / "summary.csv").exists()


def test_plot_helpers_write_png_and_pdf(tmp_path):
    df = pd.DataFrame({"ky": [0, 0, 1, 1], "kx": [0, 1, 0, 1], "error_pct": [1.0, 2.0, 3.0, 4.0]})
    fig = plots.heatmap_figure(df, title="t", vmax=plots.nice_max(4.0))
    paths = plots.save_figure(fig, tmp_path / "sub" / "h")
    assert [p.suffix for p in paths] == [".png", ".pdf"]
    assert paths[0].read_bytes()[:4] == b"\x89PNG" and paths[1].read_bytes()[:4] == b"%PDF"
    image = fig.axes[0].images[0]
    assert image.get_clim() == (0.0, 10.0)
    assert plots.nice_max(43.0) == 50.0 and plots.nice_max(130.0) == 100.0


def test_interrupted_heatmap_resumes_to_the_same_map(tmp_path):
    classify, images, labels = _centroid_model("low")
    full = frequency.fourier_heatmap(classify, images, labels, eps=2.0, window=8, batch_size=64)
    calls = {"n": 0}

    def flaky(x):
        calls["n"] += 1
        if calls["n"] == 6:
            raise KeyboardInterrupt
        return classify(x)

    partial = tmp_path / "heatmap.partial.pt"
    with pytest.raises(KeyboardInterrupt):
        frequency.fourier_heatmap(
            flaky, images, labels, eps=2.0, window=8, batch_size=64, partial=partial, partial_key="k", save_every_s=0.0
        )
    assert torch.load(partial, weights_only=True)["start"] == 5 * 64
    seen = []

    def counting(x):
        seen.append(len(x))
        return classify(x)

    resumed = frequency.fourier_heatmap(
        counting, images, labels, eps=2.0, window=8, batch_size=64, partial=partial, partial_key="k"
    )
    assert sum(seen) == len(fourier.half_plane(N, 8)[0]) * 16 - 5 * 64 and not partial.exists()
    pd.testing.assert_frame_equal(full, resumed)
