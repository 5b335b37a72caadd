#!/bin/bash
# third batch: v3 with soft edges (edge_blur 1.2): floors at 32 px, then cpu-tiny with only the crop sizes
# moved to the 32 px data (global 32, local 16), the same 4 epochs x 47 steps of batch 64
T="/work/main/.venv/bin/python benchmarks/embedded_search/trial.py"
$T c0_floors_32_soft --data '{"size":32}' --floors-only
$T c1_32px_cputiny --data '{"size":32}' --set crops.global_size=32 --set crops.local_size=16
