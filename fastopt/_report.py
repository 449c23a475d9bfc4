"""Warnings addressed to the user: through the host's own channel (mmengine's logger under
mmengine's semantics, Python's warnings under mmcv 1.x's or without a host), a Python warning
pointing at the first caller outside fastopt, however deep inside fastopt it was raised (no
hand-counted stack levels)."""

from __future__ import annotations

import contextlib
import contextvars
import importlib.util
import logging
import os
import sys
import warnings
from collections.abc import Iterator
from typing import Any, Callable

#: the package's directory as its modules' code objects name their files
_PACKAGE = os.path.dirname(__file__) + os.sep


def _import_machinery(frame: Any) -> bool:
    """A frame of importlib's bootstrap, which ``warnings.warn`` does not count in a stacklevel."""
    name = frame.f_code.co_filename
    return "importlib" in name and "_bootstrap" in name


def _outside_level() -> int:
    """The ``stacklevel`` of the innermost frame outside fastopt, seen from warn_user's caller,
    counted as ``warnings.warn`` counts (importlib's frames skipped: a warning raised while a
    module imports points at the user's ``import`` line)."""
    frame = sys._getframe(2)  # warn_user's caller
    level = 2
    while frame is not None and frame.f_code.co_filename.startswith(_PACKAGE):
        frame = frame.f_back
        while frame is not None and _import_machinery(frame):
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
    1.x warns through Python's warnings, or no host is installed) ``warn_user``; inside
    ``held_warnings``, kept for the caller instead."""
    held = _HELD.get()
    if held is not None:
        held.append(message)
        return
    print_log = _mmengine_print_log() if mmengine else None
    if print_log is None:
        warn_user(message)
        return
    print_log(message, logger="current", level=logging.WARNING)


_HELD: contextvars.ContextVar[list[str] | None] = contextvars.ContextVar("fastopt_held_warnings",
                                                                        default=None)


@contextlib.contextmanager
def held_warnings() -> Iterator[list[str]]:
    """Inside the block, ``host_warning`` keeps its messages in the yielded list instead of
    saying them: for a tool that reports them itself (explain) or builds many times (bench)."""
    held: list[str] = []
    token = _HELD.set(held)
    try:
        yield held
    finally:
        _HELD.reset(token)
