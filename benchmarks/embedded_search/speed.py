"""Seconds for 30 pretraining steps of a candidate config: python speed.py DATA OUT PIPELINE [dotted=value ...]"""

import sys
import time

import torch

from pretrain.config import preset
from pretrain.engine import train

torch.set_num_threads(2)
cfg = preset("cpu-tiny")
cfg.curriculum.name = "none"
cfg.data.root, cfg.run.out = sys.argv[1], sys.argv[2]
cfg.run.eval_every, cfg.run.threads, cfg.run.device = 0, 2, "cpu"
cfg.crops.global_size, cfg.crops.local_size, cfg.run.stop_after_steps = 32, 16, 30
cfg.data.pipeline = sys.argv[3]
for kv in sys.argv[4:]:
    k, v = kv.split("=")
    o = cfg
    *p, leaf = k.split(".")
    for q in p:
        o = getattr(o, q)
    setattr(o, leaf, type(getattr(o, leaf))(eval(v)))
t = time.time()
train(cfg)
print(sys.argv[3:], "30 steps", round(time.time() - t, 1))
