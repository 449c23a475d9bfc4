"""The four ways fastopt's optimizers take a step, one function each, and the one selector.

As torch's optimizers run ``_single_tensor_adam`` / ``_multi_tensor_adam`` / ``_fused_adam``
under one ``step``, fastopt's ``step`` runs the first of these tiers that takes the step:

- ``flat_tier``: flat-buffer mode, one kernel call over a few contiguous buffers;
- ``native_tier``: every parameter of every group in one native call (CPU);
- ``torch_fused_tier``: torch's fused kernels on the merged groups (CUDA, XPU), through
  torch's functional API with ``fused=True``;
- ``torch_tier``: torch's functional API with the groups' own settings, for whatever the others
  do not take (tensor lr, differentiable, complex, non-contiguous, sparse, other devices).

Each has one signature, ``tier(optimizer, args) -> bool`` (True: the step was taken, or skipped
on inf/NaN gradients); none writes into ``param_groups`` or leaves an attribute behind, and
none calls the ``step`` of torch's classes, so torch's wrapping of fastopt's own ``step``
(step hooks, the profiler) runs exactly once.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import Tensor

from . import _kernels as K
from ._flat import FlatBuffers


@dataclass
class StepCache:
    """What a fastopt optimizer keeps between steps; each is checked before it is used."""

    plan: K.Plan | None = None  # the native tier's plan
    hyper: tuple[list, tuple[np.ndarray, np.ndarray]] | None = None  # (rows, hyperparameter table)
    flat: FlatBuffers | None = None  # flat-buffer mode's buffers


def groups_key(opt: Any) -> tuple:
    """What a plan or a flat layout depends on: the groups' parameter lists, the settings that
    decide which state exists and whether the kernel may step a group, and the state dict."""
    structure = opt.algorithm.structure
    groups = tuple((id(g["params"]), len(g["params"]), structure(g), K.group_settings(g))
                   for g in opt.param_groups)
    return (*groups, id(opt.state))


def current_plan(opt: Any, cache: StepCache) -> K.Plan | None:
    """The native plan for the groups as they are now (made again when they changed); None
    when the native kernel cannot step them."""
    plan = cache.plan
    key = groups_key(opt)
    if plan is None or plan.stale or plan.key != key or not plan.check_params(opt.param_groups):
        plan = cache.plan = K.Plan(opt.param_groups, opt.algorithm, key)
    return plan if plan.native else None


def hyper_table(opt: Any, cache: StepCache) -> tuple[np.ndarray, np.ndarray]:
    """Per-group hyperparameters and flags as arrays, rebuilt only when a value changed."""
    rows = [(tuple(r), f) for r, f in map(opt.algorithm.hyper_row, opt.param_groups)]
    if cache.hyper is None or cache.hyper[0] != rows:
        cache.hyper = (rows, K.hyper_table(opt.param_groups, opt.algorithm))
    return cache.hyper[1]


def checked_flat(opt: Any, cache: StepCache) -> FlatBuffers:
    """The flat buffers, laid out again when the groups or the state changed since; a clear
    error when the parameters no longer live in them (moved by ``model.to()``)."""
    flat = cache.flat
    assert flat is not None
    if flat.key != groups_key(opt) or not flat.holds(opt.param_groups, opt.state):
        opt.use_flat_buffers()
        flat = cache.flat
        assert flat is not None
    return flat


@dataclass
class StepArgs:
    """What a step is given besides the optimizer: GradScaler's ``grad_scale`` / ``found_inf``
    (read off the optimizer, never written), and a gradient multiplier (a clip coefficient, or
    a ``MultOf`` computing it from the gradients the step reads)."""

    grad_scale: Tensor | None
    found_inf: Tensor | None
    grad_mult: float | Tensor | K.MultOf | None
    cache: StepCache

    @property
    def skip(self) -> bool:
        """Whether GradScaler found inf/NaN gradients (the step is skipped, state included)."""
        return self.found_inf is not None and bool(self.found_inf.item())


def mult_value(opt: Any, grad_mult: float | Tensor | K.MultOf | None) -> float | Tensor | None:
    """``grad_mult`` as a value: a ``MultOf`` is asked with the gradients the step reads."""
    if not isinstance(grad_mult, K.MultOf):
        return grad_mult
    return grad_mult([p.grad for g in opt.param_groups for p in g["params"] if p.grad is not None])


def flat_tier(opt: Any, args: StepArgs) -> bool:
    """Flat-buffer mode (after ``use_flat_buffers()``): one call over the buffers."""
    if args.cache.flat is None:
        return False
    if args.skip:
        mult_value(opt, args.grad_mult)  # a clip still takes (and logs, or refuses) its norm
        return True
    flat = checked_flat(opt, args.cache)
    mult = mult_value(opt, args.grad_mult)
    flat.step(opt.param_groups, 0.0 if args.grad_scale is None else float(args.grad_scale),
              1.0 if mult is None else float(mult), clipped=args.grad_mult is not None)
    return True


def native_tier(opt: Any, args: StepArgs) -> bool:
    """Every group in one native call, through the optimizer's checked plan (CPU tensors of the
    kernel's dtypes, plain hyperparameters)."""
    for _ in range(2):  # once more with a new plan when parameters moved where it cannot follow
        plan = current_plan(opt, args.cache)
        if plan is None:
            return False
        if args.skip:
            mult_value(opt, args.grad_mult)
            return True
        mult = args.grad_mult
        native_mult = mult if isinstance(mult, K.MultOf) else (1.0 if mult is None else float(mult))
        if K.native_step(plan, opt.param_groups, opt.state, opt.algorithm, hyper_table(opt, args.cache),
                         args.grad_scale, native_mult, clipped=mult is not None):
            return True
        if not plan.stale:
            return False
    return False


#: Device types whose tensors step through torch's fused kernels on the merged groups (when
#: the groups leave ``fused``/``foreach`` unset).
TORCH_FUSED_DEVICES: tuple[str, ...] = ("cuda", "xpu")


def torch_fused_ok(groups: list[dict]) -> bool:
    """True when every group can run torch's fused kernel instead of its default path."""
    for g in groups:
        if g.get("fused") is not None or g.get("foreach") is not None:
            return False  # the user chose a path: respect it
        if g.get("differentiable") or g.get("capturable"):
            return False
        for p in g["params"]:
            if p.device.type not in TORCH_FUSED_DEVICES or p.dtype not in K.DTYPE_CODES:
                return False
    return True


def torch_fused_tier(opt: Any, args: StepArgs) -> bool:
    """torch's fused kernel per merged group; it consumes grad_scale/found_inf itself. A
    gradient multiplier (clip coefficient) is folded into the scale the kernel divides every
    gradient by, computed on the device (no host sync)."""
    groups = opt.param_groups
    if not torch_fused_ok(groups) or not opt.algorithm.takes_fused():
        return False
    mult = mult_value(opt, args.grad_mult)
    grad_scale = args.grad_scale
    if mult is not None:
        device = next(p.device for g in groups for p in g["params"])
        m = mult if isinstance(mult, Tensor) else torch.tensor(float(mult))
        scale = grad_scale if grad_scale is not None else torch.ones((), dtype=torch.float32)
        grad_scale = scale.to(device, torch.float32) / m.to(device, torch.float32)
    for g in groups:
        for p in g["params"]:
            st = opt.state.get(p)
            step = st.get("step") if st else None
            # the fused kernels keep the step counter on the parameter's device, in fp32
            if isinstance(step, Tensor) and (step.device != p.device or step.dtype != torch.float32):
                st["step"] = step.to(device=p.device, dtype=torch.float32)
    for g in groups:
        opt.algorithm.torch_group_step(opt, g, True, grad_scale, args.found_inf)
    # what the default path's in-place ops count, which torch's fused kernels do not count on
    # every release: the parameters stepped, and the gradients where a clip changed them
    stepped = [p for g in groups for p in g["params"] if p.grad is not None]
    K.bump_stepped(stepped, [p.grad for p in stepped] if mult is not None else None)
    return True


def torch_tier(opt: Any, args: StepArgs) -> bool:
    """torch's functional API with each group's own settings (foreach, fused, differentiable,
    capturable as the user set them); loss scale and clip coefficient applied to the gradients
    first, as GradScaler's ``unscale_`` and ``clip_grad_norm_`` would."""
    mult = mult_value(opt, args.grad_mult)
    if args.skip:
        return True
    grad_scale = args.grad_scale
    if mult is not None or grad_scale is not None:
        with torch.no_grad():
            if mult is not None:
                K.multiply_grads(opt.param_groups, mult)
            if grad_scale is not None:
                for g in opt.param_groups:
                    for p in g["params"]:
                        if p.grad is not None:
                            p.grad.div_(grad_scale.to(p.grad.device))
    for g in opt.param_groups:
        opt.algorithm.torch_group_step(opt, g, False, None, None)
    return True


#: The tiers in the order the selector tries them.
TIERS: tuple[tuple[str, Callable[[Any, StepArgs], bool]], ...] = (
    ("flat", flat_tier), ("native", native_tier), ("torch-fused", torch_fused_tier), ("torch", torch_tier))


def take_step(opt: Any, args: StepArgs) -> str:
    """Run the first tier that takes the step; its name."""
    for name, tier in TIERS:
        if tier(opt, args):
            return name
    raise AssertionError("torch_tier takes every step")  # pragma: no cover
