"""Checks of a whole :class:`PretrainConfig`: bad values fail up front with a message naming the
option and its valid range; legitimate but probably unmeant settings warn."""

from __future__ import annotations

import math
import sys

from fdbench.errors import FdbenchError
from pretrain.options import OPTIONS, coerce
from pretrain.recipe import CurriculumConfig, PretrainConfig


def validate(cfg: PretrainConfig, warn: bool = True) -> None:
    """Catch bad values up front with a message naming the option and the valid range; ``warn``:
    also print the warnings of legitimate but probably unmeant settings (``train`` does, once)."""
    from fdbench.models import ARCHS, PATCH_SIZES

    checks = [
        (cfg.model.arch in ARCHS, f"unknown --arch {cfg.model.arch!r}: choose one of {', '.join(ARCHS)}"),
        (
            cfg.model.patch_size in PATCH_SIZES,
            f"unsupported --patch-size {cfg.model.patch_size}: choose one of {', '.join(map(str, PATCH_SIZES))}",
        ),
        (cfg.run.epochs >= 1, f"--epochs must be at least 1 (got {cfg.run.epochs})"),
        (cfg.run.batch_size >= 2, f"--batch-size must be at least 2 (got {cfg.run.batch_size})"),
        (cfg.run.eval_every >= 0, f"--eval-every must be 0 (only at the end) or more (got {cfg.run.eval_every})"),
        (
            cfg.loss.centering in ("centering", "sinkhorn_knopp"),
            f"unknown centering {cfg.loss.centering!r}: use centering or sinkhorn_knopp",
        ),
        (
            0.0 < cfg.curriculum.stage1_fraction < 1.0,
            f"--stage1-fraction must be in (0, 1) (got {cfg.curriculum.stage1_fraction})",
        ),
        (
            0.0 < cfg.curriculum.stage1_scale <= 1.0,
            f"--stage1-scale must be in (0, 1] (got {cfg.curriculum.stage1_scale})",
        ),
        (
            cfg.curriculum.noise_max_sigma >= 0.0,
            f"--noise-max-sigma must be >= 0 (got {cfg.curriculum.noise_max_sigma})",
        ),
        (cfg.crops.n_local >= 0, f"the number of local crops must be >= 0 (got {cfg.crops.n_local})"),
        (
            cfg.crops.global_size >= cfg.model.patch_size,
            f"global crop size {cfg.crops.global_size} is smaller than the patch size {cfg.model.patch_size}",
        ),
        (cfg.data.workers is None or cfg.data.workers >= 0, f"--workers must be >= 0 (got {cfg.data.workers})"),
        (cfg.run.threads is None or cfg.run.threads >= 1, f"--threads must be >= 1 (got {cfg.run.threads})"),
        (
            cfg.data.pipeline in ("auto", "cpu", "gpu"),
            f"unknown --data-pipeline {cfg.data.pipeline!r}: use auto, cpu or gpu",
        ),
        (
            0.0 <= cfg.loss.mask_ratio_min <= cfg.loss.mask_ratio_max <= 1.0,
            "mask ratios must satisfy 0 <= min <= max <= 1",
        ),
        (
            cfg.optim.weight_decay_rule in ("dinov2", "no-decay-tokens"),
            f"unknown weight_decay_rule {cfg.optim.weight_decay_rule!r}: use dinov2 or no-decay-tokens",
        ),
    ]
    for ok, message in checks:
        if not ok:
            raise FdbenchError(message)
    _validate_types(cfg)
    more = [
        (cfg.run.log_every >= 1, f"--log-every must be at least 1 (got {cfg.run.log_every})"),
        (0.0 <= cfg.model.drop_path_rate < 1.0, f"--drop-path-rate must be in [0, 1) (got {cfg.model.drop_path_rate})"),
        (
            math.isfinite(cfg.optim.warmup_epochs) and cfg.optim.warmup_epochs >= 0,
            f"--warmup-epochs must be a finite number >= 0 (got {cfg.optim.warmup_epochs})",
        ),
        (
            math.isfinite(cfg.optim.base_lr) and cfg.optim.base_lr > 0,
            f"--lr must be a finite positive number (got {cfg.optim.base_lr})",
        ),
        (cfg.run.save_every_steps >= 0, f"--save-every-steps must be 0 (off) or more (got {cfg.run.save_every_steps})"),
        (
            cfg.run.keep_every_epochs >= 0,
            f"--keep-every-epochs must be 0 (off) or more (got {cfg.run.keep_every_epochs})",
        ),
        (cfg.run.stop_after_steps >= 0, f"--stop-after-steps must be 0 (off) or more (got {cfg.run.stop_after_steps})"),
        (
            math.isfinite(cfg.run.save_every_minutes) and cfg.run.save_every_minutes > 0,
            f"--save-every-minutes must be a finite positive number (got {cfg.run.save_every_minutes})",
        ),
        (
            cfg.crops.n_local == 0 or 0 < cfg.crops.local_size <= cfg.crops.global_size,
            f"local crop size {cfg.crops.local_size} must be between 1 and the global crop size {cfg.crops.global_size}",
        ),
        (cfg.head.prototypes >= 1, f"--prototypes must be at least 1 (got {cfg.head.prototypes})"),
    ]
    for ok, message in more:
        if not ok:
            raise FdbenchError(message)
    # legitimate but probably not meant: say so instead of passing silently
    if not warn:
        return
    if cfg.curriculum.name == "none" and cfg.curriculum.stage1_fraction != CurriculumConfig.stage1_fraction:
        print(
            f"warning: --stage1-fraction {cfg.curriculum.stage1_fraction} has no effect with --curriculum none",
            file=sys.stderr,
        )
    if cfg.curriculum.name == "two-stage" and cfg.run.epochs < 2:
        print(
            f"warning: with --epochs {cfg.run.epochs} the two-stage curriculum never reaches its full-resolution "
            f"stage; use more epochs",
            file=sys.stderr,
        )


def _validate_types(cfg: PretrainConfig) -> None:
    """A Python caller's value of the wrong type (a YAML list or a float where an integer belongs):
    name the field instead of failing deep inside. ``--set`` and ``--config`` values were typed by
    :func:`coerce` already; this is the same check, strict."""
    for key, option in OPTIONS.items():
        coerce(key, getattr(getattr(cfg, option.section), option.name), option.hint, strict=True)
