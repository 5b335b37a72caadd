"""``--strategy fsdp`` (FSDP2) and ``--activation-checkpointing``: memory for big ViTs, same maths.

FSDP2 (``torch.distributed.fsdp.fully_shard``) shards every transformer block of the student and
teacher backbones, each backbone's remaining parameters (patch embedding, tokens, final norm) and
each DINO/iBOT head over the ranks: parameters, gradients and AdamW's moments are
``DTensor`` shards (dim 0), gathered block by block for compute. On CUDA the gathered parameters
are bf16 and gradients are reduced in fp32 (``MixedPrecisionPolicy``); the sharded master weights
stay fp32. The rest of the step works on the shards:

- gradients are averaged over the ranks by FSDP's reduce-scatter (as DDP's all-reduce does);
- gradient clipping: ``clip_grad_norm_`` on DTensor gradients computes the norm over all shards;
- the EMA teacher update runs on the local shards (student and teacher shard alike);
- the centring statistics were already all-reduced over the ranks (``pretrain.center``).

Checkpoints stay one consolidated ``fdbench/1`` file, the same as under DDP: on save every rank
gathers the full tensors (:func:`full_state_dict`, :func:`full_optimizer_state`, collectives) and
rank 0 writes them; on resume the full model is loaded before sharding and the full optimiser state
is re-sharded (:func:`shard_optimizer_state`). So resume, export and every evaluation are unchanged,
and a run may resume under another strategy or number of processes (the same maths, other rounding).

Activation checkpointing recomputes each student block in the backward pass instead of keeping its
activations (``torch.utils.checkpoint``, non-reentrant; the RNG state is replayed, so drop path
draws the same masks). Parameter names do not change.
"""

from __future__ import annotations

import copy

import torch
import torch.distributed as dist
from torch import nn
from torch.utils.checkpoint import checkpoint


def _dtensor_type():
    from torch.distributed.tensor import DTensor

    return DTensor


def is_sharded(tensor) -> bool:
    return isinstance(tensor, _dtensor_type())


def full(tensor: torch.Tensor) -> torch.Tensor:
    """The whole tensor of a DTensor shard (a collective: every rank calls it, in the same order)."""
    return tensor.full_tensor() if is_sharded(tensor) else tensor


def local(tensor: torch.Tensor) -> torch.Tensor:
    return tensor.to_local() if is_sharded(tensor) else tensor


def checkpoint_blocks(backbone: nn.Module) -> None:
    """Recompute each of ``backbone.blocks`` in the backward pass (names and state dict unchanged)."""
    for block in backbone.blocks:
        forward = block.forward

        def recomputed(x, *args, _forward=forward, **kwargs):
            if not torch.is_grad_enabled():
                return _forward(x, *args, **kwargs)
            return checkpoint(_forward, x, *args, use_reentrant=False, **kwargs)

        block.forward = recomputed


def shard_student_and_teacher(meta) -> None:
    """FSDP2 on ``meta`` (a :class:`pretrain.meta_arch.MetaArch`): blocks, backbones, heads."""
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.fsdp import MixedPrecisionPolicy, fully_shard

    mesh = init_device_mesh(meta.device.type, (dist.get_world_size(),))
    cuda = meta.device.type == "cuda"
    policy = MixedPrecisionPolicy(param_dtype=torch.bfloat16, reduce_dtype=torch.float32) if cuda else None
    kwargs = {"mesh": mesh, **({"mp_policy": policy} if policy is not None else {})}
    for part in (meta.student, meta.teacher):
        for block in part.backbone.blocks:
            fully_shard(block, **kwargs)
        # the backbone and each head are their own roots: the teacher calls them one by one
        fully_shard(part.backbone, **kwargs)
        for head in (part.dino_head, part.ibot_head):
            if head is not None:
                fully_shard(head, **kwargs)


def reshard(module: nn.Module) -> None:
    """Free the gathered parameters of every FSDP module in ``module`` (back to the shards)."""
    from torch.distributed.fsdp import FSDPModule

    for m in module.modules():
        if isinstance(m, FSDPModule):
            m.reshard()


def full_state_dict(module: nn.Module) -> dict[str, torch.Tensor]:
    """``module.state_dict()`` with every shard gathered (collective; the values on CPU)."""
    return {k: full(v).detach().cpu() if isinstance(v, torch.Tensor) else v for k, v in module.state_dict().items()}


def full_optimizer_state(optimizer: torch.optim.Optimizer) -> dict:
    """The optimiser's state dict in the unsharded layout (what DDP saves; collective)."""
    sd = optimizer.state_dict()
    state = {
        i: {k: full(v).detach().cpu() if isinstance(v, torch.Tensor) else v for k, v in s.items()}
        for i, s in sorted(sd["state"].items())
    }
    return {"state": state, "param_groups": sd["param_groups"]}


def shard_optimizer_state(optimizer: torch.optim.Optimizer, full_sd: dict) -> None:
    """Load an unsharded optimiser state dict into an optimiser over DTensor parameters."""
    from torch.distributed.tensor import distribute_tensor

    params = [p for group in optimizer.param_groups for p in group["params"]]
    sd = copy.copy(full_sd)
    sd["state"] = {}
    for i, s in sorted(full_sd["state"].items()):
        p, entry = params[int(i)], {}
        for k, v in s.items():
            if is_sharded(p) and isinstance(v, torch.Tensor) and v.shape == p.shape:
                v = distribute_tensor(v.to(p.device, p.dtype), p.device_mesh, p.placements)
            entry[k] = v
        sd["state"][i] = entry
    optimizer.load_state_dict(sd)
