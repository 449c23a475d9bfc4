"""Plain-Python reference of the native core (``fastopt._C``).

It is the oracle the native matcher and rule assignment are tested against,
and the fallback when the extension is unavailable; the bits and rule codes it reads
live in ``_rules.py``.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from ._rules import (
    BIAS_DECAY,
    BIAS_LR,
    BYPASS_DUP,
    CONV_OFFSET,
    DCN_LR,
    DUPLICATE,
    DUPLICATE_ERROR,
    DWCONV_DECAY,
    FLAT_DECAY,
    FROZEN,
    FROZEN_KEPT,
    HAS_WD,
    IN_DCN,
    IS_BIAS,
    IS_CONV2D,
    IS_DWCONV,
    IS_FLAT,
    IS_NORM,
    KEEP_FROZEN,
    LR_BIAS,
    LR_CUSTOM,
    LR_DCN_OFFSET,
    LR_NONE,
    MMENGINE,
    NORM_DECAY,
    SKIPPED,
    TRAINABLE,
    WD_BIAS,
    WD_CUSTOM,
    WD_DWCONV,
    WD_FLAT,
    WD_NONE,
    WD_NORM,
    key_priority,
)


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
    # mmengine: the duplicate test first, then requires_grad (kept as a bare group up to 0.10.3)
    keep_frozen = bool(c & KEEP_FROZEN)
    if dup:
        if c & BYPASS_DUP or (frozen and not keep_frozen):
            return (-1, LR_NONE, WD_NONE, SKIPPED)
        return (-1, LR_NONE, WD_NONE, DUPLICATE_ERROR)
    if frozen:
        return (-1, LR_NONE, WD_NONE, FROZEN_KEPT if keep_frozen else SKIPPED)
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
