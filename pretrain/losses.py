"""The DINOv2 training objective: DINO (CLS), iBOT (masked patches) and the KoLeo regulariser.

All loss arithmetic runs in float32 whatever the autocast dtype of the logits, because softmax
cross-entropies over 65536 prototypes lose too much precision in bf16. The per-row soft
cross-entropy is computed in row chunks by a custom autograd function
(:func:`soft_cross_entropy`) that keeps only the (bf16) logits for backward and recomputes the
softmax chunk by chunk, instead of holding fp32 copies and log-softmaxes of every ``[rows, 65536]``
matrix (the iBOT patch logits alone are thousands of such rows); the tests hold it to the plain
formula.

Notation: ``K`` prototypes, ``B`` images per process, ``G`` global crops, ``L`` local crops.
Batches are crop-major: rows ``[c*B:(c+1)*B]`` hold crop ``c`` of every image.

Teacher targets are built by one of two centrings, both shared by the DINO and iBOT losses:

- mean centring (:class:`pretrain.center.Center`): ``p_t = softmax((z_t - c) / T_t)``, where the
  centre ``c`` is an EMA of the mean teacher logit;
- Sinkhorn-Knopp (SwAV / DINOv2): starting from ``Q = exp(z_t / T_t)`` (``K x B``), alternately
  normalise the prototypes (rows) to total mass ``1/K`` and the samples (columns) to ``1/B``
  (``B`` counted over all processes), 3 times, then rescale so every sample's distribution sums
  to 1.
"""

from __future__ import annotations

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn

from pretrain.center import Center, all_reduce
from pretrain.masking import masked_token_indices

__all__ = ["Center", "DINOLoss", "iBOTPatchLoss", "KoLeoLoss", "sinkhorn_knopp", "soft_cross_entropy"]


@torch.no_grad()
def sinkhorn_knopp(
    teacher_logits: torch.Tensor,
    teacher_temp: float,
    n_iterations: int = 3,
    n_samples: int | torch.Tensor | None = None,
) -> torch.Tensor:
    """Sinkhorn-Knopp teacher targets ``[N, K]`` (each row sums to 1; prototypes get equal mass).

    ``Q = exp(z / T)^T`` is normalised to total mass 1, then ``n_iterations`` times: each row
    (prototype) is divided by its sum and by ``K``; each column (sample) by its sum and by ``B``.
    Finally ``Q *= B`` so columns sum to 1. ``B`` is ``n_samples`` summed over processes (default:
    the rows of ``teacher_logits`` summed over processes); row sums are all-reduced too, so the
    result equals running the algorithm on the concatenation of every process's rows.

    The global maximum logit is subtracted before ``exp``: this cancels exactly in the first
    normalisation and keeps ``exp`` finite at low temperatures (the reference code can overflow).
    """
    z = teacher_logits.detach().float() / teacher_temp
    n_local, n_protos = z.shape
    # global max for a stable exp (-inf where this process holds no rows)
    zmax = z.max() if z.numel() else z.new_full((), float("-inf"))
    zmax = all_reduce(zmax.reshape(1).clone(), dist.ReduceOp.MAX)
    if n_samples is None:
        n_samples = n_local
    if isinstance(n_samples, torch.Tensor):
        count = n_samples.to(device=z.device, dtype=torch.float32).reshape(1).clone()
    else:
        # filled on the device: a host number copied with torch.tensor(..., device=cuda) would wait for it
        count = z.new_full((1,), float(n_samples))
    all_reduce(count)
    q = torch.exp(z - zmax).t()  # [K, N]
    tiny = torch.finfo(q.dtype).tiny  # a prototype (or sample) whose mass underflowed stays at 0, not NaN
    total = all_reduce(q.sum().reshape(1))
    q /= total.clamp_min(tiny)
    for _ in range(n_iterations):
        rows = all_reduce(q.sum(dim=1, keepdim=True))
        q /= rows.clamp_min(tiny)
        q /= n_protos
        q /= q.sum(dim=0, keepdim=True).clamp_min(tiny)
        q /= count
    q *= count
    return q.t()


DEFAULT_CHUNK_ROWS = 256


def _blocks(n_rows: int, period: int, chunk: int):
    """Row ranges ``(start, stop, target_start)``: each stays inside one period of the target rows."""
    for base in range(0, n_rows, period):
        for s in range(0, period, chunk):
            stop = min(s + chunk, period)
            yield base + s, base + stop, s, stop


class _SoftCrossEntropy(torch.autograd.Function):
    """Rows ``r``: ``CE_r = logsumexp(z_r/T) * sum_k p_r[k] - sum_k p_r[k] z_r[k] / T`` with
    ``p_r = targets[r mod len(targets)]``; gradient ``(softmax(z_r/T) * sum_k p_r[k] - p_r) / T``."""

    @staticmethod
    def forward(ctx, logits: torch.Tensor, targets: torch.Tensor, temp: float, chunk: int):
        n, period = logits.shape[0], targets.shape[0]
        out = torch.empty(n, dtype=torch.float32, device=logits.device)
        for start, stop, ts, te in _blocks(n, period, chunk):
            z = logits[start:stop].float() / temp
            p = targets[ts:te].float()
            out[start:stop] = torch.logsumexp(z, dim=-1) * p.sum(dim=-1) - (p * z).sum(dim=-1)
        ctx.save_for_backward(logits, targets)
        ctx.temp, ctx.chunk = temp, chunk
        return out

    @staticmethod
    def backward(ctx, grad_out: torch.Tensor):
        logits, targets = ctx.saved_tensors
        n, period = logits.shape[0], targets.shape[0]
        grad = torch.empty_like(logits)
        for start, stop, ts, te in _blocks(n, period, ctx.chunk):
            z = logits[start:stop].float() / ctx.temp
            p = targets[ts:te].float()
            g = torch.softmax(z, dim=-1) * p.sum(dim=-1, keepdim=True) - p
            grad[start:stop] = (g * (grad_out[start:stop].float() / ctx.temp).unsqueeze(1)).to(grad.dtype)
        return grad, None, None, None


def soft_cross_entropy(
    logits: torch.Tensor, targets: torch.Tensor, temp: float = 1.0, chunk_rows: int = DEFAULT_CHUNK_ROWS
) -> torch.Tensor:
    """Per-row ``-sum_k p[k] log_softmax(z / temp)[k]`` (fp32) for ``logits [N,K]``, ``targets [T,K]``.

    ``N`` must be a multiple of ``T``; row ``r`` uses target row ``r mod T`` (so one teacher matrix
    serves several student crops without being repeated in memory). Targets get no gradient.
    """
    if logits.dim() != 2 or targets.dim() != 2 or logits.shape[1] != targets.shape[1]:
        raise ValueError(
            f"soft_cross_entropy needs [N,K] logits and [T,K] targets, got "
            f"{tuple(logits.shape)} and {tuple(targets.shape)}"
        )
    if targets.shape[0] == 0 or logits.shape[0] % targets.shape[0]:
        raise ValueError(f"{logits.shape[0]} logit rows are not a multiple of {targets.shape[0]} target rows")
    return _SoftCrossEntropy.apply(logits, targets.detach(), float(temp), max(1, int(chunk_rows)))


class _CenteredLoss(Center):
    """A teacher centre (:class:`pretrain.center.Center`) with the student's soft cross-entropy."""

    def __init__(
        self,
        out_dim: int,
        student_temp: float = 0.1,
        center_momentum: float = 0.9,
        chunk_rows: int = DEFAULT_CHUNK_ROWS,
    ):
        super().__init__(out_dim, center_momentum)
        self.student_temp = float(student_temp)
        self.chunk_rows = int(chunk_rows)

    def soft_cross_entropy(self, student_logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        """Per-row ``-sum_k p[k] log_softmax(z / T_s)[k]`` in fp32; row ``r`` of the student uses
        target row ``r mod len(targets)``, so one teacher matrix serves several student crops.
        Computed in chunks of ``chunk_rows`` rows (:func:`soft_cross_entropy`)."""
        return soft_cross_entropy(student_logits, targets, self.student_temp, self.chunk_rows)


class DINOLoss(_CenteredLoss):
    """DINO self-distillation loss on CLS-token prototype logits.

    ``loss = (1 / |P|) sum_{(s, t) in P} (1 / B) sum_b  -sum_k p_t[b, k] log_softmax(z_s[b] / T_s)[k]``

    where ``P`` holds every (student crop ``s``, teacher global crop ``t``) pair except the
    same-view pairs ``s == t``: ``|P| = G (G - 1) + L G`` (18 for 2 global + 8 local crops).
    DINOv2 divides the summed terms by ``G (G - 1) + max(L G, 1)``: the same count for ``L >= 1``,
    but with no local crops it divides by ``G (G - 1) + 1`` (3 for 2 global crops), so its loss is
    ``G (G - 1) / (G (G - 1) + 1)`` (2/3) of this one. fdbench keeps the true pair count there; scale
    by that factor (or the DINO weight) to reproduce the reference's L = 0 loss.
    """

    def forward(
        self,
        student_global_logits: torch.Tensor,
        student_local_logits: torch.Tensor | None,
        teacher_global_probs: torch.Tensor,
        *,
        n_global_crops: int = 2,
    ) -> torch.Tensor:
        teacher = teacher_global_probs.detach().float()
        rows, k = teacher.shape
        if rows % n_global_crops:
            raise ValueError(f"{rows} teacher rows are not {n_global_crops} global crops of equal batches")
        b = rows // n_global_crops
        per_crop = teacher.view(n_global_crops, b, k)
        # the loss is linear in the teacher target, so the sum over teacher crops t != s is
        # (sum over all t) - t_s: one product per student crop instead of one per pair
        teacher_sum = per_crop.sum(dim=0)
        targets = (teacher_sum.unsqueeze(0) - per_crop).reshape(rows, k)
        total = self.soft_cross_entropy(student_global_logits, targets).sum()
        n_terms = n_global_crops * (n_global_crops - 1)
        if student_local_logits is not None and student_local_logits.numel():
            if student_local_logits.shape[0] % b:
                raise ValueError(f"{student_local_logits.shape[0]} local rows are not crops of {b} images")
            total = total + self.soft_cross_entropy(student_local_logits, teacher_sum).sum()
            n_terms += (student_local_logits.shape[0] // b) * n_global_crops
        if n_terms == 0:
            raise ValueError(
                "the DINO loss needs a student crop that differs from the teacher's: "
                "use 2 global crops or at least one local crop"
            )
        return total / (b * n_terms)

    @torch.no_grad()
    def sinkhorn_knopp_teacher(
        self, teacher_logits: torch.Tensor, teacher_temp: float, n_iterations: int = 3
    ) -> torch.Tensor:
        """Sinkhorn-Knopp targets over all teacher CLS rows (see :func:`sinkhorn_knopp`)."""
        return sinkhorn_knopp(teacher_logits, teacher_temp, n_iterations)


class iBOTPatchLoss(_CenteredLoss):  # noqa: N801 (the method's name)
    """iBOT masked-image-modelling loss on the masked patch tokens of the global crops.

    With ``CE(p) = -sum_k p_t[p, k] log_softmax(z_s[p] / T_s)[k]`` for masked patch ``p``:

    ``loss = (1 / N) sum_{i=1..N} (1 / max(1, n_i)) sum_{masked p in image i} CE(p)``

    where ``N`` counts every global crop (masked or not) and ``n_i`` is image ``i``'s masked count:
    each masked image weighs the same however many patches it masks (DINOv2's weighting). Without
    any masked patch the loss is 0 (kept in the autograd graph).

    The rows are the masked patches in ``masks.flatten()`` order. Their weights ``1 / max(1, n_i)``
    come either from ``masks`` ``[N, P]`` (computed on the masks' device: on a GPU that waits for it)
    or, as the training step passes them, precomputed on the CPU by the collate
    (:func:`pretrain.masking.masked_token_indices`) as ``mask_weights`` ``[M]`` with ``n_images = N``.
    """

    def forward(
        self,
        student_patch_logits: torch.Tensor,
        teacher_patch_probs: torch.Tensor,
        masks: torch.Tensor | None = None,
        *,
        mask_weights: torch.Tensor | None = None,
        n_images: int | None = None,
    ) -> torch.Tensor:
        if mask_weights is None:
            if masks is None:
                raise ValueError("the iBOT loss needs the masks or the precomputed mask weights")
            _, mask_weights = masked_token_indices(masks)
            n_images = masks.shape[0]
        elif n_images is None:
            raise ValueError("precomputed iBOT mask weights need n_images, the number of global crops")
        n_rows = mask_weights.shape[0]
        if not (student_patch_logits.shape[0] == teacher_patch_probs.shape[0] == n_rows):
            raise ValueError(
                f"iBOT loss got {student_patch_logits.shape[0]} student and "
                f"{teacher_patch_probs.shape[0]} teacher rows for {n_rows} masked patches"
            )
        if n_rows == 0:
            return student_patch_logits.float().sum() * 0.0  # keeps the graph; no masked patch anywhere
        ce = self.soft_cross_entropy(student_patch_logits, teacher_patch_probs)
        return (ce * mask_weights.to(ce.device, non_blocking=True)).sum() / max(int(n_images), 1)

    @torch.no_grad()
    def sinkhorn_knopp_teacher(
        self,
        teacher_logits: torch.Tensor,
        teacher_temp: float,
        n_masked_tokens: int | torch.Tensor | None = None,
        n_iterations: int = 3,
    ) -> torch.Tensor:
        """Sinkhorn-Knopp targets over the masked teacher tokens; ``B`` = masked tokens of all processes."""
        return sinkhorn_knopp(
            teacher_logits,
            teacher_temp,
            n_iterations,
            n_samples=teacher_logits.shape[0] if n_masked_tokens is None else n_masked_tokens,
        )


class KoLeoLoss(nn.Module):
    """Kozachenko-Leonenko entropy regulariser: spreads a batch's embeddings over the sphere.

    ``loss = -(1/B) sum_i log(min_{j != i} ||x^_i - x^_j||_2 + eps)``, ``x^ = x / ||x||_2``, in
    float32 outside autocast. A batch of fewer than 2 rows has no neighbours: the loss is 0 there.
    The reference code returns a different finite constant at batch 1 (its row is its own
    "neighbour" and ``nn.PairwiseDistance`` adds eps to the difference, so the loss is
    ``-log(eps sqrt(D) + eps)``, about 15.4 at D = 384), also with no gradient: the two differ by a
    constant that does not affect training. The nearest neighbour is found with the diagonal set
    to -inf, so a row is never its own neighbour even when all rows are antipodal.
    """

    def __init__(self, eps: float = 1e-8):
        super().__init__()
        self.eps = float(eps)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.shape[0] < 2:
            return torch.zeros((), dtype=torch.float32, device=x.device)
        with torch.autocast(device_type=x.device.type, enabled=False):
            x = F.normalize(x.float(), p=2, dim=-1, eps=self.eps)
            with torch.no_grad():
                dots = x @ x.t()
                dots.fill_diagonal_(float("-inf"))
                neighbour = dots.argmax(dim=1)  # max cosine = min distance on the unit sphere
            dist_nn = torch.linalg.vector_norm(x - x[neighbour], dim=-1)
            return -torch.log(dist_nn + self.eps).mean()
