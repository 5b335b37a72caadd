"""What a run reports about itself: a metrics row per logging step (losses, schedule values, speed,
teacher collapse), the online kNN evaluation, the non-finite-loss stop, ``summary.json``'s content
and the :class:`RunResult` that :func:`pretrain.engine.train` returns.

:class:`RunReporting` is a part of :class:`pretrain.engine.Trainer` (a mixin) and reads its parts.
"""

from __future__ import annotations

import contextlib
import dataclasses
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch
import torch.distributed as dist

from fdbench.errors import FdbenchError
from pretrain import costs as costs_mod
from pretrain.collapse import batch_entropy_fraction, entropy_fraction, prototypes_used, rankme
from pretrain.run_folder import gflops
from pretrain.stages import StagePlan, stage_at
from pretrain.step import LOSS_TERMS


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


class RunReporting:
    """Rows, evaluations, the summary and the result of the trainer's run."""

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
                "teacher_prototypes": prototypes_used(probs),
                "teacher_batch_entropy": round(batch_entropy_fraction(probs), 5),
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
