"""Configuration plumbing: YAML files and dataclass (de)serialisation.

Each engine defines its configuration as plain dataclasses next to the code that reads them; this
module only moves them to and from YAML.
"""

from __future__ import annotations

import dataclasses
import typing
from pathlib import Path
from typing import Any, TypeVar

import yaml

from fdbench.errors import FdbenchError
from fdbench.io import atomic_write_text

T = TypeVar("T")


def load_yaml(path: str | Path) -> dict[str, Any]:
    path = Path(path)
    if not path.is_file():
        raise FdbenchError(f"config file not found: {path}")
    try:
        data = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as err:
        raise FdbenchError(f"config file {path} is not valid YAML: {str(err).splitlines()[0]}") from None
    if not isinstance(data, dict):
        raise FdbenchError(f"config file {path} must hold a mapping of option: value")
    return data


def to_dict(obj: Any) -> Any:
    """Dataclasses (nested too) to plain dicts of primitives, ready for YAML/JSON/checkpoints."""
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        return {f.name: to_dict(getattr(obj, f.name)) for f in dataclasses.fields(obj)}
    if isinstance(obj, (list, tuple)):
        return [to_dict(v) for v in obj]
    if isinstance(obj, dict):
        return {k: to_dict(v) for k, v in obj.items()}
    if isinstance(obj, Path):
        return str(obj)
    return obj


def from_dict(cls: type[T], data: dict[str, Any], *, strict: bool = True) -> T:
    """Build dataclass ``cls`` from a dict, recursing into dataclass-typed fields."""
    hints = typing.get_type_hints(cls)
    known = {f.name: f for f in dataclasses.fields(cls)}
    unknown = set(data) - set(known)
    if strict and unknown:
        raise FdbenchError(f"unknown {cls.__name__} key(s): {', '.join(sorted(unknown))}")
    kwargs = {}
    for name, value in data.items():
        if name not in known:
            continue
        hint = hints.get(name)
        if dataclasses.is_dataclass(hint) and isinstance(value, dict):
            value = from_dict(hint, value, strict=strict)
        kwargs[name] = value
    return cls(**kwargs)


def save_yaml(obj: Any, path: str | Path) -> None:
    atomic_write_text(path, yaml.safe_dump(to_dict(obj), sort_keys=False))
