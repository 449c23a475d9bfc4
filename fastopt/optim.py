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

Each class is its algorithm's description (``fastopt._kernels.SGD`` / ``ADAM`` / ``ADAMW``)
over torch's class; ``step()`` runs the first tier that takes it (flat buffers, native,
torch's fused kernels, torch's functional API: ``fastopt._tiers``). The native tier's plan and
the flat buffers are caches, checked at every step against ``param_groups`` and ``state``.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable
from typing import Any, ClassVar

import torch
from torch import Tensor

from . import _kernels as K
from . import _tiers
from ._flat import FlatBuffers
from .checkpoint import is_reference_layout, load_per_param_state_dict
from .registry import OPTIMIZERS

__all__ = ["SGD", "Adam", "AdamW", "is_fastopt_optimizer"]


def is_fastopt_optimizer(optimizer: Any) -> bool:
    """Whether ``optimizer`` is one of fastopt's (it takes ``step(grad_mult=...)`` and
    ``clip_next_step``), by its type: a look-alike (a ``Mock``) is not."""
    return isinstance(optimizer, _FastStep)


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

    @property
    def _fastopt_cache(self) -> _tiers.StepCache:
        """The caches kept between steps (plan, hyperparameter table, flat buffers)."""
        cache = getattr(self, "_fastopt_caches", None)
        if cache is None:
            cache = self._fastopt_caches = _tiers.StepCache()
        return cache

    # -- the step: one tier per call -------------------------------------------------------
    def step(self, closure: Callable[[], Any] | None = None, *,
             grad_mult: float | Tensor | K.MultOf | None = None) -> Any:
        """One optimization step through the first tier that takes it (``fastopt._tiers``).
        ``grad_mult``: a clip coefficient every gradient is multiplied by (or a ``MultOf``
        working it out from the gradients the step reads)."""
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        pending, self._fastopt_next_mult = getattr(self, "_fastopt_next_mult", None), None
        args = _tiers.StepArgs(getattr(self, "grad_scale", None), getattr(self, "found_inf", None),
                               pending if grad_mult is None else grad_mult, self._fastopt_cache)
        # as torch's steps: autograd records the step only for differentiable optimizers
        with torch.set_grad_enabled(bool(self.defaults.get("differentiable", False))):
            self._fastopt_tier = _tiers.take_step(self, args)
        return loss

    # -- flat-buffer mode ------------------------------------------------------------------
    def use_flat_buffers(self) -> None:
        """Move parameters, gradients and state into contiguous per-group buffers (opt-in).

        Afterwards a step is one native call with no per-tensor Python work;
        ``zero_grad()`` zeroes the gradient buffers instead of freeing gradients.
        See docs/optimizers.md for the contract. Called again, lays the buffers out anew over
        the parameters and state as they are (a refusal leaves the earlier layout in place).
        """
        cache = self._fastopt_cache
        plan = _tiers.current_plan(self, cache)
        if plan is None:
            raise ValueError("flat buffers need every parameter on the CPU, contiguous, in a supported "
                             "dtype (float32/float64/bfloat16/float16), in exactly one group, with "
                             "plain (non-tensor) hyperparameters")
        if plan.sharded:
            raise ValueError("flat buffers do not take sharded (DTensor / FSDP2) parameters; "
                             "the default mode steps their local shards natively")
        with torch.no_grad():
            cache.flat = FlatBuffers(self.param_groups, self.state, self.algorithm, _tiers.groups_key(self))
        cache.plan = None

    @property
    def flat_buffers(self) -> FlatBuffers | None:
        """The flat buffers in use, or None."""
        return self._fastopt_cache.flat

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
        self._fastopt_caches = None  # (torch's load replaces the state dict: nothing cached holds)
        super().load_state_dict(state_dict)  # type: ignore[misc]
        if flat:
            try:
                self.use_flat_buffers()
            except ValueError as err:  # loaded as torch loads it; the buffers cannot hold it
                warnings.warn(f"the loaded state cannot be laid out in flat buffers ({err}); the "
                              "optimizer steps in the default mode", stacklevel=2)

    def add_param_group(self, param_group: dict) -> None:
        """Add a param group (as torch); the native plan (and flat buffers) follow on the next step."""
        super().add_param_group(param_group)  # type: ignore[misc]

    def __getstate__(self) -> dict:
        """torch's pickled state, without the caches (pointers into this process's tensors); in
        flat-buffer mode each parameter gets its own ``step`` counter, as in ``state_dict()``
        (a copy or an unpickled optimizer steps in the default mode)."""
        state = dict(super().__getstate__())  # type: ignore[misc]
        state.pop("_fastopt_caches", None)
        if self.flat_buffers is not None:
            own = state["state"]
            state["state"] = type(own)(own.default_factory, {
                p: ({**v, "step": v["step"].clone()} if "step" in v else v) for p, v in own.items()})
        return state


@OPTIMIZERS.register_module(force=True)
class SGD(_FastStep, torch.optim.SGD):
    """``torch.optim.SGD`` with a native multi-tensor CPU step (momentum, nesterov, dampening,
    weight decay, maximize)."""

    algorithm = K.SGD


@OPTIMIZERS.register_module(force=True)
class Adam(_FastStep, torch.optim.Adam):
    """``torch.optim.Adam`` with a native multi-tensor CPU step (amsgrad, maximize, L2 or,
    where torch's Adam takes ``decoupled_weight_decay``, decoupled weight decay)."""

    algorithm = K.ADAM


@OPTIMIZERS.register_module(force=True)
class AdamW(_FastStep, torch.optim.AdamW):
    """``torch.optim.AdamW`` with a native multi-tensor CPU step (decoupled weight decay from
    the class, on torch releases before and after AdamW became an Adam subclass)."""

    algorithm = K.ADAMW
