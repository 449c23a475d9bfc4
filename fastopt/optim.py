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
"""

from __future__ import annotations

import operator
from collections.abc import Callable
from typing import Any

import numpy as np
import torch
from torch import Tensor
from torch.optim.optimizer import _get_scalar_dtype

from . import _core

__all__ = ["SGD", "Adam", "AdamW"]

# csrc/dtype.h DType and csrc/step_cpu.h StepFlag
DTYPE_CODES = {torch.float32: 0, torch.float64: 1, torch.bfloat16: 2, torch.float16: 3}
MAXIMIZE, AMSGRAD, DECOUPLED_WD, NESTEROV, FIRST_STEP, STEP_F64 = (1 << i for i in range(6))


_GRAD = operator.attrgetter("grad")
_PLAIN_TYPES = (torch.nn.Parameter, torch.Tensor)


def _local(t: Tensor) -> Tensor:
    """The local shard of a DTensor (FSDP2 parameters, their grads and state); else ``t``."""
    if type(t) in _PLAIN_TYPES:
        return t
    try:
        from torch.distributed.tensor import DTensor
    except ImportError:  # torch built without distributed
        return t
    return t._local_tensor if isinstance(t, DTensor) else t


def _as_uint64(values: list[int]) -> np.ndarray:
    return np.fromiter(values, dtype=np.uint64, count=len(values))


class _Fallback(Exception):
    """Raised while planning when a parameter's state needs torch's own path."""


class _Plan:
    """What stays fixed between steps for one optimizer: tensor order, groups, state pointers."""

    def __init__(self, opt: torch.optim.Optimizer, n_ptrs: int) -> None:
        self.key = opt._fastopt_key()
        self.native = True
        self.params: list[Tensor] = [p for g in opt.param_groups for p in g["params"]]
        # FSDP2: sharded parameters step on their local shards
        self.sharded = any(type(p) not in _PLAIN_TYPES for p in self.params)
        local = [_local(p) for p in self.params] if self.sharded else self.params
        sizes = [len(g["params"]) for g in opt.param_groups]
        self.group_of = np.repeat(np.arange(len(sizes), dtype=np.int64), sizes)
        self.numels = np.fromiter((p.numel() for p in local), dtype=np.int64, count=len(self.params))
        self.dtypes = np.fromiter((DTYPE_CODES.get(p.dtype, -1) for p in local), dtype=np.int32,
                                  count=len(self.params))
        self.ptrs = np.zeros((len(self.params), n_ptrs), dtype=np.uint64)
        self.param_ptrs = [p.data_ptr() for p in local]
        self.ptrs[:, 0] = _as_uint64(self.param_ptrs)
        self.ready = np.zeros(len(self.params), dtype=bool)  # state pointers filled in
        self.keep: list[Any] = [None] * len(self.params)      # state tensors kept alive


class _NativeStep:
    """Shared step driver; subclasses define the state layout and the kernel call."""

    _step_supports_amp_scaling = True
    _n_ptrs: int
    _n_hyper: int

    param_groups: list[dict]
    state: dict

    # -- hooks for subclasses ------------------------------------------------------------
    def _group_hyper(self, group: dict) -> tuple[list[float], int]:
        raise NotImplementedError

    def _init_state(self, p: Tensor, group: dict, plan: _Plan, i: int) -> None:
        raise NotImplementedError

    @staticmethod
    def _kernel(*args: Any) -> None:
        raise NotImplementedError

    def _call_kernel(self, plan: _Plan, rows: np.ndarray, ptrs: np.ndarray, hyper: np.ndarray,
                     flags: np.ndarray, grad_scale: float) -> None:
        self._kernel(ptrs, plan.numels[rows], plan.dtypes[rows], flags, hyper, grad_scale)
        plan.ready[rows] = True  # state exists from now on (SGD's first momentum step done)

    def _sparse_ok(self) -> bool:
        return False

    _step_column: int | None = None

    def _state_columns(self, group: dict) -> list[tuple[str, int]]:
        """State tensors (key, pointer-table column) a group's parameters carry."""
        raise NotImplementedError

    def _flat_first(self, group: dict, had_state: bool) -> bool:
        """Flat mode: whether the first step initialises state from the gradient (SGD)."""
        return False

    # -- eligibility ---------------------------------------------------------------------
    def _structure(self, group: dict) -> Any:
        """Group settings that change which state tensors exist (a change re-plans)."""
        return None

    def _fastopt_key(self) -> tuple:
        groups = tuple((id(g["params"]), len(g["params"]), self._structure(g)) for g in self.param_groups)
        return (*groups, id(self.state))

    def _group_native(self, group: dict) -> bool:
        if _core._C is None or group.get("differentiable") or group.get("capturable"):
            return False
        if any(isinstance(v, Tensor) for k, v in group.items() if k != "params") or any(
                isinstance(b, Tensor) for b in group.get("betas", ())):
            return False
        for p in map(_local, group["params"]):
            if p.device.type != "cpu" or p.dtype not in DTYPE_CODES or not p.is_contiguous():
                return False
        return True

    def _plan(self) -> _Plan | None:
        plan = getattr(self, "_fastopt_plan", None)
        if plan is None or plan.key != self._fastopt_key():
            plan = _Plan(self, self._n_ptrs)  # type: ignore[arg-type]
            ids = [id(p) for p in plan.params]
            plan.native = len(set(ids)) == len(ids) and all(self._group_native(g) for g in self.param_groups)
            self._fastopt_plan = plan
        return plan if plan.native else None

    def _invalidate(self) -> None:
        self._fastopt_plan = None

    # -- the step ------------------------------------------------------------------------
    def _native_step(self, grad_scale: Tensor | None) -> bool:
        """Step every group natively; False (nothing done) when torch's path must run."""
        plan = self._plan()
        if plan is None:
            return False
        params = plan.params
        grads = list(map(_GRAD, params))
        # (not `None in grads`: that would call Tensor.__eq__ on every gradient)
        if any(g is None for g in grads):  # parameters without a gradient are skipped, as torch does
            rows_list = [i for i, g in enumerate(grads) if g is not None]
            if not rows_list:
                return True
            sel = [grads[i] for i in rows_list]
            sel_params = [params[i] for i in rows_list]
        else:
            rows_list, sel, sel_params = None, grads, params
        if plan.sharded:
            sel, sel_params = [_local(g) for g in sel], [_local(p) for p in sel_params]
        try:
            contiguous = all(map(Tensor.is_contiguous, sel))
        except RuntimeError:  # sparse layouts have no strides
            contiguous = False
        if not contiguous:
            if any(g.layout is not torch.strided for g in sel):
                if self._sparse_ok():
                    return False
                raise RuntimeError(self._sparse_error)
            return False
        rows = np.arange(len(params)) if rows_list is None else np.asarray(rows_list, dtype=np.int64)
        # Parameters whose storage moved (p.data = ...) are re-checked before use.
        param_ptrs = list(map(Tensor.data_ptr, sel_params))
        cached = plan.param_ptrs if rows_list is None else [plan.param_ptrs[i] for i in rows_list]
        if param_ptrs != cached and not self._params_moved(plan, rows.tolist(), param_ptrs):
            return False
        todo = rows[~plan.ready[rows]]
        first = None
        if len(todo):
            first = np.zeros(len(params), dtype=bool)
            groups = self.param_groups
            try:
                for i in todo.tolist():
                    first[i] = self._init_state(params[i], groups[int(plan.group_of[i])], plan, i)
            except _Fallback:
                plan.native = False  # until the groups change: torch's path
                return False
        ptrs = plan.ptrs[rows] if rows_list is not None else plan.ptrs.copy()
        ptrs[:, 1] = np.fromiter(map(Tensor.data_ptr, sel), dtype=np.uint64, count=len(sel))
        group_hyper, group_flags = self._hyper_table()
        gi = plan.group_of[rows]
        flags = group_flags[gi]
        if first is not None:
            flags = flags | np.where(first[rows], FIRST_STEP, 0).astype(np.int32)
        scale = 0.0 if grad_scale is None else float(grad_scale)
        self._call_kernel(plan, rows, ptrs, group_hyper[gi], flags, scale)
        return True

    def _params_moved(self, plan: _Plan, rows: list[int], ptrs: list[int]) -> bool:
        """Accept parameters whose storage moved if they are still steppable; else re-plan."""
        for i, ptr in zip(rows, ptrs):
            if ptr != plan.param_ptrs[i]:
                p = _local(plan.params[i])
                if (p.numel() != plan.numels[i] or DTYPE_CODES.get(p.dtype) != plan.dtypes[i]
                        or not p.is_contiguous() or p.device.type != "cpu"):
                    self._invalidate()
                    return False
                plan.param_ptrs[i] = ptr
                plan.ptrs[i, 0] = ptr
        return True

    def _hyper_table(self) -> tuple[np.ndarray, np.ndarray]:
        """Per-group hyperparameters and flags as arrays, rebuilt only when a value changed."""
        per_group = [self._group_hyper(g) for g in self.param_groups]
        key = [(tuple(h), f) for h, f in per_group]
        cache = getattr(self, "_fastopt_hyper", None)
        if cache is None or cache[0] != key:
            hyper = np.array([h for h, _ in per_group], dtype=np.float64).reshape(-1, self._n_hyper)
            flags = np.array([f for _, f in per_group], dtype=np.int32)
            cache = (key, hyper, flags)
            self._fastopt_hyper = cache
        return cache[1], cache[2]

    #: Device types whose tensors step through torch's fused kernels on the merged groups
    #: (when the groups leave ``fused``/``foreach`` unset).
    _torch_fused_devices: tuple[str, ...] = ("cuda", "xpu")

    def _torch_fused_ok(self) -> bool:
        """True when every group can run torch's fused kernel instead of its default path."""
        for g in self.param_groups:
            if g.get("fused") is not None or g.get("foreach") is not None:
                return False  # the user chose a path: respect it
            if g.get("differentiable") or g.get("capturable"):
                return False
            for p in g["params"]:
                if p.device.type not in self._torch_fused_devices or p.dtype not in DTYPE_CODES:
                    return False
        return True

    def _torch_fused_step(self, torch_step: Callable[[], Any]) -> None:
        """torch's fused kernel per merged group; it consumes grad_scale/found_inf itself."""
        groups = self.param_groups
        for g in groups:
            for p in g["params"]:
                state = self.state.get(p)
                step = state.get("step") if state else None
                # the fused kernels keep the step counter on the parameter's device, in fp32
                if isinstance(step, Tensor) and (step.device != p.device or step.dtype != torch.float32):
                    state["step"] = step.to(device=p.device, dtype=torch.float32)
            g["fused"] = True
        try:
            torch_step()
        finally:
            for g in groups:
                g["fused"] = None

    def _fastopt_step(self, torch_step: Callable[[], Any], closure: Callable[[], Any] | None) -> Any:
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        grad_scale = getattr(self, "grad_scale", None)
        found_inf = getattr(self, "found_inf", None)
        if found_inf is not None and bool(found_inf.item()):
            return loss  # inf/NaN gradients: the step is skipped, state included
        with torch.no_grad():
            if self._flat_step(grad_scale) or self._native_step(grad_scale):
                return loss
        if self._torch_fused_ok():
            self._torch_fused_step(torch_step)
            return loss
        with torch.no_grad():
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
        return loss

    # -- flat-buffer mode ------------------------------------------------------------------
    def use_flat_buffers(self) -> None:
        """Move parameters, gradients and state into contiguous per-group buffers (opt-in).

        Afterwards a step is one native call with no per-tensor Python work;
        ``zero_grad()`` zeroes the gradient buffers instead of freeing gradients.
        See docs/flat_buffers.md for the contract.
        """
        from ._flat import FlatBuffers

        plan = self._plan()
        if plan is not None and plan.sharded:
            raise ValueError("flat buffers do not take sharded (DTensor / FSDP2) parameters; "
                             "the default mode steps their local shards natively")
        if plan is None:
            raise ValueError("flat buffers need every parameter on the CPU, contiguous, in a supported "
                             "dtype (float32/float64/bfloat16/float16), in exactly one group, with "
                             "plain (non-tensor) hyperparameters")
        with torch.no_grad():
            self._fastopt_flat = FlatBuffers(self)
        self._invalidate()

    @property
    def flat_buffers(self) -> Any:
        """The flat buffers in use, or None."""
        return getattr(self, "_fastopt_flat", None)

    def _flat_step(self, grad_scale: Tensor | None) -> bool:
        flat = getattr(self, "_fastopt_flat", None)
        if flat is None:
            return False
        if flat.key != self._fastopt_key():  # groups changed: lay the buffers out again
            self.use_flat_buffers()
            flat = self._fastopt_flat
        flat.sync_grads()
        groups = self.param_groups
        per_group = [self._group_hyper(g) for g in groups]
        hyper = np.array([per_group[g][0] for g in flat.group_of.tolist()], dtype=np.float64)
        flags = np.array([per_group[g][1] | (FIRST_STEP if seg.first else 0)
                          for g, seg in zip(flat.group_of.tolist(), flat.segments)], dtype=np.int32)
        scale = 0.0 if grad_scale is None else float(grad_scale)
        self._kernel(flat.ptrs, flat.numels, flat.dtypes, flags, hyper.reshape(-1, self._n_hyper), scale)
        for seg in flat.segments:
            seg.first = False
        flat.mark()
        return True

    def zero_grad(self, set_to_none: bool = True) -> None:
        """As torch's; in flat-buffer mode the gradient buffers are zeroed instead of freed."""
        flat = getattr(self, "_fastopt_flat", None)
        if flat is None:
            super().zero_grad(set_to_none=set_to_none)  # type: ignore[misc]
        else:
            flat.zero_grad()

    def state_dict(self) -> dict:
        """torch's state dict; in flat-buffer mode each parameter gets its own ``step`` tensor
        (they share one counter internally, which torch's own optimizers must not see)."""
        sd = super().state_dict()  # type: ignore[misc]
        if getattr(self, "_fastopt_flat", None) is not None:
            sd["state"] = {k: ({**v, "step": v["step"].clone()} if "step" in v else v)
                           for k, v in sd["state"].items()}
        return sd

    def load_state_dict(self, state_dict: dict) -> None:
        """Load a state dict (torch's format); cached pointers and flat buffers are rebuilt.

        A state dict saved from the mmengine/mmcv-built optimizer of the same model and
        config (one group per parameter, or a custom constructor's groups) is recognised by
        its group sizes and mapped by parameter order.
        """
        from .checkpoint import load_per_param_state_dict, reference_group_sizes

        sizes = [len(g["params"]) for g in state_dict.get("param_groups", [])]
        if sizes != [len(g["params"]) for g in self.param_groups] and sizes == reference_group_sizes(self):
            load_per_param_state_dict(self, state_dict)  # comes back here in merged layout
            return
        flat = getattr(self, "_fastopt_flat", None) is not None
        self._fastopt_flat = None
        self._invalidate()
        super().load_state_dict(state_dict)  # type: ignore[misc]
        self._invalidate()
        if flat:
            self.use_flat_buffers()

    def add_param_group(self, param_group: dict) -> None:
        """Add a param group (as torch); the native plan (and flat buffers) follow on the next step."""
        super().add_param_group(param_group)  # type: ignore[misc]
        self._invalidate()

    def __getstate__(self) -> dict:
        state = super().__getstate__()  # type: ignore[misc]
        state.pop("_fastopt_plan", None)
        state.pop("_fastopt_flat", None)
        state.pop("_fastopt_hyper", None)
        return state


class SGD(_NativeStep, torch.optim.SGD):
    """``torch.optim.SGD`` with a native multi-tensor CPU step (momentum, nesterov, dampening,
    weight decay, maximize)."""

    _n_ptrs = 3
    _n_hyper = 4

    def _group_hyper(self, group: dict) -> tuple[list[float], int]:
        flags = (MAXIMIZE if group["maximize"] else 0) | (NESTEROV if group["nesterov"] else 0)
        return [group["lr"], group["momentum"], group["dampening"], group["weight_decay"]], flags

    def _sparse_ok(self) -> bool:
        return True

    def _structure(self, group: dict) -> Any:
        return group["momentum"] != 0

    def _init_state(self, p: Tensor, group: dict, plan: _Plan, i: int) -> bool:
        first = False
        if group["momentum"] != 0:
            state = self.state[p]
            buf = state.get("momentum_buffer")
            if buf is None or buf.shape != p.shape or buf.dtype != p.dtype or not _local(buf).is_contiguous():
                if buf is not None:  # an unusual buffer: let torch's path handle this parameter
                    raise _Fallback
                buf = torch.empty_like(p, memory_format=torch.contiguous_format)
                state["momentum_buffer"] = buf
                first = True
            plan.ptrs[i, 2] = _local(buf).data_ptr()
            plan.keep[i] = buf
            plan.ready[i] = not first
        else:
            plan.ready[i] = True
        return first

    def _state_columns(self, group: dict) -> list[tuple[str, int]]:
        return [("momentum_buffer", 2)] if group["momentum"] != 0 else []

    def _flat_first(self, group: dict, had_state: bool) -> bool:
        return group["momentum"] != 0 and not had_state

    @staticmethod
    def _kernel(*args: Any) -> None:
        _core._C.sgd_step(*args)

    @torch.no_grad()
    def step(self, closure: Callable[[], Any] | None = None) -> Any:
        """One optimization step (native on CPU, torch's otherwise)."""
        return self._fastopt_step(lambda: torch.optim.SGD.step(self), closure)


class Adam(_NativeStep, torch.optim.Adam):
    """``torch.optim.Adam`` with a native multi-tensor CPU step (amsgrad, maximize, L2 or
    decoupled weight decay)."""

    _n_ptrs = 6
    _n_hyper = 5
    _sparse_error = "Adam does not support sparse gradients, please consider SparseAdam instead"

    def _structure(self, group: dict) -> Any:
        return bool(group["amsgrad"])

    def _group_hyper(self, group: dict) -> tuple[list[float], int]:
        beta1, beta2 = group["betas"]
        flags = ((MAXIMIZE if group["maximize"] else 0) | (AMSGRAD if group["amsgrad"] else 0)
                 | (DECOUPLED_WD if group.get("decoupled_weight_decay") else 0))
        return [group["lr"], beta1, beta2, group["eps"], group["weight_decay"]], flags

    def _init_state(self, p: Tensor, group: dict, plan: _Plan, i: int) -> bool:
        state = self.state[p]
        if len(state) == 0:
            state["step"] = torch.tensor(0.0, dtype=_get_scalar_dtype())
            state["exp_avg"] = torch.zeros_like(p, memory_format=torch.preserve_format)
            state["exp_avg_sq"] = torch.zeros_like(p, memory_format=torch.preserve_format)
            if group["amsgrad"]:
                state["max_exp_avg_sq"] = torch.zeros_like(p, memory_format=torch.preserve_format)
        keys = ["exp_avg", "exp_avg_sq"] + (["max_exp_avg_sq"] if group["amsgrad"] else [])
        tensors = [state[k] for k in keys]
        step = state["step"]
        if (not isinstance(step, Tensor) or step.device.type != "cpu" or step.numel() != 1
                or step.dtype not in (torch.float32,)
                or any(t.shape != p.shape or t.dtype != p.dtype or not _local(t).is_contiguous()
                       for t in tensors)):
            raise _Fallback
        plan.ptrs[i, 2] = _local(tensors[0]).data_ptr()
        plan.ptrs[i, 3] = _local(tensors[1]).data_ptr()
        plan.ptrs[i, 4] = _local(tensors[2]).data_ptr() if group["amsgrad"] else 0
        plan.ptrs[i, 5] = step.data_ptr()
        plan.keep[i] = (tensors, step)
        plan.ready[i] = True
        return False

    _step_column = 5

    def _state_columns(self, group: dict) -> list[tuple[str, int]]:
        cols = [("exp_avg", 2), ("exp_avg_sq", 3)]
        return [*cols, ("max_exp_avg_sq", 4)] if group["amsgrad"] else cols

    @staticmethod
    def _kernel(*args: Any) -> None:
        _core._C.adam_step(*args)

    @torch.no_grad()
    def step(self, closure: Callable[[], Any] | None = None) -> Any:
        """One optimization step (native on CPU, torch's otherwise)."""
        return self._fastopt_step(lambda: torch.optim.Adam.step(self), closure)


class AdamW(Adam, torch.optim.AdamW):
    """``torch.optim.AdamW`` with a native multi-tensor CPU step."""
