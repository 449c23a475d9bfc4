"""Plain-Python reference of the native core (``fastopt._C``).

It is the oracle the native matcher and rule assignment are tested against,
and the fallback when the extension is unavailable. The bit layouts and rule
codes mirror ``csrc/rules.h``.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

# Parameter facts (csrc/rules.h ParamFlag).
IS_BIAS = 1 << 0
IS_NORM = 1 << 1
IS_DWCONV = 1 << 2
IS_CONV2D = 1 << 3
IN_DCN = 1 << 4
CONV_OFFSET = 1 << 5
IS_FLAT = 1 << 6
FROZEN = 1 << 7
DUPLICATE = 1 << 8

# Config facts (csrc/rules.h ConfigFlag).
MMENGINE = 1 << 0
HAS_WD = 1 << 1
BYPASS_DUP = 1 << 2
BIAS_LR = 1 << 3
BIAS_DECAY = 1 << 4
NORM_DECAY = 1 << 5
DWCONV_DECAY = 1 << 6
FLAT_DECAY = 1 << 7
DCN_LR = 1 << 8

# Rule codes (csrc/rules.h LrRule, WdRule, Kind).
LR_NONE, LR_CUSTOM, LR_BIAS, LR_DCN_OFFSET = range(4)
WD_NONE, WD_CUSTOM, WD_NORM, WD_BIAS, WD_DWCONV, WD_FLAT = range(6)
TRAINABLE, FROZEN_KEPT, SKIPPED, DUPLICATE_ERROR = range(4)

LR_RULE_NAMES = ("default", "custom", "bias", "dcn")
WD_RULE_NAMES = ("default", "custom", "norm", "bias", "dwconv", "flat")


def key_priority(keys: Sequence[str]) -> list[str]:
    """Custom keys in the order the references try them: longest first, then alphabetical."""
    return sorted(sorted(keys), key=len, reverse=True)


def match(names: Sequence[str], keys: Sequence[str]) -> np.ndarray:
    """Index into ``keys`` of the first key (in priority order) contained in each name, or -1."""
    index = {k: i for i, k in enumerate(keys)}
    ordered = key_priority(keys)
    out = np.full(len(names), -1, dtype=np.int32)
    for i, name in enumerate(names):
        for key in ordered:
            if key in name:
                out[i] = index[key]
                break
    return out


def decide(key: int, f: int, c: int) -> tuple[int, int, int, int]:
    """(key, lr_rule, wd_rule, kind) for one parameter, following the reference's code paths."""
    mmengine = bool(c & MMENGINE)
    dup, frozen = bool(f & DUPLICATE), bool(f & FROZEN)
    if not mmengine and frozen:  # mmcv: requires_grad is tested first
        return (-1, LR_NONE, WD_NONE, DUPLICATE_ERROR if dup else FROZEN_KEPT)
    if dup:
        if c & BYPASS_DUP or frozen:
            return (-1, LR_NONE, WD_NONE, SKIPPED)
        return (-1, LR_NONE, WD_NONE, DUPLICATE_ERROR)
    if frozen:
        return (-1, LR_NONE, WD_NONE, SKIPPED)
    if key >= 0:
        return (key, LR_CUSTOM, WD_CUSTOM if c & HAS_WD else WD_NONE, TRAINABLE)

    bias, norm, in_dcn = bool(f & IS_BIAS), bool(f & IS_NORM), bool(f & IN_DCN)
    lr = LR_NONE
    if bias and not (norm or in_dcn) and (not mmengine or c & BIAS_LR):
        lr = LR_BIAS
    if f & CONV_OFFSET and in_dcn and f & IS_CONV2D and (not mmengine or c & DCN_LR):
        lr = LR_DCN_OFFSET

    wd = WD_NONE
    if c & HAS_WD:
        if not mmengine:
            if norm:
                wd = WD_NORM
            elif f & IS_DWCONV:
                wd = WD_DWCONV
            elif bias and not in_dcn:
                wd = WD_BIAS
        elif norm and c & NORM_DECAY:
            wd = WD_NORM
        elif bias and not in_dcn and c & BIAS_DECAY:
            wd = WD_BIAS
        elif f & IS_DWCONV and c & DWCONV_DECAY:
            wd = WD_DWCONV
        elif f & IS_FLAT and not in_dcn and c & FLAT_DECAY:
            wd = WD_FLAT
    return (-1, lr, wd, TRAINABLE)


def assign(
    names: Sequence[str], flags: np.ndarray, keys: Sequence[str], config: int
) -> tuple[np.ndarray, np.ndarray]:
    """Same contract as ``_C.assign``: (ids per parameter, signature table in first-seen order)."""
    winners = match(names, keys)
    seen: dict[tuple[int, int, int, int], int] = {}
    ids = np.empty(len(names), dtype=np.int32)
    for i, f in enumerate(np.asarray(flags, dtype=np.uint32).tolist()):
        plain = not (f & (FROZEN | DUPLICATE))
        sig = decide(int(winners[i]) if plain else -1, f, config)
        ids[i] = seen.setdefault(sig, len(seen))
    table = np.array(list(seen), dtype=np.int32).reshape(len(seen), 4)
    return ids, table
