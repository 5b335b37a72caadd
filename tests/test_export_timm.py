"""``fdbench export --format timm``: timm builds the exported backbone from the folder alone (three
ways) and its features equal fdbench's; timm's own DINOv2 weights load into fdbench."""

from __future__ import annotations

import json

import pytest
import torch

from fdbench.checkpoint import load_backbone, save_checkpoint
from fdbench.cli import main
from fdbench.models import build_backbone

timm = pytest.importorskip("timm")


def _randomised(model):
    # every parameter away from its init (LayerScale 1e-5 would hide the blocks, zero biases the adds)
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(torch.randn(p.shape, generator=g) * (0.3 if p.ndim == 1 else 0.1))
    return model.eval()


def _export(tmp_path, capsys, **kw):
    model = _randomised(build_backbone("vit_pico", img_size=32, patch_size=8, **kw))
    run = tmp_path / "run"
    run.mkdir()
    save_checkpoint(
        {
            "kind": "training",
            "model": model.config.to_dict(),
            "teacher_backbone": model.state_dict(),
            "data": {"root": "/data/tiny", "image_size": 32},
            "curriculum": {"name": "two-stage", "stages": [{"name": "low", "fraction": 0.75, "global_size": 16}]},
        },
        run / "final.pt",
    )
    (run / "summary.json").write_text(
        json.dumps({"preset": "cpu-tiny", "epochs": 2, "flops": {"total_flops": 3e12, "flops_ratio_vs_none": 1.6}})
    )
    with pytest.raises(SystemExit) as exited:
        main(["export", str(run / "final.pt"), "--format", "timm", "--out", str(tmp_path / "timm")])
    assert exited.value.code == 0, capsys.readouterr().err
    return model, tmp_path / "timm"


def _features(model, x):
    with torch.no_grad():
        return model(x)


@pytest.mark.parametrize("kw", [dict(reg_tokens=2), dict(layerscale=None)])
def test_timm_builds_the_export_and_matches_fdbench(tmp_path, capsys, kw):
    ours, out = _export(tmp_path, capsys, **kw)
    assert sorted(p.name for p in out.iterdir()) == ["README.md", "config.json", "model.safetensors"]
    config = json.loads((out / "config.json").read_text())
    assert config["num_classes"] == 0 and config["pretrained_cfg"]["input_size"] == [3, 32, 32]
    from safetensors.torch import load_file

    weights = load_file(out / "model.safetensors")
    assert "mask_token" not in weights and set(weights) == set(ours.state_dict()) - {"mask_token"}

    # 1. the hub-style folder; 2. the name + the file; 3. the name + model_args, weights loaded by hand
    by_folder = timm.create_model(f"local-dir:{out}", pretrained=True).eval()
    by_file = timm.create_model(
        config["architecture"],
        pretrained=True,
        pretrained_cfg_overlay=dict(file=str(out / "model.safetensors")),
        num_classes=0,
        **config["model_args"],
    ).eval()
    by_hand = timm.create_model(config["architecture"], pretrained=False, num_classes=0, **config["model_args"])
    by_hand.load_state_dict(weights, strict=True)
    by_hand.eval()
    for size in (32, 48):  # the stored size, and another one (the same antialiased bicubic resampling)
        x = torch.rand(3, 3, size, size, generator=torch.Generator().manual_seed(size))
        cls, patch = _features(ours, x)
        for theirs in (by_folder, by_file, by_hand):
            torch.testing.assert_close(_features(theirs, x), cls, rtol=1e-5, atol=1e-5)
            with torch.no_grad():
                tokens = theirs.forward_features(x)
            torch.testing.assert_close(tokens[:, theirs.num_prefix_tokens :], patch, rtol=1e-5, atol=1e-5)
    data = timm.data.resolve_data_config({}, model=by_folder)
    assert tuple(data["input_size"]) == (3, 32, 32) and data["interpolation"] == "bicubic"
    assert data["mean"] == pytest.approx((0.485, 0.456, 0.406)) and data["std"] == pytest.approx((0.229, 0.224, 0.225))

    # fdbench reads its own timm export back, and the card describes the run
    back = load_backbone(out / "model.safetensors")
    assert back.source == "timm-export" and back.config == ours.config
    torch.testing.assert_close(_features(back.model, x)[0], cls)
    card = (out / "README.md").read_text()
    assert config["architecture"] in card and "two-stage" in card and "/data/tiny" in card
    assert "3 TFLOPs" in card and "1.60x" in card


@pytest.mark.parametrize("name", ["vit_small_patch14_dinov2", "vit_small_patch14_reg4_dinov2"])
def test_timm_dinov2_weights_load_into_fdbench(tmp_path, name):
    from safetensors.torch import save_file

    theirs = _randomised(timm.create_model(name, pretrained=False, img_size=56, num_classes=0))
    save_file(theirs.state_dict(), tmp_path / "model.safetensors")
    loaded = load_backbone(tmp_path / "model.safetensors")
    assert (loaded.config.arch, loaded.config.patch_size, loaded.config.img_size) == ("vit_small", 14, 56)
    assert loaded.config.reg_tokens == (4 if "reg4" in name else 0)
    x = torch.rand(2, 3, 56, 56, generator=torch.Generator().manual_seed(0))
    torch.testing.assert_close(_features(loaded.model, x)[0], _features(theirs, x), rtol=1e-4, atol=1e-4)


def test_export_errors(tmp_path, capsys):
    _, out = _export(tmp_path, capsys)
    with pytest.raises(SystemExit) as exited:
        main(["export", str(tmp_path / "run" / "final.pt"), "--out", str(out)])  # fdbench format into a folder
    assert exited.value.code == 2 and "is a folder" in capsys.readouterr().err
    (tmp_path / "file").write_text("x")
    with pytest.raises(SystemExit) as exited:
        main(["export", str(tmp_path / "run" / "final.pt"), "--format", "timm", "--out", str(tmp_path / "file")])
    assert exited.value.code == 2 and "is a file" in capsys.readouterr().err
