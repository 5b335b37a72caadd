"""The FastDINOv2 / DINOv2 pretraining engine.

Building blocks (each a small module with one job): ``losses`` (DINO, iBOT, KoLeo), ``heads`` (DINO
projection head), ``masking`` (BEiT block-wise masks), ``schedules`` (cosine schedules, parameter
groups with layer-wise lr decay), ``augment`` (multi-crop + Gaussian noise patching) and
``curriculum`` (training stages as data). The engine (model wrapper, loop, costs, CLI glue) sits on
top of them.

This ``__init__`` deliberately imports nothing: ``import pretrain.masking`` must not pull in the
engine, and ``fdbench``'s core never imports this package.
"""
