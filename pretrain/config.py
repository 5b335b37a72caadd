"""The pretraining configuration: one :class:`PretrainConfig` made of small nested parts, plus presets.

Every number of the DINOv2 recipe lives here (defaults from DINOv2's ``ssl_default_config.yaml``),
so a run folder's ``config.yaml`` says exactly what was trained. Lengths that the reference gives in
epochs (warm-ups, last-layer freeze) stay in epochs here; the engine turns them into iterations once
it knows the dataset size.

Each field is defined once, with :func:`opt`: its default, help text, whether it is a named flag of
``fdbench pretrain`` and whether a resumed run may change it. :data:`OPTIONS` reads that metadata, so
the CLI flags, ``--set section.field=value``, the ``--config`` file and the resume check cannot
drift apart.

Presets (``PRESETS``):

- ``cpu-tiny``: ViT-nano/8 on 32 px images (the embedded dataset) with a small head; a full run
  takes a few minutes on 2 CPU cores. Warm-ups are shortened to fit the 8-epoch run.
- ``gpu-small``: what ``fdbench pretrain`` picks on a CUDA machine when no preset is given: ViT-S/8
  on 64 px images, 100 epochs.
- ``vit-s-in100``: the paper's ViT-S/16 ImageNet-100 recipe (224/96 crops, 8 local crops).
- ``vit-b-in1k``: the paper's ViT-B/16 ImageNet-1K recipe.
"""

from __future__ import annotations

import copy
import dataclasses
import math
import sys
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from fdbench.config import from_dict, load_yaml, to_dict
from fdbench.errors import FdbenchError


def opt(
    default: Any,
    help: str = "",
    *,
    option: str | bool = False,
    flag: str | None = None,
    choices: tuple[str, ...] | None = None,
    resume_safe: bool = False,
) -> Any:
    """A recipe field with its command-line and resume metadata (the one place an option is defined).

    ``option``: also a named flag of ``fdbench pretrain`` (True: named after the field; a string:
    that name, e.g. ``curriculum`` for ``curriculum.name``); ``flag`` overrides the flag's spelling;
    ``choices`` restricts the flag's values; ``resume_safe``: a re-run may change it without breaking
    "continue exactly where it stopped" (logging, I/O, speed). Every field, named flag or not, is
    reachable as ``--set section.field=value`` and from the ``--config`` YAML file.
    """
    metadata = {"help": help, "resume_safe": resume_safe, "choices": choices, "flag": flag, "option": option}
    return field(default=default, metadata=metadata)


@dataclass
class ModelConfig:
    """The student/teacher backbone (see ``fdbench.models.build_backbone``)."""

    arch: str = opt("vit_small", "Backbone: vit_pico, vit_nano, vit_tiny, vit_small, vit_base, vit_large.", option=True)
    patch_size: int = opt(16, "Patch size: 4, 8, 14 or 16.", option=True)
    drop_path_rate: float = opt(0.1, "Student drop-path rate (the teacher never drops paths).", option=True)
    drop_path_uniform: bool = opt(
        True, "DINOv2: the same drop-path rate in every block (false: timm's 0 -> rate ramp)."
    )
    layerscale: float | None = opt(1e-5, "LayerScale init (None: off).")
    reg_tokens: int = opt(0, "Register tokens.")


@dataclass
class HeadConfig:
    """DINO head (and iBOT head, shared by default as in DINOv2)."""

    prototypes: int = opt(65536, "DINO/iBOT head prototypes (65536 in DINOv2).", option=True)
    hidden_dim: int = opt(2048, "Head MLP hidden width.")
    bottleneck_dim: int = opt(256, "Head bottleneck width.")
    nlayers: int = opt(3, "Head MLP layers.")
    ibot_separate_head: bool = opt(False, "A separate iBOT head instead of sharing the DINO head.")
    ibot_prototypes: int = opt(65536, "iBOT prototypes (used only with a separate iBOT head).")


@dataclass
class LossConfig:
    """Loss weights, temperatures, centring and iBOT masking."""

    dino_weight: float = opt(1.0, "DINO (CLS) loss weight.")
    ibot_weight: float = opt(1.0, "iBOT (masked patch) loss weight.")
    koleo_weight: float = opt(0.1, "KoLeo regulariser weight.")
    centering: str = opt("centering", "Teacher centring.", option=True, choices=("centering", "sinkhorn_knopp"))
    center_momentum: float = opt(0.9, "Momentum of the teacher centre (centering).")
    student_temp: float = opt(0.1, "Student softmax temperature.")
    teacher_temp: float = opt(0.07, "Teacher softmax temperature after the warm-up.")
    warmup_teacher_temp: float = opt(0.04, "Teacher temperature at the start of the warm-up.")
    warmup_teacher_temp_epochs: float = opt(30, "Teacher temperature warm-up epochs.")
    mask_probability: float = opt(0.5, "Share of global crops that get a block-wise iBOT mask.")
    mask_ratio_min: float = opt(0.1, "Smallest masked share of a masked crop.")
    mask_ratio_max: float = opt(0.5, "Largest masked share of a masked crop.")


@dataclass
class OptimConfig:
    """AdamW and the per-iteration schedules."""

    base_lr: float = opt(0.004, "Base lr at batch 1024 (scaled by sqrt(batch/1024)).", option=True, flag="--lr")
    min_lr: float = opt(1e-6, "Final learning rate of the cosine schedule.")
    warmup_epochs: float = opt(10, "Learning-rate warm-up epochs.", option=True)
    weight_decay: float = opt(0.04, "Weight decay at the start (cosine schedule).")
    weight_decay_end: float = opt(0.4, "Weight decay at the end.")
    momentum_teacher: float = opt(0.992, "Teacher EMA momentum at the start (cosine to the final one).")
    final_momentum_teacher: float = opt(1.0, "Teacher EMA momentum at the end.")
    layerwise_decay: float = opt(0.9, "Layer-wise learning-rate decay.")
    patch_embed_lr_mult: float = opt(0.2, "Learning-rate multiplier of the patch embedding.")
    freeze_last_layer_epochs: float = opt(1, "Epochs the heads' last layer stays frozen.")
    clip_grad: float = opt(3.0, "Gradient-norm clipping per part.")
    weight_decay_rule: str = opt(
        "dinov2",
        "Weight-decay exemptions: dinov2 (biases, norms, LayerScale) or no-decay-tokens (also cls/pos/mask/register tokens).",
        choices=("dinov2", "no-decay-tokens"),
    )
    beta1: float = opt(0.9, "AdamW beta1.")
    beta2: float = opt(0.999, "AdamW beta2.")
    # False: one set of schedules over the whole run (default, see the README);
    # True: the paper's code: at every stage switch reset AdamW and restart all schedules
    stage_restart: bool = opt(
        False,
        "At a stage switch reset AdamW and restart the schedules (the paper's code) "
        "[default: no, one continuous schedule].",
        option=True,
    )


@dataclass
class CropConfig:
    """Full-resolution multi-crop; the curriculum derives each stage's sizes from it."""

    global_size: int = opt(224, "Full-resolution global crop size (px).", option=True)
    local_size: int = opt(96, "Full-resolution local crop size (px).", option=True)
    n_local: int = opt(8, "Local crops per image.", option=True)
    global_scale: tuple[float, float] = opt((0.32, 1.0), "Area range of the global crops.")
    local_scale: tuple[float, float] = opt((0.05, 0.32), "Area range of the local crops.")
    inverted_blur: bool = opt(False, "Reproduce the released models' (inverted) blur probabilities.", option=True)
    # DINOv2's range is for 224 px crops; on 32 px images a sigma of 2 px wipes out the shapes
    blur_sigma: tuple[float, float] = opt((0.1, 2.0), "Range of the Gaussian blur's sigma (px) [DINOv2: 0.1-2.0].")


@dataclass
class CurriculumConfig:
    """``name`` is ``none``, ``two-stage`` or a path to a curriculum YAML file."""

    name: str = opt(
        "two-stage",
        "none (standard DINOv2), two-stage (FastDINOv2) or a curriculum FILE.yaml [two-stage].",
        option="curriculum",
    )
    stage1_fraction: float = opt(0.75, "Share of epochs in stage 1 [0.75].", option=True)
    stage1_scale: float = opt(0.5, "Stage-1 crop sizes as a share of full size [0.5].", option=True)
    stage1_global_size: int | None = opt(None, "Explicit stage-1 global crop size (px).", option=True)
    stage1_local_size: int | None = opt(None, "Explicit stage-1 local crop size (px).", option=True)
    noise_patching: bool | None = opt(
        None, "Gaussian noise patching [default: on in two-stage's last stage, off for none].", option=True
    )
    noise_max_sigma: float = opt(0.5, "Noise patching's largest sigma [0.5].", option=True)


@dataclass
class DataConfig:
    root: str | None = opt(
        None,
        "Dataset root (ImageFolder with train/ and val/, or cifar10:DIR ...) [default: embedded dataset].",
        option="data",
    )
    class_list: str | None = opt(None, "File of class folder names to keep (e.g. ImageNet-100).", option=True)
    workers: int | None = opt(None, "DataLoader worker processes [min(8, cores - 1)].", option=True, resume_safe=True)
    pipeline: str = opt(
        "auto",
        "Where the crops are made: cpu = DataLoader workers decode and augment; gpu = "
        "workers only decode, the whole batch is augmented on the training device (runs "
        "on --device cpu too); auto = gpu on CUDA, cpu otherwise [auto].",
        option="data_pipeline",
        choices=("auto", "cpu", "gpu"),
    )


@dataclass
class RunConfig:
    """Length of the run, logging, checkpointing and the online kNN monitor."""

    epochs: int = opt(200, "Training epochs (all stages together).", option=True)
    batch_size: int = opt(1024, "Global batch size (split over DDP processes).", option=True)
    seed: int = opt(0, "Random seed [0].", option=True)
    device: str = opt("auto", "auto (CUDA when present), cpu, cuda or cuda:N [auto].", option=True, resume_safe=True)
    out: str | None = opt(None, "Run folder [default: runs/<curriculum>].", option=True, resume_safe=True)
    log_every: int = opt(10, "Iterations between metrics.csv rows.", option=True, resume_safe=True)
    save_every_minutes: float = opt(
        10.0, "Checkpoint at least this often (and every epoch).", option=True, resume_safe=True
    )
    save_every_steps: int = opt(0, "Also checkpoint every N iterations (0: off).", option=True, resume_safe=True)
    keep_every_epochs: int = opt(
        0, "Keep checkpoints/epoch_XXXX.pt every N epochs (0: only last.pt).", option=True, resume_safe=True
    )
    eval_every: int = opt(1, "Epochs between kNN evaluations (0: only at the end).", option=True, resume_safe=True)
    knn_k: int = opt(20, "Neighbours of the online kNN monitor.", resume_safe=True)
    knn_temperature: float = opt(0.07, "Temperature of the online kNN monitor.", resume_safe=True)
    knn_train_per_class: int = opt(100, "kNN memory bank: first N train images of each class.", resume_safe=True)
    knn_val_per_class: int | None = opt(None, "kNN val images per class (None: the whole val split).", resume_safe=True)
    stop_after_steps: int = opt(
        0, "Testing aid: stop (as if killed) after N iterations of this process.", option=True, resume_safe=True
    )
    strategy: str = opt(
        "ddp",
        "Under torchrun: ddp (replicated model, averaged gradients) or fsdp (FSDP2: parameters, gradients "
        "and optimiser state sharded per block; same checkpoints).",
        option=True,
        choices=("ddp", "fsdp"),
        resume_safe=True,
    )
    activation_checkpointing: bool = opt(
        False,
        "Recompute each student block in the backward pass (less memory, ~1 more forward).",
        option=True,
        resume_safe=True,
    )
    tensorboard: bool = opt(
        False,
        "Also write metrics.csv's columns and the stage switches as TensorBoard events in RUN/tb/ "
        "(needs the fdbench[tensorboard] extra).",
        option=True,
        resume_safe=True,
    )
    threads: int | None = opt(
        None,
        "CPU intra-op threads [the cores the DataLoader workers leave, at most torch's default].",
        option=True,
        resume_safe=True,
    )
    # compiling changes the speed, not the maths
    compile: bool | None = opt(
        None,
        "torch.compile the student and teacher backbones [on with CUDA, off on CPU].",
        option=True,
        resume_safe=True,
    )


@dataclass
class PretrainConfig:
    preset: str = "vit-s-in100"
    model: ModelConfig = field(default_factory=ModelConfig)
    head: HeadConfig = field(default_factory=HeadConfig)
    loss: LossConfig = field(default_factory=LossConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    crops: CropConfig = field(default_factory=CropConfig)
    curriculum: CurriculumConfig = field(default_factory=CurriculumConfig)
    data: DataConfig = field(default_factory=DataConfig)
    run: RunConfig = field(default_factory=RunConfig)

    def to_dict(self) -> dict[str, Any]:
        return to_dict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "PretrainConfig":
        cfg = from_dict(cls, data)
        # YAML has no tuples: bring the crop scales back to tuples so configs compare equal
        cfg.crops.global_scale = tuple(cfg.crops.global_scale)
        cfg.crops.local_scale = tuple(cfg.crops.local_scale)
        cfg.crops.blur_sigma = tuple(cfg.crops.blur_sigma)
        return cfg

    @property
    def run_name(self) -> str:
        name = self.curriculum.name
        return Path(name).stem if name.endswith((".yaml", ".yml")) else name


def _cpu_tiny() -> PretrainConfig:
    # Sized for a 2-core CPU and the embedded dataset (v3, 32 px): ViT-nano/8 on 32/16 px crops
    # (4x4 and 2x2 patch grids), ~0.8 s per step of 64 images on an idle 2-core machine. 8 epochs
    # (376 iterations): at 32 px a step costs a fraction of a 64 px one, and a plain supervised
    # ViT needed ~600 steps to learn these shapes, so the same minutes buy more, cheaper steps
    # (184 steps at 64 px stayed at 21% even with labels). Adapted to a short run: 1 warm-up epoch,
    # a faster teacher (momentum 0.95 -> 1; at 0.992 the teacher would still hold a large share of
    # its random initialisation at the end) and a constant sharp teacher temperature 0.04. The base
    # lr is DINOv2's own 0.004 (0.001 at batch 64): on dataset v3, 4x that (0.016) gave kNN 46.0% /
    # linear 35.4%, 0.004 gave 50.6% / 42.8% (benchmarks/embedded_search/results.csv, rows d0, e5).
    # The trials behind these values are in benchmarks/embedded_search/.
    return PretrainConfig(
        preset="cpu-tiny",
        model=ModelConfig(arch="vit_nano", patch_size=8, drop_path_rate=0.0),
        head=HeadConfig(prototypes=4096, hidden_dim=512, bottleneck_dim=128, ibot_prototypes=4096),
        loss=LossConfig(teacher_temp=0.04, warmup_teacher_temp=0.04, warmup_teacher_temp_epochs=1),
        optim=OptimConfig(base_lr=0.004, warmup_epochs=1, momentum_teacher=0.95),
        crops=CropConfig(global_size=32, local_size=16, n_local=2),
        run=RunConfig(epochs=8, batch_size=64, log_every=5, knn_train_per_class=100),
    )


def _gpu_small() -> PretrainConfig:
    return PretrainConfig(
        preset="gpu-small",
        model=ModelConfig(arch="vit_small", patch_size=8, drop_path_rate=0.1),
        head=HeadConfig(prototypes=16384, ibot_prototypes=16384),
        loss=LossConfig(warmup_teacher_temp_epochs=10),
        optim=OptimConfig(warmup_epochs=5),
        crops=CropConfig(global_size=64, local_size=32, n_local=6),
        run=RunConfig(epochs=100, batch_size=256, eval_every=10, knn_train_per_class=300),
    )


def _vit_s_in100() -> PretrainConfig:
    return PretrainConfig(
        preset="vit-s-in100",
        model=ModelConfig(arch="vit_small", patch_size=16, drop_path_rate=0.1),
        run=RunConfig(epochs=200, batch_size=512, eval_every=10, keep_every_epochs=50, knn_train_per_class=100),
    )


def _vit_b_in1k() -> PretrainConfig:
    return PretrainConfig(
        preset="vit-b-in1k",
        model=ModelConfig(arch="vit_base", patch_size=16, drop_path_rate=0.1),
        run=RunConfig(
            epochs=200,
            batch_size=1024,
            eval_every=10,
            keep_every_epochs=50,
            knn_train_per_class=20,
            knn_val_per_class=10,
        ),
    )


PRESETS = {"cpu-tiny": _cpu_tiny, "gpu-small": _gpu_small, "vit-s-in100": _vit_s_in100, "vit-b-in1k": _vit_b_in1k}


def preset(name: str) -> PretrainConfig:
    """A fresh copy of a named preset."""
    if name not in PRESETS:
        raise FdbenchError(f"unknown preset {name!r}: choose one of {', '.join(PRESETS)}")
    return copy.deepcopy(PRESETS[name]())


def default_preset_name(device: str = "auto") -> str:
    """``cpu-tiny`` on a CPU, ``gpu-small`` when the run will use CUDA."""
    from fdbench.device import resolve_device

    return "gpu-small" if resolve_device(device).type == "cuda" else "cpu-tiny"


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


# ---- the fields as options: named flags, --set, YAML and resume rules all read the metadata above


@dataclass(frozen=True)
class Option:
    """One leaf field of :class:`PretrainConfig`: ``key`` is ``section.field`` (``loss.koleo_weight``)."""

    key: str
    section: str
    name: str
    hint: Any  # the field's annotation, resolved
    default: Any
    help: str
    choices: tuple[str, ...] | None
    resume_safe: bool
    option: str | None  # the named flag's parameter name (None: only --set / YAML)
    flag: str | None  # its spelling on the command line (``--lr``)


def _options() -> dict[str, Option]:
    found = {}
    for part in dataclasses.fields(PretrainConfig):
        if not dataclasses.is_dataclass(part.default_factory):
            continue
        section = part.default_factory
        hints = typing.get_type_hints(section)
        for f in dataclasses.fields(section):
            meta = f.metadata
            name = (f.name if meta.get("option") is True else meta.get("option")) or None
            flag = meta.get("flag") or ("--" + name.replace("_", "-") if name else None)
            found[f"{part.name}.{f.name}"] = Option(
                f"{part.name}.{f.name}",
                part.name,
                f.name,
                hints[f.name],
                f.default,
                meta.get("help", ""),
                meta.get("choices"),
                bool(meta.get("resume_safe")),
                name,
                flag,
            )
    return found


OPTIONS: dict[str, Option] = _options()
# named flag parameter -> the option (``epochs``, ``base_lr``, ``curriculum``, ``data``, ...)
NAMED_OPTIONS: dict[str, Option] = {o.option: o for o in OPTIONS.values() if o.option}
OPTION_FIELDS = {name: (o.section, o.name) for name, o in NAMED_OPTIONS.items()}
RESUME_SAFE_KEYS = frozenset(k for k, o in OPTIONS.items() if o.resume_safe)


def _type_name(hint: Any) -> str:
    return getattr(hint, "__name__", None) or str(hint).replace("typing.", "")


def coerce(key: str, value: Any, hint: Any, *, strict: bool = False) -> Any:
    """``value`` (from YAML or ``--set``, already YAML-parsed) as the type of field ``key``, or an error.

    ``strict``: the value must already have the type (a Python caller's config): no text is parsed
    and no whole-number float passes for an int.
    """

    def bad() -> FdbenchError:
        expected = {int: "a whole number (int)", float: "a number (float)"}.get(hint, _type_name(hint))
        if isinstance(value, (list, dict)) and typing.get_origin(hint) is not tuple:
            expected = f"a single value ({_type_name(hint)}), not a {type(value).__name__}"
        return FdbenchError(f"bad value for {key}: expected {expected}, got {value!r}")

    args = typing.get_args(hint)
    if type(None) in args:  # Optional[X]
        if value is None or (not strict and isinstance(value, str) and value.lower() in ("none", "null", "~")):
            return None
        (inner,) = [a for a in args if a is not type(None)]
        return coerce(key, value, inner, strict=strict)
    if typing.get_origin(hint) is tuple:
        if isinstance(value, str) and not strict:
            value = [v for v in value.strip("()[] ").split(",") if v.strip()]
        if not isinstance(value, (list, tuple)) or len(value) != len(args):
            raise bad()
        return tuple(coerce(key, v, a, strict=strict) for v, a in zip(value, args))
    if hint is bool:
        if isinstance(value, bool):
            return value
        if not strict and isinstance(value, str) and value.lower() in ("true", "false", "yes", "no", "on", "off"):
            return value.lower() in ("true", "yes", "on")
        raise bad()
    if strict and (isinstance(value, bool) or not isinstance(value, {int: int, float: (int, float), str: str}[hint])):
        raise bad()
    if hint is int:
        if isinstance(value, float) and value.is_integer():
            value = int(value)  # YAML 16.0: a whole number written as a float
        if isinstance(value, bool) or not isinstance(value, (int, str)):
            raise bad()
        try:
            return int(value)
        except ValueError:
            raise bad() from None
    if hint is float:
        if isinstance(value, bool) or not isinstance(value, (int, float, str)):
            raise bad()
        try:
            return float(value)
        except ValueError:
            raise bad() from None
    if hint is str:
        if isinstance(value, (dict, list, tuple)) or value is None:
            raise bad()
        return str(value)
    raise bad()


def set_option(cfg: PretrainConfig, key: str, value: Any) -> None:
    """Set ``section.field`` on ``cfg`` in place, typed by the field's annotation."""
    option = OPTIONS.get(key)
    if option is None:
        raise FdbenchError(
            f"unknown config key {key!r}; keys look like loss.koleo_weight "
            f"(sections: {', '.join(sorted({o.section for o in OPTIONS.values()}))})"
        )
    value = coerce(key, value, option.hint)
    if option.choices and value not in option.choices:
        raise FdbenchError(f"bad value for {key}: {value!r}; choose one of {', '.join(option.choices)}")
    setattr(getattr(cfg, option.section), option.name, value)


def parse_assignment(text: str) -> tuple[str, Any]:
    """``"loss.koleo_weight=0.5"`` -> ``("loss.koleo_weight", 0.5)`` (the value read as YAML)."""
    key, sep, raw = text.partition("=")
    if not sep or not key.strip():
        raise FdbenchError(f"bad --set {text!r}: use --set section.field=value (e.g. loss.koleo_weight=0.5)")
    key = key.strip()
    try:
        value = yaml.safe_load(raw) if raw.strip() else ""
    except yaml.YAMLError:
        value = raw
    if key in OPTIONS and OPTIONS[key].hint in (str, str | None) and value is not None:
        value = raw.strip()  # strings stay as typed ("runs/001" is not the number 1)
    return key, value


def flatten_file(data: dict[str, Any], source: str) -> tuple[str | None, dict[str, Any]]:
    """A config file's ``(preset, {section.field: value})``.

    The file may be nested like a run's ``config.yaml`` (``loss: {koleo_weight: 0.5}``), flat with
    the named flags' names (``batch-size: 64``, ``curriculum: none``), or use dotted keys; sections
    and flags can be mixed. ``curriculum`` and ``data`` are both a section and a flag: a mapping
    means the section.
    """
    preset_name, values = None, {}
    sections = {o.section for o in OPTIONS.values()}
    for raw_key, value in data.items():
        key = str(raw_key).replace("-", "_")
        if key == "preset":
            preset_name = None if value in (None, "auto") else str(value)
        elif key in sections and isinstance(value, dict):
            for name, v in value.items():
                dotted = f"{key}.{str(name).replace('-', '_')}"
                if dotted not in OPTIONS:
                    raise FdbenchError(f"unknown key {key}.{name} in {source}")
                values[dotted] = v
        elif key in NAMED_OPTIONS:
            values[NAMED_OPTIONS[key].key] = value
        elif str(raw_key) in OPTIONS:
            values[str(raw_key)] = value
        elif key in ("lr",):
            values["optim.base_lr"] = value
        else:
            raise FdbenchError(
                f"unknown key {raw_key!r} in {source}; use a section (model, loss, ...), "
                f"a dotted key (loss.koleo_weight) or a flag name ({', '.join(sorted(NAMED_OPTIONS))})"
            )
    for dotted, value in values.items():  # typed now, named as written, even where a flag overrides it
        written = next((k for k in data if str(k).replace("-", "_") in (dotted, dotted.split(".")[1])), dotted)
        coerce(
            f"{written} ({dotted}) in {source}" if written != dotted else f"{dotted} in {source}",
            value,
            OPTIONS[dotted].hint,
        )
    return preset_name, values


def load_config_file(path: str | Path) -> tuple[str | None, dict[str, Any]]:
    return flatten_file(load_yaml(path), str(path))


def build_config(
    preset_name: str | None = None, *, sets: dict[str, Any] | None = None, **options: Any
) -> PretrainConfig:
    """A preset (default: ``cpu-tiny`` on CPU, ``gpu-small`` on CUDA) with overrides applied.

    ``options`` use the named flags' names (``epochs=10, curriculum="none", data="/imagenet100"``);
    ``None`` values mean "keep the preset's". ``sets`` are dotted keys (``{"loss.koleo_weight": 0.5}``)
    applied after them. Every value is typed by its field; the result is validated.
    """
    unknown = set(options) - set(NAMED_OPTIONS)
    if unknown:
        raise FdbenchError(
            f"unknown option(s) {', '.join(sorted(unknown))}; valid: {', '.join(sorted(NAMED_OPTIONS))} "
            f"(every other field: sets={{'section.field': value}})"
        )
    sets = dict(sets or {})
    device = options.get("device") or sets.get("run.device") or "auto"
    cfg = preset(preset_name or default_preset_name(device))
    for name, value in options.items():
        if value is not None:
            set_option(cfg, NAMED_OPTIONS[name].key, str(value) if isinstance(value, Path) else value)
    for key, value in sets.items():
        set_option(cfg, key, str(value) if isinstance(value, Path) else value)
    validate(cfg, warn=False)  # train() validates again and warns, once
    return cfg
