"""Register fastopt into mmcv 1.x: one config line switches a project over.

    custom_imports = dict(imports=['fastopt.integrations.mmcv'], allow_failed_imports=False)
    optimizer = dict(type='SGD', lr=0.02, momentum=0.9, weight_decay=1e-4,
                     constructor='FastOptimizerConstructor',
                     paramwise_cfg=dict(norm_decay_mult=0.))

Registered into ``mmcv.runner``'s registries: ``FastOptimizerConstructor``,
``FastLearningRateDecayOptimizerConstructor``, ``FastLayerDecayOptimizerConstructor`` and
``FastTSMOptimizerConstructor`` (in ``OPTIMIZER_BUILDERS``; the layer-wise lr decay recipes of
MMDetection 2.x / MMSegmentation 0.x, see ``fastopt.layer_decay``, and MMAction2 0.x's TSM
recipe, see ``fastopt.tsm``) and ``FastSGD``, ``FastAdam``, ``FastAdamW`` (in
``OPTIMIZERS``).
The constructor follows mmcv 1.7.2's ``DefaultOptimizerConstructor`` exactly and finds
optimizer types fastopt does not know in mmcv's ``OPTIMIZERS``.
"""

from __future__ import annotations

from .._compat import ensure_torchvision

ensure_torchvision()  # mmcv.runner imports torchvision, which may not load beside this torch

from mmcv.runner import OPTIMIZER_BUILDERS, OPTIMIZERS  # noqa: E402

from ..constructor import DefaultOptimizerConstructor  # noqa: E402
from ..layer_decay import (  # noqa: E402
    MmcvLayerDecayOptimizerConstructor,
    MmcvLearningRateDecayOptimizerConstructor,
)
from ..tsm import TSMOptimizerConstructor  # noqa: E402
from . import FastAdam, FastAdamW, FastSGD, register_optimizers  # noqa: E402

__all__ = ["FastAdam", "FastAdamW", "FastLayerDecayOptimizerConstructor",
           "FastLearningRateDecayOptimizerConstructor", "FastOptimizerConstructor", "FastSGD",
           "FastTSMOptimizerConstructor"]

register_optimizers(OPTIMIZERS)


@OPTIMIZER_BUILDERS.register_module(force=True)
class FastOptimizerConstructor(DefaultOptimizerConstructor):
    """fastopt's mmcv 1.x ``DefaultOptimizerConstructor`` in mmcv; optimizer types fastopt does
    not know come from mmcv's ``OPTIMIZERS``."""

    fallback_optimizers = OPTIMIZERS


@OPTIMIZER_BUILDERS.register_module(force=True)
class FastLearningRateDecayOptimizerConstructor(MmcvLearningRateDecayOptimizerConstructor):
    """fastopt's MMDetection 2.x / MMSegmentation 0.x layer-wise lr decay in mmcv."""

    fallback_optimizers = OPTIMIZERS


@OPTIMIZER_BUILDERS.register_module(force=True)
class FastLayerDecayOptimizerConstructor(MmcvLayerDecayOptimizerConstructor):
    """fastopt's mmcv 1.x-style layer decay (MMSegmentation 0.x BEiT, or ViTDet's rules) in mmcv."""

    fallback_optimizers = OPTIMIZERS


@OPTIMIZER_BUILDERS.register_module(force=True)
class FastTSMOptimizerConstructor(TSMOptimizerConstructor):
    """fastopt's MMAction2 0.x TSM constructor in mmcv."""

    fallback_optimizers = OPTIMIZERS
