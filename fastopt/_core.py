"""Native core loader: ``fastopt._C`` when built, else the plain-Python reference."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from . import _reference

try:
    from . import _C
except ImportError:  # pragma: no cover - exercised only without a compiled extension
    _C = None

HAVE_NATIVE = _C is not None


def match(names: Sequence[str], keys: Sequence[str]) -> np.ndarray:
    """Winning custom key index per name (-1: none), natively when possible."""
    if _C is not None:
        try:
            return _C.match(list(names), list(keys))
        except UnicodeEncodeError:  # lone surrogates cannot cross as UTF-8
            pass
    return _reference.match(names, keys)


def assign(
    names: Sequence[str], flags: np.ndarray, keys: Sequence[str], config: int
) -> tuple[np.ndarray, np.ndarray]:
    """Rule signature per parameter: (ids, table of (key, lr_rule, wd_rule, kind))."""
    flags = np.ascontiguousarray(flags, dtype=np.uint32)
    if _C is not None:
        try:
            return _C.assign(names, flags, list(keys), config)
        except UnicodeEncodeError:
            pass
    return _reference.assign(names, flags, keys, config)
