"""The DINO projection head (also used as the iBOT patch head, shared or as a second copy)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.utils.parametrizations import weight_norm

from fdbench.errors import FdbenchError

__all__ = ["DINOHead"]


class DINOHead(nn.Module):
    """``x -> MLP -> L2-normalise -> weight-normalised linear -> prototype logits``.

    MLP: ``nlayers`` linear layers ``in_dim -> hidden_dim -> ... -> bottleneck_dim`` with GELU
    between them (one layer: ``in_dim -> bottleneck_dim``), weights truncated-normal (std 0.02),
    biases zero. The last layer is ``W = g * V / ||V||`` row-wise (``torch`` weight-norm
    parametrisation, ``dim=0``), no bias, ``g`` initialised to 1, so at initialisation each logit
    is a cosine similarity between the bottleneck vector and a prototype. It is exposed as
    ``head.last_layer`` because DINOv2 freezes it during the first epoch.
    """

    def __init__(
        self,
        in_dim: int,
        out_dim: int = 65536,
        hidden_dim: int = 2048,
        bottleneck_dim: int = 256,
        nlayers: int = 3,
        mlp_bias: bool = True,
    ):
        super().__init__()
        for name, value in (
            ("in_dim", in_dim),
            ("out_dim", out_dim),
            ("hidden_dim", hidden_dim),
            ("bottleneck_dim", bottleneck_dim),
            ("nlayers", nlayers),
        ):
            if int(value) < 1:
                raise FdbenchError(f"DINO head {name} must be a positive integer, got {value}")
        if nlayers == 1:
            layers: list[nn.Module] = [nn.Linear(in_dim, bottleneck_dim, bias=mlp_bias)]
        else:
            layers = [nn.Linear(in_dim, hidden_dim, bias=mlp_bias), nn.GELU()]
            for _ in range(nlayers - 2):
                layers += [nn.Linear(hidden_dim, hidden_dim, bias=mlp_bias), nn.GELU()]
            layers.append(nn.Linear(hidden_dim, bottleneck_dim, bias=mlp_bias))
        self.mlp = nn.Sequential(*layers)
        self.mlp.apply(self._init_linear)
        # the prototypes keep nn.Linear's default init, as in DINOv2 (only the MLP is re-initialised)
        self.last_layer = weight_norm(nn.Linear(bottleneck_dim, out_dim, bias=False), dim=0)
        with torch.no_grad():
            self.last_layer.parametrizations.weight.original0.fill_(1.0)
        self.in_dim, self.out_dim, self.bottleneck_dim = in_dim, out_dim, bottleneck_dim

    @staticmethod
    def _init_linear(module: nn.Module) -> None:
        if isinstance(module, nn.Linear):
            nn.init.trunc_normal_(module.weight, std=0.02)
            if module.bias is not None:
                nn.init.zeros_(module.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.mlp(x)
        # fp16 cannot represent 1e-12; bf16 and fp32 can
        eps = 1e-6 if x.dtype == torch.float16 else 1e-12
        x = F.normalize(x, p=2, dim=-1, eps=eps)
        return self.last_layer(x)
