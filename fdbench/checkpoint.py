"""The checkpoint format, atomic saving, and loading of every backbone file fdbench accepts.

Format (``format == "fdbench/1"``): a plain dict of tensors and primitives (str, int, float, bool,
None, lists, dicts), so ``torch.load(path, weights_only=True)`` reads it. Required keys:

- ``format``: ``"fdbench/1"``
- ``kind``: ``"training"`` (written by ``fdbench pretrain``: student, teacher, heads, optimiser,
  schedule position, RNG states, ...) or ``"backbone"`` (a bare backbone)
- ``model``: the :class:`~fdbench.models.BackboneConfig` as a dict; the backbone rebuilds from it
- ``teacher_backbone``: the backbone state dict used for evaluation (the EMA teacher in training
  checkpoints, as in DINOv2)

Optional: ``data`` (``{"root": ..., "image_size": ...}``: what the model was trained on),
``curriculum``, ``epoch``, ``step`` and whatever the engine needs to resume.

``load_backbone`` also accepts an exported safetensors backbone (``fdbench export``: config in the
file's metadata and in a JSON file beside it) and an official DINOv2 backbone state dict (``.pth``,
e.g. ``dinov2_vits14_pretrain.pth``), mapped onto the timm model.
"""

from __future__ import annotations

import json
import math
import re
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

import torch

from fdbench.errors import FdbenchError, brief
from fdbench.io import atomic_open, atomic_torch_save, atomic_write_json
from fdbench.models import ARCHS, BackboneConfig, MaskableViT, build_backbone

FORMAT = "fdbench/1"
EXPECTED = (
    "an fdbench checkpoint (.pt from `fdbench pretrain`), an exported backbone "
    "(.safetensors from `fdbench export`), or an official DINOv2 backbone state dict (.pth)"
)


@dataclass
class LoadedBackbone:
    model: MaskableViT
    config: BackboneConfig
    source: str  # "fdbench-training", "fdbench-backbone", "safetensors", "timm-export", "dinov2-official"
    meta: dict[str, Any] = field(default_factory=dict)  # e.g. {"data": {...}, "epoch": ...}


def save_checkpoint(state: dict[str, Any], path: str | Path) -> None:
    """Validate the required keys and write atomically (temp file + rename)."""
    for key in ("kind", "model", "teacher_backbone"):
        if key not in state:
            raise ValueError(f"checkpoint state is missing {key!r}")
    state = {"format": FORMAT, **state}
    _check_primitive(state, "checkpoint")
    atomic_torch_save(state, path)


def _check_primitive(obj: Any, where: str) -> None:
    # catches numpy arrays and custom objects early: they would break weights_only loading later
    if isinstance(obj, dict):
        for k, v in obj.items():
            _check_primitive(v, f"{where}[{k!r}]")
    elif isinstance(obj, (list, tuple)):
        for i, v in enumerate(obj):
            _check_primitive(v, f"{where}[{i}]")
    elif not (obj is None or isinstance(obj, (torch.Tensor, str, int, float, bool, torch.Size))):
        raise TypeError(f"{where} is a {type(obj).__name__}; checkpoints hold tensors and primitives only")


def read_checkpoint(path: str | Path, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    """Read an fdbench ``.pt`` with ``weights_only=True``; anything else is a clear error."""
    path = _existing(path)
    state = _torch_load(path, map_location)
    if not isinstance(state, dict) or state.get("format") != FORMAT:
        raise FdbenchError(f"{path} is not an fdbench checkpoint; expected {EXPECTED}")
    return state


def _existing(path: str | Path) -> Path:
    path = Path(path)
    if not path.exists():
        raise FdbenchError(f"checkpoint not found: {path}")
    if path.is_dir():
        for candidate in (path / "final.pt", path / "checkpoints" / "last.pt"):
            if candidate.exists():
                return candidate
        raise FdbenchError(f"{path} is a folder without final.pt; expected {EXPECTED}")
    return path


def _torch_load(path: Path, map_location) -> Any:
    try:
        with warnings.catch_warnings():  # "Detected pickle protocol 4": a multi-line aside before our error
            warnings.simplefilter("ignore", UserWarning)
            return torch.load(path, map_location=map_location, weights_only=True)
    except Exception as err:  # noqa: BLE001 - the unpickler raises all sorts (IndexError, KeyError...) on junk
        reason = brief(err)
        with open(path, "rb") as fh:
            head = fh.read(4)
        if not head:
            reason = "the file is empty"
        elif head == b"PK\x03\x04" and "pickled Python object" not in reason:  # torch's zip: a torn copy
            reason = f"truncated or damaged ({reason})"
        raise FdbenchError(f"cannot read {path}: {reason}; expected {EXPECTED}") from None


def load_backbone(path: str | Path, map_location: str | torch.device = "cpu") -> LoadedBackbone:
    """Load a backbone from any accepted file kind, in eval mode."""
    path = _existing(path)
    try:
        loaded = _load_any(path)
    except (KeyError, TypeError, ValueError, AttributeError, IndexError) as err:
        # a file of the right kind with missing or mistyped entries (no `model`, `model` a string,
        # metadata that is not JSON, an official .pth missing a key): name it instead of a traceback
        detail = f"missing {err}" if isinstance(err, KeyError) else str(err).splitlines()[0][:160] if str(err) else ""
        raise FdbenchError(
            f"{path} is damaged or incomplete ({detail or type(err).__name__}); expected {EXPECTED}"
        ) from None
    loaded.model.to(map_location).eval()
    loaded.meta.setdefault("path", str(path))
    return loaded


def _load_any(path: Path) -> LoadedBackbone:
    if path.suffix == ".safetensors":
        return _load_safetensors(path)
    state = _torch_load(path, "cpu")
    if isinstance(state, dict) and state.get("format") == FORMAT:
        return _load_fdbench(state)
    if isinstance(state, dict) and _looks_like_dinov2(state):
        return _load_dinov2_official(state)
    raise FdbenchError(f"{path} holds neither an fdbench checkpoint nor a DINOv2 backbone; expected {EXPECTED}")


def _load_fdbench(state: dict) -> LoadedBackbone:
    config = BackboneConfig.from_dict(state["model"])
    model = build_backbone(config)
    _load_state(model, state["teacher_backbone"], "fdbench checkpoint")
    meta = {k: state[k] for k in ("data", "curriculum", "epoch", "step", "run_name") if k in state}
    source = "fdbench-training" if state.get("kind") == "training" else "fdbench-backbone"
    return LoadedBackbone(model, config, source, meta)


def _load_state(model: torch.nn.Module, state_dict: dict, what: str) -> None:
    try:
        model.load_state_dict(state_dict, strict=True)
    except RuntimeError as err:
        raise FdbenchError(
            f"{what} does not match its recorded architecture: {str(err).splitlines()[0][:200]}"
        ) from None


# ---- safetensors export ------------------------------------------------------------------------


def export_backbone(checkpoint: str | Path, out: str | Path) -> tuple[Path, Path]:
    """Write the (teacher) backbone as safetensors plus a JSON config beside it."""
    from safetensors.torch import save

    loaded = load_backbone(checkpoint)
    out = Path(out)
    if out.suffix != ".safetensors":
        out = out.with_suffix(".safetensors")
    config = {
        "format": FORMAT,
        "model": loaded.config.to_dict(),
        "source": loaded.source,
        **{k: v for k, v in loaded.meta.items() if k in ("data", "curriculum", "epoch")},
    }
    tensors = {k: v.detach().contiguous().cpu() for k, v in loaded.model.state_dict().items()}
    payload = save(tensors, metadata={"fdbench": json.dumps(config)})
    with atomic_open(out, "wb") as fh:
        fh.write(payload)
    sidecar = out.with_suffix(".json")
    atomic_write_json(sidecar, config)
    return out, sidecar


def _load_safetensors(path: Path) -> LoadedBackbone:
    from safetensors import SafetensorError, safe_open

    try:
        with safe_open(str(path), framework="pt") as fh:
            metadata = fh.metadata() or {}
            tensors = {k: fh.get_tensor(k) for k in fh.keys()}
    except (SafetensorError, OSError) as err:
        raise FdbenchError(f"cannot read {path} as safetensors ({err}); expected {EXPECTED}") from None
    if "fdbench" in metadata:
        config = json.loads(metadata["fdbench"])
    elif "fdbench_timm" in metadata:  # `fdbench export --format timm`: timm's keys, no mask token
        config = json.loads(metadata["fdbench_timm"])
        model_cfg = BackboneConfig.from_dict(config["model"])
        model = build_backbone(model_cfg)
        tensors.setdefault("mask_token", model.mask_token.detach().clone())
        _load_state(model, tensors, "timm export")
        meta = {k: v for k, v in config.items() if k in ("data", "curriculum", "epoch")}
        return LoadedBackbone(model, model_cfg, "timm-export", meta)
    elif path.with_suffix(".json").exists() and not _looks_like_dinov2(tensors):
        config = json.loads(path.with_suffix(".json").read_text())
    elif _looks_like_dinov2(tensors):  # timm's DINOv2 weights (e.g. vit_small_patch14_dinov2's model.safetensors)
        return _load_dinov2_official(tensors)
    else:
        raise FdbenchError(
            f"{path} has no fdbench config (neither in its metadata nor in {path.with_suffix('.json').name})"
        )
    model_cfg = BackboneConfig.from_dict(config["model"])
    model = build_backbone(model_cfg)
    _load_state(model, tensors, "safetensors backbone")
    meta = {k: v for k, v in config.items() if k in ("data", "curriculum", "epoch")}
    return LoadedBackbone(model, model_cfg, "safetensors", meta)


# ---- official DINOv2 backbones -----------------------------------------------------------------


def _looks_like_dinov2(state: dict) -> bool:
    return "cls_token" in state and "pos_embed" in state and "patch_embed.proj.weight" in state


def _load_dinov2_official(state: dict) -> LoadedBackbone:
    """Map an official DINOv2 ``DinoVisionTransformer`` state dict onto a :class:`MaskableViT`.

    Names match timm's except: register tokens (``register_tokens`` -> ``reg_token``), chunked
    blocks (``blocks.<chunk>.<i>.`` -> ``blocks.<i>.``), and the class-token position, which DINOv2
    keeps in ``pos_embed[:, 0]`` and we fold into the class token (our table covers patches only).

    timm's DINOv2 weights (``vit_small_patch14_dinov2`` and ``..._reg4_dinov2``, from local files)
    load here too: the same names, ``reg_token`` for the registers, and with registers a table of
    patch positions only (a square count: timm's ``no_embed_class``), without a mask token.
    """
    if any(".mlp.w12." in k for k in state):
        raise FdbenchError("SwiGLU DINOv2 backbones (ViT-g) are not supported; use ViT-S/B/L")
    state = {_unchunk(k): v for k, v in state.items()}
    if "reg_token" in state:  # timm's name
        state["register_tokens"] = state.pop("reg_token")
    n_pos = state["pos_embed"].shape[1]
    if math.isqrt(n_pos) ** 2 == n_pos:  # patches only (timm no_embed_class): a zero class position
        state["pos_embed"] = torch.cat(
            [state["pos_embed"].new_zeros(1, 1, state["pos_embed"].shape[-1]), state["pos_embed"]], 1
        )
    dim = state["cls_token"].shape[-1]
    arch = next(
        (
            name
            for name, (d, _, _) in ARCHS.items()
            if d == dim and name.startswith("vit_") and name not in ("vit_pico", "vit_nano", "vit_tiny")
        ),
        None,
    )
    depth = len({int(m.group(1)) for k in state if (m := re.match(r"blocks\.(\d+)\.", k))})
    if arch is None or ARCHS[arch][1] != depth:
        raise FdbenchError(
            f"DINOv2 backbone with width {dim} and depth {depth} matches no known architecture ({', '.join(ARCHS)})"
        )
    patch = state["patch_embed.proj.weight"].shape[-1]
    grid = math.isqrt(state["pos_embed"].shape[1] - 1)
    reg = state["register_tokens"].shape[1] if "register_tokens" in state else 0
    mlp_ratio = state["blocks.0.mlp.fc1.weight"].shape[0] / dim
    has_ls = "blocks.0.ls1.gamma" in state
    # the official hub models resample their position table differently with and without registers
    # (hubconf: interpolate_offset 0.1 / no antialias without, offset 0 / antialias with registers)
    config = BackboneConfig(
        arch=arch,
        patch_size=patch,
        img_size=grid * patch,
        reg_tokens=reg,
        layerscale=1.0 if has_ls else None,
        mlp_ratio=mlp_ratio,
        pos_interp_offset=0.0 if reg else 0.1,
        pos_interp_antialias=bool(reg),
    )
    model = build_backbone(config)
    mapped = {k: v for k, v in state.items() if k not in ("cls_token", "pos_embed", "register_tokens", "mask_token")}
    mapped["cls_token"] = state["cls_token"] + state["pos_embed"][:, :1]
    mapped["pos_embed"] = state["pos_embed"][:, 1:]
    if reg:
        mapped["reg_token"] = state["register_tokens"]
    mapped["mask_token"] = state.get("mask_token", model.mask_token.detach()).reshape(1, dim)
    _load_state(model, mapped, "DINOv2 backbone")
    return LoadedBackbone(model, config, "dinov2-official", {})


def _unchunk(key: str) -> str:
    # DINOv2 with block_chunks > 0 stores blocks.<chunk>.<global index>.<...>
    return re.sub(r"^blocks\.\d+\.(\d+)\.", r"blocks.\1.", key) if re.match(r"^blocks\.\d+\.\d+\.", key) else key


def checkpoint_labels(paths: Sequence[str | Path]) -> list[str]:
    """Short unique names: ``runs/x/final.pt`` -> ``x``, ``runs/x/checkpoints/e10.pt`` -> ``x-e10``,
    a run folder -> its name, any other file -> its stem; repeats get ``-2``, ``-3``, ..."""
    labels = []
    for raw in paths:
        p = Path(raw)
        if p.is_dir():
            name = p.resolve().name
        elif p.parent.name == "checkpoints":
            name = f"{p.parent.parent.resolve().name}-{p.stem}"
        elif p.stem == "final":
            name = p.parent.resolve().name
        else:
            name = p.stem
        name = re.sub(r"[^A-Za-z0-9_.+-]+", "_", name) or "checkpoint"
        label, i = name, 2
        while label in labels:
            label, i = f"{name}-{i}", i + 1
        labels.append(label)
    return labels
