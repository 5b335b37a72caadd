"""Severity tables: ImageNet-C (224 px), Tiny-ImageNet-C (64 px) and CIFAR-10-C (32 px).

The ImageNet-C table is the one in the reference ``imagecorruptions`` package (``imagecorruptions-imaug``),
which is what ``backend="reference"`` runs. The Tiny-ImageNet-C and CIFAR-10-C tables are the ones in
the original benchmark's generation scripts (hendrycks/robustness, ``ImageNet-C/create_c/
make_tinyimagenet_c.py`` and ``make_cifar_c.py``), transcribed by hand.

Every entry is a tuple of five per-severity values; the meaning of each field is documented next to
it. Quantities that the original scripts hard-code in pixels of their native size (elastic
transform's ``IMSIZE``) are stored as fractions of the image side so the table works at any size.

Structural differences between the scripts (not just numbers) are in ``STYLE``:
- ``pixelate_up``: the filter used to scale the pixelated image back up (ImageNet-C: nearest,
  the small-image scripts: box);
- ``frost``: ``"cover"`` scales the frost picture so it covers the image (x1.1, as the reference
  package), ``("scale", f, k, native)`` resizes it by ``f * side / native`` and draws among the
  first ``k`` frost pictures (the small-image scripts use ``randint(5)``, so frost6 is never drawn);
- ``elastic``: ``"displace"`` is the reference package's displacement-only transform, ``"affine"``
  the scripts' random affine followed by a displacement field;
- ``motion_round``: the small-image scripts motion-blur through ImageMagick, which returns 8-bit
  pixels rounded to nearest; the reference package's OpenCV motion blur returns floats that
  ``np.uint8`` truncates. True rounds the motion-blurred image of a uint8 input.
"""

from __future__ import annotations

from fdbench.errors import FdbenchError

TABLES = ("imagenet", "tiny-imagenet", "cifar10")
NATIVE_SIZE = {"imagenet": 224, "tiny-imagenet": 64, "cifar10": 32}

IMAGENET = {
    "gaussian_noise": (0.08, 0.12, 0.18, 0.26, 0.38),  # std of N(0, c) on [0,1]
    "shot_noise": (60, 25, 12, 5, 3),  # Poisson rate scale
    "impulse_noise": (0.03, 0.06, 0.09, 0.17, 0.27),  # s&p amount per element
    "speckle_noise": (0.15, 0.2, 0.35, 0.45, 0.6),  # std of multiplicative noise
    "gaussian_blur": (1, 2, 3, 4, 6),  # sigma (px)
    "glass_blur": ((0.7, 1, 2), (0.9, 2, 1), (1, 2, 3), (1.1, 3, 2), (1.5, 4, 2)),  # sigma, delta, iterations
    "defocus_blur": ((3, 0.1), (4, 0.5), (6, 0.5), (8, 0.5), (10, 0.5)),  # disk radius, alias blur
    "motion_blur": ((10, 3), (15, 5), (15, 8), (15, 12), (20, 15)),  # radius, sigma
    "zoom_blur": ((1, 1.11, 0.01), (1, 1.16, 0.01), (1, 1.21, 0.02), (1, 1.26, 0.02), (1, 1.31, 0.03)),  # arange
    "fog": ((1.5, 2), (2.0, 2), (2.5, 1.7), (2.5, 1.5), (3.0, 1.4)),  # strength, wibble decay
    "frost": ((1, 0.4), (0.8, 0.6), (0.7, 0.7), (0.65, 0.7), (0.6, 0.75)),  # image weight, frost weight
    # snow: mean, std of the layer, zoom, threshold, blur radius, blur sigma, image weight
    "snow": (
        (0.1, 0.3, 3, 0.5, 10, 4, 0.8),
        (0.2, 0.3, 2, 0.5, 12, 4, 0.7),
        (0.55, 0.3, 4, 0.9, 12, 8, 0.7),
        (0.55, 0.3, 4.5, 0.85, 12, 8, 0.65),
        (0.55, 0.3, 2.5, 0.85, 12, 12, 0.55),
    ),
    # spatter: mean, std, blur sigma, threshold, intensity / mud sigma, mode (0 water, 1 mud)
    "spatter": (
        (0.65, 0.3, 4, 0.69, 0.6, 0),
        (0.65, 0.3, 3, 0.68, 0.6, 0),
        (0.65, 0.3, 2, 0.68, 0.5, 0),
        (0.65, 0.3, 1, 0.65, 1.5, 1),
        (0.67, 0.4, 1, 0.65, 1.5, 1),
    ),
    "contrast": (0.4, 0.3, 0.2, 0.1, 0.05),  # factor around the channel mean
    "brightness": (0.1, 0.2, 0.3, 0.4, 0.5),  # added to HSV value
    "saturate": ((0.3, 0), (0.1, 0), (2, 0), (5, 0.1), (20, 0.2)),  # HSV saturation * a + b
    "jpeg_compression": (25, 18, 15, 10, 7),  # JPEG quality
    "pixelate": (0.6, 0.5, 0.4, 0.3, 0.25),  # downscale factor
    # elastic ("displace"): alpha; displacement = gaussian(U(-0.005 H, 0.005 H), sigma=0.01 * side) * alpha
    "elastic_transform": ((12.5,), (16.25,), (21.25,), (25.0,), (30.0,)),
}

TINY_IMAGENET = {
    "gaussian_noise": (0.04, 0.08, 0.12, 0.15, 0.18),
    "shot_noise": (250, 100, 50, 30, 15),
    "impulse_noise": (0.01, 0.02, 0.05, 0.08, 0.14),
    "speckle_noise": (0.15, 0.2, 0.25, 0.3, 0.35),
    "gaussian_blur": (0.5, 0.75, 1, 1.25, 1.5),
    "glass_blur": ((0.1, 1, 1), (0.5, 1, 1), (0.6, 1, 2), (0.7, 2, 1), (0.9, 2, 2)),
    "defocus_blur": ((0.5, 0.6), (1, 0.1), (1.5, 0.1), (2.5, 0.01), (3, 0.1)),
    "motion_blur": ((10, 1), (10, 1.5), (10, 2), (10, 2.5), (12, 3)),
    "zoom_blur": ((1, 1.06, 0.01), (1, 1.11, 0.01), (1, 1.16, 0.01), (1, 1.21, 0.01), (1, 1.26, 0.01)),
    "fog": ((0.4, 3), (0.7, 3), (1, 2.5), (1.5, 2), (2, 1.75)),
    "frost": ((1, 0.3), (0.9, 0.4), (0.8, 0.45), (0.75, 0.5), (0.7, 0.55)),
    "snow": (
        (0.1, 0.2, 1, 0.6, 8, 3, 0.8),
        (0.1, 0.2, 1, 0.5, 10, 4, 0.8),
        (0.15, 0.3, 1.75, 0.55, 10, 4, 0.7),
        (0.25, 0.3, 2.25, 0.6, 12, 6, 0.65),
        (0.3, 0.3, 1.25, 0.65, 14, 12, 0.6),
    ),
    "spatter": (
        (0.62, 0.1, 0.7, 0.7, 0.6, 0),
        (0.65, 0.1, 0.8, 0.7, 0.6, 0),
        (0.65, 0.3, 1, 0.69, 0.6, 0),
        (0.65, 0.1, 0.7, 0.68, 0.6, 1),
        (0.65, 0.1, 0.5, 0.67, 0.6, 1),
    ),
    "contrast": (0.4, 0.3, 0.2, 0.1, 0.05),
    "brightness": (0.1, 0.2, 0.3, 0.4, 0.5),
    "saturate": ((0.3, 0), (0.1, 0), (2, 0), (5, 0.1), (30, 0.2)),
    "jpeg_compression": (65, 58, 50, 40, 25),
    "pixelate": (0.9, 0.8, 0.7, 0.6, 0.5),
    # elastic ("affine"): (alpha, sigma, affine delta) as fractions of the image side (IMSIZE * f)
    "elastic_transform": ((0, 0, 0.08), (0.05, 0.3, 0.06), (0.1, 0.08, 0.06), (0.1, 0.03, 0.03), (0.16, 0.03, 0.02)),
}

CIFAR10 = {
    "gaussian_noise": (0.04, 0.06, 0.08, 0.09, 0.10),
    "shot_noise": (500, 250, 100, 75, 50),
    "impulse_noise": (0.01, 0.02, 0.03, 0.05, 0.07),
    "speckle_noise": (0.06, 0.1, 0.12, 0.16, 0.2),
    "gaussian_blur": (0.4, 0.6, 0.7, 0.8, 1),
    "glass_blur": ((0.05, 1, 1), (0.25, 1, 1), (0.4, 1, 1), (0.25, 1, 2), (0.4, 1, 2)),
    "defocus_blur": ((0.3, 0.4), (0.4, 0.5), (0.5, 0.6), (1, 0.2), (1.5, 0.1)),
    "motion_blur": ((6, 1), (6, 1.5), (6, 2), (8, 2), (9, 2.5)),
    "zoom_blur": ((1, 1.06, 0.01), (1, 1.11, 0.01), (1, 1.16, 0.01), (1, 1.21, 0.01), (1, 1.26, 0.01)),
    "fog": ((0.2, 3), (0.5, 3), (0.75, 2.5), (1, 2), (1.5, 1.75)),
    "frost": ((1, 0.2), (1, 0.3), (0.9, 0.4), (0.85, 0.4), (0.75, 0.45)),
    "snow": (
        (0.1, 0.2, 1, 0.6, 8, 3, 0.95),
        (0.1, 0.2, 1, 0.5, 10, 4, 0.9),
        (0.15, 0.3, 1.75, 0.55, 10, 4, 0.9),
        (0.25, 0.3, 2.25, 0.6, 12, 6, 0.85),
        (0.3, 0.3, 1.25, 0.65, 14, 12, 0.8),
    ),
    "spatter": (
        (0.62, 0.1, 0.7, 0.7, 0.5, 0),
        (0.65, 0.1, 0.8, 0.7, 0.5, 0),
        (0.65, 0.3, 1, 0.69, 0.5, 0),
        (0.65, 0.1, 0.7, 0.69, 0.6, 1),
        (0.65, 0.1, 0.5, 0.68, 0.6, 1),
    ),
    "contrast": (0.75, 0.5, 0.4, 0.3, 0.15),
    "brightness": (0.05, 0.1, 0.15, 0.2, 0.3),
    "saturate": ((0.3, 0), (0.1, 0), (1.5, 0), (2, 0.1), (2.5, 0.2)),
    "jpeg_compression": (80, 65, 58, 50, 40),
    "pixelate": (0.95, 0.9, 0.85, 0.75, 0.65),
    "elastic_transform": ((0, 0, 0.08), (0.05, 0.2, 0.07), (0.08, 0.06, 0.06), (0.1, 0.04, 0.05), (0.1, 0.03, 0.03)),
}

STYLE = {
    "imagenet": {"pixelate_up": "nearest", "frost": "cover", "elastic": "displace", "motion_round": False},
    "tiny-imagenet": {"pixelate_up": "box", "frost": ("scale", 0.3, 5, 64), "elastic": "affine", "motion_round": True},
    "cifar10": {"pixelate_up": "box", "frost": ("scale", 0.2, 5, 32), "elastic": "affine", "motion_round": True},
}

_TABLES = {"imagenet": IMAGENET, "tiny-imagenet": TINY_IMAGENET, "cifar10": CIFAR10}
# aliases users are likely to type
_ALIASES = {
    "imagenet-c": "imagenet",
    "tiny": "tiny-imagenet",
    "tinyimagenet": "tiny-imagenet",
    "tiny-imagenet-c": "tiny-imagenet",
    "cifar": "cifar10",
    "cifar10-c": "cifar10",
    "cifar-10": "cifar10",
    "cifar-10-c": "cifar10",
}


def auto_table(height: int, width: int) -> str:
    """The table whose native size is nearest to the image's shorter side.

    Native sizes are 32 (CIFAR-10-C), 64 (Tiny-ImageNet-C) and 224 (ImageNet-C), so sides up to 48
    get ``cifar10``, 49-144 ``tiny-imagenet`` and larger ones ``imagenet`` (ties go to the smaller).
    """
    side = min(height, width)
    return min(TABLES[::-1], key=lambda t: abs(NATIVE_SIZE[t] - side))


def resolve_table(params: str, height: int, width: int) -> str:
    """Map ``"auto"``, a table name or an alias to a table name; FdbenchError for anything else."""
    if not isinstance(params, str):
        raise FdbenchError(f"params must be a string, got {type(params).__name__}; valid: auto, {', '.join(TABLES)}")
    key = params.strip().lower()
    if key == "auto":
        return auto_table(height, width)
    key = _ALIASES.get(key, key)
    if key not in _TABLES:
        raise FdbenchError(f"unknown params table {params!r}; valid: auto, {', '.join(TABLES)}")
    return key


def severity_params(table: str, name: str, severity: int):
    """The parameter tuple (or scalar) of corruption ``name`` at ``severity`` (1-5) in ``table``."""
    return _TABLES[table][name][severity - 1]
