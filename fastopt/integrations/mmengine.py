"""Register fastopt into mmengine: one config line switches a project over.

    custom_imports = dict(imports=['fastopt.integrations.mmengine'], allow_failed_imports=False)
    optim_wrapper = dict(
        constructor='FastOptimWrapperConstructor',
        optimizer=dict(type='AdamW', lr=1e-4, weight_decay=0.05),
        paramwise_cfg=dict(norm_decay_mult=0.))

Registered into mmengine's registries: ``FastOptimWrapperConstructor``,
``FastLearningRateDecayOptimizerConstructor``, ``FastLayerDecayOptimizerConstructor`` and
``FastTSMOptimWrapperConstructor`` (in ``OPTIM_WRAPPER_CONSTRUCTORS``; the layer-wise lr decay
recipes of MMDetection / MMSegmentation, see ``fastopt.layer_decay``, and MMAction2's TSM
recipe, see ``fastopt.tsm``) and ``FastSGD``, ``FastAdam``,
``FastAdamW`` (in ``OPTIMIZERS``). The constructor gives every parameter exactly the hyperparameters of
mmengine's ``DefaultOptimWrapperConstructor``, merges equal groups, steps ``SGD`` / ``Adam``
/ ``AdamW`` with fastopt's native kernels, builds the wrapper from mmengine's
``OPTIM_WRAPPERS`` and finds other optimizer types in mmengine's ``OPTIMIZERS`` (so
optimizers registered by downstream projects keep working).
"""

from __future__ import annotations

from mmengine.registry import OPTIM_WRAPPER_CONSTRUCTORS, OPTIMIZERS

from ..constructor import DefaultOptimWrapperConstructor
from ..layer_decay import LayerDecayOptimizerConstructor, LearningRateDecayOptimizerConstructor
from ..tsm import TSMOptimWrapperConstructor
from . import FastAdam, FastAdamW, FastSGD, register_optimizers

__all__ = ["FastAdam", "FastAdamW", "FastLayerDecayOptimizerConstructor",
           "FastLearningRateDecayOptimizerConstructor", "FastOptimWrapperConstructor", "FastSGD",
           "FastTSMOptimWrapperConstructor"]

register_optimizers(OPTIMIZERS)


@OPTIM_WRAPPER_CONSTRUCTORS.register_module(force=True)
class FastOptimWrapperConstructor(DefaultOptimWrapperConstructor):
    """fastopt's ``DefaultOptimWrapperConstructor`` in mmengine; optimizer types fastopt does not
    know come from mmengine's ``OPTIMIZERS``."""

    fallback_optimizers = OPTIMIZERS


@OPTIM_WRAPPER_CONSTRUCTORS.register_module(force=True)
class FastLearningRateDecayOptimizerConstructor(LearningRateDecayOptimizerConstructor):
    """fastopt's ConvNeXt / BEiT layer-wise lr decay (``fastopt.layer_decay``) in mmengine."""

    fallback_optimizers = OPTIMIZERS


@OPTIM_WRAPPER_CONSTRUCTORS.register_module(force=True)
class FastLayerDecayOptimizerConstructor(LayerDecayOptimizerConstructor):
    """fastopt's ViTDet / BEiT layer decay (``fastopt.layer_decay``) in mmengine."""

    fallback_optimizers = OPTIMIZERS


@OPTIM_WRAPPER_CONSTRUCTORS.register_module(force=True)
class FastTSMOptimWrapperConstructor(TSMOptimWrapperConstructor):
    """fastopt's MMAction2 1.x TSM constructor (``fastopt.tsm``) in mmengine."""

    fallback_optimizers = OPTIMIZERS
