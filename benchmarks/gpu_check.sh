#!/usr/bin/env bash
# One command for a GPU device session (issues 9 and 16): the CUDA tests, the training step's
# throughput with and without its data pipelines, MFU, stage memory, and two-stage vs none wall-clock,
# in under 8 minutes on one H100/H200.
#
#   bash benchmarks/gpu_check.sh                          # on the GPU machine; writes under $OUT
#   GPU_CHECK_REHEARSAL=1 bash benchmarks/gpu_check.sh    # CPU rehearsal: same steps, tiny settings
#
# Before the device run, build the wheel the device cannot download (it has no network) and carry it:
#   pip wheel --no-deps imagecorruptions-imaug -w .whl/      # .whl/ is git-ignored: run(carry=[".whl"])
# Only the torch backend's frost photos are needed from it (its own import needs scikit-image, OpenCV
# and numba; the reference-backend tests skip without them).
#
# Steps, each under its own time limit (60 + 25 + 150 + 120 + 2 x 55 s), all inside one overall budget
# (BUDGET seconds, 470 on the GPU), so one slow part cannot eat the others' time or run past the
# device's limit. A step cut short keeps what it finished (bench.csv is written after every cell).
# The compiles of the bench runs fill inductor's on-disk cache, which the pretrain runs then reuse.
# Knobs: BENCH_ARGS (e.g. "--no-compile" if compiles are too slow), TRAIN_EPOCHS (4), TRAIN_ARGS, BUDGET.
#   0. wheels in .whl/ installed to /tmp/site (--no-index); environment to env.txt;
#   1. the CUDA tests (pytest -m cuda: GPU pipeline, bench, engine incl. train steps under
#      torch.cuda.set_sync_debug_mode("error"), evaluation, corruptions on the device) -> tests.txt;
#   2. a JPEG dataset of realistic sizes (500x375 and 375x500, quality 90);
#   3. bench-train ViT-S/16, batch 128, stage 1 (112/48) and stage 2 (224/96), engine vs --reference:
#      model-only and end-to-end img/s, e2e share, speed-up, peak memory -> bench_vit_small.csv;
#   4. the same for ViT-B/16 (MFU at 224/96 and 112/48) -> bench_vit_base.csv;
#   5. fdbench pretrain two-stage vs none, ViT-S/16, same epochs, with the engine's CUDA defaults
#      (--data-pipeline gpu, --compile) -> train_two-stage.json, train_none.json;
#   6. summary.txt: every ratio of issue 16 Part 2 against its goal, from this run's files.
# Output ($OUT, 8 files): log.txt env.txt tests.txt bench_vit_small.csv bench_vit_base.csv
# train_two-stage.json train_none.json summary.txt
set -uo pipefail
cd "$(dirname "$0")/.."
OUT="${OUT:-$PWD/gpu_check_out}"
mkdir -p "$OUT"
LOG="$OUT/log.txt"
: > "$LOG"
export PYTHONUNBUFFERED=1 FDBENCH_PROGRESS=0 FDBENCH_CACHE=/tmp/fdbench-cache
START=$(date +%s)
say() { echo "[$(( $(date +%s) - START ))s] $*" | tee -a "$LOG"; }

REHEARSAL="${GPU_CHECK_REHEARSAL:-0}"
WORK=/tmp/fdbench-gpu-check
if [ "$REHEARSAL" = 1 ]; then
  # CPU, tiny model and data: every command, option and file of the GPU run, minutes not hours
  BUDGET=${BUDGET:-1500}; SCALE=4; DEVICE=cpu; WORK=/tmp/fdbench-gpu-check-rehearsal
  TRAIN_PER_CLASS=6; VAL_PER_CLASS=2; POOL=2; WORKERS=1
  ARCH_S=vit_pico; ARCH_B=vit_pico; PATCH=8
  BENCH=(--batch-size 8 --steps 2 --warmup 1 --global-size 32 --local-size 16 --prototypes 256 --hidden-dim 64
         --bottleneck-dim 32 --device cpu --no-compile)
  TRAIN=(--arch vit_pico --patch-size 8 --global-size 32 --local-size 16 --prototypes 256 --batch-size 8
         --epochs 2 --device cpu)
else
  BUDGET=${BUDGET:-470}; SCALE=1; DEVICE=cuda
  TRAIN_PER_CLASS=400; VAL_PER_CLASS=20; POOL=16; WORKERS=15
  ARCH_S=vit_small; ARCH_B=vit_base; PATCH=16
  BENCH=(--batch-size 128 --steps 12 --warmup 4 ${BENCH_ARGS:-})
  TRAIN=(--batch-size 128 --epochs ${TRAIN_EPOCHS:-4} ${TRAIN_ARGS:-})
fi
rm -rf "$WORK/bench_"* "$WORK/run_"*
mkdir -p "$WORK"
DATA="$WORK/jpeg"

# a step's time limit: what it asks (times SCALE in the rehearsal), never past the overall budget
limit() {
  local want=$(( $1 * SCALE )) left=$(( BUDGET - ($(date +%s) - START) ))
  [ "$left" -lt 10 ] && left=10
  echo $(( want < left ? want : left ))
}

# 0. environment: wheels carried in .whl/ (the device has torch, timm, pandas, ... but no network)
if compgen -G ".whl/*.whl" > /dev/null; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl \
    >> "$LOG" 2>&1 && export PYTHONPATH="/tmp/site${PYTHONPATH:+:$PYTHONPATH}"
  say "wheels installed rc=$?: $(ls .whl)"
else
  say "no .whl/ wheels: the frost corruption test will fail (build them: see the header)"
fi
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
{ date -u; nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.max.sm --format=csv 2>&1 | head -3; nproc
  python3 -c "import torch, torchvision, timm; print('torch', torch.__version__, 'torchvision', torchvision.__version__, 'timm', timm.__version__, torch.cuda.get_device_name() if torch.cuda.is_available() else 'no cuda')"
  python3 -c "import importlib.util as u; print('imagecorruptions photos:', bool(u.find_spec('imagecorruptions')))"
} > "$OUT/env.txt" 2>&1
cat "$OUT/env.txt" >> "$LOG"
if [ "$REHEARSAL" != 1 ] && ! python3 -c "import torch, sys; sys.exit(0 if torch.cuda.is_available() else 1)"; then
  say "no CUDA device: stop (use GPU_CHECK_REHEARSAL=1 on a CPU)"; exit 1
fi

# 1. CUDA tests (marked cuda; they skip on CPU, so in the rehearsal they check the selection only)
say "cuda tests (limit $(limit 60)s)"
timeout "$(limit 60)" python3 -m pytest -q -p no:cacheprovider -rs -m cuda tests/ > "$OUT/tests.txt" 2>&1
say "cuda tests rc=$? ($(tail -1 "$OUT/tests.txt"))"

# 2. JPEG dataset: 10 classes, smooth colour fields + texture, two orientations
say "dataset -> $DATA (limit $(limit 25)s)"
timeout "$(limit 25)" python3 - "$DATA" "$TRAIN_PER_CLASS" "$VAL_PER_CLASS" "$POOL" >> "$LOG" 2>&1 <<'EOF'
import sys
from multiprocessing import Pool
from pathlib import Path

import numpy as np
from PIL import Image

root, n_train, n_val, pool = Path(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4])

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

jobs = [(s, c, i) for s, n in (("train", n_train), ("val", n_val)) for c in range(10) for i in range(n)]
for s in ("train", "val"):
    for c in range(10):
        (root / s / f"c{c:02d}").mkdir(parents=True, exist_ok=True)
with Pool(pool) as p:
    p.map(make, jobs, chunksize=32)
print(f"{len(jobs)} JPEGs under {root}")
EOF
say "dataset rc=$?"

# 3-4. bench-train: the engine's step (compiled, GPU pipeline) vs --reference (eager, CPU pipeline)
: > "$WORK/bench_summary.txt"
for job in "vit_small:$ARCH_S:150" "vit_base:$ARCH_B:120"; do
  IFS=: read -r name arch want <<< "$job"
  say "bench-train $arch as $name (limit $(limit $want)s)"
  timeout "$(limit $want)" python3 -m fdbench bench-train --arch "$arch" --patch-size "$PATCH" "${BENCH[@]}" \
    --data "$DATA" --workers "$WORKERS" --reference --out "$WORK/bench_$name" 2>> "$LOG" | tee -a "$WORK/bench_summary.txt" >> "$LOG"
  say "bench-train $name rc=$?"
  cp "$WORK/bench_$name/bench.csv" "$OUT/bench_$name.csv" 2>/dev/null || say "no bench.csv for $name"
done

# 5. the engine's wall-clock: two-stage vs none at equal epochs (log every 5 steps: compile time split off)
for cur in two-stage none; do
  say "pretrain $cur (limit $(limit 55)s)"
  timeout "$(limit 55)" python3 -m fdbench pretrain --curriculum "$cur" --preset vit-s-in100 --data "$DATA" "${TRAIN[@]}" \
    --eval-every 0 --log-every 5 --workers "$WORKERS" --out "$WORK/run_$cur" >> "$LOG" 2>&1
  say "pretrain $cur rc=$?"
  cp "$WORK/run_$cur/summary.json" "$OUT/train_$cur.json" 2>/dev/null || say "no summary.json for $cur"
done

# 6. every ratio of issue 16 Part 2 against its goal
timeout 60 python3 benchmarks/gpu_summary.py "$OUT" "$WORK" > "$OUT/summary.txt" 2>> "$LOG"
say "summary rc=$?"
cat "$OUT/summary.txt" | tee -a "$LOG"
say "done in $(( $(date +%s) - START ))s (budget ${BUDGET}s)"
