"""A minimal mmengine-style ``OptimWrapper`` for use without mmengine installed."""

from __future__ import annotations

import inspect
import math
from typing import Any

import torch
from torch import Tensor

from ._kernels import MultOf
from ._torch_compat import GRAD_SCALER, GRAD_SCALER_TYPES, grad_scaler
from .clip_grad import NormTable, check_clip_grad, clip_coefficient, native_norm_table, total_norm
from .registry import OPTIM_WRAPPERS, SCOPE_KEY, mmengine_registry_get, resolve_type, within_scope

__all__ = ["AmpOptimWrapper", "FusedAmpStep", "FusedClip", "OptimWrapper", "build_wrapper",
           "clip_in_next_step", "fused_amp_step", "fused_clip", "fused_clip_grads", "update_scale",
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
        phase is one read of the gradients plus the step (``fused_amp_step``); otherwise
        GradScaler's ``unscale_`` (only to clip), ``step`` and ``update``."""
        clip = self.clip_grad_kwargs if self._clip_type == "norm" else {}
        if not self.clip_grad_kwargs or clip:
            norm = fused_amp_step(self.optimizer, self.loss_scaler, clip_grad=clip or None,
                                  fixed_scale=self._scale_update, step_kwargs=kwargs)
            if norm is not None:
                if clip:
                    self.grad_norm = norm
                return
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


def fused_clip(params: list[Tensor], clip_grad: dict[str, Any], loss_scale: float | None = None
               ) -> tuple[Tensor, Tensor]:
    """``(norm, coefficient)`` of clipping ``params``' gradients by norm with torch's arguments
    (``max_norm``, ``norm_type``, ``error_if_nonfinite``; ``foreach`` has nothing to choose):
    one native norm pass, the coefficient for the optimizer's step to apply. With a
    ``loss_scale`` the gradients are still scaled: the norm is divided by it."""
    return fused_clip_grads([p.grad for p in params], clip_grad, loss_scale=loss_scale)


def fused_clip_grads(grads: list[Tensor], clip_grad: dict[str, Any], table: NormTable | None = None,
                     loss_scale: float | None = None) -> tuple[Tensor, Tensor]:
    """``fused_clip`` of the gradients themselves, their native ``table`` passed where gathered."""
    norm_type = clip_grad.get("norm_type", 2.0)
    norm, _ = total_norm(grads, norm_type, 1.0 if loss_scale is None else loss_scale, table=table)
    return norm, _coefficient(norm, clip_grad)


def _coefficient(norm: Tensor, clip_grad: dict[str, Any]) -> Tensor:
    if clip_grad.get("error_if_nonfinite") and not bool(torch.isfinite(norm)):
        raise RuntimeError(
            f"The total norm of order {float(clip_grad.get('norm_type', 2.0))} for gradients from "
            "`parameters` is non-finite, so it cannot be clipped. To disable this error and scale the "
            "gradients by the non-finite norm anyway, set `error_if_nonfinite=False`")
    return clip_coefficient(norm, clip_grad["max_norm"])


def _scaler_fusable(optimizer: Any, scaler: Any) -> bool:
    """Whether ``fused_amp_step`` may stand in for ``scaler``'s unscale_/step/update: a fastopt
    optimizer, an enabled torch GradScaler whose methods are torch's own (not a sharded or other
    subclass that changes them), with nothing recorded for this iteration yet."""
    if (not isinstance(optimizer, torch.optim.Optimizer) or GRAD_SCALER is None
            or not isinstance(scaler, GRAD_SCALER_TYPES)):
        return False
    if "grad_mult" not in inspect.signature(optimizer.step).parameters or not scaler.is_enabled():
        return False
    base = GRAD_SCALER
    if any(getattr(type(scaler), name) is not getattr(base, name) for name in ("unscale_", "step", "update")):
        return False
    return not getattr(scaler, "_per_optimizer_states", None)  # e.g. unscale_ already called


def fused_amp_step(optimizer: torch.optim.Optimizer, scaler: torch.amp.GradScaler,
                   clip_params: list[Tensor] | None = None, clip_grad: dict[str, Any] | None = None,
                   fixed_scale: float | None = None, step_kwargs: dict[str, Any] | None = None
                   ) -> Tensor | None:
    """GradScaler's ``unscale_`` + ``clip_grad_norm_`` (of ``clip_params``, default: the optimizer's;
    ``clip_grad`` None: no clipping) + ``step`` + ``update(fixed_scale)``, fused: one native read
    of the scaled gradients for the norm and the inf/NaN check, the unscaling and the coefficient
    applied by the step kernel, no step on inf/NaN. Returns the norm, or None having done nothing
    where it cannot fuse (then the caller runs GradScaler's sequence)."""
    if not _scaler_fusable(optimizer, scaler):
        return None
    stepped = [p for g in optimizer.param_groups for p in g["params"] if p.grad is not None]
    if not stepped:
        return None
    clipped = stepped if clip_params is None else [p for p in clip_params if p.grad is not None]
    norm_type = float(clip_grad.get("norm_type", 2.0)) if clip_grad else 2.0
    read = clipped if clip_grad and clipped else stepped
    read_ids = {id(p) for p in read}
    if not read_ids <= {id(p) for p in stepped}:
        return None  # unscale_ leaves the gradients of other parameters scaled: torch's sequence
    rest = [p.grad for p in stepped if id(p) not in read_ids]
    if rest and clip_grad and clipped:
        return None  # the step would scale gradients the clip leaves alone: torch's sequence
    grads = [p.grad for p in read]
    # not natively readable (sharded: torch's clip takes the norm across the shards; CUDA; ...)
    table = native_norm_table(grads, norm_type)
    rest_table = native_norm_table(rest, 2.0) if rest else None
    if table is None or (rest and rest_table is None):
        return None
    scale = scaler.get_scale()
    norm, found_inf = total_norm(grads, norm_type, scale, table=table)
    if rest:  # the inf/NaN check covers every gradient the optimizer steps
        found_inf = found_inf or total_norm(rest, table=rest_table)[1]
    coefficient = _coefficient(norm, clip_grad) if clip_grad and clipped else None
    if not found_inf:
        _step_unscaled(optimizer, scale, coefficient, step_kwargs or {})
    update_scale(scaler, bool(found_inf), fixed_scale)
    return norm


def _step_unscaled(optimizer: torch.optim.Optimizer, scale: float, coefficient: Tensor | None,
                   step_kwargs: dict[str, Any]) -> None:
    """The optimizer's step with GradScaler's protocol for optimizers that unscale in their step
    (``grad_scale``, ``found_inf``), the attributes put back as they were afterwards."""
    names = ("grad_scale", "found_inf")
    saved = {name: optimizer.__dict__[name] for name in names if name in optimizer.__dict__}
    optimizer.grad_scale = torch.tensor(scale, dtype=torch.float32)  # type: ignore[attr-defined]
    optimizer.found_inf = torch.tensor(0.0)  # type: ignore[attr-defined]
    try:
        optimizer.step(grad_mult=coefficient, **step_kwargs)  # type: ignore[call-arg]
    finally:
        for name in names:
            optimizer.__dict__.pop(name, None)
        optimizer.__dict__.update(saved)


def update_scale(scaler: torch.amp.GradScaler, found_inf: bool, fixed_scale: float | None = None) -> None:
    """What ``scaler.update(fixed_scale)`` does after a step that found (or did not find) inf/NaN
    gradients, through the scaler's state dict: a fixed scale is set; a dynamic one backs off on
    inf/NaN and grows after ``growth_interval`` clean steps, in float32 as torch's kernel does."""
    state = scaler.state_dict()
    if fixed_scale is not None:
        state["scale"] = float(torch.tensor(fixed_scale, dtype=torch.float32))
    elif found_inf:
        state["scale"] = float(torch.tensor(state["scale"] * state["backoff_factor"], dtype=torch.float32))
        state["_growth_tracker"] = 0
    elif state["_growth_tracker"] + 1 == state["growth_interval"]:
        grown = float(torch.tensor(state["scale"] * state["growth_factor"], dtype=torch.float32))
        if math.isfinite(grown):
            state["scale"] = grown
        state["_growth_tracker"] = 0
    else:
        state["_growth_tracker"] += 1
    scaler.load_state_dict(state)


def clip_in_next_step(optimizer: torch.optim.Optimizer, params: Any, clip_grad: dict[str, Any]
                      ) -> Tensor | None:
    """Clip by norm into a fastopt optimizer's next step: the norm of every parameter in
    ``params`` that requires grad and has one (None when there is none), its coefficient
    handed to ``optimizer.clip_next_step``. What the host plug-ins do in place of torch's
    ``clip_grad_norm_``."""
    grads_of = [p for p in params if p.requires_grad and p.grad is not None]
    if not grads_of:
        return None
    if not steps_exactly(optimizer, grads_of):  # the coefficient would reach other gradients
        return torch.nn.utils.clip_grad_norm_(grads_of, **clip_grad)
    norm, coefficient = fused_clip(grads_of, clip_grad)
    optimizer.clip_next_step(coefficient)  # type: ignore[attr-defined]
    return norm


def clips_all_it_steps(optimizer: torch.optim.Optimizer) -> bool:
    """Whether every parameter with a gradient in ``optimizer`` requires grad: then clipping what
    requires grad (mmengine's and mmcv's rule) covers every gradient the step reads, and the
    coefficient may go into the step."""
    return all(p.requires_grad for g in optimizer.param_groups for p in g["params"] if p.grad is not None)


def steps_exactly(optimizer: torch.optim.Optimizer, clipped: list[Tensor]) -> bool:
    """Whether the parameters with a gradient in ``optimizer`` are exactly ``clipped``: then a
    clip coefficient the step applies to every gradient it reads clips just those."""
    stepped = [p for g in optimizer.param_groups for p in g["params"] if p.grad is not None]
    return len(stepped) == len(clipped) and {id(p) for p in stepped} == {id(p) for p in clipped}


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
        if not clips_all_it_steps(self.optimizer):
            super()._clip_grad()  # type: ignore[misc]  # it leaves a stepped gradient alone: mmengine's
            return
        # the step reads exactly what mmengine clips: the norm comes from its gathering
        self.optimizer.clip_next_step(MultOf(self._clip_when_read))  # type: ignore[attr-defined]

    def _clip_when_read(self, grads: list[Tensor], table: NormTable | None) -> Tensor | None:
        """The clip coefficient of the gradients the step is about to read; logs their norm."""
        if not grads:
            return None
        norm, coefficient = fused_clip_grads(grads, self.clip_grad_kwargs, table)
        self.message_hub.update_scalar(f"train/{self.grad_name}", float(norm))
        return coefficient


class FusedAmpStep(FusedClip):
    """``FusedClip`` for mmengine's ``AmpOptimWrapper`` (its own ``step`` and ``_clip_grad``): with
    a fastopt optimizer and clipping by norm, or none, ``step`` is ``fused_amp_step`` (no in-place
    unscaling, the clip coefficient and the unscaling inside the kernel, the scale updated as
    ``loss_scaler.update`` would), ``train/grad_norm`` logged as mmengine's ``_clip_grad`` logs it.
    Anything else is mmengine's step."""

    loss_scaler: Any
    _scale_update_param: float | None  # mmengine's: the fixed loss scale, None when dynamic

    def step(self, **kwargs: Any) -> None:
        """The fused phase where it applies, else mmengine's ``AmpOptimWrapper.step``."""
        clipping = bool(self.clip_grad_kwargs)
        if not clipping or getattr(self, "grad_name", None) == "grad_norm":
            params = [p for g in self.optimizer.param_groups for p in g["params"]
                      if p.requires_grad and p.grad is not None]
            norm = fused_amp_step(self.optimizer, self.loss_scaler, params,
                                  self.clip_grad_kwargs if clipping else None,
                                  self._scale_update_param, kwargs)
            if norm is not None:
                if clipping and params:
                    self.message_hub.update_scalar(f"train/{self.grad_name}", float(norm))
                return
        super().step(**kwargs)  # type: ignore[misc]


def _mmengine_amp_step(cls: type) -> bool:
    """Whether ``cls`` steps and clips with mmengine's ``AmpOptimWrapper`` methods unchanged."""
    step, clip = getattr(cls, "step", None), getattr(cls, "_clip_grad", None)
    return (getattr(step, "__qualname__", "") == "AmpOptimWrapper.step"
            and getattr(clip, "__qualname__", "") == "OptimWrapper._clip_grad"
            and all(getattr(f, "__module__", "").startswith("mmengine.") for f in (step, clip)))


_WITH_FUSED_CLIP: dict[type, type] = {}


def with_fused_clip(cls: type) -> type:
    """``cls`` with ``FusedClip`` mixed in when it clips through a ``_clip_grad`` method as
    mmengine's wrappers do, ``FusedAmpStep`` when it steps as mmengine's ``AmpOptimWrapper``
    (the subclass keeps the name: isinstance checks, logs and checkpoints see the host's
    class); fastopt's own wrappers already fuse."""
    if issubclass(cls, (OptimWrapper, FusedClip)) or not callable(getattr(cls, "_clip_grad", None)):
        return cls
    if cls not in _WITH_FUSED_CLIP:
        mixin = FusedAmpStep if _mmengine_amp_step(cls) else FusedClip
        _WITH_FUSED_CLIP[cls] = type(cls.__name__, (mixin, cls),
                                     {"__module__": cls.__module__, "__doc__": cls.__doc__,
                                      "__qualname__": cls.__qualname__})
    return _WITH_FUSED_CLIP[cls]


def wrapper_class(wrapper_type: Any) -> Any:
    """The class a wrapper ``type`` names: user registrations, then mmengine's, then fastopt's."""
    if isinstance(wrapper_type, str):
        own = OPTIM_WRAPPERS.get(wrapper_type)
        if own is not None and own not in (OptimWrapper, AmpOptimWrapper):
            return own  # registered by the user: theirs wins
        theirs = mmengine_registry_get("OPTIM_WRAPPERS", wrapper_type)
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
