"""Fast-step helpers: each must equal the plain computation it replaces (values and gradients)."""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from pretrain.fast_step import accelerate_meta_arch, maybe_compile
from pretrain.losses import DINOLoss, iBOTPatchLoss, soft_cross_entropy


def plain_ce(logits, targets, temp):
    return -(targets * F.log_softmax(logits.float() / temp, dim=-1)).sum(dim=-1)


@pytest.mark.parametrize("chunk", [1, 3, 7, 100])
def test_soft_cross_entropy_equals_plain_values_and_gradients(chunk):
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(12, 33, generator=g, requires_grad=True)
    targets = torch.softmax(torch.randn(4, 33, generator=g), dim=-1)  # rows repeat with period 4
    weights = torch.rand(12, generator=g)
    ours = soft_cross_entropy(logits, targets, temp=0.1, chunk_rows=chunk)
    ref = plain_ce(logits, targets.repeat(3, 1), 0.1)
    torch.testing.assert_close(ours, ref, rtol=1e-5, atol=1e-5)
    (g1,) = torch.autograd.grad((ours * weights).sum(), logits)
    (g2,) = torch.autograd.grad((ref * weights).sum(), logits)
    torch.testing.assert_close(g1, g2, rtol=1e-5, atol=1e-6)


def test_soft_cross_entropy_bf16_logits_keep_dtype_and_fp32_maths():
    logits = torch.randn(6, 40).to(torch.bfloat16).requires_grad_()
    targets = torch.softmax(torch.randn(6, 40), dim=-1)
    ours = soft_cross_entropy(logits, targets, temp=0.1)
    assert ours.dtype == torch.float32
    torch.testing.assert_close(ours, plain_ce(logits.float(), targets, 0.1), rtol=1e-5, atol=1e-5)
    ours.sum().backward()
    assert logits.grad.dtype == torch.bfloat16


def test_soft_cross_entropy_rejects_bad_shapes():
    with pytest.raises(ValueError, match="multiple"):
        soft_cross_entropy(torch.randn(5, 3), torch.rand(2, 3))
    with pytest.raises(ValueError, match="needs"):
        soft_cross_entropy(torch.randn(5, 3), torch.rand(5, 4))


def pairwise_dino(sg, sl, t, n_global, temp):
    """DINOv2's definition written out: every (student crop, teacher global crop) pair with s != t."""
    b = t.shape[0] // n_global
    students = list(sg.chunk(n_global)) + (list(sl.chunk(sl.shape[0] // b)) if sl is not None else [])
    teachers = t.chunk(n_global)
    total, terms = 0.0, 0
    for si, s in enumerate(students):
        for ti, tt in enumerate(teachers):
            if si == ti:
                continue
            total = total + plain_ce(s, tt, temp).mean()
            terms += 1
    return total / terms


@pytest.mark.parametrize("n_local", [0, 3])
def test_fast_dino_loss_equals_the_pairwise_definition_and_a_loss(n_local):
    g = torch.Generator().manual_seed(1)
    b, k = 5, 64
    sg = torch.randn(2 * b, k, generator=g, requires_grad=True)
    sl = torch.randn(n_local * b, k, generator=g, requires_grad=True) if n_local else None
    t = torch.softmax(torch.randn(2 * b, k, generator=g) / 0.05, dim=-1)
    fast = DINOLoss(k, chunk_rows=4)
    ours = fast(sg, sl, t)
    ref = pairwise_dino(sg, sl, t, 2, 0.1)
    torch.testing.assert_close(ours, ref, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(ours, DINOLoss(k, chunk_rows=10**6)(sg, sl, t), rtol=1e-5, atol=1e-6)
    inputs = [sg] + ([sl] if sl is not None else [])
    for a, r in zip(torch.autograd.grad(ours, inputs), torch.autograd.grad(ref, inputs)):
        torch.testing.assert_close(a, r, rtol=1e-5, atol=1e-7)


def test_fast_ibot_loss_equals_per_image_weighting():
    g = torch.Generator().manual_seed(2)
    masks = torch.zeros(4, 9, dtype=torch.bool)
    masks[0, :3] = True
    masks[2, 1:8] = True  # images 1 and 3 have no masked patch
    m, k = int(masks.sum()), 20
    student = torch.randn(m, k, generator=g, requires_grad=True)
    teacher = torch.softmax(torch.randn(m, k, generator=g), dim=-1)
    ours = iBOTPatchLoss(k, chunk_rows=2)(student, teacher, masks)
    ce = plain_ce(student, teacher, 0.1)
    ref = (ce[:3].mean() + ce[3:].mean()) / 4  # (1/N) sum_i mean over image i's masked patches
    torch.testing.assert_close(ours, ref, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(ours, iBOTPatchLoss(k, chunk_rows=10**6)(student, teacher, masks), rtol=1e-5, atol=1e-6)
    empty = iBOTPatchLoss(k, chunk_rows=2)(
        torch.zeros(0, k, requires_grad=True), torch.zeros(0, k), torch.zeros(2, 9, dtype=torch.bool)
    )
    assert empty.item() == 0.0


def test_losses_keep_their_centre_as_the_checkpointed_buffer():
    from pretrain.center import Center

    loss = DINOLoss(8, student_temp=0.2, chunk_rows=3)
    assert isinstance(loss, Center) and set(loss.state_dict()) == {"center"} == set(Center(8).state_dict())
    loss.update_center(torch.ones(4, 8))
    torch.testing.assert_close(loss.center, torch.full((1, 8), 0.1))  # 0.9 * 0 + 0.1 * 1
    assert set(iBOTPatchLoss(8).state_dict()) == {"center"}


def _model():
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(6, 8), nn.GELU(), nn.Linear(8, 3))


def test_maybe_compile_keeps_names_and_outputs():
    model = _model()
    assert maybe_compile(model, enabled=False) is model
    names = [n for n, _ in model.named_parameters()]
    x = torch.randn(2, 6)
    expected = model(x)
    compiled = maybe_compile(model, enabled=True, backend="eager")  # eager backend: no C++ compiler needed
    assert compiled is model and [n for n, _ in model.named_parameters()] == names
    torch.testing.assert_close(model(x), expected)
    wrapped = maybe_compile(_model(), enabled=True, inplace=False, backend="eager")
    torch.testing.assert_close(wrapped(x), expected)


def test_accelerated_meta_arch_gives_the_same_loss_and_gradients():
    from pretrain.config import CropConfig, HeadConfig, ModelConfig, PretrainConfig
    from pretrain.batch import CropBatch
    from pretrain.masking import make_masks
    from pretrain.meta_arch import MetaArch

    cfg = PretrainConfig(
        model=ModelConfig(arch="vit_pico", patch_size=8, drop_path_rate=0.0),
        head=HeadConfig(prototypes=96, hidden_dim=32, bottleneck_dim=16, ibot_prototypes=96),
        crops=CropConfig(global_size=16, local_size=8, n_local=2),
    )
    torch.manual_seed(0)
    plain = MetaArch(cfg)
    fast = copy.deepcopy(plain)
    accelerate_meta_arch(fast, compile=True, compile_kwargs={"backend": "eager"})
    g = torch.Generator().manual_seed(5)
    batch = CropBatch(
        global_crops=torch.randn(8, 3, 16, 16, generator=g),
        local_crops=torch.randn(8, 3, 8, 8, generator=g),
        masks=make_masks(8, (2, 2), 0.5, (0.1, 0.5), g),
        labels=torch.zeros(4, dtype=torch.long),
    )
    a = plain.forward_backward(batch, 0.05)
    b = fast.forward_backward(batch, 0.05)
    for key in ("loss", "dino", "ibot", "koleo"):
        torch.testing.assert_close(a[key], b[key], rtol=1e-5, atol=1e-6)
    for (name, p), (_, q) in zip(plain.student.named_parameters(), fast.student.named_parameters()):
        if p.grad is not None:  # fp32 sums in another order: equal up to rounding, relative to the tensor's scale
            assert (p.grad - q.grad).abs().max() <= 1e-4 * p.grad.abs().max() + 1e-7, name
    torch.testing.assert_close(plain.dino_loss.center, fast.dino_loss.center)
