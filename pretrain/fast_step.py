"""Speed-ups of the DINOv2 training step that leave its maths unchanged.

- :func:`maybe_compile`: ``torch.compile`` a module in place (parameter names unchanged), static
  shapes, so a curriculum's stage switch costs one recompile and steps cost none.
- :func:`accelerate_meta_arch`: compiles a :class:`pretrain.meta_arch.MetaArch`'s backbones in place.

The rest of the fast step lives where it is used: the chunked cross-entropy inside the DINO/iBOT
losses (:func:`pretrain.losses.soft_cross_entropy`), fused AdamW in ``pretrain.step.build_optimizer``,
the ``_foreach`` EMA in ``MetaArch.update_teacher``, losses read back on logging steps only in the
engine's loop, and the iBOT gathers on host-computed indices in ``pretrain.meta_arch``.
"""

from __future__ import annotations

import torch
from torch import nn

RECOMPILE_LIMIT = 64  # graphs per compiled frame: ~20 curriculum stages


def maybe_compile(
    module: nn.Module, enabled: bool = True, *, inplace: bool = True, dynamic: bool | None = False, **kwargs
) -> nn.Module:
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


def accelerate_meta_arch(meta, *, compile: bool = True, compile_kwargs=None):
    """Compile a :class:`pretrain.meta_arch.MetaArch`'s backbones (student and teacher) in place
    when ``compile``. Returns ``meta``. Call before building the optimiser or after: parameter names
    do not change."""
    if compile:
        for part in (meta.student, meta.teacher):
            maybe_compile(part.backbone, True, **(compile_kwargs or {}))
    return meta
