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


# The tiny run the engine tests share: vit_pico/8 at 32 px global and 16 px local crops (16/8 px in
# a two-stage curriculum's stage 1), batch 20 of tiny_dataset's 80 train images (4 iterations an
# epoch), 4 epochs, on the CPU without loader workers. Named options of ``build_config``.
TINY_RUN = dict(
    arch="vit_pico",
    patch_size=8,
    global_size=32,
    local_size=16,
    n_local=2,
    prototypes=64,
    batch_size=20,
    epochs=4,
    workers=0,
    device="cpu",
)


@pytest.fixture(scope="session")
def tiny_run_options(tiny_dataset):
    """``options(out, **overrides)``: the tiny run's named options on ``tiny_dataset`` writing to ``out``
    (``data=`` among the overrides points it at another dataset)."""

    def options(out, **overrides) -> dict:
        return {**TINY_RUN, "data": str(tiny_dataset), "out": str(out), **overrides}

    return options


@pytest.fixture(scope="session")
def tiny_run_config(tiny_run_options):
    """``config(out, **overrides)``: the tiny run as a validated ``PretrainConfig`` (preset cpu-tiny);
    overrides are named options, plus ``sets={"section.field": value}`` for the other fields."""
    from pretrain.config import build_config

    def config(out, **overrides):
        return build_config("cpu-tiny", **tiny_run_options(out, **overrides))

    return config


@pytest.fixture(scope="session")
def one_epoch_config(tiny_run_config):
    """``config(out, **overrides)``: the tiny run cut to one epoch of curriculum none with one local
    crop and a small head (32 prototypes, hidden 32, bottleneck 16), kNN on 5 train images a class."""

    def config(out, **overrides):
        small = dict(n_local=1, prototypes=32, epochs=1, curriculum="none")
        sets = {"head.hidden_dim": 32, "head.bottleneck_dim": 16, "run.knn_train_per_class": 5}
        return tiny_run_config(out, **{**small, "sets": sets, **overrides})

    return config


def official_dinov2_state(dim=384, depth=12, heads=6, patch=14, grid=37, registers=0, chunks=0):
    """A state dict with the key names and shapes of DINOv2's DinoVisionTransformer (hub layout)."""
    g = torch.Generator().manual_seed(1)
    r = lambda *s: torch.randn(*s, generator=g) * 0.02
    sd = {
        "cls_token": r(1, 1, dim),
        "pos_embed": r(1, grid * grid + 1, dim),
        "mask_token": r(1, dim),
        "patch_embed.proj.weight": r(dim, 3, patch, patch),
        "patch_embed.proj.bias": r(dim),
        "norm.weight": 1 + r(dim),
        "norm.bias": r(dim),
    }
    if registers:
        sd["register_tokens"] = r(1, registers, dim)
    for i in range(depth):
        p = f"blocks.{i // (depth // chunks)}.{i}." if chunks else f"blocks.{i}."
        sd.update(
            {
                p + "norm1.weight": 1 + r(dim),
                p + "norm1.bias": r(dim),
                p + "attn.qkv.weight": r(3 * dim, dim),
                p + "attn.qkv.bias": r(3 * dim),
                p + "attn.proj.weight": r(dim, dim),
                p + "attn.proj.bias": r(dim),
                p + "ls1.gamma": r(dim),
                p + "norm2.weight": 1 + r(dim),
                p + "norm2.bias": r(dim),
                p + "mlp.fc1.weight": r(4 * dim, dim),
                p + "mlp.fc1.bias": r(4 * dim),
                p + "mlp.fc2.weight": r(dim, 4 * dim),
                p + "mlp.fc2.bias": r(dim),
                p + "ls2.gamma": r(dim),
            }
        )
    return sd
