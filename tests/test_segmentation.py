"""eval-segmentation: the metrics from their definition, the probe, the loaders, the embedded masks, the CLI."""

from __future__ import annotations

import hashlib
import shutil

import numpy as np
import pytest
import torch
from PIL import Image

from analysis.segmentation_probe import HeadConfig, image_counts, predict, scores, train_head
from fdbench.checkpoint import save_checkpoint
from fdbench.cli import main
from fdbench.errors import FdbenchError
from fdbench.models import build_backbone
from fdbench.segmentation_data import IGNORE, load_segmentation_split, open_segmentation
from fdbench.synthetic import CLASS_NAMES, SyntheticSpec, ensure_masks, make_synthetic_dataset


def test_miou_and_pixel_accuracy_match_a_confusion_matrix_with_ignored_pixels():
    rng = np.random.default_rng(0)
    k, n = 5, 6
    labels = rng.integers(0, k, size=(n, 9, 7))
    labels[rng.random(labels.shape) < 0.2] = IGNORE
    labels[labels == 3] = 4  # class 3 absent from the labels ...
    pred = rng.integers(0, k, size=(n, 9, 7))
    pred[pred == 2] = 1  # ... class 2 never predicted
    # the definition: a K x K confusion matrix over the labelled pixels
    valid = labels != IGNORE
    conf = np.bincount(k * labels[valid] + pred[valid], minlength=k * k).reshape(k, k)
    inter = np.diag(conf)
    union = conf.sum(0) + conf.sum(1) - inter
    iou = [inter[c] / union[c] for c in range(k) if union[c] > 0]
    counts = image_counts(torch.from_numpy(pred).to(torch.uint8), torch.from_numpy(labels).to(torch.uint8), k)
    got = scores(*(counts[key].sum(0) for key in ("inter", "label", "pred")))
    assert got["miou"] == pytest.approx(100 * np.mean(iou))
    assert got["pixel_acc"] == pytest.approx(100 * inter.sum() / conf.sum())
    assert got["iou"][1] == pytest.approx(100 * inter[1] / union[1])
    assert counts["inter"].shape == (n, k)  # per image: they add up to the totals
    assert counts["label"].sum() == valid.sum()


def test_linear_head_separates_features_that_encode_the_label():
    g = torch.Generator().manual_seed(0)
    n, k, grid, patch = 48, 4, 4, 4
    # one class per 2x2 block of patches: the bilinear upsampling mixes logits only across block edges
    cls = torch.randint(0, k, (n, grid // 2, grid // 2), generator=g).repeat_interleave(2, 1).repeat_interleave(2, 2)
    maps = torch.nn.functional.one_hot(cls, k).permute(0, 3, 1, 2).float() * 2
    maps = torch.cat([maps, torch.randn(n, 4, grid, grid, generator=g)], 1)  # plus 4 channels of noise
    labels = cls.repeat_interleave(patch, 1).repeat_interleave(patch, 2).to(torch.uint8)
    labels[:, 0, :] = IGNORE
    head = train_head(maps.half(), labels, k, HeadConfig(epochs=30, lr=1e-2), seed=0, device="cpu")
    pred = predict(head, maps.half(), (grid * patch, grid * patch))
    s = scores(*(v.sum(0) for v in image_counts(pred, labels, k).values()))
    assert s["miou"] > 95 and s["pixel_acc"] > 97


def _jpeg(path, w, h, seed=0):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.random.default_rng(seed).integers(0, 255, (h, w, 3), dtype=np.uint8)).save(path)


def test_ade20k_loader_shifts_labels_and_crops_image_and_labels_alike(tmp_path):
    base = tmp_path / "ADEChallengeData2016"
    raw = np.random.default_rng(1).integers(0, 151, (16, 24)).astype(np.uint8)  # h 16, w 24
    for split in ("training", "validation"):
        _jpeg(base / "images" / split / "ADE_1.jpg", 24, 16)
        (base / "annotations" / split).mkdir(parents=True)
        Image.fromarray(raw, mode="L").save(base / "annotations" / split / "ADE_1.png")
    source = open_segmentation(tmp_path, "auto", "val")
    assert source.name == "ade20k" and len(source.classes) == 150
    images, labels = load_segmentation_split(source, 16)
    assert images.shape == (1, 3, 16, 16) and labels.shape == (1, 16, 16)
    crop = raw[:, 4:20].astype(int)  # the shorter side is already 16: the centre 16 columns
    expected = np.where(crop == 0, IGNORE, crop - 1)
    assert np.array_equal(labels[0].numpy(), expected)


def _voc(root, label: np.ndarray, mode="P"):
    base = root / "VOCdevkit" / "VOC2012"
    (base / "ImageSets" / "Segmentation").mkdir(parents=True)
    (base / "SegmentationClass").mkdir(parents=True)
    _jpeg(base / "JPEGImages" / "2007_000001.jpg", label.shape[1], label.shape[0])
    img = Image.fromarray(label, mode="L")
    if mode == "P":
        img = img.convert("P")
        img.putpalette([v for i in range(256) for v in ((i * 7) % 256, (i * 13) % 256, (i * 29) % 256)])
    else:
        img = img.convert(mode)
    img.save(base / "SegmentationClass" / "2007_000001.png")
    for split in ("train", "val"):
        (base / "ImageSets" / "Segmentation" / f"{split}.txt").write_text("2007_000001\n")
    return base


def test_voc_loader_reads_palette_indices_and_keeps_255_as_void(tmp_path):
    label = np.zeros((20, 20), np.uint8)
    label[5:15, 5:15] = 15  # a person
    label[4, 4:16] = label[15, 4:16] = label[4:16, 4] = label[4:16, 15] = 255  # the void border
    _voc(tmp_path, label)
    source = open_segmentation(tmp_path, "voc", "train")
    assert source.classes[15] == "person" and len(source.classes) == 21
    images, labels = load_segmentation_split(source, 20)
    assert np.array_equal(labels[0].numpy(), label)
    counts = image_counts(labels, labels, 21)
    assert counts["label"].sum() == (label != 255).sum()


def test_voc_colour_labels_are_refused(tmp_path):
    _voc(tmp_path, np.zeros((8, 8), np.uint8), mode="RGB")
    source = open_segmentation(tmp_path, "voc", "val")
    with pytest.raises(FdbenchError, match="class indices"):
        load_segmentation_split(source, 8)


SMALL = SyntheticSpec(classes=3, train_per_class=3, val_per_class=2, size=32, seed=5)


def _digest(folder):
    return {
        p.relative_to(folder).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(folder.rglob("*.png"))
    }


def test_embedded_masks_are_deterministic_and_cover_the_shape(tmp_path):
    a = make_synthetic_dataset(tmp_path / "a", SMALL, workers=1)
    b = make_synthetic_dataset(tmp_path / "b", SMALL, workers=2)
    assert _digest(a / "masks") == _digest(b / "masks") and len(_digest(a / "masks")) == 3 * 5
    for c, name in enumerate(CLASS_NAMES[:3]):
        for path in sorted((a / "train" / name).glob("*.png")):
            img = np.asarray(Image.open(path), float).mean(-1)
            mask = np.asarray(Image.open(a / "masks" / "train" / name / path.name))
            assert set(np.unique(mask)) == {0, c + 1}
            # the shape's grey level differs from the background's by at least the minimum contrast
            # (0.25), less the blur's and the gradient's share: the mask sits on the shape
            assert abs(img[mask > 0].mean() - img[mask == 0].mean()) > 0.1 * 255
            if name == "disk":  # radius 0.55 x scale 0.55-1.0 of the half width
                assert np.pi * (0.55 * 0.5) ** 2 / 4 <= (mask > 0).mean() <= np.pi * 0.55**2 / 4 + 0.02


def test_old_dataset_without_masks_gets_them_and_its_images_stay(tmp_path):
    root = make_synthetic_dataset(tmp_path / "d", SMALL, workers=1)
    masks, images = _digest(root / "masks"), {s: _digest(root / s) for s in ("train", "val")}
    shutil.rmtree(root / "masks")  # as written before the masks existed
    ensure_masks(root, workers=1)
    assert _digest(root / "masks") == masks
    assert {s: _digest(root / s) for s in ("train", "val")} == images
    shutil.rmtree(root / "masks")
    Image.new("RGB", (32, 32)).save(next((root / "val" / "disk").glob("*.png")))  # not what it renders
    with pytest.raises(FdbenchError, match="make-dataset --overwrite"):
        ensure_masks(root, workers=1)


def _cli(argv, capsys):
    with pytest.raises(SystemExit) as exc:
        main([str(a) for a in argv])
    captured = capsys.readouterr()
    return exc.value.code, captured.out, captured.err


@pytest.fixture
def pico(tmp_path):
    torch.manual_seed(0)
    model = build_backbone("vit_pico", img_size=32, patch_size=8)
    path = tmp_path / "pico.pt"
    save_checkpoint({"kind": "backbone", "model": model.config.to_dict(), "teacher_backbone": model.state_dict()}, path)
    return path


def test_cli_runs_resumes_and_refuses_other_settings(pico, tiny_dataset, tmp_path, capsys):
    argv = ["eval-segmentation", pico, "--data", tiny_dataset, "--out", tmp_path / "ev", "--device", "cpu"]
    argv += ["--corruptions", "gaussian_noise,elastic_transform", "--severities", "2", "--epochs", "1"]
    code, out, err = _cli(argv, capsys)
    assert code == 0, err
    assert "leaving out elastic_transform" in err and "4 cell(s) computed" in err
    import pandas as pd

    results = pd.read_csv(tmp_path / "ev" / "results.csv")
    assert set(results["checkpoint"]) == {"pico", "random-init"} and len(results) == 4
    assert results["miou"].between(0, 100).all() and (results["images"] == 40).all()
    per_class = pd.read_csv(tmp_path / "ev" / "per_class.csv")
    assert len(per_class) == 4 * 5  # background + 4 shapes per cell
    code, _, err = _cli(argv, capsys)
    assert code == 0 and "0 cell(s) computed, 4 reused" in err
    from analysis.report import compare

    report = compare([pico], tmp_path / "report", segmentation=[tmp_path / "ev"], figures=False)
    table = report.tables["segmentation"]
    row = table.iloc[0]
    assert list(table["run"]) == ["pico"] and row["corrupted_cells"] == 1 and row["floor_clean_miou"] >= 0
    assert row["minus_floor_ci"].startswith("[") and "eval-segmentation" not in set(report.missing["piece"])
    assert "Semantic segmentation" in (tmp_path / "report" / "report.md").read_text()
    elsewhere = compare([pico], tmp_path / "report2", figures=False)  # nothing beside it: a missing piece
    assert "fdbench eval-segmentation" in " ".join(elsewhere.missing["how_to_get_it"])
    code, _, err = _cli([*argv, "--n-last-blocks", "2"], capsys)
    assert code == 2 and err.splitlines()[-1].startswith("error: ") and "other settings (n_last_blocks)" in err


def test_cli_bad_input_is_one_line_exit_2(pico, tmp_path, capsys):
    cases = [
        (["eval-segmentation", tmp_path / "missing.pt"], "checkpoint not found"),
        (["eval-segmentation", pico, "--data", tmp_path / "nowhere"], "data folder not found"),
        (["eval-segmentation", pico, "--data", tmp_path, "--dataset", "voc"], "no Pascal VOC 2012 layout"),
        (["eval-segmentation", pico, "--data", tmp_path], "neither ADE20K"),
        (["eval-segmentation", pico, "--corruptions", "fog2"], "unknown corruption"),
        (["eval-segmentation", pico, "--epochs", "0"], "--epochs must be at least 1"),
    ]
    for argv, message in cases:
        code, _, err = _cli([*argv, "--out", tmp_path / "ev"], capsys)
        error = [line for line in err.splitlines() if line.startswith("error: ")]
        assert code == 2 and len(error) == 1 and message in error[0] and "Traceback" not in err, (argv, err)


def test_an_official_dinov2_pth_gets_a_segmentation_probe(tiny_dataset, tmp_path, capsys):
    # hub layout of ViT-S/14 (native 56 px); at --size 56 its patch maps are 4x4, labels 56x56
    from conftest import official_dinov2_state

    pth = tmp_path / "dinov2_vits14_pretrain.pth"
    torch.save(official_dinov2_state(grid=4), pth)
    argv = ["eval-segmentation", pth, "--data", tiny_dataset, "--out", tmp_path / "ev", "--device", "cpu"]
    code, _, err = _cli([*argv, "--corruptions", "none", "--epochs", "1", "--size", "56", "--no-floors"], capsys)
    assert code == 0, err
    import pandas as pd

    results = pd.read_csv(tmp_path / "ev" / "results.csv")
    assert list(results["checkpoint"]) == ["dinov2_vits14_pretrain"] and results["miou"].between(0, 100).all()
