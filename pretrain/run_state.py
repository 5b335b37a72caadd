"""What a run has done so far (step, clocks, kNN curve, stage costs): saved in every checkpoint and
restored from it, so a resumed run continues its counters where the interrupted one stopped."""

from __future__ import annotations

import time
from dataclasses import dataclass, field

from pretrain.costs import StageCost, cpu_seconds


@dataclass
class RunState:
    step: int = 0  # iterations done (over all processes' lives)
    iters_per_epoch: int = 1
    elapsed_s: float = 0.0  # wall-clock of the training steps (data loading included)
    knn: list[dict] = field(default_factory=list)  # one {"epoch", "step", "top1", "top5"} per evaluation
    costs: list[StageCost] = field(default_factory=list)
    none_flops_per_image: int | None = None  # the FLOPs reference, counted once per run
    run_time_before_s: float = 0.0  # run_time_s / cpu_time_s of the processes before this one
    cpu_time_before_s: float = 0.0
    resumed_from: int | None = None
    _start: float = field(default_factory=time.perf_counter, repr=False)
    _cpu_start: float = field(default_factory=cpu_seconds, repr=False)

    @property
    def epoch(self) -> int:
        return self.step // self.iters_per_epoch

    @property
    def step_in_epoch(self) -> int:
        return self.step % self.iters_per_epoch

    def run_time(self) -> float:
        """Seconds of everything (set-up, FLOPs counting, evaluations, checkpoints) over the run's processes."""
        return self.run_time_before_s + time.perf_counter() - self._start

    def cpu_time(self) -> float:
        # CPU seconds of the processes and their finished DataLoader workers: a measure of the work
        # done that, unlike wall-clock, does not grow when other jobs share the cores
        return self.cpu_time_before_s + cpu_seconds() - self._cpu_start

    def state_dict(self) -> dict:
        return {
            "epoch": self.epoch,
            "step": self.step,
            "costs": [c.to_dict() for c in self.costs],
            "none_flops_per_image": self.none_flops_per_image,
            "knn": self.knn,
            "elapsed_s": self.elapsed_s,
            "run_time_s": self.run_time(),
            "cpu_time_s": self.cpu_time(),
        }

    def load_state_dict(self, state: dict) -> None:
        self.step, self.knn, self.elapsed_s = int(state["step"]), list(state["knn"]), float(state["elapsed_s"])
        self.run_time_before_s, self.cpu_time_before_s = float(state["run_time_s"]), float(state["cpu_time_s"])
        self.costs = [StageCost.from_dict(c) for c in state["costs"]]
        self.none_flops_per_image = state["none_flops_per_image"]
        self.resumed_from = self.step
