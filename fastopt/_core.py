"""Native core loader: ``fastopt._C`` when built, else the plain-Python reference for rule
assignment (the step kernels have no fallback: torch's own step runs instead)."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from . import _reference

try:
    from . import _C
except ImportError:  # pragma: no cover - exercised only without a compiled extension
    _C = None

HAVE_NATIVE = _C is not None


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
