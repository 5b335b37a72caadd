import json

import pytest
import torch

from fdbench.checkpoint import export_backbone, load_backbone, read_checkpoint, save_checkpoint
from fdbench.errors import FdbenchError
from fdbench.models import build_backbone


def _backbone_ckpt(path, kind="backbone", **extra):
    torch.manual_seed(0)
    model = build_backbone("vit_pico", img_size=32, patch_size=8)
    save_checkpoint({"kind": kind, "model": model.config.to_dict(),
                     "teacher_backbone": model.state_dict(), **extra}, path)
    return model


def _same_outputs(a, b, size=32):
    x = torch.rand(2, 3, size, size)
    with torch.no_grad():
        ya, yb = a.eval()(x), b.eval()(x)
    torch.testing.assert_close(ya[0], yb[0])
    torch.testing.assert_close(ya[1], yb[1])


def test_training_checkpoint_roundtrip(tmp_path):
    model = _backbone_ckpt(tmp_path / "final.pt", kind="training", data={"root": "/data/x", "image_size": 32},
                           epoch=3, rng={"python": [1, 2, 3]})
    raw = torch.load(tmp_path / "final.pt", weights_only=True)  # the documented contract
    assert raw["format"] == "fdbench/1" and raw["model"]["arch"] == "vit_pico"
    loaded = load_backbone(tmp_path / "final.pt")
    assert loaded.source == "fdbench-training" and loaded.meta["data"]["root"] == "/data/x"
    _same_outputs(model, loaded.model)
    # a run folder resolves to its final.pt
    assert load_backbone(tmp_path).meta["epoch"] == 3


def test_non_primitive_state_is_refused(tmp_path):
    import numpy as np

    model = build_backbone("vit_pico", img_size=32, patch_size=8)
    with pytest.raises(TypeError, match="ndarray"):
        save_checkpoint({"kind": "training", "model": model.config.to_dict(),
                         "teacher_backbone": model.state_dict(), "rng": np.zeros(3)}, tmp_path / "x.pt")
    assert not (tmp_path / "x.pt").exists()


def test_safetensors_export_roundtrip(tmp_path):
    model = _backbone_ckpt(tmp_path / "ckpt.pt")
    weights, sidecar = export_backbone(tmp_path / "ckpt.pt", tmp_path / "backbone.safetensors")
    assert json.loads(sidecar.read_text())["model"]["patch_size"] == 8
    loaded = load_backbone(weights)
    assert loaded.source == "safetensors"
    _same_outputs(model, loaded.model)


def _official_dinov2_state(dim=384, depth=12, heads=6, patch=14, grid=37, registers=0, chunks=0):
    """A state dict with the key names and shapes of DINOv2's DinoVisionTransformer (hub layout)."""
    g = torch.Generator().manual_seed(1)
    r = lambda *s: torch.randn(*s, generator=g) * 0.02
    sd = {"cls_token": r(1, 1, dim), "pos_embed": r(1, grid * grid + 1, dim), "mask_token": r(1, dim),
          "patch_embed.proj.weight": r(dim, 3, patch, patch), "patch_embed.proj.bias": r(dim),
          "norm.weight": 1 + r(dim), "norm.bias": r(dim)}
    if registers:
        sd["register_tokens"] = r(1, registers, dim)
    for i in range(depth):
        p = f"blocks.{i // (depth // chunks)}.{i}." if chunks else f"blocks.{i}."
        sd.update({p + "norm1.weight": 1 + r(dim), p + "norm1.bias": r(dim),
                   p + "attn.qkv.weight": r(3 * dim, dim), p + "attn.qkv.bias": r(3 * dim),
                   p + "attn.proj.weight": r(dim, dim), p + "attn.proj.bias": r(dim),
                   p + "ls1.gamma": r(dim), p + "norm2.weight": 1 + r(dim), p + "norm2.bias": r(dim),
                   p + "mlp.fc1.weight": r(4 * dim, dim), p + "mlp.fc1.bias": r(4 * dim),
                   p + "mlp.fc2.weight": r(dim, 4 * dim), p + "mlp.fc2.bias": r(dim), p + "ls2.gamma": r(dim)})
    return sd


def _reference_cls(sd, x, dim, depth, heads, patch, registers=0):
    """DINOv2's forward written out independently (pre-norm blocks with LayerScale) at native size."""
    F = torch.nn.functional
    tokens = F.conv2d(x, sd["patch_embed.proj.weight"], sd["patch_embed.proj.bias"], stride=patch)
    tokens = tokens.flatten(2).transpose(1, 2)
    h = torch.cat([sd["cls_token"].expand(len(x), -1, -1), tokens], 1) + sd["pos_embed"]
    if registers:
        h = torch.cat([h[:, :1], sd["register_tokens"].expand(len(x), -1, -1), h[:, 1:]], 1)
    key = lambda i, name: next(k for k in sd if k.endswith(f".{i}.{name}") or k == f"blocks.{i}.{name}")
    for i in range(depth):
        w = lambda name: sd[key(i, name)]
        y = F.layer_norm(h, (dim,), w("norm1.weight"), w("norm1.bias"), eps=1e-6)
        qkv = F.linear(y, w("attn.qkv.weight"), w("attn.qkv.bias")).view(len(x), -1, 3, heads, dim // heads)
        q, k, v = qkv.permute(2, 0, 3, 1, 4)
        att = (q @ k.transpose(-1, -2) / (dim // heads) ** 0.5).softmax(-1) @ v
        att = att.transpose(1, 2).reshape(len(x), -1, dim)
        h = h + w("ls1.gamma") * F.linear(att, w("attn.proj.weight"), w("attn.proj.bias"))
        y = F.layer_norm(h, (dim,), w("norm2.weight"), w("norm2.bias"), eps=1e-6)
        y = F.linear(F.gelu(F.linear(y, w("mlp.fc1.weight"), w("mlp.fc1.bias"))), w("mlp.fc2.weight"), w("mlp.fc2.bias"))
        h = h + w("ls2.gamma") * y
    return F.layer_norm(h, (dim,), sd["norm.weight"], sd["norm.bias"], eps=1e-6)[:, 0]


@pytest.mark.parametrize("registers,chunks", [(0, 0), (4, 4)])
def test_official_dinov2_backbone(tmp_path, registers, chunks):
    # ViT-S/14 layout at a small native grid (4x4 = 56 px) so the reference forward is cheap
    sd = _official_dinov2_state(grid=4, registers=registers, chunks=chunks)
    torch.save(sd, tmp_path / "dinov2_vits14_pretrain.pth")
    loaded = load_backbone(tmp_path / "dinov2_vits14_pretrain.pth")
    cfg = loaded.config
    assert loaded.source == "dinov2-official"
    assert (cfg.arch, cfg.patch_size, cfg.img_size, cfg.reg_tokens) == ("vit_small", 14, 56, registers)
    x = torch.rand(2, 3, 56, 56)
    with torch.no_grad():
        ours = loaded.model(x)[0]
    torch.testing.assert_close(ours, _reference_cls(sd, x, 384, 12, 6, 14, registers), rtol=1e-4, atol=1e-4)
    # other sizes work through positional-embedding interpolation
    assert loaded.model(torch.rand(1, 3, 28, 42))[1].shape == (1, 6, 384)


def test_unrecognised_files_get_clear_errors(tmp_path):
    (tmp_path / "junk.pt").write_bytes(b"this is not a checkpoint")
    with pytest.raises(FdbenchError, match="expected an fdbench checkpoint"):
        load_backbone(tmp_path / "junk.pt")
    torch.save({"weights": torch.ones(3)}, tmp_path / "other.pt")
    with pytest.raises(FdbenchError, match="neither an fdbench checkpoint nor a DINOv2"):
        load_backbone(tmp_path / "other.pt")
    with pytest.raises(FdbenchError, match="not found"):
        load_backbone(tmp_path / "missing.pt")
    with pytest.raises(FdbenchError, match="not an fdbench checkpoint"):
        read_checkpoint(tmp_path / "other.pt")
    (tmp_path / "bad.safetensors").write_bytes(b"\x00" * 16)
    with pytest.raises(FdbenchError, match="safetensors"):
        load_backbone(tmp_path / "bad.safetensors")
    model = build_backbone("vit_pico", img_size=32, patch_size=8)
    state = {"kind": "backbone", "model": {**model.config.to_dict(), "arch": "vit_nano"},
             "teacher_backbone": model.state_dict()}
    save_checkpoint(state, tmp_path / "mismatch.pt")
    with pytest.raises(FdbenchError, match="does not match"):
        load_backbone(tmp_path / "mismatch.pt")
