import json
import os

import pandas as pd
import pytest
import torch

from fdbench.io import atomic_open, atomic_torch_save, atomic_write_csv, atomic_write_json, atomic_write_text


def test_failed_write_leaves_old_file_intact(tmp_path):
    target = tmp_path / "results.csv"
    atomic_write_text(target, "old\n")
    with pytest.raises(RuntimeError):
        with atomic_open(target, "w") as fh:
            fh.write("half of the new")
            raise RuntimeError("crash in the middle")
    assert target.read_text() == "old\n"
    assert [p.name for p in tmp_path.iterdir()] == ["results.csv"]  # no temp file left behind


def test_failed_torch_save_keeps_checkpoint(tmp_path):
    target = tmp_path / "last.pt"
    atomic_torch_save({"w": torch.ones(2)}, target)

    class Unpicklable:
        def __reduce__(self):
            raise RuntimeError("cannot pickle")

    with pytest.raises(RuntimeError):
        atomic_torch_save({"w": torch.zeros(2), "bad": Unpicklable()}, target)
    assert torch.equal(torch.load(target, weights_only=True)["w"], torch.ones(2))


def test_writers_roundtrip(tmp_path):
    atomic_write_json(tmp_path / "a" / "s.json", {"x": torch.tensor(1.5).item(), "p": tmp_path})
    assert json.loads((tmp_path / "a" / "s.json").read_text())["x"] == 1.5
    frame = pd.DataFrame({"a": [1, 2], "b": ["x", "y"]})
    atomic_write_csv(tmp_path / "t.csv", frame)
    pd.testing.assert_frame_equal(pd.read_csv(tmp_path / "t.csv"), frame)
    assert not any(p.name.endswith(".tmp") for p in tmp_path.rglob("*"))
    umask = os.umask(0)
    os.umask(umask)
    assert os.stat(tmp_path / "t.csv").st_mode & 0o777 == 0o666 & ~umask  # like open(), not mkstemp's 0600
