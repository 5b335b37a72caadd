"""Random draws for the torch backend: one generator, tensors created on the images' device.

``generator`` may be ``None`` (torch's global RNG), an ``int`` seed (a fresh generator on the images'
device) or a ``torch.Generator``. When the generator lives on another device than the images (a CPU
generator with CUDA images), values are drawn on the generator's device and moved, so results only
depend on the generator, never on where the images are.
"""

from __future__ import annotations

import torch

from fdbench.errors import FdbenchError


class Rng:
    def __init__(self, generator, device: torch.device):
        self.device = torch.device(device)
        if generator is None:
            self.gen = None
            self.gen_device = self.device
        elif isinstance(generator, torch.Generator):
            self.gen = generator
            self.gen_device = generator.device
        elif isinstance(generator, int) and not isinstance(generator, bool):
            self.gen = torch.Generator(device=self.device)
            self.gen.manual_seed(generator)
            self.gen_device = self.device
        else:
            raise FdbenchError(
                f"generator must be None, an int seed or a torch.Generator, got {type(generator).__name__}"
            )
        if self.gen is None and self.device.type not in ("cpu", "cuda"):
            # the global RNG of exotic devices may not exist; draw on CPU instead
            self.gen_device = torch.device("cpu")

    def _out(self, t: torch.Tensor) -> torch.Tensor:
        return t.to(self.device) if t.device != self.device else t

    def uniform(self, shape, low=0.0, high=1.0) -> torch.Tensor:
        """U[low, high) float32 of ``shape`` (low/high may be broadcastable tensors on the images' device)."""
        u = self._out(torch.rand(shape, generator=self.gen, device=self.gen_device))
        return low + (high - low) * u

    def normal(self, shape, mean=0.0, std=1.0) -> torch.Tensor:
        z = self._out(torch.randn(shape, generator=self.gen, device=self.gen_device))
        return mean + std * z

    def randint(self, low: int, high, shape) -> torch.Tensor:
        """Integers in [low, high) (``high`` may be a tensor of per-element bounds), int64."""
        if isinstance(high, torch.Tensor):
            u = self.uniform(shape)
            return (low + torch.floor(u * (high.to(u) - low))).long().clamp_max(high - 1)
        return self._out(torch.randint(low, high, shape, generator=self.gen, device=self.gen_device))

    def poisson(self, rates: torch.Tensor) -> torch.Tensor:
        r = rates.to(self.gen_device) if rates.device != self.gen_device else rates
        return self._out(torch.poisson(r, generator=self.gen))

    def seeds(self, n: int) -> list[int]:
        """``n`` integer seeds (for backends that need their own RNG, e.g. the reference)."""
        return [int(s) for s in torch.randint(0, 2**31 - 1, (n,), generator=self.gen, device=self.gen_device).tolist()]
