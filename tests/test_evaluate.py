"""eval-corruptions: resumable cells, identical corrupted inputs, normalisation, CLI errors."""

from __future__ import annotations

import json

import pandas as pd
import pytest
import torch

from analysis.evaluate import CHUNK, EvalConfig, checkpoint_labels, chunk_seed, corrupt_images, evaluate_corruptions
from fdbench.checkpoint import save_checkpoint
from fdbench.cli import main
from fdbench.models import build_backbone


def _checkpoint(path, seed=0, data=None):
    torch.manual_seed(seed)
    model = build_backbone("vit_pico", img_size=32, patch_size=8)
    state = {"kind": "backbone", "model": model.config.to_dict(), "teacher_backbone": model.state_dict()}
    if data is not None:
        state["data"] = data
    save_checkpoint(state, path)
    return path


class Recorder:
    """A seeded stand-in corruption: adds uniform noise scaled by the severity; records every call."""

    def __init__(self):
        self.calls = []

    def __call__(self, images, name, severity, generator=None):
        gen = torch.Generator().manual_seed(generator)
        noise = (torch.rand(images.shape, generator=gen) * 30 * severity).to(images.device)
        out = (images.float() + noise).clamp(0, 255).to(images.dtype)
        self.calls.append((name, severity, generator, out.clone()))
        return out


def _identity(images, name, severity, generator=None):
    return images.clone()


def _cfg(data, **kw):
    # floors off: these tests count the checkpoints' own cells; the floors have tests of their own
    base = dict(
        data=str(data), corruptions="gaussian_noise,fog", severities="1-2", device="cpu", batch_size=32, floors=False
    )
    return EvalConfig(**{**base, **kw})


def test_identity_corruption_keeps_clean_accuracy_and_writes_every_output(tmp_path, tiny_dataset):
    ckpt = _checkpoint(tmp_path / "m.pt")
    report = evaluate_corruptions([ckpt], tmp_path / "out", _cfg(tiny_dataset), corrupt_fn=_identity)
    res = pd.read_csv(tmp_path / "out" / "results.csv")
    assert list(res.columns) == ["checkpoint", "kind", "protocol", "corruption", "severity", "n", "top1", "top5"]
    assert len(res) == 2 * (1 + 2 * 2) and set(res["n"]) == {40}
    for protocol, rows in res.groupby("protocol"):
        clean = rows[rows["corruption"] == "clean"]["top1"].item()
        assert (rows["top1"] == clean).all(), protocol  # unchanged images -> same features, same accuracy
    assert report.computed_cells == 5 and report.skipped_cells == 0
    summary = json.loads((tmp_path / "out" / "summary.json").read_text())
    agg = summary["checkpoints"]["m"]["protocols"]["linear"]
    assert agg["normalisation"] == "none (unnormalised mean error)" and agg["mCE"] is None
    assert agg["clean_top1"] == pytest.approx(
        res.query("protocol == 'linear' and corruption == 'clean'")["top1"].item()
    )
    table = pd.read_csv(tmp_path / "out" / "summary_table.csv")
    assert "m:knn mean err % (unnormalised)" in table.columns
    assert len(pd.read_csv(tmp_path / "out" / "summary.csv")) == 2 * 2


def test_resume_skips_finished_cells_and_completes_an_interrupted_run(tmp_path, tiny_dataset):
    ckpt = _checkpoint(tmp_path / "m.pt")
    out = tmp_path / "out"

    class Interrupt(Exception):
        pass

    calls = []

    def dies_on_fog(images, name, severity, generator=None):
        calls.append((name, severity))
        if name == "fog":
            raise Interrupt
        return images.clone()

    with pytest.raises(Interrupt):
        evaluate_corruptions([ckpt], out, _cfg(tiny_dataset), corrupt_fn=dies_on_fog)
    done = pd.read_csv(out / "results.csv")
    assert sorted(set(zip(done["corruption"], done["severity"]))) == [
        ("clean", 0),
        ("gaussian_noise", 1),
        ("gaussian_noise", 2),
    ]
    rec = Recorder()
    report = evaluate_corruptions([ckpt], out, _cfg(tiny_dataset), corrupt_fn=rec)
    assert {(n, s) for n, s, _, _ in rec.calls} == {("fog", 1), ("fog", 2)}  # only the missing cells
    assert report.computed_cells == 2 and report.skipped_cells == 3
    # a second identical call recomputes nothing; a wider one only the new severity
    rec = Recorder()
    assert evaluate_corruptions([ckpt], out, _cfg(tiny_dataset), corrupt_fn=rec).computed_cells == 0
    assert rec.calls == []
    evaluate_corruptions([ckpt], out, _cfg(tiny_dataset, severities="1-3"), corrupt_fn=rec)
    assert {(n, s) for n, s, _, _ in rec.calls} == {("gaussian_noise", 3), ("fog", 3)}
    assert len(pd.read_csv(out / "results.csv")) == 2 * (1 + 2 * 3)


def test_two_checkpoints_see_identical_corrupted_images_whatever_the_batch_size(tmp_path, tiny_dataset):
    a, b = _checkpoint(tmp_path / "a.pt", seed=1), _checkpoint(tmp_path / "b.pt", seed=2)
    rec = Recorder()
    report = evaluate_corruptions(
        [a, b], tmp_path / "o1", _cfg(tiny_dataset, batch_size=64, protocol="knn"), corrupt_fn=rec
    )
    half = len(rec.calls) // 2
    for (n1, s1, g1, x1), (n2, s2, g2, x2) in zip(rec.calls[:half], rec.calls[half:]):
        assert (n1, s1, g1) == (n2, s2, g2) and torch.equal(x1, x2)
    # 40 val images -> chunks starting at 0 and 32, each with its own seed
    assert [g for n, s, g, _ in rec.calls[:2]] == [
        chunk_seed(0, "gaussian_noise", 1, 0),
        chunk_seed(0, "gaussian_noise", 1, CHUNK),
    ]
    assert set(report.results["checkpoint"]) == {"a", "b"}
    # a smaller batch size and another call: the same corrupted images again
    rec2 = Recorder()
    evaluate_corruptions([a], tmp_path / "o2", _cfg(tiny_dataset, batch_size=32, protocol="knn"), corrupt_fn=rec2)
    first = torch.cat([x for n, s, _, x in rec.calls[:half] if (n, s) == ("fog", 2)])
    again = torch.cat([x for n, s, _, x in rec2.calls if (n, s) == ("fog", 2)])
    assert torch.equal(first, again)
    # and different severities get different noise
    assert not torch.equal(rec.calls[0][3], rec.calls[2][3])


def test_chunked_corruption_with_the_real_package_is_batch_independent():
    corrupt = pytest.importorskip("corruptions").corrupt

    def fn(x, name, severity, generator=None):
        return corrupt(x, name, severity, generator=generator)

    images = torch.randint(0, 256, (2 * CHUNK, 3, 32, 32), dtype=torch.uint8)
    whole = corrupt_images(images, 0, "shot_noise", 3, fn)
    parts = torch.cat(
        [
            corrupt_images(images[:CHUNK], 0, "shot_noise", 3, fn),
            corrupt_images(images[CHUNK:], CHUNK, "shot_noise", 3, fn),
        ]
    )
    assert torch.equal(whole, parts) and not torch.equal(whole, images)
    with pytest.raises(ValueError):
        corrupt_images(images, 5, "shot_noise", 3, fn)


def test_baseline_run_of_the_same_checkpoint_gives_ce_of_one(tmp_path, tiny_dataset):
    ckpt = _checkpoint(tmp_path / "m.pt")
    first = evaluate_corruptions([ckpt], tmp_path / "ref", _cfg(tiny_dataset), corrupt_fn=Recorder())
    report = evaluate_corruptions(
        [ckpt],
        tmp_path / "cmp",
        _cfg(tiny_dataset, baseline=str(tmp_path / "ref" / "results.csv")),
        corrupt_fn=Recorder(),
    )
    assert torch.equal(torch.tensor(first.results["top1"].values), torch.tensor(report.results["top1"].values))
    assert report.summary["ce"].tolist() == pytest.approx([1.0] * len(report.summary))
    assert report.normalisation.startswith("baseline m")
    agg = report.aggregates["m"]["knn"]
    assert agg["mCE"] == pytest.approx(1.0)
    assert "m:knn CE %" in report.table.columns and "mCE" in set(report.table["row"])


def test_default_data_is_the_checkpoints_recorded_dataset_else_the_embedded_one(tmp_path, tiny_dataset, monkeypatch):
    recorded = _checkpoint(tmp_path / "rec.pt", data={"root": str(tiny_dataset), "image_size": 32})
    cfg = dict(corruptions="fog", severities="1", device="cpu", protocol="knn")
    msgs = []
    evaluate_corruptions([recorded], tmp_path / "o1", EvalConfig(**cfg), corrupt_fn=_identity, announce=msgs.append)
    assert json.loads((tmp_path / "o1" / "summary.json").read_text())["settings"]["data"] == str(tiny_dataset)
    assert any("trained on" in m for m in msgs)
    import fdbench.synthetic

    monkeypatch.setattr(fdbench.synthetic, "default_dataset", lambda announce=None: tiny_dataset)
    bare = _checkpoint(tmp_path / "bare.pt")
    report = evaluate_corruptions([bare], tmp_path / "o2", EvalConfig(**cfg), corrupt_fn=_identity)
    assert report.results["n"].iloc[0] == 40


def test_changed_settings_or_checkpoint_refuse_to_resume(tmp_path, tiny_dataset):
    from fdbench.errors import FdbenchError

    ckpt = _checkpoint(tmp_path / "m.pt")
    evaluate_corruptions([ckpt], tmp_path / "out", _cfg(tiny_dataset, severities="1"), corrupt_fn=_identity)
    with pytest.raises(FdbenchError, match="other settings"):
        evaluate_corruptions([ckpt], tmp_path / "out", _cfg(tiny_dataset, severities="1", seed=3), corrupt_fn=_identity)
    _checkpoint(ckpt, seed=5)  # retrained file under the same name
    with pytest.raises(FdbenchError, match="checksum differs"):
        evaluate_corruptions([ckpt], tmp_path / "out", _cfg(tiny_dataset, severities="1"), corrupt_fn=_identity)
    report = evaluate_corruptions(
        [ckpt], tmp_path / "out", _cfg(tiny_dataset, severities="1", overwrite=True), corrupt_fn=_identity
    )
    assert report.computed_cells == 3


def test_checkpoint_labels():
    assert checkpoint_labels(
        ["runs/a/final.pt", "runs/b/final.pt", "x/dino.pt", "y/dino.pt", "runs/a/checkpoints/e10.pt"]
    ) == ["a", "b", "dino", "dino-2", "a-e10"]


def _cli(argv, capsys):
    with pytest.raises(SystemExit) as exc:
        main(argv)
    captured = capsys.readouterr()
    return exc.value.code, captured.out, captured.err


def test_cli_runs_the_real_corruptions_and_prints_the_table(tmp_path, tiny_dataset, capsys):
    pytest.importorskip("corruptions")
    ckpt = _checkpoint(tmp_path / "m.pt")
    code, out, err = _cli(
        [
            "eval-corruptions",
            str(ckpt),
            "--data",
            str(tiny_dataset),
            "--corruptions",
            "gaussian_noise,contrast",
            "--severities",
            "5",
            "--device",
            "cpu",
            "--no-floors",
            "--out",
            str(tmp_path / "ev"),
        ],
        capsys,
    )
    assert code == 0, err
    assert "m:linear top1 %" in out and "gaussian_noise" in out and "contrast" in out
    res = pd.read_csv(tmp_path / "ev" / "results.csv")
    assert len(res) == 2 * 3 and res["top1"].between(0, 1).all()


@pytest.mark.parametrize(
    "make_args, message",
    [
        (lambda p, d: [str(p / "missing.pt"), "--data", str(d)], "checkpoint not found"),
        (lambda p, d: [str(p / "junk.pt"), "--data", str(d)], "cannot read"),
        (lambda p, d: [str(p / "m.pt"), "--data", str(p / "nodata")], "data folder not found"),
        (lambda p, d: [str(p / "m.pt"), "--data", str(d), "--corruptions", "fogg"], "unknown corruption 'fogg'"),
        (lambda p, d: [str(p / "m.pt"), "--data", str(d), "--severities", "0-7"], "severities go from 1 to 5"),
        (lambda p, d: [str(p / "m.pt"), "--data", str(d), "--corrupted-root", str(p)], "corruption folder(s) missing"),
        (lambda p, d: [str(p / "m.pt"), "--data", str(d), "--baseline", str(p / "no.csv")], "baseline file not found"),
        (
            lambda p, d: [str(p / "m.pt"), "--data", str(d), "--n-last-blocks", "5"],
            "--n-last-blocks must be between 1 and 2",
        ),
        (lambda p, d: [str(p / "m.pt"), "--data", str(d), "--protocol", "svm"], "Invalid value for '--protocol'"),
    ],
)
def test_cli_bad_inputs_are_one_line_errors(tmp_path, tiny_dataset, capsys, make_args, message):
    _checkpoint(tmp_path / "m.pt")
    (tmp_path / "junk.pt").write_bytes(b"not a checkpoint")
    code, out, err = _cli(
        ["eval-corruptions", *make_args(tmp_path, tiny_dataset), "--device", "cpu", "--out", str(tmp_path / "ev")],
        capsys,
    )
    assert code == 2
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and message in lines[0], err


@pytest.mark.cuda
def test_cuda_evaluation_matches_cpu(tmp_path, tiny_dataset):
    if not torch.cuda.is_available():
        pytest.skip("needs a CUDA device")
    ckpt = _checkpoint(tmp_path / "m.pt")
    cpu = evaluate_corruptions([ckpt], tmp_path / "cpu", _cfg(tiny_dataset), corrupt_fn=_identity)
    gpu = evaluate_corruptions([ckpt], tmp_path / "gpu", _cfg(tiny_dataset, device="cuda"), corrupt_fn=_identity)
    # bf16 features on CUDA: accuracies agree up to a few of the 40 val images
    diff = (cpu.results["top1"] - gpu.results["top1"]).abs()
    assert diff.max() <= 3 / 40


def test_corrupted_root_folder_is_read_instead_of_corrupting(tmp_path, tiny_dataset):
    import shutil

    ckpt = _checkpoint(tmp_path / "m.pt")
    root = tmp_path / "tiny-c"
    # an ImageNet-C-style folder whose "corrupted" images are the clean val images
    shutil.copytree(tiny_dataset / "val", root / "fog" / "1")

    def never(*args, **kwargs):
        raise AssertionError("corrupt_fn must not be called with --corrupted-root")

    report = evaluate_corruptions(
        [ckpt],
        tmp_path / "out",
        _cfg(tiny_dataset, corruptions="fog", severities="1", corrupted_root=str(root)),
        corrupt_fn=never,
    )
    res = report.results.set_index(["protocol", "corruption"])
    for protocol in ("linear", "knn"):
        assert res.loc[(protocol, "fog"), "top1"] == res.loc[(protocol, "clean"), "top1"]
        assert res.loc[(protocol, "fog"), "n"] == 40


def test_per_image_outcomes_agree_with_results_and_survive_resume(tmp_path, tiny_dataset):
    from analysis.outcomes import Outcomes

    ckpt = _checkpoint(tmp_path / "m.pt")
    out = tmp_path / "out"
    evaluate_corruptions([ckpt], out, _cfg(tiny_dataset), corrupt_fn=Recorder())
    res = pd.read_csv(out / "results.csv")
    outcomes = Outcomes.load(out / "outcomes.npz")
    assert len(outcomes.cells) == len(res)
    for row in res.itertuples():
        correct = outcomes.get((row.checkpoint, row.protocol, row.corruption, int(row.severity)))
        assert len(correct) == row.n and correct.mean() == pytest.approx(row.top1)
    # results.csv rows whose outcomes are missing are recomputed (and only those)
    del outcomes.cells[("m", "knn", "fog", 2)], outcomes.cells[("m", "linear", "fog", 2)]
    outcomes.save(out / "outcomes.npz")
    rec = Recorder()
    report = evaluate_corruptions([ckpt], out, _cfg(tiny_dataset), corrupt_fn=rec)
    assert {(n, s) for n, s, _, _ in rec.calls} == {("fog", 2)} and report.computed_cells == 1
    assert len(Outcomes.load(out / "outcomes.npz").cells) == len(res)


def test_floors_see_the_same_corrupted_pixels_are_kinds_in_results_and_resume(tmp_path, tiny_dataset):
    import torch.nn.functional as F

    from fdbench.data import load_split_tensor

    ckpt = _checkpoint(tmp_path / "m.pt")
    out = tmp_path / "out"
    rec = Recorder()
    evaluate_corruptions([ckpt], out, _cfg(tiny_dataset, floors=True), corrupt_fn=rec)
    res = pd.read_csv(out / "results.csv")
    assert dict(zip(res["checkpoint"], res["kind"])) == {"m": "pretrained", "pixels": "floor", "random-init": "floor"}
    assert len(res) == 3 * 2 * (1 + 2 * 2)
    # every encoder got the identical corrupted batch of each (corruption, severity, chunk seed)
    seen: dict = {}
    for name, severity, seed, images in rec.calls:
        seen.setdefault((name, severity, seed), []).append(images)
    assert len(seen) == 4 * 2 and all(len(v) == 3 for v in seen.values())  # 40 images: 2 chunks per cell
    assert all(torch.equal(v[0], w) for v in seen.values() for w in v[1:])
    summary = pd.read_csv(out / "summary.csv")
    assert set(summary.query("checkpoint == 'pixels'")["kind"]) == {"floor"}
    # the pixels floor's clean kNN accuracy, computed here from its definition
    xtr, ytr, _ = load_split_tensor(str(tiny_dataset), "train", 32, resize=32)
    xva, yva, _ = load_split_tensor(str(tiny_dataset), "val", 32, resize=32)

    def pix(x):  # 32 px: 3 * 32 * 32 < 4096, no pooling; each image's mean removed
        f = x.float().flatten(1) / 255.0
        return F.normalize(f - f.mean(1, keepdim=True), dim=1)

    sims, idx = (pix(xva) @ pix(xtr).T).topk(20, dim=1)
    votes = torch.zeros(len(xva), 4).scatter_add_(1, ytr[idx], (sims / 0.07).exp())
    expected = (votes.argmax(1) == yva).float().mean().item()
    got = res.query("checkpoint == 'pixels' and protocol == 'knn' and corruption == 'clean'")["top1"].item()
    assert got == pytest.approx(expected)
    # differences.csv: the checkpoint against each floor
    diffs = pd.read_csv(out / "differences.csv")
    assert set(zip(diffs["reference"], diffs["checkpoint"])) == {("pixels", "m"), ("random-init", "m")}
    # resume: nothing recomputed, the corruption function is never called again
    rec = Recorder()
    report = evaluate_corruptions([ckpt], out, _cfg(tiny_dataset, floors=True), corrupt_fn=rec)
    assert report.computed_cells == 0 and report.skipped_cells == 3 * 5 and rec.calls == []


def test_floor_pixel_factor_keeps_features_under_4k():
    from analysis.floors import PixelEncoder

    for size in (32, 36, 64, 96, 224):
        enc = PixelEncoder(size)
        assert enc(torch.zeros(2, 3, size, size, dtype=torch.uint8)).shape == (2, enc.dim) and enc.dim < 4096
    assert PixelEncoder(32).factor == 1 and PixelEncoder(224).factor == 7  # 3 * 38^2 = 4332 at 6, 3072 at 7
