"""The native tier below fastopt's optimizers, with each algorithm described by data.

An ``Algorithm`` says what one optimizer keeps in ``state`` and hands the native kernel: the
pointer-table columns and hyperparameter columns (both named by the extension, ``_C.*_COLUMNS``
and ``_C.*_HYPERS``), a group's hyperparameter row and flags, how the first step creates
state, the kernel entry point, and how torch's functional API steps a group (the torch tiers).

The native tier (``native_step``) steps every parameter of every group in one call into
``_C``, through a ``Plan`` of the pointers that stay fixed between steps. The plan is a cache
and is checked at every step against what ``param_groups`` and ``state`` hold then: the
parameters (by identity, and their storage), each parameter's state dict and the tensors in
it (by identity, and their storage). What changed is prepared again; nothing is trusted across
a change the plan did not see. ``fastopt._tiers`` picks the tier per step; ``_flat.py``
(flat-buffer mode) reads the same ``Algorithm``.
"""

from __future__ import annotations

import contextlib
import ctypes
import functools
import gc
import glob
import importlib
import math
import operator
import os
import threading
from collections.abc import Callable, Iterator, Sized
from dataclasses import dataclass
from itertools import chain, groupby, repeat
from typing import Any

import numpy as np
import torch
from torch import Tensor

from ._core import _C
from ._torch_compat import (
    DTensor,
    functional_kwargs,
    functional_parameters,
    increment_versions,
    scalar_dtype,
    sgd_keeps_unused_buffers,
    torch_function_mode_on,
)


def _exported(name: str, fallback: Any) -> Any:
    """An interface constant of the extension (``fallback`` without it: no native tier then)."""
    return getattr(_C, name) if _C is not None else fallback


#: torch dtype -> the kernels' storage-type code (csrc/dtype.h)
DTYPE_CODES: dict[torch.dtype, int] = {getattr(torch, k): v for k, v in _exported("DTYPE_CODES", {}).items()}
#: per-tensor flag name -> bit (csrc/step_cpu.h StepFlag)
STEP_FLAGS: dict[str, int] = _exported("STEP_FLAGS", {})

GRAD = operator.attrgetter("grad")
#: code -> torch dtype (the inverse of DTYPE_CODES)
DTYPE_OBJECTS: tuple = tuple({c: d for d, c in DTYPE_CODES.items()}.get(c) for c in range(len(DTYPE_CODES)))
#: The tensor types the kernels take as they are (anything else, a DTensor, steps its local shard)
PLAIN_TYPES: tuple[type, ...] = (torch.nn.Parameter, torch.Tensor)


def _address_reader() -> tuple[int, tuple[type, ...]]:
    """torch's C-level data-pointer reader (the one torch's compiled CPU kernels read their
    arguments with), and the exact tensor types it reads as ``Tensor.data_ptr`` does: (0, ())
    when this torch has none, ``FASTOPT_DIRECT_READS=0``, or it disagrees on a probe tensor."""
    guards = getattr(getattr(torch._C, "_dynamo", None), "guards", None)
    reader = getattr(guards, "_torchinductor_pyobject_tensor_data_ptr", None)
    if _C is None or type(reader) is not int or os.environ.get("FASTOPT_DIRECT_READS") == "0":
        return 0, ()
    base = torch.arange(8, dtype=torch.float32)
    moved = torch.zeros(3)
    moved.data = base[1:4]
    probes = [base, base[3:], torch.zeros((), dtype=torch.float64), torch.zeros(5, dtype=torch.bfloat16),
              base.view(2, 4).t(), moved]
    try:
        if any(_C.read_address(reader, t) != t.data_ptr() for t in probes):
            return 0, ()
    except RuntimeError:
        return 0, ()
    param = torch.nn.Parameter(base[2:5])
    try:
        takes_params = _C.read_address(reader, param) == param.data_ptr()
    except RuntimeError:  # (torch releases whose reader takes exact tensors only)
        takes_params = False
    return reader, (torch.Tensor, torch.nn.Parameter) if takes_params else (torch.Tensor,)


def getset(name: str) -> Any:
    """torch.Tensor's getset descriptor of ``name`` (None when it is something else or
    ``FASTOPT_DIRECT_READS=0``): gather_rows calls it directly while attribute lookup finds it."""
    found = next((k.__dict__[name] for k in Tensor.__mro__ if name in k.__dict__), None)
    if os.environ.get("FASTOPT_DIRECT_READS") == "0" or type(found).__name__ != "getset_descriptor":
        return None
    return found


NO_SHIM: tuple = (0, 0, 0, 0, 0, (), ())
_SHIM_FUNCTIONS = ("aoti_torch_is_contiguous", "aoti_torch_get_numel", "aoti_torch_get_dtype",
                   "aoti_torch_get_data_ptr")
# (optional) at::Tensor assignment, with which a gather holds gradients (see _holding)
_HOLD_FUNCTIONS = ("aoti_torch_assign_tensors",)


def _tensor_offset(samples: list[Tensor]) -> int:
    """Where a plain tensor object holds its ``at::Tensor`` (whose one word is the TensorImpl
    address ``Tensor._cdata`` reports): 16, or 24 behind the flag byte of torch releases whose
    objects may borrow their tensor (0 there: owned); 0 when neither holds for every sample."""
    for offset in (16, 24):
        if all(ctypes.c_uint64.from_address(id(t) + offset).value == t._cdata
               and (offset == 16 or ctypes.c_uint8.from_address(id(t) + 16).value == 0) for t in samples):
            return offset
    return 0


def shim_functions(names: tuple[str, ...] = _SHIM_FUNCTIONS) -> tuple[int, ...]:
    """The addresses of the functions ``names`` (the C shim's by default; any symbol it exports)
    as this torch's ``torch_cpu`` library exports them, 0 for each it lacks (all 0 without the
    library)."""
    found = sorted(glob.glob(os.path.join(os.path.dirname(torch.__file__), "lib", "*torch_cpu.*")))
    try:
        lib = ctypes.CDLL(found[0])
    except (IndexError, OSError):
        return (0,) * len(names)
    functions = [getattr(lib, name, None) for name in names]
    return tuple(0 if fn is None else ctypes.cast(fn, ctypes.c_void_p).value or 0 for fn in functions)


def _shim() -> tuple:
    """torch's C shim for compiled code (AOTInductor's ``aoti_torch_is_contiguous``,
    ``aoti_torch_get_numel``, ``aoti_torch_get_dtype`` and ``aoti_torch_get_data_ptr``, which
    torch exports with C linkage), where a plain tensor object holds the ``at::Tensor`` they
    take and torch's scalar type per kernel dtype code, for the next to last entry of
    ``GATHER_METHODS`` (see csrc/gather.h; ``_holding`` adds the last part). ``NO_SHIM`` when
    this torch lacks one, ``FASTOPT_DIRECT_READS=0``, or the shim disagrees with Tensor's methods
    on a probe tensor."""
    if _C is None or os.environ.get("FASTOPT_DIRECT_READS") == "0":
        return NO_SHIM
    functions = shim_functions()
    base = torch.arange(12, dtype=torch.float32)
    probes = [base, base[3:], base.view(3, 4).t(), base[::2], torch.zeros(()), torch.empty(0),
              torch.nn.Parameter(torch.zeros(2, 3, dtype=torch.float64)),
              torch.nn.Parameter(base.view(3, 4).t()), torch.zeros(3, dtype=torch.int64),
              *(torch.zeros(2, 2, dtype=d) for d in DTYPE_OBJECTS)]
    offset = _tensor_offset(probes)
    if not offset or 0 in functions:
        return NO_SHIM

    def read(t: Tensor, scalar_types: tuple) -> tuple | None:
        return _C.shim_read((*GATHER_BASE, (*functions, offset, scalar_types, ()), NO_LAYOUT), PLAIN_TYPES, t)

    try:
        first = [read(torch.zeros(1, dtype=d), ()) for d in DTYPE_OBJECTS]
        if None in first:
            return NO_SHIM
        scalar_types = tuple(r[2] for r in first)  # type: ignore[index]
        dtype_of = dict(zip(scalar_types, DTYPE_OBJECTS))
        for t in probes:
            got = read(t, scalar_types)
            if (got is None or got[:2] != (t.is_contiguous(), t.numel()) or got[3] != t.data_ptr()
                    or dtype_of.get(got[2]) is not (t.dtype if t.dtype in DTYPE_CODES else None)):
                return NO_SHIM
    except (AttributeError, TypeError, ValueError, RuntimeError):  # (an extension built without it)
        return NO_SHIM
    return (*functions, offset, scalar_types, ())


NO_LAYOUT: tuple = ()


def _words(address: int, count: int) -> list[int]:
    return [ctypes.c_uint64.from_address(address + 8 * i).value for i in range(count)]


def _unique(candidates: list[int]) -> int:
    return candidates[0] if len(candidates) == 1 else 0


def _layout() -> tuple:
    """Where torch keeps the pointers a gradient read follows, for the pass to prefetch along
    them: (at::Tensor in a tensor object, then storage, autograd meta and Python object in a
    TensorImpl, then the gradient in autograd meta, then the TensorImpl's storage offset, which
    its size, dtype and flags follow), byte offsets, and the address of torch's undefined tensor
    (what the gradient slot of a tensor without a gradient holds), found on probe tensors by the addresses and
    values torch reports (``_cdata``, ``untyped_storage()._cdata``, ``id``, ``storage_offset()``,
    ``numel()``) and checked on others (``_C.layout_read``); ``NO_LAYOUT`` when any is not found,
    or ``FASTOPT_DIRECT_READS=0``.
    The layout decides what is prefetched only: a read never goes by it."""
    if _C is None or os.environ.get("FASTOPT_DIRECT_READS") == "0":
        return NO_LAYOUT
    plain = torch.zeros(4)
    with_grad = torch.nn.Parameter(torch.zeros(3))
    with_grad.grad = torch.ones(3)
    tensor = _tensor_offset([plain, with_grad])
    if not tensor:
        return NO_LAYOUT
    span = 16  # words of a TensorImpl searched: its first 128 bytes (it is larger on every release)
    a, b = _words(plain._cdata, span), _words(with_grad._cdata, span)
    storage = _unique([8 * i for i in range(1, span) if a[i] == plain.untyped_storage()._cdata
                       and b[i] == with_grad.untyped_storage()._cdata])
    pyobj = _unique([8 * i for i in range(1, span) if a[i] & ~7 == id(plain) and b[i] & ~7 == id(with_grad)])
    # autograd meta: the one pointer a tensor without autograd lacks
    meta = _unique([8 * i for i in range(1, span)
                    if a[i] == 0 and b[i] != 0 and 8 * i not in (storage, pyobj)])
    if not (storage and pyobj and meta):
        return NO_LAYOUT
    grad = _unique([8 * i for i, w in enumerate(_words(b[meta // 8], 8)) if i and w == with_grad.grad._cdata])
    if not grad:
        return NO_LAYOUT
    # the storage offset (the size after it): the one word holding each probe view's offset
    views = [torch.zeros(64)[7:20], torch.zeros(64, dtype=torch.float64)[3:8]]
    # 192 bytes from each TensorImpl (its fields lie within them on every release; a word past
    # a smaller one is the next block of the same heap)
    words = [(_words(v._cdata, 24), [v.storage_offset(), v.numel()]) for v in views]
    fields = _unique([8 * i for i in range(1, 23) if all(w[i:i + 2] == want for w, want in words)])
    if not fields:
        return NO_LAYOUT
    # what a tensor without a gradient has in its autograd meta's gradient: torch's undefined tensor
    fresh = [torch.nn.Parameter(torch.zeros(2)) for _ in range(2)]
    undefined = {_words(_words(f._cdata, span)[meta // 8], grad // 8 + 1)[grad // 8] for f in fresh}
    if len(undefined) != 1 or 0 in undefined:
        return NO_LAYOUT
    layout = (tensor, storage, meta, grad, pyobj, fields, undefined.pop())
    base = torch.arange(6.0)
    param = torch.nn.Parameter(torch.arange(6.0).view(2, 3))
    param.grad = torch.ones(2, 3, dtype=torch.float32)  # (a gradient from backward: tests/test_gather.py)
    no_grad_yet = torch.nn.Parameter(torch.zeros(2, dtype=torch.float64))
    for t in (base, base[2:], param, no_grad_yet, torch.zeros((), dtype=torch.bfloat16), param.grad):
        got = _C.layout_read((*GATHER_BASE, NO_SHIM, layout), PLAIN_TYPES, t)
        meta_of = got[2] if got else 0
        if (got is None or got[0] != t._cdata or got[1] != t.untyped_storage()._cdata or got[4] & ~7 != id(t)
                or (t.requires_grad and not meta_of) or (t.grad is not None and got[3] != t.grad._cdata)
                or got[5:] != (t.storage_offset(), t.numel())
                or (meta_of and (got[3] == layout[6]) != (t.grad is None))):
            return NO_LAYOUT
    return layout


#: What ``_C.gather_rows`` reads tensors with: Tensor's data_ptr, is_contiguous and numel, then
#: the faster reads checked against them, and the layout it prefetches along (see csrc/gather.h)
GATHER_BASE = (Tensor.data_ptr, Tensor.is_contiguous, Tensor.numel, *_address_reader(),
               getset("grad"), getset("dtype"))


def _holding(shim: tuple, layout: tuple) -> tuple:
    """``shim`` with the at::Tensor assignment of torch's C shim (``aoti_torch_assign_tensors``),
    with which a gather holds gradients in slots of its own instead of by their Python objects
    (csrc/gather.h, ``HeldGrads``); ``shim`` as it is when there is no shim or no layout, this
    torch lacks the function, or a slot does not hold its tensor on a probe (one more use of it
    while held, as many as before after, its address read through the slot)."""
    if shim == NO_SHIM or layout == NO_LAYOUT:
        return shim
    assign = shim_functions(_HOLD_FUNCTIONS)
    if 0 in assign:
        return shim
    holding = (*shim[:-1], assign)
    methods = (*GATHER_BASE, holding, layout)
    probes = [torch.arange(6.0)[2:], torch.nn.Parameter(torch.zeros(2, 3, dtype=torch.float64)),
              torch.zeros((), dtype=torch.bfloat16)]
    try:
        for t in probes:
            before = t._use_count()
            got = _C.hold_read(methods, PLAIN_TYPES, t, t._use_count)
            if got != (before + 1, t.data_ptr()) or t._use_count() != before:
                return shim
    except (AttributeError, TypeError, RuntimeError):  # (a torch without Tensor._use_count)
        return shim
    return holding


_LAYOUT = _layout()
GATHER_METHODS = (*GATHER_BASE, _holding(_shim(), _LAYOUT), _LAYOUT)


class _ProbeTensor(torch.Tensor):
    """A tensor subclass: bump_versions hands such tensors back rather than bump them."""


#: torch::autograd::impl::bump_version as releases export it (taking at::Tensor, or at::TensorBase)
_BUMP_SYMBOLS = ("_ZN5torch8autograd4impl12bump_versionERKN2at6TensorE",
                 "_ZN5torch8autograd4impl12bump_versionERKN2at10TensorBaseE")


def _bump_function(methods: tuple = GATHER_METHODS) -> int:
    """The address of torch's version-counter bump (``torch::autograd::impl::bump_version``), with
    which ``_C.bump_versions`` counts the kernels' in-place changes; 0 where this torch does not
    export it, ``FASTOPT_DIRECT_READS=0``, or it does not act as torch's ``increment_version`` on
    probe tensors (every probe, its views' base with it, one version up; an inference tensor
    refused; a tensor of another type handed back): ``increment_versions`` does it then."""
    if _C is None or os.environ.get("FASTOPT_DIRECT_READS") == "0":
        return 0
    bump = next((address for address in shim_functions(_BUMP_SYMBOLS) if address), 0)
    if not bump:
        return 0
    base = torch.arange(6.0)
    param = torch.nn.Parameter(torch.zeros(2, 3, dtype=torch.float64))
    param.grad = torch.ones(2, 3, dtype=torch.float64)
    probes = [base, base[2:], param, param.grad, torch.zeros((), dtype=torch.bfloat16)]
    other = torch.zeros(2).as_subclass(_ProbeTensor)
    with torch.inference_mode():
        inference = torch.zeros(2)
    try:
        before = [t._version for t in probes]
        left = _C.bump_versions([*probes, other], methods, PLAIN_TYPES, bump)
        # base and base[2:] share one counter: two up each
        want = [v + (2 if i < 2 else 1) for i, v in enumerate(before)]
        if [t._version for t in probes] != want or len(left) != 1 or left[0] is not other:
            return 0
        _C.bump_versions([inference], methods, PLAIN_TYPES, bump)
        return 0  # (an inference tensor must be refused, as torch's in-place ops refuse it)
    except RuntimeError as e:
        return bump if "inference" in str(e).lower() and "Exception raised from" not in str(e) else 0
    except (AttributeError, TypeError, ValueError):  # (an extension built without it)
        return 0


BUMP_VERSION = _bump_function()


def _version_word(layout: tuple = _LAYOUT) -> int:
    """Where a TensorImpl keeps the pointer to its version counter (a byte offset), along which
    ``_C.bump_versions`` prefetches the counters: the one word, besides the storage's, that a
    tensor shares with its views and detached aliases (which share its counter) and that another
    tensor does not; 0 where no single word is, or without the layout. Prefetching only: the
    count goes through torch's bump."""
    if layout == NO_LAYOUT:
        return 0
    found = []
    for make in (lambda: torch.zeros(8), lambda: torch.nn.Parameter(torch.zeros(3, 4, dtype=torch.float64))):
        a, other = make(), make()
        aliases = [a.view(-1)[1:], a.view(-1)[2:5], a.detach()]
        mine, theirs = _words(a._cdata, 16), _words(other._cdata, 16)
        shared = [_words(t._cdata, 16) for t in aliases]
        found.append({8 * i for i in range(1, 16) if mine[i] and mine[i] != theirs[i] and 8 * i != layout[1]
                      and all(w[i] == mine[i] for w in shared)})
    return _unique(sorted(set.intersection(*found)))


VERSION_WORD = _version_word() if BUMP_VERSION else 0


def bump_versions(tensors: list[Tensor]) -> None:
    """Count one in-place change in each of ``tensors``' version counters, as torch's in-place
    ops do (autograd then refuses a backward through a value the step changed, and an inference
    tensor outside inference mode raises torch's error): through torch's own bump in one native
    pass where found, else through ``torch.autograd.graph.increment_version``."""
    left = (_C.bump_versions(tensors, GATHER_METHODS, PLAIN_TYPES, BUMP_VERSION, VERSION_WORD) if BUMP_VERSION
            else tensors)
    if left:
        increment_versions(left)


NO_STATE: dict = {}  # what ``state.get`` gives a parameter without state (never written)


def read_path(methods: tuple | None = None) -> str:
    """How the step's gradient pass reads tensors on this torch, in a few words (benchmark
    headers): along torch's layout through its C shim (gradients held without Python objects
    where torch can assign tensors), through the shim alone, through torch's C-level address
    reader, or through Tensor's methods. ``methods``: ``GATHER_METHODS`` as it is now."""
    if methods is None:
        methods = GATHER_METHODS
    shim, layout = methods[7], methods[8]
    if shim[4] and layout:
        return "layout + C shim" + (", gradients held" if shim[6] else "")
    if shim[4]:
        return "C shim"
    return "C address reader" if methods[3] else "Tensor methods"

#: Check every pointer the native kernel is handed against the tensors it came from, before
#: each call (``FASTOPT_CHECK_POINTERS=1``; the test suite turns it on).
CHECK_POINTERS = os.environ.get("FASTOPT_CHECK_POINTERS") == "1"


def is_sharded(t: Tensor) -> bool:
    """Whether ``t`` is a DTensor (an FSDP2 parameter or gradient) rather than a plain tensor."""
    if type(t) in PLAIN_TYPES:
        return False
    return DTensor is not None and isinstance(t, DTensor)


def local(t: Tensor) -> Tensor:
    """The local shard of a DTensor (FSDP2 parameters, their grads and state); else ``t``."""
    return t._local_tensor if is_sharded(t) else t  # type: ignore[attr-defined]


class Fallback(Exception):
    """Raised while preparing state that only torch's own path can step."""


@dataclass(frozen=True)
class Algorithm:
    """One optimizer algorithm as the native tier sees it."""

    name: str
    kernel: str  # the ``_C`` entry point
    columns: tuple[str, ...]  # pointer-table columns: param, grad, state tensors, maybe step
    hypers: tuple[str, ...]  # hyperparameter columns
    row: Callable[[dict], tuple[dict[str, float], int]]  # a group's hyperparameters and flags
    buffers: Callable[[dict], tuple[str, ...]]  # per-element state tensors a group's params carry
    prepare: Callable[..., tuple[dict[str, Tensor], bool]]
    # ^ (optimizer state, p, group, made=None) -> state tensors to point to, and whether this is
    #   their first step (created here, or taken from `made`, premade_state's tensors for p; the
    #   kernel initialises them); raises Fallback for unusual state
    fresh: Callable[[dict, Tensor, dict], tuple[tuple[str, str], ...]]
    # ^ (optimizer state, p, group) -> the state tensors prepare would make for p now, in the
    #   order it adds them to p's state, and of what kind (premade_state's KINDS); touches nothing
    structure: Callable[[dict], Any]  # group settings that decide which state exists
    flat_first: Callable[[dict, bool], bool]  # flat mode: first step initialises state?
    torch_group_step: Callable[..., None]  # (optimizer, group, fused, grad_scale, found_inf)
    # ^ one group through torch's functional API, state prepared by torch's own _init_group
    functional: str  # torch's functional optimizer: torch.optim.<functional>.<functional>
    sparse_error: str | None = None  # None: sparse gradients go through torch's path
    made_first: bool = False  # whether prepare calls premade_state's tensors their first step

    def takes_fused(self) -> bool:
        """Whether this torch's functional API for the algorithm has a fused kernel."""
        return "fused" in functional_parameters(_functional(self.functional))

    def column(self, key: str) -> int:
        """The pointer-table column of ``key``."""
        return self.columns.index(key)

    @property
    def step_column(self) -> int | None:
        """The column of the step counter, if the algorithm keeps one."""
        return self.columns.index("step") if "step" in self.columns else None

    def hyper_row(self, group: dict) -> tuple[list[float], int]:
        """A group's hyperparameters in column order, and its flags."""
        values, flags = self.row(group)
        return [values[h] for h in self.hypers], flags

    def run(self, *args: Any) -> None:
        """Call the kernel: (ptrs, numels, dtypes, flags, hyper, grad_scale, grad_mult), on
        ``torch.get_num_threads()`` threads as torch's setting stands at this call."""
        getattr(_C, self.kernel)(*args, num_threads=torch.get_num_threads())


def _flag(name: str, on: Any) -> int:
    return STEP_FLAGS[name] if on else 0


def _sgd_row(group: dict) -> tuple[dict[str, float], int]:
    values = {k: group[k] for k in ("lr", "momentum", "dampening", "weight_decay")}
    return values, _flag("maximize", group["maximize"]) | _flag("nesterov", group["nesterov"])


def _sgd_prepare(opt_state: dict, p: Tensor, group: dict, made: dict[str, Tensor] | None = None
                 ) -> tuple[dict[str, Tensor], bool]:
    if group["momentum"] == 0:
        if sgd_keeps_unused_buffers():  # as torch's own SGD on this release
            opt_state[p].setdefault("momentum_buffer", None)
        return {}, False
    state = opt_state[p]
    buf = state.get("momentum_buffer")
    if buf is not None:
        if buf.shape != p.shape or buf.dtype != p.dtype or not local(buf).is_contiguous():
            raise Fallback  # an unusual buffer: torch's path handles this parameter
        return {"momentum_buffer": buf}, False
    if made:  # premade_state's buffer, as empty_like makes it
        state["momentum_buffer"] = made["momentum_buffer"]
        return made, True  # the kernel copies the gradient in
    buf = state["momentum_buffer"] = torch.empty_like(p, memory_format=torch.contiguous_format)
    return {"momentum_buffer": buf}, True


def _sgd_fresh(opt_state: dict, p: Tensor, group: dict) -> tuple[tuple[str, str], ...]:
    if group["momentum"] == 0:
        return ()
    state = opt_state.get(p)
    if state is not None and (not isinstance(state, dict) or state.get("momentum_buffer") is not None):
        return ()
    return (("momentum_buffer", "empty"),)  # (the kernel copies the gradient in)


def _adam_row(group: dict, decoupled: bool = False) -> tuple[dict[str, float], int]:
    """Adam's row; ``decoupled``: AdamW's class (torch >= 2.7 also lets Adam's groups ask for
    decoupled weight decay with a ``decoupled_weight_decay`` key, which older releases lack)."""
    beta1, beta2 = group["betas"]
    values = dict(lr=group["lr"], beta1=beta1, beta2=beta2, eps=group["eps"],
                  weight_decay=group["weight_decay"])
    flags = (_flag("maximize", group["maximize"]) | _flag("amsgrad", group["amsgrad"])
             | _flag("decoupled_weight_decay", decoupled or group.get("decoupled_weight_decay")))
    return values, flags


def _adam_buffers(group: dict) -> tuple[str, ...]:
    return ("exp_avg", "exp_avg_sq", "max_exp_avg_sq") if group["amsgrad"] else ("exp_avg", "exp_avg_sq")


def _adam_prepare(opt_state: dict, p: Tensor, group: dict, made: dict[str, Tensor] | None = None
                  ) -> tuple[dict[str, Tensor], bool]:
    keys = _adam_buffers(group)
    state = opt_state[p]
    if made and len(state) == 0:  # premade_state's tensors, each as torch makes it: nothing to check
        state["step"] = made["step"]
        for key in keys:
            state[key] = made[key]
        return made, False
    if len(state) == 0:  # as torch's first step: a float32 step counter, zero moments
        state["step"] = made["step"] if made else torch.tensor(0.0, dtype=scalar_dtype())
        for key in keys:
            state[key] = made[key] if made else torch.zeros_like(p, memory_format=torch.preserve_format)
    tensors = {key: state[key] for key in keys}
    step = state["step"]
    if (not isinstance(step, Tensor) or step.device.type != "cpu" or step.numel() != 1
            or step.dtype != torch.float32
            or any(t.shape != p.shape or t.dtype != p.dtype or not local(t).is_contiguous()
                   for t in tensors.values())):
        raise Fallback
    return {**tensors, "step": step}, False


def _adam_fresh(opt_state: dict, p: Tensor, group: dict) -> tuple[tuple[str, str], ...]:
    state = opt_state.get(p)
    if state is not None and (not isinstance(state, dict) or len(state) != 0):
        return ()
    return (("step", "step"), *((key, "zeros") for key in _adam_buffers(group)))  # (as prepare adds them)


#: What premade_state makes of each kind: the zeros ``zeros_like(p)`` makes (p's strides), the
#: uninitialised contiguous tensor ``empty_like(p, memory_format=torch.contiguous_format)``
#: makes, or a zero step counter as ``torch.tensor(0.0, dtype=scalar_dtype())``.
KINDS = ("zeros", "empty", "step")


#: torch's C shim functions ``_C.resize_like`` resizes through
_RESIZE_FUNCTIONS = ("aoti_torch_cpu_resize_", "aoti_torch_get_dim", "aoti_torch_get_sizes",
                     "aoti_torch_get_strides", "aoti_torch_get_data_ptr", "aoti_torch_get_storage_size",
                     "aoti_torch_get_storage_offset")


def _resize_functions(methods: tuple = GATHER_METHODS) -> tuple:
    """The addresses of torch's C shim functions with which ``_C.resize_like`` resizes new state
    tensors without a call into torch's Python bindings (about 2 µs each), or ``()`` where this
    torch lacks one, ``FASTOPT_DIRECT_READS=0``, or they disagree with ``Tensor.resize_`` on
    probe tensors (sizes, strides, storage offset and size, which ones need restriding), or the
    zeroing leaves an element other than +0 (one probe's memory held NaN) or counts a version."""
    if _C is None or os.environ.get("FASTOPT_DIRECT_READS") == "0":
        return ()
    functions = shim_functions(_RESIZE_FUNCTIONS)
    if 0 in functions:
        return ()
    sources = [torch.zeros(3, 4), torch.zeros(2, 3, 4, 5).to(memory_format=torch.channels_last),
               torch.nn.Parameter(torch.zeros(7, dtype=torch.float64)), torch.zeros(0), None,
               torch.zeros(2, 1, 1, 3).to(memory_format=torch.channels_last),
               torch.zeros(4, dtype=torch.bfloat16), torch.zeros(3, 4)]
    base = {d: torch.empty(0, dtype=d) for d in (torch.float32, torch.float64, torch.bfloat16)}
    targets = [base[torch.float32 if s is None else s.dtype].new_empty(0) for s in sources]
    targets[-1] = torch.full((3, 4), math.nan).resize_(0)  # (memory the zeroing must overwrite)
    done, restride = 0, []
    for dtype in base:  # (one call per element size, as premade_state makes them)
        picked = [i for i, t in enumerate(targets) if t.dtype == dtype]
        try:
            n, again = _C.resize_like([targets[i] for i in picked], [sources[i] for i in picked], methods,
                                      PLAIN_TYPES, functions, base[dtype].element_size())
        except (AttributeError, TypeError, ValueError, RuntimeError):  # (an extension built without it)
            return ()
        done += n
        restride += [picked[j] for j in again]
    restride.sort()
    want = [base[torch.float32 if s is None else s.dtype].new_empty(0).resize_(() if s is None else s.shape)
            for s in sources]
    if done != len(sources) or restride != [i for i, (s, w) in enumerate(zip(sources, want))
                                            if s is not None and w.stride() != s.stride()]:
        return ()
    for t, w in zip(targets, want):
        if (t.shape != w.shape or t.stride() != w.stride() or t.storage_offset() != w.storage_offset()
                or t.untyped_storage().nbytes() != w.untyped_storage().nbytes() or t.dtype != w.dtype
                or bool((t != 0).any()) or bool(t.signbit().any())):
            return ()
    if any(t._version != 0 for t in targets[:-1]):
        return ()
    return functions


RESIZE_FUNCTIONS = _resize_functions()


def premade_state(algorithm: Algorithm, opt_state: dict, params: list[Tensor], groups: list[dict],
                  plain_cpu: bool = False) -> dict[int, dict[str, Tensor]]:
    """The state tensors that ``algorithm.prepare`` would make for ``params`` (in ``groups``),
    made for all of them at once, by index into ``params``: first every tensor's object and
    metadata (empty tensors, one after another in the order a step reads them), then their
    elements, a key at a time. Each is the tensor ``prepare`` would make (``KINDS``), but the
    metadata a step reads of it lies together rather than between the tensors' elements, and
    each key's elements follow one another: a step over many small tensors reads the state
    and streams it faster. Only for plain CPU parameters (``plain_cpu``: the caller found every
    one so) and with no torch function mode on (a device context would change what the
    factories make); empty where nothing is made."""
    if torch_function_mode_on():
        return {}
    per_group: dict[int, tuple[tuple[str, str], ...]] = {}  # by group: what a parameter without state gets
    wants: list[tuple[int, Tensor, tuple[tuple[str, str], ...]]] = []
    for i, (p, group) in enumerate(zip(params, groups)):
        if plain_cpu or (type(p) in PLAIN_TYPES and p.is_cpu):
            st = opt_state.get(p) if opt_state else None  # (a first step: no look-up, no tensor hashed)
            if st is None or (type(st) is dict and not st):  # (no state: the group's keys)
                keys = per_group.get(id(group))
                if keys is None:
                    keys = per_group[id(group)] = algorithm.fresh({}, p, group)
            else:
                keys = algorithm.fresh(opt_state, p, group)
            if keys:
                wants.append((i, p, keys))
    if len(wants) < 2:
        return {}
    step_dtype = scalar_dtype()
    factories: dict[torch.dtype, Callable[[], Tensor]] = {}  # an empty tensor's new(): the cheapest factory
    made: dict[int, dict[str, Tensor]] = {}
    # (key, kind, dtype): the tensors made, and their parameters
    by_key: dict[tuple[str, str, torch.dtype], tuple[list[Tensor], list[Tensor]]] = {}
    start = 0
    # the objects and metadata, in the order a step reads them, in runs of parameters of one
    # dtype with the same keys
    for (keys, p_dtype), members in groupby(zip([w[2] for w in wants], [w[1].dtype for w in wants])):
        end = start + len(list(members))
        dtypes = [step_dtype if kind == "step" else p_dtype for _, kind in keys]
        for dtype in dtypes:
            if dtype not in factories:
                factories[dtype] = torch.empty(0, dtype=dtype).new
        makers = [factories[dtype] for dtype in dtypes]
        run = wants[start:end]
        tensors = [make() for _ in run for make in makers]
        names = [key for key, _ in keys]
        width = len(keys)
        columns = [tensors[k::width] for k in range(width)]
        made.update(zip([i for i, _, _ in run], map(dict, map(zip, repeat(names), zip(*columns)))))
        run_params = [p for _, p, _ in run]
        for column, (key, kind), dtype in zip(columns, keys, dtypes):
            made_of, params_of = by_key.setdefault((key, kind, dtype), ([], []))
            made_of.extend(column)
            params_of.extend(run_params)
        start = end
    long_way_zeros: list[Tensor] = []  # (zeroed by the shim's pass, except these)
    for (_, kind, _), (targets, params_of) in by_key.items():  # then the elements, a key at a time
        sources: list[Tensor | None] = [None] * len(targets) if kind == "step" else params_of
        itemsize = 0 if kind == "empty" else targets[0].element_size()  # (0: left as they are)
        done, restride = (_C.resize_like(targets, sources, GATHER_METHODS, PLAIN_TYPES, RESIZE_FUNCTIONS,
                                         itemsize) if RESIZE_FUNCTIONS else (0, []))
        for t, p in zip(targets[done:], sources[done:]):  # (the long way: no shim, or from where it stopped)
            t.resize_(() if p is None else p.shape)
        if kind != "empty":
            long_way_zeros.extend(targets[done:])  # (resize_ counted a change already)
        if kind == "zeros":  # (zeros_like keeps a dense p's strides)
            for j in [*restride, *range(done, len(targets))]:
                t, p = targets[j], params_of[j]
                if t.stride() != p.stride():
                    t.as_strided_(p.shape, p.stride())
    zero_all = getattr(torch, "_foreach_zero_", None)  # (one call for all; else one each)
    if zero_all is not None and long_way_zeros:
        zero_all(long_way_zeros)
    else:
        for t in long_way_zeros:
            t.zero_()
    return made


def _functional(name: str) -> Callable[..., None]:
    """torch's functional optimizer ``torch.optim.<name>.<name>``."""
    return getattr(importlib.import_module(f"torch.optim.{name}"), name)


def _sgd_torch(opt: Any, group: dict, fused: bool, grad_scale: Tensor | None,
               found_inf: Tensor | None) -> None:
    """One group through ``torch.optim.sgd.sgd``, as torch's ``SGD.step`` does it."""
    g = {**group, "fused": True} if fused else group  # a copy: param_groups are not written
    params: list[Tensor] = []
    grads: list[Tensor] = []
    bufs: list[Tensor | None] = []
    has_sparse_grad = torch.optim.SGD._init_group(opt, g, params, grads, bufs)
    fn = _functional("sgd")
    fn(params, grads, bufs,
       **functional_kwargs(fn, has_sparse_grad=has_sparse_grad, foreach=g.get("foreach"),
                           fused=g.get("fused"), grad_scale=grad_scale, found_inf=found_inf),
       weight_decay=g["weight_decay"], momentum=g["momentum"], lr=g["lr"], dampening=g["dampening"],
       nesterov=g["nesterov"], maximize=g["maximize"])
    # _init_group lists a buffer for each parameter whose state keeps one on this release
    for p, buf in zip(params, bufs):
        opt.state[p]["momentum_buffer"] = buf


def _adam_torch(torch_class: type, functional: Callable[..., None], takes_decoupled: bool,
                opt: Any, group: dict, fused: bool, grad_scale: Tensor | None,
                found_inf: Tensor | None) -> None:
    """One group through torch's ``adam`` / ``adamw`` functional, as the class's step does it."""
    g = {**group, "fused": True} if fused else group
    lists: tuple[list[Tensor], ...] = ([], [], [], [], [], [])
    init = torch_class._init_group
    if "amsgrad" in functional_parameters(init):  # torch's own AdamW before 2.7 takes it too
        has_complex = init(opt, g, lists[0], lists[1], g["amsgrad"], *lists[2:])
    else:
        has_complex = init(opt, g, *lists)  # None before torch 2.2
    beta1, beta2 = g["betas"]
    extra = {"decoupled_weight_decay": g.get("decoupled_weight_decay", False)} if takes_decoupled else {}
    kwargs = functional_kwargs(functional, foreach=g.get("foreach"), capturable=g.get("capturable", False),
                               differentiable=g.get("differentiable", False), fused=g.get("fused"),
                               grad_scale=grad_scale, found_inf=found_inf, has_complex=has_complex, **extra)
    functional(*lists, **kwargs,
               amsgrad=g["amsgrad"], beta1=beta1, beta2=beta2, lr=g["lr"], weight_decay=g["weight_decay"],
               eps=g["eps"], maximize=g["maximize"])


SGD = Algorithm(
    name="SGD", kernel="sgd_step", columns=_exported("SGD_COLUMNS", ()), hypers=_exported("SGD_HYPERS", ()),
    row=_sgd_row, buffers=lambda g: ("momentum_buffer",) if g["momentum"] != 0 else (),
    prepare=_sgd_prepare, fresh=_sgd_fresh, structure=lambda g: g["momentum"] != 0,
    flat_first=lambda g, had_state: g["momentum"] != 0 and not had_state, torch_group_step=_sgd_torch,
    functional="sgd", made_first=True)

_ADAM_COMMON: dict[str, Any] = dict(
    kernel="adam_step", columns=_exported("ADAM_COLUMNS", ()), hypers=_exported("ADAM_HYPERS", ()),
    buffers=_adam_buffers, prepare=_adam_prepare, fresh=_adam_fresh, structure=lambda g: bool(g["amsgrad"]),
    flat_first=lambda g, had_state: False,
    sparse_error="Adam does not support sparse gradients, please consider SparseAdam instead")

ADAM = Algorithm(
    name="Adam", row=_adam_row, functional="adam",
    torch_group_step=functools.partial(_adam_torch, torch.optim.Adam, _functional("adam"), True),
    **_ADAM_COMMON)

#: AdamW: decoupled weight decay because of the class, on every torch release (torch's AdamW
#: is its own class before 2.7 and an Adam with ``decoupled_weight_decay=True`` from 2.7 on).
ADAMW = Algorithm(
    name="AdamW", row=functools.partial(_adam_row, decoupled=True), functional="adamw",
    torch_group_step=functools.partial(_adam_torch, torch.optim.AdamW, _functional("adamw"), False),
    **_ADAM_COMMON)


def all_distinct(values: np.ndarray) -> bool:
    """Whether no two of ``values`` are equal: sorted, then each compared with the next (numpy's
    hash-based ``np.unique`` took 150 ms on 100,000 heap addresses, the sort under 1 ms)."""
    ordered = np.sort(values)
    return bool((ordered[1:] != ordered[:-1]).all())


def shares_storage(params: list[Tensor]) -> bool:
    """Whether two non-empty parameters start at the same address."""
    return not all_distinct(_as_uint64([p.data_ptr() for p in params if p.numel()]))


def group_settings(group: dict) -> tuple[bool, bool, bool]:
    """The settings of a group that decide whether the native kernel may step it:
    differentiable, capturable, a tensor-valued hyperparameter."""
    tensor_valued = any(isinstance(v, Tensor) for k, v in group.items() if k != "params") or any(
        isinstance(b, Tensor) for b in group.get("betas", ()))
    return bool(group.get("differentiable")), bool(group.get("capturable")), tensor_valued


def group_native(group: dict, params_checked: bool = False) -> bool:
    """Whether the native kernel can step a group: CPU, contiguous, a dtype it knows, plain
    (non-tensor) hyperparameters, neither differentiable nor capturable (``params_checked``: the
    parameters' part was found true already, by ``tensor_table``)."""
    if _C is None or any(group_settings(group)):
        return False
    if params_checked:
        return True
    for p in map(local, group["params"]):
        if p.device.type != "cpu" or p.dtype not in DTYPE_CODES or not p.is_contiguous():
            return False
    return True


def _as_uint64(values: list[int]) -> np.ndarray:
    return np.fromiter(values, dtype=np.uint64, count=len(values))


#: Tensor's is_cpu and layout getters, which ``_C.norm_table`` calls directly where it may
_TABLE_GETTERS = (getset("is_cpu"), getset("layout"))

TensorTable = tuple[np.ndarray, np.ndarray, np.ndarray]


def tensor_table(tensors: list[Tensor]) -> TensorTable | None:
    """Each tensor's address, number of elements and dtype code, read in one native pass
    (``_C.norm_table``, with the step's own reads: see ``GATHER_METHODS``); None unless every
    one is a plain contiguous CPU tensor of a kernel dtype."""
    if _C is None:
        return None
    n = len(tensors)
    ptrs = np.empty(n, dtype=np.uint64)
    numels = np.empty(n, dtype=np.int64)
    dtypes = np.empty(n, dtype=np.int32)
    if not _C.norm_table(tensors, DTYPE_CODES, GATHER_METHODS, PLAIN_TYPES, torch.strided, _TABLE_GETTERS,
                         ptrs, numels, dtypes):
        return None
    return ptrs, numels, dtypes


def addresses(tensors: list[Tensor]) -> np.ndarray:
    """Each tensor's ``data_ptr()``, one native pass where ``tensor_table`` reads them all."""
    table = tensor_table(tensors)
    return table[0] if table is not None else _as_uint64(list(map(Tensor.data_ptr, tensors)))


class Plan:
    """What stays fixed between steps of one optimizer: tensor order, groups, state pointers.

    Checked at every step (``check_params``, ``check_state``) against what the optimizer holds
    then; rows whose state changed are prepared again before the kernel runs."""

    def __init__(self, groups: list[dict], algorithm: Algorithm, key: Any) -> None:
        self.key = key
        self.algorithm = algorithm
        self.stale = False  # set when parameters moved where the kernel cannot follow
        self.params: list[Tensor] = [p for g in groups for p in g["params"]]
        self.param_addresses = param_addresses(groups)  # (self.params keeps them alive)
        ids = [id(p) for p in self.params]
        # FSDP2: sharded parameters step on their local shards
        self.sharded = any(type(p) not in PLAIN_TYPES for p in self.params)
        distinct = len(set(ids)) == len(ids)
        # plain parameters: one native pass reads what group_native checks of them (else the long way)
        table = tensor_table(self.params) if distinct and not self.sharded else None
        self.native = distinct and all(group_native(g, table is not None) for g in groups)
        if self.native:  # (parameters sharing storage step one after another on torch's path)
            if table is not None:
                self.native = all_distinct(table[0][table[1] > 0])
            else:
                self.native = not shares_storage([local(p) for p in self.params])
        if not self.native:
            return
        sizes = [len(g["params"]) for g in groups]
        self.group_of = np.repeat(np.arange(len(sizes), dtype=np.int64), sizes)
        if table is not None:
            self.param_ptrs, self.numels, self.dtypes = table
        else:
            locals_ = [local(p) for p in self.params] if self.sharded else self.params
            self.numels = np.fromiter((p.numel() for p in locals_), dtype=np.int64, count=len(self.params))
            self.dtypes = np.fromiter((DTYPE_CODES.get(p.dtype, -1) for p in locals_), dtype=np.int32,
                                      count=len(self.params))
            self.param_ptrs = _as_uint64([p.data_ptr() for p in locals_])
        self.ptrs = np.zeros((len(self.params), len(algorithm.columns)), dtype=np.uint64)
        self.param_column = algorithm.column("param")
        self.ptrs[:, self.param_column] = self.param_ptrs
        self.ready = np.zeros(len(self.params), dtype=bool)  # state pointers filled in
        self.every_row = np.arange(len(self.params))
        self.table: tuple | None = None  # the hyperparameter table ``rows`` was made from
        self.rows: tuple[np.ndarray, np.ndarray] = (np.zeros(0, dtype=np.int32), np.zeros((0, 0)))
        self.keep: list[dict[str, Tensor]] = [NO_STATE] * len(self.params)  # state tensors pointed to
        # what the state looked like when the pointers were taken (see check_state)
        self.states: list[dict] = [NO_STATE] * len(self.params)  # each row's state dict
        self.row_values: list[tuple] = [()] * len(self.params)  # and its entries
        self.addresses = np.zeros(0, dtype=np.uint64)  # the whole state (_C.state_addresses)
        self.held: tuple = ()  # the objects those addresses are of
        self.state_tensors: list[Tensor] = []
        self.state_rows = np.zeros(0, dtype=np.int64)
        self.state_ptrs = np.zeros(0, dtype=np.uint64)
        self.state_numels = np.zeros(0, dtype=np.int64)
        self.state_dtypes = np.zeros(0, dtype=np.int32)
        # what a gather fills: gradient addresses and rows, and the holder of the gradients read
        n = len(self.params)
        self.buffers = (np.empty(n, dtype=np.uint64), np.empty(n, dtype=np.int64))
        self.grad_holder: Any = False  # (False: not made yet; None: this torch cannot hold tensors)

    def holder(self) -> Any:
        """The plan's ``_C.HeldGrads`` (made on first use), or None where gradients cannot be
        held without their Python objects."""
        if self.grad_holder is False:
            self.grad_holder = _C.held_grads(GATHER_METHODS, PLAIN_TYPES, len(self.params))
        return self.grad_holder

    def rows_of(self, table: tuple[np.ndarray, np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
        """``rows_of(table, self.group_of)``, kept while the table is the same object (the
        optimizer makes a new one whenever a group's hyperparameters change)."""
        if self.table is not table:
            self.table, self.rows = table, rows_of(table, self.group_of)
        return self.rows

    def check_params(self, groups: list[dict]) -> bool:
        """Whether ``groups`` still hold exactly this plan's parameters, in this order."""
        return params_unchanged(groups, self.param_addresses)

    def accept_moved(self, rows: list[int], ptrs: list[int]) -> bool:
        """Take parameters whose storage moved (``p.data = ...``) if the kernel can still step
        them; False when the plan must be made again."""
        for i, ptr in zip(rows, ptrs):
            if ptr != self.param_ptrs[i]:
                p = local(self.params[i])
                if (p.numel() != self.numels[i] or DTYPE_CODES.get(p.dtype) != self.dtypes[i]
                        or not p.is_contiguous() or p.device.type != "cpu"):
                    return False
                self.param_ptrs[i] = ptr
                self.ptrs[i, self.param_column] = ptr
        return not shares_storage([local(p) for p in self.params])  # (now sharing: a new plan)

    def check_state(self, state: dict, storage_checked: bool = False, same: bool | None = None) -> bool:
        """Mark rows whose state changed since their pointers were taken as not ready: a state
        dict replaced or cleared, an entry added, removed or replaced, a tensor's storage
        replaced or its size, dtype or contiguity changed in place (``storage_checked``: found
        unchanged already; ``same``: ``same_state(state)`` found already). True when nothing
        changed."""
        if self.same_state(state) if same is None else same:
            if storage_checked:
                return True
            moved = self.changed_tensors()
            if not moved.any():
                return True
            self.ready[self.state_rows[moved]] = False
            return False
        states = states_of(state, self.params)
        for i, (now, then, then_values) in enumerate(zip(states, self.states, self.row_values)):
            if (now is not then or len(now) != len(then_values)
                    or not all(map(operator.is_, now.values(), then_values))):
                self.ready[i] = False
        self.ready[self.state_rows[self.changed_tensors()]] = False  # (.data = ... in the same interval)
        self._remember(state, states)
        return False

    def same_state(self, state: dict) -> bool:
        """Whether ``state`` holds the same objects as at the last snapshot (keys, each
        parameter's dict, every entry, in iteration order): one native pass over the dicts,
        touching no tensor."""
        return _C.state_unchanged(state, self.addresses)

    def changed_tensors(self) -> np.ndarray:
        """Per state tensor the table points to, whether its storage moved since (``.data =``)
        or its size, dtype or contiguity changed in place (``resize_``, ``as_strided_``, ``t_``,
        ``.data =`` a view as another dtype: the same address)."""
        now = tensor_layout(self.state_tensors)
        return ((now[:, 0] != self.state_ptrs.view(np.int64)) | (now[:, 1] != self.state_numels)
                | (now[:, 2] != self.state_dtypes) | (now[:, 3] == 0))

    def _remember(self, state: dict, states: list[dict]) -> None:
        self.states = states
        self.row_values = [tuple(st.values()) for st in states]
        self.addresses, self.held = state_snapshot(state)

    def snapshot(self, state: dict) -> None:
        """Remember the state as it is now, after rows were prepared."""
        self._remember(state, states_of(state, self.params))
        rows = np.flatnonzero(self.ready)
        kept = [self.keep[i] for i in rows.tolist()]
        tensors = list(chain.from_iterable(map(dict.values, kept)))
        if self.sharded:
            tensors = list(map(local, tensors))
        owners = np.repeat(rows, list(map(len, kept)))
        self.state_tensors = tensors
        self.state_rows = np.asarray(owners, dtype=np.int64)
        table = tensor_table(tensors)
        if table is not None:
            self.state_ptrs, self.state_numels, self.state_dtypes = table
            return
        self.state_ptrs = np.fromiter(map(Tensor.data_ptr, tensors), dtype=np.uint64, count=len(tensors))
        self.state_numels = np.fromiter(map(Tensor.numel, tensors), dtype=np.int64, count=len(tensors))
        self.state_dtypes = np.fromiter((DTYPE_CODES.get(t.dtype, -1) for t in tensors), dtype=np.int32,
                                        count=len(tensors))


def states_of(state: dict, params: list[Tensor]) -> list[dict]:
    """Each parameter's state dict (``NO_STATE`` where it has none): ``state``'s values as they
    are where its keys are ``params`` themselves, in order (as a first step over all of them
    leaves it), with no tensor hashed; else one lookup each."""
    if len(state) == len(params) and all(map(operator.is_, state, params)):
        return list(state.values())
    return list(map(state.get, params, repeat(NO_STATE)))


def tensor_layout(tensors: list[Tensor]) -> np.ndarray:
    """Per tensor its address, number of elements, dtype code (-1: none of the kernels') and
    contiguity (1 or 0), one row each, to compare with the same of another moment."""
    out = np.empty((len(tensors), 4), dtype=np.int64)
    out[:, 0] = np.fromiter(map(Tensor.data_ptr, tensors), dtype=np.uint64, count=len(tensors)).view(np.int64)
    out[:, 1] = np.fromiter(map(Tensor.numel, tensors), dtype=np.int64, count=len(tensors))
    out[:, 2] = np.fromiter((DTYPE_CODES.get(d, -1) for d in map(_DTYPE, tensors)), dtype=np.int64,
                            count=len(tensors))
    out[:, 3] = np.fromiter(map(Tensor.is_contiguous, tensors), dtype=bool, count=len(tensors))
    return out


def state_snapshot(state: dict) -> tuple[np.ndarray, tuple]:
    """Identity snapshot of an optimizer's state (``_C.state_addresses``) and the objects it
    stands for, to be kept alive with it: no other object can then take one of the addresses."""
    dicts = list(state.values())
    held = (list(state), dicts, [(*d, *d.values()) for d in dicts if isinstance(d, dict)])  # (keys, entries)
    return _C.state_addresses(state), held


def param_addresses(groups: list[dict]) -> np.ndarray:
    """Identity snapshot of the groups' parameter lists (``_C.list_addresses``)."""
    lists = [g["params"] for g in groups]
    if all(type(x) is list for x in lists):
        return _C.list_addresses(lists)
    return np.zeros(0, dtype=np.uint64)  # (params_unchanged is then always False: a new plan)


def params_unchanged(groups: list[dict], snapshot: np.ndarray) -> bool:
    """Whether the groups hold the parameters of ``snapshot`` (``param_addresses``), in order;
    the caller keeps those parameters alive, so equal addresses are the same objects."""
    lists = [g["params"] for g in groups]
    if all(type(x) is list for x in lists):
        return _C.lists_unchanged(lists, snapshot)
    return False  # a group whose params are not a list: check it the long way, a new plan


def hyper_table(groups: list[dict], algorithm: Algorithm) -> tuple[np.ndarray, np.ndarray]:
    """Per-group hyperparameter rows (column order) and flags as arrays."""
    rows = [algorithm.hyper_row(g) for g in groups]
    hyper = np.array([r for r, _ in rows], dtype=np.float64).reshape(-1, len(algorithm.hypers))
    return hyper, np.array([f for _, f in rows], dtype=np.int32)


class MultOf:
    """A gradient multiplier (a clip coefficient) worked out from the gradients a step is about
    to read, once: ``fn(grads, table)`` gets the gradients of the parameters that have one, in
    the optimizer's order, and the native norm table (``clip_grad.NormTable``) when the native
    tier has gathered it (else None), and returns the multiplier (None: 1). Whichever tier runs
    the step calls it before anything is updated; later calls return the first result."""

    def __init__(self, fn: Callable[[list[Tensor], Any], float | Tensor | None]) -> None:
        self.fn = fn
        self.done = False
        self.value: float | Tensor | None = None

    def __call__(self, grads: list[Tensor], table: Any = None) -> float | Tensor | None:
        """The multiplier (computed on the first call)."""
        if not self.done:
            self.value, self.done = self.fn(grads, table), True
        return self.value


def native_step(plan: Plan, groups: list[dict], state: dict, algorithm: Algorithm,
                table: tuple[np.ndarray, np.ndarray], grad_scale: Tensor | None,
                grad_mult: float | MultOf = 1.0, clipped: bool = False) -> bool:
    """Step every group in one kernel call. True: done; False: nothing done, torch's path must
    run this step (``plan.native`` or ``plan.stale`` then say whether the next may try again).
    The caller has checked that ``groups`` hold the plan's parameters (``Plan.check_params``);
    the state is checked here. A ``MultOf`` multiplier is worked out from the gradients
    gathered here (before any state is created), so the norm reads no pointer twice.
    ``clipped``: the multiplier stands for torch's in-place clip (whose change of the gradients
    their version counters count)."""
    # The gradients held in the plan's holder, not by their objects, unless a multiplier is
    # worked out from them or the holder is in use (a step within this plan's step).
    holder = None if plan.sharded or isinstance(grad_mult, MultOf) else plan.holder()
    if holder is not None and holder.busy:
        holder = None
    try:
        gathered = gather(plan, state=state, holder=holder) if not plan.sharded else None
        return _native_step(plan, groups, state, algorithm, table, grad_scale, grad_mult, gathered, clipped)
    finally:
        if holder is not None:
            holder.release()  # (what it held, the kernel has read; also after an error)


def _native_step(plan: Plan, groups: list[dict], state: dict, algorithm: Algorithm,
                 table: tuple[np.ndarray, np.ndarray], grad_scale: Tensor | None,
                 grad_mult: float | MultOf, gathered: tuple | None, clipped: bool = False) -> bool:
    """``native_step`` once the native pass has read the plan (``gathered``, None where it
    could not)."""
    params = plan.params
    storage_checked = gathered is not None  # (the native pass checked the state tensors)
    same = None
    if gathered is not None:
        read, grad_ptrs, rows, same = gathered
    else:
        found = read_rows(plan, algorithm)
        if not isinstance(found, tuple):
            return found
        read, grad_ptrs, rows = found
    if not read:
        return True
    every_row = rows is None
    if every_row:
        rows = plan.every_row
    if isinstance(grad_mult, MultOf):  # sharded gradients: their norm spans every rank's shard
        norm_table = None if plan.sharded else (grad_ptrs, plan.numels[rows], plan.dtypes[rows])
        value = grad_mult(read, norm_table)
        grad_mult = 1.0 if value is None else float(value)
    unchanged = plan.check_state(state, storage_checked, same)
    # (no array of the size of the plan is made where every row is ready: a step allocates
    # nothing per tensor where nothing changed)
    todo = NO_ROWS if plan.ready.all() else rows[~plan.ready[rows]]
    first = None
    if len(todo):
        with gc_paused(len(todo) >= GC_PAUSE_ROWS):
            first = prepare_rows(plan, groups, state, algorithm, todo)
            if first is None:
                return False
            plan.snapshot(state)
    elif not unchanged:
        plan.snapshot(state)
    # every row: the plan's own table, whose gradient column is filled here and read by nothing else
    ptrs = plan.ptrs if every_row else plan.ptrs[rows]
    ptrs[:, algorithm.column("grad")] = grad_ptrs
    if CHECK_POINTERS:
        check_pointer_table(ptrs, rows, plan, state, algorithm)
    flags, hyper = plan.rows_of(table) if every_row else rows_of(table, plan.group_of[rows])
    if first is not None:
        flags = flags | np.where(first[rows], STEP_FLAGS["first_step"], 0).astype(np.int32)
    scale = 0.0 if grad_scale is None else float(grad_scale)
    numels, dtypes = (plan.numels, plan.dtypes) if every_row else (plan.numels[rows], plan.dtypes[rows])
    # the kernel writes the gradients back under a loss scale: counted where torch's in-place
    # clip would have counted it (GradScaler's unscale_ counts nothing)
    bump_stepped(params if every_row else [params[i] for i in rows.tolist()],
                 read if grad_scale is not None and clipped else None)
    algorithm.run(ptrs, numels, dtypes, flags, hyper, scale, grad_mult)
    return True


def prepare_rows(plan: Plan, groups: list[dict], state: dict, algorithm: Algorithm, todo: np.ndarray
                 ) -> np.ndarray | None:
    """Prepare the plan's rows ``todo`` (their state made or checked, ``algorithm.prepare``) and
    point the table to their state; per parameter, whether this is its first step (the kernel
    initialises its state). None, with nothing left in the state, where a row needs torch's path
    (``plan.native`` is then False)."""
    params = plan.params
    rows_todo = todo.tolist()
    row_groups = [groups[g] for g in plan.group_of[todo].tolist()]
    made = premade_state(algorithm, state, [params[i] for i in rows_todo], row_groups, not plan.sharded)
    if made and len(made) == len(rows_todo):  # every row's state made together: nothing to check
        return adopt_rows(plan, state, algorithm, rows_todo, [made[k] for k in range(len(rows_todo))])
    first = np.zeros(len(params), dtype=bool)
    created: list[tuple[Tensor, dict[str, Tensor]]] = []  # parameters whose buffers the kernel would fill
    columns: dict[str, tuple[list[int], list[Tensor]]] = {}  # key: rows, tensors to point to
    try:
        for k, (i, group) in enumerate(zip(rows_todo, row_groups)):
            p = params[i]
            tensors, first_step = algorithm.prepare(state, p, group, made.get(k))
            if first_step:
                first[i] = True
                created.append((p, tensors))
            for key, t in tensors.items():
                column = columns.get(key)
                if column is None:
                    column = columns[key] = ([], [])
                column[0].append(i)
                column[1].append(t)
            plan.keep[i] = tensors
    except Fallback:
        # torch's path takes this step: buffers made for the kernel to fill must not reach it
        # (it would read them as state), so they go again
        for p, tensors in created:
            for key in tensors:
                state[p].pop(key, None)
        plan.native = False  # until the groups change: torch's path
        return None
    for key, (key_rows, tensors_of) in columns.items():
        plan.ptrs[key_rows, algorithm.column(key)] = addresses(
            list(map(local, tensors_of)) if plan.sharded else tensors_of)
    plan.ready[todo] = True
    return first


def adopt_rows(plan: Plan, state: dict, algorithm: Algorithm, rows: list[int], made: list[dict[str, Tensor]]
               ) -> np.ndarray:
    """``prepare_rows`` where ``premade_state`` made the state of every row: each parameter's
    state dict gets its tensors as ``algorithm.prepare`` would add them (in ``algorithm.fresh``'s
    order; a new dict, or the empty one there filled in place), and the table points to them,
    with one pass per key rather than a ``prepare`` call per row; per parameter, whether this is
    its first step."""
    params = plan.params
    owners = [params[i] for i in rows]
    if not state:  # (no parameter has a state dict: each gets a new one, in the rows' order)
        state.update(zip(owners, map(dict, made)))
    else:
        for p, m in zip(owners, made):
            st = state.get(p)
            if st is None:
                state[p] = dict(m)
            else:
                st.update(m)  # (an empty dict, or SGD's with its buffer None: filled in place)
    kinds = [tuple(m) for m in made]
    distinct = dict.fromkeys(kinds)  # (one set of keys per group setting, in the rows' order)
    for keys in distinct:
        at = range(len(made)) if len(distinct) == 1 else [k for k, ks in enumerate(kinds) if ks == keys]
        key_rows = [rows[k] for k in at]
        for key in keys:
            plan.ptrs[key_rows, algorithm.column(key)] = addresses([made[k][key] for k in at])
    for i, m in zip(rows, made):
        plan.keep[i] = m
    first = np.zeros(len(params), dtype=bool)
    if algorithm.made_first:
        first[rows] = True
    plan.ready[rows] = True
    return first


#: From how many rows to prepare at once the cyclic garbage collector waits (``gc_paused``).
GC_PAUSE_ROWS = 1024

_gc_lock = threading.Lock()
_gc_pause = [0, False]  # (pauses open, whether the collector was on when the first began)


@contextlib.contextmanager
def gc_paused(on: bool = True) -> Iterator[None]:
    """Python's cyclic garbage collector off while a first step makes the state of many
    parameters (``on``): each few hundred thousand long-lived objects made (state tensors, their
    dicts, the plan's records) would otherwise start a full collection over the whole heap,
    which at 100,000 AdamW parameters took 0.9 s of a 1.5 s first step. Turned on again when
    the last pause ends, if it was on when the first began; nothing changes where it was off."""
    if not on:
        yield
        return
    with _gc_lock:
        if _gc_pause[0] == 0:
            _gc_pause[1] = gc.isenabled()
            gc.disable()
        _gc_pause[0] += 1
    try:
        yield
    finally:
        with _gc_lock:
            _gc_pause[0] -= 1
            if _gc_pause[0] == 0 and _gc_pause[1]:
                gc.enable()


def bump_stepped(params: list[Tensor], grads: Sized | None = None) -> None:
    """Before a kernel changes ``params`` in place (and ``grads``, a list or the plan's holder):
    count it in their version counters, as torch's in-place ops would (a sharded parameter's
    in its own counter, not its local shard's, as torch's step on it does)."""
    if grads is None or isinstance(grads, list):
        bump_versions(params if grads is None else params + grads)
        return
    bump_versions(params)
    if BUMP_VERSION:
        _C.bump_held(grads, BUMP_VERSION)
    else:
        bump_versions([g for g in map(GRAD, params) if g is not None])


NO_ROWS = np.zeros(0, dtype=np.int64)


def rows_of(table: tuple[np.ndarray, np.ndarray], group_of: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per-row flags and hyperparameters from the per-group ``table`` (``hyper_table``)."""
    group_hyper, group_flags = table
    return group_flags[group_of], group_hyper[group_of]


def gather(plan: Plan, checks: int = 2, state: dict | None = None, holder: Any = None
           ) -> tuple[Sized, np.ndarray, np.ndarray | None, bool | None] | None:
    """The gradients a step reads, their addresses and rows (None: every row), when one native
    pass (``_C.gather_rows``) finds every parameter with a gradient, that gradient and every
    state tensor the table points to as the plan has them; None when anything differs. With
    ``state``, also whether it holds the objects of the plan's snapshot (``Plan.same_state``),
    read alongside; else None there. The gradients come as a list of tensors, or, given the
    plan's ``holder`` (``Plan.holder``) not in use, possibly as that holder (their number; it
    holds them until ``release()``, which the caller owes, in a ``finally``, once the kernel has
    read them): then no Python object is made for a gradient from backward, and the addresses
    and rows are views of the plan's buffers, good until the holder's release. A large plan is
    read on up to ``torch.get_num_threads()`` threads, as the kernel steps it.
    (``checks`` < 2 prices the checks in benchmarks/bench_checks.py: never for a step.)"""
    mine = holder is not None and not holder.busy  # (in use: a read within a read, which holds nothing)
    matched, grads, grad_ptrs, rows, same = _C.gather_rows(
        plan.params, plan.numels, plan.dtypes, DTYPE_OBJECTS, plan.param_ptrs, plan.state_tensors,
        plan.state_ptrs, plan.state_numels, plan.state_dtypes, GATHER_METHODS, PLAIN_TYPES, checks,
        state, plan.addresses, not torch_function_mode_on(), torch.get_num_threads(),
        holder if mine else None, plan.buffers if mine else None)
    return (grads, grad_ptrs, rows, same) if matched else None


def read_rows(plan: Plan, algorithm: Algorithm
              ) -> tuple[list[Tensor], np.ndarray, np.ndarray | None] | bool:
    """``gather`` the long way, for whatever differs from the plan: a sparse gradient raises
    the algorithm's error; False when torch's path must take the step (``plan.stale``: after a
    new plan); parameters whose storage moved are taken into the plan where the kernel can
    still step them."""
    params = plan.params
    grads = list(map(GRAD, params))
    # (not `None in grads`: that would call Tensor.__eq__ on every gradient)
    if any(g is None for g in grads):  # parameters without a gradient are skipped, as torch does
        rows_list = [i for i, g in enumerate(grads) if g is not None]
        if not rows_list:
            return [], np.zeros(0, dtype=np.uint64), np.zeros(0, dtype=np.int64)
        sel = [grads[i] for i in rows_list]
        sel_params = [params[i] for i in rows_list]
    else:
        rows_list, sel, sel_params = None, grads, params
    read = sel  # the gradients as the optimizer holds them (sharded ones too)
    if plan.sharded:
        sel, sel_params = [local(g) for g in sel], [local(p) for p in sel_params]
    try:
        contiguous = all(map(Tensor.is_contiguous, sel))
    except RuntimeError:  # sparse layouts have no strides
        contiguous = False
    if not contiguous:
        if algorithm.sparse_error is not None and any(g.layout is not torch.strided for g in sel):
            raise RuntimeError(algorithm.sparse_error)
        return False
    rows = np.arange(len(params)) if rows_list is None else np.asarray(rows_list, dtype=np.int64)
    # Gradients and parameters of the size and dtype the table gives (a gradient left behind by
    # a dtype move, a parameter resized or viewed as another dtype in place), and parameters
    # still contiguous (one transposed in place): else torch's path.
    numels, dtypes = plan.numels[rows], plan.dtypes[rows]
    if (not sizes_and_dtypes_match(sel_params, numels, dtypes)
            or not all(map(Tensor.is_contiguous, sel_params))):
        plan.stale = True  # the parameters changed: a new plan (the caller makes one and retries)
        return False
    if not sizes_and_dtypes_match(sel, numels, dtypes):
        return False
    # Parameters whose storage moved (p.data = ...) are re-checked before use.
    param_ptrs = np.fromiter(map(Tensor.data_ptr, sel_params), dtype=np.uint64, count=len(sel_params))
    moved = (param_ptrs != plan.param_ptrs[rows]).any()
    if moved and not plan.accept_moved(rows.tolist(), param_ptrs.tolist()):
        plan.stale = True
        return False
    grad_ptrs = np.fromiter(map(Tensor.data_ptr, sel), dtype=np.uint64, count=len(sel))
    return read, grad_ptrs, None if rows_list is None else rows


_DTYPE = operator.attrgetter("dtype")


def sizes_and_dtypes_match(tensors: list[Tensor], numels: np.ndarray, dtypes: np.ndarray) -> bool:
    """Whether each tensor has the table's number of elements and dtype code."""
    found = set(map(_DTYPE, tensors))
    if len(found) == 1:
        if (dtypes != DTYPE_CODES.get(found.pop(), -1)).any():
            return False
    elif (np.fromiter((DTYPE_CODES.get(d, -1) for d in map(_DTYPE, tensors)), dtype=np.int32,
                      count=len(tensors)) != dtypes).any():
        return False
    return bool((np.fromiter(map(Tensor.numel, tensors), dtype=np.int64, count=len(tensors)) == numels).all())


def check_pointer_table(ptrs: np.ndarray, rows: np.ndarray, plan: Plan, state: dict,
                        algorithm: Algorithm) -> None:
    """Assert that every address in the kernel's table is that of the tensor it stands for
    now (parameter, gradient, each state tensor), with the size and dtype the table gives."""
    for r, i in enumerate(rows.tolist()):
        p = plan.params[i]
        expect = {"param": local(p), "grad": local(p.grad)}
        for key, t in plan.keep[i].items():
            current = state[p][key]
            assert current is t, f"row {i}: state[{key!r}] is not the tensor the plan points to"
            expect[key] = local(current)
        for key, t in expect.items():
            got = int(ptrs[r, algorithm.column(key)])
            assert got == t.data_ptr(), f"row {i}: {key} pointer {got:#x} != {t.data_ptr():#x}"
            if key == "step":
                assert t.numel() == 1 and t.dtype == torch.float32 and t.is_contiguous(), (
                    f"row {i}: the step counter is {t.numel()} elements of {t.dtype}")
            else:
                assert t.numel() == plan.numels[i] and DTYPE_CODES.get(t.dtype) == plan.dtypes[i], (
                    f"row {i}: {key} has {t.numel()} elements of {t.dtype}, the table "
                    f"{plan.numels[i]} of code {plan.dtypes[i]}")
                assert t.is_contiguous(), f"row {i}: {key} is not contiguous"


def multiply_grads(groups: list[dict], grad_mult: float | Tensor) -> None:
    """Multiply every gradient in place by ``grad_mult``, as ``clip_grad_norm_`` does (for the
    tiers whose kernels do not take the coefficient)."""
    mult = grad_mult if isinstance(grad_mult, Tensor) else torch.tensor(grad_mult, dtype=torch.float32)
    for g in groups:
        for p in g["params"]:
            if p.grad is not None:
                p.grad.mul_(mult.to(p.grad.device))


