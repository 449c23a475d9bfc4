"""State made for many parameters at once (``_kernels.premade_state``): every tensor as torch's
own first step makes it, the step's tensors the ones made together, and torch's result where
only some of the parameters can be stepped natively."""

from __future__ import annotations

from typing import Any

import pytest
import torch

from fastopt import _kernels
from fastopt import optim as fo

pytest.importorskip("fastopt._C")

CASES = {
    "SGD": (fo.SGD, torch.optim.SGD, dict(lr=0.1, momentum=0.9, nesterov=True, weight_decay=0.01)),
    "Adam": (fo.Adam, torch.optim.Adam, dict(lr=0.05, weight_decay=0.01)),
    "AdamW amsgrad": (fo.AdamW, torch.optim.AdamW, dict(lr=0.05, weight_decay=0.1, amsgrad=True)),
}


def odd_params() -> list[torch.nn.Parameter]:
    """Parameters whose state is easy to make wrong: a scalar, an empty one, one whose dense
    strides are not the contiguous ones (channels-last over a single channel), other dtypes."""
    gen = torch.Generator().manual_seed(0)
    ts = [torch.randn(4, 3, generator=gen), torch.randn((), generator=gen), torch.zeros(0),
          torch.randn(4, 1, 3, 3, generator=gen).to(memory_format=torch.channels_last),
          torch.randn(6, generator=gen, dtype=torch.float64),
          torch.randn(5, generator=gen).to(torch.bfloat16),
          torch.randn(2, 2, 2, generator=gen)]
    assert all(t.is_contiguous() for t in ts) and ts[3].stride() == (9, 1, 3, 1)
    return [torch.nn.Parameter(t) for t in ts]


def tensor_facts(t: torch.Tensor) -> tuple:
    return (type(t), t.dtype, t.device, t.shape, t.stride(), t.storage_offset(), t.is_contiguous(),
            t.untyped_storage().nbytes(), t.requires_grad)


def steps(name: str, n: int = 2, **extra: Any) -> tuple[Any, Any, list, list]:
    """fastopt's and torch's optimizer over equal copies of ``odd_params``, ``n`` steps each
    with equal contiguous gradients."""
    ours_cls, ref_cls, opts = CASES[name]
    ps = odd_params()
    qs = [torch.nn.Parameter(p.detach().clone()) for p in ps]
    assert [q.stride() for q in qs] == [p.stride() for p in ps]
    ours, ref = ours_cls(ps, **opts, **extra), ref_cls(qs, foreach=False, **opts)
    gen = torch.Generator().manual_seed(1)
    for _ in range(n):
        for p, q in zip(ps, qs):
            g = torch.randn(p.shape, generator=gen, dtype=torch.float64)
            p.grad, q.grad = g.to(p.dtype), g.to(q.dtype)
        ours.step()
        ref.step()
    return ours, ref, ps, qs


def step_both(ours: Any, ref: Any, ps: list, qs: list, gen: torch.Generator, n: int) -> None:
    """``n`` steps of each optimizer, every one with the same new gradients on both sides."""
    for _ in range(n):
        for p, q in zip(ps, qs):
            p.grad = torch.randn(p.shape, generator=gen)
            q.grad = p.grad.clone()
        ours.step()
        ref.step()


def assert_state_as_torchs(ours: Any, ref: Any, ps: list, qs: list, order: bool = False) -> None:
    """The parameters as torch's, and each one's state: torch's keys in torch's order, each tensor
    with torch's facts and values (``order``: also the state's parameters in torch's order)."""
    if order:
        index = {id(t): i for ts in (ps, qs) for i, t in enumerate(ts)}
        assert [index[id(p)] for p in ours.state] == [index[id(q)] for q in ref.state]
    for p, q in zip(ps, qs):
        torch.testing.assert_close(p, q, rtol=1e-5, atol=1e-6)
        assert list(ours.state[p]) == list(ref.state[q])
        for key, t in ref.state[q].items():
            assert tensor_facts(ours.state[p][key]) == tensor_facts(t), key
            torch.testing.assert_close(ours.state[p][key], t, rtol=1e-5, atol=1e-6)


#: how new state tensors get their elements: through torch's C shim where found, else resize_
RESIZES = ["shim", "resize_"]


def resize_by(how: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """Make new state tensors' elements ``how`` (the shim's test skipped where torch lacks it)."""
    if how == "resize_":
        monkeypatch.setattr(_kernels, "RESIZE_FUNCTIONS", ())
    else:
        needs_shim_resize()


def needs_shim_resize() -> None:
    """Skip where this torch's C shim lacks the resize functions; where it has them, fastopt must
    have taken them (its probe agreed with ``Tensor.resize_``)."""
    if 0 in _kernels.shim_functions(_kernels._RESIZE_FUNCTIONS):
        pytest.skip("this torch exports no C shim resize (aoti_torch_cpu_resize_ and the rest)")
    assert _kernels.RESIZE_FUNCTIONS, "the shim's resize disagreed with Tensor.resize_ on a probe"


@pytest.mark.parametrize("how", RESIZES)
@pytest.mark.parametrize("name", list(CASES))
def test_state_made_together_is_the_state_torch_makes(name: str, how: str,
                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    resize_by(how, monkeypatch)
    calls: list[dict] = []
    premade = _kernels.premade_state

    def spy(*args: Any) -> dict:
        calls.append(premade(*args))
        return calls[-1]

    monkeypatch.setattr(_kernels, "premade_state", spy)
    ours, ref, ps, qs = steps(name)
    assert ours.fastopt_tier == "native"
    # (made once, for every parameter; nothing where this torch cannot tell whether a torch
    # function mode is on)
    assert len(calls) == 1 and len(calls[0]) == (0 if _kernels.torch_function_mode_on() else len(ps))
    for i, (p, q) in enumerate(zip(ps, qs)):
        mine, theirs = ours.state[p], ref.state[q]
        assert list(mine) == list(theirs)  # (the keys, in torch's order)
        for key, t in theirs.items():
            assert not calls[0] or mine[key] is calls[0][i][key], (i, key)  # the tensors made together
            assert tensor_facts(mine[key]) == tensor_facts(t), (i, key)
            torch.testing.assert_close(mine[key], t)  # (tolerances by dtype)
        torch.testing.assert_close(p, q)


def made_by_factory(kind: str, p: torch.Tensor) -> torch.Tensor:
    """What the factory a kind stands for makes for ``p``."""
    if kind == "zeros":
        return torch.zeros_like(p, memory_format=torch.preserve_format)
    if kind == "empty":
        return torch.empty_like(p, memory_format=torch.contiguous_format)
    assert kind == "step"
    return torch.tensor(0.0, dtype=_kernels.scalar_dtype())


@pytest.mark.skipif(_kernels.torch_function_mode_on(), reason="this torch cannot tell whether a mode is on")
@pytest.mark.parametrize("how", RESIZES)
@pytest.mark.parametrize("name", list(CASES))
def test_each_kind_is_the_tensor_its_factory_makes(name: str, how: str,
                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    resize_by(how, monkeypatch)
    ours_cls, _, opts = CASES[name]
    ps = odd_params()
    opt = ours_cls(ps, **opts)
    group = opt.param_groups[0]
    made = _kernels.premade_state(opt.algorithm, opt.state, ps, [group] * len(ps))
    assert len(made) == len(ps) and not opt.state  # (nothing put into the state)
    for i, p in enumerate(ps):
        kinds = dict(opt.algorithm.fresh(opt.state, p, group))
        assert list(made[i]) == list(kinds)
        for key, kind in kinds.items():
            want = made_by_factory(kind, p)
            assert tensor_facts(made[i][key]) == tensor_facts(want), (i, key)
            if kind != "empty":
                assert torch.equal(made[i][key], want), (i, key)
                assert not made[i][key].signbit().any(), (i, key)  # (+0, as zero_ writes)
            # The shim's resize and zeroing are no ops of torch's: the counter stays where the
            # factory leaves it, except where as_strided_ gave the tensor p's strides, and the
            # long way's Tensor.resize_ counts a change of size.
            if how == "shim" and want.stride() == torch.empty(want.shape).stride():
                assert made[i][key]._version == want._version, (i, key)


@pytest.mark.skipif(_kernels.torch_function_mode_on(), reason="this torch cannot tell whether a mode is on")
def test_nothing_is_made_together_under_a_torch_function_mode() -> None:
    ps = odd_params()
    opt = fo.AdamW(ps, lr=0.1)
    with torch.device("cpu"):  # (a device context is a torch function mode)
        assert _kernels.premade_state(opt.algorithm, opt.state, ps, opt.param_groups * len(ps)) == {}
    assert _kernels.premade_state(opt.algorithm, opt.state, ps, opt.param_groups * len(ps)) != {}


@pytest.mark.skipif(_kernels.torch_function_mode_on(), reason="this torch cannot tell whether a mode is on")
def test_parameters_with_state_get_none_made() -> None:
    ps = odd_params()
    opt = fo.Adam(ps, lr=0.1)
    opt.state[ps[0]]["step"] = torch.tensor(3.0)
    made = _kernels.premade_state(opt.algorithm, opt.state, ps, opt.param_groups * len(ps))
    assert 0 not in made and set(made) == set(range(1, len(ps)))
    assert list(opt.state) == [ps[0]]  # (asking touched no other parameter's entry)


@pytest.mark.parametrize("name", list(CASES))
def test_a_parameter_only_torch_can_step_among_new_ones(name: str) -> None:
    """State made together for the parameters before it, then torch's path for the step: the
    same parameters and state as torch's."""
    ours_cls, ref_cls, opts = CASES[name]
    gen = torch.Generator().manual_seed(2)
    ps = [torch.nn.Parameter(torch.randn(5, 4, generator=gen)) for _ in range(4)]
    qs = [torch.nn.Parameter(p.detach().clone()) for p in ps]
    ours, ref = ours_cls(ps, **opts), ref_cls(qs, foreach=False, **opts)
    buffer = "momentum_buffer" if name == "SGD" else "exp_avg"
    for opt, ts in ((ours, ps), (ref, qs)):  # a transposed buffer: only torch's path takes it
        opt.state[ts[2]][buffer] = torch.zeros(4, 5).t()
        if name != "SGD":
            opt.state[ts[2]].update(step=torch.tensor(0.0), exp_avg_sq=torch.zeros(5, 4))
            if opts.get("amsgrad"):
                opt.state[ts[2]]["max_exp_avg_sq"] = torch.zeros(5, 4)
    step_both(ours, ref, ps, qs, gen, 3)
    assert_state_as_torchs(ours, ref, ps, qs)


def test_the_shim_zeroes_only_what_fills_a_fresh_storage() -> None:
    """``_C.resize_like``'s zeroing writes +0 over every element (memory that held NaN included)
    and no byte past them: a tensor whose elements would not fill its storage exactly from its
    start (an element size that is not the tensor's, a storage larger from an earlier size) stops
    the pass there, before it is counted."""
    needs_shim_resize()
    fns = _kernels.RESIZE_FUNCTIONS

    def resize(targets: list, sources: list, itemsize: int) -> int:
        done, _ = _kernels._C.resize_like(targets, sources, _kernels.GATHER_METHODS, _kernels.PLAIN_TYPES,
                                          fns, itemsize)
        return done

    reused = torch.full((3, 4), float("nan")).resize_(0)  # (48 bytes of NaN, no element)
    fresh = [torch.empty(0).new_empty(0) for _ in range(2)]
    assert resize([reused, *fresh], [torch.zeros(3, 4), None, torch.zeros(5)], 4) == 3
    for t in (reused, *fresh):
        assert torch.equal(t, torch.zeros_like(t)) and not t.signbit().any()
    assert [t._version for t in fresh] == [0, 0]
    wrong = torch.empty(0).new_empty(0)
    assert resize([wrong], [torch.zeros(5)], 8) == 0  # (float32 elements are 4 bytes)
    larger = torch.full((3, 4), float("nan")).resize_(0)
    assert resize([larger], [torch.zeros(2)], 4) == 0  # (2 elements of a 12-element storage)
    whole = torch.empty(0).set_(larger.untyped_storage(), 0, (12,))
    assert torch.isnan(whole).all()  # (nothing written)


def test_the_shim_resizes_as_resize_and_stops_where_it_cannot() -> None:
    """``_C.resize_like`` against ``Tensor.resize_``: sizes, strides, storage; the ones whose strides
    differ from their source's named; a tensor it cannot take (a subclass) stops the pass there."""
    needs_shim_resize()

    class Other(torch.Tensor):
        pass

    sources = [torch.zeros(2, 3), None, torch.zeros(1, 4, 2, 2).to(memory_format=torch.channels_last),
               torch.zeros(5), torch.zeros(6)]
    targets = [torch.empty(0).new_empty(0) for _ in sources]
    targets[4] = targets[4].as_subclass(Other)
    done, restride = _kernels._C.resize_like(targets, sources, _kernels.GATHER_METHODS, _kernels.PLAIN_TYPES,
                                             _kernels.RESIZE_FUNCTIONS)
    assert (done, restride) == (4, [2])
    for t, s in zip(targets[:4], sources[:4]):
        want = torch.empty(0).resize_(() if s is None else s.shape)
        assert tensor_facts(t) == tensor_facts(want)
    assert targets[4].shape == (0,)


@pytest.mark.parametrize("was_on", [True, False])
def test_the_collector_waits_while_many_rows_get_state_and_is_left_as_it_was(
        was_on: bool, monkeypatch: pytest.MonkeyPatch) -> None:
    """A first step over at least ``GC_PAUSE_ROWS`` parameters makes their state with Python's
    cyclic garbage collector off (many long-lived objects would start full collections), and
    leaves the collector as it found it: on, or off where the user had turned it off."""
    import gc

    seen: list[bool] = []
    premade = _kernels.premade_state

    def spy(*args: Any) -> dict:
        seen.append(gc.isenabled())
        return premade(*args)

    monkeypatch.setattr(_kernels, "premade_state", spy)
    monkeypatch.setattr(_kernels, "GC_PAUSE_ROWS", 8)
    ps = [torch.nn.Parameter(torch.randn(3)) for _ in range(12)]
    for p in ps:
        p.grad = torch.randn(3)
    small = [torch.nn.Parameter(torch.randn(3)) for _ in range(4)]
    for p in small:
        p.grad = torch.randn(3)
    (gc.enable if was_on else gc.disable)()
    try:
        fo.AdamW(ps, lr=0.1).step()
        fo.AdamW(small, lr=0.1).step()  # (under GC_PAUSE_ROWS: left alone)
        assert seen == [False, was_on]
        assert gc.isenabled() == was_on
    finally:
        gc.enable()


def test_pauses_of_the_collector_nest_and_end_with_an_error() -> None:
    import gc

    gc.enable()
    with _kernels.gc_paused():
        with _kernels.gc_paused():
            assert not gc.isenabled()
        assert not gc.isenabled()  # (the outer pause still open)
    assert gc.isenabled()
    with pytest.raises(KeyError), _kernels.gc_paused():
        raise KeyError("x")
    assert gc.isenabled()
    with _kernels.gc_paused(on=False):
        assert gc.isenabled()


def test_each_parameters_state_dict_whatever_the_states_order() -> None:
    """``states_of``: each parameter's own state dict, whether the state holds exactly the
    parameters in their order (read off its values), in another order, or only some of them."""
    ps = [torch.nn.Parameter(torch.zeros(2)) for _ in range(3)]
    dicts = [{"k": i} for i in range(3)]
    cases = {"in order": [0, 1, 2], "another order": [2, 0, 1], "some": [1, 2], "none": []}
    for name, order in cases.items():
        state = {ps[i]: dicts[i] for i in order}
        got = _kernels.states_of(state, ps)
        want = [dicts[i] if i in order else _kernels.NO_STATE for i in range(3)]
        assert all(g is w for g, w in zip(got, want)) and len(got) == 3, name


#: state dicts a parameter may hold before its first native step, as prepare fills them: the
#: empty dict a look-up of ``opt.state[p]`` leaves, and SGD's with its buffer None
BEFORE = {"SGD": {"momentum_buffer": None}, "Adam": {}, "AdamW amsgrad": {}}


@pytest.mark.parametrize("name", list(CASES))
def test_state_dicts_there_before_the_first_step_are_filled_in_place(name: str) -> None:
    """Parameters whose state dict is there (empty, or SGD's with its buffer None) among ones
    without: each keeps its own dict object, every dict gets torch's keys in torch's order, and
    the state lists the parameters in the order torch's own step leaves."""
    ours_cls, ref_cls, opts = CASES[name]
    gen = torch.Generator().manual_seed(4)
    ps = [torch.nn.Parameter(torch.randn(3, 2, generator=gen)) for _ in range(6)]
    qs = [torch.nn.Parameter(p.detach().clone()) for p in ps]
    ours, ref = ours_cls(ps, **opts), ref_cls(qs, foreach=False, **opts)
    there = {}
    for i in (4, 1):
        there[i] = ours.state[ps[i]]
        there[i].update(BEFORE[name])
        ref.state[qs[i]].update(BEFORE[name])
    step_both(ours, ref, ps, qs, gen, 2)
    assert ours.fastopt_tier == "native"
    assert all(ours.state[ps[i]] is d for i, d in there.items())
    assert_state_as_torchs(ours, ref, ps, qs, order=True)


def test_groups_whose_state_has_other_keys_get_theirs_in_one_first_step() -> None:
    """AdamW groups with and without amsgrad, one after another: each parameter gets its own
    group's state, and the table points to it (the steps give torch's result)."""
    gen = torch.Generator().manual_seed(6)
    ps = [torch.nn.Parameter(torch.randn(4, generator=gen)) for _ in range(6)]
    qs = [torch.nn.Parameter(p.detach().clone()) for p in ps]

    def groups(ts: list) -> list[dict]:
        return [{"params": ts[0:2], "amsgrad": True}, {"params": ts[2:3]},
                {"params": ts[3:5], "amsgrad": True}, {"params": ts[5:]}]

    ours = fo.AdamW(groups(ps), lr=0.05, weight_decay=0.1)
    ref = torch.optim.AdamW(groups(qs), lr=0.05, weight_decay=0.1, foreach=False)
    step_both(ours, ref, ps, qs, gen, 3)
    assert ours.fastopt_tier == "native"
    assert_state_as_torchs(ours, ref, ps, qs, order=True)
