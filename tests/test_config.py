"""The pretraining recipe as options: every field reachable from ``--set`` and the ``--config`` file,
named flags that match the fields, one-line errors naming the key, resume rules from the metadata,
and a run's own ``config.yaml`` reproducing the run."""

from __future__ import annotations

import dataclasses
import typing

import pytest
import torch
import yaml

from fdbench.checkpoint import read_checkpoint
from fdbench.errors import FdbenchError
from pretrain.config import (
    NAMED_OPTIONS,
    OPTIONS,
    RESUME_SAFE_KEYS,
    PretrainConfig,
    build_config,
    flatten_file,
    parse_assignment,
    preset,
    set_option,
)


def leaf_fields() -> list[str]:
    """The recipe's leaf fields, walked from the dataclasses themselves (independent of OPTIONS)."""
    keys = []
    for part in dataclasses.fields(PretrainConfig):
        section = typing.get_type_hints(PretrainConfig)[part.name]
        if dataclasses.is_dataclass(section):
            keys += [f"{part.name}.{f.name}" for f in dataclasses.fields(section)]
    return keys


def other_value(key: str, current):
    """A value of the field's type that differs from ``current``, written as on the command line."""
    option = OPTIONS[key]
    if option.choices:
        return next(c for c in option.choices if c != current)
    if isinstance(current, bool) or (current is None and "bool" in str(option.hint)):
        return "false" if current else "true"
    if isinstance(current, tuple):
        return f"{current[0] / 2},{current[1]}"
    if isinstance(current, int) or (current is None and "int" in str(option.hint)):
        return str((current or 0) + 3)
    if isinstance(current, float) or (current is None and "float" in str(option.hint)):
        return str((current or 0.0) + 0.125)
    return "some/thing"


def test_every_field_is_an_option_and_settable_with_set():
    assert (
        sorted(OPTIONS) == sorted(leaf_fields()) and len(OPTIONS) == 77
    )  # 71 + fidelity's drop_path_uniform and weight_decay_rule + run.tensorboard, run.strategy, run.activation_checkpointing (issue 19) + the redesign's crops.blur_sigma
    cfg = preset("cpu-tiny")
    for key in leaf_fields():
        section, name = key.split(".")
        before = getattr(getattr(cfg, section), name)
        set_option(cfg, *parse_assignment(f"{key}={other_value(key, before)}"))
        after = getattr(getattr(cfg, section), name)
        assert after != before, key
        hint = OPTIONS[key].hint
        optional = type(None) in typing.get_args(hint)
        base = next(a for a in typing.get_args(hint) if a is not type(None)) if optional else hint
        assert isinstance(after, typing.get_origin(base) or base), key


def test_set_parses_types_none_and_strings():
    assert parse_assignment("loss.koleo_weight=0.5") == ("loss.koleo_weight", 0.5)
    assert parse_assignment("run.out=runs/001") == ("run.out", "runs/001")
    assert parse_assignment("run.out=007") == ("run.out", "007")
    cfg = preset("cpu-tiny")
    set_option(cfg, *parse_assignment("crops.global_scale=[0.25, 1]"))
    set_option(cfg, *parse_assignment("curriculum.stage1_global_size=none"))
    set_option(cfg, *parse_assignment("run.epochs=7"))
    assert cfg.crops.global_scale == (0.25, 1.0) and cfg.curriculum.stage1_global_size is None
    assert cfg.run.epochs == 7 and type(cfg.run.epochs) is int
    for text, key in [
        ("loss.nope=1", "loss.nope"),
        ("run.epochs=2.5", "run.epochs"),
        ("run.epochs=abc", "run.epochs"),
        ("loss.centering=mean", "loss.centering"),
        ("crops.local_scale=0.1", "crops.local_scale"),
        ("optim.stage_restart=maybe", "optim.stage_restart"),
    ]:
        with pytest.raises(FdbenchError, match=key.replace(".", r"\.")):
            set_option(cfg, *parse_assignment(text))
    with pytest.raises(FdbenchError, match="section.field=value"):
        parse_assignment("loss.koleo_weight")


def test_named_flags_are_the_fields_metadata():
    from fdbench.cli.pretrain import pretrain

    params = {p.name: p for p in pretrain.params}
    assert set(NAMED_OPTIONS) <= set(params)
    assert set(params) - set(NAMED_OPTIONS) == {"preset", "sets", "config_file", "resume"}
    for name, option in NAMED_OPTIONS.items():
        param = params[name]
        assert option.flag in param.opts and param.help == option.help and param.default is None
        base = next((a for a in typing.get_args(option.hint) if a is not type(None)), option.hint)
        if base is bool:
            assert param.secondary_opts == ["--no-" + option.flag[2:]]
        elif option.choices:
            assert tuple(param.type.choices) == option.choices
        else:
            assert param.type.name == {int: "integer", float: "float", str: "text"}[base]
    assert all(o.help for o in OPTIONS.values())


def test_resume_safe_is_field_metadata():
    # the logging/IO/speed options of before the metadata existed, and nothing of the recipe's maths
    assert RESUME_SAFE_KEYS == {
        "run.device",
        "run.out",
        "run.log_every",
        "run.save_every_minutes",
        "run.save_every_steps",
        "run.keep_every_epochs",
        "run.eval_every",
        "run.stop_after_steps",
        "data.workers",
        "run.knn_k",
        "run.knn_temperature",
        "run.knn_train_per_class",
        "run.knn_val_per_class",
        "run.threads",
        "run.compile",
        "run.tensorboard",  # issue 19: writes more files, changes no maths
        "run.strategy",  # issue 19: the same maths, other float rounding; checkpoints are the same format
        "run.activation_checkpointing",
    }
    from pretrain.engine import check_same_run

    saved = build_config("cpu-tiny").to_dict()
    check_same_run(saved, build_config("cpu-tiny", log_every=3, workers=0, sets={"run.knn_k": 5}), "x")
    with pytest.raises(FdbenchError, match="loss.koleo_weight: 0.1 -> 0.3"):
        check_same_run(saved, build_config("cpu-tiny", sets={"loss.koleo_weight": 0.3}), "x")


def test_config_file_nested_flat_and_dotted_mix():
    preset_name, values = flatten_file(
        {
            "preset": "cpu-tiny",
            "loss": {"koleo_weight": 0.2},
            "batch-size": 8,
            "curriculum": "none",
            "optim.beta2": 0.99,
            "data": {"workers": 0},
        },
        "f",
    )
    assert preset_name == "cpu-tiny"
    assert values == {
        "loss.koleo_weight": 0.2,
        "run.batch_size": 8,
        "curriculum.name": "none",
        "optim.beta2": 0.99,
        "data.workers": 0,
    }
    for data, key in [({"loss": {"koleo": 1}}, "loss.koleo"), ({"learning_rate": 1}, "learning_rate")]:
        with pytest.raises(FdbenchError, match=key):
            flatten_file(data, "f")


def run_cli(args, capsys):
    from fdbench.cli import main

    with pytest.raises(SystemExit) as exit_info:
        main(["pretrain", *args])
    captured = capsys.readouterr()
    return exit_info.value.code, captured.err


@pytest.mark.parametrize(
    "args, message",
    [
        (["--set", "loss.kolEo_weight=0.5"], "loss.kolEo_weight"),
        (["--set", "optim.beta1=fast"], "optim.beta1"),
        (["--set", "nonsense"], "--set"),
    ],
)
def test_cli_bad_set_is_one_line_exit_2(capsys, args, message):
    code, err = run_cli(["--device", "cpu", *args], capsys)
    lines = [line for line in err.splitlines() if line.startswith("error:")]
    assert code == 2 and len(lines) == 1 and message in lines[0] and "Traceback" not in err, err


def test_cli_bad_config_key_is_one_line_exit_2(tmp_path, capsys):
    path = tmp_path / "c.yaml"
    path.write_text("loss:\n  koleo_weigth: 0.5\n")
    code, err = run_cli(["--config", str(path)], capsys)
    lines = [line for line in err.splitlines() if line.startswith("error:")]
    assert code == 2 and len(lines) == 1 and "loss.koleo_weigth" in lines[0], err


def test_run_config_yaml_reproduces_the_run(tiny_dataset, tmp_path, capsys):
    first, again = tmp_path / "x", tmp_path / "y"
    torch.set_num_threads(1)
    args = [
        "--preset",
        "cpu-tiny",
        "--arch",
        "vit_pico",
        "--patch-size",
        "8",
        "--global-size",
        "32",
        "--local-size",
        "16",
        "--n-local",
        "1",
        "--prototypes",
        "32",
        "--batch-size",
        "20",
        "--epochs",
        "2",
        "--data",
        str(tiny_dataset),
        "--workers",
        "0",
        "--eval-every",
        "0",
        "--device",
        "cpu",
        "--threads",
        "1",
        "--set",
        "loss.koleo_weight=0.3",
        "--set",
        "optim.weight_decay_end=0.2",
        "--set",
        "head.hidden_dim=32",
        "--set",
        "head.bottleneck_dim=16",
        "--set",
        "run.knn_train_per_class=5",
    ]
    code, err = run_cli([*args, "--out", str(first)], capsys)
    assert code == 0, err
    code, err = run_cli(["--config", str(first / "config.yaml"), "--out", str(again)], capsys)
    assert code == 0, err
    a, b = (yaml.safe_load((p / "config.yaml").read_text()) for p in (first, again))
    assert a["run"].pop("out") == str(first) and b["run"].pop("out") == str(again)
    assert a == b and a["loss"]["koleo_weight"] == 0.3 and a["head"]["hidden_dim"] == 32
    wa, wb = (read_checkpoint(p / "final.pt")["teacher_backbone"] for p in (first, again))
    assert wa.keys() == wb.keys() and all(torch.equal(wa[k], wb[k]) for k in wa)
