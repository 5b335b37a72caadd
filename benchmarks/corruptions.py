"""Speed of the corruption backends at 224 px: reference (numpy, one image at a time, one core),
torch on CPU (one column per thread count of ``--threads``) and torch on CUDA (when present), side
by side in one run, per corruption and overall.

    python benchmarks/corruptions.py --images 32 --batch-size 32 --threads 1,2 --out bench_corruptions

On CPU ``corrupt`` runs fixed chunks of 8 ImageNet-sized images on ``torch.get_num_threads()``
threads, so a batch needs at least 16 images for two threads to have work.

Per corruption the images/s are averaged over the chosen severities (total images / total time);
"all" is over every corruption x severity together (so slow corruptions weigh as they do when
generating a dataset). The table is printed and written as CSV.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from corruptions import corrupt, names  # noqa: E402
from corruptions.fidelity import default_images  # noqa: E402
from fdbench.io import atomic_write_csv, progress  # noqa: E402


def _time(fn, sync=None) -> float:
    if sync:
        sync()
    t = time.perf_counter()
    fn()
    if sync:
        sync()
    return time.perf_counter() - t


def run(n_images: int, batch_size: int, ref_images: int, severities, corruption_names, threads=None):
    import pandas as pd

    base = default_images(224)
    imgs = base.repeat((n_images + len(base) - 1) // len(base), 1, 1, 1)[:n_images].contiguous()
    thread_counts = list(threads or [torch.get_num_threads()])
    try:  # the reference's OpenCV calls would otherwise use every core: it is timed on one
        import cv2

        cv2.setNumThreads(1)
    except ImportError:
        pass
    cpu = [(f"torch-cpu-{t}t", "cpu", t) for t in thread_counts]
    backends = [("reference", "cpu", 1)] + cpu
    if torch.cuda.is_available():
        backends.append(("torch-cuda", "cuda", torch.get_num_threads()))
    rows = []
    cells = [(n, s) for n in corruption_names for s in severities]
    for n, s in progress(cells, desc="bench", unit="cell"):
        for label, dev, nthreads in backends:
            torch.set_num_threads(nthreads)
            if label == "reference":
                x = imgs[:ref_images]
                corrupt(x[:1], n, s, backend="reference", generator=0)  # warm-up (numba JIT for glass blur)
                secs = _time(lambda: corrupt(x, n, s, backend="reference", generator=0))
                count = x.shape[0]
            else:
                x = imgs.to(dev)
                sync = torch.cuda.synchronize if dev == "cuda" else None
                corrupt(x[:batch_size], n, s, generator=0)  # warm-up: caches, kernels, frost pictures
                secs = 0.0
                for i in range(0, x.shape[0], batch_size):
                    secs += _time(lambda: corrupt(x[i : i + batch_size], n, s, generator=i), sync)
                count = x.shape[0]
            rows.append({"backend": label, "corruption": n, "severity": s, "images": count, "seconds": secs})
    long = pd.DataFrame(rows)
    per = long.groupby(["corruption", "backend"], sort=False)[["images", "seconds"]].sum()
    per["img_per_s"] = per["images"] / per["seconds"]
    table = per["img_per_s"].unstack("backend").reindex(corruption_names)
    tot = long.groupby("backend")[["images", "seconds"]].sum()
    table.loc["all"] = tot["images"] / tot["seconds"]
    for label, _, _ in backends[1:]:
        table[f"{label}_speedup"] = table[label] / table["reference"]
    table = table.reset_index().rename(columns={"index": "corruption"})
    return long, table


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--images", type=int, default=32, help="Images per cell for the torch backends.")
    ap.add_argument("--ref-images", type=int, default=4, help="Images per cell for the (slow) reference.")
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--severities", default="1,2,3,4,5")
    ap.add_argument("--corruptions", default="all")
    ap.add_argument(
        "--threads", default=None, help="torch CPU thread counts, comma-separated, e.g. 1,2 (default: torch's choice)."
    )
    ap.add_argument("--out", type=Path, default=Path("bench_corruptions"))
    args = ap.parse_args(argv)
    sev = tuple(int(v) for v in args.severities.split(","))
    threads = [int(t) for t in args.threads.split(",")] if args.threads else None
    long, table = run(args.images, args.batch_size, args.ref_images, sev, names(args.corruptions), threads)
    atomic_write_csv(args.out / "corruptions_bench_cells.csv", long)
    atomic_write_csv(args.out / "corruptions_bench.csv", table)
    import pandas as pd

    with pd.option_context("display.width", 200, "display.max_columns", 20):
        load = os.getloadavg() if hasattr(os, "getloadavg") else (float("nan"),) * 3
        print(
            f"images/s at 224 px (reference: one image at a time, one thread; load average after the run: "
            f"{load[0]:.2f} {load[1]:.2f} {load[2]:.2f} on {os.cpu_count()} CPUs)"
        )
        print(table.to_string(index=False, float_format=lambda v: f"{v:.1f}"))
    print(f"written: {args.out / 'corruptions_bench.csv'}", file=sys.stderr)


if __name__ == "__main__":
    main()
