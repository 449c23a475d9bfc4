"""Warnings addressed to the user: through the host's own channel (mmengine's logger under
mmengine's semantics, Python's warnings under mmcv 1.x's or without a host), a Python warning
pointing at the first caller outside fastopt, however deep inside fastopt it was raised (no
hand-counted stack levels)."""

from __future__ import annotations

import importlib.util
import logging
import os
import sys
import warnings
from typing import Callable

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


def _mmengine_print_log() -> Callable[..., None] | None:
    """mmengine's ``print_log`` when mmengine is installed, else None."""
    if importlib.util.find_spec("mmengine") is None:
        return None
    from mmengine.logging import print_log

    return print_log


def host_warning(message: str, mmengine: bool) -> None:
    """A warning where the host's own constructor gives its warnings: under mmengine's semantics
    with mmengine installed, mmengine's current ``MMLogger`` at WARNING (``print_log(...,
    logger='current')``, what its log file and its tests' ``assertLogs`` see); otherwise (mmcv
    1.x warns through Python's warnings, or no host is installed) ``warn_user``."""
    print_log = _mmengine_print_log() if mmengine else None
    if print_log is None:
        warn_user(message)
        return
    print_log(message, logger="current", level=logging.WARNING)
