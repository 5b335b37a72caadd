"""``fdbench export --format timm``: a folder that timm loads as it loads its own pretrained models.

::

    DIR/model.safetensors   the teacher backbone, timm's VisionTransformer key names
    DIR/config.json         architecture, num_classes 0, model_args, pretrained_cfg (timm's hub layout)
    DIR/README.md           a short model card: recipe, curriculum, data, FLOPs, evaluation numbers

Load it with either of::

    timm.create_model("local-dir:DIR", pretrained=True)
    timm.create_model(ARCH, pretrained=True, pretrained_cfg_overlay=dict(file="DIR/model.safetensors"),
                      num_classes=0, **config["model_args"])

How fdbench's :class:`~fdbench.models.MaskableViT` differs from timm's ``VisionTransformer``: it *is*
one (built with ``no_embed_class=True``, ``dynamic_img_size=True``, ``init_values`` = the LayerScale
init, ``reg_tokens``), so every key keeps its name; it adds ``mask_token`` (iBOT's training-only
input, dropped here) and resamples the position table by the checkpoint's own rule, which for
fdbench-trained models is timm's (antialiased bicubic to the target grid). ``model_args`` spells
out every architectural choice, so any registered ViT name rebuilds it; we name the closest one
(``vit_small_patch14_dinov2`` for a DINOv2 ViT-S/14, ``vit_small_patch16_224`` for a ViT-S/16, ...).
The official DINOv2 models without registers resample their table with an offset timm does not
have: at their stored size (``pretrained_cfg.input_size``) the features match, at other sizes they
differ slightly, which the card says.
"""

from __future__ import annotations

import json
from pathlib import Path

from fdbench.checkpoint import FORMAT, load_backbone
from fdbench.errors import FdbenchError
from fdbench.features import IMAGENET_MEAN, IMAGENET_STD
from fdbench.io import atomic_open, atomic_write_json, atomic_write_text
from fdbench.models import ARCHS, BackboneConfig

# fdbench arch -> timm's size word (pico and nano have no timm name: their model_args say it all)
_TIMM_SIZE = {"vit_pico": "tiny", "vit_nano": "tiny", "vit_tiny": "tiny", "vit_small": "small"}
_TIMM_SIZE |= {"vit_base": "base", "vit_large": "large"}


def timm_model_args(config: BackboneConfig) -> dict:
    """``timm.create_model`` keyword arguments that build exactly this backbone (without mask token)."""
    dim, depth, heads = ARCHS[config.arch]
    return {
        "img_size": config.img_size,
        "patch_size": config.patch_size,
        "embed_dim": dim,
        "depth": depth,
        "num_heads": heads,
        "mlp_ratio": config.mlp_ratio,
        "init_values": config.layerscale,
        "reg_tokens": config.reg_tokens,
        "no_embed_class": True,
        "dynamic_img_size": True,
        "global_pool": "token",  # model(x) = the final-norm class token, fdbench's embedding
    }


def timm_architecture(config: BackboneConfig) -> str:
    import timm

    size = _TIMM_SIZE[config.arch]
    reg = f"_reg{config.reg_tokens}" if config.reg_tokens else ""
    for name in (f"vit_{size}_patch{config.patch_size}{reg}_dinov2", f"vit_{size}_patch{config.patch_size}_224"):
        if timm.is_model(name):
            return name
    return f"vit_{size}_patch16_224"


def export_timm(checkpoint: str | Path, out_dir: str | Path) -> Path:
    """Write ``out_dir`` (created; existing files in it replaced); returns it."""
    from safetensors.torch import save

    loaded = load_backbone(checkpoint)
    out_dir = Path(out_dir)
    if out_dir.exists() and not out_dir.is_dir():
        raise FdbenchError(f"--out {out_dir} is a file; --format timm writes a folder")
    out_dir.mkdir(parents=True, exist_ok=True)
    config = loaded.config
    size = int((loaded.meta.get("data") or {}).get("image_size") or config.img_size)
    arch = timm_architecture(config)
    pretrained_cfg = {
        "architecture": arch,
        "input_size": [3, size, size],
        "fixed_input_size": False,
        "interpolation": "bicubic",
        "crop_pct": 224 / 256,  # fdbench's evaluation: resize the shorter side to size * 256/224, centre crop
        "crop_mode": "center",
        "mean": list(IMAGENET_MEAN),
        "std": list(IMAGENET_STD),
        "num_classes": 0,
    }
    timm_config = {
        "architecture": arch,
        "num_classes": 0,
        "num_features": config.embed_dim,
        "global_pool": "token",
        "model_args": timm_model_args(config),
        "pretrained_cfg": pretrained_cfg,
    }
    tensors = {k: v.detach().contiguous().cpu() for k, v in loaded.model.state_dict().items() if k != "mask_token"}
    # fdbench's own config rides in the metadata too: `fdbench eval-corruptions DIR/model.safetensors` works
    fdbench_config = {"format": FORMAT, "model": config.to_dict(), "source": loaded.source}
    fdbench_config |= {k: v for k, v in loaded.meta.items() if k in ("data", "curriculum", "epoch")}
    payload = save(tensors, metadata={"format": "pt", "fdbench_timm": json.dumps(fdbench_config)})
    with atomic_open(out_dir / "model.safetensors", "wb") as fh:
        fh.write(payload)
    atomic_write_json(out_dir / "config.json", timm_config)
    atomic_write_text(out_dir / "README.md", model_card(loaded, timm_config, Path(loaded.meta.get("path", checkpoint))))
    return out_dir


def _run_folder(path: Path) -> Path | None:
    for folder in (path.parent, path.parent.parent):  # RUN/final.pt or RUN/checkpoints/last.pt
        if (folder / "summary.json").is_file():
            return folder
    return None


def model_card(loaded, timm_config: dict, source: Path) -> str:
    """The card: what the backbone is, how to load it, and what the run beside it recorded."""
    c, meta = loaded.config, loaded.meta
    lines = [
        f"# {timm_config['architecture']} (fdbench export of {source.name})",
        "",
        f"Teacher backbone: {c.arch}/{c.patch_size}, {c.embed_dim}-d, {c.reg_tokens} register token(s), "
        f"LayerScale {c.layerscale}, stored at {c.img_size} px; source: {loaded.source}.",
        "",
        "```python",
        "import timm",
        'model = timm.create_model("local-dir:THIS_FOLDER", pretrained=True)  # model(x): [B, D] class token',
        "```",
        "",
    ]
    if meta.get("curriculum"):
        cur = meta["curriculum"]
        stages = ", ".join(
            f"{s.get('name', '?')} ({s.get('fraction', 0):.0%} of the epochs, "
            f"{s.get('global_size', '?')}/{s.get('local_size', '?')} px)"
            for s in cur.get("stages", [])
        )
        lines += [f"Curriculum: {cur.get('name', '?')}{': ' + stages if stages else ''}.", ""]
    if meta.get("data"):
        lines += [f"Data: {meta['data'].get('root')} at {meta['data'].get('image_size')} px.", ""]
    if c.pos_interp_offset:
        lines += [
            "Note: the original model resamples its position table with an offset timm lacks; features match "
            "timm's at the stored size, and differ slightly at other sizes.",
            "",
        ]
    run = _run_folder(source)
    if run is not None:
        summary = json.loads((run / "summary.json").read_text())
        lines += [
            "## Recipe and costs (from the run's summary.json)",
            "",
            f"- preset {summary.get('preset')}, {summary.get('epochs')} epochs, {summary.get('iterations')} "
            f"iterations, batch {summary.get('batch_size')}, {summary.get('world_size')} process(es)",
        ]
        flops = summary.get("flops") or {}
        if flops.get("total_flops"):
            lines.append(
                f"- training FLOPs {flops['total_flops'] / 1e12:.3g} TFLOPs "
                f"({flops.get('flops_ratio_vs_none', float('nan')):.2f}x fewer than the same schedule as `none`)"
            )
        knn = (summary.get("knn") or {}).get("final_top1")
        if knn is not None:
            lines.append(f"- online kNN top-1 {100 * knn:.1f}%")
        lines.append("")
        for results in sorted(run.glob("**/results.csv"))[:3]:
            lines += [f"Evaluation found beside the run: `{results.relative_to(run)}`", ""]
    return "\n".join(lines)
