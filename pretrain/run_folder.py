"""A run's folder: where each file lives, the metrics rows, atomic checkpoints and the summary.

::

    config.yaml            the full PretrainConfig
    metrics.csv            one row per logging step, plus one "knn" row per evaluation
    costs.csv              per stage: FLOPs per image, wall-clock, img/s, peak memory
    summary.json           the same per stage, total FLOPs, the FLOPs ratio vs `none`, final kNN
    checkpoints/last.pt    everything needed to continue exactly (+ epoch_XXXX.pt if asked)
    final.pt               the finished model (kind "training", without optimiser state)
    tb/                    TensorBoard events of the metrics rows and stage switches (--tensorboard)

Every file is written atomically (a temp file renamed over the target), so a kill leaves at most a
stale ``.*.tmp`` behind, which :meth:`RunFolder.clean_stale_temps` removes. Only rank 0 writes.
"""

from __future__ import annotations

import json
import math
import time
from pathlib import Path

import pandas as pd
import torch

from fdbench.checkpoint import read_checkpoint, save_checkpoint
from fdbench.config import save_yaml
from fdbench.errors import FdbenchError
from fdbench.io import atomic_write_csv, atomic_write_json

METRIC_COLUMNS = [
    "row",
    "epoch",
    "step",
    "stage",
    "stage_name",
    "global_size",
    "local_size",
    "n_local",
    "loss",
    "dino",
    "koleo",
    "ibot",
    "lr",
    "wd",
    "momentum",
    "teacher_temp",
    "grad_norm",
    "img_per_s",
    "step_time_s",
    "peak_memory_mb",
    "gflops_per_image",
    "knn_top1",
    "knn_top5",
    "teacher_entropy",
    "teacher_rank",
    "teacher_prototypes",
    "teacher_batch_entropy",
    "elapsed_s",
    "run_time_s",
]


class RunFolder:
    def __init__(self, out: Path, writer: bool = True):
        self.out = Path(out)
        self.writer = writer  # False on DDP ranks other than 0
        self.config = self.out / "config.yaml"
        self.metrics_path = self.out / "metrics.csv"
        self.summary = self.out / "summary.json"
        self.costs = self.out / "costs.csv"
        self.last = self.out / "checkpoints" / "last.pt"
        self.final = self.out / "final.pt"
        self.metrics: list[dict] = []
        self._last_flush = time.perf_counter()
        self.tensorboard = None  # a pretrain.tensorboard.TensorBoardLog (open_tensorboard)

    def open_tensorboard(self, resumed_step: int) -> None:
        if self.writer:
            from pretrain.tensorboard import TensorBoardLog

            self.tensorboard = TensorBoardLog(self.out, resumed_step)

    def add_text(self, tag: str, text: str, step: int) -> None:
        if self.tensorboard is not None:
            self.tensorboard.add_text(tag, text, step)

    def close(self) -> None:
        if self.tensorboard is not None:
            self.tensorboard.close()
            self.tensorboard = None

    @property
    def paths(self) -> dict[str, Path]:
        return {
            "config": self.config,
            "metrics": self.metrics_path,
            "summary": self.summary,
            "costs": self.costs,
            "last": self.last,
            "final": self.final,
        }

    # ---- starting and resuming
    def read_last(self, device: torch.device) -> dict | None:
        if not self.last.exists():
            return None
        try:
            return read_checkpoint(self.last, map_location=device)
        except FdbenchError as err:  # a torn or foreign last.pt: say what resuming needs, not what eval accepts
            reason = str(err).split("; expected")[0]
            raise FdbenchError(
                f"{reason}; the run cannot resume from it: rename it to start over, or use another --out"
            ) from None

    def start(self, cfg) -> None:
        if self.writer:
            self.out.mkdir(parents=True, exist_ok=True)
            save_yaml(cfg, self.config)

    def clean_stale_temps(self) -> None:
        """Temp files of writes a kill interrupted (atomic writes never leave a half-written target)."""
        if self.writer and self.out.is_dir():
            for stale in [*self.out.glob(".*.tmp"), *self.out.glob("checkpoints/.*.tmp")]:
                stale.unlink(missing_ok=True)

    def load_metrics(self, up_to_step: int) -> None:
        """Rows already logged, without those past the checkpoint we resume from (they are redone)."""
        self.metrics = []
        if not self.writer or not self.metrics_path.exists():
            return
        frame = pd.read_csv(self.metrics_path)
        frame = frame[frame["step"] <= up_to_step]
        self.metrics = [
            {k: v for k, v in row.items() if not (isinstance(v, float) and math.isnan(v))}
            for row in frame.to_dict("records")
        ]

    def read_summary(self) -> dict:
        return json.loads(self.summary.read_text()) if self.summary.exists() else {}

    # ---- writing
    def add_row(self, row: dict, flush_every_s: float = 30.0) -> None:
        self.metrics.append(row)
        if self.tensorboard is not None:
            self.tensorboard.add_row(row)
        if time.perf_counter() - self._last_flush > flush_every_s:
            self.write_metrics()

    def write_metrics(self) -> None:
        if self.writer:
            atomic_write_csv(self.metrics_path, pd.DataFrame(self.metrics, columns=METRIC_COLUMNS))
            self._last_flush = time.perf_counter()
            if self.tensorboard is not None:
                self.tensorboard.flush()

    def save_checkpoint(self, state: dict, final: bool = False, keep_as_epoch: int | None = None) -> None:
        if not self.writer:
            return
        save_checkpoint(state, self.final if final else self.last)
        if keep_as_epoch is not None:
            save_checkpoint(state, self.out / "checkpoints" / f"epoch_{keep_as_epoch:04d}.pt")

    def write_summary(self, summary: dict) -> None:
        """``summary.json`` and its per-stage table ``costs.csv``."""
        if not self.writer:
            return
        atomic_write_json(self.summary, summary)
        rows = [
            {
                "stage": s["name"],
                "epochs": f"{s['start_epoch']}-{s['end_epoch'] - 1}",
                "iterations": s["iterations"],
                "global_size": s["global_size"],
                "local_size": s["local_size"],
                "n_local": s["n_local"],
                "noise_patching": s["noise_patching"],
                "gflops_per_image": gflops(s["flops_per_image"]),
                "wall_clock_s": round(s["wall_clock_s"], 2),
                "img_per_s": round(s["img_per_s"], 2),
                "step_time_s": round(s["step_time_s"], 4),
                "peak_memory_mb": round(s["peak_memory_bytes"] / 2**20, 1),
            }
            for s in summary["stages"]
        ]
        flops = summary.get("flops") or {}
        if flops:
            rows.append({"stage": "none (reference)", "gflops_per_image": gflops(flops["none_flops_per_image"])})
        atomic_write_csv(self.costs, pd.DataFrame(rows))


def gflops(flops: int | None) -> float | None:
    return None if flops is None else round(flops / 1e9, 4)
