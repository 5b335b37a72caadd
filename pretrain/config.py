"""The pretraining configuration: one :class:`PretrainConfig` made of small nested parts, plus presets.

Every number of the DINOv2 recipe lives here (defaults from the DINOv2 reference configs, see
``FACTS.md``), so a run folder's ``config.yaml`` says exactly what was trained. Lengths that the
reference gives in epochs (warm-ups, last-layer freeze) stay in epochs here; the engine turns them
into iterations once it knows the dataset size.

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
from dataclasses import dataclass, field
from typing import Any

from fdbench.config import from_dict, to_dict
from fdbench.errors import FdbenchError


@dataclass
class ModelConfig:
    """The student/teacher backbone (see ``fdbench.models.build_backbone``)."""

    arch: str = "vit_small"
    patch_size: int = 16
    drop_path_rate: float = 0.1          # student only; the teacher never drops paths
    layerscale: float | None = 1e-5
    reg_tokens: int = 0


@dataclass
class HeadConfig:
    """DINO head (and iBOT head, shared by default as in DINOv2)."""

    prototypes: int = 65536
    hidden_dim: int = 2048
    bottleneck_dim: int = 256
    nlayers: int = 3
    ibot_separate_head: bool = False
    ibot_prototypes: int = 65536          # used only with a separate iBOT head


@dataclass
class LossConfig:
    """Loss weights, temperatures, centring and iBOT masking."""

    dino_weight: float = 1.0
    ibot_weight: float = 1.0
    koleo_weight: float = 0.1
    centering: str = "centering"          # "centering" (momentum mean) or "sinkhorn_knopp"
    center_momentum: float = 0.9
    student_temp: float = 0.1
    teacher_temp: float = 0.07
    warmup_teacher_temp: float = 0.04
    warmup_teacher_temp_epochs: float = 30
    mask_probability: float = 0.5         # share of global crops that get a block-wise mask
    mask_ratio_min: float = 0.1
    mask_ratio_max: float = 0.5


@dataclass
class OptimConfig:
    """AdamW and the per-iteration schedules."""

    base_lr: float = 0.004                # at batch 1024; scaled by sqrt(batch / 1024)
    min_lr: float = 1e-6
    warmup_epochs: float = 10
    weight_decay: float = 0.04
    weight_decay_end: float = 0.4
    momentum_teacher: float = 0.992
    final_momentum_teacher: float = 1.0
    layerwise_decay: float = 0.9
    patch_embed_lr_mult: float = 0.2
    freeze_last_layer_epochs: float = 1
    clip_grad: float = 3.0
    beta1: float = 0.9
    beta2: float = 0.999
    # False: one set of schedules over the whole run (default, see the README);
    # True: the paper's code: at every stage switch reset AdamW and restart all schedules
    stage_restart: bool = False


@dataclass
class CropConfig:
    """Full-resolution multi-crop; the curriculum derives each stage's sizes from it."""

    global_size: int = 224
    local_size: int = 96
    n_local: int = 8
    global_scale: tuple[float, float] = (0.32, 1.0)
    local_scale: tuple[float, float] = (0.05, 0.32)
    inverted_blur: bool = False           # True reproduces the released models' blur probabilities


@dataclass
class CurriculumConfig:
    """``name`` is ``none``, ``two-stage`` or a path to a curriculum YAML file."""

    name: str = "two-stage"
    stage1_fraction: float = 0.75
    stage1_scale: float = 0.5
    stage1_global_size: int | None = None
    stage1_local_size: int | None = None
    noise_patching: bool | None = None    # None: the curriculum's default (on in two-stage's last stage)
    noise_max_sigma: float = 0.5


@dataclass
class DataConfig:
    root: str | None = None               # None: the embedded synthetic dataset
    class_list: str | None = None
    workers: int | None = None            # None: min(8, cores - 1) DataLoader workers
    pipeline: str = "auto"                # cpu (workers augment), gpu (workers decode, device augments); auto: gpu on CUDA


@dataclass
class RunConfig:
    """Length of the run, logging, checkpointing and the online kNN monitor."""

    epochs: int = 200
    batch_size: int = 1024                # global batch (split over DDP ranks)
    seed: int = 0
    device: str = "auto"
    out: str | None = None                # None: runs/<curriculum name>
    log_every: int = 10                   # iterations between metrics.csv rows
    save_every_minutes: float = 10.0      # checkpoints/last.pt at least this often (and every epoch)
    save_every_steps: int = 0             # 0: off; >0 also saves every N iterations
    keep_every_epochs: int = 0            # 0: off; >0 keeps checkpoints/epoch_XXXX.pt every N epochs
    eval_every: int = 1                   # epochs between kNN evaluations (0: only at the end)
    knn_k: int = 20
    knn_temperature: float = 0.07
    knn_train_per_class: int = 100        # kNN memory bank: first N train images of each class
    knn_val_per_class: int | None = None  # None: the whole val split
    stop_after_steps: int = 0             # testing aid: stop (as if killed) after N iterations of this process
    threads: int | None = None            # CPU intra-op threads (None: torch's default, one per core)
    compile: bool | None = None           # torch.compile the backbones (None: on CUDA only)


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
        return cfg

    @property
    def run_name(self) -> str:
        from pathlib import Path

        name = self.curriculum.name
        return Path(name).stem if name.endswith((".yaml", ".yml")) else name


def _cpu_tiny() -> PretrainConfig:
    # Sized for a 2-core CPU and the embedded dataset (v3, 32 px): ViT-nano/8 on 32/16 px crops
    # (4x4 and 2x2 patch grids), ~0.8 s per step of 64 images on an idle 2-core machine. 8 epochs
    # (376 iterations): at 32 px a step costs a fraction of a 64 px one, and a plain supervised
    # ViT needed ~600 steps to learn these shapes, so the same minutes buy more, cheaper steps
    # (184 steps at 64 px stayed at 21% even with labels). Adapted to a short run: 1 warm-up epoch,
    # a faster teacher (momentum 0.95 -> 1; at 0.992 the teacher would still hold a large share of
    # its random initialisation at the end), a constant sharp teacher temperature 0.04 and a larger
    # lr (0.004 at batch 64). See benchmarks/embedded_search/ for the trials behind these values.
    return PretrainConfig(
        preset="cpu-tiny",
        model=ModelConfig(arch="vit_nano", patch_size=8, drop_path_rate=0.0),
        head=HeadConfig(prototypes=4096, hidden_dim=512, bottleneck_dim=128, ibot_prototypes=4096),
        loss=LossConfig(teacher_temp=0.04, warmup_teacher_temp=0.04, warmup_teacher_temp_epochs=1),
        optim=OptimConfig(base_lr=0.016, warmup_epochs=1, momentum_teacher=0.95),
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
        run=RunConfig(epochs=200, batch_size=1024, eval_every=10, keep_every_epochs=50, knn_train_per_class=20,
                      knn_val_per_class=10),
    )


PRESETS = {"cpu-tiny": _cpu_tiny, "gpu-small": _gpu_small, "vit-s-in100": _vit_s_in100,
           "vit-b-in1k": _vit_b_in1k}


def preset(name: str) -> PretrainConfig:
    """A fresh copy of a named preset."""
    if name not in PRESETS:
        raise FdbenchError(f"unknown preset {name!r}: choose one of {', '.join(PRESETS)}")
    return copy.deepcopy(PRESETS[name]())


def default_preset_name(device: str = "auto") -> str:
    """``cpu-tiny`` on a CPU, ``gpu-small`` when the run will use CUDA."""
    from fdbench.device import resolve_device

    return "gpu-small" if resolve_device(device).type == "cuda" else "cpu-tiny"


def validate(cfg: PretrainConfig) -> None:
    """Catch bad values up front with a message naming the option and the valid range."""
    from fdbench.models import ARCHS, PATCH_SIZES

    checks = [
        (cfg.model.arch in ARCHS, f"unknown --arch {cfg.model.arch!r}: choose one of {', '.join(ARCHS)}"),
        (cfg.model.patch_size in PATCH_SIZES,
         f"unsupported --patch-size {cfg.model.patch_size}: choose one of {', '.join(map(str, PATCH_SIZES))}"),
        (cfg.run.epochs >= 1, f"--epochs must be at least 1 (got {cfg.run.epochs})"),
        (cfg.run.batch_size >= 2, f"--batch-size must be at least 2 (got {cfg.run.batch_size})"),
        (cfg.run.eval_every >= 0, f"--eval-every must be 0 (only at the end) or more (got {cfg.run.eval_every})"),
        (cfg.loss.centering in ("centering", "sinkhorn_knopp"),
         f"unknown centering {cfg.loss.centering!r}: use centering or sinkhorn_knopp"),
        (0.0 < cfg.curriculum.stage1_fraction < 1.0,
         f"--stage1-fraction must be in (0, 1) (got {cfg.curriculum.stage1_fraction})"),
        (0.0 < cfg.curriculum.stage1_scale <= 1.0,
         f"--stage1-scale must be in (0, 1] (got {cfg.curriculum.stage1_scale})"),
        (cfg.curriculum.noise_max_sigma >= 0.0,
         f"--noise-max-sigma must be >= 0 (got {cfg.curriculum.noise_max_sigma})"),
        (cfg.crops.n_local >= 0, f"the number of local crops must be >= 0 (got {cfg.crops.n_local})"),
        (cfg.crops.global_size >= cfg.model.patch_size,
         f"global crop size {cfg.crops.global_size} is smaller than the patch size {cfg.model.patch_size}"),
        (cfg.data.workers is None or cfg.data.workers >= 0, f"--workers must be >= 0 (got {cfg.data.workers})"),
        (cfg.run.threads is None or cfg.run.threads >= 1, f"--threads must be >= 1 (got {cfg.run.threads})"),
        (cfg.data.pipeline in ("auto", "cpu", "gpu"),
         f"unknown --data-pipeline {cfg.data.pipeline!r}: use auto, cpu or gpu"),
        (0.0 <= cfg.loss.mask_ratio_min <= cfg.loss.mask_ratio_max <= 1.0,
         "mask ratios must satisfy 0 <= min <= max <= 1"),
    ]
    for ok, message in checks:
        if not ok:
            raise FdbenchError(message)


# option name -> (part, field): how flat options (CLI flags, a Python call) map onto the config
OPTION_FIELDS = {
    "arch": ("model", "arch"), "patch_size": ("model", "patch_size"), "drop_path_rate": ("model", "drop_path_rate"),
    "prototypes": ("head", "prototypes"),
    "centering": ("loss", "centering"),
    "base_lr": ("optim", "base_lr"), "warmup_epochs": ("optim", "warmup_epochs"),
    "stage_restart": ("optim", "stage_restart"),
    "global_size": ("crops", "global_size"), "local_size": ("crops", "local_size"), "n_local": ("crops", "n_local"),
    "inverted_blur": ("crops", "inverted_blur"),
    "curriculum": ("curriculum", "name"), "stage1_fraction": ("curriculum", "stage1_fraction"),
    "stage1_scale": ("curriculum", "stage1_scale"), "stage1_global_size": ("curriculum", "stage1_global_size"),
    "stage1_local_size": ("curriculum", "stage1_local_size"), "noise_patching": ("curriculum", "noise_patching"),
    "noise_max_sigma": ("curriculum", "noise_max_sigma"),
    "data": ("data", "root"), "class_list": ("data", "class_list"), "workers": ("data", "workers"),
    "epochs": ("run", "epochs"), "batch_size": ("run", "batch_size"), "seed": ("run", "seed"),
    "device": ("run", "device"), "out": ("run", "out"), "eval_every": ("run", "eval_every"),
    "log_every": ("run", "log_every"), "save_every_steps": ("run", "save_every_steps"),
    "save_every_minutes": ("run", "save_every_minutes"), "keep_every_epochs": ("run", "keep_every_epochs"),
    "stop_after_steps": ("run", "stop_after_steps"), "threads": ("run", "threads"),
    "data_pipeline": ("data", "pipeline"), "compile": ("run", "compile"),
}


def build_config(preset_name: str | None = None, **options: Any) -> PretrainConfig:
    """A preset (default: ``cpu-tiny`` on CPU, ``gpu-small`` on CUDA) with flat overrides applied.

    ``options`` use the CLI's names (``epochs=10, curriculum="none", data="/imagenet100"``);
    ``None`` values mean "keep the preset's". The result is validated.
    """
    import dataclasses

    unknown = set(options) - set(OPTION_FIELDS)
    if unknown:
        raise FdbenchError(f"unknown option(s) {', '.join(sorted(unknown))}; valid: {', '.join(sorted(OPTION_FIELDS))}")
    cfg = preset(preset_name or default_preset_name(options.get("device") or "auto"))
    for name, value in options.items():
        if value is None:
            continue
        part, attr = OPTION_FIELDS[name]
        if name in ("data", "class_list", "out") and value is not None:
            value = str(value)
        setattr(cfg, part, dataclasses.replace(getattr(cfg, part), **{attr: value}))
    validate(cfg)
    return cfg
