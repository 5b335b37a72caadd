"""The pretraining loop: ``train(config) -> RunResult``. :class:`Trainer` sets a run up from its
config; :meth:`Trainer.run` is the loop, readable top to bottom. The pieces live beside it:
``pretrain.step`` (one iteration: :func:`train_step`, the optimiser, the non-finite watch),
``pretrain.run_setup`` (threads, compile, FLOPs per stage), ``pretrain.checkpointing`` (the
checkpoint assembled from the parts' state dicts, resume), ``pretrain.monitoring`` (metrics rows,
kNN evaluation, summary, :class:`RunResult`), ``pretrain.stages`` (stage plans, schedules).

A run lives in one folder (``--out``, default ``runs/<curriculum>``; see :mod:`pretrain.run_folder`
for its files). Its counters live in :class:`pretrain.run_state.RunState`.

Re-running the same command on the same folder continues from ``checkpoints/last.pt``: the data
order, the crops and masks (seeded per sample and per batch), the schedules, the optimiser, the
centring statistics and the RNG states all resume where they stopped, so the weights match an
uninterrupted run exactly (on CPU). Under ``torchrun`` every rank runs this same function; rank 0
writes the files. SIGTERM or SIGUSR1 (a cluster's preemption warning) stops the run after the current
step with ``last.pt`` saved (``pretrain.preemption``); ``fdbench pretrain`` then exits with code 75.

Speed: see :mod:`pretrain.step` (the step never waits for the device).
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Callable

import torch
import torch.distributed as dist

from fdbench.data import dataset_fingerprint, open_dataset, resolve_root
from fdbench.device import seed_everything
from fdbench.errors import FdbenchError
from fdbench.io import progress
from fdbench.lock import lock_folder
from pretrain import costs as costs_mod
from pretrain.batch import CropBatch
from pretrain.checkpointing import CheckpointParts, check_same_run
from pretrain.collapse import CollapseWatch
from pretrain.config import PretrainConfig, validate
from pretrain.data import default_workers
from pretrain.distributed import Dist, all_mean, any_rank, set_rng_state, setup_distributed
from pretrain.fast_step import accelerate_meta_arch
from pretrain.meta_arch import MetaArch
from pretrain.monitor import KnnMonitor
from pretrain.monitoring import RunReporting, RunResult
from pretrain.pipeline import StageFeed, make_augment, resolve_pipeline
from pretrain.preemption import PreemptionWatch
from pretrain.run_folder import METRIC_COLUMNS, RunFolder
from pretrain.run_setup import cpu_threads_beside_workers, measure_flops, resolve_compile
from pretrain.run_state import RunState
from pretrain.sharding import checkpoint_blocks, shard_optimizer_state
from pretrain.stages import Schedules, StagePlan, build_schedules, none_stage, plan_stages, resolve_curriculum, stage_at
from pretrain.step import LOSS_TERMS, NonFiniteWatch, build_optimizer, train_step
from pretrain.tensorboard import summary_writer_class

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
    "cpu_threads_beside_workers",
    "make_augment",
    "none_stage",
    "plan_stages",
    "resolve_curriculum",
    "stage_at",
    "train",
    "train_step",
]


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


class Trainer(CheckpointParts, RunReporting):
    """One run: set up from the config, then :meth:`run` (resume or start, then the epochs).

    Its state lives in parts that save and restore themselves: the model (:class:`MetaArch`), the
    optimiser, the counters (:class:`RunState`) and the RNGs. :class:`CheckpointParts` assembles the
    checkpoint from them and hands each part its entry back on resume, so save and resume cannot
    drift apart; :class:`RunReporting` writes the metrics rows, kNN evaluations and the summary.
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

    # ---- the run ----------------------------------------------------------------------------------

    def run(self, resume: bool) -> RunResult:
        cfg, ddp, state = self.cfg, self.dist, self.state
        if not self.prepare(resume):
            self.log(f"{self.folder.out} is already finished ({self.total_iters} iterations); nothing to do")
            return self.result(True, self.folder.read_summary())
        self.bar = progress(
            total=self.total_iters, initial=state.step, desc=cfg.run_name, unit="it", disable=None if ddp.main else True
        )
        self.window = costs_mod.StepTimer()
        self.last_save = time.perf_counter()
        self.steps_this_process = 0
        feed: StageFeed | None = None
        logged: dict[str, float] = {}  # the loss terms and grad norm of the last logging step
        while state.step < self.total_iters:
            epoch, start_in_epoch = state.epoch, state.step_in_epoch
            plan = stage_at(self.stages, epoch)
            if epoch == plan.start_epoch and start_in_epoch == 0:
                self.enter_stage(plan)
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
            self.tick = epoch_start = time.perf_counter()
            for batch in feed.batches(epoch, start_in_epoch):
                # the per-step path reads nothing from the device: the schedule values are CPU tensors,
                # the iBOT mask indices come from the collate (CPU), and the losses stay on the device
                # until a logging step (`values.tolist()` below) or a checkpoint/stop (`watch.first_bad()`)
                it = state.step
                values = self.step(batch, it)
                now = self.count_step(state.costs[plan.index])
                log_step = state.step % cfg.run.log_every == 0 or state.step % self.iters_per_epoch == 0
                signalled = ddp.world_size == 1 and self.preempt.requested is not None
                if log_step:
                    # logging steps only: the one read-back of the losses (a host-device sync)
                    host = values.tolist()
                    logged = dict(zip((*LOSS_TERMS, "grad_norm"), host))
                    signalled = signalled or (ddp.world_size > 1 and host[-1] > 0)
                    self.stop_if_non_finite()
                    if ddp.main:
                        self.log_row(plan, epoch, it, logged, self.window)
                saved = self.save_if_due(now, log_step)
                # a signal: stop after this step; at an epoch's end only once its evaluation is saved
                if signalled and state.step % self.iters_per_epoch != 0:
                    return self.stop_preempted(saved=saved)
                if cfg.run.stop_after_steps and self.steps_this_process >= cfg.run.stop_after_steps:
                    return self.stop_early()

            # end of epoch (always a logging step): a status line, the kNN monitor, then a checkpoint
            # that includes its result
            self.end_epoch(plan, epoch, start_in_epoch, time.perf_counter() - epoch_start, logged)
            if state.step < self.total_iters and any_rank(self.preempt.requested is not None, ddp):
                return self.stop_preempted(saved=True)
        self.bar.close()
        return self.finish()

    # ---- the loop's steps, in the order it takes them ---------------------------------------------

    def prepare(self, resume: bool) -> bool:
        """Resume from the run folder's last checkpoint or start a new run, shard or wrap the model,
        count FLOPs, open the kNN monitor, restore the RNGs. False when the run is already finished."""
        cfg, ddp, folder, state = self.cfg, self.dist, self.folder, self.state
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
            unsharded = self.optimizer.state_dict()
            self.meta.shard()
            self.optimizer = build_optimizer(self.meta, cfg)
            shard_optimizer_state(self.optimizer, unsharded)
            del unsharded
        else:
            self.meta.wrap_ddp()
        if state.step >= self.total_iters and folder.final.exists():
            return False

        # what each stage costs in FLOPs per image (counted once per run), and the kNN monitor
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

        # RNG states are restored last, so that nothing above can consume random numbers in a resumed
        # run that an uninterrupted run consumed at another time
        if self.saved_rng is not None:
            set_rng_state(self.saved_rng[ddp.rank] if ddp.rank < len(self.saved_rng) else self.saved_rng[0])
        return True

    def enter_stage(self, plan: StagePlan) -> None:
        """At a stage's first step: announce it, and (``--stage-restart``) reset AdamW's moments."""
        switch = (
            f"stage {plan.index + 1}/{len(self.stages)} '{plan.name}': epochs {plan.start_epoch}-"
            f"{plan.end_epoch - 1}, global {plan.global_size} px, local {plan.n_local} x "
            f"{plan.local_size} px, noise patching {'on' if plan.noise_patching else 'off'}"
        )
        self.log(switch)
        self.folder.add_text("curriculum/stage", switch, self.state.step + 1)  # at its first step
        if self.cfg.optim.stage_restart and plan.index > 0:
            self.optimizer.state.clear()  # the paper's restart: fresh AdamW moments at the switch

    def step(self, batch: CropBatch, it: int) -> torch.Tensor:
        """Iteration ``it`` at its schedule values. Returns the loss terms and the gradient norm (under
        DDP the preemption flags ride along, last entry, > 0 when any rank was signalled), averaged
        over the ranks and watched for non-finite losses, still on the device."""
        sched = self.sched
        out = train_step(
            self.meta,
            self.optimizer,
            batch,
            lr=float(sched.lr[it]),
            wd=float(sched.wd[it]),
            freeze_last_layer=bool(sched.freeze_last_layer[it]),
            teacher_temp=float(sched.teacher_temp[it]),
            momentum=float(sched.momentum[it]),
            clip_grad=self.cfg.optim.clip_grad,
        )
        values = torch.stack([out[k].float() for k in (*LOSS_TERMS, "grad_norm")])
        if self.dist.world_size > 1:
            values = torch.cat([values, values.new_tensor([self.preempt.flag])])
        values = all_mean(values, self.dist)
        self.watch.add(it + 1, values[: len(LOSS_TERMS)])
        self.state.step += 1
        self.steps_this_process += 1
        return values

    def count_step(self, cost: costs_mod.StageCost) -> float:
        """The step's share of the clocks, of its stage's cost and of the progress bar; returns now."""
        now, batch_size = time.perf_counter(), self.cfg.run.batch_size
        cost.wall_clock_s += now - self.tick
        self.state.elapsed_s += now - self.tick
        self.tick = now
        cost.iterations += 1
        cost.images += batch_size
        cost.peak_memory_bytes = max(cost.peak_memory_bytes, costs_mod.memory_now(self.dist.device))
        self.window.add(batch_size)
        self.bar.update(1)
        return now

    def save_if_due(self, now: float, log_step: bool) -> bool:
        """Periodic checkpoints inside the epoch (the epoch end saves after its evaluation). The step
        rule is the same on every rank; the clock rule needs the ranks to agree, which costs a sync, so
        under DDP it is only looked at on logging steps. True when a save was due."""
        cfg, step = self.cfg, self.state.step
        due = bool(cfg.run.save_every_steps) and step % cfg.run.save_every_steps == 0
        if self.dist.world_size == 1 or log_step:
            due = due or any_rank(now - self.last_save > 60 * cfg.run.save_every_minutes, self.dist)
        if due and step % self.iters_per_epoch != 0:
            self.save()
            self.last_save = time.perf_counter()
        return due

    def end_epoch(self, plan: StagePlan, epoch: int, start_in_epoch: int, epoch_s: float, logged: dict) -> None:
        """A status line, the kNN monitor when due, then a checkpoint that includes its result."""
        cfg, state = self.cfg, self.state
        self.log(
            f"epoch {epoch + 1}/{cfg.run.epochs} ({plan.name}, {plan.global_size}/{plan.local_size} px): "
            f"loss {logged['loss']:.3f} (dino {logged['dino']:.3f}, ibot {logged['ibot']:.3f}, "
            f"koleo {logged['koleo']:.3f}), "
            f"{(self.iters_per_epoch - start_in_epoch) * cfg.run.batch_size / epoch_s:.0f} img/s, {epoch_s:.1f} s"
        )
        if state.step == self.total_iters or (cfg.run.eval_every and state.epoch % cfg.run.eval_every == 0):
            self.evaluate(state.epoch - 1)
        self.save()
        self.last_save = time.perf_counter()

    def finish(self) -> RunResult:
        """final.pt, summary.json, costs.csv."""
        self.save(final=True)
        summary = self.summary(finished=True)
        self.folder.write_summary(summary)
        if self.dist.world_size > 1:
            dist.barrier()
        return self.result(True, summary)

    def stop_early(self) -> RunResult:
        """``stop_after_steps`` reached in this process (a test's or a benchmark's short run)."""
        self.stop_if_non_finite()
        self.bar.close()
        self.log(f"stopped after {self.steps_this_process} steps at step {self.state.step} (stop_after_steps)")
        return self.result(False, self.summary(False))

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
