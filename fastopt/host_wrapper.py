"""The wrapper a config names, and a host's wrapper classes with fastopt's fusion mixed in.

``build_wrapper`` resolves the ``type`` of an ``optim_wrapper`` config (a user's registration,
then mmengine's class, then fastopt's own ``wrapper.OptimWrapper``) and, for a host class
that clips through ``_clip_grad`` as mmengine's wrappers do, builds a subclass named for what
it adds: ``<Host>WithFusedClip`` (clipping by norm through the native norm pass, the
coefficient applied by the step) or ``<Host>WithFusedAmpStep`` (mmengine's
``AmpOptimWrapper``: the whole AMP phase fused, ``amp.amp_phase``). The subclass is still an
instance of the host class, pickles and deep-copies (rebuilt from the host class), and behaves
as the host class wherever fastopt's optimizer is not in use.
"""

from __future__ import annotations

from contextvars import ContextVar
from typing import Any

import torch
from torch import Tensor

from ._kernels import MultOf
from .amp import amp_phase
from .clip_grad import NormTable, clips_all_it_steps, fused_clip_grads, host_clipped
from .optim import is_fastopt_optimizer
from .registry import OPTIM_WRAPPERS, SCOPE_KEY, mmengine_registry_get, resolve_type, within_scope
from .wrapper import AmpOptimWrapper, OptimWrapper

__all__ = ["FusedAmpStep", "FusedClip", "build_wrapper", "with_fused_clip", "wrapper_class"]


def _rebuilt(host: type, mixin: type) -> Any:
    """An empty instance of ``host`` with ``mixin`` mixed in (unpickling and deep copies)."""
    cls = _mixed(host, mixin)
    return cls.__new__(cls)


#: the wrappers whose ``step`` is running (ids): their ``_clip_grad`` hands the clip to the step
_STEPPING: ContextVar[frozenset[int]] = ContextVar("fastopt_wrappers_stepping", default=frozenset())


class FusedClip:
    """Mixin for a host framework's optim wrapper (mmengine's ``OptimWrapper``,
    ``AmpOptimWrapper``, a project's own): inside the host's ``step``, clipping by norm with a
    fastopt optimizer takes one native norm pass over the gradients the optimizer's step gathers
    and has the step kernel apply the coefficient instead of multiplying the gradients; the norm
    is logged as the host logs it (``train/grad_norm`` in mmengine's message hub) as that step
    reads the gradients. ``_clip_grad()`` called on its own (outside ``step``), and anything
    else, is the host's own clipping: in place, logged at once."""

    optimizer: torch.optim.Optimizer
    clip_grad_kwargs: dict
    grad_name: str
    message_hub: Any
    host_class: type  # the host's class this one extends

    def step(self, **kwargs: Any) -> None:
        """The host's ``step``, its ``_clip_grad`` handing the clip to the optimizer's step."""
        token = _STEPPING.set(_STEPPING.get() | {id(self)})
        try:
            super().step(**kwargs)  # type: ignore[misc]
        finally:
            _STEPPING.reset(token)

    def _clip_grad(self) -> None:
        """Inside ``step``: the clip handed to the optimizer's step (one read of the gradients, the
        norm logged as the step reads them). On its own: the host's ``_clip_grad`` (in place, logged now)."""
        if id(self) not in _STEPPING.get():
            super()._clip_grad()  # type: ignore[misc]  # called on its own: the gradients clipped now
            return
        if getattr(self, "grad_name", None) != "grad_norm" or not is_fastopt_optimizer(self.optimizer):
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

    def __reduce_ex__(self, protocol: Any) -> tuple:
        """Pickled as the host class and the mixin (the subclass is made again on loading)."""
        state = self.__getstate__() if hasattr(self, "__getstate__") else self.__dict__
        return _rebuilt, (self.host_class, _MIXINS[type(self)]), state


class FusedAmpStep(FusedClip):
    """``FusedClip`` for mmengine's ``AmpOptimWrapper`` (its own ``step`` and ``_clip_grad``): with
    a fastopt optimizer and clipping by norm, or none, ``step`` is ``amp.amp_phase`` (no in-place
    unscaling, the clip coefficient and the unscaling inside the kernel, the scale updated as
    ``loss_scaler.update`` would), ``train/grad_norm`` logged as mmengine's ``_clip_grad`` logs it.
    Anything else is mmengine's step."""

    loss_scaler: Any
    _scale_update_param: float | None  # mmengine's: the fixed loss scale, None when dynamic

    def step(self, **kwargs: Any) -> None:
        """The fused phase where it applies, else mmengine's ``AmpOptimWrapper.step``."""
        clipping = bool(self.clip_grad_kwargs)
        if clipping and getattr(self, "grad_name", None) != "grad_norm":
            super().step(**kwargs)  # type: ignore[misc]  # clipping by value: mmengine's
            return
        params = host_clipped(p for g in self.optimizer.param_groups for p in g["params"])

        def unfused() -> None:
            super(FusedAmpStep, self).step(**kwargs)  # (FusedClip.step: logs its own norm)

        amp_phase(self.optimizer, self.loss_scaler, params, self.clip_grad_kwargs if clipping else None,
                  self._scale_update_param, kwargs, unfused,
                  lambda norm: self.message_hub.update_scalar(f"train/{self.grad_name}", float(norm)))


def _mmengine_amp_step(cls: type) -> bool:
    """Whether ``cls`` steps and clips with mmengine's ``AmpOptimWrapper`` methods unchanged."""
    step, clip = getattr(cls, "step", None), getattr(cls, "_clip_grad", None)
    return (getattr(step, "__qualname__", "") == "AmpOptimWrapper.step"
            and getattr(clip, "__qualname__", "") == "OptimWrapper._clip_grad"
            and all(getattr(f, "__module__", "").startswith("mmengine.") for f in (step, clip)))


_WITH_MIXIN: dict[tuple[type, type], type] = {}
_MIXINS: dict[type, type] = {}  # mixed class -> its mixin


def _mixed(host: type, mixin: type) -> type:
    """``host`` with ``mixin`` mixed in, named ``<Host>With<Mixin>`` (one class per pair)."""
    key = (host, mixin)
    if key not in _WITH_MIXIN:
        name = f"{host.__name__}With{mixin.__name__}"
        cls = type(name, (mixin, host), {"__module__": __name__, "__qualname__": name, "host_class": host,
                                         "__doc__": f"{host.__module__}.{host.__qualname__} with fastopt's "
                                                    f"{mixin.__name__} mixed in."})
        _WITH_MIXIN[key] = cls
        _MIXINS[cls] = mixin
    return _WITH_MIXIN[key]


def with_fused_clip(cls: type) -> type:
    """``cls`` with ``FusedClip`` mixed in when it clips through a ``_clip_grad`` method as
    mmengine's wrappers do, ``FusedAmpStep`` when it steps as mmengine's ``AmpOptimWrapper``;
    ``cls`` itself when it already fuses (fastopt's own wrappers) or clips otherwise."""
    if issubclass(cls, (OptimWrapper, FusedClip)) or not callable(getattr(cls, "_clip_grad", None)):
        return cls
    return _mixed(cls, FusedAmpStep if _mmengine_amp_step(cls) else FusedClip)


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
