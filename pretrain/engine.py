"""The pretraining loop: ``train(config) -> RunResult``. Read it top to bottom.

A run lives in one folder (``--out``, default ``runs/<curriculum>``)::

    config.yaml            the full PretrainConfig
    metrics.csv            one row per logging step (losses, schedules, img/s, memory, crop sizes)
                           plus one "knn" row per evaluation
    costs.csv              per stage: FLOPs per image, wall-clock, img/s, peak memory
    summary.json           the same per stage, total FLOPs, the FLOPs ratio vs `none`, final kNN
    checkpoints/last.pt    everything needed to continue exactly (+ epoch_XXXX.pt if asked)
    final.pt               the finished model (kind "training", without optimiser state)

Re-running the same command on the same folder continues from ``checkpoints/last.pt``: the data
order, the crops and masks (seeded per sample and per batch), the schedules, the optimiser, the
centring statistics and the RNG states all resume where they stopped, so the weights match an
uninterrupted run exactly (on CPU). Under ``torchrun`` every rank runs this same function; rank 0
writes the files.

Speed: the crops come from ``--data-pipeline`` (``pretrain.pipeline``: ``gpu`` = workers only decode
and the device augments the batch, the default on CUDA; ``cpu`` = workers augment), the DINO/iBOT
cross-entropies are the memory-light chunked ones and, with ``--compile`` (default on CUDA), the
backbones are compiled in place (``pretrain.fast_step``). The step reads nothing back to the host:
losses stay on the device and are read on logging steps only (``train_step``, ``NonFiniteWatch``),
and the iBOT masked tokens are gathered at indices the collate computed on the CPU (``pretrain.meta_arch``),
so on CUDA the host queues step after step without waiting for the device.
"""

from __future__ import annotations

import contextlib
import dataclasses
import math
import os
import random
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np
import torch
import torch.distributed as dist

from fdbench.checkpoint import read_checkpoint, save_checkpoint
from fdbench.lock import lock_folder
from fdbench.config import save_yaml
from fdbench.data import open_dataset, resolve_root
from fdbench.device import resolve_device, seed_everything
from fdbench.errors import FdbenchError
from fdbench.io import atomic_write_csv, atomic_write_json, progress
from pretrain import costs as costs_mod
from pretrain.config import PretrainConfig, validate
from pretrain.data import AugmentedDataset, MultiCropCollate, default_workers
from pretrain.fast_step import accelerate_meta_arch
from pretrain.meta_arch import MetaArch
from pretrain.pipeline import StageFeed, make_augment, resolve_pipeline
from pretrain.schedules import apply_schedules

# Keys a re-run may change without breaking "continue exactly where it stopped".
VOLATILE_KEYS = {"run.device", "run.out", "run.log_every", "run.save_every_minutes", "run.save_every_steps",
                 "run.keep_every_epochs", "run.eval_every", "run.stop_after_steps", "data.workers",
                 "run.knn_k", "run.knn_temperature", "run.knn_train_per_class", "run.knn_val_per_class",
                 "run.threads", "run.compile"}   # compiling changes the speed, not the maths
METRIC_COLUMNS = ["row", "epoch", "step", "stage", "stage_name", "global_size", "local_size", "n_local",
                  "loss", "dino", "koleo", "ibot", "lr", "wd", "momentum", "teacher_temp", "grad_norm",
                  "img_per_s", "step_time_s", "peak_memory_mb", "gflops_per_image", "knn_top1", "knn_top5",
                  "elapsed_s", "run_time_s"]
LOSS_TERMS = ("loss", "dino", "koleo", "ibot")   # MetaArch.forward_backward's keys, in this order


@dataclass
class RunResult:
    out: Path
    final: Path | None                 # None when the run stopped early (stop_after_steps)
    metrics: Path
    summary_path: Path
    config_path: Path
    summary: dict = field(default_factory=dict)
    finished: bool = False
    resumed_from: int | None = None    # the step a resumed run started from

    @property
    def knn_top1(self) -> float | None:
        return self.summary.get("knn", {}).get("final_top1")


# ---- distributed set-up ------------------------------------------------------------------------

@dataclass
class Dist:
    rank: int = 0
    world_size: int = 1
    device: torch.device = torch.device("cpu")
    owns_group: bool = False           # True when train() created the process group

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


def _all_mean(values: torch.Tensor, d: Dist) -> torch.Tensor:
    if d.world_size > 1:
        dist.all_reduce(values)
        values /= d.world_size
    return values


# ---- the curriculum as a plan of iterations ----------------------------------------------------

@dataclass
class StagePlan:
    index: int
    name: str
    start_epoch: int
    end_epoch: int                     # exclusive
    global_size: int
    local_size: int
    n_local: int
    global_scale: tuple[float, float]
    local_scale: tuple[float, float]
    noise_patching: bool
    noise_max_sigma: float

    def iterations(self, ipe: int) -> tuple[int, int]:
        return self.start_epoch * ipe, self.end_epoch * ipe


def resolve_curriculum(cfg: PretrainConfig):
    """The Curriculum object for ``cfg.curriculum.name`` (a named one or a YAML file)."""
    from pretrain.curriculum import build_curriculum, load_curriculum_yaml

    c = cfg.curriculum
    if c.name in ("none", "two-stage"):
        return build_curriculum(c.name, global_size=cfg.crops.global_size, local_size=cfg.crops.local_size,
                                stage1_fraction=c.stage1_fraction, stage1_scale=c.stage1_scale,
                                stage1_global_size=c.stage1_global_size, stage1_local_size=c.stage1_local_size,
                                noise_patching=c.noise_patching, noise_max_sigma=c.noise_max_sigma,
                                n_local=cfg.crops.n_local, global_scale=tuple(cfg.crops.global_scale),
                                local_scale=tuple(cfg.crops.local_scale))
    if c.name.endswith((".yaml", ".yml")):
        if not Path(c.name).is_file():
            raise FdbenchError(f"curriculum file not found: {c.name}")
        return load_curriculum_yaml(c.name)
    raise FdbenchError(f"unknown curriculum {c.name!r}: use none, two-stage or a FILE.yaml")


def plan_stages(cfg: PretrainConfig, curriculum) -> list[StagePlan]:
    """Stages with epoch ranges (stages without epochs dropped) and crop sizes rounded to the patch.

    Named curricula take the number of local crops and the crop scales from ``cfg.crops``; a YAML
    curriculum sets them per stage.
    """
    from pretrain.curriculum import round_to_patch

    patch = cfg.model.patch_size
    plans = []
    for stage, (start, end) in zip(curriculum.stages, curriculum.stage_epochs(cfg.run.epochs)):
        if end <= start:
            continue
        plans.append(StagePlan(
            index=len(plans), name=stage.name, start_epoch=start, end_epoch=end,
            global_size=round_to_patch(stage.global_size, patch),
            local_size=round_to_patch(stage.local_size, patch) if stage.n_local else 0,
            n_local=stage.n_local, global_scale=tuple(stage.global_scale), local_scale=tuple(stage.local_scale),
            noise_patching=bool(stage.noise_patching), noise_max_sigma=float(stage.noise_max_sigma)))
    return plans


def none_stage(cfg: PretrainConfig) -> StagePlan:
    """The reference the FLOPs ratio is measured against: this run's recipe as curriculum ``none``."""
    return StagePlan(0, "none", 0, cfg.run.epochs, cfg.crops.global_size, cfg.crops.local_size,
                     cfg.crops.n_local, tuple(cfg.crops.global_scale), tuple(cfg.crops.local_scale), False, 0.0)


def stage_at(stages: list[StagePlan], epoch: int) -> StagePlan:
    return next(p for p in stages if p.start_epoch <= epoch < p.end_epoch)


# ---- schedules --------------------------------------------------------------------------------

@dataclass
class Schedules:
    """One value per iteration of the whole run."""

    lr: torch.Tensor
    wd: torch.Tensor
    momentum: torch.Tensor
    teacher_temp: torch.Tensor
    freeze_last_layer: torch.Tensor    # bool


def build_schedules(cfg: PretrainConfig, stages: list[StagePlan], ipe: int) -> Schedules:
    """DINOv2's per-iteration schedules, over the whole run (continuous) or restarted per stage.

    Continuous: lr = warm-up to ``scaled_lr`` then cosine to ``min_lr``; wd cosine 0.04 -> 0.4;
    teacher momentum cosine 0.992 -> 1; teacher temperature linear warm-up then constant; the
    heads' last layer frozen for ``freeze_last_layer_epochs``. With ``stage_restart`` each stage gets
    its own copy of these curves over its own length (the paper's code restarts the run at the
    switch); a restarted stage's warm-ups and freeze are capped at 20% of the stage (the paper's
    10 warm-up epochs of a 50-epoch second stage).
    """
    from pretrain.schedules import cosine_schedule, linear_warmup_then_constant, scaled_lr

    o, lc = cfg.optim, cfg.loss
    peak = scaled_lr(o.base_lr, cfg.run.batch_size)
    if o.stage_restart:
        segments = [(p.iterations(ipe), p.index > 0) for p in stages]
    else:
        segments = [((0, cfg.run.epochs * ipe), False)]
    parts: dict[str, list[torch.Tensor]] = {k: [] for k in ("lr", "wd", "momentum", "teacher_temp", "freeze")}
    for (start, end), restarted in segments:
        n = end - start
        cap = (lambda iters: min(int(iters), round(0.2 * n))) if restarted else (lambda iters: int(iters))
        warmup = cap(o.warmup_epochs * ipe)
        parts["lr"].append(cosine_schedule(peak, o.min_lr, n, warmup_iters=warmup))
        parts["wd"].append(cosine_schedule(o.weight_decay, o.weight_decay_end, n))
        parts["momentum"].append(cosine_schedule(o.momentum_teacher, o.final_momentum_teacher, n))
        parts["teacher_temp"].append(linear_warmup_then_constant(
            lc.warmup_teacher_temp, lc.teacher_temp, cap(lc.warmup_teacher_temp_epochs * ipe), n))
        parts["freeze"].append(torch.arange(n) < cap(o.freeze_last_layer_epochs * ipe))
    return Schedules(*(torch.cat(parts[k]) for k in ("lr", "wd", "momentum", "teacher_temp", "freeze")))


def build_optimizer(meta: MetaArch, cfg: PretrainConfig) -> torch.optim.Optimizer:
    from pretrain.schedules import param_groups

    groups = param_groups(meta.named_student_modules(), lr_decay=cfg.optim.layerwise_decay,
                          patch_embed_lr_mult=cfg.optim.patch_embed_lr_mult)
    fused = meta.device.type == "cuda"
    return torch.optim.AdamW(groups, lr=0.0, betas=(cfg.optim.beta1, cfg.optim.beta2), fused=fused)


def resolve_compile(flag: bool | None, device: torch.device) -> bool:
    """``--compile`` default: on CUDA only (on a CPU compiling costs more than the short runs gain)."""
    return device.type == "cuda" if flag is None else bool(flag)


# ---- one iteration -----------------------------------------------------------------------------

def train_step(meta: MetaArch, optimizer: torch.optim.Optimizer, batch: dict, *, lr: float, wd: float,
               freeze_last_layer: bool, teacher_temp: float, momentum: float,
               clip_grad: float) -> dict[str, torch.Tensor]:
    """One DINOv2 iteration at the given schedule values: forward/backward, last-layer freeze,
    per-part gradient clipping, AdamW, EMA of the teacher. ``fdbench bench-train`` times this too.

    Returns the loss terms (:data:`LOSS_TERMS`) and the backbone's gradient norm as device tensors:
    nothing is read back to the host, so on a GPU the host queues the next step while this one runs.
    """
    apply_schedules(optimizer, lr, wd, freeze_last_layer)
    optimizer.zero_grad(set_to_none=True)
    losses = meta.forward_backward(batch, teacher_temp)
    if freeze_last_layer:
        meta.cancel_last_layer_gradients()
    grad_norm = meta.clip_gradients(clip_grad)
    optimizer.step()
    meta.update_teacher(momentum)
    return {**losses, "grad_norm": grad_norm}


class NonFiniteWatch:
    """The first step whose loss terms were not all finite, and those terms, kept on the device.

    Testing every loss on the host would make the host wait for the device at every step; a flag
    updated on the device costs two tiny kernels and is read where it matters (logging steps, before
    any checkpoint, when stopping), yet still names the exact step. Steps count from 1; 0 = none.
    """

    def __init__(self, device: torch.device):
        self.first = torch.zeros((), dtype=torch.long, device=device)
        self.values: torch.Tensor | None = None

    def add(self, step: int, values: torch.Tensor) -> None:
        bad = (~torch.isfinite(values)).any() & (self.first == 0)
        self.first = torch.where(bad, step, self.first)
        self.values = values if self.values is None else torch.where(bad, values, self.values)

    def first_bad(self) -> tuple[int, list[float]] | None:
        """``(step, values)`` of the first non-finite step, or None (reads back from the device)."""
        step = int(self.first)
        return None if step == 0 else (step, self.values.tolist())


def _any_rank(flag: bool, d: Dist) -> bool:
    """``flag`` or'ed over the ranks (a collective and a host sync: call on the same steps everywhere)."""
    if d.world_size == 1:
        return flag
    agreed = torch.tensor([float(flag)], device=d.device)
    dist.all_reduce(agreed, op=dist.ReduceOp.MAX)
    return bool(agreed.item())


# ---- RNG state as checkpoint-safe values -------------------------------------------------------

def rng_state() -> dict:
    np_state = np.random.get_state()
    py_state = random.getstate()
    return {
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
        "numpy": {"keys": torch.from_numpy(np_state[1].astype(np.int64)), "pos": int(np_state[2]),
                  "has_gauss": int(np_state[3]), "cached_gaussian": float(np_state[4])},
        "python": [py_state[0], list(py_state[1]), py_state[2]],
    }


def set_rng_state(state: dict) -> None:
    torch.set_rng_state(state["torch"].cpu())
    if state["cuda"] and torch.cuda.is_available() and len(state["cuda"]) == torch.cuda.device_count():
        torch.cuda.set_rng_state_all([t.cpu() for t in state["cuda"]])
    n = state["numpy"]
    np.random.set_state(("MT19937", n["keys"].numpy().astype(np.uint32), n["pos"], n["has_gauss"],
                         n["cached_gaussian"]))
    py = state["python"]
    random.setstate((py[0], tuple(py[1]), py[2]))


def _gather_rng(d: Dist) -> list[dict]:
    """Every rank's RNG state (rank order), so a DDP run resumes each rank's draws."""
    mine = rng_state()
    if d.world_size == 1:
        return [mine]
    states: list = [None] * d.world_size
    dist.all_gather_object(states, mine)
    return states


# ---- the run folder ----------------------------------------------------------------------------

def _flat(d: dict, prefix: str = "") -> dict:
    out = {}
    for k, v in d.items():
        key = f"{prefix}{k}"
        if isinstance(v, dict):
            out.update(_flat(v, key + "."))
        else:
            out[key] = list(v) if isinstance(v, tuple) else v
    return out


def check_same_run(saved: dict, cfg: PretrainConfig, out: Path) -> None:
    """A resumed run must be the same recipe; only logging/IO options may change.

    Options the saved config predates read as their defaults (a run started before an option
    existed still resumes)."""
    now, before = _flat(cfg.to_dict()), _flat(PretrainConfig.from_dict(saved).to_dict())
    diffs = [f"{k}: {before.get(k)!r} -> {now.get(k)!r}" for k in sorted(set(now) | set(before))
             if k not in VOLATILE_KEYS and before.get(k) != now.get(k)]
    if diffs:
        raise FdbenchError(f"{out} holds a run with different settings ({'; '.join(diffs[:4])}"
                           f"{'; ...' if len(diffs) > 4 else ''}); use another --out to start a new run, "
                           f"or delete {out}")


def _load_metrics(path: Path, up_to_step: int) -> list[dict]:
    """Rows already logged, without those past the checkpoint we resume from (they are redone)."""
    if not path.exists():
        return []
    import pandas as pd

    frame = pd.read_csv(path)
    frame = frame[frame["step"] <= up_to_step]
    return [{k: v for k, v in row.items() if not (isinstance(v, float) and math.isnan(v))}
            for row in frame.to_dict("records")]


def _write_metrics(path: Path, rows: list[dict]) -> None:
    import pandas as pd

    atomic_write_csv(path, pd.DataFrame(rows, columns=METRIC_COLUMNS))


# ---- costs -------------------------------------------------------------------------------------

def measure_flops(cfg: PretrainConfig, stages: list[StagePlan], train_set, d: Dist, per_rank_batch: int,
                  patch_size: int) -> tuple[list[int], int]:
    """FLOPs per training image of each stage and of the ``none`` reference, counted on one step.

    The step is the real ``MetaArch.forward_backward`` (student forward + backward on every crop,
    teacher forward, heads, losses) of a scratch copy of the model, on a real batch made by the
    stage's augmentation and collate. The scratch copy keeps the run's weights, optimiser, centres
    and RNG untouched; FLOPs do not depend on the weights.
    """
    n = max(2, min(per_rank_batch, 16))
    devices = [d.device] if d.device.type == "cuda" else []
    with torch.random.fork_rng(devices=devices):
        torch.manual_seed(cfg.run.seed + 7919)
        scratch = MetaArch(cfg, d.device)
        counts = []
        for stage in [*stages, none_stage(cfg)]:
            dataset = AugmentedDataset(train_set, make_augment(cfg, stage))
            collate = MultiCropCollate(patch_size, cfg.loss.mask_probability,
                                       (cfg.loss.mask_ratio_min, cfg.loss.mask_ratio_max))
            batch = collate([dataset[(i % len(train_set), cfg.run.seed + i, cfg.run.seed)] for i in range(n)])
            flops = costs_mod.count_flops(lambda: scratch.forward_backward(batch, cfg.loss.teacher_temp))
            scratch.zero_grad(set_to_none=True)
            counts.append(flops // n)
        del scratch
    return counts[:-1], counts[-1]


# ---- the loop ----------------------------------------------------------------------------------

def train(cfg: PretrainConfig, *, resume: bool = False, log: Callable[[str], None] | None = None) -> RunResult:
    """Train (or continue) the run described by ``cfg``; returns where everything was written.

    ``resume=True`` insists on an existing checkpoint; without it a checkpoint in the run folder is
    still picked up (re-running a command continues it).
    """
    validate(cfg)
    if cfg.run.threads:
        torch.set_num_threads(cfg.run.threads)
    d = setup_distributed(cfg.run.device)
    lock = None
    try:
        if d.main:   # one writer per run folder; a second pretrain (or its start-up clean-up) is refused
            lock = lock_folder(Path(cfg.run.out or Path("runs") / cfg.run_name), "pretrain")
        return _train(cfg, d, resume, log if (log and d.main) else (lambda message: None))
    finally:
        if lock is not None:
            lock.release()
        if d.owns_group:
            dist.destroy_process_group()


def _train(cfg: PretrainConfig, d: Dist, resume: bool, log: Callable[[str], None]) -> RunResult:
    out = Path(cfg.run.out or Path("runs") / cfg.run_name)
    paths = {"config": out / "config.yaml", "metrics": out / "metrics.csv", "summary": out / "summary.json",
             "costs": out / "costs.csv", "last": out / "checkpoints" / "last.pt", "final": out / "final.pt"}
    if cfg.run.batch_size % d.world_size:
        raise FdbenchError(f"--batch-size {cfg.run.batch_size} must be divisible by the {d.world_size} processes")
    per_rank_batch = cfg.run.batch_size // d.world_size

    # 1. data and curriculum -> stages of iterations
    root = resolve_root(cfg.data.root, announce=log)
    train_set = open_dataset(root, "train", class_list=cfg.data.class_list)
    ipe = len(train_set) // cfg.run.batch_size
    if ipe == 0:
        raise FdbenchError(f"the training set has {len(train_set)} images, fewer than one batch "
                           f"(--batch-size {cfg.run.batch_size}); lower --batch-size")
    curriculum = resolve_curriculum(cfg)
    stages = plan_stages(cfg, curriculum)
    total_iters = cfg.run.epochs * ipe
    sched = build_schedules(cfg, stages, ipe)
    full_size = stages[-1].global_size
    workers = cfg.data.workers if cfg.data.workers is not None else default_workers()
    pipeline = resolve_pipeline(cfg.data.pipeline, d.device)

    # 2. model and optimiser (same seed on every rank: identical initial weights); the fast step's
    # chunked cross-entropies always (same maths, less memory), compiled backbones if asked
    seed_everything(cfg.run.seed)
    meta = MetaArch(cfg, d.device)
    compiled = resolve_compile(cfg.run.compile, d.device)
    accelerate_meta_arch(meta, compile=compiled)
    optimizer = build_optimizer(meta, cfg)
    log(f"data pipeline {pipeline}, torch.compile {'on' if compiled else 'off'}, device {d.device}")
    if d.world_size > 1:
        torch.manual_seed(cfg.run.seed * 1000 + d.rank)   # ranks draw different drop-path masks from here on

    # 3. continue from the run folder's last checkpoint, or start a new run
    process_start, process_cpu_start = time.perf_counter(), costs_mod.cpu_seconds()
    step, knn_curve, elapsed, saved_rng, run_time_before, cpu_time_before = 0, [], 0.0, None, 0.0, 0.0
    stage_costs = [costs_mod.StageCost(p.name, p.global_size, p.local_size, p.n_local) for p in stages]
    none_flops = None
    resumed_from = None
    if paths["last"].exists():
        state = read_checkpoint(paths["last"], map_location=d.device)
        check_same_run(state["config"], cfg, out)
        meta.student.load_state_dict(state["student"])
        meta.teacher.load_state_dict(state["teacher"])
        meta.dino_loss.load_state_dict(state["losses"]["dino"])
        meta.ibot_loss.load_state_dict(state["losses"]["ibot"])
        optimizer.load_state_dict(state["optimizer"])
        saved_rng = state["rng"]
        step, knn_curve, elapsed = int(state["step"]), list(state["knn"]), float(state["elapsed_s"])
        run_time_before, cpu_time_before = float(state["run_time_s"]), float(state["cpu_time_s"])
        stage_costs = [costs_mod.StageCost.from_dict(c) for c in state["costs"]]
        none_flops = state["none_flops_per_image"]
        resumed_from = step
        log(f"resuming {out} at step {step}/{total_iters} (epoch {step // ipe})")
        before = state["data_position"].get("pipeline", "cpu")
        if before != pipeline:   # `auto` on another kind of device: same distributions, other draws
            log(f"note: this run's crops so far came from the {before} pipeline, from here on from the "
                f"{pipeline} one (--data-pipeline {before} keeps them exactly reproducible)")
    elif resume:
        raise FdbenchError(f"nothing to resume: {paths['last']} does not exist")
    elif d.main:
        out.mkdir(parents=True, exist_ok=True)
        save_yaml(cfg, paths["config"])
    if d.main and out.is_dir():
        # temp files of writes a kill interrupted (atomic writes never leave a half-written target)
        for stale in [*out.glob(".*.tmp"), *out.glob("checkpoints/.*.tmp")]:
            stale.unlink(missing_ok=True)
    metrics = _load_metrics(paths["metrics"], step) if d.main else []
    meta.wrap_ddp()

    if step >= total_iters and paths["final"].exists():
        log(f"{out} is already finished ({total_iters} iterations); nothing to do")
        summary = _read_json(paths["summary"])
        return RunResult(out, paths["final"], paths["metrics"], paths["summary"], paths["config"], summary,
                         True, resumed_from)

    # 4. what each stage costs in FLOPs per image (counted once per run)
    if none_flops is None:
        flops, none_flops = measure_flops(cfg, stages, train_set, d, per_rank_batch, cfg.model.patch_size)
        for cost, f in zip(stage_costs, flops):
            cost.flops_per_image = f

    monitor = None
    if d.main:
        from pretrain.monitor import KnnMonitor

        monitor = KnnMonitor(root, cfg.data.class_list, trained_size=full_size, patch_size=cfg.model.patch_size,
                             train_per_class=cfg.run.knn_train_per_class, val_per_class=cfg.run.knn_val_per_class,
                             k=cfg.run.knn_k, temperature=cfg.run.knn_temperature, workers=min(workers, 4))

    def run_time() -> float:
        return run_time_before + time.perf_counter() - process_start

    def cpu_time() -> float:
        # CPU seconds of this process and its finished DataLoader workers: a measure of the work
        # done that, unlike wall-clock, does not grow when other jobs share the cores
        return cpu_time_before + costs_mod.cpu_seconds() - process_cpu_start

    def checkpoint_state(final: bool = False) -> dict:
        teacher = meta.teacher
        state = {
            "kind": "training",
            "model": teacher.backbone.config.to_dict(),   # built at the full global crop size
            "teacher_backbone": teacher.backbone.state_dict(),
            "student": meta.student.state_dict(),
            "teacher": teacher.state_dict(),
            "losses": {"dino": meta.dino_loss.state_dict(), "ibot": meta.ibot_loss.state_dict()},
            "config": cfg.to_dict(),
            "curriculum": curriculum.to_dict(),
            "stages": [dataclasses.asdict(p) for p in stages],
            "data": {"root": str(root), "image_size": full_size, "class_list": cfg.data.class_list},
            "run_name": cfg.run_name,
            "epoch": step // ipe,
            "step": step,
            "data_position": {"epoch": step // ipe, "step_in_epoch": step % ipe, "iters_per_epoch": ipe,
                              "global_batch": cfg.run.batch_size, "seed": cfg.run.seed, "pipeline": pipeline},
            "schedule": {"iteration": step, "total_iterations": total_iters},
            "costs": [c.to_dict() for c in stage_costs],
            "none_flops_per_image": none_flops,
            "knn": knn_curve,
            "elapsed_s": elapsed,
            "run_time_s": run_time(),
            "cpu_time_s": cpu_time(),
        }
        if not final:
            state["optimizer"] = optimizer.state_dict()
        return state

    def save(final: bool = False) -> None:
        stop_if_non_finite()           # never overwrite the last good checkpoint with a diverged model
        rngs = _gather_rng(d)          # collective: every rank calls save()
        if not d.main:
            return
        state = checkpoint_state(final)
        state["rng"] = rngs
        save_checkpoint(state, paths["final"] if final else paths["last"])
        if not final and cfg.run.keep_every_epochs and step % ipe == 0 and (step // ipe) % cfg.run.keep_every_epochs == 0:
            save_checkpoint(state, out / "checkpoints" / f"epoch_{step // ipe:04d}.pt")
        _write_metrics(paths["metrics"], metrics)
        _write_summary(paths, summary_dict(finished=final))

    def summary_dict(finished: bool) -> dict:
        stage_iters = [p.iterations(ipe)[1] - p.iterations(ipe)[0] for p in stages]
        flops = costs_mod.flops_summary(stage_costs, stage_iters, cfg.run.batch_size, none_flops)
        final_knn = knn_curve[-1] if knn_curve else {}
        return {
            "run_name": cfg.run_name, "preset": cfg.preset, "curriculum": cfg.curriculum.name,
            "finished": finished, "epochs": cfg.run.epochs, "iterations": total_iters, "step": step,
            "iters_per_epoch": ipe, "batch_size": cfg.run.batch_size, "world_size": d.world_size,
            "device": str(d.device), "arch": cfg.model.arch, "patch_size": cfg.model.patch_size,
            "stage_restart": cfg.optim.stage_restart, "data": str(root),
            # wall_clock_s: the training steps (data loading included); run_time_s: everything,
            # set-up, FLOPs counting, kNN evaluations and checkpoints too
            "wall_clock_s": elapsed, "run_time_s": run_time(), "cpu_time_s": cpu_time(),
            "threads": torch.get_num_threads(), "workers": workers, "pipeline": pipeline, "compile": compiled,
            "stages": [{**dataclasses.asdict(p), "iterations": n, **c.to_dict()}
                       for p, n, c in zip(stages, stage_iters, stage_costs)],
            "flops": flops,
            "knn": {"final_top1": final_knn.get("top1"), "final_top5": final_knn.get("top5"),
                    "k": cfg.run.knn_k, "temperature": cfg.run.knn_temperature, "curve": knn_curve},
            "paths": {k: str(v) for k, v in paths.items()},
        }

    def evaluate(epoch: int) -> None:
        if d.main:
            t0 = time.perf_counter()
            # eager: the monitor's batch shapes would each cost the compiled backbone a recompile
            with torch.compiler.set_stance("force_eager") if compiled else contextlib.nullcontext():
                result = monitor.evaluate(meta.teacher.backbone)
            knn_curve.append({"epoch": epoch, "step": step, "top1": result.top1, "top5": result.top5})
            metrics.append({"row": "knn", "epoch": epoch, "step": step, "knn_top1": result.top1,
                            "knn_top5": result.top5, "elapsed_s": round(elapsed, 3),
                            "run_time_s": round(run_time(), 3)})
            log(f"  kNN top-1 {100 * result.top1:.1f}% (k={cfg.run.knn_k}, "
                f"{result.n_val} val images, {time.perf_counter() - t0:.1f} s)")
        if d.world_size > 1:
            dist.barrier()

    watch = NonFiniteWatch(d.device)

    def stop_if_non_finite() -> None:
        """Raise if a step since the start had a non-finite loss (every rank sees the same values)."""
        found = watch.first_bad()
        if found is None:
            return
        bad_step, values = found
        if d.main:
            _write_metrics(paths["metrics"], metrics)
        bad_epoch = (bad_step - 1) // ipe
        terms = ", ".join(f"{k}={v}" for k, v in zip(LOSS_TERMS, values))
        raise FdbenchError(
            f"non-finite loss at step {bad_step} of {total_iters} (epoch {bad_epoch}, stage "
            f"'{stage_at(stages, bad_epoch).name}'): {terms}; the last good checkpoint is kept at "
            f"{paths['last'] if paths['last'].exists() else '(none yet)'}; "
            f"try a lower learning rate or --seed, then re-run to continue from it")

    # 5. train. RNG states are restored last, so that nothing above can consume random numbers
    # in a resumed run that an uninterrupted run consumed at another time
    if saved_rng is not None:
        set_rng_state(saved_rng[d.rank] if d.rank < len(saved_rng) else saved_rng[0])
    bar = progress(total=total_iters, initial=step, desc=cfg.run_name, unit="it",
                   disable=None if d.main else True)
    window = costs_mod.StepTimer()
    last_save, last_flush = time.perf_counter(), time.perf_counter()
    steps_this_process = 0
    feed: StageFeed | None = None
    logged: dict[str, float] = {}      # the loss terms and grad norm of the last logging step
    while step < total_iters:
        epoch, start_in_epoch = divmod(step, ipe)
        plan = stage_at(stages, epoch)
        cost = stage_costs[plan.index]
        if epoch == plan.start_epoch and start_in_epoch == 0:
            log(f"stage {plan.index + 1}/{len(stages)} '{plan.name}': epochs {plan.start_epoch}-"
                f"{plan.end_epoch - 1}, global {plan.global_size} px, local {plan.n_local} x {plan.local_size} px, "
                f"noise patching {'on' if plan.noise_patching else 'off'}")
            if cfg.optim.stage_restart and plan.index > 0:
                optimizer.state.clear()   # the paper's restart: fresh AdamW moments at the switch
        if feed is None or feed.stage is not plan:
            # a new stage: new crop sizes and noise patching (and, gpu pipeline, a new decode size)
            feed = StageFeed(cfg, plan, train_set, pipeline=pipeline, device=d.device, workers=workers,
                             rank=d.rank, world_size=d.world_size)
        costs_mod.reset_peak_memory(d.device)
        tick = epoch_start = time.perf_counter()
        for batch in feed.batches(epoch, start_in_epoch):
            # the per-step path reads nothing from the device: the schedule values are CPU tensors,
            # the iBOT mask indices come from the collate (CPU), and the losses stay on the device
            # until a logging step (`values.tolist()` below) or a checkpoint/stop (`watch.first_bad()`)
            it = step
            out_step = train_step(meta, optimizer, batch, lr=float(sched.lr[it]), wd=float(sched.wd[it]),
                                  freeze_last_layer=bool(sched.freeze_last_layer[it]),
                                  teacher_temp=float(sched.teacher_temp[it]), momentum=float(sched.momentum[it]),
                                  clip_grad=cfg.optim.clip_grad)
            # still on the device: averaged over the ranks, watched for non-finite losses
            values = _all_mean(torch.stack([out_step[k].float() for k in (*LOSS_TERMS, "grad_norm")]), d)
            watch.add(it + 1, values[:len(LOSS_TERMS)])
            step += 1
            steps_this_process += 1

            # bookkeeping: cost of this stage, logging row, progress bar
            now = time.perf_counter()
            cost.wall_clock_s += now - tick
            elapsed += now - tick
            tick = now
            cost.iterations += 1
            cost.images += cfg.run.batch_size
            cost.peak_memory_bytes = max(cost.peak_memory_bytes, costs_mod.memory_now(d.device))
            window.add(cfg.run.batch_size)
            bar.update(1)
            log_step = step % cfg.run.log_every == 0 or step % ipe == 0
            if log_step:
                # logging steps only: the one read-back of the losses (a host-device sync)
                logged = dict(zip((*LOSS_TERMS, "grad_norm"), values.tolist()))
                stop_if_non_finite()
            if d.main and log_step:
                img_s, step_s = window.rate()
                metrics.append({
                    "row": "train", "epoch": epoch, "step": step, "stage": plan.index, "stage_name": plan.name,
                    "global_size": plan.global_size, "local_size": plan.local_size, "n_local": plan.n_local,
                    **{k: round(logged[k], 6) for k in LOSS_TERMS},
                    "lr": float(sched.lr[it]), "wd": float(sched.wd[it]), "momentum": float(sched.momentum[it]),
                    "teacher_temp": float(sched.teacher_temp[it]), "grad_norm": round(logged["grad_norm"], 5),
                    "img_per_s": round(img_s, 2), "step_time_s": round(step_s, 5),
                    "peak_memory_mb": round(cost.peak_memory_bytes / 2**20, 1),
                    "gflops_per_image": _g(cost.flops_per_image), "elapsed_s": round(elapsed, 3),
                    "run_time_s": round(run_time(), 3)})
                bar.set_postfix_str(f"ep {epoch} {plan.name} loss {logged['loss']:.3f} {img_s:.0f} img/s")
                if now - last_flush > 30:
                    _write_metrics(paths["metrics"], metrics)
                    last_flush = now

            # periodic checkpoints inside the epoch (the epoch end saves after its evaluation). The
            # step rule is the same on every rank; the clock rule needs the ranks to agree, which
            # costs a sync, so under DDP it is only looked at on logging steps
            due = bool(cfg.run.save_every_steps) and step % cfg.run.save_every_steps == 0
            if d.world_size == 1 or log_step:
                due = due or _any_rank(now - last_save > 60 * cfg.run.save_every_minutes, d)
            if due and step % ipe != 0:
                save()
                last_save = time.perf_counter()
            if cfg.run.stop_after_steps and steps_this_process >= cfg.run.stop_after_steps:
                stop_if_non_finite()
                bar.close()
                log(f"stopped after {steps_this_process} steps at step {step} (stop_after_steps)")
                return RunResult(out, None, paths["metrics"], paths["summary"], paths["config"],
                                 summary_dict(False), False, resumed_from)

        # end of epoch (always a logging step): a status line, the kNN monitor, then a checkpoint
        # that includes its result
        epoch_done = step // ipe
        epoch_s = time.perf_counter() - epoch_start
        log(f"epoch {epoch + 1}/{cfg.run.epochs} ({plan.name}, {plan.global_size}/{plan.local_size} px): "
            f"loss {logged['loss']:.3f} (dino {logged['dino']:.3f}, ibot {logged['ibot']:.3f}, "
            f"koleo {logged['koleo']:.3f}), {(ipe - start_in_epoch) * cfg.run.batch_size / epoch_s:.0f} img/s, "
            f"{epoch_s:.1f} s")
        if step == total_iters or (cfg.run.eval_every and epoch_done % cfg.run.eval_every == 0):
            evaluate(epoch_done - 1)
        save()
        last_save = time.perf_counter()
    bar.close()

    # 6. finish: final.pt, summary.json, costs.csv
    save(final=True)
    summary = summary_dict(finished=True)
    if d.main:
        _write_summary(paths, summary)
    if d.world_size > 1:
        dist.barrier()
    return RunResult(out, paths["final"], paths["metrics"], paths["summary"], paths["config"], summary,
                     True, resumed_from)


def _write_summary(paths: dict, summary: dict) -> None:
    import pandas as pd

    atomic_write_json(paths["summary"], summary)
    rows = [{"stage": s["name"], "epochs": f"{s['start_epoch']}-{s['end_epoch'] - 1}", "iterations": s["iterations"],
             "global_size": s["global_size"], "local_size": s["local_size"], "n_local": s["n_local"],
             "noise_patching": s["noise_patching"], "gflops_per_image": _g(s["flops_per_image"]),
             "wall_clock_s": round(s["wall_clock_s"], 2), "img_per_s": round(s["img_per_s"], 2),
             "step_time_s": round(s["step_time_s"], 4), "peak_memory_mb": round(s["peak_memory_bytes"] / 2**20, 1)}
            for s in summary["stages"]]
    flops = summary.get("flops") or {}
    if flops:
        rows.append({"stage": "none (reference)", "gflops_per_image": _g(flops["none_flops_per_image"])})
    atomic_write_csv(paths["costs"], pd.DataFrame(rows))


def _g(flops: int | None) -> float | None:
    return None if flops is None else round(flops / 1e9, 4)


def _read_json(path: Path) -> dict:
    import json

    return json.loads(path.read_text()) if path.exists() else {}
