"""corruptions.writer and the two CLI commands: layout, manifest, resuming, preview, errors."""

from __future__ import annotations

import csv

import pytest
from PIL import Image

from corruptions.writer import WriterConfig, write_corruptions, write_preview
from fdbench.cli import main


@pytest.fixture(scope="module")
def src(tmp_path_factory):
    from fdbench.synthetic import SyntheticSpec, make_synthetic_dataset

    root = tmp_path_factory.mktemp("wsrc") / "ds"
    make_synthetic_dataset(root, SyntheticSpec(classes=2, train_per_class=1, val_per_class=3, size=32), workers=1)
    return root / "val"


def _files(out):
    return sorted(p.relative_to(out).as_posix() for p in out.rglob("*") if p.is_file() and p.name != "manifest.csv")


def test_layout_manifest_and_resume(src, tmp_path):
    out = tmp_path / "c"
    cfg = WriterConfig(
        corruptions=["gaussian_noise", "pixelate"], severities=(1, 4), batch_size=4, workers=0, resize=False
    )
    s = write_corruptions(src, out, cfg)
    assert s.images == 6 and s.written == 6 * 4 and s.skipped == 0
    files = _files(out)
    assert len(files) == 24
    assert all(f.split("/")[0] in ("gaussian_noise", "pixelate") and f.split("/")[1] in ("1", "4") for f in files)
    with Image.open(out / files[0]) as im:
        assert im.format == "JPEG" and im.size == (32, 32)
    rows = list(csv.DictReader(open(out / "manifest.csv")))
    assert len(rows) == 24 and set(rows[0]) == {"file", "corruption", "severity", "seed", "source"}
    assert {r["file"] for r in rows} == set(files)
    # resume: nothing to do; then a deleted and a truncated file are rewritten identically
    again = write_corruptions(src, out, cfg)
    assert again.written == 0 and again.skipped == 24
    victim, broken = out / files[0], out / files[-1]
    original = victim.read_bytes()
    victim.unlink()
    broken.write_bytes(broken.read_bytes()[:100])  # truncated: no end-of-image marker
    third = write_corruptions(src, out, cfg)
    assert 0 < third.written < 24
    assert victim.read_bytes() == original
    with Image.open(broken) as im:
        im.verify()
    assert not list(out.rglob("*.tmp"))


def test_default_preprocessing_and_png(src, tmp_path):
    out = tmp_path / "p"
    cfg = WriterConfig(corruptions=["contrast"], severities=(2,), batch_size=8, workers=1, format="png")
    write_corruptions(src, out, cfg)
    files = _files(out)
    assert len(files) == 6 and all(f.endswith(".png") for f in files)
    with Image.open(out / files[0]) as im:
        assert im.size == (224, 224)  # Resize(256) + CenterCrop(224)


def test_preview(src, tmp_path):
    paths = write_preview(src, tmp_path, WriterConfig(corruptions=["fog", "frost"], severities=(1, 5), resize=False))
    assert [p.name for p in paths] == ["preview.png", "preview.pdf"]
    with Image.open(paths[0]) as im:
        assert im.width > 3 * 128 and im.height > 2 * 128


def test_cli_make_corruptions_and_errors(src, tmp_path, capsys):
    out = tmp_path / "cli"
    with pytest.raises(SystemExit) as ok:
        main(
            [
                "make-corruptions",
                str(src),
                str(out),
                "--corruptions",
                "noise",
                "--severities",
                "2",
                "--no-resize",
                "--workers",
                "0",
                "--device",
                "cpu",
            ]
        )
    assert ok.value.code == 0
    assert len(_files(out)) == 3 * 6 and (out / "manifest.csv").exists()
    for args, words in (
        (["--corruptions", "rain"], "rain"),
        (["--severities", "0-2"], "1-5"),
        (["--severities", "x"], "severities"),
    ):
        with pytest.raises(SystemExit) as err:
            main(["make-corruptions", str(src), str(out)] + args)
        assert err.value.code == 2
        assert words in capsys.readouterr().err
    with pytest.raises(SystemExit) as err:
        main(["make-corruptions", str(tmp_path / "missing"), str(out)])
    assert err.value.code == 2 and "not found" in capsys.readouterr().err


def test_cli_corruption_fidelity(tmp_path, capsys):
    imgs = tmp_path / "imgs"
    imgs.mkdir()
    import numpy as np

    rng = np.random.default_rng(0)
    yy, xx = np.mgrid[:80, :96]
    for i in range(2):
        arr = np.stack([yy * 3 % 256, xx * 2 % 256, (yy + xx + 40 * i) % 256], -1).astype(np.uint8)
        arr = np.clip(arr + rng.integers(0, 20, arr.shape), 0, 255).astype(np.uint8)
        Image.fromarray(arr).save(imgs / f"im{i}.png")
    with pytest.raises(SystemExit) as ok:
        main(
            [
                "corruption-fidelity",
                "--images",
                str(imgs),
                "--out",
                str(tmp_path / "f"),
                "--size",
                "64",
                "--corruptions",
                "contrast,gaussian_noise",
                "--severities",
                "1,5",
                "--repeats",
                "2",
            ]
        )
    assert ok.value.code == 0
    rows = list(csv.DictReader(open(tmp_path / "f" / "fidelity.csv")))
    assert len(rows) == 4 and {r["corruption"] for r in rows} == {"contrast", "gaussian_noise"}
    assert "cells pass" in capsys.readouterr().err
    with pytest.raises(SystemExit) as err:
        main(["corruption-fidelity", "--images", str(tmp_path / "nope")])
    assert err.value.code == 2
