"""Accelerated ``torch.optim`` subclasses: SGD, Adam and AdamW.

Same signatures, defaults, ``param_groups`` keys and ``state`` keys as torch's
classes (``isinstance(opt, torch.optim.AdamW)`` holds, ``state_dict()``
cross-loads both ways, LR schedulers work), but on CPU a step over every
param group is one call into the native multi-tensor kernel
(``csrc/step_cpu.cpp``) with per-tensor hyperparameters. Whatever the kernel
cannot take — CUDA or other devices, complex or non-contiguous tensors,
tensor-valued lr, ``differentiable``/``capturable``, sparse SGD gradients —
runs through torch's own implementation, unchanged.

``torch.amp.GradScaler`` hands these optimizers the scale and the inf flag
(``_step_supports_amp_scaling``): gradients are unscaled inside the kernel and
a step with inf/NaN gradients is skipped entirely, as with torch's fused kernels.

Each class is its algorithm's description (``fastopt._kernels.SGD`` / ``ADAM``) plus
``step()``; the step tiers (flat buffers, native, torch's fused kernels, torch's default
path) are chosen in one place, ``_FastStep._fastopt_step``.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, ClassVar

import numpy as np
import torch
from torch import Tensor

from . import _kernels as K
from ._flat import FlatBuffers
from .checkpoint import is_reference_layout, load_per_param_state_dict
from .registry import OPTIMIZERS

__all__ = ["SGD", "Adam", "AdamW"]


class _FastStep:
    """The tier choice and the torch.optim methods it changes; ``algorithm`` says the rest."""

    algorithm: ClassVar[K.Algorithm]
    _step_supports_amp_scaling = True

    param_groups: list[dict]
    state: dict

    def clip_next_step(self, coefficient: float | Tensor | K.MultOf) -> None:
        """Have the next ``step()`` multiply every gradient by ``coefficient`` (the clip
        coefficient, or a ``MultOf`` working it out from the gradients; what
        ``step(grad_mult=...)`` does, for callers that cannot pass it)."""
        self._fastopt_next_mult = coefficient

    @property
    def fastopt_tier(self) -> str | None:
        """Which tier ran the last step: 'flat', 'native', 'torch-fused' or 'torch' (None
        before the first step)."""
        return getattr(self, "_fastopt_tier", None)

    # -- the native plan -----------------------------------------------------------------
    def _fastopt_key(self) -> tuple:
        """What a plan depends on: the groups' parameter lists and the state they carry."""
        structure = self.algorithm.structure
        groups = tuple((id(g["params"]), len(g["params"]), structure(g)) for g in self.param_groups)
        return (*groups, id(self.state))

    def _plan(self) -> K.Plan | None:
        plan = getattr(self, "_fastopt_plan", None)
        key = self._fastopt_key()
        if plan is None or plan.stale or plan.key != key:
            plan = self._fastopt_plan = K.Plan(self.param_groups, self.algorithm, key)
        return plan if plan.native else None

    def _hyper_table(self) -> tuple[np.ndarray, np.ndarray]:
        """Per-group hyperparameters and flags as arrays, rebuilt only when a value changed."""
        key = [(tuple(r), f) for r, f in map(self.algorithm.hyper_row, self.param_groups)]
        cache = getattr(self, "_fastopt_hyper", None)
        if cache is None or cache[0] != key:
            cache = self._fastopt_hyper = (key, K.hyper_table(self.param_groups, self.algorithm))
        return cache[1]

    # -- the step: one tier per call -------------------------------------------------------
    def _fastopt_step(self, torch_step: Callable[[], Any], closure: Callable[[], Any] | None,
                      grad_mult: float | Tensor | K.MultOf | None = None) -> Any:
        """One step through the first tier that takes it. ``grad_mult`` (a clip coefficient,
        ``fastopt.clip_grad``, or a ``MultOf`` computing it from the gradients read) multiplies
        every gradient: inside the kernel on the native tiers, in place (as ``clip_grad_norm_``
        does) before torch's own steps."""
        loss = None
        pending, self._fastopt_next_mult = getattr(self, "_fastopt_next_mult", None), None
        grad_mult = pending if grad_mult is None else grad_mult
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        grad_scale = getattr(self, "grad_scale", None)
        found_inf = getattr(self, "found_inf", None)
        # The native tiers run on the CPU: reading found_inf and the coefficient there is free.
        plan = None if self.flat_buffers is not None else self._plan()
        if self.flat_buffers is not None or plan is not None:
            if found_inf is not None and bool(found_inf.item()):
                self._grad_mult_value(grad_mult)  # a clip still takes (and logs, or refuses) its norm
                return loss  # inf/NaN gradients: the step is skipped, state included
            with torch.no_grad():
                if self.flat_buffers is not None:
                    mult = self._grad_mult_value(grad_mult)
                    if self._flat_step(grad_scale, 1.0 if mult is None else float(mult)):
                        self._fastopt_tier = "flat"
                        return loss
                native_mult = grad_mult if isinstance(grad_mult, K.MultOf) else (
                    1.0 if grad_mult is None else float(grad_mult))
                if plan is not None and K.native_step(plan, self.param_groups, self.state, self.algorithm,
                                                      self._hyper_table(), grad_scale, native_mult):
                    self._fastopt_tier = "native"
                    return loss
        grad_mult = self._grad_mult_value(grad_mult)
        if K.torch_fused_ok(self.param_groups):
            # found_inf and the coefficient stay on the device: the fused kernels skip the step
            # and divide the gradients by grad_scale / coefficient themselves (no host sync)
            K.torch_fused_step(self.param_groups, self.state, torch_step, self, grad_mult)
            self._fastopt_tier = "torch-fused"
            return loss
        if found_inf is not None and bool(found_inf.item()):
            return loss
        with torch.no_grad():
            if grad_mult is not None:
                K.multiply_grads(self.param_groups, grad_mult)
            # torch's default path: unscale here, since only its fused kernels take a scale.
            if grad_scale is not None:
                grads = [p.grad for g in self.param_groups for p in g["params"] if p.grad is not None]
                for grad in grads:
                    grad.div_(grad_scale.to(grad.device))
        saved = (grad_scale, found_inf)
        self.grad_scale = self.found_inf = None  # type: ignore[attr-defined]
        try:
            torch_step()
        finally:
            self.grad_scale, self.found_inf = saved  # type: ignore[attr-defined]
        self._fastopt_tier = "torch"
        return loss

    def _grad_mult_value(self, grad_mult: float | Tensor | K.MultOf | None) -> float | Tensor | None:
        """``grad_mult`` as a value: a ``MultOf`` is asked with the gradients the step reads."""
        if not isinstance(grad_mult, K.MultOf):
            return grad_mult
        return grad_mult([p.grad for g in self.param_groups for p in g["params"] if p.grad is not None])

    # -- flat-buffer mode ------------------------------------------------------------------
    def use_flat_buffers(self) -> None:
        """Move parameters, gradients and state into contiguous per-group buffers (opt-in).

        Afterwards a step is one native call with no per-tensor Python work;
        ``zero_grad()`` zeroes the gradient buffers instead of freeing gradients.
        See docs/optimizers.md for the contract.
        """
        plan = self._plan()
        if plan is None:
            raise ValueError("flat buffers need every parameter on the CPU, contiguous, in a supported "
                             "dtype (float32/float64/bfloat16/float16), in exactly one group, with "
                             "plain (non-tensor) hyperparameters")
        if plan.sharded:
            raise ValueError("flat buffers do not take sharded (DTensor / FSDP2) parameters; "
                             "the default mode steps their local shards natively")
        with torch.no_grad():
            self._fastopt_flat = FlatBuffers(self.param_groups, self.state, self.algorithm,
                                             self._fastopt_key())
        self._fastopt_plan = None

    @property
    def flat_buffers(self) -> FlatBuffers | None:
        """The flat buffers in use, or None."""
        return getattr(self, "_fastopt_flat", None)

    def _flat_step(self, grad_scale: Tensor | None, grad_mult: float) -> bool:
        flat = self.flat_buffers
        if flat is None:
            return False
        if flat.key != self._fastopt_key():  # groups changed: lay the buffers out again
            self.use_flat_buffers()
            flat = self._fastopt_flat
        flat.step(self.param_groups, 0.0 if grad_scale is None else float(grad_scale), grad_mult)
        return True

    # -- torch.optim methods -------------------------------------------------------------
    def zero_grad(self, set_to_none: bool = True) -> None:
        """As torch's; in flat-buffer mode the gradient buffers are zeroed instead of freed."""
        flat = self.flat_buffers
        if flat is None:
            super().zero_grad(set_to_none=set_to_none)  # type: ignore[misc]
        else:
            flat.zero_grad()

    def state_dict(self) -> dict:
        """torch's state dict; in flat-buffer mode each parameter gets its own ``step`` tensor
        (they share one counter internally, which torch's own optimizers must not see)."""
        sd = super().state_dict()  # type: ignore[misc]
        if self.flat_buffers is not None:
            sd["state"] = {k: ({**v, "step": v["step"].clone()} if "step" in v else v)
                           for k, v in sd["state"].items()}
        return sd

    def load_state_dict(self, state_dict: dict) -> None:
        """Load a state dict (torch's format); cached pointers and flat buffers are rebuilt.

        A state dict saved from the mmengine/mmcv-built optimizer of the same model and
        config (one group per parameter, or a custom constructor's groups) is recognised by
        its group sizes and mapped by parameter order.
        """
        sizes = [len(g["params"]) for g in state_dict.get("param_groups", [])]
        if sizes != [len(g["params"]) for g in self.param_groups] and is_reference_layout(self, sizes):
            load_per_param_state_dict(self, state_dict)  # comes back here in merged layout
            return
        flat = self.flat_buffers is not None
        self._fastopt_flat = None
        self._fastopt_plan = None
        super().load_state_dict(state_dict)  # type: ignore[misc]
        self._fastopt_plan = None
        if flat:
            self.use_flat_buffers()

    def add_param_group(self, param_group: dict) -> None:
        """Add a param group (as torch); the native plan (and flat buffers) follow on the next step."""
        super().add_param_group(param_group)  # type: ignore[misc]
        self._fastopt_plan = None

    def __getstate__(self) -> dict:
        state = super().__getstate__()  # type: ignore[misc]
        for cache in ("_fastopt_plan", "_fastopt_flat", "_fastopt_hyper"):
            state.pop(cache, None)
        return state


@OPTIMIZERS.register_module(force=True)
class SGD(_FastStep, torch.optim.SGD):
    """``torch.optim.SGD`` with a native multi-tensor CPU step (momentum, nesterov, dampening,
    weight decay, maximize)."""

    algorithm = K.SGD

    @torch.no_grad()
    def step(self, closure: Callable[[], Any] | None = None, *,
             grad_mult: float | Tensor | K.MultOf | None = None) -> Any:
        """One optimization step (native on CPU, torch's otherwise); ``grad_mult``: a clip
        coefficient every gradient is multiplied by (or a ``MultOf`` giving it)."""
        return self._fastopt_step(lambda: torch.optim.SGD.step(self), closure, grad_mult)


@OPTIMIZERS.register_module(force=True)
class Adam(_FastStep, torch.optim.Adam):
    """``torch.optim.Adam`` with a native multi-tensor CPU step (amsgrad, maximize, L2 or
    decoupled weight decay)."""

    algorithm = K.ADAM

    @torch.no_grad()
    def step(self, closure: Callable[[], Any] | None = None, *,
             grad_mult: float | Tensor | K.MultOf | None = None) -> Any:
        """One optimization step (native on CPU, torch's otherwise); ``grad_mult``: a clip
        coefficient every gradient is multiplied by (or a ``MultOf`` giving it)."""
        return self._fastopt_step(lambda: torch.optim.Adam.step(self), closure, grad_mult)


@OPTIMIZERS.register_module(force=True)
class AdamW(Adam, torch.optim.AdamW):
    """``torch.optim.AdamW`` with a native multi-tensor CPU step."""
