"""Plug-ins that register fastopt into mmengine's and mmcv 1.x's own registries.

Import ``fastopt.integrations.mmengine`` (or list it in a config's ``custom_imports``) and
set ``constructor='FastOptimWrapperConstructor'``; for mmcv 1.x, import
``fastopt.integrations.mmcv`` and set ``constructor='FastOptimizerConstructor'``.
"""

from __future__ import annotations

from typing import Any

from .. import optim


class FastSGD(optim.SGD):
    """fastopt's SGD under a name of its own in the host framework's registry."""


class FastAdam(optim.Adam):
    """fastopt's Adam under a name of its own in the host framework's registry."""


class FastAdamW(optim.AdamW):
    """fastopt's AdamW under a name of its own in the host framework's registry."""


FAST_OPTIMIZERS = (FastSGD, FastAdam, FastAdamW)


def register_plugin(module: str, host_optimizers: Any, host_constructors: Any, *bases: type) -> list[type]:
    """Register ``FastSGD`` / ``FastAdam`` / ``FastAdamW`` in the host framework's optimizer
    registry and, for each base constructor, a subclass ``Fast<Name>`` (its name without a
    ``Default`` / ``Mmcv`` prefix) in its constructor registry; the subclasses look up the
    optimizer types fastopt lacks in ``host_optimizers``. Returns them in the order given."""
    for cls in FAST_OPTIMIZERS:
        host_optimizers.register_module(module=cls, force=True)
    made = []
    for base in bases:
        name = "Fast" + base.__name__.removeprefix("Default").removeprefix("Mmcv")
        doc = (f"``{base.__module__}.{base.__name__}`` under its plug-in name; optimizer types "
               "fastopt does not know come from the host framework's registry.")
        cls = type(name, (base,), {"__module__": module, "__qualname__": name, "__doc__": doc,
                                   "fallback_optimizers": host_optimizers})
        host_constructors.register_module(module=cls, force=True)
        made.append(cls)
    return made
