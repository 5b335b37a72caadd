"""Shared fixtures: a tiny embedded dataset and an isolated cache, so no test touches ~/.cache."""

from __future__ import annotations

import os

import pytest
import torch

# two cores in CI: avoid oversubscription from intra-op threads in every test process
torch.set_num_threads(min(2, os.cpu_count() or 1))


@pytest.fixture(autouse=True)
def _isolated_cache(tmp_path_factory, monkeypatch):
    monkeypatch.setenv("FDBENCH_CACHE", str(tmp_path_factory.getbasetemp() / "fdbench-cache"))


@pytest.fixture(scope="session")
def tiny_dataset(tmp_path_factory):
    """4 classes x (20 train + 10 val) images of 32 px: enough for loaders, probes and a few steps."""
    from fdbench.synthetic import SyntheticSpec, make_synthetic_dataset

    root = tmp_path_factory.mktemp("data") / "tiny"
    return make_synthetic_dataset(
        root, SyntheticSpec(classes=4, train_per_class=20, val_per_class=10, size=32), workers=1
    )
