"""DINO, iBOT and KoLeo losses, Sinkhorn-Knopp and the DINO head, against independent computations."""

from __future__ import annotations

import copy
import math
import os
import socket

import pytest
import torch
import torch.nn.functional as F

from pretrain.heads import DINOHead
from pretrain.losses import DINOLoss, KoLeoLoss, iBOTPatchLoss, sinkhorn_knopp


# ---------------------------------------------------------------- DINO loss
def test_dino_loss_hand_computed_k2():
    # student temp 1 so the log-softmaxes are readable: [0, 0] -> [-ln2, -ln2]; [ln3, 0] -> [ln 3/4, ln 1/4]
    loss_fn = DINOLoss(2, student_temp=1.0)
    s_global = torch.tensor([[0.0, 0.0], [math.log(3.0), 0.0]])  # crop 0, crop 1 (B = 1)
    t_global = torch.tensor([[1.0, 0.0], [0.5, 0.5]])
    # pairs (s0, t1) = ln 2 and (s1, t0) = -ln(3/4)
    expected = (math.log(2.0) + math.log(4.0 / 3.0)) / 2
    assert loss_fn(s_global, None, t_global).item() == pytest.approx(expected, rel=1e-6)
    # one local crop [0, ln3] -> [ln 1/4, ln 3/4]: pairs (l, t0) = ln 4, (l, t1) = -(ln 1/4 + ln 3/4)/2
    s_local = torch.tensor([[0.0, math.log(3.0)]])
    expected_local = (math.log(2.0) + math.log(4.0 / 3.0) + math.log(4.0) - 0.5 * (math.log(0.25) + math.log(0.75))) / 4
    assert loss_fn(s_global, s_local, t_global).item() == pytest.approx(expected_local, rel=1e-6)


def _dino_bruteforce(s_global, s_local, t_probs, n_global, temp):
    b = t_probs.shape[0] // n_global
    students = list(s_global.double().split(b)) + ([] if s_local is None else list(s_local.double().split(b)))
    teachers = list(t_probs.double().split(b))
    terms = []
    for si, s in enumerate(students):
        for ti, t in enumerate(teachers):
            if si == ti:  # student global crop i against teacher global crop i: skipped
                continue
            terms.append((-(t * torch.log_softmax(s / temp, dim=-1)).sum(-1)).mean())
    return torch.stack(terms).mean()


@pytest.mark.parametrize("n_global,n_local", [(2, 4), (2, 0), (3, 2)])
def test_dino_loss_matches_pairwise_definition(n_global, n_local):
    g = torch.Generator().manual_seed(0)
    b, k = 3, 11
    s_global = torch.randn(n_global * b, k, generator=g) * 3
    s_local = torch.randn(n_local * b, k, generator=g) * 3 if n_local else None
    t_probs = torch.softmax(torch.randn(n_global * b, k, generator=g) * 2, dim=-1)
    loss = DINOLoss(k, student_temp=0.1)(s_global, s_local, t_probs, n_global_crops=n_global)
    ref = _dino_bruteforce(s_global, s_local, t_probs, n_global, 0.1)
    assert loss.item() == pytest.approx(ref.item(), rel=1e-5)


def test_dino_loss_is_fp32_and_differentiable_from_bf16():
    s = torch.randn(4, 5, dtype=torch.bfloat16, requires_grad=True)
    t = torch.softmax(torch.randn(4, 5), -1)
    loss = DINOLoss(5)(s, None, t)
    assert loss.dtype == torch.float32
    loss.backward()
    assert torch.isfinite(s.grad.float()).all()


def test_dino_loss_needs_a_cross_view_pair():
    with pytest.raises(ValueError):
        DINOLoss(3)(torch.randn(2, 3), None, torch.softmax(torch.randn(2, 3), -1), n_global_crops=1)


def test_mean_centring_softmax_and_ema():
    loss_fn = DINOLoss(4, center_momentum=0.9)
    z1 = torch.tensor([[1.0, 2.0, 3.0, 4.0], [3.0, 2.0, 1.0, 0.0]])
    z2 = torch.tensor([[0.0, 0.0, 8.0, 0.0]])
    loss_fn.update_center(z1)  # c = 0.1 * [2, 2, 2, 2]
    loss_fn.update_center(z2)  # c = 0.9 * c + 0.1 * [0, 0, 8, 0]
    expected_c = torch.tensor([0.18, 0.18, 0.98, 0.18])
    assert torch.allclose(loss_fn.center.squeeze(0), expected_c, atol=1e-6)
    probs = loss_fn.softmax_center_teacher(z1, teacher_temp=0.5)
    ref = torch.exp((z1 - expected_c) / 0.5)
    assert torch.allclose(probs, ref / ref.sum(-1, keepdim=True), atol=1e-6)
    # an empty batch (no masked token anywhere) leaves the centre as it was
    loss_fn.update_center(torch.zeros(0, 4))
    assert torch.allclose(loss_fn.center.squeeze(0), expected_c, atol=1e-6)
    assert "center" in loss_fn.state_dict()  # checkpointed with the loss


# ---------------------------------------------------------------- Sinkhorn-Knopp
def _sinkhorn_reference(logits, temp, iters):
    # the plain algorithm from the SwAV/DINOv2 papers, in float64, no stabilisation
    q = torch.exp(logits.double() / temp).t()
    k, b = q.shape
    q /= q.sum()
    for _ in range(iters):
        q /= q.sum(dim=1, keepdim=True)
        q /= k
        q /= q.sum(dim=0, keepdim=True)
        q /= b
    return (q * b).t()


def test_sinkhorn_matches_reference_and_marginals():
    g = torch.Generator().manual_seed(1)
    logits = torch.randn(12, 6, generator=g)
    q = DINOLoss(6).sinkhorn_knopp_teacher(logits, teacher_temp=0.5, n_iterations=3)
    assert torch.allclose(q.double(), _sinkhorn_reference(logits, 0.5, 3), atol=1e-6)
    # every sample's target is a distribution
    assert torch.allclose(q.sum(dim=1), torch.ones(12), atol=1e-5)
    # with enough iterations every prototype gets the same total mass B / K
    q_long = sinkhorn_knopp(logits, 0.5, n_iterations=200)
    assert torch.allclose(q_long.sum(dim=0), torch.full((6,), 12 / 6), atol=1e-4)
    assert torch.allclose(q_long.sum(dim=1), torch.ones(12), atol=1e-5)


def test_sinkhorn_is_finite_at_low_temperature():
    logits = torch.tensor([[40.0, -40.0, 0.0], [-40.0, 40.0, 0.0]])
    assert not torch.isfinite(torch.exp(logits / 0.04)).all()  # the naive exp overflows
    q = sinkhorn_knopp(logits, 0.04)
    assert torch.isfinite(q).all()
    assert torch.allclose(q.sum(dim=1), torch.ones(2), atol=1e-5)


def test_ibot_sinkhorn_uses_the_masked_token_count():
    logits = torch.randn(5, 4)
    q = iBOTPatchLoss(4).sinkhorn_knopp_teacher(logits, 0.2, n_masked_tokens=torch.tensor(5))
    assert torch.allclose(q.double(), _sinkhorn_reference(logits, 0.2, 3), atol=1e-6)


# ---------------------------------------------------------------- iBOT loss
def test_ibot_loss_hand_computed_k2():
    loss_fn = iBOTPatchLoss(2, student_temp=1.0)
    masks = torch.tensor([[True, False, True], [False, False, False]])  # image 0: 2 masked, image 1: none
    student = torch.tensor([[0.0, 0.0], [math.log(3.0), 0.0]])
    teacher = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    # CE1 = ln 2, CE2 = -ln(1/4) = ln 4; image 0 weighs 1/2 per token; N = 2 images
    expected = 0.5 * (0.5 * math.log(2.0) + 0.5 * math.log(4.0))
    assert loss_fn(student, teacher, masks).item() == pytest.approx(expected, rel=1e-6)


def test_ibot_loss_matches_per_image_definition():
    g = torch.Generator().manual_seed(2)
    n, p, k = 6, 9, 7
    masks = torch.rand(n, p, generator=g) < 0.4
    masks[0] = False  # an unmasked image still counts in N
    m = int(masks.sum())
    student = torch.randn(m, k, generator=g) * 2
    teacher = torch.softmax(torch.randn(m, k, generator=g), -1)
    loss = iBOTPatchLoss(k, student_temp=0.1)(student, teacher, masks)
    # independent: walk the images, pick their rows in nonzero() order
    total, row = 0.0, 0
    for i in range(n):
        ni = int(masks[i].sum())
        ce = -(teacher[row : row + ni].double() * torch.log_softmax(student[row : row + ni].double() / 0.1, -1)).sum(-1)
        total += ce.sum().item() / max(1, ni)
        row += ni
    assert loss.item() == pytest.approx(total / n, rel=1e-5)


def test_ibot_loss_rejects_row_mismatch():
    with pytest.raises(ValueError, match="masked patches"):
        iBOTPatchLoss(3)(torch.randn(2, 3), torch.randn(2, 3), torch.tensor([[True, False]]))


# ---------------------------------------------------------------- iBOT on host-computed indices
def _boolean_ibot(loss_fn, student_tokens, head, teacher_probs_of, masks):
    """The iBOT term as the step computed it before host-computed indices: boolean-mask gathers on
    the device and weights ``(1 / per_image).expand_as(masks)[masks]`` (kept here as the reference)."""
    masks = masks.reshape(masks.shape[0], -1).bool()
    student = student_tokens.flatten(0, 1)[masks.flatten()] @ head
    teacher = teacher_probs_of(masks)
    per_image = masks.sum(dim=1).clamp(min=1).float()
    weights = (1.0 / per_image).unsqueeze(1).expand_as(masks)[masks]
    if weights.shape[0] == 0:
        return student.float().sum() * 0.0
    ce = loss_fn.soft_cross_entropy(student, teacher)
    return (ce * weights).sum() / max(masks.shape[0], 1)


def _random_masks(g, n, p, *, empty_image=True, none=False):
    masks = torch.rand(n, p, generator=g) < torch.rand(n, 1, generator=g)
    if empty_image:
        masks[1] = False  # an image with zero masked tokens
        masks[0, 0] = True
    if none:
        masks[:] = False  # a batch without any masked token
    return masks


def test_masked_token_indices_equal_boolean_indexing():
    from pretrain.masking import masked_token_indices

    g = torch.Generator().manual_seed(11)
    for none in (False, True):
        masks = _random_masks(g, 7, 12, none=none)
        indices, weights = masked_token_indices(masks)
        assert indices.dtype == torch.long and weights.dtype == torch.float32
        assert torch.equal(indices, masks.flatten().nonzero().flatten())
        per_image = masks.sum(dim=1).clamp(min=1).float()
        assert torch.equal(weights, (1.0 / per_image).unsqueeze(1).expand_as(masks)[masks])
        # [N, h, w] masks give the same as [N, h*w]
        grid = masked_token_indices(masks.view(7, 3, 4))
        assert torch.equal(grid[0], indices) and torch.equal(grid[1], weights)
    empty, w = masked_token_indices(torch.zeros(4, 9, dtype=torch.bool))
    assert empty.shape == (0,) and w.shape == (0,)


@pytest.mark.parametrize("fast", [False, True])
@pytest.mark.parametrize("case", ["random", "empty_image", "no_masks"])
def test_ibot_indexed_path_equals_boolean_mask_path(fast, case):
    """index_select on host-computed indices + precomputed weights == boolean-mask gathers: the same
    loss value and the same gradients (random masks, an image with no masked token, no mask at all)."""
    from pretrain.masking import masked_token_indices
    from pretrain.meta_arch import _masked_tokens

    g = torch.Generator().manual_seed({"random": 3, "empty_image": 4, "no_masks": 5}[case])
    n, p, d, k = 6, 16, 5, 11
    masks = _random_masks(g, n, p, empty_image=case != "random", none=case == "no_masks")
    tokens = torch.randn(n, p, d, generator=g, requires_grad=True)
    head = torch.randn(d, k, generator=g)
    teacher_tokens = torch.randn(n, p, d, generator=g)
    loss_fn = iBOTPatchLoss(k, student_temp=0.1, chunk_rows=3 if fast else 10**6)

    def teacher_probs_of(m):
        return torch.softmax(teacher_tokens.flatten(0, 1)[m.flatten()] @ head / 0.07, dim=-1)

    ref = _boolean_ibot(loss_fn, tokens, head, teacher_probs_of, masks)
    (ref_grad,) = torch.autograd.grad(ref, tokens, allow_unused=False)

    indices, weights = masked_token_indices(masks)  # on the CPU, as the collates do
    student = _masked_tokens(tokens, indices) @ head
    teacher = torch.softmax(_masked_tokens(teacher_tokens, indices) @ head / 0.07, dim=-1)
    ours = loss_fn(student, teacher, mask_weights=weights, n_images=n)
    (our_grad,) = torch.autograd.grad(ours, tokens, allow_unused=False)

    assert torch.isfinite(ours) and torch.isfinite(our_grad).all()
    torch.testing.assert_close(ours, ref, rtol=0, atol=0)
    torch.testing.assert_close(our_grad, ref_grad, rtol=0, atol=0)
    # the masks-only call (weights derived from the masks) is the same path
    torch.testing.assert_close(loss_fn(student, teacher, masks), ours, rtol=0, atol=0)
    if case == "no_masks":
        assert ours.item() == 0.0 and not our_grad.any()


def test_ibot_loss_needs_weights_with_their_image_count():
    with pytest.raises(ValueError, match="n_images"):
        iBOTPatchLoss(3)(torch.randn(2, 3), torch.randn(2, 3), mask_weights=torch.ones(2))
    with pytest.raises(ValueError, match="masks or the precomputed"):
        iBOTPatchLoss(3)(torch.randn(2, 3), torch.randn(2, 3))


def test_sinkhorn_host_count_equals_tensor_count():
    g = torch.Generator().manual_seed(6)
    logits = torch.randn(9, 5, generator=g)
    loss = iBOTPatchLoss(5)
    torch.testing.assert_close(
        loss.sinkhorn_knopp_teacher(logits, 0.1, 9),
        loss.sinkhorn_knopp_teacher(logits, 0.1, torch.tensor([9])),
        rtol=0,
        atol=0,
    )
    empty = loss.sinkhorn_knopp_teacher(torch.zeros(0, 5), 0.1, 0)
    assert empty.shape == (0, 5)


# ---------------------------------------------------------------- KoLeo
def test_koleo_hand_computed():
    x = torch.tensor([[2.0, 0.0], [0.0, 0.5], [-3.0, 0.0]])  # normalises to e1, e2, -e1
    # nearest neighbours are all at distance sqrt(2)
    assert KoLeoLoss()(x).item() == pytest.approx(-math.log(math.sqrt(2.0)), rel=1e-6)


def test_koleo_matches_bruteforce():
    g = torch.Generator().manual_seed(3)
    x = torch.randn(10, 5, generator=g)
    xn = x.double() / x.double().norm(dim=1, keepdim=True)
    d = torch.cdist(xn, xn) + torch.diag(torch.full((10,), float("inf"), dtype=torch.float64))
    ref = -torch.log(d.min(dim=1).values + 1e-8).mean()
    assert KoLeoLoss()(x).item() == pytest.approx(ref.item(), rel=1e-5)


def test_koleo_finite_at_batch_one_and_duplicates():
    one = torch.randn(1, 8, requires_grad=True)
    loss = KoLeoLoss()(one)
    assert loss.item() == 0.0 and torch.isfinite(loss)
    dup = torch.ones(3, 4, requires_grad=True)  # identical rows: distance 0
    loss = KoLeoLoss()(dup)
    loss.backward()
    assert torch.isfinite(loss) and torch.isfinite(dup.grad).all()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert KoLeoLoss()(torch.randn(4, 8).bfloat16()).dtype == torch.float32


# ---------------------------------------------------------------- DINO head
def test_dino_head_last_layer_is_weight_normalised():
    torch.manual_seed(0)
    head = DINOHead(16, out_dim=32, hidden_dim=24, bottleneck_dim=8, nlayers=3)
    assert torch.nn.utils.parametrize.is_parametrized(head.last_layer, "weight")
    weight = head.last_layer.weight
    assert torch.allclose(weight.norm(dim=1), torch.ones(32), atol=1e-6)  # g = 1 at init
    x = torch.randn(5, 16)
    out = head(x)
    assert out.shape == (5, 32)
    # logits are cosines at init: |logit| <= 1
    assert out.abs().max() <= 1.0 + 1e-5
    # rescaling the direction V changes nothing: W = g V / ||V||
    with torch.no_grad():
        head.last_layer.parametrizations.weight.original1.mul_(3.7)
    assert torch.allclose(head(x), out, atol=1e-6)
    # and the bottleneck is L2-normalised: out = W @ normalize(mlp(x))
    z = F.normalize(head.mlp(x), dim=-1)
    assert torch.allclose(out, z @ weight.t(), atol=1e-5)
    # hidden layers: Linear-GELU-Linear-GELU-Linear
    assert [type(m).__name__ for m in head.mlp] == ["Linear", "GELU", "Linear", "GELU", "Linear"]
    teacher = copy.deepcopy(head)  # EMA teachers are deep copies
    assert torch.allclose(teacher(x), out, atol=1e-6)
    head(x).sum().backward()
    assert head.last_layer.parametrizations.weight.original1.grad is not None


def test_dino_head_single_layer():
    head = DINOHead(6, out_dim=5, bottleneck_dim=4, nlayers=1)
    assert head(torch.randn(2, 3, 6)).shape == (2, 3, 5)


# ---------------------------------------------------------------- distributed (gloo, 2 processes)
def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _dist_worker(rank, world, port, logits, masked_counts, out):
    import torch.distributed as dist

    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=world)
    torch.set_num_threads(1)
    try:
        shard = logits.chunk(world)[rank]
        q = sinkhorn_knopp(shard, 0.3)
        loss = DINOLoss(logits.shape[1])
        loss.update_center(shard)
        ibot = iBOTPatchLoss(logits.shape[1])
        own = logits[sum(masked_counts[:rank]) : sum(masked_counts[: rank + 1])]  # uneven token counts
        ibot.update_center(own)
        out[rank] = (q, loss.center.clone(), ibot.center.clone())
    finally:
        dist.destroy_process_group()


@pytest.mark.slow
def test_sinkhorn_and_centre_all_reduce_across_processes():
    import torch.multiprocessing as mp

    logits = torch.randn(8, 5, generator=torch.Generator().manual_seed(4))
    masked_counts = [3, 5]
    manager = mp.Manager()
    out = manager.dict()
    mp.spawn(_dist_worker, args=(2, _free_port(), logits, masked_counts, out), nprocs=2, join=True)
    q_all = torch.cat([out[0][0], out[1][0]])
    # sharded Sinkhorn equals Sinkhorn over the concatenated rows
    assert torch.allclose(q_all.double(), _sinkhorn_reference(logits, 0.3, 3), atol=1e-6)
    # centres: 0.1 * mean over all rows of all processes (token-weighted for iBOT)
    for rank in range(2):
        assert torch.allclose(out[rank][1], 0.1 * logits.mean(0, keepdim=True), atol=1e-6)
        assert torch.allclose(out[rank][2], 0.1 * logits.mean(0, keepdim=True), atol=1e-6)


@pytest.mark.parametrize("n_local", [0, 3])
def test_dino_loss_against_dinov2_divisor(n_local):
    # DINOv2's meta-architecture sums the per-pair batch means and divides by
    # G (G - 1) + max(L G, 1): the same count as fdbench's for L >= 1, one more term for L = 0
    g = torch.Generator().manual_seed(1)
    n_global, b, k = 2, 4, 7
    s_global = torch.randn(n_global * b, k, generator=g)
    s_local = torch.randn(n_local * b, k, generator=g) if n_local else None
    t_probs = torch.softmax(torch.randn(n_global * b, k, generator=g), dim=-1)
    students = list(s_global.chunk(n_global)) + (list(s_local.chunk(n_local)) if n_local else [])
    teachers = t_probs.chunk(n_global)
    summed = sum(
        (-(t * torch.log_softmax(s / 0.1, -1)).sum(-1)).mean()
        for si, s in enumerate(students)
        for ti, t in enumerate(teachers)
        if si != ti
    )
    official = summed / (n_global * (n_global - 1) + max(n_local * n_global, 1))
    ours = DINOLoss(k, student_temp=0.1)(s_global, s_local, t_probs, n_global_crops=n_global)
    factor = 1.0 if n_local else (n_global * (n_global - 1)) / (n_global * (n_global - 1) + 1)
    assert (ours * factor).item() == pytest.approx(official.item(), rel=1e-5)


def test_koleo_batch_one_reference_is_a_finite_constant_without_gradient():
    # the reference: normalise, nearest neighbour with the diagonal filled with -1 (so a single row is
    # its own neighbour), nn.PairwiseDistance(eps=1e-8) adds eps to the difference, -log(d + eps)
    x = torch.randn(1, 384, requires_grad=True)
    xn = F.normalize(x, p=2, dim=-1, eps=1e-8)
    dots = xn @ xn.t()
    dots.view(-1)[::2].fill_(-1)
    nb = dots.argmax(dim=1)
    ref = -torch.log(torch.nn.PairwiseDistance(2, eps=1e-8)(xn, xn[nb]) + 1e-8).mean()
    ref.backward()
    assert torch.isfinite(ref) and ref.item() == pytest.approx(-math.log(1e-8 * math.sqrt(384) + 1e-8), rel=1e-4)
    assert torch.count_nonzero(x.grad) == 0  # no gradient
    ours = KoLeoLoss()(torch.randn(1, 384, requires_grad=True))
    assert ours.item() == 0.0 and not ours.requires_grad  # ours: constant 0
