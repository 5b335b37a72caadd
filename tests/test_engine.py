"""The pretraining engine: config, schedules, data order, the training step's wiring, EMA, FLOPs,
the kNN monitor, and whole tiny runs (stage switch, exact resume, non-finite loss)."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from fdbench.checkpoint import load_backbone, read_checkpoint
from fdbench.errors import FdbenchError
from pretrain.config import PRESETS, build_config, preset


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    """Tiny models run fastest on one intra-op thread; two threads on a busy machine spend most of
    each small op waiting for each other."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="session")
def tiny_cfg(tiny_run_config):
    """The tiny run logging every step, with a kNN evaluation every 2 epochs on 10 train images a class."""

    def config(out, **overrides):
        return tiny_run_config(
            out, **{"log_every": 1, "eval_every": 2, "sets": {"run.knn_train_per_class": 10}, **overrides}
        )

    return config


# ---- config --------------------------------------------------------------------------------------


def test_presets_validate_and_overrides_apply():
    for name in PRESETS:
        cfg = build_config(name)
        assert cfg.preset == name
    assert preset("vit-b-in1k").model.arch == "vit_base"
    assert preset("vit-s-in100").crops.global_size == 224 and preset("vit-s-in100").crops.n_local == 8
    cfg = build_config("cpu-tiny", epochs=7, curriculum="none", noise_patching=True, stage_restart=True)
    assert (cfg.run.epochs, cfg.curriculum.name, cfg.curriculum.noise_patching, cfg.optim.stage_restart) == (
        7,
        "none",
        True,
        True,
    )
    assert cfg.run_name == "none"
    assert build_config("cpu-tiny").run_name == "two-stage"
    with pytest.raises(FdbenchError, match="unknown --arch"):
        build_config("cpu-tiny", arch="vit_huge")
    with pytest.raises(FdbenchError, match="--stage1-fraction"):
        build_config("cpu-tiny", stage1_fraction=1.5)
    with pytest.raises(FdbenchError, match="unknown preset"):
        build_config("nope")
    with pytest.raises(FdbenchError, match="unknown option"):
        build_config("cpu-tiny", learning_rate=1.0)


# ---- schedules ----------------------------------------------------------------------------------


def test_schedules_continuous_and_restarted(tiny_cfg, tmp_path):
    from pretrain.engine import build_schedules, plan_stages, resolve_curriculum

    cfg = tiny_cfg(tmp_path, epochs=8, warmup_epochs=2)
    cfg.loss.warmup_teacher_temp, cfg.loss.teacher_temp = 0.04, 0.07  # DINOv2's warm-up
    iters_per_epoch = 4
    stages = plan_stages(cfg, resolve_curriculum(cfg))
    assert [(p.start_epoch, p.end_epoch) for p in stages] == [(0, 6), (6, 8)]
    s = build_schedules(cfg, stages, iters_per_epoch)
    peak = cfg.optim.base_lr * math.sqrt(cfg.run.batch_size / 1024)
    assert len(s.lr) == 32
    assert s.lr[0] == 0 and s.lr[7] == pytest.approx(peak) and s.lr[-1] < s.lr[8] and s.lr[-1] > cfg.optim.min_lr
    assert s.momentum[0] == pytest.approx(cfg.optim.momentum_teacher) and s.momentum[-1] > 0.999
    assert s.wd[0] == pytest.approx(0.04) and s.wd[-1] == pytest.approx(0.4, abs=2e-3)
    assert s.teacher_temp[0] == pytest.approx(0.04) and s.teacher_temp[4:].eq(0.07).all()  # 1 warm-up epoch
    assert s.freeze_last_layer[:4].all() and not s.freeze_last_layer[4:].any()
    # continuous: nothing restarts at the switch (iteration 24)
    assert s.lr[24] < s.lr[23] and s.momentum[24] > s.momentum[23]

    cfg.optim.stage_restart = True
    r = build_schedules(cfg, stages, iters_per_epoch)
    assert r.lr[7] == pytest.approx(peak) and r.lr[23] < 0.05 * peak  # stage 1's own cosine ends near 0
    # stage 2 (8 iterations) restarts: warm-up capped at 20% of the stage (2 iterations), momentum
    # back to 0.99, teacher temperature warm-up again, last layer frozen again
    assert r.lr[24] == 0 and r.lr[25] == pytest.approx(peak) and r.lr[27] < r.lr[26] == pytest.approx(peak)
    assert r.momentum[24] == pytest.approx(cfg.optim.momentum_teacher)
    assert r.teacher_temp[24] == pytest.approx(0.04) and r.freeze_last_layer[24] and not r.freeze_last_layer[26]


# ---- data order ---------------------------------------------------------------------------------


def test_epoch_order_is_deterministic_sharded_and_resumable():
    from pretrain.data import ResumableBatchSampler

    def batches(**kw):
        return list(ResumableBatchSampler(50, 12, seed=3, epoch=2, **kw))

    single = batches()
    assert len(single) == 4 and all(len(b) == 12 for b in single)  # drop-last: 50 // 12
    assert batches() == single  # deterministic
    assert batches(start_step=2) == single[2:]  # resumable mid-epoch
    assert [i for i, _, _ in single[0]] != [i for i, _, _ in list(ResumableBatchSampler(50, 12, seed=3, epoch=1))[0]]
    # two ranks split every global batch into disjoint halves holding the same images and seeds
    r0, r1 = batches(rank=0, world_size=2), batches(rank=1, world_size=2)
    for full, a, b in zip(single, r0, r1):
        assert len(a) == len(b) == 6
        assert sorted(k[:2] for k in a + b) == sorted(k[:2] for k in full)
    indices = [i for b in single for i, _, _ in b]
    assert len(set(indices)) == len(indices)  # no image twice in an epoch


def test_seeded_augmentation_is_reproducible_and_leaves_global_rng(tiny_dataset):
    from fdbench.data import open_dataset
    from pretrain.augment import MultiCropAugmentation
    from pretrain.data import AugmentedDataset

    ds = AugmentedDataset(open_dataset(tiny_dataset, "train"), MultiCropAugmentation(32, 16, 2))
    torch.manual_seed(0)
    before = torch.get_rng_state()
    a, label, mask_seed = ds[(5, 1234, 99)]
    assert torch.equal(torch.get_rng_state(), before)
    b, _, _ = ds[(5, 1234, 99)]
    c, _, _ = ds[(5, 1235, 99)]
    assert all(
        torch.equal(x, y) for x, y in zip(a["global_crops"] + a["local_crops"], b["global_crops"] + b["local_crops"])
    )
    assert not torch.equal(a["global_crops"][0], c["global_crops"][0])
    assert mask_seed == 99 and label == ds.base[5][1]


# ---- the training step ----------------------------------------------------------------------------


def _small_meta(tmp_path, tiny_cfg, **kw):
    from pretrain.meta_arch import MetaArch

    torch.manual_seed(0)
    cfg = tiny_cfg(tmp_path, drop_path_rate=0.0, **kw)
    return cfg, MetaArch(cfg)


def _batch(b=4, n_local=2, generator_seed=0, precomputed=False):
    """A hand-made batch; ``precomputed`` adds the mask indices and weights as the collates do."""
    from pretrain.batch import CropBatch
    from pretrain.masking import make_masks, masked_token_indices

    g = torch.Generator().manual_seed(generator_seed)
    masks = make_masks(2 * b, (2, 2), 0.5, (0.1, 0.5), generator=g)
    masks[0, 0] = True  # at least one masked token whatever the draw
    batch = CropBatch(
        global_crops=torch.randn(2 * b, 3, 16, 16, generator=g),
        local_crops=torch.randn(n_local * b, 3, 8, 8, generator=g),
        masks=masks,
        labels=torch.zeros(b, dtype=torch.long),
    )
    if precomputed:
        batch.mask_indices, batch.mask_weights = masked_token_indices(masks)
    return batch


def _ce(p, z, temp=0.1):
    return -(p * F.log_softmax(z / temp, dim=-1)).sum(-1)


@pytest.mark.parametrize("precomputed", [True, False])
def test_forward_backward_matches_an_independent_computation(tmp_path, tiny_cfg, precomputed):
    """Teacher on unmasked globals, student on masked globals + locals; DINO over s != t pairs,
    KoLeo per global crop, iBOT on masked tokens (boolean masks here, the collate's host-computed
    indices in the step, or indices derived from the masks) weighted per image; teacher gets no gradients."""
    cfg, meta = _small_meta(tmp_path, tiny_cfg)
    batch, temp, b, n_local = _batch(precomputed=precomputed), 0.05, 4, 2
    g, loc, masks = batch.global_crops, batch.local_crops, batch.masks
    with torch.no_grad():
        t_cls, t_patch = meta.teacher.backbone(g)
        t_probs = F.softmax(meta.teacher.dino_head(t_cls) / temp, dim=-1)  # centre is 0 at start
        s_gcls, s_gpatch = meta.student.backbone(g, masks=masks)
        s_lcls, _ = meta.student.backbone(loc)
        s_g, s_l = meta.student.dino_head(s_gcls), meta.student.dino_head(s_lcls)
        terms = [
            _ce(t_probs[t * b : (t + 1) * b], s_g[s * b : (s + 1) * b]).mean()
            for s in range(2)
            for t in range(2)
            if s != t
        ]
        terms += [
            _ce(t_probs[t * b : (t + 1) * b], s_l[s * b : (s + 1) * b]).mean() for s in range(n_local) for t in range(2)
        ]
        dino = torch.stack(terms).mean()
        koleo = 0.0
        for c in range(2):
            x = F.normalize(s_gcls[c * b : (c + 1) * b], dim=-1)
            d = torch.cdist(x, x) + torch.diag(torch.full((b,), float("inf")))
            koleo += -torch.log(d.min(dim=1).values + 1e-8).mean()
        ibot = 0.0
        for i in range(2 * b):
            m = masks[i]
            if m.any():
                tp = F.softmax(meta.teacher.dino_head(t_patch[i][m]) / temp, dim=-1)
                ibot += _ce(tp, meta.student.dino_head(s_gpatch[i][m])).sum() / m.sum()
        ibot = ibot / (2 * b)
    losses = meta.forward_backward(batch, temp)
    assert losses["dino"] == pytest.approx(float(dino), rel=1e-4)
    assert losses["koleo"] == pytest.approx(float(koleo), rel=1e-4)
    assert losses["ibot"] == pytest.approx(float(ibot), rel=1e-4)
    assert losses["loss"] == pytest.approx(float(dino + 0.1 * koleo + ibot), rel=1e-4)
    assert all(p.grad is None for p in meta.teacher.parameters())
    assert all(p.grad is not None for p in meta.student.parameters())
    # the centre moved towards the batch mean of the teacher logits: c = m * 0 + (1 - m) * mean
    m = cfg.loss.center_momentum  # the recipe's (cpu-tiny: 0.99, DINOv2: 0.9)
    assert meta.dino_loss.center_momentum == m
    with torch.no_grad():
        expected_center = (1 - m) * meta.teacher.dino_head(t_cls).mean(0, keepdim=True)
    assert torch.allclose(meta.dino_loss.center, expected_center, atol=1e-6)


@pytest.mark.parametrize("centering", ["centering", "sinkhorn_knopp"])
def test_forward_backward_ibot_on_indices_equals_boolean_masks(tmp_path, tiny_cfg, centering):
    """The step's iBOT term (host-computed indices) equals boolean-mask gathers, with an image that
    masks nothing; a batch with no mask at all gives iBOT 0, finite, and leaves the iBOT centre alone."""
    from pretrain.losses import sinkhorn_knopp

    cfg, meta = _small_meta(tmp_path, tiny_cfg, centering=centering)
    batch, temp = _batch(precomputed=True), 0.05
    masks = batch.masks
    masks[1] = False  # an image with zero masked tokens (indices recomputed below)
    from pretrain.masking import masked_token_indices

    batch.mask_indices, batch.mask_weights = masked_token_indices(masks)
    with torch.no_grad():
        _, t_patch = meta.teacher.backbone(batch.global_crops)
        _, s_patch = meta.student.backbone(batch.global_crops, masks=masks)
        t_logits = meta.teacher.dino_head(t_patch.flatten(0, 1)[masks.flatten()])
        if centering == "sinkhorn_knopp":
            t_probs = sinkhorn_knopp(t_logits, temp, n_samples=int(masks.sum()))
        else:
            t_probs = F.softmax(t_logits / temp, dim=-1)  # the centre is 0 at start
        ref = meta.ibot_loss(meta.student.dino_head(s_patch.flatten(0, 1)[masks.flatten()]), t_probs, masks)
    losses = meta.forward_backward(batch, temp)
    assert losses["ibot"] == pytest.approx(float(ref), rel=1e-5)

    none = _batch(generator_seed=1, precomputed=True)
    none.masks[:] = False
    none.mask_indices, none.mask_weights = masked_token_indices(none.masks)
    assert none.mask_indices.numel() == 0
    centre = meta.ibot_loss.center.clone()
    meta.student.zero_grad(set_to_none=True)
    losses = meta.forward_backward(none, temp)
    assert losses["ibot"].item() == 0.0 and all(torch.isfinite(v) for v in losses.values())
    assert torch.equal(meta.ibot_loss.center, centre)
    assert all(torch.isfinite(p.grad).all() for p in meta.student.parameters() if p.grad is not None)


def test_ema_update_and_last_layer_freeze(tmp_path, tiny_cfg):
    cfg, meta = _small_meta(tmp_path, tiny_cfg)
    with torch.no_grad():
        for p in meta.student.parameters():
            p.add_(torch.randn_like(p))
    before = {k: v.clone() for k, v in meta.teacher.state_dict().items()}
    student = meta.student.state_dict()
    meta.update_teacher(0.9)
    after = meta.teacher.state_dict()
    for name, value in before.items():
        assert torch.allclose(after[name], 0.9 * value + 0.1 * student[name], atol=1e-6), name

    meta.forward_backward(_batch(), 0.04)
    norm = meta.clip_gradients(1e-3)
    assert norm > 1e-3
    total = torch.linalg.vector_norm(torch.stack([p.grad.norm() for p in meta.student.backbone.parameters()]))
    assert total == pytest.approx(1e-3, rel=1e-3)


# ---- costs and the kNN monitor -------------------------------------------------------------------


def test_flop_counter_counts_forward_and_backward():
    from pretrain.costs import count_flops, flops_summary, StageCost

    lin = torch.nn.Linear(7, 5)
    x = torch.randn(3, 7, requires_grad=True)
    assert count_flops(lambda: lin(x).sum().backward()) == 6 * 3 * 7 * 5  # fwd 2BIO + bwd 4BIO
    stages = [StageCost("a", 16, 8, 2, flops_per_image=10), StageCost("b", 32, 16, 2, flops_per_image=40)]
    summary = flops_summary(stages, [30, 10], 4, 40)
    assert summary["total_flops"] == (30 * 10 + 10 * 40) * 4
    assert summary["flops_ratio_vs_none"] == pytest.approx(40 * 40 / (30 * 10 + 10 * 40))


def test_knn_votes_hand_computed_and_brute_force():
    from pretrain.monitor import knn_predict, topk_accuracy

    train = torch.tensor([[1.0, 0.0], [0.0, 1.0], [1.0, 1.0]])
    labels = torch.tensor([0, 1, 1])
    votes = knn_predict(train, labels, torch.tensor([[1.0, 0.1]]), 2, k=2, temperature=1.0)
    s0, s2 = 1 / math.sqrt(1.01), 1.1 / (math.sqrt(1.01) * math.sqrt(2))  # cosines to neighbours 0 and 2
    assert votes[0].tolist() == pytest.approx([math.exp(s0), math.exp(s2)], rel=1e-5)

    g = torch.Generator().manual_seed(0)
    tr, te = torch.randn(40, 6, generator=g), torch.randn(9, 6, generator=g)
    tl, _ = torch.randint(0, 3, (40,), generator=g), torch.randint(0, 3, (9,), generator=g)
    votes = knn_predict(tr, tl, te, 3, k=5, temperature=0.07, chunk=4)
    for i in range(9):
        sims = [float(F.cosine_similarity(te[i], tr[j], dim=0)) for j in range(40)]
        nearest = sorted(range(40), key=lambda j: -sims[j])[:5]
        expected = [sum(math.exp(sims[j] / 0.07) for j in nearest if tl[j] == c) for c in range(3)]
        assert votes[i].tolist() == pytest.approx(expected, rel=1e-4)
    hand = torch.tensor([[0.1, 0.7, 0.2], [0.5, 0.3, 0.2]])
    assert topk_accuracy(hand, torch.tensor([1, 1]), 1) == 0.5
    assert topk_accuracy(hand, torch.tensor([1, 1]), 2) == 1.0


# ---- whole runs -----------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def reference_run(tiny_cfg, tmp_path_factory):
    """An uninterrupted two-stage run: stage 1 = epochs 0-2 at 16/8 px, stage 2 = epoch 3 at 32/16 px."""
    from pretrain.engine import train

    out = tmp_path_factory.mktemp("runs") / "reference"
    return train(tiny_cfg(out, drop_path_rate=0.1, keep_every_epochs=2))


def test_run_folder_contents_and_stage_switch(reference_run):
    import pandas as pd

    out = reference_run.out
    for name in (
        "config.yaml",
        "metrics.csv",
        "summary.json",
        "costs.csv",
        "final.pt",
        "checkpoints/last.pt",
        "checkpoints/epoch_0002.pt",
        "checkpoints/epoch_0004.pt",
    ):
        assert (out / name).is_file(), name
    assert sorted(p.name for p in (out / "checkpoints").iterdir()) == ["epoch_0002.pt", "epoch_0004.pt", "last.pt"]
    metrics = pd.read_csv(out / "metrics.csv")
    train_rows = metrics[metrics["row"] == "train"]
    assert list(train_rows["step"]) == list(range(1, 17))
    assert set(train_rows[train_rows["epoch"] <= 2]["global_size"]) == {16}
    assert set(train_rows[train_rows["epoch"] == 3]["global_size"]) == {32}
    assert set(train_rows[train_rows["epoch"] == 3]["local_size"]) == {16}
    assert (
        train_rows[
            [
                "loss",
                "dino",
                "koleo",
                "ibot",
                "lr",
                "wd",
                "momentum",
                "teacher_temp",
                "img_per_s",
                "peak_memory_mb",
                "gflops_per_image",
            ]
        ]
        .notna()
        .all()
        .all()
    )
    assert train_rows.groupby("stage")["gflops_per_image"].nunique().tolist() == [1, 1]
    knn = metrics[metrics["row"] == "knn"]
    assert list(knn["epoch"]) == [1, 3] and knn["knn_top1"].between(0, 1).all()

    s = reference_run.summary
    assert s["finished"] and s["iterations"] == 16 and [st["iterations"] for st in s["stages"]] == [12, 4]
    low, full = s["stages"]
    assert (low["global_size"], low["local_size"], low["noise_patching"]) == (16, 8, False)
    assert (full["global_size"], full["local_size"], full["noise_patching"]) == (32, 16, True)
    assert 0 < low["flops_per_image"] < full["flops_per_image"]
    assert all(st["wall_clock_s"] > 0 and st["img_per_s"] > 0 and st["peak_memory_bytes"] > 0 for st in s["stages"])
    f = s["flops"]
    expected_total = 20 * (12 * low["flops_per_image"] + 4 * full["flops_per_image"])
    assert f["total_flops"] == expected_total
    assert f["flops_ratio_vs_none"] == pytest.approx(16 * 20 * f["none_flops_per_image"] / expected_total)
    assert f["flops_ratio_vs_none"] > 1.5
    assert s["knn"]["final_top1"] == knn["knn_top1"].iloc[-1]

    loaded = load_backbone(reference_run.final)
    assert loaded.source == "fdbench-training" and loaded.config.arch == "vit_pico"
    assert loaded.meta["data"]["image_size"] == 32 and loaded.meta["data"]["root"]
    state = read_checkpoint(out / "checkpoints" / "last.pt")
    assert {"optimizer", "rng", "student", "teacher", "losses", "curriculum", "data_position"} <= set(state)
    assert state["curriculum"]["name"] == "two-stage" and state["step"] == 16


def test_noise_patching_only_in_the_stages_that_enable_it(tiny_cfg, tmp_path):
    from pretrain.engine import make_augment, plan_stages, resolve_curriculum

    def noise(**kw):
        cfg = tiny_cfg(tmp_path, **kw)
        return [make_augment(cfg, p).noise_patch is not None for p in plan_stages(cfg, resolve_curriculum(cfg))]

    assert noise() == [False, True]
    assert noise(noise_patching=False) == [False, False]  # curriculum alone
    assert noise(curriculum="none") == [False]
    assert noise(curriculum="none", noise_patching=True) == [True]  # patching alone
    cfg = tiny_cfg(tmp_path, noise_max_sigma=0.2)
    assert make_augment(cfg, plan_stages(cfg, resolve_curriculum(cfg))[1]).noise_patch.max_sigma == 0.2


def _assert_same_state(a: dict, b: dict):
    for key in ("student", "teacher"):
        for name in a[key]:
            assert torch.equal(a[key][name], b[key][name]), f"{key}.{name}"
    for loss in ("dino", "ibot"):
        assert torch.equal(a["losses"][loss]["center"], b["losses"][loss]["center"])


def test_resumed_run_equals_uninterrupted_across_the_stage_switch(reference_run, tiny_cfg, tmp_path):
    from pretrain.engine import train

    out = tmp_path / "resumed"
    first = train(tiny_cfg(out, drop_path_rate=0.1, save_every_steps=1, stop_after_steps=5))
    assert not first.finished and read_checkpoint(out / "checkpoints" / "last.pt")["step"] == 5  # mid epoch 1
    second = train(tiny_cfg(out, drop_path_rate=0.1, save_every_steps=1, stop_after_steps=9))
    assert second.resumed_from == 5
    assert read_checkpoint(out / "checkpoints" / "last.pt")["step"] == 14  # past the switch at 12, mid epoch 3
    done = train(tiny_cfg(out, drop_path_rate=0.1))
    assert done.finished and done.resumed_from == 14
    _assert_same_state(read_checkpoint(reference_run.final), read_checkpoint(done.final))
    assert done.summary["knn"]["curve"] == reference_run.summary["knn"]["curve"]
    # the metrics rows were not duplicated by the restarts
    import pandas as pd

    steps = pd.read_csv(out / "metrics.csv").query("row == 'train'")["step"].tolist()
    assert steps == list(range(1, 17))
    # a finished run is not trained again; a different recipe in the same folder is refused
    again = train(tiny_cfg(out, drop_path_rate=0.1))
    assert again.finished and again.resumed_from == 16
    with pytest.raises(FdbenchError, match="different settings.*run.epochs"):
        train(tiny_cfg(out, drop_path_rate=0.1, epochs=5))


def test_stage_restart_resets_adamw_at_the_switch(tiny_cfg, tmp_path):
    from pretrain.engine import train

    out = tmp_path / "restart"
    train(tiny_cfg(out, stage_restart=True, save_every_steps=1, stop_after_steps=13))
    state = read_checkpoint(out / "checkpoints" / "last.pt")
    assert state["step"] == 13
    # one AdamW step since the switch at iteration 12 (the last layer is frozen again, so it has none)
    steps = {float(s["step"]) for s in state["optimizer"]["state"].values()}
    assert steps == {1.0}

    cont = tmp_path / "continuous"
    train(tiny_cfg(cont, save_every_steps=1, stop_after_steps=13))
    steps = {float(s["step"]) for s in read_checkpoint(cont / "checkpoints" / "last.pt")["optimizer"]["state"].values()}
    assert max(steps) == 13.0


def test_non_finite_loss_stops_with_the_step_and_keeps_the_checkpoint(tiny_cfg, tmp_path, monkeypatch):
    from pretrain.engine import train
    from pretrain.meta_arch import MetaArch

    out = tmp_path / "nan"
    train(tiny_cfg(out, save_every_steps=1, stop_after_steps=3))
    original = MetaArch.forward_backward
    calls = []

    def poisoned(self, batch, teacher_temp):
        losses = original(self, batch, teacher_temp)
        calls.append(1)
        if len(calls) == 2:
            losses["dino"] = torch.tensor(float("nan"))
        return losses

    monkeypatch.setattr(MetaArch, "forward_backward", poisoned)
    # resumed at step 3: the second step of this process (step 5) is poisoned, after the epoch-end
    # checkpoint at step 4
    with pytest.raises(FdbenchError, match=r"non-finite loss at step 5 of 16 .*dino=nan.*last good checkpoint"):
        train(tiny_cfg(out))
    assert read_checkpoint(out / "checkpoints" / "last.pt")["step"] == 4
    assert not (out / "final.pt").exists()

    # losses are only read back on logging steps (no host sync per step): a bad step between them
    # is caught at the next one (here the epoch end, step 8), still named exactly, and the
    # checkpoint that step would have written is not written
    calls.clear()
    with pytest.raises(FdbenchError, match=r"non-finite loss at step 6 of 16 \(epoch 1, stage 'low-res'\).*dino=nan"):
        train(tiny_cfg(out, log_every=100))
    assert read_checkpoint(out / "checkpoints" / "last.pt")["step"] == 4


# ---- the on-device (gpu) pipeline and the fast step, on CPU tensors --------------------------------


def test_gpu_feed_follows_each_stage_and_is_fixed_by_the_step(tiny_dataset, tmp_path, tiny_cfg):
    from fdbench.data import open_dataset
    from pretrain.decode import needed_side
    from pretrain.engine import plan_stages, resolve_curriculum
    from pretrain.pipeline import StageFeed

    cfg = tiny_cfg(tmp_path, data_pipeline="gpu")
    train_set = open_dataset(tiny_dataset, "train")
    low, full = plan_stages(cfg, resolve_curriculum(cfg))
    feeds = [StageFeed(cfg, p, train_set, pipeline="gpu", device="cpu", workers=0) for p in (low, full)]
    for feed, plan in zip(feeds, (low, full)):
        aug = feed.augment
        assert (aug.global_size, aug.local_size, aug.n_local) == (plan.global_size, plan.local_size, plan.n_local)
        assert aug.noise_patching == plan.noise_patching and aug.noise_max_sigma == plan.noise_max_sigma
        assert feed.decode_side == needed_side(
            plan.global_size, plan.local_size, plan.global_scale[0], plan.local_scale[0], plan.n_local
        )
    assert [f.augment.noise_patching for f in feeds] == [False, True]

    feed, b = feeds[1], cfg.run.batch_size
    first, second = list(feed.batches(epoch=3))[:2]
    assert first.global_crops.shape == (2 * b, 3, 32, 32) and first.local_crops.shape == (2 * b, 3, 16, 16)
    assert first.masks.shape == (2 * b, 16) and first.masks.any() and first.labels.shape == (b,)
    # a loader started at step 1 (a resumed run) gives the very same crops and masks as step 1 of
    # a full epoch, and the global RNG plays no part
    torch.manual_seed(123)
    again = next(iter(feed.batches(epoch=3, start_step=1)))
    for key in ("global_crops", "local_crops", "masks", "mask_indices", "mask_weights", "labels"):
        assert torch.equal(getattr(again, key), getattr(second, key)), key
    # the workers computed the iBOT gather of their masks (DecodeBatchCollate), on the CPU
    assert torch.equal(first.mask_indices, first.masks.flatten().nonzero().flatten())
    assert not torch.equal(first.global_crops, second.global_crops)


def test_gpu_pipeline_resumed_run_equals_uninterrupted_across_the_stage_switch(tiny_cfg, tmp_path):
    """The same guarantee as the cpu pipeline's: kill anywhere, re-run, identical weights."""
    from pretrain.engine import train

    # batch 40: 2 iterations per epoch, stage 1 = steps 1-6 at 16/8 px, stage 2 = steps 7-8 at 32/16 px
    def cfg(out, **kw):
        return tiny_cfg(out, data_pipeline="gpu", batch_size=40, drop_path_rate=0.1, eval_every=0, **kw)

    reference = train(cfg(tmp_path / "reference"))
    assert reference.summary["pipeline"] == "gpu" and reference.summary["compile"] is False
    out = tmp_path / "resumed"
    train(cfg(out, save_every_steps=1, stop_after_steps=3))  # mid epoch 1
    second = train(cfg(out, save_every_steps=1, stop_after_steps=4))  # to step 7: past the switch
    assert second.resumed_from == 3 and read_checkpoint(out / "checkpoints" / "last.pt")["step"] == 7
    done = train(cfg(out))
    assert done.finished and done.resumed_from == 7
    _assert_same_state(read_checkpoint(reference.final), read_checkpoint(done.final))
    assert read_checkpoint(done.final)["data_position"]["pipeline"] == "gpu"


def test_compiled_backbones_leave_checkpoint_keys_unchanged(tiny_cfg, tmp_path, monkeypatch):
    """torch.compile (here its 'eager' backend: no C++ toolchain, seconds not minutes) must not leak
    wrapper prefixes such as `_orig_mod.` into checkpoints: the same keys and loadable either way."""
    from pretrain import fast_step
    from pretrain.engine import train

    original = fast_step.maybe_compile
    compiled_modules = []

    def eager_backend(module, enabled=True, **kwargs):
        compiled_modules.append(module)
        return original(module, enabled, backend="eager", **kwargs)

    monkeypatch.setattr(fast_step, "maybe_compile", eager_backend)
    runs = {
        flag: train(
            tiny_cfg(
                tmp_path / str(flag),
                curriculum="none",
                data_pipeline="gpu",
                compile=flag,
                epochs=1,
                eval_every=0,
            )
        )
        for flag in (False, True)
    }
    assert len(compiled_modules) == 2  # student and teacher backbones
    assert runs[True].summary["compile"] is True and runs[False].summary["compile"] is False
    plain, compiled = (read_checkpoint(runs[f].final) for f in (False, True))
    for key in ("student", "teacher", "teacher_backbone"):
        assert list(compiled[key]) == list(plain[key]), key
        assert not any("_orig_mod" in name for name in compiled[key]), key
        for name in plain[key]:  # the eager backend runs the same kernels
            torch.testing.assert_close(compiled[key][name], plain[key][name], rtol=1e-4, atol=1e-5)
    assert load_backbone(runs[True].final).config.arch == "vit_pico"


@pytest.mark.cuda
@pytest.mark.parametrize("centering", ["centering", "sinkhorn_knopp"])
def test_cuda_train_steps_never_wait_for_the_device(tiny_cfg, tmp_path, centering):
    """After a warm-up step (AdamW creates its state), train_step and the loop's per-step bookkeeping
    run under torch.cuda.set_sync_debug_mode("error"): any host-device sync (.item(), nonzero(),
    boolean-mask indexing, a blocking copy) raises. Batches come pinned, as the loader gives them."""
    if not torch.cuda.is_available():
        pytest.skip("needs CUDA")
    from pretrain.engine import LOSS_TERMS, NonFiniteWatch, build_optimizer, train_step
    from pretrain.fast_step import accelerate_meta_arch
    from pretrain.meta_arch import MetaArch

    torch.manual_seed(0)
    cfg = tiny_cfg(tmp_path, device="cuda", compile=False, centering=centering)
    meta = accelerate_meta_arch(MetaArch(cfg, "cuda"), compile=False)  # the engine's chunked losses
    optimizer = build_optimizer(meta, cfg)
    batches = [_batch(generator_seed=s, precomputed=True) for s in range(5)]
    batches[3].masks[:] = False  # a batch without any masked token
    from pretrain.masking import masked_token_indices

    batches[3].mask_indices, batches[3].mask_weights = masked_token_indices(batches[3].masks)
    batches = [b.pin_memory() for b in batches]
    watch = NonFiniteWatch(torch.device("cuda"))

    def step(i, batch, freeze):
        out = train_step(
            meta,
            optimizer,
            batch,
            lr=1e-4,
            wd=0.04,
            freeze_last_layer=freeze,
            teacher_temp=0.07,
            momentum=0.996,
            clip_grad=3.0,
        )
        values = torch.stack([out[k].float() for k in (*LOSS_TERMS, "grad_norm")])
        watch.add(i + 1, values[: len(LOSS_TERMS)])
        return values

    step(0, batches[0], False)  # warm-up: optimiser state, cuBLAS handles, allocator
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        values = [step(i, batch, freeze=i == 2) for i, batch in enumerate(batches[1:], start=1)]
    finally:
        torch.cuda.set_sync_debug_mode(0)
    assert watch.first_bad() is None  # read back here, as the engine does on logging steps
    assert all(torch.isfinite(v).all() for v in values) and values[2][LOSS_TERMS.index("ibot")].item() == 0.0


@pytest.mark.cuda
def test_cuda_run_with_the_gpu_pipeline_by_default(tiny_cfg, tmp_path):
    """On CUDA `auto` picks the gpu pipeline; the crops are made on the device (compile off: the
    compiled step is exercised by benchmarks/gpu_check.sh's real runs)."""
    if not torch.cuda.is_available():
        pytest.skip("needs CUDA")
    from pretrain.engine import train

    result = train(tiny_cfg(tmp_path / "cuda", device="cuda", compile=False, batch_size=40, epochs=2, eval_every=0))
    assert result.finished and result.summary["pipeline"] == "gpu" and result.summary["device"].startswith("cuda")
    assert all(torch.isfinite(v).all() for v in read_checkpoint(result.final)["student"].values())


def test_presets_follow_dinov2_groups_and_drop_path(tmp_path, tiny_cfg):
    from pretrain.engine import build_optimizer

    for name in PRESETS:
        cfg = preset(name)
        assert cfg.optim.weight_decay_rule == "dinov2" and cfg.model.drop_path_uniform
    cfg, meta = _small_meta(tmp_path, tiny_cfg)
    decay = {n: g["wd_multiplier"] for g in build_optimizer(meta, cfg).param_groups for n in g["names"]}
    assert decay["backbone.cls_token"] == 1.0 and decay["backbone.pos_embed"] == 1.0
    cfg.optim.weight_decay_rule = "no-decay-tokens"
    decay = {n: g["wd_multiplier"] for g in build_optimizer(meta, cfg).param_groups for n in g["names"]}
    assert decay["backbone.cls_token"] == 0.0 and decay["backbone.pos_embed"] == 0.0


def test_frozen_last_layer_matches_dinov2_order(tmp_path, tiny_cfg):
    # DINOv2: backward, clip every student part (last layer included), AdamW step with lr 0 for the
    # last layer. Replayed here with plain torch calls on a copy and compared with train_step.
    import copy

    from pretrain.engine import build_optimizer, train_step

    cfg, meta = _small_meta(tmp_path, tiny_cfg)
    ref = copy.deepcopy(meta)
    opt, ref_opt = build_optimizer(meta, cfg), build_optimizer(ref, cfg)
    batch = _batch()
    last_before = [p.detach().clone() for p in meta.student.dino_head.last_layer.parameters()]
    train_step(
        meta, opt, batch, lr=1e-2, wd=0.04, freeze_last_layer=True, teacher_temp=0.04, momentum=0.9, clip_grad=1e-3
    )

    for g in ref_opt.param_groups:
        g["lr"] = 0.0 if g["is_last_layer"] else 1e-2 * g["lr_multiplier"]
        g["weight_decay"] = 0.04 * g["wd_multiplier"]
    ref_opt.zero_grad(set_to_none=True)
    ref.forward_backward(batch, 0.04)
    for part in (ref.student.backbone, ref.student.dino_head):
        grads = [p for p in part.parameters() if p.grad is not None]
        total = torch.linalg.vector_norm(torch.stack([p.grad.norm() for p in grads]))
        for p in grads:
            p.grad.mul_(min(1.0, 1e-3 / (float(total) + 1e-6)))
    ref_opt.step()

    for (name, p), q in zip(meta.student.named_parameters(), ref.student.parameters()):
        torch.testing.assert_close(p, q, rtol=1e-5, atol=1e-7, msg=name)
    for p, before in zip(meta.student.dino_head.last_layer.parameters(), last_before):
        assert torch.equal(p, before)  # frozen: unchanged
        # ...but its gradient was kept and entered AdamW's first moment, as in DINOv2
        assert opt.state[p]["exp_avg"].abs().sum() > 0


def test_cpu_threads_leave_room_for_the_loader_workers(monkeypatch):
    """Without --threads a CPU run uses the cores its DataLoader workers leave (at least one)."""
    import os

    import torch

    import pretrain.engine as engine
    from pretrain.config import preset

    cfg = preset("cpu-tiny")
    cfg.run.device = "cpu"
    default = torch.get_num_threads()
    monkeypatch.setattr(os, "cpu_count", lambda: 2)
    cfg.data.workers = 1
    assert engine.cpu_threads_beside_workers(cfg) == 1
    cfg.data.workers = 0
    assert engine.cpu_threads_beside_workers(cfg) == min(default, 2)
    monkeypatch.setattr(os, "cpu_count", lambda: 16)
    cfg.data.workers = 8
    assert engine.cpu_threads_beside_workers(cfg) == min(default, 8)
    cfg.data.workers = 30
    assert engine.cpu_threads_beside_workers(cfg) == 1
