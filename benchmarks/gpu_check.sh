#!/usr/bin/env bash
# One command for a GPU device session (issue 9): throughput of the training step and its data
# pipelines, and a short two-stage vs none training comparison, in under 8 minutes on one H100.
#
#   bash benchmarks/gpu_check.sh            # writes everything under $OUT (default: ./gpu_check_out)
#
# Steps (each under its own time limit, so one slow part cannot eat the others' time):
#   0. wheels carried in .whl/ are installed to /tmp/site (the device has torch, timm, pandas, ...);
#   1. the CUDA-only tests of the GPU pipeline, the bench and the engine;
#   2. a JPEG dataset of realistic sizes (500x375 and 375x500, quality 90), 16 processes;
#   3. bench-train ViT-S/16, batch 128, stage 1 (112/48) and stage 2 (224/96), fast vs --reference;
#   4. bench-train ViT-B/16, same, fast vs --reference (compile off if time is short: see BENCH_B_ARGS);
#   5. fdbench pretrain two-stage vs none, ViT-S/16, same epochs, about a minute each, with the
#      engine's CUDA defaults (--data-pipeline gpu, --compile: wall-clock includes the compiles).
# Output ($OUT, at most 8 files): log.txt, env.txt, bench_vit_small.csv, bench_vit_base.csv,
# bench_summary.txt, train_two-stage.json, train_none.json.
set -uo pipefail
cd "$(dirname "$0")/.."
OUT="${OUT:-$PWD/gpu_check_out}"
mkdir -p "$OUT"
LOG="$OUT/log.txt"
export PYTHONUNBUFFERED=1 FDBENCH_PROGRESS=0 FDBENCH_CACHE=/tmp/fdbench-cache
START=$(date +%s)
say() { echo "[$(( $(date +%s) - START ))s] $*" | tee -a "$LOG"; }

# 0. environment
if compgen -G ".whl/*.whl" > /dev/null; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl \
    >> "$LOG" 2>&1 && export PYTHONPATH="/tmp/site${PYTHONPATH:+:$PYTHONPATH}"
fi
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
{ nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.max.sm --format=csv; nproc;
  python3 -c "import torch, torchvision, timm; print('torch', torch.__version__, 'torchvision', torchvision.__version__, 'timm', timm.__version__, torch.cuda.get_device_name())"; } \
  > "$OUT/env.txt" 2>&1
cat "$OUT/env.txt" >> "$LOG"

# 1. CUDA-only tests (skipped on CPU machines, so they only ever run here)
say "cuda tests"
timeout 90 python3 -m pytest -q -p no:cacheprovider tests/test_gpu_augment.py tests/test_bench.py tests/test_engine.py -m cuda >> "$LOG" 2>&1
say "cuda tests rc=$?"

# 2. JPEG dataset: 10 classes x 400 train + 20 val, smooth colour fields + texture, two orientations
DATA=/tmp/fdbench-jpeg
say "dataset -> $DATA"
timeout 120 python3 - "$DATA" >> "$LOG" 2>&1 <<'EOF'
import sys
from multiprocessing import Pool
from pathlib import Path

import numpy as np
from PIL import Image

root = Path(sys.argv[1])

def make(job):
    split, cls, i = job
    path = root / split / f"c{cls:02d}" / f"{i:05d}.jpg"
    if path.exists():
        return
    rng = np.random.default_rng(cls * 100_000 + i + (0 if split == "train" else 50_000))
    w, h = (500, 375) if i % 3 else (375, 500)
    low = rng.random((6, 8, 3)) * 255
    img = Image.fromarray(low.astype(np.uint8)).resize((w, h), Image.BICUBIC)
    arr = np.asarray(img, dtype=np.float32) + rng.normal(0, 12 + 3 * cls, (h, w, 3))
    Image.fromarray(arr.clip(0, 255).astype(np.uint8)).save(path, quality=90)

jobs = [(s, c, i) for s, n in (("train", 400), ("val", 20)) for c in range(10) for i in range(n)]
for s in ("train", "val"):
    for c in range(10):
        (root / s / f"c{c:02d}").mkdir(parents=True, exist_ok=True)
with Pool(16) as pool:
    pool.map(make, jobs, chunksize=32)
print(f"{len(jobs)} JPEGs under {root}")
EOF
say "dataset rc=$?"

# 3-4. bench-train, fast (compiled + GPU pipeline) vs reference (eager + CPU pipeline), side by side
COMMON=(--batch-size 128 --steps 20 --warmup 6 --data "$DATA" --workers 15 --reference)
for arch in vit_small vit_base; do
  limit=200; extra=(); [ "$arch" = vit_base ] && { limit=150; extra=(${BENCH_B_ARGS:-}); }
  say "bench-train $arch (limit ${limit}s)"
  timeout "$limit" python3 -m fdbench bench-train --arch "$arch" --patch-size 16 "${COMMON[@]}" "${extra[@]}" \
    --out "/tmp/bench_$arch" 2>> "$LOG" | tee -a "$OUT/bench_summary.txt"
  say "bench-train $arch rc=$?"
  cp "/tmp/bench_$arch/bench.csv" "$OUT/bench_$arch.csv" 2>/dev/null
done

# 5. the engine's wall-clock: two-stage vs none at equal epochs (about a minute each)
for cur in two-stage none; do
  say "pretrain $cur"
  timeout 75 python3 -m fdbench pretrain --curriculum "$cur" --preset vit-s-in100 --data "$DATA" --epochs 6 \
    --batch-size 128 --eval-every 0 --workers 15 --out "/tmp/run_$cur" >> "$LOG" 2>&1
  say "pretrain $cur rc=$?"
  cp "/tmp/run_$cur/summary.json" "$OUT/train_$cur.json" 2>/dev/null
done
python3 - "$OUT" >> "$OUT/bench_summary.txt" 2>&1 <<'EOF'
import json, sys
from pathlib import Path
out = Path(sys.argv[1])
runs = {c: json.loads((out / f"train_{c}.json").read_text()) for c in ("two-stage", "none") if (out / f"train_{c}.json").exists()}
for c, s in runs.items():
    print(f"pretrain {c}: wall_clock_s {s.get('wall_clock_s')}")
if len(runs) == 2 and runs["two-stage"].get("wall_clock_s"):
    print(f"two-stage speed-up over none: {runs['none']['wall_clock_s'] / runs['two-stage']['wall_clock_s']:.2f}x")
EOF
say "done"
