"""The paramwise_cfg rules as data: the bits and codes shared with ``csrc/rules.h``, and one
table of the multiplier rules that the walk, the constructor, ``explain`` and the oracle read.

Adding a rule: a ParamFlag (a fact the walk records) or ConfigFlag bit here and in
``csrc/rules.h``, its place in ``decide`` (``csrc/rules.cpp`` and the oracle in
``_reference.py``), and a row of ``RULES``; the constructor and ``explain`` follow the table.
``tests/test_matcher.py`` checks that the extension exports the same numbers.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

# Facts about one parameter (csrc/rules.h ParamFlag), recorded by the walk (_walk.py).
IS_BIAS = 1 << 0      # local name == "bias"
IS_NORM = 1 << 1      # owner is a norm layer
IS_DWCONV = 1 << 2    # owner is a Conv2d with in_channels == groups
IS_CONV2D = 1 << 3    # owner is a Conv2d
IN_DCN = 1 << 4       # owner's parent is an mmcv.ops DCN module
CONV_OFFSET = 1 << 5  # owner's prefix contains "conv_offset"
IS_FLAT = 1 << 6      # ndim == 1
FROZEN = 1 << 7       # requires_grad is False
DUPLICATE = 1 << 8    # the same tensor was visited before

# What the config sets (csrc/rules.h ConfigFlag).
MMENGINE = 1 << 0     # mmengine semantics (else mmcv 1.x)
HAS_WD = 1 << 1       # the optimizer config has weight_decay
BYPASS_DUP = 1 << 2   # paramwise_cfg bypass_duplicate
BIAS_LR = 1 << 3      # the multiplier bits: the multiplier is given (mmcv applies the rule anyway)
BIAS_DECAY = 1 << 4
NORM_DECAY = 1 << 5
DWCONV_DECAY = 1 << 6
FLAT_DECAY = 1 << 7   # mmengine only
DCN_LR = 1 << 8
KEEP_FROZEN = 1 << 9  # mmengine <= 0.10.3 keeps a frozen parameter as a bare group (mmcv always does)

# Rule codes (csrc/rules.h LrRule, WdRule, Kind).
LR_NONE, LR_CUSTOM, LR_BIAS, LR_DCN_OFFSET = range(4)
WD_NONE, WD_CUSTOM, WD_NORM, WD_BIAS, WD_DWCONV, WD_FLAT = range(6)
TRAINABLE, FROZEN_KEPT, SKIPPED, DUPLICATE_ERROR = range(4)


@dataclass(frozen=True)
class Rule:
    """One multiplier rule of paramwise_cfg: the key that sets it, the config bit that says it is
    given, the rule code ``decide`` returns for it, whether it scales lr or weight decay, and the
    name ``explain`` shows."""

    key: str
    config_bit: int
    code: int
    scales: str  # "lr" or "weight_decay"
    display: str
    mmcv: bool = True  # mmcv 1.x's constructor knows it too


RULES: tuple[Rule, ...] = (
    Rule("bias_lr_mult", BIAS_LR, LR_BIAS, "lr", "bias"),
    Rule("bias_decay_mult", BIAS_DECAY, WD_BIAS, "weight_decay", "bias"),
    Rule("norm_decay_mult", NORM_DECAY, WD_NORM, "weight_decay", "norm"),
    Rule("dwconv_decay_mult", DWCONV_DECAY, WD_DWCONV, "weight_decay", "dwconv"),
    Rule("flat_decay_mult", FLAT_DECAY, WD_FLAT, "weight_decay", "flat", mmcv=False),
    Rule("dcn_offset_lr_mult", DCN_LR, LR_DCN_OFFSET, "lr", "dcn"),
)

#: lr / weight-decay rule code -> its row of ``RULES``
LR_RULES = {r.code: r for r in RULES if r.scales == "lr"}
WD_RULES = {r.code: r for r in RULES if r.scales == "weight_decay"}


def rule_name(sig: tuple[int, int, int, int]) -> str:
    """Short name of the rule that decided a signature ``(key, lr_rule, wd_rule, kind)``:
    custom, frozen, skipped, a rule's display name, "bias+norm"-style pairs, or default."""
    key, lr, wd, kind = sig
    if kind in (FROZEN_KEPT, SKIPPED):
        return "frozen" if kind == FROZEN_KEPT else "skipped"
    if key >= 0:
        return "custom"
    parts = [LR_RULES[lr].display] if lr else []
    if wd and WD_RULES[wd].display not in parts:
        parts.append(WD_RULES[wd].display)
    return "+".join(parts) or "default"


def key_priority(keys: Sequence[str]) -> list[str]:
    """Custom keys in the order the references try them: longest first, then alphabetical."""
    return sorted(sorted(keys), key=len, reverse=True)
