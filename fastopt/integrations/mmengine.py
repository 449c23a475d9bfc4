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

A name already registered there by another class is left to that class, with a warning
(``fastopt.integrations.register``).

Resuming a checkpoint saved with mmengine's own constructor: the optimizer maps its state onto
the merged groups, and mmengine's param schedulers map their per-group lists the same way
(``fastopt.checkpoint.merged_scheduler_state``). For that, importing this module replaces
mmengine's ``_ParamScheduler.load_state_dict`` (inherited by every mmengine param scheduler)
with a function that first maps a state dict saved against the reference's groups, when the
scheduler's optimizer is a fastopt one built with a recorded layout, and then calls mmengine's
own; for any other optimizer it is mmengine's function unchanged. ``restore_scheduler_loading()``
puts mmengine's original back, ``apply_scheduler_loading()`` replaces it again and
``scheduler_loading_applied()`` tells which is in place.
"""

from __future__ import annotations

import functools
from typing import Any

from mmengine.optim.scheduler.param_scheduler import _ParamScheduler
from mmengine.registry import OPTIM_WRAPPER_CONSTRUCTORS, OPTIMIZERS

from ..checkpoint import layout_of, merged_scheduler_state
from ..constructor import DefaultOptimWrapperConstructor
from ..layer_decay import LayerDecayOptimizerConstructor, LearningRateDecayOptimizerConstructor
from ..tsm import TSMOptimWrapperConstructor
from . import FastAdam, FastAdamW, FastSGD, register_optimizers, registered_in

__all__ = ["FastAdam", "FastAdamW", "FastLayerDecayOptimizerConstructor",
           "FastLearningRateDecayOptimizerConstructor", "FastOptimWrapperConstructor", "FastSGD",
           "FastTSMOptimWrapperConstructor", "apply_scheduler_loading", "restore_scheduler_loading",
           "scheduler_loading_applied"]

register_optimizers(OPTIMIZERS, "mmengine.registry.OPTIMIZERS")
_CONSTRUCTORS = "mmengine.registry.OPTIM_WRAPPER_CONSTRUCTORS"


def _maps_reference_groups(load: Any) -> Any:
    """``_ParamScheduler.load_state_dict`` that first takes per-group lists saved against the
    reference optimizer's groups onto a fastopt optimizer's merged groups."""

    @functools.wraps(load)  # keeps mmengine's function as __wrapped__
    def load_state_dict(self: Any, state_dict: dict) -> None:
        optimizer = getattr(self.optimizer, "optimizer", self.optimizer)  # an OptimWrapper's
        if layout_of(optimizer) is not None:
            # mmengine's OptimWrapper shows its base_param_settings as one more group
            trailing = len(self.optimizer.param_groups) - len(optimizer.param_groups)
            state_dict = merged_scheduler_state(optimizer, state_dict, trailing)
        load(self, state_dict)

    # marked with itself: a later library's wrapper copies the attribute (functools.wraps), not the identity
    load_state_dict.fastopt_maps_groups = load_state_dict  # type: ignore[attr-defined]
    return load_state_dict


def _installed() -> Any:
    """The ``load_state_dict`` ``_ParamScheduler`` itself defines now."""
    return vars(_ParamScheduler)["load_state_dict"]


def _is_fastopt_loading(fn: Any) -> bool:
    return getattr(fn, "fastopt_maps_groups", None) is fn


def _loading_chain() -> list[Any]:
    """The installed ``load_state_dict`` and the functions it wraps (``__wrapped__``), outermost first."""
    chain = [_installed()]
    while hasattr(chain[-1], "__wrapped__") and len(chain) < 64:
        chain.append(chain[-1].__wrapped__)
    return chain


def scheduler_loading_applied() -> bool:
    """True while mmengine's ``_ParamScheduler.load_state_dict`` maps groups as fastopt's does
    (fastopt's function installed, or wrapped by another library's since)."""
    return any(map(_is_fastopt_loading, _loading_chain()))


#: mmengine's own ``_ParamScheduler.load_state_dict`` (found under fastopt's on a reload).
MMENGINE_LOAD_STATE_DICT = _installed().__wrapped__ if _is_fastopt_loading(_installed()) else _installed()


def apply_scheduler_loading() -> None:
    """Make mmengine's param schedulers map reference-layout per-group lists onto fastopt's merged
    groups as they load (done on import; nothing happens when it is already in place)."""
    if not scheduler_loading_applied():
        _ParamScheduler.load_state_dict = _maps_reference_groups(MMENGINE_LOAD_STATE_DICT)


def restore_scheduler_loading() -> None:
    """Put mmengine's own ``_ParamScheduler.load_state_dict`` back (nothing happens when it is)."""
    if _is_fastopt_loading(_installed()):
        _ParamScheduler.load_state_dict = MMENGINE_LOAD_STATE_DICT
    elif scheduler_loading_applied():
        raise RuntimeError("mmengine's _ParamScheduler.load_state_dict was wrapped by another library after "
                           "fastopt's group mapping; restoring mmengine's own would remove that wrapper too: "
                           "undo the other wrapper first")


apply_scheduler_loading()


@registered_in(OPTIM_WRAPPER_CONSTRUCTORS, _CONSTRUCTORS)
class FastOptimWrapperConstructor(DefaultOptimWrapperConstructor):
    """fastopt's ``DefaultOptimWrapperConstructor`` in mmengine; optimizer types fastopt does not
    know come from mmengine's ``OPTIMIZERS``."""

    fallback_optimizers = OPTIMIZERS


@registered_in(OPTIM_WRAPPER_CONSTRUCTORS, _CONSTRUCTORS)
class FastLearningRateDecayOptimizerConstructor(LearningRateDecayOptimizerConstructor):
    """fastopt's ConvNeXt / BEiT layer-wise lr decay (``fastopt.layer_decay``) in mmengine."""

    fallback_optimizers = OPTIMIZERS


@registered_in(OPTIM_WRAPPER_CONSTRUCTORS, _CONSTRUCTORS)
class FastLayerDecayOptimizerConstructor(LayerDecayOptimizerConstructor):
    """fastopt's ViTDet / BEiT layer decay (``fastopt.layer_decay``) in mmengine."""

    fallback_optimizers = OPTIMIZERS


@registered_in(OPTIM_WRAPPER_CONSTRUCTORS, _CONSTRUCTORS)
class FastTSMOptimWrapperConstructor(TSMOptimWrapperConstructor):
    """fastopt's MMAction2 1.x TSM constructor (``fastopt.tsm``) in mmengine."""

    fallback_optimizers = OPTIMIZERS
