"""eval-retrieval: the revisited mAP against hand-computed answers, the restricted unpickler, the
embedded set's determinism, and the CLI on a fake roxford5k folder and on the embedded set."""

from __future__ import annotations

import hashlib
import json
import os
import pickle

import numpy as np
import pandas as pd
import pytest
import torch
from PIL import Image

from analysis.retrieval_metrics import evaluate_rankings
from fdbench.checkpoint import save_checkpoint
from fdbench.cli import main
from fdbench.errors import FdbenchError
from fdbench.models import build_backbone
from fdbench.safe_pickle import load_plain_pickle, loads_plain

# ---- mAP: hand-made rankings, expected APs written from the definition -------------------------


def _ap_by_hand(hits_zero_based: list[int], n_pos: int) -> float:
    # the trapezoid of revisitop's compute_ap, written out: positive j (0-based) at junk-free rank r
    total = 0.0
    for j, r in enumerate(hits_zero_based):
        left = 1.0 if r == 0 else j / r
        right = (j + 1) / (r + 1)
        total += (left + right) / 2 / n_pos
    return total


def test_map_easy_medium_hard_with_junk_against_hand_computation():
    # database 0..9; query 0: easy {2, 5}, hard {7}, junk {0}
    gnd = [{"easy": np.array([2, 5]), "hard": np.array([7]), "junk": np.array([0])}]
    ranking = np.array([[0, 2, 9, 7, 5, 1, 3, 4, 6, 8]])
    out = evaluate_rankings(ranking, gnd, ks=(1, 5))
    # Easy: positives {2, 5}, junk {0, 7} -> junk-free ranking [2, 9, 5, 1, ...]: hits at 0 and 2
    easy = ((1 + 1) / 2 + (1 / 2 + 2 / 3) / 2) / 2
    # Medium: positives {2, 5, 7}, junk {0} -> [2, 9, 7, 5, ...]: hits at 0, 2, 3
    medium = ((1 + 1) / 2 + (1 / 2 + 2 / 3) / 2 + (2 / 3 + 3 / 4) / 2) / 3
    # Hard: positives {7}, junk {0, 2, 5} -> [9, 7, 1, ...]: hit at 1
    hard = (0 / 1 + 1 / 2) / 2
    assert out["easy"]["map"] == pytest.approx(easy)
    assert out["medium"]["map"] == pytest.approx(medium)
    assert out["hard"]["map"] == pytest.approx(hard)
    assert easy == pytest.approx(_ap_by_hand([0, 2], 2))
    # mP@k as revisitop: k' = min(last positive's 1-based rank, k); Easy ranks 1, 3 -> P@1 = 1, P@5 -> k'=3: 2/3
    assert out["easy"]["mp"] == {1: pytest.approx(1.0), 5: pytest.approx(2 / 3)}
    assert out["hard"]["mp"] == {1: pytest.approx(0.0), 5: pytest.approx(1 / 2)}


def test_map_is_the_mean_over_queries_and_skips_queries_without_positives():
    gnd = [
        {"easy": np.array([1]), "hard": np.array([], dtype=int), "junk": np.array([], dtype=int)},
        {"easy": np.array([0, 3]), "hard": np.array([2]), "junk": np.array([1])},
    ]
    ranking = np.array([[1, 0, 2, 3], [3, 1, 2, 0]])
    out = evaluate_rankings(ranking, gnd)
    # query 0 Easy: positive 1 at rank 0 -> AP 1; query 1 Easy: junk {1, 2} -> [3, 0]: both hits -> AP 1
    assert out["easy"]["map"] == pytest.approx(1.0)
    # Hard: query 0 has no hard positive (left out, NaN); query 1: junk {1, 0, 3} -> [2]: AP 1
    assert np.isnan(out["hard"]["aps"][0]) and out["hard"]["map"] == pytest.approx(1.0)
    # Medium: query 0 AP 1; query 1 positives {0, 2, 3}, junk {1} -> [3, 2, 0]: AP 1
    assert out["medium"]["map"] == pytest.approx(1.0)
    # a worst case: query 1 Medium with the positives last -> [x, 3, 2, 0] has no negatives left ahead;
    ranking2 = np.array([[0, 2, 3, 1], [1, 0, 2, 3]])
    out2 = evaluate_rankings(ranking2, gnd)
    # query 0 Easy: positive 1 at rank 3 -> (0/3 + 1/4)/2; query 1 Easy: junk {1, 2} -> [0, 3]: AP 1
    assert out2["easy"]["map"] == pytest.approx(((0 / 3 + 1 / 4) / 2 + 1.0) / 2)


# ---- the restricted unpickler ---------------------------------------------------------------


class _RunsCode:
    def __reduce__(self):
        return (os.system, ("echo pwned > /dev/null",))


def test_unpickler_refuses_a_payload_that_would_run_code(tmp_path):
    path = tmp_path / "gnd_roxford5k.pkl"
    path.write_bytes(pickle.dumps({"imlist": ["a"], "gnd": [_RunsCode()]}))
    with pytest.raises(FdbenchError, match="refused without running it") as err:
        load_plain_pickle(path)
    assert "system" in str(err.value) and "\n" not in str(err.value)
    for payload in (pickle.dumps(torch.zeros(2)), pickle.dumps(Image.new("RGB", (2, 2)))):
        with pytest.raises(FdbenchError, match="refused"):
            loads_plain(payload)


@pytest.mark.parametrize("protocol", [2, 4, 5])
def test_unpickler_accepts_a_real_structured_ground_truth_with_numpy_arrays(protocol):
    gnd = {
        "imlist": ["all_souls_000001", "x"],
        "qimlist": ["q"],
        "gnd": [
            {
                "easy": np.array([0]),
                "hard": np.array([], dtype=np.int64),
                "junk": np.array([1]),
                "bbx": [1.0, 2.5, 30.0, 40.0],
            }
        ],
        "scalar": np.float64(0.5),
    }
    back = loads_plain(pickle.dumps(gnd, protocol=protocol))
    assert back["imlist"] == gnd["imlist"] and back["scalar"] == 0.5
    assert np.array_equal(back["gnd"][0]["easy"], [0]) and back["gnd"][0]["easy"].dtype == np.int64
    assert back["gnd"][0]["bbx"] == [1.0, 2.5, 30.0, 40.0]


def test_unpickler_names_a_damaged_file(tmp_path):
    with pytest.raises(FdbenchError, match="not a readable pickle"):
        loads_plain(pickle.dumps({"a": [1, 2, 3]})[:-5])


# ---- the embedded set ---------------------------------------------------------------------


def _digest(root) -> str:
    h = hashlib.sha256()
    for path in sorted(root.rglob("*")):
        if path.is_file():
            h.update(path.relative_to(root).as_posix().encode() + path.read_bytes())
    return h.hexdigest()


def test_embedded_set_is_deterministic_and_has_the_revisited_structure(tmp_path):
    from fdbench.synthetic_retrieval import GND_FILE, RetrievalSpec, make_retrieval_dataset

    spec = RetrievalSpec(queries=6, confusers=4, plain=5)
    a = make_retrieval_dataset(tmp_path / "a", spec)
    b = make_retrieval_dataset(tmp_path / "b", spec)
    assert _digest(a) == _digest(b)
    assert _digest(
        make_retrieval_dataset(tmp_path / "c", RetrievalSpec(queries=6, confusers=4, plain=5, seed=1))
    ) != _digest(a)
    g = json.loads((a / GND_FILE).read_text())
    assert len(g["qimlist"]) == 6 and len(g["imlist"]) == 6 * 7 + 4 * 3 + 5
    for entry in g["gnd"]:
        assert (len(entry["easy"]), len(entry["hard"]), len(entry["junk"])) == (3, 3, 1)
        assert not set(entry["easy"]) & set(entry["hard"]) and len(entry["bbx"]) == 4


# ---- the CLI ---------------------------------------------------------------------------------


def _checkpoint(path, seed=0):
    torch.manual_seed(seed)
    model = build_backbone("vit_pico", img_size=32, patch_size=8)
    save_checkpoint({"kind": "backbone", "model": model.config.to_dict(), "teacher_backbone": model.state_dict()}, path)
    return path


def _fake_roxford(root):
    """roxford5k layout: jpg/*.jpg and gnd_roxford5k.pkl (numpy arrays, as the real file)."""
    (root / "jpg").mkdir(parents=True)
    rng = np.random.default_rng(0)
    names = [f"img_{i:03d}" for i in range(12)]
    for i, name in enumerate(names):
        h, w = (48, 64) if i % 2 else (64, 40)
        Image.fromarray(rng.integers(0, 255, (h, w, 3), dtype=np.uint8)).save(root / "jpg" / f"{name}.jpg")
    gnd = [
        {"easy": np.array([2, 3]), "hard": np.array([4]), "junk": np.array([5]), "bbx": [4.0, 4.0, 36.5, 40.0]},
        {
            "easy": np.array([6]),
            "hard": np.array([7, 8]),
            "junk": np.array([], dtype=np.int64),
            "bbx": np.array([0.0, 0.0, 30.0, 33.0]),
        },
    ]
    with open(root / "gnd_roxford5k.pkl", "wb") as fh:
        pickle.dump({"imlist": names[2:], "qimlist": names[:2], "gnd": gnd}, fh)
    return root


def _cli(argv, capsys):
    with pytest.raises(SystemExit) as exc:
        main(argv)
    captured = capsys.readouterr()
    return exc.value.code, captured.out, captured.err


def test_cli_on_a_fake_roxford5k_folder_with_corrupted_queries_and_resume(tmp_path, capsys):
    data, ckpt, out = _fake_roxford(tmp_path / "roxford5k"), _checkpoint(tmp_path / "a.pt"), tmp_path / "out"
    argv = [
        "eval-retrieval",
        str(ckpt),
        "--data",
        str(data),
        "--out",
        str(out),
        "--device",
        "cpu",
        "--image-size",
        "48",
    ]
    code, stdout, _ = _cli(argv + ["--corruptions", "gaussian_noise", "--severities", "5", "--workers", "1"], capsys)
    assert code == 0 and "clean mAP E %" in stdout
    results = pd.read_csv(out / "results.csv")
    assert set(results["checkpoint"]) == {"a", "pixels", "random-init"}
    assert len(results) == 6 and set(results["corruption"]) == {"clean", "gaussian_noise"}
    assert results[["map_easy", "map_medium", "map_hard"]].apply(lambda c: c.between(0, 1)).all().all()
    per_query = pd.read_csv(out / "per_query.csv")
    assert len(per_query) == 6 * 3 * 2  # cells x settings x queries
    summary = json.loads((out / "summary.json").read_text())
    assert summary["settings"]["dataset"] == "roxford5k" and summary["checkpoints"]["a"]["image_size"] == 48
    # a second call reuses every cell; adding a severity computes only the new cells
    code, _, err = _cli(argv + ["--corruptions", "gaussian_noise", "--severities", "5"], capsys)
    assert code == 0 and "0 cell(s) computed, 6 reused" in err
    code, _, err = _cli(argv + ["--corruptions", "gaussian_noise", "--severities", "4-5"], capsys)
    assert code == 0 and "3 cell(s) computed, 6 reused" in err


def test_cli_on_the_embedded_set_scores_an_identical_database_perfectly(tmp_path, capsys):
    from fdbench.synthetic_retrieval import GND_FILE, RetrievalSpec, make_retrieval_dataset

    data = make_retrieval_dataset(tmp_path / "set", RetrievalSpec(queries=4, confusers=2, plain=3))
    ckpt, out = _checkpoint(tmp_path / "b.pt"), tmp_path / "out"
    code, stdout, _ = _cli(
        ["eval-retrieval", str(ckpt), "--data", str(data), "--out", str(out), "--device", "cpu"], capsys
    )
    assert code == 0 and "pixels" in stdout and "random-init" in stdout
    assert len(pd.read_csv(out / "results.csv")) == 3
    # a ground truth whose easy positive is each query's own image (placed in the database) and no
    # query box: every descriptor finds it first, so Easy mAP is exactly 1
    g = json.loads((data / GND_FILE).read_text())
    for q, name in enumerate(g["qimlist"]):
        g["imlist"].append(name)
        g["gnd"][q] = {"easy": [len(g["imlist"]) - 1], "hard": g["gnd"][q]["hard"], "junk": []}
    (data / GND_FILE).write_text(json.dumps(g))
    code, _, _ = _cli(
        ["eval-retrieval", str(ckpt), "--data", str(data), "--out", str(tmp_path / "o2"), "--device", "cpu"], capsys
    )
    assert code == 0
    assert (pd.read_csv(tmp_path / "o2" / "results.csv")["map_easy"] == 1.0).all()


@pytest.mark.parametrize(
    "make_args, message",
    [
        (lambda d, c: [str(c), "--data", str(d / "nowhere")], "data folder not found"),
        (lambda d, c: [str(c), "--data", str(d / "gnd_roxford5k.pkl")], "data folder not found"),
        (lambda d, c: [str(d / "missing.pt"), "--data", str(d)], "checkpoint not found"),
        (lambda d, c: [str(c), "--data", str(d), "--corruptions", "fog2"], "unknown corruption"),
        (lambda d, c: [str(c), "--data", str(d), "--image-size", "8"], "--image-size must be at least 32"),
        (lambda d, c: [str(c), "--data", str(d), "--dataset", "rparis6k"], "no gnd_rparis6k.pkl"),
    ],
)
def test_cli_bad_inputs_are_one_line_errors(tmp_path, capsys, make_args, message):
    data, ckpt = _fake_roxford(tmp_path / "r"), _checkpoint(tmp_path / "c.pt")
    code, _, err = _cli(["eval-retrieval", *make_args(data, ckpt), "--out", str(tmp_path / "o")], capsys)
    assert code == 2 and message in err and len(err.strip().splitlines()) == 1


def test_cli_refuses_a_ground_truth_pickle_that_would_run_code(tmp_path, capsys):
    data, ckpt = _fake_roxford(tmp_path / "r"), _checkpoint(tmp_path / "c.pt")
    (data / "gnd_roxford5k.pkl").write_bytes(pickle.dumps({"imlist": [_RunsCode()]}))
    code, _, err = _cli(["eval-retrieval", str(ckpt), "--data", str(data), "--out", str(tmp_path / "o")], capsys)
    assert code == 2 and "refused without running it" in err and len(err.strip().splitlines()) == 1
    (data / "gnd_roxford5k.pkl").write_bytes(pickle.dumps({"imlist": ["img_002"], "qimlist": ["img_000"], "gnd": []}))
    code, _, err = _cli(["eval-retrieval", str(ckpt), "--data", str(data), "--out", str(tmp_path / "o")], capsys)
    assert code == 2 and "one entry per query" in err


def test_compare_shows_the_retrieval_table_with_floors_and_lists_it_missing_otherwise(tmp_path, capsys):
    from analysis.report import compare
    from fdbench.synthetic_retrieval import RetrievalSpec, make_retrieval_dataset

    data = make_retrieval_dataset(tmp_path / "set", RetrievalSpec(queries=4, confusers=2, plain=3))
    a, b = _checkpoint(tmp_path / "a.pt"), _checkpoint(tmp_path / "b.pt", seed=1)
    argv = ["eval-retrieval", str(a), "--data", str(data), "--out", str(tmp_path / "evals" / "retrieval")]
    assert _cli(argv + ["--device", "cpu"], capsys)[0] == 0
    report = compare([a, b], tmp_path / "report", figures=False)
    table = pd.read_csv(tmp_path / "report" / "retrieval.csv")
    assert list(table["run"]) == ["a", "pixels", "random-init"] and "clean mAP H %" in table.columns
    stored = pd.read_csv(tmp_path / "evals" / "retrieval" / "results.csv").set_index("checkpoint")
    assert table.set_index("run").loc["a", "clean mAP M %"] == pytest.approx(
        100 * stored.loc["a", "map_medium"], abs=0.01
    )
    missing = report.missing[report.missing["piece"] == "eval-retrieval"]
    assert list(missing["run"]) == ["b"] and missing["how_to_get_it"].str.contains("fdbench eval-retrieval").all()
    assert "Instance retrieval" in report.markdown.read_text()
    diffs = pd.read_csv(tmp_path / "report" / "retrieval_differences.csv")
    assert set(diffs["minus"]) == {"pixels", "random-init"} and set(diffs["setting"]) == {"easy", "medium", "hard"}
    # a is the random-init architecture with the same seed as the floor: identical APs, a zero interval
    same = diffs[diffs["minus"] == "random-init"]
    assert (same["clean mAP difference (pts)"] == 0).all() and (same["CI low"] == 0).all()


def test_map_difference_interval_is_a_paired_bootstrap_over_queries():
    from analysis.report_retrieval import map_difference

    a = np.array([0.1, 0.2, 0.3, 0.4, np.nan])
    d, lo, hi = map_difference(a, a + 0.25)  # the same shift for every query: no spread at all
    assert d == pytest.approx(0.25) and lo == pytest.approx(0.25) and hi == pytest.approx(0.25)
    rng = np.random.default_rng(0)
    b = rng.uniform(0, 1, 200)
    d, lo, hi = map_difference(b, b + rng.normal(0, 0.1, 200))
    assert lo < d < hi and lo < 0.02 and hi > -0.02


def test_multiscale_descriptor_is_dino_s_mean_of_three_scales_then_normalised():
    from analysis.retrieval_features import backbone_descriptors
    from fdbench.features import FrozenEncoder

    torch.manual_seed(0)
    encoder = FrozenEncoder(build_backbone("vit_pico", img_size=32, patch_size=8), n_last_blocks=1, avgpool=False)
    images = [
        torch.randint(0, 256, (3, 48, 64), dtype=torch.uint8),
        torch.randint(0, 256, (3, 64, 48), dtype=torch.uint8),
    ]
    got = backbone_descriptors(encoder, images, patch=8, multiscale=True)
    for img, desc in zip(images, got):
        x = img[None].float() / 255
        h, w = img.shape[1:]
        # scale 1, 1/sqrt2 and 1/2 with each side rounded to whole 8 px patches
        sizes = [(h, w)] + [(round(h * s / 8) * 8, round(w * s / 8) * 8) for s in (2**-0.5, 0.5)]
        cls = [
            encoder(x if hw == (h, w) else torch.nn.functional.interpolate(x, size=hw, mode="bilinear")) for hw in sizes
        ]
        mean = torch.stack(cls).mean(0)[0]
        assert torch.allclose(desc, mean / mean.norm(), atol=1e-5)
    single = backbone_descriptors(encoder, images, patch=8, multiscale=False)
    assert torch.allclose(single.norm(dim=1), torch.ones(2)) and not torch.allclose(single, got)


def test_an_exported_safetensors_backbone_scores_as_its_checkpoint(tmp_path):
    from analysis.retrieval import RetrievalConfig, evaluate_retrieval
    from fdbench.checkpoint import export_backbone

    data = _fake_roxford(tmp_path / "roxford5k")
    ckpt = _checkpoint(tmp_path / "pt" / "model.pt", seed=3)
    weights, _ = export_backbone(ckpt, tmp_path / "st" / "model.safetensors")
    config = RetrievalConfig(data=str(data), image_size=48, device="cpu", floors=False)
    report = evaluate_retrieval([ckpt, weights], tmp_path / "out", config)
    rows = report.results.set_index("checkpoint")
    assert rows.loc["model", "map_medium"] == pytest.approx(rows.loc["model-2", "map_medium"])
    assert rows.loc["model", "map_hard"] == pytest.approx(rows.loc["model-2", "map_hard"])


def test_an_official_dinov2_pth_is_evaluated_like_any_checkpoint(tmp_path, capsys):
    # the hub layout of ViT-S/14 at a 4x4 native grid (56 px): loaded by load_backbone's DINOv2 path
    from conftest import official_dinov2_state

    torch.save(official_dinov2_state(grid=4), tmp_path / "dinov2_vits14_pretrain.pth")
    data, out = _fake_roxford(tmp_path / "roxford5k"), tmp_path / "out"
    argv = ["eval-retrieval", str(tmp_path / "dinov2_vits14_pretrain.pth"), "--data", str(data)]
    code, _, err = _cli([*argv, "--out", str(out), "--device", "cpu", "--image-size", "56"], capsys)
    assert code == 0, err
    rows = pd.read_csv(out / "results.csv").set_index("checkpoint")
    assert {"dinov2_vits14_pretrain", "pixels", "random-init"} <= set(rows.index)
    assert 0 <= rows.loc["dinov2_vits14_pretrain", "map_medium"] <= 1
