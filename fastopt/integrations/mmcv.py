"""Register fastopt into mmcv 1.x: one config line switches a project over.

    custom_imports = dict(imports=['fastopt.integrations.mmcv'], allow_failed_imports=False)
    optimizer = dict(type='SGD', lr=0.02, momentum=0.9, weight_decay=1e-4,
                     constructor='FastOptimizerConstructor',
                     paramwise_cfg=dict(norm_decay_mult=0.))

Registered into ``mmcv.runner``'s registries: ``FastOptimizerHook`` (in ``HOOKS``: gradient
clipping fused into the step), ``FastOptimizerConstructor``,
``FastLearningRateDecayOptimizerConstructor``, ``FastLayerDecayOptimizerConstructor`` and
``FastTSMOptimizerConstructor`` (in ``OPTIMIZER_BUILDERS``; the layer-wise lr decay recipes of
MMDetection 2.x / MMSegmentation 0.x, see ``fastopt.layer_decay``, and MMAction2 0.x's TSM
recipe, see ``fastopt.tsm``) and ``FastSGD``, ``FastAdam``, ``FastAdamW`` (in
``OPTIMIZERS``).
The constructor follows mmcv 1.7.2's ``DefaultOptimizerConstructor`` exactly and finds
optimizer types fastopt does not know in mmcv's ``OPTIMIZERS``.
"""

from __future__ import annotations

from typing import Any

from .._compat import ensure_torchvision

ensure_torchvision()  # mmcv.runner imports torchvision, which may not load beside this torch

from mmcv.runner import HOOKS, OPTIMIZER_BUILDERS, OPTIMIZERS, OptimizerHook  # noqa: E402

from ..constructor import DefaultOptimizerConstructor  # noqa: E402
from ..layer_decay import (  # noqa: E402
    MmcvLayerDecayOptimizerConstructor,
    MmcvLearningRateDecayOptimizerConstructor,
)
from ..tsm import TSMOptimizerConstructor  # noqa: E402
from ..wrapper import clip_in_next_step  # noqa: E402
from . import FastAdam, FastAdamW, FastSGD, register_optimizers  # noqa: E402

__all__ = ["FastAdam", "FastAdamW", "FastLayerDecayOptimizerConstructor",
           "FastLearningRateDecayOptimizerConstructor", "FastOptimizerConstructor", "FastOptimizerHook",
           "FastSGD", "FastTSMOptimizerConstructor"]

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


@HOOKS.register_module(force=True)
class FastOptimizerHook(OptimizerHook):
    """mmcv's ``OptimizerHook`` with gradient clipping fused into fastopt's step:
    ``optimizer_config=dict(type='FastOptimizerHook', grad_clip=dict(max_norm=35, norm_type=2))``.

    The norm of every parameter that requires grad and has one is one native pass; the
    coefficient goes to the optimizer's next step instead of multiplying the gradients;
    ``grad_norm`` is logged to the runner as mmcv logs it. With an optimizer that is not
    fastopt's (or a dict of them) it is mmcv's hook unchanged."""

    def after_train_iter(self, runner: Any) -> None:
        """zero_grad, backward, clip (fused), step: mmcv's order."""
        if self.grad_clip is None or not hasattr(runner.optimizer, "clip_next_step"):
            super().after_train_iter(runner)
            return
        runner.optimizer.zero_grad()
        if self.detect_anomalous_params:
            self.detect_anomalous_parameters(runner.outputs["loss"], runner)
        runner.outputs["loss"].backward()
        norm = clip_in_next_step(runner.optimizer, runner.model.parameters(), self.grad_clip)
        if norm is not None:
            runner.log_buffer.update({"grad_norm": float(norm)}, runner.outputs["num_samples"])
        runner.optimizer.step()
