"""``fdbench make-corruptions``: write an ImageNet-C style dataset from an ImageFolder.

Layout: ``OUT/<corruption>/<severity>/<class>/<file>``, plus ``OUT/manifest.csv`` (file, corruption,
severity, seed, source). Default preprocessing is ImageNet-C's: Resize(256) (shorter side, bilinear
as torchvision's default) -> CenterCrop(224) -> corrupt -> JPEG quality 85.

Determinism and resuming: the images are split into fixed batches [k B, (k + 1) B) of the sorted file
list; batch k of corruption c at severity s is corrupted with the seed
``hash(seed, c, s, k)`` (the manifest's ``seed`` column). A batch whose files all exist and decode
is skipped, so an interrupted run resumes where it stopped and produces the same files as an
uninterrupted one (for the same batch size, backend and device). Every file is written atomically;
"exists" means present with intact start and end markers (see ``_valid``).
"""

from __future__ import annotations

import csv
import hashlib
import io
import os
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from fdbench.errors import FdbenchError
from fdbench.io import atomic_open, atomic_write_text, progress

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".ppm", ".bmp", ".pgm", ".tif", ".tiff", ".webp")
FORMATS = ("jpeg", "png")


@dataclass
class WriterConfig:
    corruptions: list[str] = field(default_factory=list)  # empty: all 19
    severities: tuple[int, ...] = (1, 2, 3, 4, 5)
    backend: str = "torch"
    device: str = "cpu"
    batch_size: int = 64
    workers: int = 2
    resize: bool = True  # Resize(256) + CenterCrop(224); False keeps the source size
    resize_to: int = 256
    crop: int = 224
    format: str = "jpeg"
    quality: int = 85
    params: str = "auto"
    seed: int = 0


def scan_folder(src: str | Path) -> tuple[list[tuple[Path, str]], list[str]]:
    """Sorted (file, class) pairs of ``src/<class>/<image>`` and the sorted class names."""
    src = Path(src)
    if not src.is_dir():
        raise FdbenchError(f"source folder not found: {src}")
    classes = sorted(d.name for d in src.iterdir() if d.is_dir() and not d.name.startswith("."))
    files = [
        (p, c)
        for c in classes
        for p in sorted((src / c).iterdir())
        if p.suffix.lower() in IMAGE_SUFFIXES and not p.name.startswith(".")
    ]
    if not files:
        hint = " (point SRC at the split folder, e.g. DATA/val)" if (src / "val").is_dir() else ""
        raise FdbenchError(f"no images found in {src}; expected SRC/<class>/<image> files{hint}")
    return files, classes


class _Source(torch.utils.data.Dataset):
    """Decoded, preprocessed uint8 [3, H, W] images (ImageNet-C preprocessing when ``resize``)."""

    def __init__(self, files, cfg: WriterConfig):
        self.files, self.cfg = files, cfg

    def __len__(self):
        return len(self.files)

    def __getitem__(self, i):
        from PIL import Image

        path = self.files[i][0]
        try:
            with Image.open(path) as im:
                im = im.convert("RGB")
        except Exception as err:  # noqa: BLE001 - report which file, not a traceback from a worker
            raise FdbenchError(f"cannot decode {path}: {err}") from None
        if self.cfg.resize:
            w, h = im.size
            s = self.cfg.resize_to / min(w, h)
            im = im.resize(
                (max(self.cfg.resize_to, round(w * s)), max(self.cfg.resize_to, round(h * s))), Image.BILINEAR
            )
            w, h = im.size
            c = self.cfg.crop
            left, top = int(round((w - c) / 2.0)), int(round((h - c) / 2.0))
            im = im.crop((left, top, left + c, top + c))
        arr = np.asarray(im, dtype=np.uint8)
        if min(arr.shape[:2]) < 32:
            raise FdbenchError(f"{path} is {arr.shape[1]} x {arr.shape[0]} px; corruptions need at least 32 px")
        return i, torch.from_numpy(arr.copy()).permute(2, 0, 1)


def _collate(items):
    return items


def batch_seed(seed: int, corruption: str, severity: int, batch: int) -> int:
    """Seed of one batch: the first 8 bytes of sha256("seed/corruption/severity/batch")."""
    digest = hashlib.sha256(f"{seed}/{corruption}/{severity}/{batch}".encode()).digest()
    return int.from_bytes(digest[:8], "little") & (2**63 - 1)


def output_name(src: Path, fmt: str) -> str:
    """Keep the source file name when it already has the output format's suffix (ImageNet-C keeps
    ``ILSVRC2012_val_*.JPEG``), otherwise swap the suffix."""
    if fmt == "jpeg":
        return src.name if src.suffix.lower() in (".jpg", ".jpeg") else src.stem + ".jpg"
    return src.stem + ".png"


_MAGIC = {".png": (b"\x89PNG\r\n\x1a\n", b"IEND\xaeB`\x82")}
_JPEG = (b"\xff\xd8\xff", b"\xff\xd9")


def _valid(path: Path) -> bool:
    """A finished image file: present, with the format's start and end markers.

    Writes are atomic, so a crash never leaves a partial file under the final name; this cheap check
    (two small reads, no decoding: a resume may look at millions of files) catches files damaged or
    replaced later.
    """
    head, tail = _MAGIC.get(path.suffix.lower(), _JPEG)
    try:
        with open(path, "rb") as fh:
            if fh.read(len(head)) != head:
                return False
            fh.seek(0, os.SEEK_END)
            if fh.tell() < len(head) + len(tail):
                return False
            fh.seek(-len(tail), os.SEEK_END)
            return fh.read(len(tail)) == tail
    except OSError:
        return False


def _encode(arr: np.ndarray, path: Path, fmt: str, quality: int) -> None:
    from PIL import Image

    with atomic_open(path, "wb") as fh:
        if fmt == "jpeg":
            Image.fromarray(arr).save(fh, format="JPEG", quality=quality, optimize=True)
        else:
            Image.fromarray(arr).save(fh, format="PNG")


def _check(cfg: WriterConfig) -> list[str]:
    from corruptions.registry import ALL, BACKENDS, check_name, check_severity

    names = list(cfg.corruptions) or list(ALL)
    for n in names:
        check_name(n)
    if not cfg.severities:
        raise FdbenchError("no severities given; valid: 1-5")
    for s in cfg.severities:
        check_severity(s)
    if cfg.format not in FORMATS:
        raise FdbenchError(f"unknown format {cfg.format!r}; valid: {', '.join(FORMATS)}")
    if cfg.backend not in BACKENDS:
        raise FdbenchError(f"unknown backend {cfg.backend!r}; valid: {', '.join(BACKENDS)}")
    if cfg.batch_size < 1:
        raise FdbenchError(f"batch size must be >= 1, got {cfg.batch_size}")
    if not 1 <= cfg.quality <= 100:
        raise FdbenchError(f"JPEG quality must be in 1-100, got {cfg.quality}")
    if cfg.resize and cfg.crop > cfg.resize_to:
        raise FdbenchError(f"crop {cfg.crop} is larger than the resize {cfg.resize_to}")
    if cfg.workers < 0:
        raise FdbenchError(f"--workers must be >= 0, got {cfg.workers}")
    from corruptions.params import resolve_table

    resolve_table(cfg.params, cfg.crop, cfg.crop)  # a bad name up front, not when the first image needs it
    return names


@dataclass
class WriteSummary:
    out: Path
    images: int
    written: int
    skipped: int
    seconds: float
    manifest: Path

    @property
    def images_per_second(self) -> float:
        return self.written / self.seconds if self.seconds > 0 else float("nan")


def write_corruptions(src: str | Path, out: str | Path, cfg: WriterConfig | None = None) -> WriteSummary:
    """Write ``OUT/<corruption>/<severity>/<class>/<file>`` for every source image, corruption and
    severity of ``cfg``; returns counts and timing. Resumable; see the module docstring."""
    from corruptions.registry import corrupt

    cfg = cfg or WriterConfig()
    names = _check(cfg)
    files, _classes = scan_folder(src)
    out = Path(out)
    device = torch.device(cfg.device)
    nb = (len(files) + cfg.batch_size - 1) // cfg.batch_size
    jobs = [(n, s) for n in names for s in cfg.severities]
    _check_name_clashes(files, cfg.format)
    rows: list[list] = []
    targets = {}
    for n, s in jobs:
        for i, (path, cls) in enumerate(files):
            rel = Path(n) / str(s) / cls / output_name(path, cfg.format)
            targets[(n, s, i)] = rel
            rows.append([rel.as_posix(), n, s, batch_seed(cfg.seed, n, s, i // cfg.batch_size), path.as_posix()])
    # which (batch, corruption, severity) still have work: checked up front so the bar is honest
    todo = {}
    for b in range(nb):
        idx = range(b * cfg.batch_size, min((b + 1) * cfg.batch_size, len(files)))
        todo[b] = [(n, s) for n, s in jobs if not all(_valid(out / targets[(n, s, i)]) for i in idx)]
    total = sum(
        len(v) * len(range(b * cfg.batch_size, min((b + 1) * cfg.batch_size, len(files)))) for b, v in todo.items()
    )
    skipped = len(files) * len(jobs) - total
    written = 0
    start = time.perf_counter()
    batches = [b for b in range(nb) if todo[b]]
    subset = torch.utils.data.Subset(
        _Source(files, cfg),
        [i for b in batches for i in range(b * cfg.batch_size, min((b + 1) * cfg.batch_size, len(files)))],
    )
    loader = torch.utils.data.DataLoader(
        subset, batch_size=cfg.batch_size, shuffle=False, num_workers=cfg.workers, collate_fn=_collate
    )
    bar = progress(total=total, desc="make-corruptions", unit="img")
    with ThreadPoolExecutor(max_workers=max(1, cfg.workers)) as pool:
        for items in loader:
            b = items[0][0] // cfg.batch_size
            indices = [i for i, _ in items]
            for n, s in todo[b]:
                outs: list[np.ndarray] = [None] * len(items)  # type: ignore[list-item]
                gen = torch.Generator(device=device if cfg.backend == "torch" else "cpu")
                gen.manual_seed(batch_seed(cfg.seed, n, s, b))
                for group in _same_size_groups([t for _, t in items]):
                    x = torch.stack([items[k][1] for k in group]).to(device)
                    y = corrupt(x, n, s, backend=cfg.backend, generator=gen, params=cfg.params)
                    y = y.permute(0, 2, 3, 1).cpu().numpy()
                    for j, k in enumerate(group):
                        outs[k] = y[j]
                futures = [
                    pool.submit(_encode, outs[k], out / targets[(n, s, i)], cfg.format, cfg.quality)
                    for k, i in enumerate(indices)
                ]
                for f in futures:
                    f.result()
                written += len(items)
                bar.update(len(items))
    bar.close()
    seconds = time.perf_counter() - start
    manifest = out / "manifest.csv"
    # the csv module quotes what needs it (a comma or a quote in a class or file name, in either column)
    text = io.StringIO()
    writer = csv.writer(text, lineterminator="\n")
    writer.writerow(["file", "corruption", "severity", "seed", "source"])
    writer.writerows(rows)
    atomic_write_text(manifest, text.getvalue())
    return WriteSummary(
        out=out, images=len(files), written=written, skipped=skipped, seconds=seconds, manifest=manifest
    )


def _check_name_clashes(files: list[tuple[Path, str]], fmt: str) -> None:
    """``x.png`` and ``x.tif`` in one class would both become ``x.jpg``: one image silently lost."""
    seen: dict[tuple[str, str], Path] = {}
    for path, cls in files:
        key = (cls, output_name(path, fmt))
        if key in seen:
            raise FdbenchError(
                f"{seen[key]} and {path} would both be written as {cls}/{output_name(path, fmt)}; rename one of them"
            )
        seen[key] = path


def _same_size_groups(tensors: list[torch.Tensor]) -> list[list[int]]:
    """Indices grouped by image size (all one group with the default crop), order kept within groups."""
    groups: dict[tuple, list[int]] = {}
    for k, t in enumerate(tensors):
        groups.setdefault(tuple(t.shape), []).append(k)
    return list(groups.values())


def preview_grid(
    image: torch.Tensor,
    names: list[str],
    severities=(1, 2, 3, 4, 5),
    *,
    backend: str = "torch",
    seed: int = 0,
    params: str = "auto",
    device: str = "cpu",
    cell: int = 128,
):
    """A PIL image: one row per corruption, columns clean + each severity, labelled."""
    from PIL import Image, ImageDraw

    from corruptions.registry import corrupt

    label_w, head_h = 150, 22
    cols = 1 + len(severities)
    grid = Image.new("RGB", (label_w + cols * cell, head_h + len(names) * cell), "white")
    draw = ImageDraw.Draw(grid)

    def tile(t: torch.Tensor) -> Image.Image:
        return Image.fromarray(t.permute(1, 2, 0).cpu().numpy()).resize((cell, cell), Image.BILINEAR)

    for j, title in enumerate(["clean"] + [f"severity {s}" for s in severities]):
        draw.text((label_w + j * cell + 6, 5), title, fill="black")
    x = image[None].to(device)
    for r, n in enumerate(names):
        y0 = head_h + r * cell
        draw.text((6, y0 + cell // 2 - 6), n, fill="black")
        grid.paste(tile(image), (label_w, y0))
        for j, s in enumerate(severities):
            y = corrupt(x, n, s, backend=backend, generator=seed, params=params)[0]
            grid.paste(tile(y), (label_w + (j + 1) * cell, y0))
    return grid


def write_preview(src: str | Path, out: str | Path, cfg: WriterConfig | None = None, *, index: int = 0) -> list[Path]:
    """Write ``OUT/preview.png`` and ``OUT/preview.pdf``: source image ``index`` across all chosen
    corruptions and severities (after the same preprocessing as the dataset)."""
    cfg = cfg or WriterConfig()
    names = _check(cfg)
    files, _ = scan_folder(src)
    if not 0 <= index < len(files):
        raise FdbenchError(f"preview index {index} out of range; the source has {len(files)} images")
    _, image = _Source(files, cfg)[index]
    grid = preview_grid(
        image, names, cfg.severities, backend=cfg.backend, seed=cfg.seed, params=cfg.params, device=cfg.device
    )
    paths = []
    for ext, fmt in (("png", "PNG"), ("pdf", "PDF")):
        path = Path(out) / f"preview.{ext}"
        with atomic_open(path, "wb") as fh:
            grid.save(fh, format=fmt)
        paths.append(path)
    return paths
