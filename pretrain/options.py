"""The recipe's fields as options: one :class:`Option` per leaf field of :class:`PretrainConfig`,
read from the :func:`pretrain.recipe.opt` metadata, so the named flags of ``fdbench pretrain``,
``--set section.field=value``, the ``--config`` file and the resume rules cannot drift apart; and
:func:`coerce`, which types a value by its field.
"""

from __future__ import annotations

import dataclasses
import typing
from dataclasses import dataclass
from typing import Any

import yaml

from fdbench.errors import FdbenchError
from pretrain.recipe import PretrainConfig


@dataclass(frozen=True)
class Option:
    """One leaf field of :class:`PretrainConfig`: ``key`` is ``section.field`` (``loss.koleo_weight``)."""

    key: str
    section: str
    name: str
    hint: Any  # the field's annotation, resolved
    default: Any
    help: str
    choices: tuple[str, ...] | None
    resume_safe: bool
    option: str | None  # the named flag's parameter name (None: only --set / YAML)
    flag: str | None  # its spelling on the command line (``--lr``)


def _options() -> dict[str, Option]:
    found = {}
    for part in dataclasses.fields(PretrainConfig):
        if not dataclasses.is_dataclass(part.default_factory):
            continue
        section = part.default_factory
        hints = typing.get_type_hints(section)
        for f in dataclasses.fields(section):
            meta = f.metadata
            name = (f.name if meta.get("option") is True else meta.get("option")) or None
            flag = meta.get("flag") or ("--" + name.replace("_", "-") if name else None)
            found[f"{part.name}.{f.name}"] = Option(
                f"{part.name}.{f.name}",
                part.name,
                f.name,
                hints[f.name],
                f.default,
                meta.get("help", ""),
                meta.get("choices"),
                bool(meta.get("resume_safe")),
                name,
                flag,
            )
    return found


OPTIONS: dict[str, Option] = _options()
# named flag parameter -> the option (``epochs``, ``base_lr``, ``curriculum``, ``data``, ...)
NAMED_OPTIONS: dict[str, Option] = {o.option: o for o in OPTIONS.values() if o.option}
OPTION_FIELDS = {name: (o.section, o.name) for name, o in NAMED_OPTIONS.items()}
RESUME_SAFE_KEYS = frozenset(k for k, o in OPTIONS.items() if o.resume_safe)


def _type_name(hint: Any) -> str:
    return getattr(hint, "__name__", None) or str(hint).replace("typing.", "")


def coerce(key: str, value: Any, hint: Any, *, strict: bool = False) -> Any:
    """``value`` (from YAML or ``--set``, already YAML-parsed) as the type of field ``key``, or an error.

    ``strict``: the value must already have the type (a Python caller's config): no text is parsed
    and no whole-number float passes for an int.
    """

    def bad() -> FdbenchError:
        expected = {int: "a whole number (int)", float: "a number (float)"}.get(hint, _type_name(hint))
        if isinstance(value, (list, dict)) and typing.get_origin(hint) is not tuple:
            expected = f"a single value ({_type_name(hint)}), not a {type(value).__name__}"
        return FdbenchError(f"bad value for {key}: expected {expected}, got {value!r}")

    args = typing.get_args(hint)
    if type(None) in args:  # Optional[X]
        if value is None or (not strict and isinstance(value, str) and value.lower() in ("none", "null", "~")):
            return None
        (inner,) = [a for a in args if a is not type(None)]
        return coerce(key, value, inner, strict=strict)
    if typing.get_origin(hint) is tuple:
        if isinstance(value, str) and not strict:
            value = [v for v in value.strip("()[] ").split(",") if v.strip()]
        if not isinstance(value, (list, tuple)) or len(value) != len(args):
            raise bad()
        return tuple(coerce(key, v, a, strict=strict) for v, a in zip(value, args))
    if hint is bool:
        if isinstance(value, bool):
            return value
        if not strict and isinstance(value, str) and value.lower() in ("true", "false", "yes", "no", "on", "off"):
            return value.lower() in ("true", "yes", "on")
        raise bad()
    if strict and (isinstance(value, bool) or not isinstance(value, {int: int, float: (int, float), str: str}[hint])):
        raise bad()
    if hint is int:
        if isinstance(value, float) and value.is_integer():
            value = int(value)  # YAML 16.0: a whole number written as a float
        if isinstance(value, bool) or not isinstance(value, (int, str)):
            raise bad()
        try:
            return int(value)
        except ValueError:
            raise bad() from None
    if hint is float:
        if isinstance(value, bool) or not isinstance(value, (int, float, str)):
            raise bad()
        try:
            return float(value)
        except ValueError:
            raise bad() from None
    if hint is str:
        if isinstance(value, (dict, list, tuple)) or value is None:
            raise bad()
        return str(value)
    raise bad()


def set_option(cfg: PretrainConfig, key: str, value: Any) -> None:
    """Set ``section.field`` on ``cfg`` in place, typed by the field's annotation."""
    option = OPTIONS.get(key)
    if option is None:
        raise FdbenchError(
            f"unknown config key {key!r}; keys look like loss.koleo_weight "
            f"(sections: {', '.join(sorted({o.section for o in OPTIONS.values()}))})"
        )
    value = coerce(key, value, option.hint)
    if option.choices and value not in option.choices:
        raise FdbenchError(f"bad value for {key}: {value!r}; choose one of {', '.join(option.choices)}")
    setattr(getattr(cfg, option.section), option.name, value)


def parse_assignment(text: str) -> tuple[str, Any]:
    """``"loss.koleo_weight=0.5"`` -> ``("loss.koleo_weight", 0.5)`` (the value read as YAML)."""
    key, sep, raw = text.partition("=")
    if not sep or not key.strip():
        raise FdbenchError(f"bad --set {text!r}: use --set section.field=value (e.g. loss.koleo_weight=0.5)")
    key = key.strip()
    try:
        value = yaml.safe_load(raw) if raw.strip() else ""
    except yaml.YAMLError:
        value = raw
    if key in OPTIONS and OPTIONS[key].hint in (str, str | None) and value is not None:
        value = raw.strip()  # strings stay as typed ("runs/001" is not the number 1)
    return key, value
