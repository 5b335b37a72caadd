"""fdbench: robustness benchmarking with a bundled FastDINOv2 pretraining engine.

Kept deliberately light: importing ``fdbench`` (or ``fdbench.models``) pulls in no engine and no CLI.
"""

__version__ = "0.1.0"
