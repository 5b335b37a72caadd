#!/bin/bash
# second batch: cheaper steps (32 px, batch 32), 1024 prototypes, slower teacher
T="/work/main/.venv/bin/python benchmarks/embedded_search/trial.py"
B='--set crops.global_size=32 --set crops.local_size=16 --set run.batch_size=32 --set run.epochs=5 --set head.prototypes=1024 --set head.ibot_prototypes=1024 --set optim.momentum_teacher=0.99'
$T b1_32px_b32_e5_p1024_m99 --data '{"size":32}' $B
