"""fastopt's own ``OptimWrapper`` and ``AmpOptimWrapper``: what ``build_optim_wrapper`` returns
when mmengine is not installed (``host_wrapper.py`` builds mmengine's classes when it is)."""

from __future__ import annotations

import inspect
from typing import Any

import torch
from torch import Tensor

from ._kernels import MultOf
from ._torch_compat import grad_scaler
from .amp import amp_phase, scaler_settings
from .clip_grad import NormTable, check_clip_grad, clips_all_it_steps, fused_clip, fused_clip_grads
from .registry import OPTIM_WRAPPERS

__all__ = ["AmpOptimWrapper", "OptimWrapper"]


@OPTIM_WRAPPERS.register_module()
class OptimWrapper:
    """Wraps a torch optimizer with mmengine's ``OptimWrapper`` interface.

    Supports ``update_params`` (backward, optional gradient clipping, step,
    zero_grad) and gradient accumulation over ``accumulative_counts`` calls. As mmengine 0.8.0
    on, an optimizer with more than one group gets ``base_param_settings`` (a placeholder tensor
    and the optimizer's defaults): appended to ``param_groups`` (schedulers update it too) and
    saved in ``state_dict``; ``build_wrapper`` leaves it out under older semantics.
    """

    def __init__(self, optimizer: torch.optim.Optimizer, accumulative_counts: int = 1,
                 clip_grad: dict | None = None) -> None:
        if not isinstance(optimizer, torch.optim.Optimizer):
            raise TypeError(f"optimizer must be a torch.optim.Optimizer, got {type(optimizer)}")
        if not isinstance(accumulative_counts, int) or accumulative_counts < 1:
            raise ValueError(f"accumulative_counts must be a positive int, got {accumulative_counts!r}")
        self.optimizer = optimizer
        self._accumulative_counts = accumulative_counts
        self._inner_count = 0
        self.clip_grad_kwargs: dict[str, Any] = {}
        self._clip_type = "norm"
        if clip_grad is not None:
            if not isinstance(clip_grad, dict) or not clip_grad:
                raise ValueError(f"clip_grad must be a non-empty dict, got {clip_grad!r}")
            kwargs = dict(clip_grad)
            self._clip_type = kwargs.pop("type", "norm")
            check_clip_grad(self._clip_type, kwargs)
            self.clip_grad_kwargs = kwargs
        # fastopt's optimizers take the clip coefficient into their step (one pass fewer)
        self._fused_clip = "grad_mult" in inspect.signature(optimizer.step).parameters
        #: the gradient norm of the last clipped step (None before one, or when clipping by value)
        self.grad_norm: Tensor | None = None
        self.base_param_settings: dict | None = None
        if len(optimizer.param_groups) > 1:
            self.base_param_settings = {"params": torch.tensor([0.0], dtype=torch.float),
                                        **optimizer.defaults}

    @property
    def param_groups(self) -> list[dict]:
        """The wrapped optimizer's param groups, then ``base_param_settings`` when there is one."""
        if self.base_param_settings is not None:
            return [*self.optimizer.param_groups, self.base_param_settings]
        return self.optimizer.param_groups

    @property
    def defaults(self) -> dict:
        """The wrapped optimizer's defaults."""
        return self.optimizer.defaults

    def backward(self, loss: Tensor, **kwargs: Any) -> None:
        """Backpropagate ``loss``."""
        loss.backward(**kwargs)
        self._inner_count += 1

    def _params(self) -> list[Tensor]:
        """What clipping covers, as mmengine's wrapper: parameters that require grad and have one."""
        return [p for g in self.optimizer.param_groups for p in g["params"]
                if p.requires_grad and p.grad is not None]

    def _clip_grad(self) -> Tensor | None:
        """Clip as configured. With fastopt's optimizers the 2-/inf-norm is one native pass and
        the coefficient is returned for the step to apply; else torch clips in place (None)."""
        params = self._params()
        if not params:
            return None
        kwargs = self.clip_grad_kwargs
        if self._clip_type == "value":
            torch.nn.utils.clip_grad_value_(params, **kwargs)
            return None
        if not self._fused_clip or not clips_all_it_steps(self.optimizer):
            # (a coefficient for the step would also scale gradients the clip leaves alone)
            self.grad_norm = torch.nn.utils.clip_grad_norm_(params, **kwargs)
            return None
        self.grad_norm, coefficient = fused_clip(params, kwargs)
        return coefficient

    def step(self, **kwargs: Any) -> None:
        """Clip gradients if configured, then step the optimizer. Clipping by norm with
        fastopt's optimizers happens inside the step: the norm is taken from the gradients the
        step gathers (one gathering, one native norm pass), the coefficient applied as the
        kernel reads each gradient."""
        if (self.clip_grad_kwargs and self._clip_type == "norm" and self._fused_clip
                and clips_all_it_steps(self.optimizer)):
            kwargs["grad_mult"] = MultOf(self._clip_when_read)
        elif self.clip_grad_kwargs:
            coefficient = self._clip_grad()
            if coefficient is not None:
                kwargs["grad_mult"] = coefficient
        self.optimizer.step(**kwargs)

    def _clip_when_read(self, grads: list[Tensor], table: NormTable | None) -> Tensor | None:
        """The clip coefficient of the gradients the step is about to read; sets ``grad_norm``."""
        if not grads:
            return None
        self.grad_norm, coefficient = fused_clip_grads(grads, self.clip_grad_kwargs, table)
        return coefficient

    def zero_grad(self, **kwargs: Any) -> None:
        """Zero (or free) the gradients."""
        self.optimizer.zero_grad(**kwargs)

    def should_update(self) -> bool:
        """True on the calls where accumulated gradients are applied."""
        return self._inner_count % self._accumulative_counts == 0

    def update_params(self, loss: Tensor, step_kwargs: dict | None = None,
                      zero_kwargs: dict | None = None) -> None:
        """backward (loss scaled by 1/accumulative_counts), then step + zero_grad when due."""
        self.backward(loss / self._accumulative_counts)
        if self.should_update():
            self.step(**(step_kwargs or {}))
            self.zero_grad(**(zero_kwargs or {}))

    def get_lr(self) -> dict[str, list[float]]:
        """Learning rate of every param group, as ``{'lr': [...]}`` (and ``'base_lr'``, that of
        ``base_param_settings``, when there is one)."""
        out = {"lr": [g["lr"] for g in self.optimizer.param_groups]}
        if self.base_param_settings is not None:
            out = {"base_lr": [self.base_param_settings["lr"]], **out}
        return out

    def get_momentum(self) -> dict[str, list[float]]:
        """Momentum (or beta1) of every param group, as ``{'momentum': [...]}``."""
        out = []
        for g in self.optimizer.param_groups:
            out.append(g["momentum"] if "momentum" in g else g.get("betas", (0.0,))[0])
        return {"momentum": out}

    def state_dict(self) -> dict:
        """The optimizer's state dict, with ``base_param_settings`` when there is one."""
        state_dict = self.optimizer.state_dict()
        if self.base_param_settings is not None:
            state_dict["base_param_settings"] = self.base_param_settings
        return state_dict

    def load_state_dict(self, state_dict: dict) -> None:
        """Load an optimizer state dict, with or without ``base_param_settings`` (taken when
        present, as mmengine does)."""
        state_dict = dict(state_dict)
        base = state_dict.pop("base_param_settings", None)
        if base is not None:
            self.base_param_settings = base
        self.optimizer.load_state_dict(state_dict)

    def __repr__(self) -> str:
        return f"OptimWrapper(optimizer={self.optimizer!r})"


@OPTIM_WRAPPERS.register_module()
class AmpOptimWrapper(OptimWrapper):
    """Mixed precision (mmengine's ``AmpOptimWrapper`` behaviour) on ``torch.amp.GradScaler``.

    ``loss_scale`` is ``'dynamic'``, a fixed float, or a dict of GradScaler arguments;
    ``dtype`` (``'float16'``, ``'bfloat16'`` or a torch dtype) is what ``optim_context``
    autocasts to. fastopt's optimizers take the scale inside their kernel
    (``_step_supports_amp_scaling``), so no separate unscaling pass runs unless gradients
    are clipped.
    """

    def __init__(self, optimizer: torch.optim.Optimizer, loss_scale: str | float | dict = "dynamic",
                 dtype: str | torch.dtype | None = None, **kwargs: Any) -> None:
        super().__init__(optimizer, **kwargs)
        params = [p for g in optimizer.param_groups for p in g["params"]]
        self.device_type = params[0].device.type if params else "cpu"
        scaler_args, fixed = scaler_settings(loss_scale)
        #: what ``update`` gets each step: None (dynamic), or the fixed scale (kept, as mmengine does)
        self._scale_update: float | None = fixed
        self.loss_scaler = grad_scaler(self.device_type, **scaler_args)
        if isinstance(dtype, str):
            if dtype not in ("float16", "bfloat16"):
                raise ValueError(f"dtype must be 'float16' or 'bfloat16', got {dtype!r}")
            dtype = getattr(torch, dtype)
        self.cast_dtype = dtype

    def backward(self, loss: Tensor, **kwargs: Any) -> None:
        """Backpropagate the scaled loss."""
        self.loss_scaler.scale(loss).backward(**kwargs)
        self._inner_count += 1

    def step(self, **kwargs: Any) -> None:
        """Step through the scaler (skipped on inf/NaN), then update the scale (or set it back to a
        fixed ``loss_scale``). With fastopt's optimizer, and clipping by norm or none, the whole
        phase is one read of the gradients plus the step (``amp.amp_phase``); otherwise
        GradScaler's ``unscale_`` (only to clip), ``step`` and ``update``."""
        if self.clip_grad_kwargs and self._clip_type != "norm":
            self._unfused_step(kwargs)
            return

        def keep(norm: Tensor) -> None:
            self.grad_norm = norm

        amp_phase(self.optimizer, self.loss_scaler, self._params(), self.clip_grad_kwargs or None,
                  self._scale_update, kwargs, lambda: self._unfused_step(kwargs), keep)

    def _unfused_step(self, kwargs: dict[str, Any]) -> None:
        """GradScaler's sequence: ``unscale_`` (only to clip), clip, ``step``, ``update``."""
        if self.clip_grad_kwargs:
            self.loss_scaler.unscale_(self.optimizer)
            coefficient = self._clip_grad()
            if coefficient is not None:
                kwargs["grad_mult"] = coefficient
        self.loss_scaler.step(self.optimizer, **kwargs)
        self.loss_scaler.update(self._scale_update)

    def optim_context(self, model: torch.nn.Module | None = None) -> Any:
        """Autocast to ``dtype`` for the forward pass."""
        return torch.autocast(self.device_type, dtype=self.cast_dtype)

    def state_dict(self) -> dict:
        """The optimizer's state dict (with ``base_param_settings``) plus the loss scaler's."""
        return dict(super().state_dict(), loss_scaler=self.loss_scaler.state_dict())

    def load_state_dict(self, state_dict: dict) -> None:
        """Load both the loss scaler's and the optimizer's state."""
        state_dict = dict(state_dict)
        if "loss_scaler" in state_dict:
            self.loss_scaler.load_state_dict(state_dict.pop("loss_scaler"))
        super().load_state_dict(state_dict)
