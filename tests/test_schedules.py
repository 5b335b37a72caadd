"""Schedules' endpoints and shapes, the sqrt lr rule, parameter groups and their application."""

from __future__ import annotations

import math

import pytest
import torch

from fdbench.models import build_backbone
from pretrain.heads import DINOHead
from pretrain.schedules import (
    apply_schedules,
    cosine_schedule,
    layer_id,
    linear_warmup_then_constant,
    param_groups,
    scaled_lr,
)


def test_cosine_schedule_endpoints_with_freeze_and_warmup():
    s = cosine_schedule(base=4e-3, final=1e-6, total_iters=100, warmup_iters=10, warmup_start=0.0, freeze_iters=5)
    assert s.shape == (100,) and s.dtype == torch.float64
    assert (s[:5] == 0).all()  # frozen
    assert s[5].item() == 0.0  # warm-up starts at warmup_start
    assert s[14].item() == pytest.approx(4e-3)  # last warm-up value is the peak
    assert s[15].item() == pytest.approx(4e-3)  # the cosine starts at the peak too
    # warm-up is linear: equal steps of base / (warmup - 1)
    assert torch.allclose(s[5:15], torch.linspace(0, 4e-3, 10, dtype=torch.float64))
    # the cosine part, by the formula: n = 85 iterations, i = 0..84
    i = torch.arange(85, dtype=torch.float64)
    expected = 1e-6 + 0.5 * (4e-3 - 1e-6) * (1 + torch.cos(math.pi * i / 85))
    assert torch.allclose(s[15:], expected)
    assert s[-1].item() == pytest.approx(1e-6, abs=2e-6)  # approaches the final value
    assert (s[15:].diff() <= 0).all()  # and decreases monotonically


def test_cosine_schedule_momentum_and_weight_decay_recipes():
    momentum = cosine_schedule(0.992, 1.0, 50)
    assert momentum[0].item() == pytest.approx(0.992)
    assert momentum[-1].item() == pytest.approx(1.0, abs=1e-5) and (momentum.diff() >= 0).all()
    wd = cosine_schedule(0.04, 0.4, 50)
    assert wd[0].item() == pytest.approx(0.04) and wd[25].item() == pytest.approx(0.22)  # midpoint
    assert wd[-1].item() == pytest.approx(0.4, abs=1e-3)


def test_cosine_schedule_warmup_longer_than_run_is_shortened():
    s = cosine_schedule(1.0, 0.0, total_iters=6, warmup_iters=10, freeze_iters=2)
    assert s.tolist() == pytest.approx([0, 0, 0, 1 / 3, 2 / 3, 1.0])
    assert cosine_schedule(1.0, 0.0, total_iters=0).shape == (0,)


def test_teacher_temperature_warmup():
    t = linear_warmup_then_constant(0.04, 0.07, warmup_iters=30, total_iters=100)
    assert t.shape == (100,)
    assert t[0].item() == pytest.approx(0.04) and t[29].item() == pytest.approx(0.07)
    assert (t[29:] == 0.07).all()
    assert t[1].item() == pytest.approx(0.04 + 0.03 / 29)
    short = linear_warmup_then_constant(0.04, 0.07, 30, 10)  # warm-up shortened to the run
    assert torch.allclose(short, torch.linspace(0.04, 0.07, 10, dtype=torch.float64))


def test_scaled_lr_square_root_rule():
    assert scaled_lr(0.004, 1024) == pytest.approx(0.004)
    assert scaled_lr(0.004, 256) == pytest.approx(0.002)
    assert scaled_lr(0.004, 4096) == pytest.approx(0.008)


def _student():
    torch.manual_seed(0)
    backbone = build_backbone("vit_pico", img_size=32, patch_size=16)  # 2 blocks
    head = DINOHead(backbone.embed_dim, out_dim=16, hidden_dim=8, bottleneck_dim=4)
    return backbone, head


def _multipliers(groups):
    return {name: (g["lr_multiplier"], g["wd_multiplier"], g["is_last_layer"]) for g in groups for name in g["names"]}


def test_param_groups_layer_decay_and_no_weight_decay():
    backbone, head = _student()
    groups = param_groups(
        {"backbone": backbone, "dino_head": head, "ibot_head": head}, lr_decay=0.9, patch_embed_lr_mult=0.2
    )
    m = _multipliers(groups)
    n_params = len(list(backbone.parameters())) + len(list(head.parameters()))
    assert sum(len(g["params"]) for g in groups) == n_params  # the shared head counted once
    assert all({"params", "lr_multiplier", "wd_multiplier", "is_last_layer"} <= set(g) for g in groups)
    L = 2
    # lr: decay ** (L + 1 - layer_id), layer_id 0 for the embeddings, i + 1 for block i
    assert m["backbone.blocks.1.attn.qkv.weight"][0] == pytest.approx(0.9)  # last block
    assert m["backbone.blocks.0.attn.qkv.weight"][0] == pytest.approx(0.9**2)  # one block earlier
    assert m["backbone.norm.weight"][0] == pytest.approx(1.0)  # after the blocks
    assert m["backbone.patch_embed.proj.weight"][0] == pytest.approx(0.9 ** (L + 1) * 0.2)
    assert m["backbone.pos_embed"][0] == pytest.approx(0.9 ** (L + 1))
    assert m["dino_head.mlp.0.weight"][0] == 1.0
    # weight decay: none on biases, norms, LayerScale, tokens, position table
    for name in (
        "backbone.blocks.0.attn.qkv.bias",
        "backbone.blocks.0.norm1.weight",
        "backbone.norm.bias",
        "backbone.blocks.1.ls1.gamma",
        "backbone.cls_token",
        "backbone.mask_token",
        "backbone.pos_embed",
        "dino_head.mlp.0.bias",
        "backbone.patch_embed.proj.bias",
    ):
        assert m[name][1] == 0.0, name
    for name in (
        "backbone.blocks.0.attn.qkv.weight",
        "backbone.blocks.1.mlp.fc2.weight",
        "backbone.patch_embed.proj.weight",
        "dino_head.mlp.2.weight",
    ):
        assert m[name][1] == 1.0, name
    # last layer flagged, only it
    last = [n for n, v in m.items() if v[2]]
    assert last and all(n.startswith("dino_head.last_layer.") for n in last)
    assert layer_id("blocks.11.mlp.fc1.weight", 12) == 12 and layer_id("register_tokens", 12) == 0


def test_param_groups_skip_frozen_and_override_depth():
    backbone, head = _student()
    backbone.cls_token.requires_grad_(False)
    m = _multipliers(param_groups({"backbone": backbone}, lr_decay=0.5, num_layers=4))
    assert "backbone.cls_token" not in m
    assert m["backbone.blocks.1.mlp.fc1.weight"][0] == pytest.approx(0.5**3)  # 4 + 1 - 2


def test_apply_schedules_and_last_layer_freeze():
    backbone, head = _student()
    groups = param_groups({"backbone": backbone, "dino_head": head})
    opt = torch.optim.AdamW(groups, lr=0.0)
    apply_schedules(opt, lr=1e-3, wd=0.04, freeze_last_layer=True)
    for g in opt.param_groups:
        expected_lr = 0.0 if g["is_last_layer"] else 1e-3 * g["lr_multiplier"]
        assert g["lr"] == pytest.approx(expected_lr)
        assert g["weight_decay"] == pytest.approx(0.04 * g["wd_multiplier"])
    apply_schedules(opt, lr=1e-3, wd=0.4, freeze_last_layer=False)
    last = [g for g in opt.param_groups if g["is_last_layer"]]
    assert last and all(g["lr"] == pytest.approx(1e-3) for g in last)
    # a frozen last layer does not move under an optimiser step, the rest does
    apply_schedules(opt, lr=1e-2, wd=0.04, freeze_last_layer=True)
    before = {id(p): p.detach().clone() for g in opt.param_groups for p in g["params"]}
    x = torch.randn(2, 3, 32, 32)
    head(backbone(x)[0]).pow(2).sum().backward()
    opt.step()
    for g in opt.param_groups:
        moved = [not torch.equal(before[id(p)], p) for p in g["params"]]
        assert not any(moved) if g["is_last_layer"] else any(moved)
    assert isinstance(opt.state_dict()["param_groups"][0]["names"], list)  # checkpoint-safe


def test_dinov2_weight_decay_rule_decays_tokens():
    # DINOv2's get_params_groups_with_decay: no decay iff the name ends in ".bias" or contains
    # "norm" or "gamma"; everything else (class/mask/register tokens, position table) is decayed
    backbone = build_backbone("vit_pico", img_size=32, patch_size=16, reg_tokens=2)
    head = DINOHead(backbone.embed_dim, out_dim=16, hidden_dim=8, bottleneck_dim=4)
    m = _multipliers(param_groups({"backbone": backbone, "dino_head": head}, wd_rule="dinov2"))
    for prefix, module in (("backbone", backbone), ("dino_head", head)):
        for name, _ in module.named_parameters():
            exempt = name.endswith(".bias") or "norm" in name or "gamma" in name
            assert m[f"{prefix}.{name}"][1] == (0.0 if exempt else 1.0), name
    for token in ("cls_token", "reg_token", "mask_token", "pos_embed"):
        assert m[f"backbone.{token}"][1] == 1.0
    with pytest.raises(ValueError, match="weight-decay rule"):
        param_groups({"backbone": backbone}, wd_rule="bogus")


def test_drop_path_uniform_and_ramp():
    depth = 12
    uniform = build_backbone("vit_tiny", img_size=32, patch_size=16, drop_path_rate=0.2, drop_path_uniform=True)
    ramp = build_backbone("vit_tiny", img_size=32, patch_size=16, drop_path_rate=0.2)
    # DINOv2: [rate] * depth when uniform, else linspace(0, rate, depth)
    expected = [0.2 + 0 * i for i in range(depth)], [0.2 * i / (depth - 1) for i in range(depth)]
    for model, rates in zip((uniform, ramp), expected):
        got = [getattr(b.drop_path1, "drop_prob", 0.0) for b in model.blocks]
        assert got == pytest.approx(rates)
        assert [getattr(b.drop_path2, "drop_prob", 0.0) for b in model.blocks] == pytest.approx(rates)
