"""Helpers for a fast DINOv2 training step; each is a drop-in for a plain computation it equals.

- :func:`soft_cross_entropy`: ``-sum_k p[k] * log_softmax(z / T)[k]`` per row, computed in row chunks
  by a custom autograd function that keeps only the (bf16) logits for backward and recomputes the
  softmax chunk by chunk, instead of holding fp32 copies and log-softmaxes of every
  ``[rows, 65536]`` matrix (the iBOT patch logits alone are thousands of such rows).
- :class:`FastDINOLoss`, :class:`FastiBOTPatchLoss`: the losses of :mod:`pretrain.losses` (same
  formulas, same centring state) with their per-row cross-entropy computed by it.
- :func:`maybe_compile`: ``torch.compile`` a module in place (parameter names unchanged), static
  shapes, so a curriculum's stage switch costs one recompile and steps cost none.
- :func:`accelerate_meta_arch`: applies the above to a :class:`pretrain.meta_arch.MetaArch` in place.

The rest of the fast step lives where it is used: fused AdamW in ``pretrain.engine.build_optimizer``,
the ``_foreach`` EMA in ``MetaArch.update_teacher``, losses read back on logging steps only in the
engine's loop, and the iBOT gathers on host-computed indices in ``pretrain.meta_arch``.
"""

from __future__ import annotations

import torch
from torch import nn

from pretrain.losses import DINOLoss, iBOTPatchLoss

DEFAULT_CHUNK_ROWS = 256
RECOMPILE_LIMIT = 64      # graphs per compiled frame: ~20 curriculum stages


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


def soft_cross_entropy(logits: torch.Tensor, targets: torch.Tensor, temp: float = 1.0,
                       chunk_rows: int = DEFAULT_CHUNK_ROWS) -> torch.Tensor:
    """Per-row ``-sum_k p[k] log_softmax(z / temp)[k]`` (fp32) for ``logits [N,K]``, ``targets [T,K]``.

    ``N`` must be a multiple of ``T``; row ``r`` uses target row ``r mod T`` (so one teacher matrix
    serves several student crops without being repeated in memory). Targets get no gradient.
    """
    if logits.dim() != 2 or targets.dim() != 2 or logits.shape[1] != targets.shape[1]:
        raise ValueError(f"soft_cross_entropy needs [N,K] logits and [T,K] targets, got "
                         f"{tuple(logits.shape)} and {tuple(targets.shape)}")
    if targets.shape[0] == 0 or logits.shape[0] % targets.shape[0]:
        raise ValueError(f"{logits.shape[0]} logit rows are not a multiple of {targets.shape[0]} target rows")
    return _SoftCrossEntropy.apply(logits, targets.detach(), float(temp), max(1, int(chunk_rows)))


class _ChunkedCrossEntropy:
    """Mixin: the losses' per-row soft cross-entropy computed by :func:`soft_cross_entropy`."""

    chunk_rows = DEFAULT_CHUNK_ROWS

    def soft_cross_entropy(self, student_logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        return soft_cross_entropy(student_logits, targets, self.student_temp, self.chunk_rows)


class FastDINOLoss(_ChunkedCrossEntropy, DINOLoss):
    """:class:`pretrain.losses.DINOLoss` (same formula, normalisation and centre), memory-light."""


class FastiBOTPatchLoss(_ChunkedCrossEntropy, iBOTPatchLoss):
    """:class:`pretrain.losses.iBOTPatchLoss` (same per-image weighting and centre), memory-light."""


def upgrade_loss(loss: nn.Module) -> nn.Module:
    """A Fast* copy of a DINOLoss / iBOTPatchLoss carrying the same settings and centre buffer."""
    cls = {DINOLoss: FastDINOLoss, iBOTPatchLoss: FastiBOTPatchLoss}.get(type(loss))
    if cls is None:
        return loss
    fast = cls.__new__(cls)
    fast.__dict__.update(loss.__dict__)  # parameters, buffers (the centre), temperatures: shared, not copied
    return fast


def maybe_compile(module: nn.Module, enabled: bool = True, *, inplace: bool = True, dynamic: bool | None = False,
                  **kwargs) -> nn.Module:
    """``torch.compile`` ``module`` when ``enabled`` (else return it untouched).

    ``inplace`` uses ``nn.Module.compile`` so parameter names and state dicts stay as they were
    (optimisers, checkpoints and EMA pairs keep working). ``dynamic=False`` specialises on shapes:
    each crop size compiles once (global, local, and again at a stage switch), no step recompiles.
    Raises dynamo's recompile limit to :data:`RECOMPILE_LIMIT` so long curricula stay compiled.
    """
    if not enabled:
        return module
    # every crop shape x call (student global / local, teacher) is one graph of the backbones' shared
    # frame: 3 per curriculum stage. Past dynamo's default limit (8: under 3 stages) it silently runs
    # new shapes eagerly; steps themselves never recompile (tests/test_compile.py)
    torch._dynamo.config.recompile_limit = max(torch._dynamo.config.recompile_limit, RECOMPILE_LIMIT)
    if inplace:
        module.compile(dynamic=dynamic, **kwargs)
        return module
    return torch.compile(module, dynamic=dynamic, **kwargs)


def accelerate_meta_arch(meta, *, compile: bool = True, fast_losses: bool = True, compile_kwargs=None):
    """Upgrade a :class:`pretrain.meta_arch.MetaArch` in place for speed (same maths):
    backbones compiled in place (student and teacher), DINO/iBOT losses replaced by the memory-light
    versions sharing their centres. Returns ``meta``. Call before building the optimiser or after:
    parameter names do not change."""
    if fast_losses:
        meta.dino_loss = upgrade_loss(meta.dino_loss)
        meta.ibot_loss = upgrade_loss(meta.ibot_loss)
    if compile:
        for part in (meta.student, meta.teacher):
            maybe_compile(part.backbone, True, **(compile_kwargs or {}))
    return meta
