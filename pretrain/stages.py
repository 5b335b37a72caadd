"""The curriculum as a plan of iterations (:class:`StagePlan`) and DINOv2's per-iteration schedules
over it (:func:`build_schedules`)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch

from fdbench.errors import FdbenchError
from pretrain.config import PretrainConfig
from pretrain.curriculum import Stage, build_curriculum, load_curriculum_yaml, round_to_patch, stage_index
from pretrain.schedules import cosine_schedule, linear_warmup_then_constant, scaled_lr


@dataclass(kw_only=True)
class StagePlan(Stage):
    """A curriculum :class:`~pretrain.curriculum.Stage` as the engine runs it: its position, its epoch
    range and its crop sizes rounded to the patch (``local_size`` 0 without local crops).

    Plans are made from stages that were validated when the curriculum was built, or from the
    validated config, so :class:`Stage`'s checks are not run again (a rounded ``local_size`` of 0 would
    fail them).
    """

    index: int
    start_epoch: int
    end_epoch: int  # exclusive

    def __post_init__(self) -> None:
        pass

    def iterations(self, iters_per_epoch: int) -> tuple[int, int]:
        return self.start_epoch * iters_per_epoch, self.end_epoch * iters_per_epoch


def resolve_curriculum(cfg: PretrainConfig):
    """The Curriculum object for ``cfg.curriculum.name`` (a named one or a YAML file)."""
    c = cfg.curriculum
    if c.name in ("none", "two-stage"):
        return build_curriculum(
            c.name,
            global_size=cfg.crops.global_size,
            local_size=cfg.crops.local_size,
            stage1_fraction=c.stage1_fraction,
            stage1_scale=c.stage1_scale,
            stage1_global_size=c.stage1_global_size,
            stage1_local_size=c.stage1_local_size,
            noise_patching=c.noise_patching,
            noise_max_sigma=c.noise_max_sigma,
            n_local=cfg.crops.n_local,
            global_scale=tuple(cfg.crops.global_scale),
            local_scale=tuple(cfg.crops.local_scale),
        )
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
    patch = cfg.model.patch_size
    plans = []
    for stage, (start, end) in zip(curriculum.stages, curriculum.stage_epochs(cfg.run.epochs)):
        if end <= start:
            continue
        plans.append(
            StagePlan(
                index=len(plans),
                name=stage.name,
                fraction=stage.fraction,
                start_epoch=start,
                end_epoch=end,
                global_size=round_to_patch(stage.global_size, patch),
                local_size=round_to_patch(stage.local_size, patch) if stage.n_local else 0,
                n_local=stage.n_local,
                global_scale=tuple(stage.global_scale),
                local_scale=tuple(stage.local_scale),
                noise_patching=bool(stage.noise_patching),
                noise_max_sigma=float(stage.noise_max_sigma),
            )
        )
    return plans


def none_stage(cfg: PretrainConfig) -> StagePlan:
    """The reference the FLOPs ratio is measured against: this run's recipe as curriculum ``none``."""
    return StagePlan(
        index=0,
        name="none",
        fraction=1.0,
        start_epoch=0,
        end_epoch=cfg.run.epochs,
        global_size=cfg.crops.global_size,
        local_size=cfg.crops.local_size,
        n_local=cfg.crops.n_local,
        global_scale=tuple(cfg.crops.global_scale),
        local_scale=tuple(cfg.crops.local_scale),
        noise_patching=False,
        noise_max_sigma=0.0,
    )


def stage_at(stages: list[StagePlan], epoch: int) -> StagePlan:
    """The plan that trains ``epoch`` (the rule of :func:`pretrain.curriculum.stage_index`)."""
    return stages[stage_index([(p.start_epoch, p.end_epoch) for p in stages], epoch)]


# ---- schedules --------------------------------------------------------------------------------


@dataclass
class Schedules:
    """One value per iteration of the whole run."""

    lr: torch.Tensor
    wd: torch.Tensor
    momentum: torch.Tensor
    teacher_temp: torch.Tensor
    freeze_last_layer: torch.Tensor  # bool


def build_schedules(cfg: PretrainConfig, stages: list[StagePlan], iters_per_epoch: int) -> Schedules:
    """DINOv2's per-iteration schedules, over the whole run (continuous) or restarted per stage.

    Continuous: lr = warm-up to ``scaled_lr`` then cosine to ``min_lr``; wd cosine 0.04 -> 0.4;
    teacher momentum cosine 0.992 -> 1; teacher temperature linear warm-up then constant; the
    heads' last layer frozen for ``freeze_last_layer_epochs``. With ``stage_restart`` each stage gets
    its own copy of these curves over its own length (the paper's code restarts the run at the
    switch); a restarted stage's warm-ups and freeze are capped at 20% of the stage (the paper's
    10 warm-up epochs of a 50-epoch second stage).
    """
    o, lc = cfg.optim, cfg.loss
    peak = scaled_lr(o.base_lr, cfg.run.batch_size)
    if o.stage_restart:
        segments = [(p.iterations(iters_per_epoch), p.index > 0) for p in stages]
    else:
        segments = [((0, cfg.run.epochs * iters_per_epoch), False)]
    parts: dict[str, list[torch.Tensor]] = {k: [] for k in ("lr", "wd", "momentum", "teacher_temp", "freeze")}
    for (start, end), restarted in segments:
        n = end - start
        cap = (lambda iters: min(int(iters), round(0.2 * n))) if restarted else (lambda iters: int(iters))
        warmup = cap(o.warmup_epochs * iters_per_epoch)
        parts["lr"].append(cosine_schedule(peak, o.min_lr, n, warmup_iters=warmup))
        parts["wd"].append(cosine_schedule(o.weight_decay, o.weight_decay_end, n))
        parts["momentum"].append(cosine_schedule(o.momentum_teacher, o.final_momentum_teacher, n))
        parts["teacher_temp"].append(
            linear_warmup_then_constant(
                lc.warmup_teacher_temp, lc.teacher_temp, cap(lc.warmup_teacher_temp_epochs * iters_per_epoch), n
            )
        )
        parts["freeze"].append(torch.arange(n) < cap(o.freeze_last_layer_epochs * iters_per_epoch))
    return Schedules(*(torch.cat(parts[k]) for k in ("lr", "wd", "momentum", "teacher_temp", "freeze")))
