"""``fdbench pretrain``: DINOv2 (``--curriculum none``) or FastDINOv2 (``--curriculum two-stage``)."""

from __future__ import annotations

from pathlib import Path

import click

from fdbench.cli.common import absolute_data, config_option, echo


def _preset_names() -> list[str]:
    from pretrain.config import PRESETS

    return list(PRESETS)


@click.command("pretrain")
@click.option("--curriculum", default="two-stage", show_default=True,
              help="none (standard DINOv2), two-stage (FastDINOv2) or a curriculum FILE.yaml.")
@click.option("--preset", type=click.Choice(["auto", *_preset_names()]), default="auto", show_default=True,
              help="Recipe to start from: auto = cpu-tiny on CPU, gpu-small on CUDA.")
@click.option("--data", default=None,
              help="Dataset root (ImageFolder with train/ and val/, or cifar10:DIR ...) [default: embedded dataset].")
@click.option("--class-list", type=click.Path(dir_okay=False), default=None,
              help="File of class folder names to keep (e.g. ImageNet-100).")
@click.option("--arch", default=None, help="Backbone: vit_pico, vit_nano, vit_tiny, vit_small, vit_base, vit_large.")
@click.option("--patch-size", type=int, default=None, help="Patch size: 8, 14 or 16.")
@click.option("--epochs", type=int, default=None, help="Training epochs (all stages together).")
@click.option("--batch-size", type=int, default=None, help="Global batch size (split over DDP processes).")
@click.option("--prototypes", type=int, default=None, help="DINO/iBOT head prototypes (65536 in DINOv2).")
@click.option("--drop-path-rate", type=float, default=None, help="Student drop-path rate.")
@click.option("--warmup-epochs", type=float, default=None, help="Learning-rate warm-up epochs.")
@click.option("--global-size", type=int, default=None, help="Full-resolution global crop size (px).")
@click.option("--local-size", type=int, default=None, help="Full-resolution local crop size (px).")
@click.option("--n-local", type=int, default=None, help="Local crops per image.")
@click.option("--lr", "base_lr", type=float, default=None, help="Base lr at batch 1024 (scaled by sqrt(batch/1024)).")
@click.option("--centering", type=click.Choice(["centering", "sinkhorn_knopp"]), default=None,
              help="Teacher centring.")
@click.option("--stage1-fraction", type=float, default=None, help="Share of epochs in stage 1 [0.75].")
@click.option("--stage1-scale", type=float, default=None, help="Stage-1 crop sizes as a share of full size [0.5].")
@click.option("--stage1-global-size", type=int, default=None, help="Explicit stage-1 global crop size (px).")
@click.option("--stage1-local-size", type=int, default=None, help="Explicit stage-1 local crop size (px).")
@click.option("--noise-patching/--no-noise-patching", default=None,
              help="Gaussian noise patching [default: on in two-stage's last stage, off for none].")
@click.option("--noise-max-sigma", type=float, default=None, help="Noise patching's largest sigma [0.5].")
@click.option("--stage-restart/--no-stage-restart", default=None,
              help="At a stage switch reset AdamW and restart the schedules (the paper's code) "
                   "[default: no, one continuous schedule].")
@click.option("--eval-every", type=int, default=None, help="Epochs between kNN evaluations (0: only at the end).")
@click.option("--log-every", type=int, default=None, help="Iterations between metrics.csv rows.")
@click.option("--save-every-steps", type=int, default=None, help="Also checkpoint every N iterations.")
@click.option("--keep-every-epochs", type=int, default=None,
              help="Keep checkpoints/epoch_XXXX.pt every N epochs (0: only last.pt).")
@click.option("--workers", type=int, default=None, help="DataLoader worker processes [min(8, cores - 1)].")
@click.option("--threads", type=int, default=None,
              help="CPU intra-op threads [torch's default]; 1 is often faster on a busy shared machine.")
@click.option("--data-pipeline", type=click.Choice(["auto", "cpu", "gpu"]), default=None,
              help="Where the crops are made: cpu = DataLoader workers decode and augment; gpu = workers only "
                   "decode, the whole batch is augmented on the training device (runs on --device cpu too); "
                   "auto = gpu on CUDA, cpu otherwise [auto].")
@click.option("--compile/--no-compile", default=None,
              help="torch.compile the student and teacher backbones [on with CUDA, off on CPU].")
@click.option("--device", default="auto", show_default=True, help="auto (CUDA when present), cpu, cuda or cuda:N.")
@click.option("--seed", type=int, default=None, help="Random seed [0].")
@click.option("--out", type=click.Path(file_okay=False, path_type=Path), default=None,
              help="Run folder [default: runs/<curriculum>].")
@click.option("--resume", is_flag=True,
              help="Insist on continuing the run in --out (re-running the same command continues it anyway).")
@config_option
def pretrain(curriculum, preset, resume, **options):
    """Pretrain a ViT with DINOv2, with or without the FastDINOv2 curriculum.

    \b
    fdbench pretrain --curriculum two-stage          # embedded dataset, cpu-tiny on a CPU
    fdbench pretrain --curriculum none               # the DINOv2 baseline, same recipe
    fdbench pretrain --curriculum two-stage --preset vit-s-in100 --data /imagenet --class-list in100.txt
    fdbench pretrain --data-pipeline gpu --compile   # crops on the GPU, compiled step (the CUDA default)
    torchrun --nproc-per-node 4 -m fdbench pretrain ...   # data-parallel
    """
    from pretrain.config import build_config
    from pretrain.engine import train

    options["data"] = absolute_data(options.get("data"))   # stored resolved: resumes/evals from any folder
    cfg = build_config(None if preset == "auto" else preset, curriculum=curriculum, **options)
    echo(f"pretrain: curriculum {cfg.curriculum.name}, preset {cfg.preset}, {cfg.model.arch}/{cfg.model.patch_size}, "
         f"{cfg.run.epochs} epochs, batch {cfg.run.batch_size}, data {cfg.data.root or 'embedded synthetic'}")
    result = train(cfg, resume=resume, log=echo)
    if not result.finished:
        echo(f"stopped early; re-run the same command to continue {result.out}")
        return
    _print_report(result)
    click.echo(str(result.final))


def _print_report(result) -> None:
    s = result.summary
    for st in s.get("stages", []):
        gflops = st["flops_per_image"] / 1e9 if st.get("flops_per_image") else float("nan")
        echo(f"  stage {st['name']:<8} epochs {st['start_epoch']}-{st['end_epoch'] - 1}  "
             f"{st['global_size']}/{st['local_size']} px  {st['wall_clock_s']:.1f} s  {st['img_per_s']:.0f} img/s  "
             f"{1000 * st['step_time_s']:.0f} ms/step  {st['peak_memory_bytes'] / 2**20:.0f} MiB  "
             f"{gflops:.3f} GFLOPs/img")
    flops = s.get("flops") or {}
    if flops:
        echo(f"  training FLOPs {flops['total_flops'] / 1e12:.2f} TFLOPs; the same schedule as `none`: "
             f"{flops['none_total_flops'] / 1e12:.2f} TFLOPs (ratio {flops['flops_ratio_vs_none']:.2f}x)")
    knn = s.get("knn", {})
    if knn.get("final_top1") is not None:
        echo(f"  final kNN top-1 {100 * knn['final_top1']:.1f}% (k={knn['k']}, T={knn['temperature']})")
    echo(f"checkpoint: {result.final}")
    echo(f"metrics:    {result.metrics}  (per-stage costs: {result.out / 'costs.csv'})")
    echo(f"summary:    {result.summary_path}")
    echo(f"next:       fdbench eval-corruptions {result.final}")
