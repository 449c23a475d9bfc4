"""Register fastopt into mmcv 1.x: one config line switches a project over.

    custom_imports = dict(imports=['fastopt.integrations.mmcv'], allow_failed_imports=False)
    optimizer = dict(type='SGD', lr=0.02, momentum=0.9, weight_decay=1e-4,
                     constructor='FastOptimizerConstructor',
                     paramwise_cfg=dict(norm_decay_mult=0.))

Registered into ``mmcv.runner``'s registries: ``FastOptimizerHook``, ``FastFp16OptimizerHook``
and their gradient-accumulating twins ``FastGradientCumulativeOptimizerHook`` and
``FastGradientCumulativeFp16OptimizerHook`` (in ``HOOKS``: gradient clipping, and under a loss
scale the unscaling and the inf/NaN check too, fused into the step), ``FastOptimizerConstructor``,
``FastLearningRateDecayOptimizerConstructor``, ``FastLayerDecayOptimizerConstructor`` and
``FastTSMOptimizerConstructor`` (in ``OPTIMIZER_BUILDERS``; the layer-wise lr decay recipes of
MMDetection 2.x / MMSegmentation 0.x, see ``fastopt.layer_decay``, and MMAction2 0.x's TSM
recipe, see ``fastopt.tsm``) and ``FastSGD``, ``FastAdam``, ``FastAdamW`` (in
``OPTIMIZERS``).
The constructor follows mmcv 1.7.2's ``DefaultOptimizerConstructor`` exactly and finds
optimizer types fastopt does not know in mmcv's ``OPTIMIZERS``. A name already registered there
by another class is left to that class, with a warning (``fastopt.integrations.register``).

``mmcv.runner`` imports torchvision; where torchvision cannot be imported, importing this module
raises an ImportError saying so (the plug-in does not stand in for torchvision).
"""

from __future__ import annotations

from typing import Any

import torch

from . import import_mmcv_runner

import_mmcv_runner("fastopt.integrations.mmcv")  # one clear ImportError where torchvision does not import

from mmcv.runner import HOOKS, OPTIMIZER_BUILDERS, OPTIMIZERS, Fp16OptimizerHook, OptimizerHook  # noqa: E402
from mmcv.runner.fp16_utils import wrap_fp16_model  # noqa: E402
from mmcv.runner.hooks import optimizer as mmcv_optimizer_hooks  # noqa: E402
from mmcv.utils import IS_NPU_AVAILABLE  # noqa: E402

from .._torch_compat import grad_scaler  # noqa: E402
from ..amp import amp_phase, scaler_settings  # noqa: E402
from ..clip_grad import clip_in_next_step, host_clipped  # noqa: E402
from ..constructor import DefaultOptimizerConstructor  # noqa: E402
from ..layer_decay import (  # noqa: E402
    MmcvLayerDecayOptimizerConstructor,
    MmcvLearningRateDecayOptimizerConstructor,
)
from ..optim import is_fastopt_optimizer  # noqa: E402
from ..tsm import TSMOptimizerConstructor  # noqa: E402
from . import FastAdam, FastAdamW, FastSGD, register_optimizers, registered_in  # noqa: E402

__all__ = ["FastAdam", "FastAdamW", "FastFp16OptimizerHook", "FastLayerDecayOptimizerConstructor",
           "FastLearningRateDecayOptimizerConstructor", "FastOptimizerConstructor", "FastOptimizerHook",
           "FastSGD", "FastTSMOptimizerConstructor"]

register_optimizers(OPTIMIZERS, "mmcv.runner.OPTIMIZERS")
_BUILDERS, _HOOKS = "mmcv.runner.OPTIMIZER_BUILDERS", "mmcv.runner.HOOKS"


@registered_in(OPTIMIZER_BUILDERS, _BUILDERS)
class FastOptimizerConstructor(DefaultOptimizerConstructor):
    """fastopt's mmcv 1.x ``DefaultOptimizerConstructor`` in mmcv; optimizer types fastopt does
    not know come from mmcv's ``OPTIMIZERS``."""

    fallback_optimizers = OPTIMIZERS


@registered_in(OPTIMIZER_BUILDERS, _BUILDERS)
class FastLearningRateDecayOptimizerConstructor(MmcvLearningRateDecayOptimizerConstructor):
    """fastopt's MMDetection 2.x / MMSegmentation 0.x layer-wise lr decay in mmcv."""

    fallback_optimizers = OPTIMIZERS


@registered_in(OPTIMIZER_BUILDERS, _BUILDERS)
class FastLayerDecayOptimizerConstructor(MmcvLayerDecayOptimizerConstructor):
    """fastopt's mmcv 1.x-style layer decay (MMSegmentation 0.x BEiT, or ViTDet's rules) in mmcv."""

    fallback_optimizers = OPTIMIZERS


@registered_in(OPTIMIZER_BUILDERS, _BUILDERS)
class FastTSMOptimizerConstructor(TSMOptimizerConstructor):
    """fastopt's MMAction2 0.x TSM constructor in mmcv."""

    fallback_optimizers = OPTIMIZERS


class _ClipsIntoTheStep:
    """Mixin for mmcv's optimizer hooks: with a fastopt optimizer ``clip_grads`` takes the norm
    in one native pass and hands the coefficient to the optimizer's next step instead of
    multiplying the gradients in place; mmcv's ``clip_grad_norm_`` otherwise."""

    grad_clip: dict | None
    _fastopt_optimizer: Any = None

    def clip_grads(self, params: Any) -> torch.Tensor | None:
        """The norm of the parameters that require grad and have one (None: there are none),
        their clipping left to the step that follows, as mmcv's hooks call it."""
        return self.clip_into_step(self._fastopt_optimizer, params)

    def clip_into_step(self, optimizer: Any, params: Any) -> torch.Tensor | None:
        """``clip_grads`` for the step of ``optimizer``."""
        if not is_fastopt_optimizer(optimizer):  # (the type: a Mock has every attribute)
            return super().clip_grads(params)  # type: ignore[misc]
        return clip_in_next_step(optimizer, params, self.grad_clip or {})

    def after_train_iter(self, runner: Any) -> None:
        """mmcv's own iteration (backward, clip, step) with the runner's optimizer in view."""
        self._fastopt_optimizer = runner.optimizer
        super().after_train_iter(runner)  # type: ignore[misc]


@registered_in(HOOKS, _HOOKS)
class FastOptimizerHook(_ClipsIntoTheStep, OptimizerHook):
    """mmcv's ``OptimizerHook`` with gradient clipping fused into fastopt's step:
    ``optimizer_config=dict(type='FastOptimizerHook', grad_clip=dict(max_norm=35, norm_type=2))``.

    The norm of every parameter that requires grad and has one is one native pass; the
    coefficient goes to the optimizer's next step instead of multiplying the gradients;
    ``grad_norm`` is logged to the runner as mmcv logs it. With an optimizer that is not
    fastopt's (or a dict of them) it is mmcv's hook unchanged."""


@registered_in(HOOKS, _HOOKS)
class FastFp16OptimizerHook(_ClipsIntoTheStep, Fp16OptimizerHook):
    """mmcv's ``Fp16OptimizerHook`` (GradScaler) with the optimizer phase fused into fastopt's
    step: ``optimizer_config=dict(type='FastFp16OptimizerHook', loss_scale='dynamic',
    grad_clip=dict(max_norm=35))``; the same keys (``loss_scale``: ``'dynamic'``, a number or a
    dict of GradScaler arguments; ``grad_clip``, ``coalesce``, ``bucket_size_mb``,
    ``distributed``) and the scaler's state in ``runner.meta['fp16']['loss_scaler']``.

    With a fastopt optimizer one native pass over the still scaled gradients gives the norm
    and the inf/NaN check, the step unscales and clips as it reads each gradient, and the scale
    is updated as ``GradScaler.update`` does (``fastopt.amp.amp_phase``); otherwise
    mmcv's sequence runs (clipping into the step where the optimizer takes it). The scaler is
    mmcv's where a GPU (or NPU) is available, a CPU ``torch.amp.GradScaler`` otherwise (mmcv's
    CUDA scaler turns itself off there).
    """

    def __init__(self, grad_clip: dict | None = None, coalesce: bool = True, bucket_size_mb: int = -1,
                 loss_scale: float | str | dict = 512.0, distributed: bool = True) -> None:
        self.grad_clip = grad_clip
        self.coalesce = coalesce
        self.bucket_size_mb = bucket_size_mb
        self.distributed = distributed
        scaler_args, self._scale_update_param = scaler_settings(loss_scale, ValueError)  # (mmcv's class)
        if IS_NPU_AVAILABLE:
            self.loss_scaler = mmcv_optimizer_hooks.GradScaler(**scaler_args)
        else:
            device = "cuda" if torch.cuda.is_available() else "cpu"
            self.loss_scaler = grad_scaler(device, **scaler_args)

    def before_run(self, runner: Any) -> None:
        """Set the model's fp16 flags and resume the scaler from ``runner.meta`` (a state saved
        by a disabled scaler, which is empty, leaves it as configured)."""
        wrap_fp16_model(runner.model)
        state = (runner.meta or {}).get("fp16", {}).get("loss_scaler")
        if state:
            self.loss_scaler.load_state_dict(state)

    def after_train_iter(self, runner: Any) -> None:
        """zero_grad, scaled backward, then ``optimizer_phase``."""
        runner.model.zero_grad()
        runner.optimizer.zero_grad()
        self.loss_scaler.scale(runner.outputs["loss"]).backward()
        self.optimizer_phase(runner)

    def optimizer_phase(self, runner: Any) -> None:
        """The fused phase (mmcv's unscale_, clip, step and update where it cannot be fused);
        grad_norm logged and the scaler's state kept in ``runner.meta`` as mmcv does."""
        params = host_clipped(runner.model.parameters())

        def log(norm: torch.Tensor) -> None:
            runner.log_buffer.update({"grad_norm": float(norm)}, runner.outputs["num_samples"])

        amp_phase(runner.optimizer, self.loss_scaler, params, self.grad_clip, self._scale_update_param, {},
                  lambda: self._unfused_phase(runner), log)
        if runner.meta is None:
            runner.meta = {}
        runner.meta.setdefault("fp16", {})["loss_scaler"] = self.loss_scaler.state_dict()

    def _unfused_phase(self, runner: Any) -> torch.Tensor | None:
        """mmcv's unscale_, clip (into the next step with a fastopt optimizer), step, update."""
        self.loss_scaler.unscale_(runner.optimizer)
        norm = None
        if self.grad_clip is not None:
            norm = self.clip_into_step(runner.optimizer, runner.model.parameters())
        self.loss_scaler.step(runner.optimizer)
        self.loss_scaler.update(self._scale_update_param)
        return norm


if hasattr(mmcv_optimizer_hooks, "GradientCumulativeOptimizerHook"):  # mmcv >= 1.3.16
    GradientCumulativeOptimizerHook = mmcv_optimizer_hooks.GradientCumulativeOptimizerHook

    @registered_in(HOOKS, _HOOKS)
    class FastGradientCumulativeOptimizerHook(_ClipsIntoTheStep, GradientCumulativeOptimizerHook):
        """mmcv's ``GradientCumulativeOptimizerHook`` (a step every ``cumulative_iters``
        iterations, the loss divided to match) with clipping fused into fastopt's step, as
        ``FastOptimizerHook``: ``optimizer_config=dict(type='FastGradientCumulativeOptimizerHook',
        cumulative_iters=4, grad_clip=dict(max_norm=35))``."""

    @registered_in(HOOKS, _HOOKS)
    class FastGradientCumulativeFp16OptimizerHook(GradientCumulativeOptimizerHook, FastFp16OptimizerHook):
        """mmcv's ``GradientCumulativeFp16OptimizerHook`` with the optimizer phase of
        ``FastFp16OptimizerHook``: the scaled gradients of ``cumulative_iters`` iterations add up,
        then one fused unscale + clip + step + scale update, and the gradients are cleared."""

        def after_train_iter(self, runner: Any) -> None:
            """Scaled backward of the divided loss; on an update iteration the fused phase."""
            if not self.initialized:
                self._init(runner)
            self.loss_scaler.scale(runner.outputs["loss"] / self._get_loss_factor(runner)).backward()
            if self.every_n_iters(runner, self.cumulative_iters) or self.is_last_iter(runner):
                self.optimizer_phase(runner)
                runner.model.zero_grad()
                runner.optimizer.zero_grad()

    __all__ += ["FastGradientCumulativeFp16OptimizerHook", "FastGradientCumulativeOptimizerHook"]
