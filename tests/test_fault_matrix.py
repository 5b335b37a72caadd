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
MC = ["make-corruptions", "{data}/val", "{tmp}/c", "--device", "cpu"]
MD = ["make-dataset", "--out", "{tmp}/ds", "--train-per-class", "1", "--val-per-class", "1", "--classes", "2",
      "--size", "32"]


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

    make_synthetic_dataset(tmp / "ds", SyntheticSpec(classes=3, train_per_class=1, val_per_class=1, size=32),
                           workers=1)


CASES: list[tuple[str, list[str], list[str], object]] = [
    # ---- make-dataset
    ("md-overwrite-user-folder", ["make-dataset", "--out", "{tmp}/user", "--overwrite"], ["not an fdbench", "dataset.json"], _user_folder),
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
    ("md-yaml-float", ["make-dataset", "--out", "{tmp}/ds", "--config", "{tmp}/c.yaml"], ["whole number", "size"], _yaml("size: 32.5\n")),
    ("md-yaml-list", ["make-dataset", "--out", "{tmp}/ds", "--config", "{tmp}/c.yaml"], ["single value", "classes"], _yaml("classes: [2, 3]\n")),
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
    ("pt-data-missing", ["pretrain", "--data", "{tmp}/nodata", "--out", "{tmp}/run", "--device", "cpu"], ["nodata"], None),
    ("pt-class-list-missing", P + ["--class-list", "{tmp}/cls.txt"], ["cls.txt"], None),
    ("pt-yaml-float-batch", P + ["--config", "{tmp}/c.yaml"], ["whole number", "batch-size"], _yaml("batch-size: 16.7\n")),
    ("pt-yaml-list-epochs", P + ["--config", "{tmp}/c.yaml"], ["single value", "epochs"], _yaml("epochs: [1, 2]\n")),
    ("pt-yaml-list-warmup", P + ["--config", "{tmp}/c.yaml"], ["single value", "warmup-epochs"], _yaml("warmup-epochs: [0.1]\n")),
    ("pt-yaml-unknown", P + ["--config", "{tmp}/c.yaml"], ["unknown key", "learning-rate"], _yaml("learning-rate: 1\n")),
    ("pt-yaml-text-epochs", P + ["--config", "{tmp}/c.yaml"], ["epochs"], _yaml("epochs: many\n")),
    ("pt-device", P + ["--device", "quantum"], ["quantum"], None),
    # ---- eval-corruptions
    ("ev-missing-ckpt", ["eval-corruptions", "{tmp}/nope.pt", "--out", "{tmp}/ev"], ["not found", "nope.pt"], None),
    ("ev-junk-ckpt", ["eval-corruptions", "{tmp}/junk.pt", "--data", "{data}", "--out", "{tmp}/ev", "--device", "cpu"], ["junk.pt"], _junk_ckpt),
    ("ev-empty-ckpt", ["eval-corruptions", "{tmp}/empty.pt", "--data", "{data}", "--out", "{tmp}/ev", "--device", "cpu"], ["empty.pt"], _junk_ckpt),
    ("ev-text-ckpt", ["eval-corruptions", "{tmp}/notes.txt", "--data", "{data}", "--out", "{tmp}/ev", "--device", "cpu"], ["notes.txt"], _junk_ckpt),
    ("ev-workers-neg", ["eval-corruptions", "{tmp}/junk.pt", "--workers", "-1"], ["--workers"], _junk_ckpt),
    ("ev-batch-0", ["eval-corruptions", "{tmp}/junk.pt", "--batch-size", "0"], ["--batch-size"], _junk_ckpt),
    ("ev-blocks-0", ["eval-corruptions", "{tmp}/junk.pt", "--n-last-blocks", "0"], ["--n-last-blocks"], _junk_ckpt),
    ("ev-protocol", ["eval-corruptions", "{tmp}/junk.pt", "--protocol", "svm"], ["svm"], _junk_ckpt),
    ("ev-no-ckpt", ["eval-corruptions"], ["CHECKPOINTS"], None),
    ("ev-yaml-float", ["eval-corruptions", "{tmp}/junk.pt", "--config", "{tmp}/c.yaml"], ["whole number"], _yaml("batch-size: 2.5\n")),
    ("ev-yaml-unknown", ["eval-corruptions", "{tmp}/junk.pt", "--config", "{tmp}/c.yaml"], ["unknown key"], _yaml("probe: knn\n")),
    ("ev-dir-no-final", ["eval-corruptions", "{tmp}/user", "--out", "{tmp}/ev"], ["final.pt"], _user_folder),
    # ---- frequency-analysis
    ("fq-eps-nan", ["frequency-analysis", "{tmp}/junk.pt", "--eps", "nan"], ["--eps"], _junk_ckpt),
    ("fq-eps-inf", ["frequency-analysis", "{tmp}/junk.pt", "--eps", "inf"], ["--eps"], _junk_ckpt),
    ("fq-eps-neg", ["frequency-analysis", "{tmp}/junk.pt", "--eps", "-1"], ["--eps"], _junk_ckpt),
    ("fq-eps-zero", ["frequency-analysis", "{tmp}/junk.pt", "--eps", "0"], ["--eps"], _junk_ckpt),
    ("fq-window-0", ["frequency-analysis", "{tmp}/junk.pt", "--window", "0"], ["--window"], _junk_ckpt),
    ("fq-n-images-0", ["frequency-analysis", "{tmp}/junk.pt", "--n-images", "0"], ["--n-images"], _junk_ckpt),
    ("fq-bandpass-0", ["frequency-analysis", "{tmp}/junk.pt", "--bandpass-images", "0"], ["--bandpass-images"], _junk_ckpt),
    ("fq-radii-0", ["frequency-analysis", "{tmp}/junk.pt", "--radii", "0"], ["--radii"], _junk_ckpt),
    ("fq-severity-6", ["frequency-analysis", "{tmp}/junk.pt", "--severity", "6"], ["--severity"], _junk_ckpt),
    ("fq-severity-0", ["frequency-analysis", "{tmp}/junk.pt", "--severity", "0"], ["--severity"], _junk_ckpt),
    ("fq-batch-0", ["frequency-analysis", "{tmp}/junk.pt", "--batch-size", "0"], ["--batch-size"], _junk_ckpt),
    ("fq-probe", ["frequency-analysis", "{tmp}/junk.pt", "--probe", "svm"], ["svm"], _junk_ckpt),
    ("fq-eps-text", ["frequency-analysis", "{tmp}/junk.pt", "--eps", "big"], ["--eps"], _junk_ckpt),
    ("fq-missing-ckpt", ["frequency-analysis", "{tmp}/nope.pt", "--out", "{tmp}/fq", "--device", "cpu"], ["nope.pt"], None),
    ("fq-junk-ckpt", ["frequency-analysis", "{tmp}/junk.pt", "--data", "{data}", "--out", "{tmp}/fq", "--device", "cpu"], ["junk.pt"], _junk_ckpt),
    # ---- compare
    ("cmp-missing-run", ["compare", "{tmp}/nope", "--out", "{tmp}/rep"], ["not found", "nope"], None),
    ("cmp-text-file", ["compare", "{tmp}/notes.txt", "--out", "{tmp}/rep"], ["neither a run folder nor a checkpoint"], _junk_ckpt),
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
    ("mc-yaml-float-batch", MC + ["--config", "{tmp}/c.yaml"], ["whole number"], _yaml("batch-size: 3.5\n")),
    # ---- corruption-fidelity
    ("cf-size-16", ["corruption-fidelity", "--size", "16", "--out", "{tmp}/fid"], ["--size"], None),
    ("cf-repeats-0", ["corruption-fidelity", "--repeats", "0", "--out", "{tmp}/fid"], ["--repeats"], None),
    ("cf-count-0", ["corruption-fidelity", "--count", "0", "--out", "{tmp}/fid"], ["--count"], None),
    ("cf-severities", ["corruption-fidelity", "--severities", "9", "--out", "{tmp}/fid", "--count", "1"], ["severities"], None),
    # ---- export
    ("ex-missing", ["export", "{tmp}/nope.pt", "--out", "{tmp}/b.safetensors"], ["not found"], None),
    ("ex-junk", ["export", "{tmp}/junk.pt", "--out", "{tmp}/b.safetensors"], ["junk.pt"], _junk_ckpt),
    ("ex-no-out", ["export", "{tmp}/junk.pt"], ["--out"], _junk_ckpt),
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

    return make_synthetic_dataset(tmp_path_factory.mktemp("mx") / "tiny",
                                  SyntheticSpec(classes=2, train_per_class=4, val_per_class=2, size=32), workers=1)


@pytest.mark.parametrize("name,argv,words,setup", CASES, ids=[c[0] for c in CASES])
def test_bad_input_is_one_line_exit_2(name, argv, words, setup, tmp_path, matrix_data, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    if setup is not None:
        setup(tmp_path)
    before = _snapshot(tmp_path, matrix_data)
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
