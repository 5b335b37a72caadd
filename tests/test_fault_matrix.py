"""The fault matrix: bad input to every command is one line on stderr, exit 2, no traceback, and
leaves every file that existed before byte-identical (issue 20).

Table-driven: each case is (command argv, expected words in the error, optional setup). Placeholders
in argv: {tmp} (the case's folder), {data} (a tiny dataset), and files the setup writes. A few
subprocess cases at the end cover what in-process runs cannot: kill -9 then resume, two processes on
one folder, and a full disk (a 1 MiB tmpfs; skipped where mounting is not allowed).
"""

from __future__ import annotations

import hashlib
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from fdbench.cli import main

P = ["pretrain", "--data", "{data}", "--out", "{tmp}/run", "--device", "cpu", "--batch-size", "4"]
E = ["eval-corruptions", "{ckpt}", "--data", "{data}", "--out", "{tmp}/ev", "--device", "cpu"]
F = ["frequency-analysis", "{ckpt}", "--data", "{data}", "--out", "{tmp}/fq", "--device", "cpu"]
BT = ["bench-train", "--device", "cpu", "--out", "{tmp}/bench", "--arch", "vit_pico", "--patch-size", "8"]
MC = ["make-corruptions", "{data}/val", "{tmp}/c", "--device", "cpu"]
MD = [
    "make-dataset",
    "--out",
    "{tmp}/ds",
    "--train-per-class",
    "1",
    "--val-per-class",
    "1",
    "--classes",
    "2",
    "--size",
    "32",
]


def _user_folder(tmp: Path) -> None:
    (tmp / "user").mkdir()
    (tmp / "user" / "thesis.txt").write_text("years of work\n")


def _yaml(text: str):
    def setup(tmp: Path) -> None:
        (tmp / "c.yaml").write_text(text)

    return setup


def _junk_ckpt(tmp: Path) -> None:
    (tmp / "junk.pt").write_bytes(b"not a checkpoint at all")
    (tmp / "empty.pt").write_bytes(b"")
    (tmp / "notes.txt").write_text("hello\n")


def _dataset_at(tmp: Path) -> None:
    from fdbench.synthetic import SyntheticSpec, make_synthetic_dataset

    make_synthetic_dataset(tmp / "ds", SyntheticSpec(classes=3, train_per_class=1, val_per_class=1, size=32), workers=1)


def _clash_source(tmp: Path) -> None:
    from PIL import Image

    (tmp / "src" / "a").mkdir(parents=True)
    for ext in ("png", "tif"):
        Image.new("RGB", (32, 32), (10, 20, 30)).save(tmp / "src" / "a" / f"x.{ext}")


def _odd_checkpoints(tmp: Path) -> None:
    import torch
    from safetensors.torch import save

    torch.save({"format": "fdbench/1", "kind": "backbone", "teacher_backbone": {}}, tmp / "nomodel.pt")
    torch.save(
        {"format": "fdbench/1", "kind": "backbone", "model": "vit_small", "teacher_backbone": {}}, tmp / "strmodel.pt"
    )
    torch.save(
        {
            "format": "fdbench/1",
            "kind": "backbone",
            "model": {"arch": "vit_nano", "patch_size": 8},
            "teacher_backbone": {"x": torch.zeros(1)},
        },
        tmp / "wrongkeys.pt",
    )
    (tmp / "badmeta.safetensors").write_bytes(save({"w": torch.zeros(2)}, metadata={"fdbench": "{not json"}))
    (tmp / "nometa.safetensors").write_bytes(save({"w": torch.zeros(2)}))
    (tmp / "garbage.safetensors").write_bytes(b"\x00" * 64)
    torch.save(
        {
            "cls_token": torch.zeros(1, 1, 384),
            "pos_embed": torch.zeros(1, 257, 384),
            "patch_embed.proj.weight": torch.zeros(384, 3, 14, 14),
            **{f"blocks.{i}.norm1.weight": torch.zeros(384) for i in range(12)},
        },
        tmp / "dinov2_nomlp.pth",
    )
    torch.save([1, 2, 3], tmp / "list.pt")


def _bad_images(tmp: Path) -> None:
    (tmp / "imgs").mkdir()
    (tmp / "imgs" / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n this is not an image")
    (tmp / "results.csv").write_text("checkpoint,protocol,corruption,severity,top1\nx,knn,gaussian_noise,three,abc\n")
    (tmp / "junk.pt").write_bytes(b"junk")


def _pico_checkpoint(path: Path) -> None:
    """A real (random-init) vit_pico backbone checkpoint at 32 px: loads in milliseconds."""
    import torch

    from fdbench.checkpoint import save_checkpoint
    from fdbench.models import BackboneConfig, build_backbone

    torch.manual_seed(0)
    config = BackboneConfig(arch="vit_pico", patch_size=8, img_size=32)
    save_checkpoint(
        {"kind": "backbone", "model": config.to_dict(), "teacher_backbone": build_backbone(config).state_dict()}, path
    )


def _pico(tmp: Path) -> None:
    _pico_checkpoint(tmp / "b.pt")


RESULT_HEADER = "checkpoint,kind,protocol,corruption,severity,n,top1,top5\n"


def _results_text(column: str):
    """A results.csv (eval-corruptions layout) with text in ``column``, in --out, beside, and as --evals."""

    def setup(tmp: Path) -> None:
        _pico(tmp)
        row = {"checkpoint": "b", "kind": "pretrained", "protocol": "knn", "corruption": "clean", "severity": "0"}
        row.update({"n": "4", "top1": "0.5", "top5": "1.0", column: "high"})
        text = RESULT_HEADER + ",".join(row[c] for c in RESULT_HEADER.strip().split(",")) + "\n"
        for folder in ("ev", "evdir"):
            (tmp / folder).mkdir()
            (tmp / folder / "results.csv").write_text(text)
        (tmp / "results.csv").write_text(text)

    return setup


def _results_garbage(tmp: Path) -> None:
    _pico(tmp)
    (tmp / "evdir").mkdir()
    (tmp / "evdir" / "results.csv").write_bytes(b'checkpoint,top1\n"unterminated\x00\xff,\n')


def _training_last(drop: str | None = None, raw: bytes | None = None):
    """A run folder whose checkpoints/last.pt lacks ``drop`` (else holds the bytes ``raw``)."""

    def setup(tmp: Path) -> None:
        import io

        import torch

        last = tmp / "run" / "checkpoints" / "last.pt"
        last.parent.mkdir(parents=True)
        state = {"format": "fdbench/1", "kind": "training", "model": {}, "teacher_backbone": {}}
        state.update({k: {} for k in ("config", "student", "teacher", "losses", "optimizer", "data_position")})
        state.update({"rng": [], "step": 1, "knn": [], "elapsed_s": 0.0, "run_time_s": 0.0, "cpu_time_s": 0.0})
        state.update({"costs": [], "none_flops_per_image": None})
        if drop is not None:
            del state[drop]
        if raw is not None:
            last.write_bytes(raw)
        else:
            torch.save(state, last)
        if raw == b"truncated":
            buffer = io.BytesIO()
            torch.save(state, buffer)
            last.write_bytes(buffer.getvalue()[:300])

    return setup


def _class_mismatch(tmp: Path) -> None:
    """train/ has classes a, b; val/ has a, c: labels would index different names."""
    from PIL import Image

    for split, classes in (("train", ("a", "b")), ("val", ("a", "c"))):
        for k, cls in enumerate(classes):
            (tmp / "mm" / split / cls).mkdir(parents=True)
            for i in range(4):
                Image.new("RGB", (32, 32), (40 * k + 10 * i, 80, 120)).save(tmp / "mm" / split / cls / f"{i}.png")
    _pico(tmp)


def _earlier_heatmap(tmp: Path) -> None:
    """frequency-analysis --out fq holding b's heat map made with --window 5 (default eps)."""
    import json

    _pico(tmp)
    (tmp / "fq" / "b").mkdir(parents=True)
    ckpt = tmp / "b.pt"
    params = {"checkpoint": str(ckpt.resolve()), "mtime": ckpt.stat().st_mtime, "data": None, "probe": "linear"}
    params.update({"seed": 0, "eps": None, "window": 5, "n_images": 32})
    info = {"image_size": 32, "eps": 4.0, "window": 5}
    (tmp / "fq" / "b" / "heatmap.json").write_text(json.dumps({"params": params, "info": info}))
    (tmp / "fq" / "b" / "heatmap.csv").write_text("kx,ky,error_pct\n0,0,50.0\n")


class _RunsCode:
    def __reduce__(self):
        return (os.system, ("touch PWNED",))


def _evil(tmp: Path) -> None:
    import torch

    torch.save({"format": "fdbench/1", "x": _RunsCode()}, tmp / "evil.pt")


CASES: list[tuple[str, list[str], list[str], object]] = [
    # ---- make-dataset
    (
        "md-overwrite-user-folder",
        ["make-dataset", "--out", "{tmp}/user", "--overwrite"],
        ["not an fdbench", "dataset.json"],
        _user_folder,
    ),
    ("md-into-user-folder", ["make-dataset", "--out", "{tmp}/user"], ["not an fdbench"], _user_folder),
    ("md-different-existing", MD, ["different synthetic dataset", "--overwrite"], _dataset_at),
    ("md-out-is-file", ["make-dataset", "--out", "{tmp}/notes.txt"], ["notes.txt"], _junk_ckpt),
    ("md-classes-50", MD + ["--classes", "50"], ["--classes"], None),
    ("md-classes-1", MD + ["--classes", "1"], ["--classes"], None),
    ("md-classes-text", MD + ["--classes", "ten"], ["--classes", "ten"], None),
    ("md-size-16", MD + ["--size", "16"], ["--size"], None),
    ("md-size-100000", MD + ["--size", "100000"], ["--size"], None),
    ("md-train-0", MD + ["--train-per-class", "0"], ["--train-per-class"], None),
    ("md-val-neg", MD + ["--val-per-class", "-3"], ["--val-per-class"], None),
    ("md-seed-text", MD + ["--seed", "x"], ["--seed"], None),
    ("md-kind", ["make-dataset", "imagenet"], ["imagenet"], None),
    ("md-unknown-option", MD + ["--colour"], ["--colour"], None),
    ("md-yaml-unknown-key", MD + ["--config", "{tmp}/c.yaml"], ["unknown key", "clases"], _yaml("clases: 3\n")),
    (
        "md-yaml-float",
        ["make-dataset", "--out", "{tmp}/ds", "--config", "{tmp}/c.yaml"],
        ["whole number", "size"],
        _yaml("size: 32.5\n"),
    ),
    (
        "md-yaml-list",
        ["make-dataset", "--out", "{tmp}/ds", "--config", "{tmp}/c.yaml"],
        ["single value", "classes"],
        _yaml("classes: [2, 3]\n"),
    ),
    ("md-yaml-not-mapping", MD + ["--config", "{tmp}/c.yaml"], ["c.yaml"], _yaml("- a\n- b\n")),
    ("md-yaml-broken", MD + ["--config", "{tmp}/c.yaml"], ["c.yaml"], _yaml("classes: [\n")),
    ("md-yaml-missing", MD + ["--config", "{tmp}/none.yaml"], ["none.yaml"], None),
    # ---- pretrain
    ("pt-log-every-0", P + ["--log-every", "0"], ["--log-every"], None),
    ("pt-drop-path-2", P + ["--drop-path-rate", "2"], ["--drop-path-rate"], None),
    ("pt-drop-path-neg", P + ["--drop-path-rate", "-0.1"], ["--drop-path-rate"], None),
    ("pt-warmup-nan", P + ["--warmup-epochs", "nan"], ["--warmup-epochs"], None),
    ("pt-warmup-neg", P + ["--warmup-epochs", "-1"], ["--warmup-epochs"], None),
    ("pt-lr-neg", P + ["--lr", "-1"], ["--lr"], None),
    ("pt-lr-zero", P + ["--lr", "0"], ["--lr"], None),
    ("pt-lr-inf", P + ["--lr", "inf"], ["--lr"], None),
    ("pt-save-steps-neg", P + ["--save-every-steps", "-1"], ["--save-every-steps"], None),
    ("pt-keep-neg", P + ["--keep-every-epochs", "-2"], ["--keep-every-epochs"], None),
    ("pt-local-gt-global", P + ["--global-size", "32", "--local-size", "48"], ["local crop size"], None),
    ("pt-epochs-0", P + ["--epochs", "0"], ["--epochs"], None),
    ("pt-batch-1", P + ["--batch-size", "1"], ["--batch-size"], None),
    ("pt-batch-text", P + ["--batch-size", "big"], ["--batch-size"], None),
    ("pt-eval-every-neg", P + ["--eval-every", "-1"], ["--eval-every"], None),
    ("pt-workers-neg", P + ["--workers", "-1"], ["--workers"], None),
    ("pt-threads-0", P + ["--threads", "0"], ["--threads"], None),
    ("pt-stage1-fraction-1", P + ["--stage1-fraction", "1"], ["--stage1-fraction"], None),
    ("pt-stage1-fraction-0", P + ["--stage1-fraction", "0"], ["--stage1-fraction"], None),
    ("pt-stage1-scale-0", P + ["--stage1-scale", "0"], ["--stage1-scale"], None),
    ("pt-stage1-scale-2", P + ["--stage1-scale", "2"], ["--stage1-scale"], None),
    ("pt-noise-sigma-neg", P + ["--noise-max-sigma", "-1"], ["--noise-max-sigma"], None),
    ("pt-n-local-neg", P + ["--n-local", "-1"], ["local crops"], None),
    ("pt-global-lt-patch", P + ["--global-size", "8"], ["global crop size"], None),
    ("pt-patch-size", P + ["--patch-size", "7"], ["--patch-size"], None),
    ("pt-arch", P + ["--arch", "resnet50"], ["resnet50"], None),
    ("pt-curriculum", P + ["--curriculum", "three-stage"], ["three-stage"], None),
    ("pt-centering", P + ["--centering", "magic"], ["magic"], None),
    ("pt-pipeline", P + ["--data-pipeline", "tpu"], ["tpu"], None),
    ("pt-prototypes-0", P + ["--prototypes", "0"], ["--prototypes"], None),
    ("pt-preset", P + ["--preset", "huge"], ["huge"], None),
    ("pt-resume-nothing", P + ["--resume"], ["nothing to resume"], None),
    (
        "pt-data-missing",
        ["pretrain", "--data", "{tmp}/nodata", "--out", "{tmp}/run", "--device", "cpu"],
        ["nodata"],
        None,
    ),
    ("pt-class-list-missing", P + ["--class-list", "{tmp}/cls.txt"], ["cls.txt"], None),
    (
        "pt-yaml-float-batch",
        P + ["--config", "{tmp}/c.yaml"],
        ["whole number", "batch-size"],
        _yaml("batch-size: 16.7\n"),
    ),
    ("pt-yaml-list-epochs", P + ["--config", "{tmp}/c.yaml"], ["single value", "epochs"], _yaml("epochs: [1, 2]\n")),
    (
        "pt-yaml-list-warmup",
        P + ["--config", "{tmp}/c.yaml"],
        ["single value", "warmup-epochs"],
        _yaml("warmup-epochs: [0.1]\n"),
    ),
    (
        "pt-yaml-unknown",
        P + ["--config", "{tmp}/c.yaml"],
        ["unknown key", "learning-rate"],
        _yaml("learning-rate: 1\n"),
    ),
    ("pt-yaml-text-epochs", P + ["--config", "{tmp}/c.yaml"], ["epochs"], _yaml("epochs: many\n")),
    ("pt-device", P + ["--device", "quantum"], ["quantum"], None),
    # ---- eval-corruptions
    ("ev-missing-ckpt", ["eval-corruptions", "{tmp}/nope.pt", "--out", "{tmp}/ev"], ["not found", "nope.pt"], None),
    (
        "ev-junk-ckpt",
        ["eval-corruptions", "{tmp}/junk.pt", "--data", "{data}", "--out", "{tmp}/ev", "--device", "cpu"],
        ["junk.pt"],
        _junk_ckpt,
    ),
    (
        "ev-empty-ckpt",
        ["eval-corruptions", "{tmp}/empty.pt", "--data", "{data}", "--out", "{tmp}/ev", "--device", "cpu"],
        ["empty.pt"],
        _junk_ckpt,
    ),
    (
        "ev-text-ckpt",
        ["eval-corruptions", "{tmp}/notes.txt", "--data", "{data}", "--out", "{tmp}/ev", "--device", "cpu"],
        ["notes.txt"],
        _junk_ckpt,
    ),
    ("ev-workers-neg", ["eval-corruptions", "{tmp}/junk.pt", "--workers", "-1"], ["--workers"], _junk_ckpt),
    ("ev-batch-0", ["eval-corruptions", "{tmp}/junk.pt", "--batch-size", "0"], ["--batch-size"], _junk_ckpt),
    ("ev-blocks-0", ["eval-corruptions", "{tmp}/junk.pt", "--n-last-blocks", "0"], ["--n-last-blocks"], _junk_ckpt),
    ("ev-protocol", ["eval-corruptions", "{tmp}/junk.pt", "--protocol", "svm"], ["svm"], _junk_ckpt),
    ("ev-no-ckpt", ["eval-corruptions"], ["CHECKPOINTS"], None),
    (
        "ev-yaml-float",
        ["eval-corruptions", "{tmp}/junk.pt", "--config", "{tmp}/c.yaml"],
        ["whole number"],
        _yaml("batch-size: 2.5\n"),
    ),
    (
        "ev-yaml-unknown",
        ["eval-corruptions", "{tmp}/junk.pt", "--config", "{tmp}/c.yaml"],
        ["unknown key"],
        _yaml("probe: knn\n"),
    ),
    ("ev-dir-no-final", ["eval-corruptions", "{tmp}/user", "--out", "{tmp}/ev"], ["final.pt"], _user_folder),
    # ---- frequency-analysis
    ("fq-eps-nan", ["frequency-analysis", "{tmp}/junk.pt", "--eps", "nan"], ["--eps"], _junk_ckpt),
    ("fq-eps-inf", ["frequency-analysis", "{tmp}/junk.pt", "--eps", "inf"], ["--eps"], _junk_ckpt),
    ("fq-eps-neg", ["frequency-analysis", "{tmp}/junk.pt", "--eps", "-1"], ["--eps"], _junk_ckpt),
    ("fq-eps-zero", ["frequency-analysis", "{tmp}/junk.pt", "--eps", "0"], ["--eps"], _junk_ckpt),
    ("fq-window-0", ["frequency-analysis", "{tmp}/junk.pt", "--window", "0"], ["--window"], _junk_ckpt),
    ("fq-n-images-0", ["frequency-analysis", "{tmp}/junk.pt", "--n-images", "0"], ["--n-images"], _junk_ckpt),
    (
        "fq-bandpass-0",
        ["frequency-analysis", "{tmp}/junk.pt", "--bandpass-images", "0"],
        ["--bandpass-images"],
        _junk_ckpt,
    ),
    ("fq-radii-0", ["frequency-analysis", "{tmp}/junk.pt", "--radii", "0"], ["--radii"], _junk_ckpt),
    ("fq-severity-6", ["frequency-analysis", "{tmp}/junk.pt", "--severity", "6"], ["--severity"], _junk_ckpt),
    ("fq-severity-0", ["frequency-analysis", "{tmp}/junk.pt", "--severity", "0"], ["--severity"], _junk_ckpt),
    ("fq-batch-0", ["frequency-analysis", "{tmp}/junk.pt", "--batch-size", "0"], ["--batch-size"], _junk_ckpt),
    ("fq-probe", ["frequency-analysis", "{tmp}/junk.pt", "--probe", "svm"], ["svm"], _junk_ckpt),
    ("fq-eps-text", ["frequency-analysis", "{tmp}/junk.pt", "--eps", "big"], ["--eps"], _junk_ckpt),
    (
        "fq-missing-ckpt",
        ["frequency-analysis", "{tmp}/nope.pt", "--out", "{tmp}/fq", "--device", "cpu"],
        ["nope.pt"],
        None,
    ),
    (
        "fq-junk-ckpt",
        ["frequency-analysis", "{tmp}/junk.pt", "--data", "{data}", "--out", "{tmp}/fq", "--device", "cpu"],
        ["junk.pt"],
        _junk_ckpt,
    ),
    # ---- compare
    ("cmp-missing-run", ["compare", "{tmp}/nope", "--out", "{tmp}/rep"], ["not found", "nope"], None),
    (
        "cmp-text-file",
        ["compare", "{tmp}/notes.txt", "--out", "{tmp}/rep"],
        ["neither a run folder nor a checkpoint"],
        _junk_ckpt,
    ),
    ("cmp-no-runs", ["compare"], ["RUNS"], None),
    ("cmp-unknown-option", ["compare", "{tmp}", "--colour"], ["--colour"], None),
    # ---- make-corruptions
    ("mc-out-is-src", ["make-corruptions", "{data}/val", "{data}/val"], ["inside SRC"], None),
    ("mc-out-inside-src", ["make-corruptions", "{data}/val", "{data}/val/corrupted"], ["inside SRC"], None),
    ("mc-src-missing", ["make-corruptions", "{tmp}/nosrc", "{tmp}/c"], ["nosrc"], None),
    ("mc-severity-6", MC + ["--severities", "6"], ["severities"], None),
    ("mc-severity-text", MC + ["--severities", "high"], ["severities"], None),
    ("mc-severity-empty", MC + ["--severities", ","], ["severities"], None),
    ("mc-corruption-name", MC + ["--corruptions", "lava"], ["lava"], None),
    ("mc-quality-0", MC + ["--quality", "0"], ["quality"], None),
    ("mc-quality-101", MC + ["--quality", "101"], ["quality"], None),
    ("mc-batch-0", MC + ["--batch-size", "0"], ["batch size"], None),
    ("mc-format", MC + ["--format", "gif"], ["gif"], None),
    ("mc-backend", MC + ["--backend", "jax"], ["jax"], None),
    (
        "mc-name-clash",
        ["make-corruptions", "{tmp}/src", "{tmp}/c", "--device", "cpu"],
        ["both be written", "x.jpg"],
        _clash_source,
    ),
    ("mc-yaml-float-batch", MC + ["--config", "{tmp}/c.yaml"], ["whole number"], _yaml("batch-size: 3.5\n")),
    # ---- corruption-fidelity
    ("cf-size-16", ["corruption-fidelity", "--size", "16", "--out", "{tmp}/fid"], ["--size"], None),
    ("cf-repeats-0", ["corruption-fidelity", "--repeats", "0", "--out", "{tmp}/fid"], ["--repeats"], None),
    ("cf-count-0", ["corruption-fidelity", "--count", "0", "--out", "{tmp}/fid"], ["--count"], None),
    (
        "cf-table",
        ["corruption-fidelity", "--table", "mnist", "--out", "{tmp}/fid", "--count", "1"],
        ["unknown params table", "mnist"],
        None,
    ),
    (
        "cf-severities",
        ["corruption-fidelity", "--severities", "9", "--out", "{tmp}/fid", "--count", "1"],
        ["severities"],
        None,
    ),
    # ---- export
    ("ex-missing", ["export", "{tmp}/nope.pt", "--out", "{tmp}/b.safetensors"], ["not found"], None),
    ("ex-junk", ["export", "{tmp}/junk.pt", "--out", "{tmp}/b.safetensors"], ["junk.pt"], _junk_ckpt),
    ("ex-no-out", ["export", "{tmp}/junk.pt"], ["--out"], _junk_ckpt),
    # ---- damaged or odd checkpoints (export and eval load them the same way)
    (
        "ck-no-model",
        ["export", "{tmp}/nomodel.pt", "--out", "{tmp}/b.safetensors"],
        ["nomodel.pt", "model"],
        _odd_checkpoints,
    ),
    (
        "ck-model-string",
        ["export", "{tmp}/strmodel.pt", "--out", "{tmp}/b.safetensors"],
        ["strmodel.pt"],
        _odd_checkpoints,
    ),
    (
        "ck-wrong-keys",
        ["export", "{tmp}/wrongkeys.pt", "--out", "{tmp}/b.safetensors"],
        ["does not match"],
        _odd_checkpoints,
    ),
    (
        "ck-safetensors-bad-json",
        ["export", "{tmp}/badmeta.safetensors", "--out", "{tmp}/b.safetensors"],
        ["badmeta.safetensors"],
        _odd_checkpoints,
    ),
    (
        "ck-safetensors-no-meta",
        ["export", "{tmp}/nometa.safetensors", "--out", "{tmp}/b.safetensors"],
        ["no fdbench config"],
        _odd_checkpoints,
    ),
    (
        "ck-safetensors-garbage",
        ["export", "{tmp}/garbage.safetensors", "--out", "{tmp}/b.safetensors"],
        ["garbage.safetensors"],
        _odd_checkpoints,
    ),
    (
        "ck-dinov2-missing-mlp",
        ["export", "{tmp}/dinov2_nomlp.pth", "--out", "{tmp}/b.safetensors"],
        ["dinov2_nomlp.pth"],
        _odd_checkpoints,
    ),
    ("ck-list", ["export", "{tmp}/list.pt", "--out", "{tmp}/b.safetensors"], ["list.pt"], _odd_checkpoints),
    (
        "ck-eval-no-model",
        ["eval-corruptions", "{tmp}/nomodel.pt", "--data", "{data}", "--out", "{tmp}/ev", "--device", "cpu"],
        ["nomodel.pt"],
        _odd_checkpoints,
    ),
    (
        "ck-eval-string-model",
        ["eval-corruptions", "{tmp}/strmodel.pt", "--data", "{data}", "--out", "{tmp}/ev", "--device", "cpu"],
        ["strmodel.pt"],
        _odd_checkpoints,
    ),
    (
        "ck-freq-bad-json",
        ["frequency-analysis", "{tmp}/badmeta.safetensors", "--data", "{data}", "--out", "{tmp}/fq", "--device", "cpu"],
        ["badmeta.safetensors"],
        _odd_checkpoints,
    ),
    (
        "cmp-any-file-as-ckpt",
        ["compare", "{tmp}/results.csv", "--out", "{tmp}/rep"],
        ["neither a run folder"],
        _bad_images,
    ),
    (
        "cf-unreadable-image",
        [
            "corruption-fidelity",
            "--images",
            "{tmp}/imgs",
            "--out",
            "{tmp}/fid",
            "--size",
            "32",
            "--corruptions",
            "gaussian_noise",
            "--device",
            "cpu",
        ],
        ["broken.png"],
        _bad_images,
    ),
    # ---- bench-train
    ("bt-decode-slack-0", BT + ["--decode-slack", "0"], ["--decode-slack"], None),
    ("bt-decode-slack-nan", BT + ["--decode-slack", "nan"], ["--decode-slack"], None),
    ("bt-decode-slack-neg", BT + ["--decode-slack", "-2"], ["--decode-slack"], None),
    ("bt-steps-0", BT + ["--steps", "0"], ["--steps"], None),
    ("bt-warmup-neg", BT + ["--warmup", "-1"], ["--warmup"], None),
    ("bt-batch-0", BT + ["--batch-size", "0"], ["--batch-size"], None),
    ("bt-stage", BT + ["--stages", "stage3"], ["stage3"], None),
    # ---- pretrain: resuming from a damaged checkpoints/last.pt names the file and what is missing
    ("pt-resume-no-optimizer", P, ["last.pt", "has no optimizer"], _training_last(drop="optimizer")),
    ("pt-resume-no-config", P + ["--resume"], ["last.pt", "has no config"], _training_last(drop="config")),
    ("pt-resume-no-rng", P, ["last.pt", "has no rng"], _training_last(drop="rng")),
    ("pt-resume-truncated", P, ["last.pt", "truncated or damaged", "cannot resume"], _training_last(raw=b"truncated")),
    ("pt-resume-empty", P, ["last.pt", "empty", "cannot resume"], _training_last(raw=b"")),
    ("pt-resume-junk", P, ["last.pt", "cannot resume"], _training_last(raw=b"PK\x03\x04 torn zip")),
    (
        "pt-knn-class-mismatch",
        ["pretrain", "--data", "{tmp}/mm", "--out", "{tmp}/run", "--device", "cpu", "--batch-size", "4"]
        + ["--arch", "vit_pico", "--global-size", "16", "--local-size", "8", "--epochs", "1", "--threads", "1"],
        ["different classes", "only in train: b", "only in val: c"],
        _class_mismatch,
    ),
    # ---- eval-corruptions: text in results.csv (its own, to resume; a --baseline), class mismatch
    (
        "ev-resume-text-top1",
        ["eval-corruptions", "{tmp}/b.pt", "--data", "{data}", "--out", "{tmp}/ev", "--device", "cpu"],
        ["ev/results.csv", "column 'top1'", "'high'", "--overwrite"],
        _results_text("top1"),
    ),
    (
        "ev-resume-text-severity",
        ["eval-corruptions", "{tmp}/b.pt", "--data", "{data}", "--out", "{tmp}/ev", "--device", "cpu"],
        ["ev/results.csv", "column 'severity'"],
        _results_text("severity"),
    ),
    (
        "ev-baseline-text",
        ["eval-corruptions", "{tmp}/b.pt", "--data", "{data}", "--out", "{tmp}/ev2", "--device", "cpu"]
        + ["--baseline", "{tmp}/results.csv"],
        ["results.csv", "column 'top1'"],
        _results_text("top1"),
    ),
    (
        "ev-class-mismatch",
        ["eval-corruptions", "{tmp}/b.pt", "--data", "{tmp}/mm", "--out", "{tmp}/ev", "--device", "cpu"]
        + ["--corruptions", "gaussian_noise", "--severities", "1", "--protocol", "knn"],
        ["different classes", "only in train: b", "only in val: c"],
        _class_mismatch,
    ),
    # ---- frequency-analysis: --results text, changed settings in --out, class mismatch
    (
        "fq-results-text-top1",
        ["frequency-analysis", "{tmp}/b.pt", "--results", "{tmp}/results.csv", "--out", "{tmp}/fq"],
        ["results.csv", "column 'top1'", "'high'"],
        _results_text("top1"),
    ),
    (
        "fq-results-text-n",
        ["frequency-analysis", "{tmp}/b.pt", "--results", "{tmp}/results.csv", "--out", "{tmp}/fq"],
        ["results.csv", "column 'n'"],
        _results_text("n"),
    ),
    (
        "fq-results-severity-word",
        ["frequency-analysis", "{tmp}/junk.pt", "--results", "{tmp}/results.csv", "--out", "{tmp}/fq"],
        ["results.csv", "column 'severity'", "'three'"],
        _bad_images,
    ),
    (
        "fq-changed-window",
        ["frequency-analysis", "{tmp}/b.pt", "--window", "3", "--out", "{tmp}/fq", "--device", "cpu"],
        ["fq/b", "other settings", "window: 5 -> 3", "--overwrite"],
        _earlier_heatmap,
    ),
    (
        "fq-changed-eps",
        ["frequency-analysis", "{tmp}/b.pt", "--window", "5", "--eps", "2", "--out", "{tmp}/fq", "--device", "cpu"],
        ["other settings", "eps: 4.0 -> 2.0"],
        _earlier_heatmap,
    ),
    (
        "fq-changed-n-images",
        ["frequency-analysis", "{tmp}/b.pt", "--window", "5", "--n-images", "8", "--out", "{tmp}/fq"],
        ["other settings", "n_images: 32 -> 8"],
        _earlier_heatmap,
    ),
    (
        "fq-class-mismatch",
        ["frequency-analysis", "{tmp}/b.pt", "--data", "{tmp}/mm", "--out", "{tmp}/fq", "--device", "cpu"]
        + ["--analyses", "heatmap", "--n-images", "2", "--window", "2"],
        ["different classes", "only in val: c"],
        _class_mismatch,
    ),
    # ---- compare: a damaged results.csv is an error, not "missing"
    (
        "cmp-results-text-top1",
        ["compare", "{tmp}/b.pt", "--evals", "{tmp}/evdir", "--out", "{tmp}/rep"],
        ["evdir/results.csv", "column 'top1'", "'high'"],
        _results_text("top1"),
    ),
    (
        "cmp-results-text-severity",
        ["compare", "{tmp}/b.pt", "--evals", "{tmp}/evdir", "--out", "{tmp}/rep"],
        ["evdir/results.csv", "column 'severity'"],
        _results_text("severity"),
    ),
    (
        "cmp-results-unreadable",
        ["compare", "{tmp}/b.pt", "--evals", "{tmp}/evdir", "--out", "{tmp}/rep"],
        ["evdir/results.csv"],
        _results_garbage,
    ),
    ("cmp-junk-pt", ["compare", "{tmp}/junk.pt", "--out", "{tmp}/rep"], ["junk.pt", "cannot read"], _junk_ckpt),
    ("cmp-empty-pt", ["compare", "{tmp}/empty.pt", "--out", "{tmp}/rep"], ["empty.pt", "empty"], _junk_ckpt),
    ("cmp-pickle-code", ["compare", "{tmp}/evil.pt", "--out", "{tmp}/rep"], ["evil.pt", "would run code"], _evil),
    # ---- make-corruptions and ceiling: options read lazily before (a bad --params only failed when an
    # image needed it, so a resumed OUT accepted it), a negative learning rate reached AdamW
    ("mc-params-name", MC + ["--params", "nofile.yaml"], ["unknown params table", "nofile.yaml"], None),
    ("mc-workers-neg", MC + ["--workers", "-1"], ["--workers"], None),
    ("ce-lr-neg", ["ceiling", "{tmp}/user", "--lr", "-1", "--out", "{tmp}/ce"], ["--lr"], _user_folder),
    ("ce-lr-nan", ["ceiling", "{tmp}/user", "--lr", "nan", "--out", "{tmp}/ce"], ["--lr"], _user_folder),
    ("ce-no-run", ["ceiling", "{tmp}/user", "--out", "{tmp}/ce"], ["user"], _user_folder),
    # ---- checkpoints: a pickle that would run code is refused in full sentences
    (
        "ck-pickle-code",
        ["export", "{tmp}/evil.pt", "--out", "{tmp}/e.safetensors"],
        ["evil.pt", "would run code", "refused without running it"],
        _evil,
    ),
    # ---- top level
    ("cli-unknown-command", ["train-everything"], ["train-everything"], None),
]


def _snapshot(*roots: Path) -> dict[str, str]:
    files = {}
    for root in roots:
        for path in sorted(root.rglob("*")):
            if path.is_file():
                files[str(path)] = hashlib.sha256(path.read_bytes()).hexdigest()
    return files


@pytest.fixture(scope="module")
def matrix_data(tmp_path_factory):
    from fdbench.synthetic import SyntheticSpec, make_synthetic_dataset

    return make_synthetic_dataset(
        tmp_path_factory.mktemp("mx") / "tiny",
        SyntheticSpec(classes=2, train_per_class=4, val_per_class=2, size=32),
        workers=1,
    )


@pytest.mark.parametrize("name,argv,words,setup", CASES, ids=[c[0] for c in CASES])
def test_bad_input_is_one_line_exit_2(name, argv, words, setup, tmp_path, matrix_data, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    if setup is not None:
        setup(tmp_path)
    before = _snapshot(tmp_path, matrix_data)
    folders_before = {p for p in tmp_path.rglob("*") if p.is_dir()}
    args = [a.format(tmp=tmp_path, data=matrix_data) for a in argv]
    with pytest.raises(SystemExit) as info:
        main(args)
    _, err = capsys.readouterr()
    lines = [line for line in err.splitlines() if line.strip()]
    errors = [line for line in lines if line.startswith("error:")]
    assert info.value.code == 2, err
    assert len(errors) == 1 and "Traceback" not in err, err
    for word in words:
        assert word in errors[0], (word, errors[0])
    after = _snapshot(tmp_path, matrix_data)
    assert {k: after.get(k) for k in before} == before, "files that existed before were changed or deleted"
    assert not [p for p in after if p not in before and p.endswith(".tmp")], "a temp file was left behind"
    empty = [p for p in tmp_path.rglob("*") if p.is_dir() and p not in folders_before and not any(p.iterdir())]
    assert not empty, f"an empty output folder was left behind: {empty}"
    assert not (tmp_path / "PWNED").exists(), "a pickle ran code"


# ---------------------------------------------------------------- item tests beyond the table


def _run(argv, capsys):
    with pytest.raises(SystemExit) as info:
        main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return info.value.code, out, err


def _marker(path: Path) -> dict:
    import json

    return json.loads((path / "dataset.json").read_text())


SMALL = ["--classes", "2", "--train-per-class", "1", "--val-per-class", "1", "--size", "32"]


def test_make_dataset_overwrite_replaces_only_when_the_new_one_is_complete(tmp_path, capsys, monkeypatch):
    import fdbench.synthetic as synthetic

    out = tmp_path / "ds"
    assert _run(["make-dataset", "--out", out, *SMALL], capsys)[0] == 0
    old = _snapshot(out)
    # an overwrite that dies half-way (here: the third class folder fails) keeps the old dataset
    calls = []

    def dying(job):
        calls.append(job)
        if len(calls) == 3:
            raise KeyboardInterrupt
        return real(job)

    real = synthetic._render_split_class
    monkeypatch.setattr(synthetic, "_render_split_class", dying)
    with pytest.raises(KeyboardInterrupt):  # the same path the CLI takes, in one process
        synthetic.make_synthetic_dataset(
            out,
            synthetic.SyntheticSpec(classes=2, train_per_class=2, val_per_class=1, size=32),
            workers=1,
            overwrite=True,
        )
    assert _snapshot(out) == old
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ds"]  # no temp or .old folder left behind
    monkeypatch.setattr(synthetic, "_render_split_class", real)
    # a complete overwrite swaps the new one in
    code, _, err = _run(
        [
            "make-dataset",
            "--out",
            out,
            "--classes",
            "3",
            "--train-per-class",
            "1",
            "--val-per-class",
            "1",
            "--size",
            "32",
            "--overwrite",
        ],
        capsys,
    )
    assert code == 0 and "wrote" in err and _marker(out)["classes"] == 3
    assert len(list((out / "train").iterdir())) == 3
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ds"]
    assert oct(out.stat().st_mode & 0o777) != oct(0o700)


def test_make_dataset_same_dataset_is_kept_and_says_so(tmp_path, capsys):
    out = tmp_path / "ds"
    assert _run(["make-dataset", "--out", out, *SMALL], capsys)[0] == 0
    before = _snapshot(out)
    code, _, err = _run(["make-dataset", "--out", out, *SMALL], capsys)
    assert code == 0 and "kept the existing" in err and _snapshot(out) == before


def test_relative_data_is_stored_absolute(tmp_path, monkeypatch, capsys, matrix_data):
    import pretrain.engine as engine

    seen = {}

    def fake_train(cfg, **kwargs):
        seen["root"] = cfg.data.root
        raise engine.FdbenchError("stopped before training")

    monkeypatch.setattr(engine, "train", fake_train)
    monkeypatch.chdir(matrix_data.parent)
    code, _, _ = _run(["pretrain", "--data", matrix_data.name, "--out", tmp_path / "run", "--device", "cpu"], capsys)
    assert code == 2 and seen["root"] == str(matrix_data.resolve())
    from fdbench.cli.common import absolute_data

    assert absolute_data(f"cifar10:{matrix_data.name}") == f"cifar10:{matrix_data.resolve()}"
    assert absolute_data(None) is None


def _copy_dataset(src: Path, dst: Path) -> Path:
    shutil.copytree(src, dst)
    return dst


TINY_RUN = ["--device", "cpu", "--batch-size", "4", "--arch", "vit_pico", "--global-size", "16"]
TINY_RUN += ["--local-size", "8", "--threads", "1", "--epochs", "2", "--curriculum", "none"]


def test_resume_refuses_another_dataset_at_the_same_path_and_damaged_state(tmp_path, capsys, matrix_data):
    """Item 1 and 3: the fingerprint beside the data path; a last.pt whose parts do not load."""
    import torch

    from fdbench.data import dataset_fingerprint

    data = _copy_dataset(matrix_data, tmp_path / "data")
    run = tmp_path / "run"
    argv = ["pretrain", "--data", data, "--out", run, *TINY_RUN, "--save-every-steps", "1"]
    assert _run([*argv, "--stop-after-steps", "1"], capsys)[0] == 0
    saved = torch.load(run / "checkpoints" / "last.pt", weights_only=True)
    # the fingerprint, recomputed here from its definition: sorted relative paths and sizes of the split files
    files = sorted(p for split in ("train", "val") for p in (data / split).rglob("*") if p.is_file())
    digest = hashlib.sha256()
    for f in files:
        digest.update(f.relative_to(data).as_posix().encode() + f"\0{f.stat().st_size}\n".encode())
    assert saved["data"]["fingerprint"] == f"{len(files)}:{digest.hexdigest()[:16]}" == dataset_fingerprint(data)
    assert saved["data"]["root"] == str(data)

    # another dataset at the same path (one image replaced by a bigger one): refused, nothing written
    victim = files[0]
    original = victim.read_bytes()
    victim.write_bytes(original + b"\0" * 16)
    before = _snapshot(run)
    code, _, err = _run(argv, capsys)
    assert code == 2 and "Traceback" not in err, err
    assert "trained on another dataset" in err and str(data) in err and saved["data"]["fingerprint"] in err
    assert _snapshot(run) == before
    victim.write_bytes(original)

    # a last.pt with a part that does not load: the file and the part named, exit 2, nothing written
    broken = dict(saved)
    broken["losses"] = {"dino": {}, "ibot": {}}
    torch.save(broken, run / "checkpoints" / "last.pt")
    before = _snapshot(run)
    code, _, err = _run(argv, capsys)
    lines = [line for line in err.splitlines() if line.startswith("error:")]
    assert code == 2 and len(lines) == 1 and "Traceback" not in err, err
    assert "last.pt is damaged or incomplete" in lines[0] and "center" in lines[0]
    assert _snapshot(run) == before

    # the intact checkpoint resumes to the end
    torch.save(saved, run / "checkpoints" / "last.pt")
    code, _, err = _run(argv, capsys)
    assert code == 0 and (run / "final.pt").exists(), err


def test_eval_warns_when_the_training_dataset_changed(tmp_path, capsys, matrix_data):
    """Item 1 (eval side): legitimate to evaluate, but the user is told; an eval resume is refused."""
    import torch

    data = _copy_dataset(matrix_data, tmp_path / "data")
    _pico_checkpoint(tmp_path / "b.pt")
    from fdbench.data import dataset_fingerprint

    state = torch.load(tmp_path / "b.pt", weights_only=True)
    state["data"] = {"root": str(data), "image_size": 32, "fingerprint": dataset_fingerprint(data)}
    torch.save(state, tmp_path / "b.pt")
    argv = ["eval-corruptions", tmp_path / "b.pt", "--out", tmp_path / "ev", "--device", "cpu", "--protocol", "knn"]
    argv += ["--corruptions", "gaussian_noise", "--severities", "1"]
    code, _, err = _run(argv, capsys)
    assert code == 0 and "changed since" not in err, err
    extra = next((data / "val").rglob("*.png"))
    shutil.copy(extra, extra.with_name("extra.png"))
    code, _, err = _run(argv, capsys)  # the same --out: its results are of the other dataset
    assert code == 2 and "other settings (data_fingerprint: the dataset's files changed)" in err, err
    code, _, err = _run([*argv[:3], tmp_path / "ev2", *argv[4:]], capsys)
    assert code == 0 and f"warning: the dataset at {data} changed since the checkpoint was trained on it" in err


def test_damaged_feature_cache_is_recomputed_with_a_message(tmp_path, capsys, matrix_data):
    """Item 4: a torn or foreign cache file costs its recomputation, never a traceback."""
    import torch

    _pico(tmp_path)
    argv = ["eval-corruptions", tmp_path / "b.pt", "--data", matrix_data, "--device", "cpu", "--protocol", "knn"]
    argv += ["--corruptions", "gaussian_noise", "--severities", "1", "--out"]
    assert _run([*argv, tmp_path / "ev"], capsys)[0] == 0
    reference = (tmp_path / "ev" / "results.csv").read_text()
    caches = sorted((tmp_path / "ev" / "cache").glob("b-train-*.pt"))
    assert len(caches) == 1
    good = caches[0].read_bytes()
    for damage in (good[:200], b"", None):
        shutil.rmtree(tmp_path / "ev2", ignore_errors=True)
        (tmp_path / "ev2" / "cache").mkdir(parents=True)
        target = tmp_path / "ev2" / "cache" / caches[0].name
        if damage is None:
            torch.save({"feats": torch.zeros(3)}, target)  # readable, but not what the cache holds
        else:
            target.write_bytes(damage)
        code, _, err = _run([*argv, tmp_path / "ev2"], capsys)
        assert code == 0 and "Traceback" not in err, err
        assert f"warning: the feature cache {target} is damaged" in err and "recomputing it" in err
        assert (tmp_path / "ev2" / "results.csv").read_text() == reference
        assert target.read_bytes() == good  # recomputed to the same tensors


def test_frequency_summary_bytes_reuse_refusal_and_damage(tmp_path, capsys, matrix_data):
    """Items 7, 8 and 4: a re-run that reuses every result writes a byte-identical summary.csv; another
    --window is refused (files untouched) unless --overwrite; a damaged finished result is recomputed."""
    _pico(tmp_path)
    out = tmp_path / "fq"
    argv = ["frequency-analysis", tmp_path / "b.pt", "--data", matrix_data, "--out", out, "--device", "cpu"]
    argv += ["--analyses", "heatmap,bandpass", "--n-images", "4", "--bandpass-images", "4", "--radii", "2"]
    argv += ["--probe", "knn", "--window", "3"]
    assert _run(argv, capsys)[0] == 0
    first = (out / "summary.csv").read_bytes()
    code, _, err = _run(argv, capsys)
    assert code == 0 and err.count("already done") == 2 and (out / "summary.csv").read_bytes() == first
    before = _snapshot(out)
    code, _, err = _run([*argv, "--window", "4"], capsys)
    assert code == 2 and "window: 3 -> 4" in err and "--overwrite" in err and _snapshot(out) == before
    (out / "b" / "heatmap_outcomes.npz").write_bytes(b"torn")
    code, _, err = _run(argv, capsys)
    assert code == 0 and "Traceback" not in err and "is damaged" in err and "recomputing" in err
    assert (out / "summary.csv").read_bytes() == first
    code, _, err = _run([*argv, "--window", "4", "--overwrite"], capsys)
    assert code == 0 and '"window": 4' in (out / "b" / "heatmap.json").read_text()


@pytest.mark.parametrize("command", ["eval-corruptions", "frequency-analysis", "make-corruptions"])
def test_stale_temps_are_removed_once_the_folder_is_locked(command, tmp_path, capsys, matrix_data):
    """Item 9: a kill -9 mid-write leaves .*.tmp; the next command on that folder removes them (not
    those of a sub-folder that another command locks)."""
    out = tmp_path / "out"
    (out / "cache").mkdir(parents=True)
    (out / "other").mkdir()
    stale = [out / ".results.csv.k1l2.tmp", out / "cache" / ".b-train-x.pt.abc.tmp"]
    for path in stale:
        path.write_bytes(b"half")
    (out / "other" / ".fdbench.lock").write_text("123 pretrain\n")
    (out / "other" / ".last.pt.inflight.tmp").write_bytes(b"someone else's")
    (tmp_path / "junk.pt").write_bytes(b"junk")
    argv = {
        "eval-corruptions": ["eval-corruptions", tmp_path / "junk.pt", "--out", out, "--device", "cpu"],
        "frequency-analysis": ["frequency-analysis", tmp_path / "junk.pt", "--out", out, "--device", "cpu"],
        "make-corruptions": ["make-corruptions", matrix_data / "val", out, "--device", "cpu"]
        + ["--corruptions", "contrast", "--severities", "1"],
    }[command]
    code, _, err = _run(argv, capsys)
    assert code == (0 if command == "make-corruptions" else 2), err
    assert not any(p.exists() for p in stale)
    assert (out / "other" / ".last.pt.inflight.tmp").read_bytes() == b"someone else's"


def test_failed_command_leaves_no_empty_output_folder(tmp_path, capsys):
    """Item 10: the folder (and parents) a locked command created are removed when it wrote nothing."""
    (tmp_path / "junk.pt").write_bytes(b"junk")
    (tmp_path / "kept").mkdir()
    for out in (tmp_path / "new" / "deeper" / "ev", tmp_path / "kept" / "ev"):
        code, _, err = _run(["eval-corruptions", tmp_path / "junk.pt", "--out", out, "--device", "cpu"], capsys)
        assert code == 2, err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["junk.pt", "kept"]
    assert list((tmp_path / "kept").iterdir()) == []


def test_ctrl_c_says_what_is_kept_and_how_to_resume(tmp_path, capsys, monkeypatch, matrix_data):
    """Item 10: not just "aborted"."""
    import corruptions.writer as writer

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(writer, "write_corruptions", interrupted)
    code, _, err = _run(["make-corruptions", matrix_data / "val", tmp_path / "c", "--device", "cpu"], capsys)
    line = err.strip().splitlines()[-1]
    assert code == 130 and "Traceback" not in err
    assert line.startswith("interrupted: make-corruptions") and "every image written so far is kept" in line
    assert "re-running the same command skips them" in line


def test_manifest_quotes_names_with_commas(tmp_path, capsys):
    """Item 10: a class and a file name with a comma (and a quote) read back through the csv module."""
    import csv

    from PIL import Image

    (tmp_path / "src" / 'cats, big "ones"').mkdir(parents=True)
    Image.new("RGB", (32, 32), (10, 20, 30)).save(tmp_path / "src" / 'cats, big "ones"' / "a,b.png")
    argv = ["make-corruptions", tmp_path / "src", tmp_path / "c", "--device", "cpu", "--corruptions", "contrast"]
    code, _, err = _run([*argv, "--severities", "1,2"], capsys)
    assert code == 0, err
    with open(tmp_path / "c" / "manifest.csv", newline="") as fh:
        rows = list(csv.DictReader(fh))
    assert [r["file"] for r in rows] == [f'contrast/{s}/cats, big "ones"/a,b.jpg' for s in (1, 2)]
    assert all(r["source"].endswith('cats, big "ones"/a,b.png') and r["corruption"] == "contrast" for r in rows)
    assert all((tmp_path / "c" / r["file"]).is_file() for r in rows)


def test_legitimate_but_unmeant_settings_warn_once(monkeypatch, capsys, matrix_data, tmp_path):
    """Item 11: --curriculum none --stage1-fraction 0.5 and two-stage --epochs 1 train, with one warning."""
    import pretrain.engine as engine

    def stop(*args, **kwargs):
        raise engine.FdbenchError("stopped after validation")

    monkeypatch.setattr(engine, "setup_distributed", stop)
    base = ["pretrain", "--data", matrix_data, "--out", tmp_path / "run", "--device", "cpu"]
    for extra, words in (
        (["--curriculum", "none", "--stage1-fraction", "0.5"], "--stage1-fraction 0.5 has no effect"),
        (["--curriculum", "two-stage", "--epochs", "1"], "never reaches its full-resolution stage"),
    ):
        code, _, err = _run([*base, *extra], capsys)
        assert code == 2 and "stopped after validation" in err
        assert err.count(words) == 1 and err.count("warning:") == 1, err


def test_brief_reasons_are_whole_sentences():
    """Item 10: torch's weights-only refusal, cut at 160 characters, ended mid-sentence."""
    import io
    import pickle

    import torch

    from fdbench.errors import brief

    buffer = io.BytesIO()
    torch.save({"x": _RunsCode()}, buffer)
    buffer.seek(0)
    with pytest.raises(pickle.UnpicklingError) as info:
        torch.load(buffer, weights_only=True)
    text = brief(info.value)
    assert text.endswith("refused without running it") and ("posix.system" in text or "nt.system" in text)
    assert brief(ValueError("first sentence. second sentence")) == "first sentence"
    long = ValueError("word " * 60)
    assert brief(long).endswith(" ...") and len(brief(long)) <= 165
    assert brief(KeyError("optimizer")) == "damaged or incomplete: no entry 'optimizer'"


# ---------------------------------------------------------------- subprocess cases: locks, kill -9, disk

ENV = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1]), "OMP_NUM_THREADS": "1"}
HOLD = (
    "import sys, time; from fdbench.lock import lock_folder; lock_folder(sys.argv[1], 'test-holder', "
    "name=sys.argv[2]); print('held', flush=True); time.sleep(120)"
)


def _holder(folder: Path, name: str = ".fdbench.lock") -> subprocess.Popen:
    proc = subprocess.Popen([sys.executable, "-c", HOLD, str(folder), name], env=ENV, stdout=subprocess.PIPE, text=True)
    assert proc.stdout.readline().strip() == "held"
    return proc


@pytest.mark.parametrize(
    "command", ["pretrain", "eval-corruptions", "frequency-analysis", "compare", "make-corruptions", "make-dataset"]
)
def test_second_writer_is_refused_and_a_killed_holders_lock_is_reclaimed(command, tmp_path, capsys, matrix_data):
    out = tmp_path / "out"
    (tmp_path / "junk.pt").write_bytes(b"junk")
    _pico(tmp_path)
    argv = {
        "pretrain": ["pretrain", "--data", matrix_data, "--out", out, "--device", "cpu", "--batch-size", "4"],
        "eval-corruptions": ["eval-corruptions", tmp_path / "junk.pt", "--out", out, "--device", "cpu"],
        "frequency-analysis": ["frequency-analysis", tmp_path / "junk.pt", "--out", out, "--device", "cpu"],
        "compare": ["compare", tmp_path / "b.pt", "--out", out],  # a real checkpoint: a junk one is refused first
        "make-corruptions": ["make-corruptions", matrix_data / "val", out, "--device", "cpu"],
        "make-dataset": ["make-dataset", "--out", out, *SMALL],
    }[command]
    if command == "make-dataset":
        holder = _holder(tmp_path, ".out.fdbench.lock")
    else:
        out.mkdir()
        (out / "checkpoints").mkdir()
        # an in-flight atomic write of the holder: the refused command's start-up clean-up must not touch it
        (out / "checkpoints" / ".last.pt.abc123.tmp").write_bytes(b"in flight")
        holder = _holder(out)
    try:
        before = _snapshot(tmp_path)
        code, _, err = _run(argv, capsys)
        errors = [line for line in err.splitlines() if line.startswith("error:")]
        assert code == 2 and len(errors) == 1 and "Traceback" not in err, err
        assert "in use by another fdbench process" in err and f"PID {holder.pid}" in err and "test-holder" in err
        assert _snapshot(tmp_path) == before
    finally:
        holder.kill()  # SIGKILL: no clean-up runs, the kernel drops the flock
        holder.wait()
    from fdbench.lock import lock_folder

    folder, name = (tmp_path, ".out.fdbench.lock") if command == "make-dataset" else (out, ".fdbench.lock")
    with lock_folder(folder, "after-kill", name=name):
        assert (folder / name).read_text().split()[0] == str(os.getpid())
    assert not (folder / name).exists()


@pytest.mark.slow
def test_two_pretrain_processes_on_one_folder(tmp_path, matrix_data):
    """Two real processes with different recipes: the second is refused while the first trains."""
    args = [
        sys.executable,
        "-m",
        "fdbench",
        "pretrain",
        "--data",
        str(matrix_data),
        "--out",
        str(tmp_path / "run"),
        "--device",
        "cpu",
        "--batch-size",
        "4",
        "--epochs",
        "500",
        "--threads",
        "1",
    ]
    first = subprocess.Popen(
        args + ["--curriculum", "none"], env=ENV, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    try:
        deadline = time.time() + 60
        while not (tmp_path / "run" / "config.yaml").exists() and time.time() < deadline and first.poll() is None:
            time.sleep(0.05)
        config_before = (tmp_path / "run" / "config.yaml").read_bytes()
        second = subprocess.run(
            args + ["--curriculum", "two-stage"], env=ENV, capture_output=True, text=True, timeout=120
        )
        assert first.poll() is None, "the first run ended before the second started; the test proves nothing"
    finally:
        first.kill()
        first.wait()
    assert second.returncode == 2 and "Traceback" not in second.stderr, second.stderr
    assert f"PID {first.pid}, pretrain" in second.stderr.splitlines()[-1]
    assert (tmp_path / "run" / "config.yaml").read_bytes() == config_before


@pytest.mark.slow
def test_kill_9_during_make_corruptions_then_resume_is_byte_identical(tmp_path, matrix_data):
    args = [
        sys.executable,
        "-m",
        "fdbench",
        "make-corruptions",
        str(matrix_data / "train"),
        "OUT",
        "--device",
        "cpu",
        "--corruptions",
        "gaussian_noise,contrast",
        "--batch-size",
        "1",
        "--workers",
        "0",
        "--no-resize",
    ]
    reference = tmp_path / "ref"
    subprocess.run(
        [reference if a == "OUT" else a for a in args], env=ENV, check=True, capture_output=True, timeout=300
    )
    out = tmp_path / "killed"
    proc = subprocess.Popen(
        [out if a == "OUT" else a for a in args], env=ENV, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    deadline = time.time() + 120
    while time.time() < deadline and proc.poll() is None and len(list(out.rglob("*.jpg"))) < 5:
        time.sleep(0.01)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    partial = len(list(out.rglob("*.jpg")))
    resumed = subprocess.run(
        [out if a == "OUT" else a for a in args], env=ENV, capture_output=True, text=True, timeout=300
    )
    assert resumed.returncode == 0, resumed.stderr
    ref, got = _snapshot(reference), _snapshot(out)
    assert {Path(k).relative_to(reference).as_posix(): v for k, v in ref.items()} == {
        Path(k).relative_to(out).as_posix(): v for k, v in got.items()
    }
    assert 0 < partial or proc.returncode is not None


@pytest.fixture
def tiny_mount(tmp_path):
    """A 1 MiB tmpfs (root only; skipped where mounting is not allowed)."""

    def mount(options: str) -> Path:
        where = tmp_path / f"mnt-{options.replace(',', '-')}"
        where.mkdir()
        done = subprocess.run(["mount", "-t", "tmpfs", "-o", options, "tmpfs", str(where)], capture_output=True)
        if done.returncode != 0:
            pytest.skip(f"cannot mount a tmpfs here: {done.stderr.decode().strip()}")
        mounted.append(where)
        return where

    mounted: list[Path] = []
    yield mount
    for where in mounted:
        subprocess.run(["umount", "-l", str(where)], capture_output=True)


@pytest.mark.skipif(shutil.which("mount") is None, reason="no mount command")
@pytest.mark.parametrize("command", ["make-dataset", "make-corruptions", "pretrain"])
def test_full_disk_is_one_line_exit_2_and_keeps_earlier_files(command, tiny_mount, matrix_data):
    disk = tiny_mount("size=1m")
    (disk / "earlier.txt").write_text("kept\n")
    argv = {
        "make-dataset": [
            "make-dataset",
            "--out",
            disk / "ds",
            "--classes",
            "4",
            "--train-per-class",
            "200",
            "--val-per-class",
            "1",
            "--size",
            "64",
        ],
        "make-corruptions": [
            "make-corruptions",
            matrix_data / "train",
            disk / "c",
            "--device",
            "cpu",
            "--format",
            "png",
            "--corruptions",
            "gaussian_noise,shot_noise,impulse_noise",
        ],
        "pretrain": [
            "pretrain",
            "--data",
            matrix_data,
            "--out",
            disk / "run",
            "--device",
            "cpu",
            "--batch-size",
            "4",
            "--epochs",
            "1",
            "--curriculum",
            "none",
            "--threads",
            "1",
        ],
    }[command]
    done = subprocess.run(
        [sys.executable, "-m", "fdbench", *map(str, argv)], env=ENV, capture_output=True, text=True, timeout=300
    )
    assert done.returncode == 2, done.stderr[-2000:]
    assert "Traceback" not in done.stderr and "No space left on device" in done.stderr.splitlines()[-1]
    assert (disk / "earlier.txt").read_text() == "kept\n"
    assert not [p for p in disk.rglob("*.tmp")], "a temp file was left on the full disk"
    if command == "make-corruptions":  # nothing torn under a final name: every image decodes
        from PIL import Image

        for png in disk.rglob("*.png"):
            Image.open(png).load()


@pytest.mark.skipif(shutil.which("mount") is None, reason="no mount command")
@pytest.mark.parametrize("command", ["make-dataset", "make-corruptions"])
def test_read_only_output_is_one_line_exit_2(command, tiny_mount, matrix_data, tmp_path):
    disk = tiny_mount("size=1m,ro")
    argv = {
        "make-dataset": ["make-dataset", "--out", disk / "ds", *SMALL],
        "make-corruptions": ["make-corruptions", matrix_data / "val", disk / "c", "--device", "cpu"],
    }[command]
    done = subprocess.run(
        [sys.executable, "-m", "fdbench", *map(str, argv)], env=ENV, capture_output=True, text=True, timeout=300
    )
    assert done.returncode == 2 and "Traceback" not in done.stderr, done.stderr[-2000:]
    assert done.stderr.count("\n") == 1 and "Read-only file system" in done.stderr
