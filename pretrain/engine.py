"""The pretraining loop: ``train(config) -> RunResult``. Read it top to bottom: the pieces (stages,
schedules, one iteration), then :class:`Trainer`, whose :meth:`Trainer.run` is the loop.

A run lives in one folder (``--out``, default ``runs/<curriculum>``; see :mod:`pretrain.run_folder`
for its files). Its counters live in :class:`pretrain.run_state.RunState`.

Re-running the same command on the same folder continues from ``checkpoints/last.pt``: the data
order, the crops and masks (seeded per sample and per batch), the schedules, the optimiser, the
centring statistics and the RNG states all resume where they stopped, so the weights match an
uninterrupted run exactly (on CPU). Under ``torchrun`` every rank runs this same function; rank 0
writes the files. SIGTERM or SIGUSR1 (a cluster's preemption warning) stops the run after the current
step with ``last.pt`` saved (``pretrain.preemption``); ``fdbench pretrain`` then exits with code 75.

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
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import torch
import torch.distributed as dist

from fdbench.lock import lock_folder
from fdbench.data import dataset_fingerprint, open_dataset, resolve_root
from fdbench.device import seed_everything
from fdbench.errors import FdbenchError, brief
from fdbench.io import progress
from pretrain import costs as costs_mod
from pretrain.collapse import CollapseWatch, entropy_fraction, rankme
from pretrain.config import RESUME_SAFE_KEYS, PretrainConfig, validate
from pretrain.data import AugmentedDataset, MultiCropCollate, default_workers
from pretrain.distributed import Dist, all_mean, any_rank, gather_rng, set_rng_state, setup_distributed
from pretrain.fast_step import accelerate_meta_arch
from pretrain.meta_arch import MetaArch
from pretrain.monitor import KnnMonitor
from pretrain.pipeline import StageFeed, make_augment, resolve_pipeline
from pretrain.preemption import PreemptionWatch
from pretrain.run_folder import METRIC_COLUMNS, RunFolder, gflops
from pretrain.run_state import RunState
from pretrain.schedules import apply_schedules
from pretrain.stages import Schedules, StagePlan, build_schedules, none_stage, plan_stages, resolve_curriculum, stage_at

# re-exported: the pieces a caller composes a run from
__all__ = [
    "LOSS_TERMS",
    "METRIC_COLUMNS",
    "NonFiniteWatch",
    "RunResult",
    "Schedules",
    "StagePlan",
    "Trainer",
    "build_optimizer",
    "build_schedules",
    "check_same_run",
    "make_augment",
    "none_stage",
    "plan_stages",
    "resolve_curriculum",
    "stage_at",
    "train",
    "train_step",
]

LOSS_TERMS = ("loss", "dino", "koleo", "ibot")  # MetaArch.forward_backward's keys, in this order
# what resume_from reads from checkpoints/last.pt (a missing one is named, not a KeyError)
RESUME_ENTRIES = ("config", "student", "teacher", "losses", "optimizer", "rng", "data_position", "step", "knn")
RESUME_ENTRIES += ("elapsed_s", "run_time_s", "cpu_time_s", "costs", "none_flops_per_image")


@dataclass
class RunResult:
    out: Path
    final: Path | None  # None when the run stopped early (stop_after_steps)
    metrics: Path
    summary_path: Path
    config_path: Path
    summary: dict = field(default_factory=dict)
    finished: bool = False
    resumed_from: int | None = None  # the step a resumed run started from
    preempted: bool = False  # stopped on SIGTERM/SIGUSR1 after saving last.pt (pretrain.preemption)

    @property
    def knn_top1(self) -> float | None:
        return self.summary.get("knn", {}).get("final_top1")


def build_optimizer(meta: MetaArch, cfg: PretrainConfig) -> torch.optim.Optimizer:
    from pretrain.schedules import param_groups

    groups = param_groups(
        meta.named_student_modules(),
        lr_decay=cfg.optim.layerwise_decay,
        patch_embed_lr_mult=cfg.optim.patch_embed_lr_mult,
        wd_rule=cfg.optim.weight_decay_rule,
    )
    fused = meta.device.type == "cuda" and not meta.sharded  # fused AdamW takes no DTensors
    return torch.optim.AdamW(groups, lr=0.0, betas=(cfg.optim.beta1, cfg.optim.beta2), fused=fused)


def resolve_compile(flag: bool | None, device: torch.device, strategy: str = "ddp") -> bool:
    """``--compile`` default: on CUDA only (on a CPU compiling costs more than the short runs gain),
    and not under ``--strategy fsdp`` (compiling through FSDP2's hooks is untested here)."""
    return device.type == "cuda" and strategy != "fsdp" if flag is None else bool(flag)


# ---- one iteration -----------------------------------------------------------------------------


def train_step(
    meta: MetaArch,
    optimizer: torch.optim.Optimizer,
    batch: dict,
    *,
    lr: float,
    wd: float,
    freeze_last_layer: bool,
    teacher_temp: float,
    momentum: float,
    clip_grad: float,
) -> dict[str, torch.Tensor]:
    """One DINOv2 iteration at the given schedule values: forward/backward, per-part gradient
    clipping, AdamW (lr 0 for the heads' last layer while frozen), EMA of the teacher. ``fdbench bench-train`` times this too.

    Returns the loss terms (:data:`LOSS_TERMS`) and the backbone's gradient norm as device tensors:
    nothing is read back to the host, so on a GPU the host queues the next step while this one runs.
    """
    apply_schedules(optimizer, lr, wd, freeze_last_layer)
    optimizer.zero_grad(set_to_none=True)
    losses = meta.forward_backward(batch, teacher_temp)
    # the frozen last layer keeps its gradients, as in DINOv2: they count in its head's clip norm and
    # in AdamW's moments, and apply_schedules' lr 0 (applied after clipping) keeps the weights fixed
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


# ---- the run folder ----------------------------------------------------------------------------


def _flat(nested: dict, prefix: str = "") -> dict:
    out = {}
    for k, v in nested.items():
        key = f"{prefix}{k}"
        if isinstance(v, dict):
            out.update(_flat(v, key + "."))
        else:
            out[key] = list(v) if isinstance(v, tuple) else v
    return out


def check_same_run(saved: dict, cfg: PretrainConfig, out: Path) -> None:
    """A resumed run must be the same recipe; only fields marked ``resume_safe`` (logging, I/O, speed) may change.

    Options the saved config predates read as their defaults (a run started before an option
    existed still resumes)."""
    now, before = _flat(cfg.to_dict()), _flat(PretrainConfig.from_dict(saved).to_dict())
    diffs = [
        f"{k}: {before.get(k)!r} -> {now.get(k)!r}"
        for k in sorted(set(now) | set(before))
        if k not in RESUME_SAFE_KEYS and before.get(k) != now.get(k)
    ]
    if diffs:
        raise FdbenchError(
            f"{out} holds a run with different settings ({'; '.join(diffs[:4])}"
            f"{'; ...' if len(diffs) > 4 else ''}); use another --out to start a new run, "
            f"or delete {out}"
        )


# ---- costs -------------------------------------------------------------------------------------


def measure_flops(
    cfg: PretrainConfig, stages: list[StagePlan], train_set, ddp: Dist, per_rank_batch: int, patch_size: int
) -> tuple[list[int], int]:
    """FLOPs per training image of each stage and of the ``none`` reference, counted on one step.

    The step is the real ``MetaArch.forward_backward`` (student forward + backward on every crop,
    teacher forward, heads, losses) of a scratch copy of the model, on a real batch made by the
    stage's augmentation and collate. The scratch copy keeps the run's weights, optimiser, centres
    and RNG untouched; FLOPs do not depend on the weights.
    """
    n = max(2, min(per_rank_batch, 16))
    devices = [ddp.device] if ddp.device.type == "cuda" else []
    with torch.random.fork_rng(devices=devices):
        torch.manual_seed(cfg.run.seed + 7919)
        scratch = MetaArch(cfg, ddp.device)
        counts = []
        for stage in [*stages, none_stage(cfg)]:
            dataset = AugmentedDataset(train_set, make_augment(cfg, stage))
            collate = MultiCropCollate(
                patch_size, cfg.loss.mask_probability, (cfg.loss.mask_ratio_min, cfg.loss.mask_ratio_max)
            )
            batch = collate([dataset[(i % len(train_set), cfg.run.seed + i, cfg.run.seed)] for i in range(n)])
            flops = costs_mod.count_flops(lambda m=scratch, b=batch: m.forward_backward(b, cfg.loss.teacher_temp))
            scratch.zero_grad(set_to_none=True)
            counts.append(flops // n)
        del scratch
    return counts[:-1], counts[-1]


# ---- the loop ----------------------------------------------------------------------------------


def cpu_threads_beside_workers(cfg: PretrainConfig) -> int | None:
    """On a CPU run without --threads: intra-op threads for the cores the DataLoader workers leave
    (at least 1, never more than torch's default). On 2 cores torch's default of 2 threads beside a
    worker process oversubscribed the CPU: a cpu-tiny step took about 3x longer than with 1 thread."""
    from fdbench.device import resolve_device
    from pretrain.data import default_workers

    if resolve_device(cfg.run.device).type != "cpu":
        return None
    workers = cfg.data.workers if cfg.data.workers is not None else default_workers()
    return max(1, min(torch.get_num_threads(), (os.cpu_count() or 1) - workers))


def train(
    cfg: PretrainConfig,
    *,
    resume: bool = False,
    log: Callable[[str], None] | None = None,
    backbone: torch.nn.Module | None = None,
    train_set=None,
) -> RunResult:
    """Train (or continue) the run described by ``cfg``; returns where everything was written.

    ``resume=True`` insists on an existing checkpoint; without it a checkpoint in the run folder is
    still picked up (re-running a command continues it). ``backbone`` (see :class:`MetaArch`) and
    ``train_set`` (a dataset of ``(PIL image, label)``) replace the ones ``cfg`` describes; the online
    kNN monitor still reads ``cfg.data.root``'s train/val splits.
    """
    validate(cfg)
    threads = cfg.run.threads or cpu_threads_beside_workers(cfg)
    if threads:
        torch.set_num_threads(threads)
    dist_ctx = setup_distributed(cfg.run.device)
    lock = None
    try:
        if dist_ctx.main:  # one writer per run folder; a second pretrain (or its start-up clean-up) is refused
            lock = lock_folder(Path(cfg.run.out or Path("runs") / cfg.run_name), "pretrain")
        trainer = Trainer(
            cfg,
            dist_ctx,
            log if (log and dist_ctx.main) else (lambda message: None),
            backbone=backbone,
            train_set=train_set,
        )
        try:
            with PreemptionWatch(trainer.log) as trainer.preempt:
                return trainer.run(resume)
        finally:
            trainer.folder.close()
    finally:
        if lock is not None:
            lock.release()
        if dist_ctx.owns_group:
            dist.destroy_process_group()


class Trainer:
    """One run: set up from the config, then :meth:`run` (resume or start, then the epochs).

    Its state lives in parts that save and restore themselves: the model (:class:`MetaArch`), the
    optimiser, the counters (:class:`RunState`) and the RNGs; :meth:`checkpoint` assembles them, and
    :meth:`resume_from` hands each part its entry back, so save and resume cannot drift apart.
    """

    def __init__(
        self,
        cfg: PretrainConfig,
        dist_ctx: Dist,
        log: Callable[[str], None],
        backbone: torch.nn.Module | None = None,
        train_set=None,
    ):
        self.cfg, self.dist, self.log = cfg, dist_ctx, log
        self.folder = RunFolder(Path(cfg.run.out or Path("runs") / cfg.run_name), writer=dist_ctx.main)
        if cfg.run.batch_size % dist_ctx.world_size:
            raise FdbenchError(
                f"--batch-size {cfg.run.batch_size} must be divisible by the {dist_ctx.world_size} processes"
            )
        self.per_rank_batch = cfg.run.batch_size // dist_ctx.world_size
        if cfg.run.tensorboard:
            from pretrain.tensorboard import summary_writer_class

            summary_writer_class()  # a missing package fails here, before any work

        # 1. data and curriculum -> stages of iterations
        self.root = resolve_root(cfg.data.root, announce=log)
        self.data_fingerprint = dataset_fingerprint(self.root)  # another dataset at this path: see resume_from
        self.train_set = (
            train_set if train_set is not None else open_dataset(self.root, "train", class_list=cfg.data.class_list)
        )
        self.iters_per_epoch = len(self.train_set) // cfg.run.batch_size
        if self.iters_per_epoch == 0:
            raise FdbenchError(
                f"the training set has {len(self.train_set)} images, fewer than one batch "
                f"(--batch-size {cfg.run.batch_size}); lower --batch-size"
            )
        self.curriculum = resolve_curriculum(cfg)
        self.stages = plan_stages(cfg, self.curriculum)
        self.total_iters = cfg.run.epochs * self.iters_per_epoch
        self.sched = build_schedules(cfg, self.stages, self.iters_per_epoch)
        self.full_size = self.stages[-1].global_size
        self.workers = cfg.data.workers if cfg.data.workers is not None else default_workers()
        self.pipeline = resolve_pipeline(cfg.data.pipeline, dist_ctx.device)

        # 2. model and optimiser (same seed on every rank: identical initial weights); the chunked
        # cross-entropies always (same maths, less memory), compiled backbones if asked
        seed_everything(cfg.run.seed)
        self.meta = MetaArch(cfg, dist_ctx.device, backbone=backbone)
        if cfg.run.activation_checkpointing:
            from pretrain.sharding import checkpoint_blocks

            checkpoint_blocks(self.meta.student.backbone)
        self.sharding = cfg.run.strategy == "fsdp" and dist_ctx.world_size > 1
        self.compiled = resolve_compile(cfg.run.compile, dist_ctx.device, cfg.run.strategy)
        accelerate_meta_arch(self.meta, compile=self.compiled)
        self.optimizer = build_optimizer(self.meta, cfg)
        log(
            f"data pipeline {self.pipeline}, torch.compile {'on' if self.compiled else 'off'}, device {dist_ctx.device}"
            f"{', FSDP2' if self.sharding else ''}{', activation checkpointing' if cfg.run.activation_checkpointing else ''}"
        )
        if dist_ctx.world_size > 1:
            torch.manual_seed(cfg.run.seed * 1000 + dist_ctx.rank)  # ranks draw different drop-path masks

        self.state = RunState(
            iters_per_epoch=self.iters_per_epoch,
            costs=[costs_mod.StageCost(p.name, p.global_size, p.local_size, p.n_local) for p in self.stages],
        )
        self.saved_rng: list[dict] | None = None
        self.watch = NonFiniteWatch(dist_ctx.device)
        self.collapse = CollapseWatch()
        self.monitor = None
        self.preempt = PreemptionWatch()  # train() installs a watching one around run()

    # ---- the parts' state -------------------------------------------------------------------------

    def checkpoint(self, final: bool = False, parts: dict | None = None, optimizer_state: dict | None = None) -> dict:
        """The checkpoint dict; ``parts`` / ``optimizer_state``: the model's and the optimiser's state
        when already gathered (under FSDP every rank gathers them, see :meth:`save`)."""
        cfg, state = self.cfg, self.state
        ckpt = {
            "kind": "training",
            **(parts if parts is not None else self.meta.state_dict_parts()),
            "config": cfg.to_dict(),
            "curriculum": self.curriculum.to_dict(),
            "stages": [dataclasses.asdict(p) for p in self.stages],
            "data": {
                "root": str(self.root),
                "image_size": self.full_size,
                "class_list": cfg.data.class_list,
                "fingerprint": self.data_fingerprint,
            },
            "run_name": cfg.run_name,
            "data_position": {
                "epoch": state.epoch,
                "step_in_epoch": state.step_in_epoch,
                "iters_per_epoch": self.iters_per_epoch,
                "global_batch": cfg.run.batch_size,
                "seed": cfg.run.seed,
                "pipeline": self.pipeline,
            },
            "schedule": {"iteration": state.step, "total_iterations": self.total_iters},
            **state.state_dict(),
            "collapse_watch": self.collapse.state_dict(),
        }
        if not final:
            ckpt["optimizer"] = optimizer_state if optimizer_state is not None else self.optimizer.state_dict()
        return ckpt

    def resume_from(self, ckpt: dict) -> None:
        last, fix = self.folder.last, "rename it to start this run over, or use another --out"
        missing = [k for k in RESUME_ENTRIES if k not in ckpt]
        if missing:
            raise FdbenchError(f"{last} is damaged or incomplete: it has no {', '.join(missing)}; {fix}")
        try:
            check_same_run(ckpt["config"], self.cfg, self.folder.out)
            then, now = (ckpt.get("data") or {}).get("fingerprint"), self.data_fingerprint
            if then and now and then != now:  # older checkpoints have none: nothing to compare
                raise FdbenchError(
                    f"{self.folder.out} was trained on another dataset at {self.root} (fingerprint {then}, "
                    f"now {now}: images added, removed or replaced); use another --out to start a new run"
                )
            self.meta.load_state_dict_parts(ckpt)
            self.optimizer.load_state_dict(ckpt["optimizer"])
            self.state.load_state_dict(ckpt)
            if "collapse_watch" in ckpt:  # checkpoints written before the collapse monitor have none
                self.collapse.load_state_dict(ckpt["collapse_watch"])
            before = ckpt["data_position"].get("pipeline", "cpu")
        except (KeyError, TypeError, ValueError, RuntimeError, AttributeError, IndexError) as err:
            raise FdbenchError(f"{last} is damaged or incomplete ({brief(err)}); {fix}") from None
        self.saved_rng = ckpt["rng"]  # restored just before the first step (see run())
        self.log(f"resuming {self.folder.out} at step {self.state.step}/{self.total_iters} (epoch {self.state.epoch})")
        if before != self.pipeline:  # `auto` on another kind of device: same distributions, other draws
            self.log(
                f"note: this run's crops so far came from the {before} pipeline, from here on from the "
                f"{self.pipeline} one (--data-pipeline {before} keeps them exactly reproducible)"
            )

    def save(self, final: bool = False) -> None:
        self.stop_if_non_finite()  # never overwrite the last good checkpoint with a diverged model
        rngs = gather_rng(self.dist)  # collective: every rank calls save()
        parts = optimizer_state = None
        if self.sharding:  # gathering the shards is a collective too
            from pretrain.sharding import full_optimizer_state

            parts = self.meta.state_dict_parts()
            optimizer_state = None if final else full_optimizer_state(self.optimizer)
        if not self.dist.main:
            return
        ckpt = self.checkpoint(final, parts, optimizer_state)
        ckpt["rng"] = rngs
        keep, epoch = self.cfg.run.keep_every_epochs, self.state.epoch
        keep_as = epoch if (not final and keep and self.state.step_in_epoch == 0 and epoch % keep == 0) else None
        self.folder.save_checkpoint(ckpt, final=final, keep_as_epoch=keep_as)
        self.folder.write_metrics()
        self.folder.write_summary(self.summary(finished=final))

    def summary(self, finished: bool) -> dict:
        cfg, state, iters_per_epoch = self.cfg, self.state, self.iters_per_epoch
        stage_iters = [p.iterations(iters_per_epoch)[1] - p.iterations(iters_per_epoch)[0] for p in self.stages]
        flops = costs_mod.flops_summary(state.costs, stage_iters, cfg.run.batch_size, state.none_flops_per_image)
        final_knn = state.knn[-1] if state.knn else {}
        return {
            "run_name": cfg.run_name,
            "preset": cfg.preset,
            "curriculum": cfg.curriculum.name,
            "finished": finished,
            "epochs": cfg.run.epochs,
            "iterations": self.total_iters,
            "step": state.step,
            "iters_per_epoch": iters_per_epoch,
            "batch_size": cfg.run.batch_size,
            "world_size": self.dist.world_size,
            "device": str(self.dist.device),
            "arch": cfg.model.arch,
            "patch_size": cfg.model.patch_size,
            "stage_restart": cfg.optim.stage_restart,
            "data": str(self.root),
            # wall_clock_s: the training steps (data loading included); run_time_s: everything,
            # set-up, FLOPs counting, kNN evaluations and checkpoints too
            "wall_clock_s": state.elapsed_s,
            "run_time_s": state.run_time(),
            "cpu_time_s": state.cpu_time(),
            "threads": torch.get_num_threads(),
            "workers": self.workers,
            "pipeline": self.pipeline,
            "compile": self.compiled,
            "stages": [
                {**dataclasses.asdict(p), "iterations": n, **c.to_dict()}
                for p, n, c in zip(self.stages, stage_iters, state.costs)
            ],
            "flops": flops,
            "knn": {
                "final_top1": final_knn.get("top1"),
                "final_top5": final_knn.get("top5"),
                "k": cfg.run.knn_k,
                "temperature": cfg.run.knn_temperature,
                "curve": state.knn,
            },
            "paths": {k: str(v) for k, v in self.folder.paths.items()},
            "warnings": list(self.collapse.warnings),
        }

    def result(self, finished: bool, summary: dict, preempted: bool = False) -> RunResult:
        f = self.folder
        return RunResult(
            f.out,
            f.final if finished else None,
            f.metrics_path,
            f.summary,
            f.config,
            summary,
            finished,
            self.state.resumed_from,
            preempted,
        )

    def stop_preempted(self, saved: bool) -> RunResult:
        """After a SIGTERM/SIGUSR1 (every rank agreed): last.pt holds this step; the caller requeues."""
        if not saved:
            self.save()
        self.bar.close()
        self.log(
            f"stopped on {self.preempt.requested or 'another rank signalled'} at step {self.state.step}/"
            f"{self.total_iters}; last.pt saved: re-run the same command to continue"
        )
        return self.result(False, self.summary(False), preempted=True)

    # ---- checks and evaluations -------------------------------------------------------------------

    def stop_if_non_finite(self) -> None:
        """Raise if a step since the start had a non-finite loss (every rank sees the same values)."""
        found = self.watch.first_bad()
        if found is None:
            return
        bad_step, values = found
        self.folder.write_metrics()
        bad_epoch = (bad_step - 1) // self.iters_per_epoch
        terms = ", ".join(f"{k}={v}" for k, v in zip(LOSS_TERMS, values))
        last = self.folder.last
        raise FdbenchError(
            f"non-finite loss at step {bad_step} of {self.total_iters} (epoch {bad_epoch}, stage "
            f"'{stage_at(self.stages, bad_epoch).name}'): {terms}; the last good checkpoint is kept at "
            f"{last if last.exists() else '(none yet)'}; "
            f"try a lower learning rate or --seed, then re-run to continue from it"
        )

    def evaluate(self, epoch: int) -> None:
        """The online kNN monitor on the teacher (rank 0), into the kNN curve and metrics.csv."""
        backbone = self.meta.backbone_for_eval()  # under FSDP a collective: before the rank-0 branch
        if self.dist.main:
            t0, state = time.perf_counter(), self.state
            # eager: the monitor's batch shapes would each cost the compiled backbone a recompile
            with torch.compiler.set_stance("force_eager") if self.compiled else contextlib.nullcontext():
                result = self.monitor.evaluate(backbone)
            self.meta.release_eval_backbone()
            state.knn.append(
                {"epoch": epoch, "step": state.step, "top1": result.top1, "top5": result.top5, "n_val": result.n_val}
            )
            self.folder.add_row(
                {
                    "row": "knn",
                    "epoch": epoch,
                    "step": state.step,
                    "knn_top1": result.top1,
                    "knn_top5": result.top5,
                    "elapsed_s": round(state.elapsed_s, 3),
                    "run_time_s": round(state.run_time(), 3),
                }
            )
            self.log(
                f"  kNN top-1 {100 * result.top1:.1f}% (k={self.cfg.run.knn_k}, "
                f"{result.n_val} val images, {time.perf_counter() - t0:.1f} s)"
            )
        if self.dist.world_size > 1:
            dist.barrier()

    def log_row(self, plan: StagePlan, epoch: int, it: int, logged: dict, window) -> None:
        cost, sched, state = self.state.costs[plan.index], self.sched, self.state
        img_s, step_s = window.rate()
        collapse = {}
        if self.meta.teacher_outputs is not None:
            embeddings, probs = self.meta.teacher_outputs
            collapse = {
                "teacher_entropy": round(entropy_fraction(probs), 5),
                "teacher_rank": round(rankme(embeddings), 3),
            }
            for warning in self.collapse.observe(
                state.step, collapse["teacher_entropy"], collapse["teacher_rank"], *embeddings.shape
            ):
                self.log(f"warning: {warning}")
        self.folder.add_row(
            {
                "row": "train",
                "epoch": epoch,
                "step": state.step,
                "stage": plan.index,
                "stage_name": plan.name,
                "global_size": plan.global_size,
                "local_size": plan.local_size,
                "n_local": plan.n_local,
                **{k: round(logged[k], 6) for k in LOSS_TERMS},
                "lr": float(sched.lr[it]),
                "wd": float(sched.wd[it]),
                "momentum": float(sched.momentum[it]),
                "teacher_temp": float(sched.teacher_temp[it]),
                "grad_norm": round(logged["grad_norm"], 5),
                **collapse,
                "img_per_s": round(img_s, 2),
                "step_time_s": round(step_s, 5),
                "peak_memory_mb": round(cost.peak_memory_bytes / 2**20, 1),
                "gflops_per_image": gflops(cost.flops_per_image),
                "elapsed_s": round(state.elapsed_s, 3),
                "run_time_s": round(state.run_time(), 3),
            }
        )
        self.bar.set_postfix_str(f"ep {epoch} {plan.name} loss {logged['loss']:.3f} {img_s:.0f} img/s")

    # ---- the run ----------------------------------------------------------------------------------

    def run(self, resume: bool) -> RunResult:
        cfg, ddp, folder, state = self.cfg, self.dist, self.folder, self.state
        iters_per_epoch = self.iters_per_epoch

        # 3. continue from the run folder's last checkpoint, or start a new run
        ckpt = folder.read_last(ddp.device)
        if ckpt is not None:
            self.resume_from(ckpt)
        elif resume:
            raise FdbenchError(f"nothing to resume: {folder.last} does not exist")
        else:
            folder.start(cfg)
        folder.clean_stale_temps()
        folder.load_metrics(state.step)
        if cfg.run.tensorboard:
            folder.open_tensorboard(state.step)
        if self.sharding:
            # the checkpoint (if any) is loaded whole; now shard, and re-shard the optimiser's state
            from pretrain.sharding import shard_optimizer_state

            unsharded = self.optimizer.state_dict()
            self.meta.shard()
            self.optimizer = build_optimizer(self.meta, cfg)
            shard_optimizer_state(self.optimizer, unsharded)
            del unsharded
        else:
            self.meta.wrap_ddp()
        if state.step >= self.total_iters and folder.final.exists():
            self.log(f"{folder.out} is already finished ({self.total_iters} iterations); nothing to do")
            return self.result(True, folder.read_summary())

        # 4. what each stage costs in FLOPs per image (counted once per run), and the kNN monitor
        if state.none_flops_per_image is None:
            flops, state.none_flops_per_image = measure_flops(
                cfg, self.stages, self.train_set, ddp, self.per_rank_batch, cfg.model.patch_size
            )
            for cost, f in zip(state.costs, flops):
                cost.flops_per_image = f
        if ddp.main:
            self.monitor = KnnMonitor(
                self.root,
                cfg.data.class_list,
                trained_size=self.full_size,
                patch_size=cfg.model.patch_size,
                train_per_class=cfg.run.knn_train_per_class,
                val_per_class=cfg.run.knn_val_per_class,
                k=cfg.run.knn_k,
                temperature=cfg.run.knn_temperature,
                workers=min(self.workers, 4),
            )

        # 5. train. RNG states are restored last, so that nothing above can consume random numbers
        # in a resumed run that an uninterrupted run consumed at another time
        if self.saved_rng is not None:
            set_rng_state(self.saved_rng[ddp.rank] if ddp.rank < len(self.saved_rng) else self.saved_rng[0])
        self.bar = progress(
            total=self.total_iters, initial=state.step, desc=cfg.run_name, unit="it", disable=None if ddp.main else True
        )
        window = costs_mod.StepTimer()
        last_save = time.perf_counter()
        steps_this_process = 0
        feed: StageFeed | None = None
        logged: dict[str, float] = {}  # the loss terms and grad norm of the last logging step
        while state.step < self.total_iters:
            epoch, start_in_epoch = state.epoch, state.step_in_epoch
            plan = stage_at(self.stages, epoch)
            cost = state.costs[plan.index]
            if epoch == plan.start_epoch and start_in_epoch == 0:
                switch = (
                    f"stage {plan.index + 1}/{len(self.stages)} '{plan.name}': epochs {plan.start_epoch}-"
                    f"{plan.end_epoch - 1}, global {plan.global_size} px, local {plan.n_local} x "
                    f"{plan.local_size} px, noise patching {'on' if plan.noise_patching else 'off'}"
                )
                self.log(switch)
                folder.add_text("curriculum/stage", switch, state.step + 1)  # at its first step
                if cfg.optim.stage_restart and plan.index > 0:
                    self.optimizer.state.clear()  # the paper's restart: fresh AdamW moments at the switch
            if feed is None or feed.stage is not plan:
                # a new stage: new crop sizes and noise patching (and, gpu pipeline, a new decode size)
                feed = StageFeed(
                    cfg,
                    plan,
                    self.train_set,
                    pipeline=self.pipeline,
                    device=ddp.device,
                    workers=self.workers,
                    rank=ddp.rank,
                    world_size=ddp.world_size,
                )
            costs_mod.reset_peak_memory(ddp.device)
            tick = epoch_start = time.perf_counter()
            for batch in feed.batches(epoch, start_in_epoch):
                # the per-step path reads nothing from the device: the schedule values are CPU tensors,
                # the iBOT mask indices come from the collate (CPU), and the losses stay on the device
                # until a logging step (`values.tolist()` below) or a checkpoint/stop (`watch.first_bad()`)
                it, sched = state.step, self.sched
                out_step = train_step(
                    self.meta,
                    self.optimizer,
                    batch,
                    lr=float(sched.lr[it]),
                    wd=float(sched.wd[it]),
                    freeze_last_layer=bool(sched.freeze_last_layer[it]),
                    teacher_temp=float(sched.teacher_temp[it]),
                    momentum=float(sched.momentum[it]),
                    clip_grad=cfg.optim.clip_grad,
                )
                # still on the device: averaged over the ranks, watched for non-finite losses. Under DDP
                # the preemption flags ride along (last entry, > 0 when any rank was signalled)
                values = torch.stack([out_step[k].float() for k in (*LOSS_TERMS, "grad_norm")])
                if ddp.world_size > 1:
                    values = torch.cat([values, values.new_tensor([self.preempt.flag])])
                values = all_mean(values, ddp)
                self.watch.add(it + 1, values[: len(LOSS_TERMS)])
                state.step += 1
                steps_this_process += 1

                # bookkeeping: cost of this stage, logging row, progress bar
                now = time.perf_counter()
                cost.wall_clock_s += now - tick
                state.elapsed_s += now - tick
                tick = now
                cost.iterations += 1
                cost.images += cfg.run.batch_size
                cost.peak_memory_bytes = max(cost.peak_memory_bytes, costs_mod.memory_now(ddp.device))
                window.add(cfg.run.batch_size)
                self.bar.update(1)
                log_step = state.step % cfg.run.log_every == 0 or state.step % iters_per_epoch == 0
                signalled = ddp.world_size == 1 and self.preempt.requested is not None
                if log_step:
                    # logging steps only: the one read-back of the losses (a host-device sync)
                    host = values.tolist()
                    logged = dict(zip((*LOSS_TERMS, "grad_norm"), host))
                    signalled = signalled or (ddp.world_size > 1 and host[-1] > 0)
                    self.stop_if_non_finite()
                    if ddp.main:
                        self.log_row(plan, epoch, it, logged, window)

                # periodic checkpoints inside the epoch (the epoch end saves after its evaluation). The
                # step rule is the same on every rank; the clock rule needs the ranks to agree, which
                # costs a sync, so under DDP it is only looked at on logging steps
                due = bool(cfg.run.save_every_steps) and state.step % cfg.run.save_every_steps == 0
                if ddp.world_size == 1 or log_step:
                    due = due or any_rank(now - last_save > 60 * cfg.run.save_every_minutes, ddp)
                if due and state.step % iters_per_epoch != 0:
                    self.save()
                    last_save = time.perf_counter()
                # a signal: stop after this step; at an epoch's end only once its evaluation is saved
                if signalled and state.step % iters_per_epoch != 0:
                    return self.stop_preempted(saved=due)
                if cfg.run.stop_after_steps and steps_this_process >= cfg.run.stop_after_steps:
                    self.stop_if_non_finite()
                    self.bar.close()
                    self.log(f"stopped after {steps_this_process} steps at step {state.step} (stop_after_steps)")
                    return self.result(False, self.summary(False))

            # end of epoch (always a logging step): a status line, the kNN monitor, then a checkpoint
            # that includes its result
            epoch_s = time.perf_counter() - epoch_start
            self.log(
                f"epoch {epoch + 1}/{cfg.run.epochs} ({plan.name}, {plan.global_size}/{plan.local_size} px): "
                f"loss {logged['loss']:.3f} (dino {logged['dino']:.3f}, ibot {logged['ibot']:.3f}, "
                f"koleo {logged['koleo']:.3f}), "
                f"{(iters_per_epoch - start_in_epoch) * cfg.run.batch_size / epoch_s:.0f} img/s, {epoch_s:.1f} s"
            )
            if state.step == self.total_iters or (cfg.run.eval_every and state.epoch % cfg.run.eval_every == 0):
                self.evaluate(state.epoch - 1)
            self.save()
            last_save = time.perf_counter()
            if state.step < self.total_iters and any_rank(self.preempt.requested is not None, ddp):
                return self.stop_preempted(saved=True)
        self.bar.close()

        # 6. finish: final.pt, summary.json, costs.csv
        self.save(final=True)
        summary = self.summary(finished=True)
        folder.write_summary(summary)
        if ddp.world_size > 1:
            dist.barrier()
        return self.result(True, summary)
