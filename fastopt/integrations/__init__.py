"""Plug-ins that register fastopt into mmengine's and mmcv 1.x's own registries.

Import ``fastopt.integrations.mmengine`` (or list it in a config's ``custom_imports``) and
set ``constructor='FastOptimWrapperConstructor'``; for mmcv 1.x, import
``fastopt.integrations.mmcv`` and set ``constructor='FastOptimizerConstructor'``.

A plug-in never replaces a registration of someone else's: where a name it registers is
already taken by another class (a project's own ``FastSGD``, say), it warns and keeps that
one. Registering fastopt's own class again (a re-import, a module reload) replaces it silently.

``import_mmcv_runner`` imports mmcv 1.x's ``mmcv.runner`` for the mmcv plug-in (and for any
other code of fastopt's that needs it), with one clear ImportError where torchvision, which
``mmcv.runner`` imports, does not import; nothing stands in for torchvision.
"""

from __future__ import annotations

import importlib
import types
from typing import Any, Callable, TypeVar

import torch

from .. import optim
from .._report import warn_user

T = TypeVar("T", bound=type)


class FastSGD(optim.SGD):
    """fastopt's SGD under a name of its own in the host framework's registry."""


class FastAdam(optim.Adam):
    """fastopt's Adam under a name of its own in the host framework's registry."""


class FastAdamW(optim.AdamW):
    """fastopt's AdamW under a name of its own in the host framework's registry."""


FAST_OPTIMIZERS = (FastSGD, FastAdam, FastAdamW)


def _from_torchvision(exc: BaseException) -> bool:
    """True when ``exc`` is torchvision failing to import (missing, or raising as it loads)."""
    if isinstance(exc, ImportError) and (exc.name or "").partition(".")[0] == "torchvision":
        return True
    tb = exc.__traceback__
    while tb is not None:
        if str(tb.tb_frame.f_globals.get("__name__", "")).partition(".")[0] == "torchvision":
            return True
        tb = tb.tb_next
    return False


def import_mmcv_runner(needed_by: str) -> types.ModuleType:
    """mmcv 1.x's ``mmcv.runner``; where it fails because torchvision (which it imports) does not
    import, one ImportError line naming torchvision, ``needed_by`` and what to install."""
    try:
        return importlib.import_module("mmcv.runner")
    # what an unusable torchvision raises as mmcv.runner imports it: missing (ImportError), or
    # failing as it loads beside another torch build (RuntimeError for its operators,
    # AttributeError for a half-initialised module)
    except (ImportError, RuntimeError, AttributeError) as exc:
        if not _from_torchvision(exc):
            raise
        raise ImportError(
            f"{needed_by} needs mmcv.runner, which imports torchvision, and torchvision does not import "
            f"here ({type(exc).__name__}: {exc}); install the torchvision release built for torch "
            f"{torch.__version__}", name="torchvision") from exc


def _same_definition(a: Any, b: type) -> bool:
    """True when ``a`` is ``b`` or the same class statement run again (a module reload)."""
    return a is b or (isinstance(a, type) and a.__module__ == b.__module__
                      and a.__qualname__ == b.__qualname__)


def register(registry: Any, cls: T, label: str) -> bool:
    """Register ``cls`` under its name in a host registry (``label`` names it in the warning);
    False, with a warning, when the name already holds another class, which is kept."""
    name = cls.__name__
    taken = registry.module_dict.get(name)
    if taken is not None and not _same_definition(taken, cls):
        where = f"{getattr(taken, '__module__', '?')}.{getattr(taken, '__qualname__', repr(taken))}"
        warn_user(
            f"{name!r} is already registered in {label} as {where}; fastopt keeps that registration "
            f"and does not register its own {name} there (config type={name!r} builds {where}; "
            f"fastopt's class stays usable as {cls.__module__}.{cls.__qualname__})")
        return False
    # force only ever replaces fastopt's own earlier registration of this class (a reload)
    registry.register_module(module=cls, force=taken is not None)
    return True


def registered_in(registry: Any, label: str) -> Callable[[T], T]:
    """Class decorator form of :func:`register`; returns the class either way."""

    def decorator(cls: T) -> T:
        register(registry, cls, label)
        return cls

    return decorator


def register_optimizers(host_optimizers: Any, label: str = "the host's optimizer registry") -> list[str]:
    """Register ``FastSGD`` / ``FastAdam`` / ``FastAdamW`` in a host framework's optimizer registry
    (names another class holds are kept, with a warning); the names registered."""
    return [cls.__name__ for cls in FAST_OPTIMIZERS if register(host_optimizers, cls, label)]
