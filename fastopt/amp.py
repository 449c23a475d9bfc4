"""The fused AMP phase, written once for every host: GradScaler's ``unscale_`` + clip by norm +
``step`` + ``update`` as one native read of the still scaled gradients (the norm and the
inf/NaN check), the unscaling and the clip coefficient applied by the step kernel, no step on
inf/NaN, the scale updated as ``GradScaler.update`` does. fastopt's ``AmpOptimWrapper``,
the mmengine ``AmpOptimWrapper`` mixin (``host_wrapper.FusedAmpStep``) and the mmcv 1.x
``FastFp16OptimizerHook`` run ``amp_phase``; each keeps its own unfused sequence for what
cannot be fused."""

from __future__ import annotations

import math
from typing import Any, Callable

import torch
from torch import Tensor

from ._torch_compat import GRAD_SCALER, GRAD_SCALER_TYPES
from .clip_grad import coefficient_of, native_norm_table, stepped_params, total_norm
from .optim import is_fastopt_optimizer

__all__ = ["amp_phase", "fused_amp_step", "scaler_settings", "update_scale"]


def scaler_settings(loss_scale: Any, error: type[Exception] = TypeError
                    ) -> tuple[dict[str, Any], float | None]:
    """``(GradScaler arguments, fixed scale)`` of a ``loss_scale`` setting as mmengine and mmcv
    take it: ``'dynamic'``, a number (a fixed scale, set again after every step) or a dict of
    GradScaler arguments; anything else raises ``error`` (mmengine's TypeError, mmcv's ValueError)."""
    if loss_scale == "dynamic":
        return {}, None
    if isinstance(loss_scale, (int, float)) and not isinstance(loss_scale, bool):
        return dict(init_scale=float(loss_scale)), float(loss_scale)
    if isinstance(loss_scale, dict):
        return dict(loss_scale), None
    raise error(f'loss_scale must be of type float, dict, or "dynamic", got {loss_scale!r}')


def amp_phase(optimizer: torch.optim.Optimizer, scaler: Any, clip_params: list[Tensor],
              clip_grad: dict[str, Any] | None, fixed_scale: float | None, step_kwargs: dict[str, Any],
              unfused: Callable[[], Tensor | None], report: Callable[[Tensor], None]) -> None:
    """One optimizer phase under a loss scale: ``fused_amp_step`` where it applies, else the
    host's ``unfused`` sequence (which returns the norm it clipped to, or None when it reports
    its own); ``report(norm)`` when gradients of ``clip_params`` were clipped by ``clip_grad``."""
    norm = fused_amp_step(optimizer, scaler, clip_params, clip_grad, fixed_scale, step_kwargs)
    if norm is None:
        norm = unfused()
    if clip_grad and clip_params and norm is not None:
        report(norm)


def _scaler_fusable(optimizer: Any, scaler: Any) -> bool:
    """Whether ``fused_amp_step`` may stand in for ``scaler``'s unscale_/step/update: a fastopt
    optimizer, an enabled torch GradScaler whose methods are torch's own (not a sharded or other
    subclass that changes them), with nothing recorded for this iteration yet."""
    if (not isinstance(optimizer, torch.optim.Optimizer) or GRAD_SCALER is None
            or not isinstance(scaler, GRAD_SCALER_TYPES)):
        return False
    if not is_fastopt_optimizer(optimizer) or not scaler.is_enabled():
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
    stepped = stepped_params(optimizer)
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
    coefficient = coefficient_of(norm, clip_grad) if clip_grad and clipped else None
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
