"""The reference backend: ``imagecorruptions.corrupt`` (package ``imagecorruptions-imaug``) on one
numpy uint8 [H, W, 3] image at a time, for fidelity checks and exact published ImageNet-C behaviour.

At every image size the package runs its ImageNet-C severity constants (its functions adapt shapes
to the image: fog's plasma map, frost's crop, elastic's field, but never the constants), so
``corrupt(..., backend="reference")`` on 32 or 64 px images is ImageNet-C's corruption of a small
image, not CIFAR-10-C or Tiny-ImageNet-C. The small-image benchmarks were made by separate scripts
(hendrycks/robustness ``make_cifar_c.py`` / ``make_tinyimagenet_c.py``, not packaged), which are the
ImageNet-C functions with other constants plus four structural changes (pixelate's box upscale,
frost's resize, elastic's affine step, ImageMagick's rounded motion blur; ``params.STYLE``).
:func:`table_function` rebuilds a package function with the constants of another fdbench table,
the reference for the small tables' constants on the package's own code path (the four structural
changes are tested separately, against formulas written from the scripts).

Seeding: before each image, numpy's global RNG is seeded with that image's seed, and the corruptions
that take their own ``seed`` argument (glass blur, impulse noise) get it too, so a torch generator
seed makes the reference backend deterministic as well.
"""

from __future__ import annotations

import ast
import inspect
import textwrap
import warnings

import numpy as np
import torch

from fdbench.errors import FdbenchError

SEEDED_KWARG = ("glass_blur", "impulse_noise")


def reference_module():
    """Import ``imagecorruptions`` or raise a clear error naming the package to install."""
    try:
        import imagecorruptions
    except Exception as err:  # noqa: BLE001 - any import failure means the same fix
        raise FdbenchError(
            f"the reference backend needs the 'imagecorruptions-imaug' package "
            f"(pip install imagecorruptions-imaug): {err}"
        ) from None
    return imagecorruptions


# corruptions whose constants mean something else in the small-image scripts (elastic's are
# fractions of the side for the affine variant): no package code path to drive with them
NO_TABLE_FUNCTION = ("elastic_transform",)
_TABLE_FUNCTIONS: dict = {}


def table_function(name: str, table: str):
    """The package's function ``name`` with its severity list ``c = [...][severity - 1]`` replaced by
    fdbench's ``table`` (``params.py``); the package's own function for ``imagenet``.

    Rebuilt from the installed package's source (``ast``: only that one list literal is swapped) and
    run in the package module's namespace, so every other step is the package's code."""
    ic = reference_module()
    if table == "imagenet":
        return ic.corruption_dict[name]
    if name in NO_TABLE_FUNCTION:
        raise FdbenchError(f"{name} has no package code path for the {table} table (its constants differ in kind)")
    return _rebuilt(name, table)


def _rebuilt(name: str, table: str):
    """:func:`table_function` without the shortcuts (tests rebuild the ImageNet-C one to check the swap)."""
    from corruptions import params as ptab

    ic = reference_module()
    key = (name, table)
    if key not in _TABLE_FUNCTIONS:
        module = inspect.getmodule(ic.corruption_dict[name])
        tree = ast.parse(textwrap.dedent(inspect.getsource(ic.corruption_dict[name])))
        assign = next(
            node
            for node in ast.walk(tree)
            if isinstance(node, ast.Assign)
            and [t.id for t in node.targets if isinstance(t, ast.Name)] == ["c"]
            and isinstance(node.value, ast.Subscript)
            and isinstance(node.value.value, ast.List)
        )
        assign.value.value = ast.Name(id="__fdbench_table__", ctx=ast.Load())
        ast.fix_missing_locations(tree)
        values = [ptab.severity_params(table, name, s) for s in range(1, 6)]
        if name == "zoom_blur":  # the package lists np.arange(start, stop, step) objects
            values = [np.arange(*v) for v in values]
        namespace = dict(vars(module), __fdbench_table__=values)
        exec(compile(tree, f"<{module.__name__}.{name} with the {table} table>", "exec"), namespace)  # noqa: S102
        _TABLE_FUNCTIONS[key] = namespace[name]
    return _TABLE_FUNCTIONS[key]


def corrupt_one(image: np.ndarray, name: str, severity: int, seed: int, table: str = "imagenet") -> np.ndarray:
    """Reference corruption of one uint8 [H, W, 3] array, numpy's RNG seeded with ``seed``, with the
    package's constants (``table="imagenet"``) or another table's (see :func:`table_function`)."""
    ic = reference_module()
    np.random.seed(seed % (2**32))
    kwargs = {"seed": seed} if name in SEEDED_KWARG else {}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        if table == "imagenet":
            out = ic.corrupt(np.ascontiguousarray(image), severity=severity, corruption_name=name, **kwargs)
        else:  # what ic.corrupt does for an RGB uint8 array, with the rebuilt function
            from PIL import Image

            out = table_function(name, table)(Image.fromarray(np.ascontiguousarray(image)), severity, **kwargs)
    return np.asarray(np.uint8(out), dtype=np.uint8)


def corrupt_reference(
    images: torch.Tensor, name: str, severity: int, seeds: list[int], table: str = "imagenet"
) -> torch.Tensor:
    """Reference corruption of a uint8 [N, 3, H, W] tensor (any device), returned on that device."""
    arr = images.detach().cpu().permute(0, 2, 3, 1).numpy()
    out = np.stack([corrupt_one(img, name, severity, s, table) for img, s in zip(arr, seeds)])
    return torch.from_numpy(out).permute(0, 3, 1, 2).contiguous().to(images.device)
