"""``--tensorboard``: the event files read back hold every metrics.csv column (train and kNN rows)
at their steps, once each after a resume, and the stage switches as text."""

from __future__ import annotations

import sys

import pandas as pd
import pytest
from conftest import TINY_RUN
import torch

from fdbench.errors import FdbenchError

OPTS = {**TINY_RUN, "epochs": 2, "log_every": 1, "eval_every": 1, "threads": 1, "tensorboard": True}


def _cfg(root, out, **kw):
    from pretrain.config import build_config

    cfg = build_config("cpu-tiny", **{**OPTS, **kw}, data=str(root), out=str(out))
    cfg.run.knn_train_per_class = 10
    return cfg


@pytest.fixture
def _restore_threads():
    threads = torch.get_num_threads()
    yield
    torch.set_num_threads(threads)


def test_events_hold_every_metrics_column_once(tiny_dataset, tmp_path, _restore_threads):
    pytest.importorskip("tensorboard")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    from pretrain.engine import train

    out = tmp_path / "run"
    # interrupted after step 3 with last.pt at step 2: the events of step 3 are redone by the re-run
    first = train(_cfg(tiny_dataset, out, save_every_steps=2, stop_after_steps=3))
    assert not first.finished
    done = train(_cfg(tiny_dataset, out))
    assert done.finished and done.resumed_from == 2

    events = EventAccumulator(str(out / "tb"), size_guidance={"scalars": 0, "tensors": 0})
    events.Reload()
    tags = set(events.Tags()["scalars"])
    metrics = pd.read_csv(out / "metrics.csv")
    for kind, rows in metrics.groupby("row"):
        for column in rows.columns:
            if column in ("row", "step", "stage_name") or rows[column].isna().all():
                continue
            tag = f"{kind}/{column}"
            assert tag in tags, tag
            logged = [(e.step, e.value) for e in events.Scalars(tag)]
            expected = [(int(s), float(v)) for s, v in zip(rows["step"], rows[column]) if not pd.isna(v)]
            assert [s for s, _ in logged] == [s for s, _ in expected], tag  # each step once, in order
            assert [v for _, v in logged] == pytest.approx([v for _, v in expected], rel=1e-6), tag
    assert {"train/loss", "train/teacher_rank", "knn/knn_top1"} <= tags
    assert [e.step for e in events.Scalars("train/loss")] == list(range(1, 9))
    # the stage switches, at the first step of each stage (torch writes text as tensor events)
    texts = [(e.step, e.tensor_proto.string_val[0].decode()) for e in events.Tensors("curriculum/stage/text_summary")]
    assert [s for s, _ in texts] == [1, 5]
    assert "stage 1/2" in texts[0][1] and "16 px" in texts[0][1] and "stage 2/2" in texts[1][1]


def test_missing_package_is_a_one_line_error(tiny_dataset, tmp_path, monkeypatch, _restore_threads):
    from pretrain.engine import train

    monkeypatch.setitem(sys.modules, "torch.utils.tensorboard", None)  # import fails, as when not installed
    with pytest.raises(
        FdbenchError, match=r"--tensorboard needs the tensorboard package: pip install 'fdbench\[tensorboard\]'"
    ):
        train(_cfg(tiny_dataset, tmp_path / "run"))
    assert not (tmp_path / "run" / "checkpoints").exists()
