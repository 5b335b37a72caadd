"""The pretraining configuration, the one place to import it from: the recipe's dataclasses
(:mod:`pretrain.recipe`), the presets (:mod:`pretrain.presets`), the fields as options
(:mod:`pretrain.options`: named flags, ``--set``, resume rules), the checks
(:mod:`pretrain.config_checks`), and here :func:`build_config` (a preset plus overrides) and the
``--config`` file reader (:func:`flatten_file`).

Each field is defined once, with :func:`opt`; :data:`OPTIONS` reads that metadata, so the CLI flags,
``--set section.field=value``, the ``--config`` file and the resume check cannot drift apart.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from fdbench.config import load_yaml
from fdbench.errors import FdbenchError
from pretrain.config_checks import validate
from pretrain.options import NAMED_OPTIONS, OPTION_FIELDS, OPTIONS, RESUME_SAFE_KEYS, Option, coerce, set_option
from pretrain.options import parse_assignment
from pretrain.presets import PRESETS, default_preset_name, preset
from pretrain.recipe import (
    CropConfig,
    CurriculumConfig,
    DataConfig,
    HeadConfig,
    LossConfig,
    ModelConfig,
    OptimConfig,
    PretrainConfig,
    RunConfig,
    opt,
)

__all__ = [
    "NAMED_OPTIONS",
    "OPTIONS",
    "OPTION_FIELDS",
    "PRESETS",
    "RESUME_SAFE_KEYS",
    "CropConfig",
    "CurriculumConfig",
    "DataConfig",
    "HeadConfig",
    "LossConfig",
    "ModelConfig",
    "OptimConfig",
    "Option",
    "PretrainConfig",
    "RunConfig",
    "build_config",
    "coerce",
    "default_preset_name",
    "flatten_file",
    "load_config_file",
    "opt",
    "parse_assignment",
    "preset",
    "set_option",
    "validate",
]


def flatten_file(data: dict[str, Any], source: str) -> tuple[str | None, dict[str, Any]]:
    """A config file's ``(preset, {section.field: value})``.

    The file may be nested like a run's ``config.yaml`` (``loss: {koleo_weight: 0.5}``), flat with
    the named flags' names (``batch-size: 64``, ``curriculum: none``), or use dotted keys; sections
    and flags can be mixed. ``curriculum`` and ``data`` are both a section and a flag: a mapping
    means the section.
    """
    preset_name, values = None, {}
    sections = {o.section for o in OPTIONS.values()}
    for raw_key, value in data.items():
        key = str(raw_key).replace("-", "_")
        if key == "preset":
            preset_name = None if value in (None, "auto") else str(value)
        elif key in sections and isinstance(value, dict):
            for name, v in value.items():
                dotted = f"{key}.{str(name).replace('-', '_')}"
                if dotted not in OPTIONS:
                    raise FdbenchError(f"unknown key {key}.{name} in {source}")
                values[dotted] = v
        elif key in NAMED_OPTIONS:
            values[NAMED_OPTIONS[key].key] = value
        elif str(raw_key) in OPTIONS:
            values[str(raw_key)] = value
        elif key in ("lr",):
            values["optim.base_lr"] = value
        else:
            raise FdbenchError(
                f"unknown key {raw_key!r} in {source}; use a section (model, loss, ...), "
                f"a dotted key (loss.koleo_weight) or a flag name ({', '.join(sorted(NAMED_OPTIONS))})"
            )
    for dotted, value in values.items():  # typed now, named as written, even where a flag overrides it
        written = next((k for k in data if str(k).replace("-", "_") in (dotted, dotted.split(".")[1])), dotted)
        coerce(
            f"{written} ({dotted}) in {source}" if written != dotted else f"{dotted} in {source}",
            value,
            OPTIONS[dotted].hint,
        )
    return preset_name, values


def load_config_file(path: str | Path) -> tuple[str | None, dict[str, Any]]:
    return flatten_file(load_yaml(path), str(path))


def build_config(
    preset_name: str | None = None, *, sets: dict[str, Any] | None = None, **options: Any
) -> PretrainConfig:
    """A preset (default: ``cpu-tiny`` on CPU, ``gpu-small`` on CUDA) with overrides applied.

    ``options`` use the named flags' names (``epochs=10, curriculum="none", data="/imagenet100"``);
    ``None`` values mean "keep the preset's". ``sets`` are dotted keys (``{"loss.koleo_weight": 0.5}``)
    applied after them. Every value is typed by its field; the result is validated.
    """
    unknown = set(options) - set(NAMED_OPTIONS)
    if unknown:
        raise FdbenchError(
            f"unknown option(s) {', '.join(sorted(unknown))}; valid: {', '.join(sorted(NAMED_OPTIONS))} "
            f"(every other field: sets={{'section.field': value}})"
        )
    sets = dict(sets or {})
    device = options.get("device") or sets.get("run.device") or "auto"
    cfg = preset(preset_name or default_preset_name(device))
    for name, value in options.items():
        if value is not None:
            set_option(cfg, NAMED_OPTIONS[name].key, str(value) if isinstance(value, Path) else value)
    for key, value in sets.items():
        set_option(cfg, key, str(value) if isinstance(value, Path) else value)
    validate(cfg, warn=False)  # train() validates again and warns, once
    return cfg
