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


def register_optimizers(host_optimizers: Any) -> None:
    """Register ``FastSGD`` / ``FastAdam`` / ``FastAdamW`` in a host framework's optimizer registry."""
    for cls in FAST_OPTIMIZERS:
        host_optimizers.register_module(module=cls, force=True)
