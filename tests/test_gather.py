"""The native tier's one-pass read of a plan (``_kernels.gather`` over ``_C.gather_rows``).

It either finds every gradient, parameter and state tensor as the plan has them, and then
gives what the long way (``_kernels.read_rows``) gives, or it declines and the long way runs:
each thing a user can change between steps makes it decline.
"""

from __future__ import annotations

import gc
import warnings
import weakref
from collections.abc import Callable, Iterator

import numpy as np
import pytest
import torch

from fastopt import _kernels as K
from fastopt import optim as fo

pytest.importorskip("fastopt._C")

SHAPES = [(4, 3), (5,), (2, 2, 2), (7,), (0,)]
#: gather_rows' reads with the faster ones left out: Tensor's methods and attribute lookup only
METHODS_ONLY = (*K.GATHER_METHODS[:3], 0, (), None, None, K.NO_SHIM, K.NO_LAYOUT)


#: every read this torch allows, as the package found them at import
DIRECT = K.GATHER_METHODS
#: the same without torch's C shim: the address reader and the getters (prefetching as before)
NO_SHIM = (*DIRECT[:7], K.NO_SHIM, DIRECT[8])
#: every read, without the prefetching along torch's layout
NO_LAYOUT = (*DIRECT[:8], K.NO_LAYOUT)
VARIANTS = {"direct reads": DIRECT, "no prefetch": NO_LAYOUT, "no shim": NO_SHIM,
            "methods only": METHODS_ONLY}


@pytest.fixture(autouse=True, params=list(VARIANTS))
def reads(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> tuple:
    """Every test runs with the reads this torch allows (torch's C shim, its C-level address
    reader, the getters, prefetching along torch's layout), again without the prefetching,
    without the shim, and with Tensor's methods alone, the way torch releases without them go."""
    monkeypatch.setattr(K, "GATHER_METHODS", VARIANTS[request.param])
    return K.GATHER_METHODS


#: copies of SHAPES in a large plan: over 4,096 parameters and state tensors, which two threads
#: read, the parameters first, then the state (csrc/gather.cpp)
LARGE = 300


@pytest.fixture(params=[1, LARGE], ids=["small", "large"])
def copies(request: pytest.FixtureRequest) -> int:
    """How many copies of SHAPES the optimizer steps (a small plan, and a large one)."""
    return request.param


def stepped(cls: type = fo.AdamW, copies: int = 1, **kw
            ) -> tuple[torch.optim.Optimizer, list[torch.nn.Parameter], K.Plan]:
    """An optimizer after two native steps, its parameters and its plan."""
    gen = torch.Generator().manual_seed(0)
    ps = [torch.nn.Parameter(torch.randn(s, generator=gen)) for s in SHAPES * copies]
    opt = cls([{"params": ps[:3]}, {"params": ps[3:], "lr": 0.01}], lr=0.02, **kw)
    for _ in range(2):
        for p in ps:
            p.grad = torch.randn(p.shape, generator=gen)
        opt.step()
    plan = opt._fastopt_cache.plan
    assert plan is not None and plan.native and opt._fastopt_tier == "native"
    return opt, ps, plan


@pytest.mark.parametrize("cls", [fo.SGD, fo.Adam, fo.AdamW])
def test_gather_gives_what_the_long_way_gives(cls: type, copies: int) -> None:
    opt, ps, plan = stepped(cls, copies, **({"momentum": 0.9} if cls is fo.SGD else {}))
    grads = [p.grad for p in ps]
    for missing in ([], [1], [0, 2, 4], list(range(len(ps)))):
        for i, p in enumerate(ps):
            p.grad = None if i in missing else grads[i]
        fast = K.gather(plan)
        slow = K.read_rows(plan, opt.algorithm)
        assert fast is not None and isinstance(slow, tuple)
        assert [id(g) for g in fast[0]] == [id(g) for g in slow[0]]
        assert fast[1].tolist() == slow[1].tolist()
        assert (fast[2] is None) == (slow[2] is None)
        if fast[2] is not None:
            assert fast[2].tolist() == slow[2].tolist() == [i for i in range(len(ps)) if i not in missing]


def _set_grad(i: int, make: Callable[[torch.nn.Parameter], torch.Tensor]) -> Callable:
    def edit(opt: torch.optim.Optimizer, ps: list) -> None:
        ps[i].grad = make(ps[i])
    return edit


def _grad_data(i: int, make: Callable[[torch.Tensor], torch.Tensor]) -> Callable:
    def edit(opt: torch.optim.Optimizer, ps: list) -> None:
        ps[i].grad.data = make(ps[i].grad)  # (torch's grad setter refuses these; .data does not)
    return edit


def _state_data(opt: torch.optim.Optimizer, ps: list) -> None:
    t = opt.state[ps[2]]["exp_avg_sq"]
    t.data = t.data.clone()


def _step_data(opt: torch.optim.Optimizer, ps: list) -> None:
    t = opt.state[ps[3]]["step"]
    t.data = t.data.clone()


def _no_grad(fn: Callable[[], object]) -> None:
    with torch.no_grad():
        fn()


class SubTensor(torch.Tensor):
    """A tensor subclass (what the plan does not step as is)."""


EDITS: dict[str, Callable[[torch.optim.Optimizer, list], None]] = {
    "a non-contiguous gradient": _set_grad(0, lambda p: torch.zeros(3, 4).t()),
    "a gradient of another dtype": _grad_data(1, lambda g: g.double()),
    "a gradient of another size": _grad_data(3, lambda g: torch.zeros(8)),
    "a gradient of a tensor subclass": _set_grad(2, lambda p: torch.zeros(p.shape).as_subclass(SubTensor)),
    "a sparse gradient": _set_grad(1, lambda p: torch.zeros(5).to_sparse()),
    "p.data reassigned": lambda opt, ps: setattr(ps[3], "data", ps[3].data.clone()),
    "p.data as a shorter view at the same address": lambda opt, ps: setattr(ps[1], "data", ps[1].data[:3]),
    "p.data in another dtype": lambda opt, ps: setattr(ps[0], "data", ps[0].data.double()),
    "a parameter transposed in place": lambda opt, ps: _no_grad(ps[0].t_),
    "a state tensor's .data replaced": _state_data,
    "a step counter's .data replaced": _step_data,
    "a state tensor resized in place": lambda opt, ps: opt.state[ps[1]]["exp_avg"].resize_(2),
    "a state tensor transposed in place": lambda opt, ps: opt.state[ps[0]]["exp_avg_sq"].t_(),
    "a state tensor's .data viewed as int32": lambda opt, ps: setattr(
        opt.state[ps[3]]["exp_avg"], "data", opt.state[ps[3]]["exp_avg"].data.view(torch.int32)),
    "a step counter's .data viewed as int32": lambda opt, ps: setattr(
        opt.state[ps[2]]["step"], "data", opt.state[ps[2]]["step"].data.view(torch.int32)),
}


@pytest.mark.parametrize("edit", list(EDITS))
def test_gather_declines_what_differs_from_the_plan(edit: str, copies: int) -> None:
    opt, ps, plan = stepped(copies=copies)
    assert K.gather(plan) is not None
    EDITS[edit](opt, ps[-len(SHAPES):] if copies > 1 else ps)  # (in the large plan: its last rows)
    assert K.gather(plan) is None


def test_gather_finds_gradients_set_anew_of_the_same_kind() -> None:
    _, ps, plan = stepped()
    before = K.gather(plan)
    for p in ps:
        p.grad = torch.ones(p.shape)  # new tensors, as after zero_grad(set_to_none=True) + backward
    after = K.gather(plan)
    assert before is not None and after is not None
    assert after[1].tolist() == [p.grad.data_ptr() for p in ps]
    assert all(a is p.grad for a, p in zip(after[0], ps))


def test_gradients_from_backward_are_read_as_the_getter_gives_them(copies: int) -> None:
    """Gradients a backward left (no Python object made yet for them) beside ones set from
    Python and parameters without a gradient: the pass gives the objects, addresses and rows
    the long way gives, in row order, on one thread or two."""
    opt, ps, plan = stepped(copies=copies)
    ps[1].grad = None
    for p in ps[::3]:
        p.grad = None
    sum((p * (i + 1)).sum() for i, p in enumerate(ps[::3])).backward()
    fast = K.gather(plan)
    slow = K.read_rows(plan, opt.algorithm)
    assert fast is not None and isinstance(slow, tuple)
    grads = [p.grad for p in ps if p.grad is not None]
    assert [id(g) for g in fast[0]] == [id(g) for g in slow[0]] == [id(g) for g in grads]
    assert fast[1].tolist() == slow[1].tolist() == [g.data_ptr() for g in grads]
    assert fast[2].tolist() == slow[2].tolist() == [i for i, p in enumerate(ps) if p.grad is not None]
    assert torch.equal(ps[3].grad, torch.full(ps[3].shape, 2.0))


def test_gather_checks_its_arguments() -> None:
    _, _, plan = stepped()
    with pytest.raises(ValueError, match="one per item"):
        K._C.gather_rows(plan.params, plan.numels[:2], plan.dtypes, K.DTYPE_OBJECTS, plan.param_ptrs,
                         plan.state_tensors, plan.state_ptrs, plan.state_numels, plan.state_dtypes,
                         K.GATHER_METHODS, K.PLAIN_TYPES)
    with pytest.raises(TypeError):
        K._C.gather_rows(tuple(plan.params), plan.numels, plan.dtypes, K.DTYPE_OBJECTS, plan.param_ptrs,
                         plan.state_tensors, plan.state_ptrs, plan.state_numels, plan.state_dtypes,
                         K.GATHER_METHODS, K.PLAIN_TYPES)
    assert np.array_equal(plan.param_ptrs, plan.ptrs[:, plan.param_column])


def test_the_address_reader_agrees_with_data_ptr_where_torch_has_one() -> None:
    reader, types = K._address_reader()
    guards = getattr(torch._C._dynamo, "guards", None)
    if not isinstance(getattr(guards, "_torchinductor_pyobject_tensor_data_ptr", None), int):
        assert reader == 0  # (torch before 2.5 has none: Tensor.data_ptr is called)
        return
    assert reader != 0 and torch.Tensor in types
    base = torch.randn(10, dtype=torch.float64)
    for t in (base, base[7:], base.view(2, 5)[:, 1:], torch.nn.Parameter(base[2:4])):
        if type(t) in types:
            assert K._C.read_address(reader, t) == t.data_ptr()
    with pytest.raises(RuntimeError, match="read_address"):
        K._C.read_address(reader, object())  # torch's reader raises a C++ exception: it comes back
    with pytest.raises(ValueError, match="no reader"):
        K._C.read_address(0, base)


def test_a_grad_attribute_overridden_on_the_type_is_looked_up(monkeypatch: pytest.MonkeyPatch) -> None:
    _, ps, plan = stepped()
    stand_ins = {id(p): torch.zeros(p.shape) for p in ps}
    monkeypatch.setattr(torch.nn.Parameter, "grad", property(lambda self: stand_ins[id(self)]), raising=False)
    found = K.gather(plan)
    assert found is not None
    assert [id(g) for g in found[0]] == [id(stand_ins[id(p)]) for p in ps]
    assert found[1].tolist() == [stand_ins[id(p)].data_ptr() for p in ps]


def test_direct_reads_can_be_turned_off() -> None:
    import os
    import subprocess
    import sys
    code = ("from fastopt import _kernels as K; m = K.GATHER_METHODS; "
            "print(m[3], m[5], m[6], m[7] == K.NO_SHIM, m[8] == K.NO_LAYOUT)")
    env = dict(os.environ, FASTOPT_DIRECT_READS="0")
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True)
    assert out.stdout.split() == ["0", "None", "None", "True", "True"]


def _exports_shim() -> bool:
    """Whether this torch's library exports every function of the C shim the pass reads with."""
    return 0 not in K.shim_functions()


def test_the_shim_is_used_where_torch_exports_it() -> None:
    """A torch that exports the shim gets it (else every step pays torch's bindings again)."""
    assert (DIRECT[7] != K.NO_SHIM) == _exports_shim()


def _moved_data() -> torch.Tensor:
    t = torch.zeros(3)
    t.data = torch.arange(10.0)[2:8].view(2, 3)
    return t


def _a_gradient() -> torch.Tensor:
    p = torch.nn.Parameter(torch.ones(3, 2))
    (p * 2).sum().backward()
    assert p.grad is not None
    return p.grad


SHIM_CASES: dict[str, Callable[[], torch.Tensor]] = {
    "1-d": lambda: torch.randn(5),
    "0-d": lambda: torch.zeros(()),
    "empty": lambda: torch.zeros(0, 3),
    "offset view": lambda: torch.arange(10.0)[3:],
    "transposed": lambda: torch.randn(3, 4).t(),
    "strided": lambda: torch.arange(10.0)[::2],
    "size-1 dims": lambda: torch.randn(1, 4, 1),
    "expanded": lambda: torch.randn(3, 1).expand(3, 4),
    "parameter": lambda: torch.nn.Parameter(torch.randn(2, 3, dtype=torch.float64)),
    "transposed parameter": lambda: torch.nn.Parameter(torch.randn(2, 3).t()),
    "bfloat16": lambda: torch.randn(4, dtype=torch.bfloat16),
    "float16": lambda: torch.randn(4, dtype=torch.float16),
    "int64": lambda: torch.arange(4),
    "bool": lambda: torch.zeros(3, dtype=torch.bool),
    "complex": lambda: torch.zeros(3, dtype=torch.complex64),
    ".data replaced": _moved_data,
    "a gradient": lambda: _a_gradient(),
    "meta": lambda: torch.empty(4, device="meta"),
}


@pytest.mark.parametrize("case", list(SHIM_CASES))
def test_the_shim_reads_what_torch_reports(case: str) -> None:
    """Where the shim reads a tensor it gives Tensor's own answers; where it does not (None),
    the pass reads through the bindings."""
    if not _exports_shim():
        pytest.skip("this torch exports no C shim (aoti_torch_is_contiguous and the rest)")
    t = SHIM_CASES[case]()
    got = K._C.shim_read(DIRECT, K.PLAIN_TYPES, t)
    assert got is not None
    scalar_types = dict(zip(DIRECT[7][5], K.DTYPE_OBJECTS))
    assert got[:2] == (t.is_contiguous(), t.numel())
    assert got[3] == t.data_ptr()
    assert scalar_types.get(got[2]) is (t.dtype if t.dtype in K.DTYPE_CODES else None)


def test_the_shim_leaves_other_tensors_to_the_bindings() -> None:
    if not _exports_shim():
        pytest.skip("this torch exports no C shim (aoti_torch_is_contiguous and the rest)")
    assert K._C.shim_read(DIRECT, K.PLAIN_TYPES, torch.randn(3).as_subclass(SubTensor)) is None
    assert K._C.shim_read(DIRECT, K.PLAIN_TYPES, torch.zeros(5).to_sparse()) is None  # (no strides)
    assert K._C.shim_read(DIRECT, K.PLAIN_TYPES, [1.0]) is None
    with pytest.raises(TypeError, match="methods"):
        K._C.shim_read(DIRECT[:8], K.PLAIN_TYPES, torch.zeros(2))
    with pytest.raises(ValueError, match="16 or 24"):
        no_offset = (*DIRECT[7][:4], 8, (), ())
        K._C.shim_read((*DIRECT[:7], no_offset, K.NO_LAYOUT), K.PLAIN_TYPES, torch.zeros(2))


def _grad_set_by_hand() -> torch.Tensor:
    p = torch.nn.Parameter(torch.zeros(4))
    p.grad = torch.ones(4)
    return p


def _grad_from_backward() -> torch.Tensor:
    p = torch.nn.Parameter(torch.ones(2, 3, dtype=torch.float64))
    (p * 3).sum().backward()
    return p


def _grad_gone() -> torch.Tensor:
    p = _grad_set_by_hand()
    p.grad = None
    return p


LAYOUT_CASES: dict[str, Callable[[], torch.Tensor]] = {
    **SHIM_CASES,
    "parameter with a gradient set": _grad_set_by_hand,
    "parameter with a gradient from backward": _grad_from_backward,
    "parameter whose gradient went": _grad_gone,
    "non-leaf": lambda: torch.nn.Parameter(torch.ones(3)) * 2,
    "detached": lambda: torch.nn.Parameter(torch.ones(3)).detach(),
}


def test_the_layout_is_found() -> None:
    """The pass prefetches along torch's pointers on this torch (else every step waits on each
    tensor's memory in turn)."""
    assert DIRECT[8] != K.NO_LAYOUT


@pytest.mark.parametrize("case", list(LAYOUT_CASES))
def test_the_layout_reads_what_torch_reports(case: str) -> None:
    """What the pass prefetches along is what torch reports: the tensor's TensorImpl, storage and
    Python object, autograd meta where it requires grad, and its gradient's TensorImpl."""
    if DIRECT[8] == K.NO_LAYOUT:
        pytest.fail("no layout found on this torch (see test_the_layout_is_found)")
    t = LAYOUT_CASES[case]()
    got = K._C.layout_read(DIRECT, K.PLAIN_TYPES, t)
    assert got is not None
    impl, storage, meta, grad, pyobj, offset, numel = got
    assert impl == t._cdata
    assert (offset, numel) == (t.storage_offset(), t.numel())
    assert storage == t.untyped_storage()._cdata
    assert pyobj & ~7 == id(t)
    if t.requires_grad:
        assert meta != 0
    if t.is_leaf and t.grad is not None:
        assert grad == t.grad._cdata
    if meta != 0 and t.is_leaf:  # (torch's undefined tensor where there is no gradient)
        assert (grad == DIRECT[8][6]) == (t.grad is None)


def test_the_layout_leaves_other_objects_alone() -> None:
    if DIRECT[8] == K.NO_LAYOUT:
        pytest.fail("no layout found on this torch (see test_the_layout_is_found)")
    assert K._C.layout_read(DIRECT, K.PLAIN_TYPES, torch.randn(3).as_subclass(SubTensor)) is None
    assert K._C.layout_read(DIRECT, K.PLAIN_TYPES, [1.0]) is None
    assert K._C.layout_read(NO_LAYOUT, K.PLAIN_TYPES, torch.zeros(2)) is None
    with pytest.raises(TypeError, match="methods\\[8\\]"):
        K._C.layout_read((*DIRECT[:8], (16, 16, 24, 40, 48, 144)), K.PLAIN_TYPES, torch.zeros(2))
    with pytest.raises(ValueError, match="multiples of 8"):
        K._C.layout_read((*DIRECT[:8], (16, 16, 24, 44, 48, 144, 1)), K.PLAIN_TYPES, torch.zeros(2))
    with pytest.raises(ValueError, match="multiples of 8"):
        K._C.layout_read((*DIRECT[:8], (16, 16, 24, 40, 48, 256, 1)), K.PLAIN_TYPES, torch.zeros(2))
    with pytest.raises(ValueError, match="16 or 24"):
        K._C.layout_read((*DIRECT[:8], (8, 16, 24, 40, 48, 144, 1)), K.PLAIN_TYPES, torch.zeros(2))
    with pytest.raises(ValueError, match="undefined"):
        K._C.layout_read((*DIRECT[:8], (16, 16, 24, 40, 48, 144, 0)), K.PLAIN_TYPES, torch.zeros(2))


def _norm_table_by_hand(grads: list, norm_type: float):
    """What native_norm_table must give, from torch's own accessors one by one."""
    for g in grads:
        if (type(g) not in K.PLAIN_TYPES or not g.is_cpu or g.layout is not torch.strided
                or not g.is_contiguous() or g.dtype not in K.DTYPE_CODES):
            return None
    if norm_type == float("inf") and any(g.numel() == 0 for g in grads):
        return None
    codes = [K.DTYPE_CODES[g.dtype] for g in grads]
    return [g.data_ptr() for g in grads], [g.numel() for g in grads], codes


NORM_TABLE_CASES: dict[str, Callable[[], list]] = {
    "float32": lambda: [torch.randn(3, 4), torch.randn(7), torch.randn(0)],
    "mixed dtypes and views": lambda: [torch.randn(10, dtype=torch.float64)[2:],
                                       torch.randn(4, dtype=torch.bfloat16),
                                       torch.randn(2, 3, dtype=torch.float16),
                                       torch.nn.Parameter(torch.randn(5))],
    "non-contiguous": lambda: [torch.randn(3), torch.randn(3, 4).t()],
    "sparse": lambda: [torch.randn(3), torch.zeros(5).to_sparse()],
    "subclass": lambda: [torch.randn(3).as_subclass(SubTensor)],
    "integer dtype": lambda: [torch.randn(3), torch.arange(4)],
    "meta device": lambda: [torch.randn(3), torch.empty(4, device="meta")],
    "one empty": lambda: [torch.randn(3), torch.zeros(0)],
}


@pytest.mark.parametrize("norm_type", [2.0, float("inf")])
@pytest.mark.parametrize("case", list(NORM_TABLE_CASES))
def test_the_norm_table_pass_reads_what_torch_reports(case: str, norm_type: float) -> None:
    from fastopt.clip_grad import native_norm_table
    grads = NORM_TABLE_CASES[case]()
    want = _norm_table_by_hand(grads, norm_type)
    got = native_norm_table(grads, norm_type)
    assert (got is None) == (want is None)
    if got is not None:
        assert [a.tolist() for a in got] == [list(w) for w in want]
    again = native_norm_table(tuple(grads), norm_type)  # (a tuple is taken too)
    assert (again is None) == (got is None)


def test_the_norm_table_pass_checks_its_arguments() -> None:
    n = 2
    out = (np.empty(n, dtype=np.uint64), np.empty(n, dtype=np.int64), np.empty(n, dtype=np.int32))
    grads = [torch.randn(2), torch.randn(3)]
    reads = (K.DTYPE_CODES, DIRECT, K.PLAIN_TYPES, torch.strided, (None, None))
    with pytest.raises(ValueError, match="one per item"):
        K._C.norm_table(grads, *reads, out[0][:1], out[1], out[2])
    with pytest.raises(TypeError):
        K._C.norm_table(tuple(grads), *reads, *out)
    assert K._C.norm_table(grads, *reads, *out)
    assert out[1].tolist() == [2, 3] and out[0].tolist() == [g.data_ptr() for g in grads]


def _big_step_threads() -> int:
    """The threads a kernel call over many chunks runs on here (OpenMP's team)."""
    stepped(copies=LARGE)
    return K._C.last_num_threads()


def reading_team(reads: tuple, plan: K.Plan) -> int:
    """The threads a pass over ``plan`` runs on with these reads (threads besides the calling one
    read through the shim and along the layout only) on this machine: one per 256 parameters and
    state tensors from 512 on, up to torch's thread count where OpenMP runs teams."""
    shim = reads[7]
    if not (shim[4] != 0 and all(shim[:4]) and reads[8] != K.NO_LAYOUT):
        return 1
    threads = torch.get_num_threads()
    if threads >= 2 and _big_step_threads() < 2:
        return 1  # (a build without OpenMP)
    team = min(threads, (len(plan.params) + len(plan.state_tensors)) // 256)
    return team if team >= 2 else 1


def test_a_large_plan_is_read_by_a_team(reads: tuple) -> None:
    opt, ps, plan = stepped(copies=LARGE)
    found = K.gather(plan, state=opt.state)
    assert found is not None and found[3] is True
    assert [id(g) for g in found[0]] == [id(p.grad) for p in ps] and found[2] is None
    assert K._C.last_gather_threads() == reading_team(reads, plan)
    small_opt, _, small = stepped()
    assert K.gather(small, state=small_opt.state) is not None and K._C.last_gather_threads() == 1


@pytest.fixture(params=[1, 3, 5], ids=["1 thread", "3 threads", "5 threads"])
def torch_threads(request: pytest.FixtureRequest) -> Iterator[int]:
    """torch's thread count set to 1, 3 and 5 (more threads than this machine may have cores:
    the team is what OpenMP gives, whatever it runs on), then restored."""
    before = torch.get_num_threads()
    torch.set_num_threads(request.param)
    yield request.param
    torch.set_num_threads(before)


def test_a_team_of_any_size_reads_what_the_long_way_reads(reads: tuple, torch_threads: int) -> None:
    """A large plan's pass on teams of 1, 3 and 5 threads: the gradients, addresses and rows the
    long way gives; a parameter without a gradient, a gradient of another size and a state tensor
    moved elsewhere found wherever they lie among the blocks the threads take (first, middle,
    last); and a step over the team the same as over one thread."""
    opt, ps, plan = stepped(copies=LARGE)
    team = reading_team(reads, plan)
    found = K.gather(plan, state=opt.state)
    assert found is not None and found[3] is True and K._C.last_gather_threads() == team
    for at in (0, len(ps) // 2, len(ps) - 2):  # (the last parameter is empty: (0,))
        grad = ps[at].grad
        ps[at].grad = None
        found = K.gather(plan, state=opt.state)
        slow = K.read_rows(plan, opt.algorithm)
        assert found is not None and isinstance(slow, tuple)
        assert [id(g) for g in found[0]] == [id(g) for g in slow[0]]
        assert found[1].tolist() == slow[1].tolist() and found[2].tolist() == slow[2].tolist()
        assert at not in found[2].tolist()
        ps[at].grad = grad.clone()
        ps[at].grad.data = torch.zeros(grad.numel() + 1)  # (torch's grad setter refuses it; .data not)
        assert K.gather(plan, state=opt.state) is None
        ps[at].grad = grad
        exp_avg = opt.state[ps[at]]["exp_avg"]
        kept = exp_avg.detach()  # (another tensor on the same storage)
        exp_avg.set_(exp_avg.clone())  # (the same object, its storage elsewhere)
        assert K.gather(plan, state=opt.state) is None
        exp_avg.set_(kept)
        assert K.gather(plan, state=opt.state) is not None
    # the step over the team as over one thread
    torch.set_num_threads(1)
    alone, ps_alone, _ = stepped(copies=LARGE)
    torch.set_num_threads(torch_threads)
    gen = torch.Generator().manual_seed(7)
    for p, q in zip(ps, ps_alone):
        q.grad = torch.randn(p.shape, generator=gen)
        p.grad = q.grad.clone()
    opt.step()
    assert K._C.last_gather_threads() == team
    torch.set_num_threads(1)
    alone.step()
    torch.set_num_threads(torch_threads)
    for p, q in zip(ps, ps_alone):
        assert torch.equal(p, q) and torch.equal(opt.state[p]["exp_avg_sq"], alone.state[q]["exp_avg_sq"])


def test_the_state_identity_read_alongside_sees_a_replaced_entry(copies: int) -> None:
    opt, ps, plan = stepped(copies=copies)
    assert K.gather(plan, state=opt.state)[3] is True
    opt.state[ps[-2]]["exp_avg"] = opt.state[ps[-2]]["exp_avg"].clone()
    found = K.gather(plan, state=opt.state)
    assert found is not None and found[3] is False  # (the plan's tensors are as they were)
    assert K.gather(plan)[3] is None  # not asked


def test_a_torch_function_mode_keeps_the_pass_on_one_thread() -> None:
    from torch.overrides import TorchFunctionMode

    seen: list[str] = []

    class Watch(TorchFunctionMode):
        def __torch_function__(self, func, types, args=(), kwargs=None):
            seen.append(getattr(func, "__name__", str(func)))
            return func(*args, **(kwargs or {}))

    opt, _, plan = stepped(copies=LARGE)
    with Watch():
        found = K.gather(plan, state=opt.state)
        threads = K._C.last_gather_threads()
    assert found is not None and threads == 1
    assert seen  # the mode saw the reads (.grad)


def test_a_parameter_subclass_in_a_large_plan_is_read_the_long_way() -> None:
    opt, ps, plan = stepped(copies=LARGE)
    ps[-1].__class__ = SubParameter  # (a plain type no more: its reads may run Python code)
    found = K.gather(plan, state=opt.state)
    slow = K.read_rows(plan, opt.algorithm)
    assert isinstance(slow, tuple)
    if found is not None:
        assert [id(g) for g in found[0]] == [id(g) for g in slow[0]]
        assert found[1].tolist() == slow[1].tolist()


class SubParameter(torch.nn.Parameter):
    """A Parameter subclass."""


def test_a_non_leaf_parameter_without_a_gradient_is_read_as_torch_reads_it(copies: int, reads: tuple) -> None:
    """Reading .grad of a parameter that is no leaf and has no gradient warns through Python's
    warnings, which may run Python code: a large plan's two threads leave it to the calling
    thread's read in row order once both are done, which warns as torch's getter does and skips
    the row; the step warns as torch's does either way."""
    opt, ps, plan = stepped(copies=copies)
    p = ps[-2]
    p.grad = None
    p.requires_grad_(False)
    p.add_(torch.ones(p.shape, requires_grad=True))  # (an in-place op that records: no leaf now)
    assert not p.is_leaf
    with warnings.catch_warnings(record=True) as seen:
        warnings.simplefilter("always")
        found = K.gather(plan)
    assert found is not None and found[2] is not None
    assert len(ps) - 2 not in found[2].tolist() and len(found[2]) == len(ps) - 1
    assert [id(g) for g in found[0]] == [id(q.grad) for q in ps if q is not p]
    assert any("not a leaf" in str(w.message) for w in seen)
    assert K._C.last_gather_threads() == (reading_team(reads, plan) if copies > 1 else 1)
    with pytest.warns(UserWarning, match="not a leaf"):
        opt.step()


def holds(reads: tuple) -> bool:
    """Whether a pass with these reads holds the gradients it reads in the plan's holder (the
    shim assigns tensors and the layout is known) rather than by their Python objects."""
    shim = reads[7]
    return bool(shim[6]) and all(shim[:4]) and shim[4] != 0 and reads[8] != K.NO_LAYOUT


def _from_backward(ps: list) -> None:
    """New gradients for ``ps`` from a backward (no Python object made for them yet)."""
    for p in ps:
        p.grad = None
    sum((p * 2).sum() for p in ps).backward()

def _tensor_objects() -> int:
    """How many plain tensor objects Python holds now."""
    gc.collect()
    return sum(1 for o in gc.get_objects() if type(o) is torch.Tensor)


def test_the_holder_is_used_where_torch_can_assign_tensors() -> None:
    # (the slots are checked with Tensor._use_count: a torch without it gets no holder)
    can = 0 not in K.shim_functions(K._HOLD_FUNCTIONS) and hasattr(torch.Tensor, "_use_count")
    assert holds(DIRECT) == (can and DIRECT[7] != K.NO_SHIM and DIRECT[8] != K.NO_LAYOUT)
    unheld = (*DIRECT[7][:6], ())
    assert K._holding(unheld, K.NO_LAYOUT) == unheld  # (no layout: no undefined tensor for the slots)
    assert K._holding(K.NO_SHIM, DIRECT[8]) == K.NO_SHIM
    assert K._holding(unheld, DIRECT[8]) == (DIRECT[7] if holds(DIRECT) else unheld)


@pytest.mark.parametrize("cls", [fo.SGD, fo.AdamW])
def test_a_held_pass_gives_what_the_long_way_gives(cls: type, copies: int, reads: tuple) -> None:
    """Gradients from backward (no Python object made for them yet), gradients set from Python
    and parameters without one: a pass that may hold them in the plan's slots gives the
    addresses and rows the long way gives, and where it holds them, makes no Python object."""
    opt, ps, plan = stepped(cls, copies, **({"momentum": 0.9} if cls is fo.SGD else {}))
    for p in ps[::3]:
        p.grad = None
    from_backward = ps[1::3]
    _from_backward(from_backward)
    before = _tensor_objects()
    fast = K.gather(plan, state=opt.state, holder=plan.holder())
    made = _tensor_objects() - before
    assert fast is not None
    try:
        slow = K.read_rows(plan, opt.algorithm)
        assert isinstance(slow, tuple)
        assert fast[1].tolist() == slow[1].tolist() == [g.data_ptr() for g in slow[0]]
        assert fast[2].tolist() == slow[2].tolist() == [i for i, p in enumerate(ps) if p.grad is not None]
        assert len(fast[0]) == len(slow[0])
        if holds(reads) and plan.holder() is not None:
            assert isinstance(fast[0], K._C.HeldGrads) and made == 0
        else:
            assert [id(g) for g in fast[0]] == [id(g) for g in slow[0]]
    finally:
        if isinstance(fast[0], K._C.HeldGrads):
            fast[0].release()
    _from_backward(from_backward)  # (the same, asking for the objects: the getter makes them)
    before = _tensor_objects()
    objects = K.gather(plan, state=opt.state)
    assert objects is not None and isinstance(objects[0], list)
    assert _tensor_objects() - before == len(from_backward)


def test_the_holder_keeps_the_gradients_until_released(copies: int, reads: tuple) -> None:
    """While the plan's holder holds the gradients, each has one more user, and one dropped by
    its parameter meanwhile lives on; a pass that finds the holder in use holds by objects; a
    step lets go of what it held once its kernel ran."""
    opt, ps, plan = stepped(copies=copies)
    grads = [p.grad for p in ps]
    if not (holds(reads) and plan.holder() is not None):  # (no holder: objects, as before)
        fast = K.gather(plan, holder=plan.holder())
        assert fast is not None and isinstance(fast[0], list)
        assert [id(g) for g in fast[0]] == [id(g) for g in grads]
        return
    uses = [g._use_count() for g in grads]  # (a torch without it makes no holder: see _holding)
    fast = K.gather(plan, holder=plan.holder())
    assert fast is not None
    assert isinstance(fast[0], K._C.HeldGrads) and len(fast[0]) == len(ps)
    assert [g._use_count() for g in grads] == [u + 1 for u in uses]
    addresses = fast[1].tolist()
    again = K.gather(plan, holder=plan.holder())  # (the holder in use: a step within a step, say)
    assert again is not None and isinstance(again[0], list)
    assert [id(g) for g in again[0]] == [id(g) for g in grads]
    assert fast[1].tolist() == addresses  # (the read within left the first one's rows alone)
    dropped = weakref.ref(grads[0])
    grads[0] = None
    ps[0].grad = None
    del again
    assert dropped() is not None  # (held)
    fast[0].release()
    assert dropped() is None and len(fast[0]) == 0
    assert [g._use_count() for g in grads[1:]] == uses[1:]
    ps[0].grad = torch.zeros(ps[0].shape)
    opt.step()
    assert [g._use_count() for g in grads[1:]] == uses[1:]


def test_held_gradients_from_backward_are_let_go(copies: int, reads: tuple) -> None:
    """A gradient a backward left, held without a Python object: one more user while held, as
    many as before once released, after a step, after a step that raised, and after a pass
    that declined."""
    opt, ps, plan = stepped(copies=copies)
    if not hasattr(torch.Tensor, "_use_count"):  # (_holding cannot check the slots: no holder)
        assert plan.holder() is None
        _from_backward(ps)
        opt.step()
        return
    _from_backward(ps)
    held = plan.holder()
    fast = K.gather(plan, holder=held)
    assert fast is not None
    uses = [p.grad._use_count() for p in ps]  # (the getter makes the objects only now)
    if isinstance(fast[0], K._C.HeldGrads):
        assert holds(reads) and held.busy
        fast[0].release()
        assert not held.busy and [p.grad._use_count() for p in ps] == [u - 1 for u in uses]
    else:
        assert not (holds(reads) and held is not None)
    uses = [p.grad._use_count() for p in ps]
    _from_backward(ps)
    opt.step()
    assert [p.grad._use_count() for p in ps] == uses

    def fails(*args: object) -> None:
        raise RuntimeError("kernel")

    _from_backward(ps)
    algorithm = opt.algorithm
    object.__setattr__(algorithm, "run", fails)
    try:
        with pytest.raises(RuntimeError, match="kernel"):
            opt.step()
    finally:
        object.__delattr__(algorithm, "run")
    assert [p.grad._use_count() for p in ps] == uses
    assert held is None or not held.busy
    _from_backward(ps)
    EDITS["a non-contiguous gradient"](opt, ps)  # (the first row's gradient: the pass declines)
    assert K.gather(plan, holder=held) is None
    assert held is None or (not held.busy and len(held) == 0)
    assert [p.grad._use_count() for p in ps[1:]] == uses[1:]


def test_the_read_path_names_what_the_methods_allow() -> None:
    """``read_path`` (benchmark headers) says which reads a methods tuple gives the pass, and
    says "gradients held" where a plan on this torch gets a holder."""
    base = (*K.GATHER_BASE[:3], 0, (), None, None)
    assert K.read_path((*base, K.NO_SHIM, K.NO_LAYOUT)) == "Tensor methods"
    reader = (*base[:3], 1, *base[4:])
    assert K.read_path((*reader, K.NO_SHIM, K.NO_LAYOUT)) == "C address reader"
    shim = (1, 1, 1, 1, 16, (), ())
    assert K.read_path((*base, shim, K.NO_LAYOUT)) == "C shim"
    layout = (16, 16, 24, 40, 48, 144, 1)
    assert K.read_path((*base, shim, layout)) == "layout + C shim"
    assert K.read_path((*base, (*shim[:-1], (1,)), layout)) == "layout + C shim, gradients held"
    p = torch.nn.Parameter(torch.zeros(3))
    p.grad = torch.ones(3)
    opt = fo.AdamW([p])
    opt.step()
    plan = opt._fastopt_caches.plan  # type: ignore[attr-defined]
    assert ("gradients held" in K.read_path()) == (plan.holder() is not None)
