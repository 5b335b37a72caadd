#!/bin/bash
# first batch: v3 nuisances at 32 px, none curriculum; one change per row from the 32 px baseline
T="/work/main/.venv/bin/python benchmarks/embedded_search/trial.py"
B='--set crops.global_size=32 --set crops.local_size=16 --set run.epochs=16'
$T a1_32px_e16 --data '{"size":32}' $B
$T a2_32px_e16_proto1024 --data '{"size":32}' $B --set head.prototypes=1024 --set head.ibot_prototypes=1024
