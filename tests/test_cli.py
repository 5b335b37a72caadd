"""The CLI's conventions: help for every command, one-line errors with exit code 2, YAML configs."""

import subprocess
import sys

import pytest

from fdbench.cli import COMMANDS, cli, main


def run(argv, capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(argv)
    out, err = capsys.readouterr()
    return exit_info.value.code, out, err


def test_help_lists_every_available_command(capsys):
    code, out, _ = run(["--help"], capsys)
    assert code == 0
    for name in cli.list_commands(None):
        assert name in out
    assert "make-dataset" in out and "export" in out


@pytest.mark.parametrize("name", [n for n in COMMANDS])
def test_each_command_has_help(name, capsys):
    assert name in cli.list_commands(None), f"{name} is registered but its module is missing"
    code, out, _ = run([name, "--help"], capsys)
    assert code == 0 and "Usage:" in out and "--help" in out


def test_bad_option_is_one_line_exit_2(capsys):
    code, out, err = run(["make-dataset", "--no-such-option"], capsys)
    assert code == 2 and err.count("\n") == 1 and err.startswith("error:")
    code, _, err = run(["no-such-command"], capsys)
    assert code == 2 and err.count("\n") == 1


def test_user_errors_are_one_line_exit_2(tmp_path, capsys):
    code, _, err = run(["export", str(tmp_path / "missing.pt"), "--out", str(tmp_path / "b.safetensors")], capsys)
    assert code == 2 and err == f"error: checkpoint not found: {tmp_path / 'missing.pt'}\n"
    code, _, err = run(["make-dataset", "--classes", "50", "--out", str(tmp_path / "d")], capsys)
    assert code == 2 and "--classes" in err and err.count("\n") == 1


def test_make_dataset_with_yaml_config_command_line_wins(tmp_path, capsys):
    cfg = tmp_path / "ds.yaml"
    cfg.write_text("classes: 3\ntrain-per-class: 2\nval_per_class: 1\nsize: 48\n")
    code, out, _ = run(["make-dataset", "--config", str(cfg), "--size", "32", "--out", str(tmp_path / "d")], capsys)
    assert code == 0 and out.strip() == str(tmp_path / "d")
    pngs = sorted(p for split in ("train", "val") for p in (tmp_path / "d" / split).rglob("*.png"))
    assert len(pngs) == 3 * 3
    from PIL import Image

    assert Image.open(pngs[0]).size == (32, 32)
    cfg.write_text("clases: 3\n")
    code, _, err = run(["make-dataset", "--config", str(cfg)], capsys)
    assert code == 2 and "unknown key 'clases'" in err and err.count("\n") == 1


def test_export_command(tmp_path, capsys):
    from fdbench.checkpoint import load_backbone, save_checkpoint
    from fdbench.models import build_backbone

    model = build_backbone("vit_pico", img_size=32, patch_size=8)
    save_checkpoint(
        {"kind": "training", "model": model.config.to_dict(), "teacher_backbone": model.state_dict()},
        tmp_path / "final.pt",
    )
    code, out, _ = run(["export", str(tmp_path / "final.pt"), "--out", str(tmp_path / "bb.safetensors")], capsys)
    assert code == 0 and (tmp_path / "bb.safetensors").exists() and (tmp_path / "bb.json").exists()
    assert load_backbone(tmp_path / "bb.safetensors").config.arch == "vit_pico"


def test_python_dash_m_and_version():
    result = subprocess.run([sys.executable, "-m", "fdbench", "--version"], capture_output=True, text=True)
    assert result.returncode == 0 and "fdbench, version" in result.stdout
