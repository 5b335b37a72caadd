"""Cost accounting: FLOPs per training image, wall-clock, throughput and peak memory per stage.

FLOPs are counted, not estimated: ``torch.utils.flop_counter.FlopCounterMode`` records every
matmul/attention/convolution of one real training step (student forward + backward on all crops,
teacher forward on the global crops, heads and losses), divided by the images in the batch. The
optimiser and EMA are elementwise and not counted, as in the paper's FLOPs figures.

Memory: CUDA peak allocated bytes (reset at each stage start), or on CPU the peak resident set size
sampled after every step (``/proc/self/statm``; the process-lifetime ``ru_maxrss`` otherwise).
"""

from __future__ import annotations

import os
import resource
import time
from dataclasses import asdict, dataclass, field

import torch


def count_flops(step_fn) -> int:
    """FLOPs of ``step_fn()`` (forward and backward), counted by torch's flop counter."""
    from torch.utils.flop_counter import FlopCounterMode

    counter = FlopCounterMode(display=False)
    with counter:
        step_fn()
    return int(counter.get_total_flops())


def rss_bytes() -> int:
    """Current resident set size of this process."""
    try:
        with open("/proc/self/statm") as fh:
            return int(fh.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError, IndexError):
        # ru_maxrss is in KiB on Linux (bytes on macOS); it is a lifetime peak, the best we have
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def cpu_seconds() -> float:
    """User + system CPU seconds of this process and its terminated children (DataLoader workers)."""
    own, children = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + children.ru_utime + children.ru_stime


def reset_peak_memory(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)


def memory_now(device: torch.device) -> int:
    """Peak bytes so far: CUDA peak allocated since the last reset, or the current RSS on CPU."""
    if device.type == "cuda":
        return int(torch.cuda.max_memory_allocated(device))
    return rss_bytes()


@dataclass
class StageCost:
    """What one stage of a run cost. Wall-clock counts the training steps and their data loading."""

    name: str
    global_size: int
    local_size: int
    n_local: int
    iterations: int = 0  # iterations done so far in this stage
    images: int = 0  # global images processed (all ranks)
    wall_clock_s: float = 0.0
    peak_memory_bytes: int = 0
    flops_per_image: int | None = None

    @property
    def img_per_s(self) -> float:
        return self.images / self.wall_clock_s if self.wall_clock_s > 0 else 0.0

    @property
    def step_time_s(self) -> float:
        return self.wall_clock_s / self.iterations if self.iterations else 0.0

    def to_dict(self) -> dict:
        return {**asdict(self), "img_per_s": self.img_per_s, "step_time_s": self.step_time_s}

    @classmethod
    def from_dict(cls, data: dict) -> "StageCost":
        names = {f for f in cls.__dataclass_fields__}
        return cls(**{k: v for k, v in data.items() if k in names})


@dataclass
class StepTimer:
    """Wall-clock of the current logging window (for img/s in metrics.csv)."""

    start: float = field(default_factory=time.perf_counter)
    images: int = 0
    steps: int = 0

    def add(self, images: int) -> None:
        self.images += images
        self.steps += 1

    def rate(self) -> tuple[float, float]:
        """(img/s, seconds per step) over the window, then start a new window."""
        elapsed = max(time.perf_counter() - self.start, 1e-9)
        out = (self.images / elapsed, elapsed / max(self.steps, 1))
        self.start, self.images, self.steps = time.perf_counter(), 0, 0
        return out


def flops_summary(
    stages: list[StageCost], stage_iterations: list[int], global_batch: int, none_flops_per_image: int | None
) -> dict:
    """Total training FLOPs of the run's schedule, and the ratio against the same schedule as ``none``.

    total = sum_stages iterations_s * global_batch * flops_per_image_s
    none  = (sum_stages iterations_s) * global_batch * flops_per_image_none
    ratio = none / total  (how many times fewer FLOPs the curriculum needs; 1.0 for ``none`` itself)
    """
    if any(s.flops_per_image is None for s in stages) or none_flops_per_image is None:
        return {}
    total = sum(n * global_batch * s.flops_per_image for s, n in zip(stages, stage_iterations))
    none_total = sum(stage_iterations) * global_batch * none_flops_per_image
    return {
        "total_flops": int(total),
        "none_flops_per_image": int(none_flops_per_image),
        "none_total_flops": int(none_total),
        "flops_ratio_vs_none": none_total / total if total else None,
        "flops_fraction_of_none": total / none_total if none_total else None,
    }
