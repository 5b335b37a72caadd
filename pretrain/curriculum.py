"""Training curricula as data: a list of stages, each with its share of the epochs, crop sizes and
augmentation switches.

Named curricula:

- ``none``: one full-resolution stage, standard DINOv2;
- ``two-stage``: FastDINOv2. Stage 1 takes ``stage1_fraction`` (75%) of the epochs at
  ``stage1_scale`` (half) resolution, 112/48 px when full is 224/96; stage 2 the rest at full
  resolution with Gaussian noise patching.

``noise_patching`` forces patching on (in the last stage) or off (everywhere), so both ablations of
the paper are expressible: ``two-stage`` without patching (curriculum alone) and ``none`` with
patching (patching alone). Any other schedule (e.g. progressive 112 -> 160 -> 224) is a YAML file::

    name: progressive
    stages:
      - {name: low, fraction: 0.5, global_size: 112, local_size: 48}
      - {name: mid, fraction: 0.25, global_size: 160, local_size: 64}
      - {name: full, fraction: 0.25, global_size: 224, local_size: 96, noise_patching: true}

Stage boundaries: stage ``i`` ends at epoch ``round_half_up(E * (f_1 + ... + f_i))``; when there
are at least as many epochs as stages, every stage gets at least one epoch (boundaries are pushed
forward, then pulled back from the end). Sizes here are pixels as given; the engine rounds them to
multiples of its patch size with :func:`round_to_patch`.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

from fdbench.errors import FdbenchError

__all__ = [
    "Stage",
    "Curriculum",
    "CURRICULA",
    "build_curriculum",
    "load_curriculum_yaml",
    "round_to_patch",
    "stage_index",
]

CURRICULA = ("none", "two-stage")
_FRACTION_TOLERANCE = 1e-6


def _round_half_up(x: float) -> int:
    # the small epsilon keeps products like 0.35 * 10 = 3.4999999999999996 on the intended side
    return int(math.floor(x + 0.5 + 1e-9))


def round_to_patch(size: int | float, patch: int) -> int:
    """The multiple of ``patch`` nearest to ``size`` (halves round up), at least one patch."""
    return max(int(patch), _round_half_up(float(size) / patch) * int(patch))


def stage_index(ranges: list[tuple[int, int]], epoch: int) -> int:
    """Index of the ``(start, end)`` epoch range (end exclusive) holding ``epoch``; ranges without
    epochs are never returned, and epochs past the end belong to the last range that has any."""
    if epoch < 0:
        raise FdbenchError(f"epoch must be >= 0, got {epoch}")
    nonempty = [i for i, (start, end) in enumerate(ranges) if end > start]
    for i in nonempty:
        start, end = ranges[i]
        if start <= epoch < end:
            return i
    return nonempty[-1] if nonempty else len(ranges) - 1


@dataclass
class Stage:
    """One stage: its share of the epochs, its multi-crop and whether noise patching is on."""

    name: str
    fraction: float
    global_size: int
    local_size: int
    n_local: int = 8
    global_scale: tuple[float, float] = (0.32, 1.0)
    local_scale: tuple[float, float] = (0.05, 0.32)
    noise_patching: bool = False
    noise_max_sigma: float = 0.5

    def __post_init__(self) -> None:
        where = f"curriculum stage {self.name!r}"
        try:
            self.fraction = float(self.fraction)
            self.global_size, self.local_size, self.n_local = (
                int(self.global_size),
                int(self.local_size),
                int(self.n_local),
            )
            self.global_scale = tuple(float(v) for v in self.global_scale)
            self.local_scale = tuple(float(v) for v in self.local_scale)
            self.noise_max_sigma = float(self.noise_max_sigma)
        except (TypeError, ValueError) as err:
            raise FdbenchError(f"{where}: a value has the wrong type ({err})") from None
        if not isinstance(self.noise_patching, bool):
            raise FdbenchError(f"{where}: noise_patching must be true or false, got {self.noise_patching!r}")
        if not 0.0 < self.fraction <= 1.0:
            raise FdbenchError(f"{where}: fraction must be in (0, 1], got {self.fraction}")
        if self.global_size < 1 or self.local_size < 1:
            raise FdbenchError(
                f"{where}: crop sizes must be positive, got global {self.global_size}, local {self.local_size}"
            )
        if self.n_local < 0:
            raise FdbenchError(f"{where}: n_local must be >= 0, got {self.n_local}")
        for label, scale in (("global_scale", self.global_scale), ("local_scale", self.local_scale)):
            if len(scale) != 2 or not 0.0 < scale[0] <= scale[1] <= 1.0:
                raise FdbenchError(f"{where}: {label} must be two values 0 < min <= max <= 1, got {scale}")
        if self.noise_max_sigma < 0:
            raise FdbenchError(f"{where}: noise_max_sigma must be >= 0, got {self.noise_max_sigma}")

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["global_scale"], data["local_scale"] = list(self.global_scale), list(self.local_scale)
        return data

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "Stage":
        known = [f.name for f in fields(cls)]
        unknown = sorted(set(data) - set(known))
        if unknown:
            raise FdbenchError(f"unknown curriculum stage key(s) {', '.join(unknown)}; valid keys: {', '.join(known)}")
        missing = [k for k in ("name", "fraction", "global_size", "local_size") if k not in data]
        if missing:
            raise FdbenchError(f"curriculum stage {data.get('name', '?')!r} is missing {', '.join(missing)}")
        return cls(**data)


@dataclass
class Curriculum:
    """A named list of stages whose fractions sum to 1."""

    name: str
    stages: list[Stage] = field(default_factory=list)

    def __post_init__(self) -> None:
        if not self.stages:
            raise FdbenchError(f"curriculum {self.name!r} has no stages")
        total = sum(s.fraction for s in self.stages)
        if abs(total - 1.0) > _FRACTION_TOLERANCE:
            raise FdbenchError(f"curriculum {self.name!r}: stage fractions sum to {total:g}; they must sum to 1")

    def stage_epochs(self, total_epochs: int) -> list[tuple[int, int]]:
        """``[(start, end), ...]`` per stage, start inclusive, end exclusive (see the module docstring)."""
        total_epochs = int(total_epochs)
        if total_epochs < 0:
            raise FdbenchError(f"the number of epochs must be >= 0, got {total_epochs}")
        n = len(self.stages)
        bounds, cumulative = [0], 0.0
        for stage in self.stages[:-1]:
            cumulative += stage.fraction
            bounds.append(min(max(_round_half_up(cumulative * total_epochs), bounds[-1]), total_epochs))
        bounds.append(total_epochs)
        if total_epochs >= n:
            for i in range(1, n):  # push forward: every stage at least one epoch
                bounds[i] = max(bounds[i], bounds[i - 1] + 1)
            for i in range(n - 1, 0, -1):  # pull back from the end
                bounds[i] = min(bounds[i], bounds[i + 1] - 1)
        return [(bounds[i], bounds[i + 1]) for i in range(n)]

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "stages": [s.to_dict() for s in self.stages]}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "Curriculum":
        stages = data.get("stages")
        if not isinstance(stages, list) or not all(isinstance(s, dict) for s in stages):
            raise FdbenchError("a curriculum needs 'stages': a list of mappings (name, fraction, global_size, ...)")
        unknown = sorted(set(data) - {"name", "stages"})
        if unknown:
            raise FdbenchError(f"unknown curriculum key(s) {', '.join(unknown)}; valid keys: name, stages")
        named = [{"name": f"stage{i + 1}", **s} for i, s in enumerate(stages)]
        return cls(name=str(data.get("name", "custom")), stages=[Stage.from_dict(s) for s in named])


def build_curriculum(
    name: str = "two-stage",
    *,
    global_size: int = 224,
    local_size: int = 96,
    stage1_fraction: float = 0.75,
    stage1_scale: float = 0.5,
    stage1_global_size: int | None = None,
    stage1_local_size: int | None = None,
    noise_patching: bool | None = None,
    noise_max_sigma: float = 0.5,
    n_local: int = 8,
    global_scale: tuple[float, float] = (0.32, 1.0),
    local_scale: tuple[float, float] = (0.05, 0.32),
) -> Curriculum:
    """``none`` or ``two-stage`` (see the module docstring).

    Stage-1 sizes default to ``round_half_up(full * stage1_scale)``; explicit sizes override.
    ``noise_patching=None`` keeps the named default (on in two-stage's last stage, off for none).
    """
    if name not in CURRICULA:
        raise FdbenchError(f"unknown curriculum {name!r}: choose one of {', '.join(CURRICULA)} or a YAML file")
    common = dict(n_local=n_local, global_scale=global_scale, local_scale=local_scale, noise_max_sigma=noise_max_sigma)
    if name == "none":
        return Curriculum(
            "none", [Stage("full-res", 1.0, global_size, local_size, noise_patching=bool(noise_patching), **common)]
        )
    if not 0.0 < stage1_fraction < 1.0:
        raise FdbenchError(f"stage-1 fraction must be in (0, 1), got {stage1_fraction}")
    if not 0.0 < stage1_scale <= 1.0:
        raise FdbenchError(f"stage-1 scale must be in (0, 1], got {stage1_scale}")
    g1 = stage1_global_size if stage1_global_size is not None else max(1, _round_half_up(global_size * stage1_scale))
    l1 = stage1_local_size if stage1_local_size is not None else max(1, _round_half_up(local_size * stage1_scale))
    patch_last = True if noise_patching is None else bool(noise_patching)
    return Curriculum(
        "two-stage",
        [
            Stage("low-res", stage1_fraction, g1, l1, noise_patching=False, **common),
            Stage("full-res", 1.0 - stage1_fraction, global_size, local_size, noise_patching=patch_last, **common),
        ],
    )


def load_curriculum_yaml(path: str | Path) -> Curriculum:
    """A curriculum from YAML: ``{name, stages: [...]}`` or a bare list of stages (name: the file stem)."""
    import yaml

    path = Path(path)
    if not path.is_file():
        raise FdbenchError(f"curriculum file not found: {path}")
    try:
        raw = yaml.safe_load(path.read_text())
    except yaml.YAMLError as err:
        raise FdbenchError(f"curriculum file {path} is not valid YAML: {str(err).splitlines()[0]}") from None
    if isinstance(raw, list):
        raw = {"stages": raw}
    if not isinstance(raw, dict):
        raise FdbenchError(f"curriculum file {path} must hold a mapping with 'stages' or a list of stages")
    try:
        return Curriculum.from_dict({"name": path.stem, **raw})
    except FdbenchError as err:
        raise FdbenchError(f"{path}: {err}") from None
