"""Flat-buffer mode: parameters, gradients and optimizer state in contiguous buffers.

Each param group is split by dtype into segments; every segment owns one
contiguous buffer for its parameters, one for their gradients and one per state
tensor, and each parameter, its ``.grad`` and its ``state`` entries become views
into them. A step is then one native call over a handful of segments, with no
per-tensor Python work at all.

The contract (see docs/optimizers.md): gradients should accumulate into the
views. ``optimizer.zero_grad()`` zeroes the buffers instead of freeing them
(like ``set_to_none=False``). A ``.grad`` that is not its view (set by hand, or
made anew after ``model.zero_grad()``) is copied in before the step.

The buffers are a cache, checked at every step (``holds``) at a cost that does not
grow with the number of tensors while gradients flow into the views: the groups'
parameter lists (a native pass over the lists) and the number of state entries. When
a gradient buffer saw no accumulation, everything is checked (parameters' and state
tensors' storage, every state entry). A parameter list or state that changed (a
parameter replaced, state cleared or replaced, ``load_state_dict``) makes the
optimizer lay the buffers out again; a parameter that no longer lives in its buffer
(``model.to(...)``, ``p.data = ...``) is an error.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from itertools import repeat
from typing import Any

import numpy as np
import torch
from torch import Tensor

from ._core import _C
from ._kernels import (
    DTYPE_CODES,
    NO_STATE,
    STEP_FLAGS,
    Algorithm,
    bump_versions,
    param_addresses,
    params_unchanged,
    state_snapshot,
    tensor_layout,
)


@dataclass
class Segment:
    """Parameters of one group and one dtype, laid out back to back."""

    group: int
    params: list[Tensor]
    offsets: list[int]
    param_buf: Tensor
    grad_buf: Tensor
    grad_views: list[Tensor]
    state_bufs: dict[str, Tensor] = field(default_factory=dict)
    step: Tensor | None = None
    first: bool = False  # SGD: momentum buffers start as a copy of the gradient
    seen_version: int = -1  # the gradient buffer's version after the last step or zero_grad


def _views(buf: Tensor, params: list[Tensor], offsets: list[int]) -> list[Tensor]:
    return [buf[o:o + p.numel()].view_as(p) for p, o in zip(params, offsets)]


class FlatBuffers:
    """The segments of one optimizer's groups and the pointer table the kernel reads."""

    def __init__(self, groups: list[dict], state: dict, algorithm: Algorithm, key: Any) -> None:
        self.key = key
        self.algorithm = algorithm
        self.segments: list[Segment] = []
        layout = []
        for gi, group in enumerate(groups):
            by_dtype: dict[torch.dtype, list[Tensor]] = {}
            for p in group["params"]:
                by_dtype.setdefault(p.dtype, []).append(p)
            layout.extend((gi, group, params) for params in by_dtype.values())
        for gi, group, params in layout:  # every refusal before any parameter is moved
            self._check_state(state, algorithm, gi, group, params)
        for gi, group, params in layout:
            self.segments.append(self._segment(state, algorithm, gi, group, params))
        self.ptrs = np.zeros((len(self.segments), len(algorithm.columns)), dtype=np.uint64)
        step_column = algorithm.step_column
        for r, seg in enumerate(self.segments):
            self.ptrs[r, algorithm.column("param")] = seg.param_buf.data_ptr()
            self.ptrs[r, algorithm.column("grad")] = seg.grad_buf.data_ptr()
            for key, buf in seg.state_bufs.items():
                self.ptrs[r, algorithm.column(key)] = buf.data_ptr()
            if seg.step is not None and step_column is not None:
                self.ptrs[r, step_column] = seg.step.data_ptr()
        self.numels = np.array([s.param_buf.numel() for s in self.segments], dtype=np.int64)
        self.dtypes = np.array([DTYPE_CODES[s.param_buf.dtype] for s in self.segments], dtype=np.int32)
        self.group_of = np.array([s.group for s in self.segments], dtype=np.int64)
        # what the layout looked like, for ``holds`` (the objects kept alive: equal addresses
        # in the native snapshots are the same objects)
        self.params: list[Tensor] = [p for g in groups for p in g["params"]]
        self.param_addresses = param_addresses(groups)
        self.state_len = len(state)
        self.state_addresses, self.held = state_snapshot(state)
        self.views = [t for st in map(state.get, self.params, repeat(NO_STATE)) for t in st.values()
                      if isinstance(t, Tensor)]
        self.expected = tensor_layout([*self.params, *self.views])
        self.mark()

    @staticmethod
    def _check_state(opt_state: dict, algorithm: Algorithm, gi: int, group: dict,
                     params: list[Tensor]) -> None:
        """Refuse state one segment cannot hold: some parameters with state and others without,
        step counts that differ (a segment keeps one), a state tensor not shaped and typed as
        its parameter, or a step counter that is not one float32 number."""
        states = [opt_state.get(p, {}) for p in params]
        for p, st in zip(params, states):
            for key in algorithm.buffers(group):
                t = st.get(key)
                if isinstance(t, Tensor) and (t.shape != p.shape or t.dtype != p.dtype):
                    raise ValueError(
                        f"param group {gi}: state {key!r} of a parameter of shape {tuple(p.shape)} "
                        f"({p.dtype}) is {tuple(t.shape)} ({t.dtype}); flat buffers hold state shaped "
                        "and typed as its parameter")
            step = st.get("step")
            if algorithm.step_column is not None and isinstance(step, Tensor) and (
                    step.numel() != 1 or step.dtype != torch.float32):
                raise ValueError(f"param group {gi}: a step counter of {step.numel()} elements of "
                                 f"{step.dtype}; flat buffers keep one float32 count per group")
        have = [bool(s) for s in states]
        if any(have) and not all(have):
            raise ValueError(
                f"param group {gi}: some parameters have optimizer state and others not (one new to "
                "the group, or one that never had a gradient), and flat buffers keep one step count "
                "per group; step in the normal mode (optimizer.use_flat_buffers() again afterwards), "
                "or reset the state, first")
        if algorithm.step_column is not None:
            steps = {float(s["step"]) for s in states if "step" in s}
            if len(steps) > 1:
                raise ValueError(f"param group {gi}: step counts differ ({sorted(steps)}); "
                                 "flat buffers need one count per group and dtype")

    @staticmethod
    def _segment(opt_state: dict, algorithm: Algorithm, gi: int, group: dict,
                 params: list[Tensor]) -> Segment:
        offsets, total = [], 0
        for p in params:
            offsets.append(total)
            total += p.numel()
        dtype = params[0].dtype
        param_buf = torch.empty(total, dtype=dtype)
        grad_buf = torch.zeros(total, dtype=dtype)
        views = _views(param_buf, params, offsets)
        grad_views = _views(grad_buf, params, offsets)
        with torch.no_grad():
            for p, v, gv in zip(params, views, grad_views):
                v.copy_(p)
                if p.grad is not None:
                    gv.copy_(p.grad)
                p.data = v
                p.grad = gv
        seg = Segment(gi, params, offsets, param_buf, grad_buf, grad_views)
        states = [opt_state.get(p, {}) for p in params]
        have = [bool(s) for s in states]
        for key in algorithm.buffers(group):
            buf = torch.zeros(total, dtype=dtype)
            bviews = _views(buf, params, offsets)
            for p, st, bv in zip(params, states, bviews):
                if st.get(key) is not None:
                    bv.copy_(st[key])
                opt_state[p][key] = bv
            seg.state_bufs[key] = buf
        if algorithm.step_column is not None:
            steps = {float(s["step"]) for s in states if "step" in s}
            seg.step = torch.tensor(steps.pop() if steps else 0.0, dtype=torch.float32)
            for p in params:
                opt_state[p]["step"] = seg.step  # one shared counter
        seg.first = algorithm.flat_first(group, all(have))
        return seg

    def holds(self, groups: list[dict], state: dict) -> bool:
        """Whether ``groups`` and ``state`` are still what the buffers were laid out from; raises
        RuntimeError when a parameter no longer lives in its buffer.

        Every step: the groups' parameter lists (one native pass over the lists, no tensor
        touched) and the number of state entries. When a gradient buffer saw no accumulation
        since the last step or ``zero_grad()`` (the gradients went elsewhere: set by hand, made
        anew, the model moved), everything is checked: every parameter's storage, every state
        dict and entry (native pass) and every state tensor's storage."""
        if not params_unchanged(groups, self.param_addresses) or len(state) != self.state_len:
            return False
        if all(seg.grad_buf._version != seg.seen_version for seg in self.segments):
            return True  # every buffer accumulated gradients: the views are in use
        moved = np.flatnonzero((tensor_layout([*self.params, *self.views]) != self.expected).any(axis=1))
        if len(moved) and moved[0] < len(self.params):
            i = int(moved[0])
            p = self.params[i]
            raise RuntimeError(
                f"flat buffers: parameter {i} ({tuple(p.shape)}, {p.dtype}, {p.device}) no longer lives in "
                "its buffer as laid out: the model was moved or its parameters reassigned, resized or "
                "restrided (model.to(), p.data = ..., p.t_()) after use_flat_buffers(). Call "
                "optimizer.use_flat_buffers() again to lay the buffers out "
                "over the parameters as they are now (state is copied over), or build a new optimizer")
        # a state dict, entry or tensor storage replaced, or a state tensor resized, restrided or
        # retyped in place: lay the buffers out again from the state (which refuses what it cannot
        # hold)
        return not len(moved) and _C.state_unchanged(state, self.state_addresses)

    def step(self, groups: list[dict], grad_scale: float, grad_mult: float = 1.0,
             clipped: bool = False) -> None:
        """One kernel call over every segment, with the groups' current hyperparameters
        (``clipped``: ``grad_mult`` stands for torch's in-place clip)."""
        self.sync_grads()
        rows = [self.algorithm.hyper_row(g) for g in groups]
        group_of = self.group_of.tolist()
        hyper = np.array([rows[g][0] for g in group_of], dtype=np.float64)
        hyper = hyper.reshape(-1, len(self.algorithm.hypers))
        flags = np.array([rows[g][1] | (STEP_FLAGS["first_step"] if seg.first else 0)
                          for g, seg in zip(group_of, self.segments)], dtype=np.int32)
        # every parameter changes in place, counted as torch's in-place ops count it; so do the
        # gradients under a loss scale, counted where torch's in-place clip would have counted it
        # (each is a view of its buffer and shares its version counter)
        bump_versions(self.params)
        if grad_scale and clipped:
            bump_versions([seg.grad_buf for seg in self.segments])
        self.algorithm.run(self.ptrs, self.numels, self.dtypes, flags, hyper, grad_scale, grad_mult)
        for seg in self.segments:
            seg.first = False
        self.mark()

    def mark(self) -> None:
        """Remember the gradient buffers' versions (after a step or zero_grad)."""
        for seg in self.segments:
            seg.seen_version = seg.grad_buf._version

    def zero_grad(self) -> None:
        """Zero every gradient buffer (gradients stay attached as views)."""
        for seg in self.segments:
            seg.grad_buf.zero_()
        self.mark()

    def sync_grads(self) -> None:
        """Make every ``.grad`` its view where a buffer saw no accumulation since the last step
        or ``zero_grad()``: a gradient set by hand or made anew is copied in, a missing one
        zeroed."""
        for seg in self.segments:
            if seg.grad_buf._version != seg.seen_version:
                continue
            with torch.no_grad():
                for p, gv in zip(seg.params, seg.grad_views):
                    g = p.grad
                    if g is gv:
                        continue
                    if g is None:
                        gv.zero_()
                    else:
                        gv.copy_(g)
                    p.grad = gv

    def params_moved(self) -> bool:
        """True when some parameter no longer lives in its buffer (e.g. after ``model.to()``)."""
        return any(p.data_ptr() != seg.param_buf.data_ptr() + o * p.element_size()
                   for seg in self.segments for p, o in zip(seg.params, seg.offsets))
