"""``bench-train``'s configuration: the recipe it times (:func:`bench_recipe`, a :class:`PretrainConfig`
with the shorthands of :data:`RECIPE_SHORTHANDS`), :class:`BenchConfig`, its two stages
(:func:`bench_stages`) and the devices' bf16 peaks for the MFU (:func:`peak_tflops`)."""

from __future__ import annotations

import copy
import math
from dataclasses import dataclass, fields

from fdbench.errors import FdbenchError
from pretrain.config import PretrainConfig, RunConfig, set_option
from pretrain.curriculum import round_to_patch
from pretrain.pipeline import PIPELINES
from pretrain.stages import StagePlan

# dense bf16 tensor-core peaks (TFLOP/s), matched in order against torch.cuda.get_device_name()
PEAK_BF16_TFLOPS: tuple[tuple[str, float], ...] = (
    ("H100 PCIe", 756.0),
    ("H100 NVL", 835.0),
    ("H100", 989.0),
    ("H200", 989.0),
    ("A100", 312.0),
    ("L40S", 362.0),
)


def peak_tflops(device_name: str | None) -> float | None:
    """The dense bf16 peak of a device by name, or None when unknown (CPUs included)."""
    if not device_name:
        return None
    for key, value in PEAK_BF16_TFLOPS:
        if key.lower() in device_name.lower():
            return value
    return None


# bench-train's short names for the recipe fields it exposes as flags (the rest: --set section.field=value)
RECIPE_SHORTHANDS = {
    "arch": "model.arch",
    "patch_size": "model.patch_size",
    "batch_size": "run.batch_size",
    "global_size": "crops.global_size",
    "local_size": "crops.local_size",
    "n_local": "crops.n_local",
    "stage1_scale": "curriculum.stage1_scale",
    "prototypes": "head.prototypes",
    "hidden_dim": "head.hidden_dim",
    "bottleneck_dim": "head.bottleneck_dim",
    "data": "data.root",
    "class_list": "data.class_list",
    "workers": "data.workers",
    "device": "run.device",
    "seed": "run.seed",
}


def bench_recipe(sets: dict | None = None) -> PretrainConfig:
    """The recipe benchmarked by default: the DINOv2 defaults (ViT-S/16, 224/96 px, 8 local crops,
    65536 prototypes) at batch 128, with ``sets`` (``{"model.arch": "vit_base"}``) applied."""
    recipe = PretrainConfig(preset="bench", run=RunConfig(batch_size=128))
    for key, value in (sets or {}).items():
        if value is not None:
            set_option(recipe, key, value)
    if "head.ibot_prototypes" not in (sets or {}):
        recipe.head.ibot_prototypes = recipe.head.prototypes
    return recipe


@dataclass(init=False)
class BenchConfig:
    """A pretraining recipe (the model, heads, crops, batch and data that are timed) and how to time it.

    ``BenchConfig(arch="vit_pico", steps=2)`` takes the recipe's fields by their short names
    (:data:`RECIPE_SHORTHANDS`), or a whole ``recipe=``.
    """

    recipe: PretrainConfig
    stages: tuple[str, ...] = ("stage1", "stage2")
    steps: int = 20
    warmup: int = 5
    pipeline: str | None = None  # of the fast variant: gpu | cpu; None: gpu on CUDA, cpu on CPU
    compile: bool | None = None  # of the fast variant; None: on for CUDA
    reference: bool = False
    end_to_end: bool = True
    decode_slack: float = 1.0

    def __init__(self, recipe: PretrainConfig | None = None, **options):
        timing = {f.name for f in fields(self)} - {"recipe"}
        unknown = set(options) - timing - set(RECIPE_SHORTHANDS)
        if unknown:
            raise TypeError(f"BenchConfig got unknown option(s) {', '.join(sorted(unknown))}")
        sets = {RECIPE_SHORTHANDS[k]: v for k, v in options.items() if k in RECIPE_SHORTHANDS}
        if recipe is None:
            recipe = bench_recipe(sets)
        else:
            recipe = copy.deepcopy(recipe)
            for key, value in sets.items():
                if value is not None:
                    set_option(recipe, key, value)
        self.recipe = recipe
        for f in fields(self):
            if f.name != "recipe":
                setattr(self, f.name, options.get(f.name, f.default))


def bench_stages(cfg: BenchConfig) -> list[StagePlan]:
    """The engine's :class:`pretrain.stages.StagePlan` of stage 1 (scaled sizes, no noise) and stage 2
    (full sizes, noise patching), as the two-stage curriculum plans them (default crop scales)."""
    p, crops, curriculum = cfg.recipe.model.patch_size, cfg.recipe.crops, cfg.recipe.curriculum

    def plan(name: str, scale: float, noise: bool) -> StagePlan:
        return StagePlan(
            index=0,
            name=name,
            fraction=1.0,
            start_epoch=0,
            end_epoch=1,
            global_size=round_to_patch(crops.global_size * scale, p),
            local_size=round_to_patch(crops.local_size * scale, p),
            n_local=crops.n_local,
            global_scale=tuple(crops.global_scale),
            local_scale=tuple(crops.local_scale),
            noise_patching=noise,
            noise_max_sigma=curriculum.noise_max_sigma,
        )

    table = {"stage1": plan("stage1", curriculum.stage1_scale, False), "stage2": plan("stage2", 1.0, True)}
    unknown = [s for s in cfg.stages if s not in table]
    if unknown:
        raise FdbenchError(f"unknown stage(s) {', '.join(unknown)}: use stage1, stage2")
    return [table[s] for s in cfg.stages]


def validate_bench(cfg: BenchConfig) -> None:
    from fdbench.models import ARCHS, PATCH_SIZES

    r = cfg.recipe
    if r.model.arch not in ARCHS:
        raise FdbenchError(f"unknown architecture {r.model.arch!r}: choose one of {', '.join(ARCHS)}")
    if r.model.patch_size not in PATCH_SIZES:
        raise FdbenchError(f"unsupported patch size {r.model.patch_size}: choose one of {PATCH_SIZES}")
    if cfg.pipeline is not None and cfg.pipeline not in PIPELINES:
        raise FdbenchError(f"unknown data pipeline {cfg.pipeline!r}: use gpu or cpu")
    sizes = {
        "batch-size": r.run.batch_size,
        "steps": cfg.steps,
        "global-size": r.crops.global_size,
        "local-size": r.crops.local_size,
        "prototypes": r.head.prototypes,
    }
    for name, value in sizes.items():
        if value < 1:
            raise FdbenchError(f"--{name} must be >= 1, got {value}")
    if cfg.warmup < 0 or r.crops.n_local < 0:
        raise FdbenchError(f"--warmup and --n-local must be >= 0, got {cfg.warmup} and {r.crops.n_local}")
    if not (math.isfinite(cfg.decode_slack) and cfg.decode_slack > 0):  # 0 would divide the decode size by 0
        raise FdbenchError(f"--decode-slack must be a finite positive number, got {cfg.decode_slack}")
    if not 0 < r.curriculum.stage1_scale <= 1:
        raise FdbenchError(f"stage1-scale must be in (0, 1], got {r.curriculum.stage1_scale}")
