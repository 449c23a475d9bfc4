"""fastopt's own ``OptimWrapper`` and ``AmpOptimWrapper``: what ``build_optim_wrapper`` returns
when mmengine is not installed (``host_wrapper.py`` builds mmengine's classes when it is).

They implement mmengine 0.10.7's public wrapper API (``update_params``, gradient accumulation
with ``initialize_count_status`` and the remainder at the end, ``optim_context``, ``_clip_grad``,
``message_hub``, ``get_lr`` / ``get_momentum``, ``state_dict``, ...) and raise what mmengine
raises for bad arguments (fastopt's clearer errors are subclasses of mmengine's classes). With
mmengine installed they log to mmengine's ``MessageHub`` and are declared virtual subclasses of
its ``BaseOptimWrapper`` (mmengine's param schedulers take them); without it, ``ScalarHub``
stands in for the hub and nothing of mmengine is imported.
"""

from __future__ import annotations

import contextlib
import importlib.util
from collections.abc import Iterator
from typing import Any

import torch
from torch import Tensor, nn
from torch.nn.modules.batchnorm import _BatchNorm

from ._kernels import MultOf
from ._report import host_warning
from ._torch_compat import grad_scaler
from .amp import amp_phase, scaler_settings
from .clip_grad import (
    NormTable,
    check_clip_grad,
    clips_all_it_steps,
    fused_clip,
    fused_clip_grads,
    host_clipped,
)
from .optim import is_fastopt_optimizer
from .registry import OPTIM_WRAPPERS

__all__ = ["AmpOptimWrapper", "ClipArgumentTypeError", "MissingClipArgumentError", "NotAnOptimizerError",
           "OptimWrapper", "ScalarHistory", "ScalarHub", "WrapperAssertionError", "declare_to_mmengine",
           "mmengine_installed"]


# ------------------------------------------------------------------ errors
class WrapperAssertionError(AssertionError, ValueError):
    """An argument mmengine's wrapper rejects with an assertion (``clip_grad=[]``,
    ``accumulative_counts=0``, an unknown ``dtype``); also a ValueError, as fastopt raised before."""


class MissingClipArgumentError(KeyError, TypeError):
    """``clip_grad`` without ``max_norm`` / ``clip_value``: raised when the wrapper is built; also
    the TypeError torch's clip function raises at mmengine's first clipped step."""


class ClipArgumentTypeError(ValueError, TypeError):
    """A ``max_norm`` / ``clip_value`` that is not a number (``None`` is torch's TypeError at
    mmengine's first clipped step)."""


class NotAnOptimizerError(TypeError, AttributeError):
    """A wrapped object without ``param_groups`` (mmengine's wrapper fails on it with an
    AttributeError)."""


# ------------------------------------------------------------------ the host, when there is one
def mmengine_installed() -> bool:
    """Whether mmengine can be imported (its message hub, logger and ``BaseOptimWrapper`` are then used)."""
    return importlib.util.find_spec("mmengine") is not None


_DECLARED: list[type] = []  # the BaseOptimWrapper class the wrappers were declared to, once


def declare_to_mmengine() -> bool:
    """Declare fastopt's wrappers virtual subclasses of mmengine's ``BaseOptimWrapper`` (the
    class mmengine's param schedulers check for), once; False, importing nothing, without mmengine."""
    if _DECLARED:
        return True
    if not mmengine_installed():
        return False
    from mmengine.optim import BaseOptimWrapper

    BaseOptimWrapper.register(OptimWrapper)
    _DECLARED.append(BaseOptimWrapper)
    return True


class ScalarHistory:
    """The values logged under one key (the part of mmengine's ``HistoryBuffer`` a reader uses)."""

    def __init__(self) -> None:
        self.values: list[float] = []
        self.counts: list[int] = []

    def update(self, value: float, count: int = 1) -> None:
        """Append ``value`` (logged ``count`` times)."""
        self.values.append(value)
        self.counts.append(count)

    def current(self) -> float:
        """The last value logged."""
        return self.values[-1]

    def mean(self, window_size: int | None = None) -> float:
        """The mean of the last ``window_size`` values (all of them by default)."""
        window = self.values[-window_size:] if window_size else self.values
        return sum(window) / len(window)

    @property
    def data(self) -> tuple[list[float], list[int]]:
        """``(values, counts)``, oldest first."""
        return self.values, self.counts


class ScalarHub:
    """Stands in for mmengine's ``MessageHub`` where mmengine is not installed: the scalars a
    wrapper logs (``train/grad_norm``), read with ``get_scalar(key).current()`` as from mmengine's."""

    _current: ScalarHub | None = None

    def __init__(self) -> None:
        self.log_scalars: dict[str, ScalarHistory] = {}

    @classmethod
    def get_current_instance(cls) -> ScalarHub:
        """The process's hub (created on first use), as ``MessageHub.get_current_instance``."""
        if cls._current is None:
            cls._current = cls()
        return cls._current

    def update_scalar(self, key: str, value: float | Tensor, count: int = 1, resumed: bool = True) -> None:
        """Log ``value`` under ``key`` (``resumed`` is accepted for mmengine's signature)."""
        self.log_scalars.setdefault(key, ScalarHistory()).update(float(value), count)

    def get_scalar(self, key: str) -> ScalarHistory:
        """The values logged under ``key``; KeyError when none was, as mmengine's hub."""
        if key not in self.log_scalars:
            raise KeyError(f"{key} is not found in the hub's log_scalars")
        return self.log_scalars[key]


def _message_hub() -> Any:
    """mmengine's current ``MessageHub`` where mmengine is installed, else ``ScalarHub``'s."""
    if mmengine_installed():
        from mmengine.logging import MessageHub

        return MessageHub.get_current_instance()
    return ScalarHub.get_current_instance()


# ------------------------------------------------------------------ argument checks
def _check_accumulative_counts(counts: Any) -> None:
    """mmengine's check (``counts > 0``): a TypeError for what does not compare, else an assertion."""
    try:
        positive = counts > 0
    except TypeError:
        raise TypeError(f"accumulative_counts must be a positive number, got {counts!r}") from None
    if not positive:
        raise WrapperAssertionError(
            f"_accumulative_counts at least greater than or equal to 1, got {counts!r}")


def _checked_clip_grad(clip_grad: Any) -> tuple[str, dict[str, Any]]:
    """``(clip type, torch's arguments)`` of a ``clip_grad`` setting, checked in mmengine's order
    (a non-empty dict, the type, arguments besides it), then fastopt's checks of the arguments."""
    if not isinstance(clip_grad, dict) or not clip_grad:
        raise WrapperAssertionError(
            "If `clip_grad` is not None, it should be a `dict` which is the arguments of "
            f"`torch.nn.utils.clip_grad_norm_` or `clip_grad_value_`, got {clip_grad!r}")
    kwargs = dict(clip_grad)  # (mmengine pops 'type' from the caller's dict; this leaves it)
    clip_type = kwargs.pop("type", "norm")
    if clip_type not in ("norm", "value"):
        raise ValueError(f"clip_grad type must be 'norm' or 'value', got {clip_type!r}")
    if not kwargs:
        raise WrapperAssertionError("`clip_grad` should contain other arguments besides `type`, the "
                                    "arguments of `torch.nn.utils.clip_grad_norm_` or `clip_grad_value_`")
    try:
        check_clip_grad(clip_type, kwargs)
    except KeyError as exc:
        raise MissingClipArgumentError(exc.args[0]) from None
    except ValueError as exc:
        limit = kwargs.get("max_norm" if clip_type == "norm" else "clip_value")
        if isinstance(limit, bool) or not isinstance(limit, (int, float)):
            raise ClipArgumentTypeError(str(exc)) from None
        raise
    return clip_type, kwargs


def _has_batch_norm(model: Any) -> bool:
    """Whether ``model`` holds a batch norm layer (mmengine's ``has_batch_norm``)."""
    return isinstance(model, nn.Module) and any(isinstance(m, _BatchNorm) for m in model.modules())


# ------------------------------------------------------------------ the wrappers
@OPTIM_WRAPPERS.register_module()
class OptimWrapper:
    """mmengine 0.10.7's ``OptimWrapper`` over a torch optimizer, its clipping fused into the step.

    Gradient accumulation over ``accumulative_counts`` calls (the loss divided by the count, by the
    remainder at the end once ``initialize_count_status`` gave the total), ``clip_grad`` by norm
    or value, ``train/grad_norm`` logged to ``message_hub``. As mmengine 0.8.0 on, an optimizer
    with more than one group gets ``base_param_settings``, appended to ``param_groups`` and saved in
    ``state_dict``; ``build_wrapper`` leaves it out under older semantics.
    """

    def __init__(self, optimizer: torch.optim.Optimizer, accumulative_counts: int = 1,
                 clip_grad: dict | None = None) -> None:
        if not hasattr(optimizer, "param_groups"):
            raise NotAnOptimizerError(
                f"optimizer must be a torch.optim.Optimizer, got {type(optimizer).__name__}")
        _check_accumulative_counts(accumulative_counts)
        self._accumulative_counts = accumulative_counts
        self.optimizer = optimizer
        #: torch's clip arguments (None: no clipping), ``type`` taken out as mmengine does
        self.clip_grad_kwargs: dict[str, Any] | None = None
        if clip_grad is not None:
            clip_type, self.clip_grad_kwargs = _checked_clip_grad(clip_grad)
            by_norm = clip_type == "norm"
            self.clip_func = torch.nn.utils.clip_grad_norm_ if by_norm else torch.nn.utils.clip_grad_value_
            #: the key the clip is logged under, ``train/<grad_name>`` (mmengine's)
            self.grad_name = "grad_norm" if by_norm else "grad_value"
        self.message_hub = _message_hub()
        self._inner_count = 0
        self._max_counts = -1  # the total number of update_params calls (initialize_count_status)
        self._remainder_counts = -1  # the calls left over after the last full accumulation
        # fastopt's optimizers take the clip coefficient into their step (one pass fewer)
        self._fused_clip = is_fastopt_optimizer(optimizer)
        #: the gradient norm of the last clipped step (None before one, or when clipping by value)
        self.grad_norm: Tensor | None = None
        self.base_param_settings: dict | None = None
        if len(optimizer.param_groups) > 1:
            self.base_param_settings = {"params": torch.tensor([0.0], dtype=torch.float),
                                        **optimizer.defaults}
        declare_to_mmengine()

    # -- what schedulers and hooks read ------------------------------------------------------
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

    @property
    def inner_count(self) -> int:
        """The number of ``update_params`` (``backward``) calls so far."""
        return self._inner_count

    def get_lr(self) -> dict[str, list[float]]:
        """Learning rate of every param group, as ``{'lr': [...]}`` (and ``'base_lr'``, that of
        ``base_param_settings``, when there is one)."""
        out = {"lr": [g["lr"] for g in self.optimizer.param_groups]}
        if self.base_param_settings is not None:
            out = {"base_lr": [self.base_param_settings["lr"]], **out}
        return out

    def get_momentum(self) -> dict[str, list[float]]:
        """Momentum (or beta1, or 0) of every param group, as ``{'momentum': [...]}``."""
        out: list[float] = []
        for g in self.optimizer.param_groups:
            out.append(g["momentum"] if "momentum" in g else g["betas"][0] if "betas" in g else 0)
        return {"momentum": out}

    # -- one iteration -----------------------------------------------------------------------
    def update_params(self, loss: Tensor, step_kwargs: dict | None = None,
                      zero_kwargs: dict | None = None) -> None:
        """``backward(scale_loss(loss))``, then ``step`` and ``zero_grad`` when ``should_update()``."""
        self.backward(self.scale_loss(loss))
        if self.should_update():
            self.step(**(step_kwargs or {}))
            self.zero_grad(**(zero_kwargs or {}))

    def backward(self, loss: Tensor, **kwargs: Any) -> None:
        """Backpropagate ``loss`` and count the call."""
        loss.backward(**kwargs)
        self._inner_count += 1

    def scale_loss(self, loss: Tensor) -> Tensor:
        """``loss`` divided by the accumulation count, or by the remainder over the last calls when
        ``initialize_count_status`` set a total the count does not divide (mmengine's rule)."""
        if self._accumulative_counts == 1:
            factor: float = 1
        elif self._max_counts == -1:
            factor = self._accumulative_counts
        else:
            last_full = self._max_counts - self._remainder_counts
            factor = self._accumulative_counts if self._inner_count < last_full else self._remainder_counts
            if not factor > 0:
                raise WrapperAssertionError(
                    "loss_factor should be larger than zero! This error could happened when "
                    "initialize_count_status called with an error `init_counts` or `max_counts`")
        return loss / factor

    def should_update(self) -> bool:
        """Whether this call applies the accumulated gradients: every ``accumulative_counts``
        calls, and at the last call (``initialize_count_status``'s total)."""
        return self._inner_count % self._accumulative_counts == 0 or self._inner_count == self._max_counts

    def should_sync(self) -> bool:
        """Whether the coming backward (before its count) should synchronize gradients across
        processes: when it is followed by an update."""
        coming = self._inner_count + 1
        return coming % self._accumulative_counts == 0 or coming == self._max_counts

    def initialize_count_status(self, model: nn.Module, init_counts: int, max_counts: int) -> None:
        """Set the call count (resuming at ``init_counts``) and the total, so the last calls that
        the accumulation count does not divide still update; warns as mmengine does."""
        self._inner_count = init_counts
        self._max_counts = max_counts
        if self._inner_count % self._accumulative_counts != 0:
            host_warning("Resumed iteration number is not divisible by `_accumulative_counts` in "
                         "`GradientCumulativeOptimizerHook`, which means the gradient of some iterations "
                         "is lost and the result may be influenced slightly.", mmengine=True)
        if _has_batch_norm(model) and self._accumulative_counts > 1:
            host_warning("Gradient accumulative may slightly decrease performance because the model has "
                         "BatchNorm layers.", mmengine=True)
        self._remainder_counts = self._max_counts % self._accumulative_counts

    @contextlib.contextmanager
    def optim_context(self, model: nn.Module | None = None) -> Iterator[None]:
        """The forward pass's context: ``model.no_sync()`` (no gradient synchronization) while
        gradients accumulate, when the model has it."""
        if not self.should_sync() and hasattr(model, "no_sync"):
            with model.no_sync():  # type: ignore[union-attr]
                yield
        else:
            yield

    def step(self, **kwargs: Any) -> None:
        """Clip gradients if configured, then step the optimizer. Clipping by norm with fastopt's
        optimizers happens inside the step: the norm is taken from the gradients the step gathers
        (one gathering, one native norm pass), logged, and the coefficient applied as the kernel
        reads each gradient. Otherwise ``_clip_grad()`` clips in place first, as mmengine's."""
        if self.clip_grad_kwargs:
            if self._step_takes_the_clip():
                kwargs["grad_mult"] = MultOf(self._clip_when_read)
            else:
                self._clip_grad()
        self.optimizer.step(**kwargs)

    def zero_grad(self, **kwargs: Any) -> None:
        """Zero (or free) the gradients."""
        self.optimizer.zero_grad(**kwargs)

    # -- clipping ----------------------------------------------------------------------------
    def _params(self) -> list[Tensor]:
        """What clipping covers, as mmengine's wrapper: parameters that require grad and have one."""
        return host_clipped(p for g in self.optimizer.param_groups for p in g.get("params", ()))

    def _clip_overridden(self) -> bool:
        """Whether a subclass clips with its own ``_clip_grad`` (then the step calls it, as mmengine's)."""
        return type(self)._clip_grad is not OptimWrapper._clip_grad

    def _step_takes_the_clip(self) -> bool:
        """Whether clipping by norm can go into the optimizer's step: fastopt's optimizer, every
        gradient it steps clipped, no ``_clip_grad`` of a subclass."""
        return (self.grad_name == "grad_norm" and self._fused_clip and not self._clip_overridden()
                and clips_all_it_steps(self.optimizer))

    def _record_norm(self, norm: Tensor) -> None:
        """Keep ``norm`` as ``grad_norm`` and log it as ``train/grad_norm``, as mmengine logs it."""
        self.grad_norm = norm
        self.message_hub.update_scalar(f"train/{self.grad_name}", float(norm))

    def _clip_grad(self) -> None:
        """Clip the gradients now, in place (torch's ``clip_grad_norm_`` / ``clip_grad_value_``), and
        log the norm: mmengine's ``_clip_grad``, for code that calls it on its own."""
        params = self._params()
        if not params:
            return
        norm = self.clip_func(params, **self.clip_grad_kwargs)  # type: ignore[arg-type]
        if norm is not None:  # (clip_grad_value_ returns None)
            self._record_norm(norm)

    def _clip_when_read(self, grads: list[Tensor], table: NormTable | None) -> Tensor | None:
        """The clip coefficient of the gradients the step is about to read; logs their norm."""
        if not grads:
            return None
        norm, coefficient = fused_clip_grads(grads, self.clip_grad_kwargs or {}, table)
        self._record_norm(norm)
        return coefficient

    # -- checkpoints -------------------------------------------------------------------------
    def state_dict(self) -> dict:
        """The optimizer's state dict, with ``base_param_settings`` when there is one."""
        state_dict = self.optimizer.state_dict()
        if self.base_param_settings is not None:
            state_dict["base_param_settings"] = self.base_param_settings
        return state_dict

    def load_state_dict(self, state_dict: dict) -> None:
        """Load an optimizer state dict, with or without ``base_param_settings`` (taken when
        present, as mmengine does; the dict passed in is left as it is)."""
        state_dict = dict(state_dict)
        base = state_dict.pop("base_param_settings", None)
        if base is not None:
            self.base_param_settings = base
        self.optimizer.load_state_dict(state_dict)

    def __repr__(self) -> str:
        return (f"Type: {type(self).__name__}\n_accumulative_counts: {self._accumulative_counts}\n"
                f"optimizer: \n{self.optimizer!r}\n")


def _is_optimizer(value: Any) -> bool:
    """Whether a first positional argument is the optimizer (fastopt's order) rather than
    mmengine's ``loss_scale``."""
    return hasattr(value, "param_groups")


def _mmengine_order(loss_scale: str | float | dict = "dynamic", dtype: str | torch.dtype | None = None,
                    use_fsdp: bool = False, **kwargs: Any) -> tuple[Any, Any, bool, dict[str, Any]]:
    """mmengine's argument order: ``AmpOptimWrapper('dynamic', optimizer=...)``."""
    return loss_scale, dtype, use_fsdp, kwargs


def _optimizer_first(optimizer: Any, loss_scale: str | float | dict = "dynamic",
                     dtype: str | torch.dtype | None = None, use_fsdp: bool = False,
                     **kwargs: Any) -> tuple[Any, Any, bool, dict[str, Any]]:
    """fastopt's argument order, as ``OptimWrapper``'s: ``AmpOptimWrapper(optimizer, loss_scale=...)``."""
    return loss_scale, dtype, use_fsdp, dict(kwargs, optimizer=optimizer)


@OPTIM_WRAPPERS.register_module()
class AmpOptimWrapper(OptimWrapper):
    """mmengine 0.10.7's ``AmpOptimWrapper`` on ``torch.amp.GradScaler``, on any device.

    ``AmpOptimWrapper(loss_scale='dynamic', dtype=None, use_fsdp=False, **kwargs)`` as mmengine's,
    or with the optimizer first (``AmpOptimWrapper(optimizer, loss_scale=...)``). ``loss_scale``
    is ``'dynamic'``, a fixed number, or a dict of GradScaler arguments; ``dtype`` (one of
    ``valid_dtypes``, a torch dtype or None) is what ``optim_context`` autocasts to. With fastopt's
    optimizer the phase is one native read of the scaled gradients plus the step (``amp.amp_phase``).
    """

    valid_dtypes = ("float16", "bfloat16", "float32", "float64")

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        parse = _optimizer_first if args and _is_optimizer(args[0]) else _mmengine_order
        loss_scale, dtype, use_fsdp, rest = parse(*args, **kwargs)
        super().__init__(**rest)
        params = [p for g in self.optimizer.param_groups for p in g.get("params", ())]
        self.device_type = params[0].device.type if params else "cpu"
        scaler_args, fixed = scaler_settings(loss_scale)
        #: what ``loss_scaler.update`` gets each step: None (dynamic), or the fixed scale (mmengine's)
        self._scale_update_param: float | None = fixed
        if use_fsdp:
            from torch.distributed.fsdp.sharded_grad_scaler import ShardedGradScaler

            self.loss_scaler = ShardedGradScaler(self.device_type, **scaler_args)
        else:
            self.loss_scaler = grad_scaler(self.device_type, **scaler_args)
        if isinstance(dtype, str):
            if dtype not in self.valid_dtypes:
                raise WrapperAssertionError(f"dtype should be any of {self.valid_dtypes}, got {dtype}")
            dtype = getattr(torch, dtype)
        if dtype is not None and not isinstance(dtype, torch.dtype):
            raise WrapperAssertionError(f"dtype should be None or instance of torch.dtype, got {dtype}")
        self.cast_dtype: torch.dtype | None = dtype

    def backward(self, loss: Tensor, **kwargs: Any) -> None:
        """Backpropagate the scaled loss and count the call."""
        self.loss_scaler.scale(loss).backward(**kwargs)
        self._inner_count += 1

    def step(self, **kwargs: Any) -> None:
        """Step through the scaler (skipped on inf/NaN), then update the scale (or set it back to a
        fixed ``loss_scale``). With fastopt's optimizer, and clipping by norm or none, the whole
        phase is one read of the gradients plus the step (``amp.amp_phase``); otherwise
        GradScaler's ``unscale_`` (only to clip), the clip, ``step`` and ``update``."""
        if self.clip_grad_kwargs and (self.grad_name != "grad_norm" or self._clip_overridden()):
            self._unfused_step(kwargs)
            return
        amp_phase(self.optimizer, self.loss_scaler, self._params(), self.clip_grad_kwargs or None,
                  self._scale_update_param, kwargs, lambda: self._unfused_step(kwargs), self._record_norm)

    def _unfused_step(self, kwargs: dict[str, Any]) -> None:
        """GradScaler's sequence: ``unscale_`` (only to clip), clip, ``step``, ``update``. The clip is
        the coefficient of the native norm, for the step to apply, where the step takes it."""
        if self.clip_grad_kwargs:
            self.loss_scaler.unscale_(self.optimizer)
            if self._step_takes_the_clip():
                params = self._params()
                if params:
                    norm, kwargs["grad_mult"] = fused_clip(params, self.clip_grad_kwargs)
                    self._record_norm(norm)
            else:
                self._clip_grad()
        self.loss_scaler.step(self.optimizer, **kwargs)
        self.loss_scaler.update(self._scale_update_param)

    @contextlib.contextmanager
    def optim_context(self, model: nn.Module | None = None) -> Iterator[None]:
        """``OptimWrapper.optim_context`` (no gradient synchronization while accumulating) and
        autocast to ``cast_dtype`` on the parameters' device for the forward pass."""
        with super().optim_context(model), torch.autocast(self.device_type, dtype=self.cast_dtype):
            yield

    def state_dict(self) -> dict:
        """The optimizer's state dict (with ``base_param_settings``) plus the loss scaler's."""
        return dict(super().state_dict(), loss_scaler=self.loss_scaler.state_dict())

    def load_state_dict(self, state_dict: dict) -> None:
        """Load both the loss scaler's and the optimizer's state (the dict passed in is left as it is)."""
        state_dict = dict(state_dict)
        if "loss_scaler" in state_dict:
            self.loss_scaler.load_state_dict(state_dict.pop("loss_scaler"))
        super().load_state_dict(state_dict)

