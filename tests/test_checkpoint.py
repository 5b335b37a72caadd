import json
import math

import numpy as np
import pytest
import torch
from PIL import Image

from fdbench.checkpoint import export_backbone, load_backbone, read_checkpoint, save_checkpoint
from fdbench.errors import FdbenchError
from fdbench.models import build_backbone
from conftest import official_dinov2_state


def _backbone_ckpt(path, kind="backbone", **extra):
    torch.manual_seed(0)
    model = build_backbone("vit_pico", img_size=32, patch_size=8)
    save_checkpoint(
        {"kind": kind, "model": model.config.to_dict(), "teacher_backbone": model.state_dict(), **extra}, path
    )
    return model


def _same_outputs(a, b, size=32):
    x = torch.rand(2, 3, size, size)
    with torch.no_grad():
        ya, yb = a.eval()(x), b.eval()(x)
    torch.testing.assert_close(ya[0], yb[0])
    torch.testing.assert_close(ya[1], yb[1])


def test_training_checkpoint_roundtrip(tmp_path):
    model = _backbone_ckpt(
        tmp_path / "final.pt",
        kind="training",
        data={"root": "/data/x", "image_size": 32},
        epoch=3,
        rng={"python": [1, 2, 3]},
    )
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
        save_checkpoint(
            {
                "kind": "training",
                "model": model.config.to_dict(),
                "teacher_backbone": model.state_dict(),
                "rng": np.zeros(3),
            },
            tmp_path / "x.pt",
        )
    assert not (tmp_path / "x.pt").exists()


def test_safetensors_export_roundtrip(tmp_path):
    model = _backbone_ckpt(tmp_path / "ckpt.pt")
    weights, sidecar = export_backbone(tmp_path / "ckpt.pt", tmp_path / "backbone.safetensors")
    assert json.loads(sidecar.read_text())["model"]["patch_size"] == 8
    loaded = load_backbone(weights)
    assert loaded.source == "safetensors"
    _same_outputs(model, loaded.model)


def _reference_tokens(sd, x, dim, depth, heads, patch, registers=0, pos_embed=None):
    """DINOv2's forward written out independently (pre-norm blocks with LayerScale), all tokens after
    the final norm; ``pos_embed`` [1, 1 + h*w, D] is the table at the input's grid (native if None)."""
    F = torch.nn.functional
    tokens = F.conv2d(x, sd["patch_embed.proj.weight"], sd["patch_embed.proj.bias"], stride=patch)
    tokens = tokens.flatten(2).transpose(1, 2)
    pos = sd["pos_embed"] if pos_embed is None else pos_embed
    h = torch.cat([sd["cls_token"].expand(len(x), -1, -1), tokens], 1) + pos
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
        y = F.linear(
            F.gelu(F.linear(y, w("mlp.fc1.weight"), w("mlp.fc1.bias"))), w("mlp.fc2.weight"), w("mlp.fc2.bias")
        )
        h = h + w("ls2.gamma") * y
    return F.layer_norm(h, (dim,), sd["norm.weight"], sd["norm.bias"], eps=1e-6)


def _reference_cls(sd, x, dim, depth, heads, patch, registers=0):
    return _reference_tokens(sd, x, dim, depth, heads, patch, registers)[:, 0]


def _cubic_matrix(n_in, n_out, scale, a=-0.75):
    """[n_out, n_in] weights of 1-D bicubic resampling by ``scale`` (half-pixel centres, no antialiasing,
    border taps clamped): output i samples the input at (i + 0.5) / scale - 0.5 (Keys' cubic, a=-0.75)."""

    def k(t):
        t = abs(t)
        if t <= 1:
            return (a + 2) * t**3 - (a + 3) * t**2 + 1
        return a * t**3 - 5 * a * t**2 + 8 * a * t - 4 * a if t < 2 else 0.0

    m = np.zeros((n_out, n_in))
    for i in range(n_out):
        src = (i + 0.5) / scale - 0.5
        base = math.floor(src)
        for tap in range(base - 1, base + 3):
            m[i, min(max(tap, 0), n_in - 1)] += k(src - tap)
    return m


def _official_table(pos_embed, grid, registers):
    """The position table the official DINOv2 hub model adds at patch grid ``grid`` (rows, cols).

    Without registers: bicubic by scale factor (grid + 0.1) / native per axis, output size
    floor(native * scale), no antialiasing. With registers: resize to the grid, antialiased bicubic
    (PIL's BICUBIC filter on float images is the same antialiased a=-0.5 kernel)."""
    native = math.isqrt(pos_embed.shape[1] - 1)
    table = pos_embed[0, 1:].reshape(native, native, -1).double().numpy()
    if registers:
        out = np.stack(
            [
                np.asarray(
                    Image.fromarray(table[..., c].astype(np.float32), mode="F").resize(
                        (grid[1], grid[0]), Image.Resampling.BICUBIC
                    )
                )
                for c in range(table.shape[-1])
            ],
            -1,
        )
    else:
        scales = [(g + 0.1) / native for g in grid]
        rows = _cubic_matrix(native, math.floor(native * scales[0]), scales[0])
        cols = _cubic_matrix(native, math.floor(native * scales[1]), scales[1])
        out = np.einsum("ai,ijc,bj->abc", rows, table, cols)
    assert out.shape[:2] == tuple(grid)
    patches = torch.from_numpy(out).float().reshape(1, -1, table.shape[-1])
    return torch.cat([pos_embed[:, :1], patches], 1)


@pytest.mark.parametrize("registers", [0, 4])
def test_official_dinov2_follows_its_own_position_interpolation(tmp_path, registers):
    # the released models store a 37x37 table (518 px); evaluate at 224, 112 and a non-square 98 x 154
    sd = official_dinov2_state(grid=37, registers=registers)
    # a smooth table, like the trained ones: the two rules then differ by percents, not by noise
    yy, xx = torch.meshgrid(torch.linspace(-1, 1, 37), torch.linspace(-1, 1, 37), indexing="ij")
    freqs = torch.randn(384, 2, generator=torch.Generator().manual_seed(3)) * 3
    smooth = torch.sin(freqs[:, :1, None] * yy + freqs[:, 1:, None] * xx).permute(1, 2, 0).reshape(1, -1, 384)
    sd["pos_embed"] = torch.cat([sd["pos_embed"][:, :1], 0.05 * smooth], 1)
    torch.save(sd, tmp_path / "dinov2_vits14_pretrain.pth")
    loaded = load_backbone(tmp_path / "dinov2_vits14_pretrain.pth")
    cfg = loaded.config
    assert (cfg.pos_interp_offset, cfg.pos_interp_antialias) == ((0.0, True) if registers else (0.1, False))
    for h, w in ((224, 224), (112, 112), (98, 154)):
        x = torch.rand(1, 3, h, w, generator=torch.Generator().manual_seed(h + w))
        table = _official_table(sd["pos_embed"], (h // 14, w // 14), registers)
        with torch.no_grad():
            ours = loaded.model(x)[1]
        ref = _reference_tokens(sd, x, 384, 12, 6, 14, registers, pos_embed=table)[:, 1 + registers :]
        torch.testing.assert_close(ours, ref, rtol=1e-4, atol=2e-4)
    if not registers:
        # and the size-based antialiased rule (timm's) would not have matched: the test can fail
        timm_rule = (
            torch.nn.functional.interpolate(
                sd["pos_embed"][:, 1:].reshape(1, 37, 37, 384).permute(0, 3, 1, 2),
                size=(8, 8),
                mode="bicubic",
                antialias=True,
            )
            .permute(0, 2, 3, 1)
            .reshape(1, -1, 384)
        )
        official = _official_table(sd["pos_embed"], (8, 8), 0)[:, 1:]
        assert (timm_rule - official).norm() / official.norm() > 0.05


@pytest.mark.parametrize("registers,chunks", [(0, 0), (4, 4)])
def test_official_dinov2_backbone(tmp_path, registers, chunks):
    # ViT-S/14 layout at a small native grid (4x4 = 56 px) so the reference forward is cheap
    sd = official_dinov2_state(grid=4, registers=registers, chunks=chunks)
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
    state = {
        "kind": "backbone",
        "model": {**model.config.to_dict(), "arch": "vit_nano"},
        "teacher_backbone": model.state_dict(),
    }
    save_checkpoint(state, tmp_path / "mismatch.pt")
    with pytest.raises(FdbenchError, match="does not match"):
        load_backbone(tmp_path / "mismatch.pt")
