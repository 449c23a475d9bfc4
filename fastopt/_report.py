"""Warnings addressed to the user's code: the warning points at the first caller outside
fastopt, however deep inside fastopt it was raised (no hand-counted stack levels)."""

from __future__ import annotations

import os
import sys
import warnings

#: the package's directory as its modules' code objects name their files
_PACKAGE = os.path.dirname(__file__) + os.sep


def _outside_level() -> int:
    """The ``stacklevel`` of the innermost frame outside fastopt, seen from warn_user's caller."""
    frame = sys._getframe(2)  # warn_user's caller
    level = 2
    while frame is not None and frame.f_code.co_filename.startswith(_PACKAGE):
        frame = frame.f_back
        level += 1
    return level


def warn_user(message: str, category: type[Warning] = UserWarning) -> None:
    """``warnings.warn(message, category)`` attributed to the user's line that called into fastopt."""
    warnings.warn(message, category, stacklevel=_outside_level())
