"""The pretraining recipe as plain dataclasses: one :class:`PretrainConfig` made of small nested
parts (model, head, loss, optim, crops, curriculum, data, run).

Every number of the DINOv2 recipe lives here (defaults from DINOv2's ``ssl_default_config.yaml``),
so a run folder's ``config.yaml`` says exactly what was trained. Lengths that the reference gives in
epochs (warm-ups, last-layer freeze) stay in epochs here; the engine turns them into iterations once
it knows the dataset size.

Each field is defined once, with :func:`opt`: its default, help text, whether it is a named flag of
``fdbench pretrain`` and whether a resumed run may change it (``pretrain.options`` reads that
metadata). Import these through :mod:`pretrain.config`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from fdbench.config import from_dict, to_dict


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
