"""``--tensorboard``: every ``metrics.csv`` column as TensorBoard scalars under ``RUN/tb/``, and the
curriculum's stage switches as text events (optional extra: ``pip install 'fdbench[tensorboard]'``).

Tags are ``<row kind>/<column>``: ``train/loss``, ``train/teacher_rank``, ``knn/knn_top1`` ...,
at the row's global step. A resumed run redoes the steps after its checkpoint; the writer is opened
with ``purge_step`` = the checkpoint's step + 1, so TensorBoard drops the events the interrupted
process logged past it and each step appears once, as in ``metrics.csv``.
"""

from __future__ import annotations

import numbers
from pathlib import Path

from fdbench.errors import FdbenchError

NOT_SCALARS = ("row", "step", "stage_name")  # the row kind and the x axis; the name is in the text events


def summary_writer_class():
    """torch's SummaryWriter, or a one-line error naming the extra to install."""
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError:
        raise FdbenchError(
            "--tensorboard needs the tensorboard package: pip install 'fdbench[tensorboard]' (or tensorboard)"
        ) from None
    return SummaryWriter


class TensorBoardLog:
    def __init__(self, out: Path, resumed_step: int):
        self.log_dir = Path(out) / "tb"
        self.writer = summary_writer_class()(log_dir=str(self.log_dir), purge_step=resumed_step + 1)

    def add_row(self, row: dict) -> None:
        kind, step = row.get("row", "train"), int(row["step"])
        for column, value in row.items():
            if column in NOT_SCALARS or value is None or isinstance(value, bool):
                continue
            if isinstance(value, numbers.Real):
                self.writer.add_scalar(f"{kind}/{column}", float(value), step)

    def add_text(self, tag: str, text: str, step: int) -> None:
        self.writer.add_text(tag, text, step)

    def flush(self) -> None:
        self.writer.flush()

    def close(self) -> None:
        self.writer.close()
