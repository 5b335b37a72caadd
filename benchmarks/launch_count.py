"""Operator calls of one training step (a CPU stand-in for GPU kernel launches), per part of the step.

A GPU step whose kernels are small is bound by how many kernels the host launches, not by FLOPs
(stage 1 on an H100: 42 vs 75 ms per step on two hosts with the same GPU). The number of operator
calls does not need a GPU: the profiler on the CPU sees the same aten operators the CUDA backend
would launch. Counted here, for the engine's eager step (``--compile`` fuses the backbone parts):

- ``augment``: :class:`pretrain.gpu_augment.GpuMultiCrop` on a decoded uint8 batch (the GPU pipeline);
- ``teacher``, ``student``: the backbones' forwards (the part ``--compile`` turns into one graph each);
- ``forward_backward``: everything in ``MetaArch.forward_backward`` (heads, losses, backward included);
- ``clip``, ``optimizer``, ``ema``: gradient clipping, AdamW (fused, as on CUDA), the teacher EMA.

What counts: top-level aten operators (an op called by another op is part of it), without the
ones that launch no kernel (views, reshapes, allocations, ``detach``, a ``to()`` that copies nothing). Op counts do not depend
on the batch size except through the chunked cross-entropy, whose loop runs ``ceil(rows / chunk)``
times: this script sets the chunk so the loop runs as often as at ``--target-batch`` (128), and
checks the counts at two batch sizes agree (``--check-batch``).

    python benchmarks/launch_count.py --out launch_counts.csv       # ~1-2 min on 2 CPU cores
"""

from __future__ import annotations

import argparse
import contextlib
import math
import sys
from collections import Counter

import dataclasses

import torch
from torch.profiler import ProfilerActivity, profile, record_function

NO_KERNEL = {
    "aten::view",
    "aten::_unsafe_view",
    "aten::reshape",
    "aten::as_strided",
    "aten::expand",
    "aten::t",
    "aten::transpose",
    "aten::permute",
    "aten::slice",
    "aten::select",
    "aten::unsqueeze",
    "aten::squeeze",
    "aten::split",
    "aten::split_with_sizes",
    "aten::chunk",
    "aten::unbind",
    "aten::narrow",
    "aten::alias",
    "aten::detach",
    "aten::detach_",
    "aten::empty",
    "aten::empty_like",
    "aten::empty_strided",
    "aten::lift_fresh",
    "aten::resolve_conj",
    "aten::resolve_neg",
    "aten::result_type",
    "aten::flatten",
    "aten::unflatten",
    "aten::view_as",
    "aten::expand_as",
    "aten::contiguous",
    "aten::numpy_T",
    "aten::matrix_H",
    "aten::is_nonzero",
    "aten::item",
    "aten::_local_scalar_dense",
    "aten::set_",
    "aten::_has_compatible_shallow_copy_type",
    "aten::requires_grad_",
    "aten::retain_grad",
    "aten::unsafe_split",
    "aten::movedim",
    "aten::squeeze_",
    "aten::unsqueeze_",
    "aten::swapaxes",
}
PARTS = ("augment", "teacher", "student", "forward_backward", "clip", "optimizer", "ema")
STAGES = {"stage1": (112, 48), "stage2": (224, 96)}


def count_ops(prof) -> Counter:
    """Kernel-launching top-level aten ops per part (the innermost ``record_function`` named in PARTS)."""
    counts: Counter = Counter()
    for event in prof.events():
        if not event.name.startswith("aten::") or event.name in NO_KERNEL:
            continue
        if event.name == "aten::to" and not event.cpu_children:
            continue  # to() onto the dtype and device a tensor already has: returns it, no copy
        parent, part = event.cpu_parent, None
        while parent is not None:
            if parent.name.startswith("aten::"):
                part = None
                break
            if part is None and parent.name in PARTS:
                part = parent.name
            parent = parent.cpu_parent
        else:
            if part is not None:
                counts[part] += 1
        # an op called by another aten op broke out of the loop above: part of its caller, not counted
    return counts


class _Regions:
    """Forward hooks that put each backbone call inside a ``record_function`` region."""

    def __init__(self, meta):
        self.handles = []
        for name, module in (("teacher", meta.teacher.backbone), ("student", meta.student.backbone)):
            holder = {}
            self.handles.append(module.register_forward_pre_hook(self._enter(name, holder)))
            self.handles.append(module.register_forward_hook(self._exit(holder)))

    @staticmethod
    def _enter(name, holder):
        def hook(module, args):
            holder.setdefault("stack", []).append(record_function(name).__enter__())

        return hook

    @staticmethod
    def _exit(holder):
        def hook(module, args, output):
            holder["stack"].pop().__exit__(None, None, None)

        return hook

    def remove(self):
        for h in self.handles:
            h.remove()


@contextlib.contextmanager
def _foreach_clipping():
    """clip_grad_norm_ with foreach ops, as CUDA tensors get by default (CPU ones get a loop)."""
    original = torch.nn.utils.clip_grad_norm_
    torch.nn.utils.clip_grad_norm_ = lambda params, max_norm, **kw: original(params, max_norm, foreach=True, **kw)
    try:
        yield
    finally:
        torch.nn.utils.clip_grad_norm_ = original


def decoded_batch(batch: int, side: int, seed: int = 0):
    """A padded uint8 batch as the decode workers give it: half landscape, half portrait (4:3)."""
    g = torch.Generator().manual_seed(seed)
    long = math.ceil(side * 4 / 3)
    sizes = torch.tensor([(side, long) if i % 2 else (long, side) for i in range(batch)])
    images = torch.randint(0, 256, (batch, 3, long, long), dtype=torch.uint8, generator=g)
    from pretrain.batch import DecodedBatch

    return DecodedBatch(images=images, sizes=sizes, labels=torch.zeros(batch, dtype=torch.long))


def one_step_counts(arch: str, stage: str, batch: int, target_batch: int, prototypes: int, seed: int = 0) -> Counter:
    from pretrain.losses import DEFAULT_CHUNK_ROWS
    from pretrain.bench import BenchConfig, TrainStep, bench_stages
    from pretrain.masking import make_masks, masked_token_indices
    from pretrain.pipeline import decode_side, make_gpu_augment
    from pretrain.schedules import apply_schedules

    global_size, local_size = STAGES[stage]
    cfg = BenchConfig(
        arch=arch,
        batch_size=batch,
        global_size=224,
        local_size=96,
        prototypes=prototypes,
        stages=(stage,),
        device="cpu",
        seed=seed,
    )
    plan = bench_stages(cfg)[0]
    assert (plan.global_size, plan.local_size) == (global_size, local_size)
    torch.manual_seed(seed)
    step = TrainStep(cfg, torch.device("cpu"), fast=True, compile=False)
    step.accelerate()
    # AdamW as on CUDA (engine.build_optimizer: fused there), same groups
    groups = [{k: v for k, v in g.items() if k not in ("fused", "foreach")} for g in step.optimizer.param_groups]
    step.optimizer = torch.optim.AdamW(groups, lr=0.0, fused=True)
    # the chunked cross-entropy loops as often as it would at target_batch
    chunk = max(1, round(DEFAULT_CHUNK_ROWS * batch / target_batch))
    for loss in (step.meta.dino_loss, step.meta.ibot_loss):
        loss.chunk_rows = chunk

    augment = make_gpu_augment(step.pcfg, plan)
    raw = decoded_batch(batch, decode_side(plan), seed)
    grid = global_size // cfg.recipe.model.patch_size
    # the masks of 2 images tiled: the iBOT rows grow exactly with the batch, so do the chunks' rows
    masks = make_masks(4, (grid, grid), 0.5, (0.1, 0.5), torch.Generator().manual_seed(seed + 1)).repeat(batch // 2, 1)
    indices, weights = masked_token_indices(masks)
    raw = dataclasses.replace(raw, masks=masks, mask_indices=indices, mask_weights=weights)
    generator = torch.Generator().manual_seed(seed)
    meta, opt = step.meta, step.optimizer

    def run(profiled: bool):
        with record_function("augment"):
            train_batch = augment(dataclasses.replace(raw), generator)
        apply_schedules(opt, step.LR, step.WD, False)
        opt.zero_grad(set_to_none=True)
        with record_function("forward_backward"):
            meta.forward_backward(train_batch, step.TEACHER_TEMP)
        with record_function("clip"), _foreach_clipping():
            meta.clip_gradients(step.pcfg.optim.clip_grad)
        with record_function("optimizer"):
            opt.step()
        with record_function("ema"):
            meta.update_teacher(step.MOMENTUM)
        return train_batch

    run(False)  # warm-up: AdamW creates its state
    regions = _Regions(meta)
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        train_batch = run(True)
    regions.remove()
    counts = count_ops(prof)
    counts["ibot_rows"] = int(train_batch.mask_indices.numel())
    counts["chunk_rows"] = chunk
    return counts


def main(argv=None) -> int:
    import pandas as pd

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--arch", default="vit_small")
    parser.add_argument("--batch", type=int, default=2, help="even")
    parser.add_argument("--check-batch", type=int, default=4, help="a second (even) batch size; 0 = no check")
    parser.add_argument("--target-batch", type=int, default=128)
    parser.add_argument("--prototypes", type=int, default=65536)
    parser.add_argument("--stages", default="stage1,stage2")
    parser.add_argument("--out", default=None, help="CSV of the counts")
    args = parser.parse_args(argv)
    torch.set_num_threads(max(1, torch.get_num_threads()))

    rows = []
    for stage in args.stages.split(","):
        batches = [args.batch] + ([args.check_batch] if args.check_batch else [])
        per_batch = {b: one_step_counts(args.arch, stage, b, args.target_batch, args.prototypes) for b in batches}
        for b, c in per_batch.items():
            row = {
                "arch": args.arch,
                "stage": stage,
                "crops": "%d/%d" % STAGES[stage],
                "batch": b,
                **{p: c[p] for p in PARTS},
                "step_total": sum(c[p] for p in PARTS if p != "augment"),
                "ibot_rows": c["ibot_rows"],
                "chunk_rows": c["chunk_rows"],
            }
            rows.append(row)
            print(", ".join(f"{k} {v}" for k, v in row.items()), flush=True)
        if len(per_batch) == 2:
            a, b = (per_batch[x] for x in batches)
            diff = {p: (a[p], b[p]) for p in PARTS if a[p] != b[p]}
            print(
                f"{stage}: counts at batch {batches[0]} and {batches[1]} "
                f"{'agree' if not diff else 'differ: ' + str(diff)}",
                flush=True,
            )
    if args.out:
        from fdbench.io import atomic_write_csv

        atomic_write_csv(args.out, pd.DataFrame(rows))
    return 0


if __name__ == "__main__":
    sys.exit(main())
