"""The FastDINOv2 / DINOv2 pretraining engine.

Building blocks (each a small module with one job): ``losses`` (DINO, iBOT, KoLeo), ``heads`` (DINO
projection head), ``masking`` (BEiT block-wise masks), ``schedules`` (cosine schedules, parameter
groups with layer-wise lr decay), ``augment`` (multi-crop + Gaussian noise patching) and
``curriculum`` (training stages as data). For speed: ``decode`` + ``gpu_augment`` (the multi-crop
batched on the device), ``pipeline`` (the cpu and gpu data pipelines behind one per-stage interface)
and ``fast_step`` (compiled backbones, chunked cross-entropies). The engine (model wrapper, loop,
costs, CLI glue) sits on top of them; ``bench`` times the engine's own step and pipelines.

This ``__init__`` deliberately imports nothing: ``import pretrain.masking`` must not pull in the
engine, and ``fdbench``'s core never imports this package.
"""
