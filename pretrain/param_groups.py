"""Which parameters AdamW decays: the weight-decay rule of the parameter groups.

Two rules, chosen by ``OptimConfig.weight_decay_rule``:

- ``dinov2`` (the default of every preset): DINOv2's ``get_params_groups_with_decay`` exempts only
  biases (names ending in ``.bias``), norms (names containing ``norm``) and LayerScale gammas (names
  containing ``gamma``). The class token, position table, mask token and register tokens are decayed.
- ``no-decay-tokens``: fdbench's earlier rule, which also exempts the learned tokens and the position
  table (as timm's ``no_weight_decay`` and many ViT recipes do).
"""

from __future__ import annotations

import re

WD_RULES = ("dinov2", "no-decay-tokens")

_DINOV2_EXEMPT = re.compile(r"(\.bias$|^bias$|norm|gamma)")
_TOKENS = re.compile(r"(cls_token|reg_token|register_tokens|mask_token|pos_embed)")


def wd_multiplier(name: str, rule: str = "dinov2") -> float:
    """0.0 for a parameter the rule exempts from weight decay, else 1.0 (``name`` local to its module)."""
    if rule not in WD_RULES:
        raise ValueError(f"unknown weight-decay rule {rule!r}: choose one of {', '.join(WD_RULES)}")
    if _DINOV2_EXEMPT.search(name):
        return 0.0
    if rule == "no-decay-tokens" and _TOKENS.search(name):
        return 0.0
    return 1.0
