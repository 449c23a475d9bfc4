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

Resuming a checkpoint saved with mmengine's own constructor: the optimizer maps its state onto
the merged groups, and mmengine's param schedulers (their ``load_state_dict``, patched once on
import) map their per-group lists the same way (``fastopt.checkpoint.merged_scheduler_state``).
"""

from __future__ import annotations

from typing import Any

from mmengine.optim.scheduler.param_scheduler import _ParamScheduler
from mmengine.registry import OPTIM_WRAPPER_CONSTRUCTORS, OPTIMIZERS

from ..checkpoint import layout_of, merged_scheduler_state
from ..constructor import DefaultOptimWrapperConstructor
from ..layer_decay import LayerDecayOptimizerConstructor, LearningRateDecayOptimizerConstructor
from ..tsm import TSMOptimWrapperConstructor
from . import FastAdam, FastAdamW, FastSGD, register_optimizers

__all__ = ["FastAdam", "FastAdamW", "FastLayerDecayOptimizerConstructor",
           "FastLearningRateDecayOptimizerConstructor", "FastOptimWrapperConstructor", "FastSGD",
           "FastTSMOptimWrapperConstructor"]

register_optimizers(OPTIMIZERS)


def _maps_reference_groups(load: Any) -> Any:
    """``_ParamScheduler.load_state_dict`` that first takes per-group lists saved against the
    reference optimizer's groups onto a fastopt optimizer's merged groups."""

    def load_state_dict(self: Any, state_dict: dict) -> None:
        optimizer = getattr(self.optimizer, "optimizer", self.optimizer)  # an OptimWrapper's
        if layout_of(optimizer) is not None:
            # mmengine's OptimWrapper shows its base_param_settings as one more group
            trailing = len(self.optimizer.param_groups) - len(optimizer.param_groups)
            state_dict = merged_scheduler_state(optimizer, state_dict, trailing)
        load(self, state_dict)

    load_state_dict.__doc__ = load.__doc__
    load_state_dict._fastopt_maps_groups = True  # type: ignore[attr-defined]
    return load_state_dict


if not getattr(_ParamScheduler.load_state_dict, "_fastopt_maps_groups", False):
    _ParamScheduler.load_state_dict = _maps_reference_groups(_ParamScheduler.load_state_dict)


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
