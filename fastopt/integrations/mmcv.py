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
optimizer types fastopt does not know in mmcv's ``OPTIMIZERS``.
"""

from __future__ import annotations

from typing import Any

import torch

from .._compat import ensure_torchvision

ensure_torchvision()  # mmcv.runner imports torchvision, which may not load beside this torch

from mmcv.runner import HOOKS, OPTIMIZER_BUILDERS, OPTIMIZERS, Fp16OptimizerHook, OptimizerHook  # noqa: E402
from mmcv.runner.fp16_utils import wrap_fp16_model  # noqa: E402
from mmcv.runner.hooks import optimizer as mmcv_optimizer_hooks  # noqa: E402
from mmcv.utils import IS_NPU_AVAILABLE  # noqa: E402

from .._torch_compat import grad_scaler  # noqa: E402
from ..constructor import DefaultOptimizerConstructor  # noqa: E402
from ..layer_decay import (  # noqa: E402
    MmcvLayerDecayOptimizerConstructor,
    MmcvLearningRateDecayOptimizerConstructor,
)
from ..tsm import TSMOptimizerConstructor  # noqa: E402
from ..wrapper import clip_in_next_step, fused_amp_step  # noqa: E402
from . import FastAdam, FastAdamW, FastSGD, register_optimizers  # noqa: E402

__all__ = ["FastAdam", "FastAdamW", "FastFp16OptimizerHook", "FastLayerDecayOptimizerConstructor",
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
        if not hasattr(optimizer, "clip_next_step"):
            return super().clip_grads(params)  # type: ignore[misc]
        return clip_in_next_step(optimizer, params, self.grad_clip or {})

    def after_train_iter(self, runner: Any) -> None:
        """mmcv's own iteration (backward, clip, step) with the runner's optimizer in view."""
        self._fastopt_optimizer = runner.optimizer
        super().after_train_iter(runner)  # type: ignore[misc]


@HOOKS.register_module(force=True)
class FastOptimizerHook(_ClipsIntoTheStep, OptimizerHook):
    """mmcv's ``OptimizerHook`` with gradient clipping fused into fastopt's step:
    ``optimizer_config=dict(type='FastOptimizerHook', grad_clip=dict(max_norm=35, norm_type=2))``.

    The norm of every parameter that requires grad and has one is one native pass; the
    coefficient goes to the optimizer's next step instead of multiplying the gradients;
    ``grad_norm`` is logged to the runner as mmcv logs it. With an optimizer that is not
    fastopt's (or a dict of them) it is mmcv's hook unchanged."""


@HOOKS.register_module(force=True)
class FastFp16OptimizerHook(_ClipsIntoTheStep, Fp16OptimizerHook):
    """mmcv's ``Fp16OptimizerHook`` (GradScaler) with the optimizer phase fused into fastopt's
    step: ``optimizer_config=dict(type='FastFp16OptimizerHook', loss_scale='dynamic',
    grad_clip=dict(max_norm=35))``; the same keys (``loss_scale``: ``'dynamic'``, a number or a
    dict of GradScaler arguments; ``grad_clip``, ``coalesce``, ``bucket_size_mb``,
    ``distributed``) and the scaler's state in ``runner.meta['fp16']['loss_scaler']``.

    With a fastopt optimizer one native pass over the still scaled gradients gives the norm
    and the inf/NaN check, the step unscales and clips as it reads each gradient, and the scale
    is updated as ``GradScaler.update`` does (``fastopt.wrapper.fused_amp_step``); otherwise
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
        self._scale_update_param: float | None = None
        if loss_scale == "dynamic":
            scaler_args: dict[str, Any] = {}
        elif isinstance(loss_scale, (int, float)) and not isinstance(loss_scale, bool):
            self._scale_update_param = float(loss_scale)
            scaler_args = dict(init_scale=float(loss_scale))
        elif isinstance(loss_scale, dict):
            scaler_args = dict(loss_scale)
        else:
            raise ValueError(f'loss_scale must be of type float, dict, or "dynamic", got {loss_scale}')
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
        params = [p for p in runner.model.parameters() if p.requires_grad and p.grad is not None]
        norm = fused_amp_step(runner.optimizer, self.loss_scaler, params, self.grad_clip,
                              self._scale_update_param)
        if norm is None:
            norm = self._unfused_phase(runner)
        if self.grad_clip is not None and params and norm is not None:
            runner.log_buffer.update({"grad_norm": float(norm)}, runner.outputs["num_samples"])
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

    @HOOKS.register_module(force=True)
    class FastGradientCumulativeOptimizerHook(_ClipsIntoTheStep, GradientCumulativeOptimizerHook):
        """mmcv's ``GradientCumulativeOptimizerHook`` (a step every ``cumulative_iters``
        iterations, the loss divided to match) with clipping fused into fastopt's step, as
        ``FastOptimizerHook``: ``optimizer_config=dict(type='FastGradientCumulativeOptimizerHook',
        cumulative_iters=4, grad_clip=dict(max_norm=35))``."""

    @HOOKS.register_module(force=True)
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
