"""``bench-train``: how fast one DINOv2 training step runs, with and without its data pipeline.

For each curriculum stage's crop sizes (stage 1: the full sizes times ``stage1_scale``, rounded to
the patch; stage 2: the full sizes, with noise patching) and each variant:

- ``fast``: what ``fdbench pretrain`` runs by default on CUDA: compiled backbones
  (:func:`pretrain.fast_step.accelerate_meta_arch`), fed by the on-device
  augmentation pipeline (``--data-pipeline gpu``) or by the CPU one;
- ``reference`` (``--reference``): the plain eager step fed by the CPU pipeline
  (:class:`pretrain.augment.MultiCropAugmentation` in DataLoader workers).

Both are the engine's own code, not copies: its model (:class:`pretrain.meta_arch.MetaArch`), optimiser
and iteration (:func:`pretrain.engine.train_step`: forward/backward, clipping, AdamW, EMA) at constant
schedule values, and its data pipelines (:class:`pretrain.pipeline.StageFeed`, the engine's data
order). Measured:

- model-only img/s: the step on synthetic tensors already on the device (``B * steps / time``);
- end-to-end img/s: the step fed by the chosen pipeline from real images (decode and augmentation
  included; ``e2e_vs_model`` = end-to-end / model-only);
- FLOPs per step (``torch.utils.flop_counter``, forward + backward, counted once on the eager step),
  achieved TFLOP/s = FLOPs / model-only step time, MFU = achieved / the device's dense bf16 peak
  (:data:`PEAK_BF16_TFLOPS`; blank for unknown devices and CPUs);
- peak memory: the CUDA allocator's peak of the cell, or on CPU the process's resident set size
  after the cell's steps (process-wide and never shrinking much: compare options in separate runs,
  e.g. with and without ``--activation-checkpointing``).

Timings synchronise the device once before and once after the timed steps, never inside them.
"""

from __future__ import annotations

import copy
import gc
import math
import os
import time
from dataclasses import asdict, dataclass, fields
from typing import TYPE_CHECKING, Callable, Iterator

import torch

from fdbench.device import resolve_device
from fdbench.errors import FdbenchError
from pretrain.batch import CropBatch
from pretrain.config import PretrainConfig, RunConfig, set_option
from pretrain.pipeline import PIPELINES, StageFeed, resolve_pipeline

if TYPE_CHECKING:
    from pretrain.engine import StagePlan

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
    """The engine's :class:`pretrain.engine.StagePlan` of stage 1 (scaled sizes, no noise) and stage 2
    (full sizes, noise patching), as the two-stage curriculum plans them (default crop scales)."""
    from pretrain.curriculum import round_to_patch
    from pretrain.engine import StagePlan

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


def _validate(cfg: BenchConfig) -> None:
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


# ---------------------------------------------------------------------- the step
class TrainStep:
    """The engine's model, optimiser and :func:`pretrain.engine.train_step` at constant schedule values.

    ``fast``: :meth:`accelerate` applies what the engine applies (chunked losses, compiled backbones if
    ``compile``), after the FLOPs were counted on the eager step. Nothing is read back to the host.
    """

    LR, WD, TEACHER_TEMP, MOMENTUM = 1e-4, 0.04, 0.07, 0.996

    def __init__(self, cfg: BenchConfig, device: torch.device, fast: bool, compile: bool):
        from pretrain.engine import build_optimizer
        from pretrain.meta_arch import MetaArch

        self.pcfg = cfg.recipe
        self.meta = MetaArch(self.pcfg, device)
        if self.pcfg.run.activation_checkpointing:  # as the engine does (pretrain.sharding)
            from pretrain.sharding import checkpoint_blocks

            checkpoint_blocks(self.meta.student.backbone)
        self.optimizer = build_optimizer(self.meta, self.pcfg)
        self.teacher_temp = self.TEACHER_TEMP
        self.fast, self.compile = fast, compile

    def accelerate(self) -> None:
        if self.fast:
            from pretrain.fast_step import accelerate_meta_arch

            accelerate_meta_arch(self.meta, compile=self.compile)

    def __call__(self, batch: CropBatch) -> torch.Tensor:
        from pretrain.engine import train_step

        return train_step(
            self.meta,
            self.optimizer,
            batch,
            lr=self.LR,
            wd=self.WD,
            freeze_last_layer=False,
            teacher_temp=self.TEACHER_TEMP,
            momentum=self.MOMENTUM,
            clip_grad=self.pcfg.optim.clip_grad,
        )["loss"]


def synthetic_batch(cfg: BenchConfig, stage: StagePlan, device: torch.device, seed: int = 0) -> CropBatch:
    """Random crops already on the device, with real iBOT masks: the model-only input."""
    from pretrain.masking import make_masks, masked_token_indices

    g = torch.Generator().manual_seed(seed)
    b, s, l = cfg.recipe.run.batch_size, stage.global_size, stage.local_size
    grid = s // cfg.recipe.model.patch_size
    masks = make_masks(2 * b, (grid, grid), 0.5, (0.1, 0.5), g)
    indices, weights = masked_token_indices(masks)  # on the CPU, as the collates do
    return CropBatch(
        global_crops=torch.randn(2 * b, 3, s, s, generator=g).to(device),
        local_crops=torch.randn(stage.n_local * b, 3, l, l, generator=g).to(device) if stage.n_local else None,
        masks=masks.to(device),
        labels=torch.zeros(b, dtype=torch.long, device=device),
        mask_indices=indices.to(device),
        mask_weights=weights.to(device),
    )


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def time_steps(
    step: Callable[[dict], torch.Tensor], batches: Iterator[dict], steps: int, warmup: int, device: torch.device
) -> tuple[float, float]:
    """(seconds per step, last loss) over ``steps`` steps after ``warmup`` untimed ones."""
    loss = None
    for _ in range(warmup):
        loss = step(next(batches))
    _sync(device)
    start = time.perf_counter()
    for _ in range(steps):
        loss = step(next(batches))
    _sync(device)
    elapsed = time.perf_counter() - start
    return elapsed / steps, float(loss) if loss is not None else math.nan


def _repeat(batch: dict) -> Iterator[dict]:
    while True:
        yield batch


# ---------------------------------------------------------------------- data pipelines
def _cycle(make_iter: Callable[[int], Iterator]) -> Iterator:
    epoch = 0
    while True:
        for item in make_iter(epoch):
            yield item
        epoch += 1


def pipeline_batches(
    cfg: BenchConfig, pcfg, stage, device: torch.device, dataset, workers: int, pipeline: str
) -> Iterator[dict]:
    """Training batches on ``device`` from the engine's pipeline for this stage, epoch after epoch."""
    feed = StageFeed(
        pcfg, stage, dataset, pipeline=pipeline, device=device, workers=workers, decode_slack=cfg.decode_slack
    )
    return _cycle(feed.batches)


# ---------------------------------------------------------------------- the benchmark
def _free(device: torch.device) -> None:
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(device)


def _sig(value: float, digits: int = 4) -> float:
    """Round to significant digits (tiny CPU models have tiny TFLOP counts)."""
    return float(f"{value:.{digits}g}")


def _peak_gib(device: torch.device) -> float:
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**30
    from pretrain.costs import rss_bytes

    return rss_bytes() / 2**30


def run_bench(
    cfg: BenchConfig, log: Callable[[str], None] | None = None, on_row: Callable[[list[dict]], None] | None = None
) -> list[dict]:
    """Run every (stage, variant) cell; returns one dict per row (see the module docstring).

    Cells run stage by stage (fast, then reference), and ``on_row(rows)`` is called after each, so a
    run cut short by a time limit still leaves the finished cells behind.
    """
    from pretrain.costs import count_flops

    _validate(cfg)
    log = log or (lambda message: None)
    r = cfg.recipe
    batch_size, arch, patch = r.run.batch_size, r.model.arch, r.model.patch_size
    device = resolve_device(r.run.device)
    device_name = torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"
    peak = peak_tflops(device_name) if device.type == "cuda" else None
    pipeline = resolve_pipeline(cfg.pipeline, device)
    compile_fast = cfg.compile if cfg.compile is not None else device.type == "cuda"
    workers = r.data.workers if r.data.workers is not None else min(32, max(0, (os.cpu_count() or 1) - 1))
    stages = bench_stages(cfg)
    variants = [("fast", True, compile_fast, pipeline)]
    if cfg.reference:
        variants.append(("reference", False, False, "cpu"))

    dataset = None
    if cfg.end_to_end:
        from fdbench.data import open_dataset

        dataset = open_dataset(r.data.root, "train", None, r.data.class_list, announce=log)
        if len(dataset) < batch_size:
            raise FdbenchError(
                f"the dataset has {len(dataset)} images, fewer than one batch of {batch_size}: "
                f"lower --batch-size or use a larger --data"
            )

    rows = []
    for stage in stages:
        for variant, fast, compiled, pipe in variants:
            _free(device)
            torch.manual_seed(r.run.seed)
            log(
                f"bench {variant}: {arch}/{patch} {stage.name} {stage.global_size}/{stage.local_size} "
                f"x{stage.n_local}, batch {batch_size}, compile {'on' if compiled else 'off'}, pipeline {pipe}"
            )
            step = TrainStep(cfg, device, fast=fast, compile=compiled)
            batch = synthetic_batch(cfg, stage, device, r.run.seed)
            flops = count_flops(lambda s=step, b=batch: s.meta.forward_backward(b, s.teacher_temp))
            step.optimizer.zero_grad(set_to_none=True)
            step.accelerate()
            t_model, loss = time_steps(step, _repeat(batch), cfg.steps, cfg.warmup, device)
            t_e2e = None
            if cfg.end_to_end:
                batches = pipeline_batches(cfg, step.pcfg, stage, device, dataset, workers, pipe)
                t_e2e, loss = time_steps(step, batches, cfg.steps, cfg.warmup, device)
            achieved = flops / t_model / 1e12
            rows.append(
                {
                    "variant": variant,
                    "stage": stage.name,
                    "arch": arch,
                    "patch": patch,
                    "global": stage.global_size,
                    "local": stage.local_size,
                    "n_local": stage.n_local,
                    "batch": batch_size,
                    "compile": compiled,
                    "act_ckpt": bool(r.run.activation_checkpointing),
                    "pipeline": pipe,
                    "model_step_ms": round(1e3 * t_model, 3),
                    "model_img_s": round(batch_size / t_model, 1),
                    "e2e_step_ms": round(1e3 * t_e2e, 3) if t_e2e else None,
                    "e2e_img_s": round(batch_size / t_e2e, 1) if t_e2e else None,
                    "e2e_vs_model": round(t_model / t_e2e, 3) if t_e2e else None,
                    "flops_per_step": int(flops),
                    "tflop_per_step": _sig(flops / 1e12),
                    "achieved_tflops": _sig(achieved),
                    "mfu": round(achieved / peak, 4) if peak else None,
                    "peak_mem_gib": round(_peak_gib(device), 3),
                    "loss": round(loss, 4) if math.isfinite(loss) else None,
                    "device": device_name,
                }
            )
            del step, batch
            if on_row is not None:
                on_row(rows)
    _free(device)
    return rows


def summarise(rows: list[dict]) -> list[str]:
    """Plain-language lines: speed-ups of fast over reference, stage-1 vs stage-2 time and memory."""
    lines = []
    by = {(r["variant"], r["stage"]): r for r in rows}
    for stage in ("stage1", "stage2"):
        f, r = by.get(("fast", stage)), by.get(("reference", stage))
        if f and r and f.get("e2e_img_s") and r.get("e2e_img_s"):
            lines.append(
                f"{stage}: end-to-end {f['e2e_img_s']:.0f} img/s fast vs {r['e2e_img_s']:.0f} reference "
                f"({f['e2e_img_s'] / r['e2e_img_s']:.2f}x)"
            )
    for variant in ("fast", "reference"):
        s1, s2 = by.get((variant, "stage1")), by.get((variant, "stage2"))
        if s1 and s2:
            line = f"{variant}: stage-1 step takes {s1['model_step_ms'] / s2['model_step_ms']:.2f} of stage-2's (model-only)"
            if s1.get("peak_mem_gib") and s2.get("peak_mem_gib"):
                line += f", peak memory {s1['peak_mem_gib'] / s2['peak_mem_gib']:.2f} of stage-2's"
            lines.append(line)
    return lines


TABLE_COLUMNS = (
    "variant",
    "stage",
    "global",
    "local",
    "batch",
    "compile",
    "act_ckpt",
    "pipeline",
    "model_img_s",
    "e2e_img_s",
    "e2e_vs_model",
    "tflop_per_step",
    "achieved_tflops",
    "mfu",
    "peak_mem_gib",
)


def format_table(rows: list[dict], columns=TABLE_COLUMNS) -> str:
    """A fixed-width text table of the rows (blank for missing values)."""

    def cell(v):
        if v is None:
            return ""
        if isinstance(v, float):
            return f"{v:.4g}" if abs(v) < 10 else f"{v:.1f}"
        return str(v)

    table = [list(columns)] + [[cell(r.get(c)) for c in columns] for r in rows]
    widths = [max(len(row[i]) for row in table) for i in range(len(columns))]
    return "\n".join("  ".join(v.rjust(w) for v, w in zip(row, widths)) for row in table)


def write_results(rows: list[dict], out, cfg: BenchConfig) -> dict:
    """``bench.csv`` (every column) and ``bench.json`` (config + rows + summary) under ``out``."""
    from pathlib import Path

    import pandas as pd

    from fdbench.io import atomic_write_csv, atomic_write_json

    out = Path(out)
    paths = {"csv": out / "bench.csv", "json": out / "bench.json"}
    atomic_write_csv(paths["csv"], pd.DataFrame(rows))
    atomic_write_json(paths["json"], {"config": asdict(cfg), "rows": rows, "summary": summarise(rows)})
    return paths
