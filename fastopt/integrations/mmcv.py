"""Register fastopt into mmcv 1.x: one config line switches a project over.

    custom_imports = dict(imports=['fastopt.integrations.mmcv'], allow_failed_imports=False)
    optimizer = dict(type='SGD', lr=0.02, momentum=0.9, weight_decay=1e-4,
                     constructor='FastOptimizerConstructor',
                     paramwise_cfg=dict(norm_decay_mult=0.))

Registered into ``mmcv.runner``'s registries: ``FastOptimizerConstructor`` (in
``OPTIMIZER_BUILDERS``) and ``FastSGD``, ``FastAdam``, ``FastAdamW`` (in ``OPTIMIZERS``).
The constructor follows mmcv 1.7.2's ``DefaultOptimizerConstructor`` exactly and finds
optimizer types fastopt does not know in mmcv's ``OPTIMIZERS``.
"""

from __future__ import annotations

import sys
import types

if "torchvision" not in sys.modules:  # mmcv.runner imports torchvision, which may not load
    try:
        import torchvision  # noqa: F401
    except Exception:
        sys.modules["torchvision"] = types.ModuleType("torchvision")

from mmcv.runner import OPTIMIZER_BUILDERS, OPTIMIZERS

from .. import optim
from ..constructor import DefaultOptimizerConstructor

__all__ = ["FastAdam", "FastAdamW", "FastOptimizerConstructor", "FastSGD"]


class FastSGD(optim.SGD):
    """fastopt's SGD under a name of its own in mmcv's registry."""


class FastAdam(optim.Adam):
    """fastopt's Adam under a name of its own in mmcv's registry."""


class FastAdamW(optim.AdamW):
    """fastopt's AdamW under a name of its own in mmcv's registry."""


class FastOptimizerConstructor(DefaultOptimizerConstructor):
    """mmcv 1.x's DefaultOptimizerConstructor semantics, built the fastopt way."""

    fallback_optimizers = OPTIMIZERS


for _cls in (FastSGD, FastAdam, FastAdamW):
    OPTIMIZERS.register_module(module=_cls, force=True)
OPTIMIZER_BUILDERS.register_module(module=FastOptimizerConstructor, force=True)
