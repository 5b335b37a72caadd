"""Data-parallel set-up under ``torchrun`` and the small collectives the loop needs, plus every
rank's RNG state as checkpoint-safe values (tensors and numbers, loadable with ``weights_only``)."""

from __future__ import annotations

import os
import random
from dataclasses import dataclass

import numpy as np
import torch
import torch.distributed as dist

from fdbench.device import resolve_device


@dataclass
class Dist:
    rank: int = 0
    world_size: int = 1
    device: torch.device = torch.device("cpu")
    owns_group: bool = False  # True when train() created the process group

    @property
    def main(self) -> bool:
        return self.rank == 0


def setup_distributed(device_spec: str) -> Dist:
    """Join the ``torchrun`` process group (gloo on CPU, NCCL on CUDA) when WORLD_SIZE > 1."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1 and not (dist.is_available() and dist.is_initialized()):
        return Dist(device=resolve_device(device_spec))
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    device = resolve_device(device_spec)
    if device.type == "cuda":
        device = torch.device("cuda", local_rank if device.index is None else device.index)
        torch.cuda.set_device(device)
    owns = False
    if not dist.is_initialized():
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
        owns = True
    return Dist(dist.get_rank(), dist.get_world_size(), device, owns)


def all_mean(values: torch.Tensor, ddp: Dist) -> torch.Tensor:
    if ddp.world_size > 1:
        dist.all_reduce(values)
        values /= ddp.world_size
    return values


def any_rank(flag: bool, ddp: Dist) -> bool:
    """``flag`` or'ed over the ranks (a collective and a host sync: call on the same steps everywhere)."""
    if ddp.world_size == 1:
        return flag
    agreed = torch.tensor([float(flag)], device=ddp.device)
    dist.all_reduce(agreed, op=dist.ReduceOp.MAX)
    return bool(agreed.item())


def rng_state() -> dict:
    np_state = np.random.get_state()
    py_state = random.getstate()
    return {
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
        "numpy": {
            "keys": torch.from_numpy(np_state[1].astype(np.int64)),
            "pos": int(np_state[2]),
            "has_gauss": int(np_state[3]),
            "cached_gaussian": float(np_state[4]),
        },
        "python": [py_state[0], list(py_state[1]), py_state[2]],
    }


def set_rng_state(state: dict) -> None:
    torch.set_rng_state(state["torch"].cpu())
    if state["cuda"] and torch.cuda.is_available() and len(state["cuda"]) == torch.cuda.device_count():
        torch.cuda.set_rng_state_all([t.cpu() for t in state["cuda"]])
    n = state["numpy"]
    np.random.set_state(
        ("MT19937", n["keys"].numpy().astype(np.uint32), n["pos"], n["has_gauss"], n["cached_gaussian"])
    )
    py = state["python"]
    random.setstate((py[0], tuple(py[1]), py[2]))


def gather_rng(ddp: Dist) -> list[dict]:
    """Every rank's RNG state (rank order), so a DDP run resumes each rank's draws."""
    mine = rng_state()
    if ddp.world_size == 1:
        return [mine]
    states: list = [None] * ddp.world_size
    dist.all_gather_object(states, mine)
    return states
