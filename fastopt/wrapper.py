"""A minimal mmengine-style ``OptimWrapper`` for use without mmengine installed."""

from __future__ import annotations

import importlib.util
import inspect
import math
from typing import Any

import torch
from torch import Tensor

from ._kernels import local
from .clip_grad import check_clip_grad, clip_coefficient, native_norm_ok, total_norm
from .registry import OPTIM_WRAPPERS, SCOPE_KEY, resolve_type, scope_override, within_scope

__all__ = ["AmpOptimWrapper", "FusedClip", "OptimWrapper", "build_wrapper", "clip_in_next_step", "fused_clip",
           "with_fused_clip", "wrapper_class"]


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
        return [p for g in self.optimizer.param_groups for p in g["params"] if p.grad is not None]

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
        if not self._fused_clip:
            self.grad_norm = torch.nn.utils.clip_grad_norm_(params, **kwargs)
            return None
        self.grad_norm, coefficient = fused_clip(params, kwargs)
        return coefficient

    def step(self, **kwargs: Any) -> None:
        """Clip gradients if configured, then step the optimizer."""
        if self.clip_grad_kwargs:
            coefficient = self._clip_grad()
            if coefficient is not None:
                kwargs["grad_mult"] = coefficient
        self.optimizer.step(**kwargs)

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
        #: what ``update`` gets each step: None (dynamic), or the fixed scale (kept, as mmengine does)
        self._scale_update: float | None = None
        if loss_scale == "dynamic":
            scaler_args: dict[str, Any] = {}
        elif isinstance(loss_scale, (int, float)) and not isinstance(loss_scale, bool):
            scaler_args = dict(init_scale=float(loss_scale))
            self._scale_update = float(loss_scale)
        elif isinstance(loss_scale, dict):
            scaler_args = dict(loss_scale)
        else:
            raise TypeError(f"loss_scale must be 'dynamic', a number or a dict, got {loss_scale!r}")
        self.loss_scaler = torch.amp.GradScaler(self.device_type, **scaler_args)
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
        """Unscale (only to clip), step through the scaler (skipped on inf/NaN), update the scale
        (or set it back to a fixed ``loss_scale``). With fastopt's optimizer and clipping by
        norm the whole phase is two reads of the gradients (``_fused_step``)."""
        if self._fused_phase() and self._fused_step(kwargs):
            return
        if self.clip_grad_kwargs:
            self.loss_scaler.unscale_(self.optimizer)
            coefficient = self._clip_grad()
            if coefficient is not None:
                kwargs["grad_mult"] = coefficient
        self.loss_scaler.step(self.optimizer, **kwargs)
        self.loss_scaler.update(self._scale_update)

    def _fused_phase(self) -> bool:
        return (bool(self.clip_grad_kwargs) and self._clip_type == "norm" and self._fused_clip
                and self.loss_scaler.is_enabled())

    def _fused_step(self, kwargs: dict[str, Any]) -> bool:
        """Norm and inf check of the still scaled gradients in one native pass; the step
        unscales and clips inside the kernel; the scale updated by GradScaler's rule. False when
        the native pass cannot take the gradients (then GradScaler's own path runs)."""
        params = self._params()
        if not params:
            return False
        norm_type = float(self.clip_grad_kwargs.get("norm_type", 2.0))
        if not native_norm_ok([local(p.grad) for p in params], norm_type):
            return False  # GradScaler's own path
        scale = self.loss_scaler.get_scale()
        norm, coefficient = fused_clip(params, self.clip_grad_kwargs, loss_scale=scale)
        self.grad_norm = norm
        found_inf = not bool(torch.isfinite(norm))
        if not found_inf:
            # GradScaler's protocol with optimizers that unscale in their step
            opt = self.optimizer
            opt.grad_scale = torch.tensor(scale, dtype=torch.float32)  # type: ignore[attr-defined]
            opt.found_inf = torch.tensor(0.0)  # type: ignore[attr-defined]
            try:
                opt.step(grad_mult=coefficient, **kwargs)
            finally:
                opt.grad_scale = opt.found_inf = None  # type: ignore[attr-defined]
        self._update_scale(found_inf)
        return True

    def _update_scale(self, found_inf: bool) -> None:
        """What ``GradScaler.update`` does after a step with (or without) inf/NaN gradients:
        a fixed scale stays; a dynamic one backs off on inf/NaN and grows after
        ``growth_interval`` clean steps (through the scaler's state dict)."""
        state = self.loss_scaler.state_dict()
        if self._scale_update is not None:
            state["scale"] = self._scale_update
        elif found_inf:
            state["scale"] = float(torch.tensor(state["scale"] * state["backoff_factor"],
                                                dtype=torch.float32))
            state["_growth_tracker"] = 0
        elif state["_growth_tracker"] + 1 == state["growth_interval"]:
            grown = float(torch.tensor(state["scale"] * state["growth_factor"], dtype=torch.float32))
            if math.isfinite(grown):
                state["scale"] = grown
            state["_growth_tracker"] = 0
        else:
            state["_growth_tracker"] += 1
        self.loss_scaler.load_state_dict(state)

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


def fused_clip(params: list[Tensor], clip_grad: dict[str, Any], loss_scale: float | None = None
               ) -> tuple[Tensor, Tensor]:
    """``(norm, coefficient)`` of clipping ``params``' gradients by norm with torch's arguments
    (``max_norm``, ``norm_type``, ``error_if_nonfinite``; ``foreach`` has nothing to choose):
    one native norm pass, the coefficient for the optimizer's step to apply. With a
    ``loss_scale`` the gradients are still scaled: the norm is divided by it."""
    norm_type = clip_grad.get("norm_type", 2.0)
    norm, _ = total_norm([p.grad for p in params], norm_type)
    if loss_scale is not None:
        norm = norm / loss_scale
    if clip_grad.get("error_if_nonfinite") and not bool(torch.isfinite(norm)):
        raise RuntimeError(
            f"The total norm of order {float(norm_type)} for gradients from `parameters` is "
            "non-finite, so it cannot be clipped. To disable this error and scale the gradients "
            "by the non-finite norm anyway, set `error_if_nonfinite=False`")
    return norm, clip_coefficient(norm, clip_grad["max_norm"])


def clip_in_next_step(optimizer: torch.optim.Optimizer, params: Any, clip_grad: dict[str, Any]
                      ) -> Tensor | None:
    """Clip by norm into a fastopt optimizer's next step: the norm of every parameter in
    ``params`` that requires grad and has one (None when there is none), its coefficient
    handed to ``optimizer.clip_next_step``. What the host plug-ins do in place of torch's
    ``clip_grad_norm_``."""
    grads_of = [p for p in params if p.requires_grad and p.grad is not None]
    if not grads_of:
        return None
    norm, coefficient = fused_clip(grads_of, clip_grad)
    optimizer.clip_next_step(coefficient)  # type: ignore[attr-defined]
    return norm


class FusedClip:
    """Mixin for a host framework's optim wrapper (mmengine's ``OptimWrapper``,
    ``AmpOptimWrapper``, a project's own): clipping by norm with a fastopt optimizer takes one
    native norm pass and hands the coefficient to the optimizer's next step instead of
    multiplying the gradients; the norm is logged as the host logs it
    (``train/grad_norm`` in mmengine's message hub). Anything else is the host's own clipping."""

    optimizer: torch.optim.Optimizer
    clip_grad_kwargs: dict
    grad_name: str
    message_hub: Any

    def _clip_grad(self) -> None:
        if getattr(self, "grad_name", None) != "grad_norm" or not hasattr(self.optimizer, "clip_next_step"):
            super()._clip_grad()  # type: ignore[misc]
            return
        params = [p for g in self.optimizer.param_groups for p in g["params"]]
        norm = clip_in_next_step(self.optimizer, params, self.clip_grad_kwargs)
        if norm is not None:
            self.message_hub.update_scalar(f"train/{self.grad_name}", float(norm))


_WITH_FUSED_CLIP: dict[type, type] = {}


def with_fused_clip(cls: type) -> type:
    """``cls`` with ``FusedClip`` mixed in when it clips through a ``_clip_grad`` method as
    mmengine's wrappers do (the subclass keeps the name: isinstance checks, logs and
    checkpoints see the host's class); fastopt's own wrappers already fuse."""
    if issubclass(cls, (OptimWrapper, FusedClip)) or not callable(getattr(cls, "_clip_grad", None)):
        return cls
    if cls not in _WITH_FUSED_CLIP:
        _WITH_FUSED_CLIP[cls] = type(cls.__name__, (FusedClip, cls),
                                     {"__module__": cls.__module__, "__doc__": cls.__doc__,
                                      "__qualname__": cls.__qualname__})
    return _WITH_FUSED_CLIP[cls]


def _mmengine_wrapper(name: str) -> Any:
    if importlib.util.find_spec("mmengine") is None:
        return None
    import mmengine.optim  # noqa: F401  (registers mmengine's wrappers)
    from mmengine.registry import OPTIM_WRAPPERS as MMENGINE_WRAPPERS

    with MMENGINE_WRAPPERS.switch_scope_and_registry(scope_override()) as registry:
        return registry.get(name)  # under the config's or the current default scope


def wrapper_class(wrapper_type: Any) -> Any:
    """The class a wrapper ``type`` names: user registrations, then mmengine's, then fastopt's."""
    if isinstance(wrapper_type, str):
        own = OPTIM_WRAPPERS.get(wrapper_type)
        if own is not None and own not in (OptimWrapper, AmpOptimWrapper):
            return own  # registered by the user: theirs wins
        theirs = _mmengine_wrapper(wrapper_type)
        if theirs is not None:
            return theirs
    return resolve_type(wrapper_type, OPTIM_WRAPPERS)


def build_wrapper(cfg: dict, optimizer: torch.optim.Optimizer, *, base_param_settings: bool = True) -> Any:
    """Build the wrapper ``cfg`` names around ``optimizer``. ``base_param_settings=False``
    (mmengine before 0.8.0) leaves it out of fastopt's own wrappers; a host's class keeps its own."""
    args = dict(cfg)
    with within_scope(args.pop(SCOPE_KEY, None)):
        cls = with_fused_clip(wrapper_class(args.pop("type")))
    args.setdefault("optimizer", optimizer)
    wrapper = cls(**args)
    if not base_param_settings and isinstance(wrapper, OptimWrapper):
        wrapper.base_param_settings = None
    return wrapper
