"""Names, groups and the one entry point ``corrupt``."""

from __future__ import annotations

import threading
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager

import torch

from fdbench.errors import FdbenchError

COMMON = (
    "gaussian_noise",
    "shot_noise",
    "impulse_noise",
    "defocus_blur",
    "glass_blur",
    "motion_blur",
    "zoom_blur",
    "snow",
    "frost",
    "fog",
    "brightness",
    "contrast",
    "elastic_transform",
    "pixelate",
    "jpeg_compression",
)
EXTRA = ("speckle_noise", "gaussian_blur", "spatter", "saturate")
ALL = COMMON + EXTRA

# The four ImageNet-C families of the common corruptions (Hendrycks & Dietterich 2019, Figure 1, and
# ``imagecorruptions.get_corruption_names("weather")``): brightness is *weather*. This is the one
# definition; analysis.metrics and analysis.plots import it.
FAMILIES: dict[str, tuple[str, ...]] = {
    "noise": ("gaussian_noise", "shot_noise", "impulse_noise"),
    "blur": ("defocus_blur", "glass_blur", "motion_blur", "zoom_blur"),
    "weather": ("snow", "frost", "fog", "brightness"),
    "digital": ("contrast", "elastic_transform", "pixelate", "jpeg_compression"),
}
assert sum(FAMILIES.values(), ()) == COMMON, "the families partition COMMON in ImageNet-C order"
GROUPS: dict[str, tuple[str, ...]] = {"common": COMMON, "extra": EXTRA, "all": ALL, **FAMILIES}
# the reference package calls the extra corruptions "validation"
_SUBSET_ALIASES = {"validation": "extra"}
BACKENDS = ("torch", "reference")
CPU_CHUNK_PIXELS = 8 * 224 * 224
CPU_CHUNK_IMAGES = 32  # small images: still several chunks per batch, so both cores get work
SEVERITIES = (1, 2, 3, 4, 5)


def names(subset: str = "all") -> list[str]:
    """Corruption names of a subset: common (15, ImageNet-C order), extra (4), all (19), noise, blur,
    weather, digital. A comma-separated list of subsets and/or names is also accepted."""
    if not isinstance(subset, str):
        raise FdbenchError(f"subset must be a string; valid: {', '.join(GROUPS)}")
    out: list[str] = []
    for part in (s.strip() for s in subset.split(",")):
        key = _SUBSET_ALIASES.get(part, part)
        if key in GROUPS:
            found = GROUPS[key]
        elif key in ALL:
            found = (key,)
        else:
            raise FdbenchError(
                f"unknown corruption subset or name {part!r}; valid subsets: "
                f"{', '.join(GROUPS)}; valid names: {', '.join(ALL)}"
            )
        out.extend(n for n in found if n not in out)
    return out


def check_name(name: str) -> str:
    if name not in ALL:
        raise FdbenchError(f"unknown corruption {name!r}; valid: {', '.join(ALL)}")
    return name


def check_severity(severity) -> int:
    if isinstance(severity, bool) or not isinstance(severity, int) or severity not in SEVERITIES:
        raise FdbenchError(f"severity must be an integer in 1-5, got {severity!r}")
    return int(severity)


def _check_images(images) -> tuple[torch.Tensor, bool]:
    """Validate and return ([N, 3, H, W] tensor, was_single_image)."""
    if not isinstance(images, torch.Tensor):
        raise FdbenchError(f"images must be a torch tensor, got {type(images).__name__}")
    single = images.dim() == 3
    x = images[None] if single else images
    if x.dim() != 4 or x.shape[1] != 3:
        raise FdbenchError(f"images must be [N, 3, H, W] or [3, H, W], got shape {tuple(images.shape)}")
    if x.shape[-1] < 32 or x.shape[-2] < 32:
        raise FdbenchError(f"images must be at least 32 x 32 pixels, got {x.shape[-2]} x {x.shape[-1]}")
    if x.dtype != torch.uint8 and not x.is_floating_point():
        raise FdbenchError(f"images must be uint8 (0-255) or float (0-1), got {x.dtype}")
    return x, single


_POOL_STATE = threading.local()


@contextmanager
def _one_intra_op_thread():
    """torch's intra-op threads set to 1 for the duration (restored after): CPU corruption results
    then never depend on the thread count (parallel reductions and BLAS split work by it), and the
    cores are used by running chunks side by side instead."""
    previous = torch.get_num_threads()
    if previous != 1:
        torch.set_num_threads(1)
    try:
        yield
    finally:
        if previous != 1:
            torch.set_num_threads(previous)


def cpu_map(fn, items, workers: int | None = None, combine=None):
    """``[fn(item) for item in items]`` on ``workers`` threads (default ``torch.get_num_threads()``, as
    many as torch would use), each with one intra-op thread; order kept; ``combine(results)`` (e.g.
    ``torch.cat``) is applied still with one intra-op thread (on a loaded machine OpenMP's threads
    waiting on each other cost more than the copy). Inside a ``cpu_map`` worker (a nested call) it
    runs serially. Results are the same for any ``workers`` as long as each ``fn(item)`` depends on
    its item only (own seed, own images)."""
    items = list(items)
    nested = getattr(_POOL_STATE, "active", False)
    workers = 1 if nested else min(len(items), max(1, workers or torch.get_num_threads()))

    def run(item):
        _POOL_STATE.active = True
        try:
            return fn(item)
        finally:
            _POOL_STATE.active = nested

    with _one_intra_op_thread():
        if workers <= 1:
            out = [run(item) for item in items]
        else:
            with ThreadPoolExecutor(max_workers=workers) as pool:
                out = list(pool.map(run, items))
        return combine(out) if combine is not None else out


def corrupt(
    images: torch.Tensor,
    name: str,
    severity: int,
    *,
    backend: str = "torch",
    generator: torch.Generator | int | None = None,
    params: str = "auto",
) -> torch.Tensor:
    """Apply corruption ``name`` at ``severity`` (1-5) to a batch of images.

    ``images``: uint8 [N, 3, H, W] (0-255) or float [N, 3, H, W] (0-1), or one [3, H, W] image, on any
    device, H, W >= 32. Returns the same dtype, shape and device. uint8 results are truncated to
    integers like the reference's ``np.uint8(...)``; float results are not quantised.

    ``backend``: ``torch`` (batched, CPU or CUDA) or ``reference`` (``imagecorruptions.corrupt`` per
    image, numpy on CPU; ImageNet-C parameters only).
    ``generator``: ``None`` (global RNG), an int seed or a ``torch.Generator``: a given seed gives the
    same output on the same device; random parameters are drawn per image.
    ``params``: ``auto`` (table nearest to the images' shorter side: CIFAR-10-C 32, Tiny-ImageNet-C 64,
    ImageNet-C 224), or ``imagenet`` | ``tiny-imagenet`` | ``cifar10``. The reference package has only
    ImageNet-C's constants: with ``backend="reference"`` small images get those (the package's
    corruption of a small image, not CIFAR-10-C / Tiny-ImageNet-C; see ``corruptions.reference``).

    On CPU the batch is split into fixed chunks, each with its own generator seeded from
    ``generator``, run on ``torch.get_num_threads()`` threads (:func:`cpu_map`): the same bytes for
    any thread count.
    """
    from corruptions import params as ptab

    check_name(name)
    severity = check_severity(severity)
    if backend not in BACKENDS:
        raise FdbenchError(f"unknown backend {backend!r}; valid: {', '.join(BACKENDS)}")
    x, single = _check_images(images)
    h, w = x.shape[-2:]
    table = ptab.resolve_table(params, h, w)
    if x.shape[0] == 0:
        return images.clone()

    from corruptions._rng import Rng

    rng = Rng(generator, x.device)
    if backend == "reference":
        if params.strip().lower() not in ("auto", "imagenet"):
            raise FdbenchError(
                f"the reference backend only has the ImageNet-C parameters; use params='imagenet' "
                f"(or 'auto') with backend='reference', or backend='torch' for {params!r}"
            )
        from corruptions.reference import corrupt_reference

        u8 = x if x.dtype == torch.uint8 else torch.round(x.float().clamp(0, 1) * 255).to(torch.uint8)
        out = corrupt_reference(u8, name, severity, rng.seeds(x.shape[0]))
        out = out if x.dtype == torch.uint8 else (out.float() / 255).to(x.dtype)
        return out[0] if single else out

    from corruptions import torch_backend as tb

    quantized = x.dtype == torch.uint8
    fn, p = tb.FUNCTIONS[name], ptab.severity_params(table, name, severity)
    u8_fn = tb.UINT8_CPU.get(name) if quantized and x.device.type == "cpu" else None

    def run(xi: torch.Tensor, chunk_rng: Rng) -> torch.Tensor:
        ctx = tb.Context(rng=chunk_rng, table=table, style=ptab.STYLE[table], quantized=quantized)
        if u8_fn is not None:  # 8-bit in, 8-bit out, no float round trip (PIL-bound corruptions)
            return u8_fn(xi, p, ctx)
        y = fn(xi.float() / 255 if quantized else xi.float().clamp(0, 1), p, ctx)
        if quantized:
            # np.uint8(float) truncates; the tiny offset keeps exact integers (k/255*255) from dropping a level
            return torch.floor(y * 255 + 1e-3).clamp(0, 255).to(torch.uint8)
        return y.to(x.dtype)

    if x.device.type != "cpu":  # GPUs: the whole batch at once
        y = run(x, rng)
        return y[0] if single else y
    # CPU: chunks of ~8 ImageNet-sized images (at most CPU_CHUNK_IMAGES) keep each pass over the data
    # in cache (1.3-2x faster than one large batch). Each chunk draws from its own generator, seeded
    # from ``generator`` in chunk order, so chunks run side by side on the cores (``cpu_map``) and
    # the result is the same for any number of threads.
    step = max(1, min(CPU_CHUNK_PIXELS // (h * w), CPU_CHUNK_IMAGES))
    starts = list(range(0, x.shape[0], step))
    seeds = rng.seeds(len(starts))
    y = cpu_map(
        lambda k: run(x[starts[k] : starts[k] + step], Rng(seeds[k], x.device)),
        range(len(starts)),
        combine=lambda parts: parts[0] if len(parts) == 1 else torch.cat(parts),
    )
    return y[0] if single else y
