"""fastopt's optimizers through what torch lets a user do to an optimizer between steps.

Each case runs fastopt's class and torch's class side by side on equal parameters, applies
the same change to both after a few steps (a parameter replaced, state cleared, a state
tensor replaced, ``p.data`` reassigned, a dtype move, a reload, hooks), steps both twice
more, and compares parameters, every state entry and ``state_dict()``. torch's class is the
oracle: whatever it does on the installed torch, fastopt's must do too.
"""

from __future__ import annotations

import copy
from collections.abc import Callable
from typing import Any

import numpy as np
import pytest
import torch
from torch.optim.optimizer import register_optimizer_step_post_hook, register_optimizer_step_pre_hook

from fastopt import _kernels
from fastopt import optim as fo

pytest.importorskip("fastopt._C")

PAIRS = {"SGD": (fo.SGD, torch.optim.SGD), "Adam": (fo.Adam, torch.optim.Adam),
         "AdamW": (fo.AdamW, torch.optim.AdamW)}
OPTS = {"SGD": dict(lr=0.1, momentum=0.9, weight_decay=0.01), "Adam": dict(lr=0.05, weight_decay=0.01),
        "AdamW": dict(lr=0.05, weight_decay=0.1)}
SHAPES = [(4, 3), (5,), (2, 2, 2), (7,)]


class Twin:
    """fastopt's and torch's optimizer over two equal copies of the same parameters."""

    def __init__(self, name: str, opts: dict | None = None, shapes: list[tuple] = SHAPES,
                 groups: int = 2, dtype: torch.dtype = torch.float32) -> None:
        ours_cls, ref_cls = PAIRS[name]
        gen = torch.Generator().manual_seed(0)
        self.ps = [torch.nn.Parameter(torch.randn(s, generator=gen, dtype=dtype)) for s in shapes]
        self.qs = [torch.nn.Parameter(p.detach().clone()) for p in self.ps]
        opts = OPTS[name] if opts is None else opts

        def grouped(ts: list) -> list[dict]:
            return [{"params": ts[i::groups], **({"lr": opts["lr"] / 2} if i else {})} for i in range(groups)]

        self.ours = ours_cls(grouped(self.ps), **opts)
        self.ref = ref_cls(grouped(self.qs), foreach=False, **opts)
        self.gen = torch.Generator().manual_seed(1)

    def both(self, fn: Callable[[Any, list], None]) -> None:
        """Apply the same change to both sides: ``fn(optimizer, params)``."""
        fn(self.ours, self.ps)
        fn(self.ref, self.qs)

    def step(self, n: int = 1) -> None:
        """``n`` steps of both, with equal random gradients on every current parameter; where
        torch's step raises, fastopt's must raise the same class of error."""
        for _ in range(n):
            ours = [p for g in self.ours.param_groups for p in g["params"]]
            ref = [q for g in self.ref.param_groups for q in g["params"]]
            for p, q in zip(ours, ref):
                g = torch.randn(p.shape, generator=self.gen, dtype=torch.float64)
                p.grad, q.grad = g.to(p.dtype), g.to(q.dtype)
            same_outcome(self.ours.step, self.ref.step)

    def assert_same(self) -> None:
        """Parameters, state and state_dict() as torch's."""
        ours = [p for g in self.ours.param_groups for p in g["params"]]
        ref = [q for g in self.ref.param_groups for q in g["params"]]
        for p, q in zip(ours, ref):
            torch.testing.assert_close(p, q, rtol=1e-5, atol=1e-6)
        dicts = same_outcome(self.ours.state_dict, self.ref.state_dict)
        if dicts is not None:
            assert_state_dicts_equal(*dicts)
        for p, q in zip(ours, ref):
            assert (p in self.ours.state) == (q in self.ref.state)
            if q in self.ref.state:
                assert_entries_equal(self.ours.state[p], self.ref.state[q])


def same_outcome(ours: Callable[[], Any], ref: Callable[[], Any]) -> tuple[Any, Any] | None:
    """Call both; where torch's raises, fastopt's must raise the same class (then None)."""
    try:
        b = ref()
    except Exception as err:
        with pytest.raises(type(err)):
            ours()
        return None
    return ours(), b


def assert_entries_equal(a: dict, b: dict) -> None:
    """One parameter's state: same keys, same values (tensors: dtype, device, values)."""
    assert a.keys() == b.keys(), (sorted(a), sorted(b))
    for key in b:
        if isinstance(b[key], torch.Tensor):
            assert isinstance(a[key], torch.Tensor), key
            layout = (a[key].dtype, a[key].device, a[key].shape)
            assert layout == (b[key].dtype, b[key].device, b[key].shape), key
            torch.testing.assert_close(a[key], b[key], rtol=1e-5, atol=1e-6, msg=lambda m, k=key: f"{k}: {m}")
        else:
            assert a[key] == b[key], key


def assert_state_dicts_equal(a: dict, b: dict) -> None:
    """Two optimizer state dicts: the same entries, groups and hyperparameters."""
    assert a["state"].keys() == b["state"].keys(), (sorted(a["state"]), sorted(b["state"]))
    for k in b["state"]:
        assert_entries_equal(a["state"][k], b["state"][k])
    assert len(a["param_groups"]) == len(b["param_groups"])
    for ga, gb in zip(a["param_groups"], b["param_groups"]):
        # torch's side runs its single-tensor path (foreach=False), fastopt's its default
        assert {**ga, "foreach": None} == {**gb, "foreach": None}


# -- the mutations -----------------------------------------------------------------------

def _replace_param(opt: Any, ps: list) -> None:
    old = opt.param_groups[0]["params"][1]
    new = torch.nn.Parameter(old.detach() * 0.5 + 1.0)
    opt.param_groups[0]["params"][1] = new


def _clear_state(opt: Any, ps: list) -> None:
    opt.state.clear()


def _buffer(opt: Any, p: Any) -> str:
    """The per-element state tensor of ``p`` a case replaces (SGD's buffer, Adam's first moment)."""
    return "momentum_buffer" if "momentum_buffer" in opt.state[p] else "exp_avg"


def _replace_state_tensor(opt: Any, ps: list) -> None:
    for p in ps[:2]:
        opt.state[p][_buffer(opt, p)] = opt.state[p][_buffer(opt, p)].clone() * 2.0 + 0.5


def _replace_state_tensor_data(opt: Any, ps: list) -> None:
    t = opt.state[ps[0]][_buffer(opt, ps[0])]
    t.data = t.data.clone() * -1.0


def _to_double(opt: Any, ps: list) -> None:
    for p in ps:
        p.data = p.data.double()


def _replace_state_dict(opt: Any, ps: list) -> None:
    opt.state[ps[2]] = {k: (v.clone() * 0.5 if isinstance(v, torch.Tensor) and v.ndim else v)
                        for k, v in opt.state[ps[2]].items()}


def _reassign_data(opt: Any, ps: list) -> None:
    ps[0].data = ps[0].data.clone() + 1.0


def _remove_param(opt: Any, ps: list) -> None:
    del opt.param_groups[1]["params"][0]


def _swap_params_between_groups(opt: Any, ps: list) -> None:
    a, b = opt.param_groups[0]["params"], opt.param_groups[1]["params"]
    a[0], b[0] = b[0], a[0]


MUTATIONS = {
    "param replaced": _replace_param,
    "state cleared": _clear_state,
    "state dict of a parameter replaced": _replace_state_dict,
    "state tensor replaced": _replace_state_tensor,
    "state tensor's .data replaced": _replace_state_tensor_data,
    "p.data reassigned": _reassign_data,
    "parameter removed": _remove_param,
    "parameters swapped between groups": _swap_params_between_groups,
    "model moved to float64": _to_double,
}
#: after these, state and parameters differ in dtype: torch's path takes the step (or raises)
ON_TORCHS_TIER = {"model moved to float64"}


@pytest.mark.parametrize("mutation", list(MUTATIONS))
@pytest.mark.parametrize("name", list(PAIRS))
def test_mutation_between_steps_gives_torchs_result(name: str, mutation: str) -> None:
    twin = Twin(name)
    twin.step(3)
    twin.both(MUTATIONS[mutation])
    twin.step(2)
    twin.assert_same()
    assert mutation in ON_TORCHS_TIER or twin.ours.fastopt_tier == "native"


@pytest.mark.parametrize("name", list(PAIRS))
def test_state_cleared_then_saved_keeps_every_parameter(name: str) -> None:
    twin = Twin(name)
    twin.step(2)
    twin.both(_clear_state)
    twin.step(1)
    assert len(twin.ours.state_dict()["state"]) == len(twin.ref.state_dict()["state"]) == len(SHAPES)
    twin.assert_same()


@pytest.mark.parametrize("name", list(PAIRS))
def test_load_state_dict_and_add_param_group_between_steps(name: str) -> None:
    twin = Twin(name)
    twin.step(2)
    saved = copy.deepcopy(twin.ref.state_dict())
    twin.step(1)
    twin.ours.load_state_dict(copy.deepcopy(saved))  # (loading keeps the tensors it is given)
    twin.ref.load_state_dict(copy.deepcopy(saved))
    extra = [torch.nn.Parameter(torch.randn(3)), None]
    extra[1] = torch.nn.Parameter(extra[0].detach().clone())
    twin.ours.add_param_group({"params": [extra[0]], "lr": 0.01})
    twin.ref.add_param_group({"params": [extra[1]], "lr": 0.01})
    twin.step(2)
    twin.assert_same()


def test_sgd_without_momentum_keeps_the_state_torch_keeps() -> None:
    twin = Twin("SGD", dict(lr=0.1))
    twin.step(2)
    twin.assert_same()
    assert twin.ours.state_dict()["state"] == twin.ref.state_dict()["state"]


# -- flat-buffer mode ------------------------------------------------------------------

def test_flat_buffers_refuse_a_model_moved_to_another_dtype() -> None:
    twin = Twin("AdamW")
    twin.ours.use_flat_buffers()
    twin.step(2)
    for p in twin.ps:
        p.data = p.data.double()
    for p in twin.ps:
        p.grad = torch.ones_like(p)
    with pytest.raises(RuntimeError, match=r"flat buffers: parameter 0 .* no longer lives"):
        twin.ours.step()


def test_flat_buffers_refuse_a_parameter_without_the_groups_step_count() -> None:
    twin = Twin("AdamW")
    twin.ours.use_flat_buffers()
    twin.step(2)
    twin.both(_replace_param)
    for p in twin.ps:
        p.grad = torch.ones_like(p)
    before = [p.data_ptr() for p in twin.ps]
    with pytest.raises(ValueError, match="some parameters have optimizer state and others not"):
        twin.ours.step()
    assert [p.data_ptr() for p in twin.ps] == before  # refused before any parameter moved


@pytest.mark.parametrize("mutation", ["state cleared", "state dict of a parameter replaced",
                                      "parameters swapped between groups"])
def test_flat_buffers_follow_state_and_param_changes(mutation: str) -> None:
    twin = Twin("AdamW")
    twin.ours.use_flat_buffers()
    twin.step(2)
    twin.both(MUTATIONS[mutation])
    twin.step(2)
    ours = [p for g in twin.ours.param_groups for p in g["params"]]
    ref = [q for g in twin.ref.param_groups for q in g["params"]]
    for p, q in zip(ours, ref):
        torch.testing.assert_close(p, q, rtol=1e-5, atol=1e-6)


def test_flat_buffers_check_everything_when_gradients_bypass_the_buffers() -> None:
    """Gradients that did not accumulate into the buffers (set by hand, or made anew after
    ``model.zero_grad()``) make the step check every parameter, state entry and storage: a
    moved parameter is an error there even if its dtype and size are unchanged."""
    twin = Twin("SGD")
    twin.ours.use_flat_buffers()
    twin.step(2)
    twin.ps[3].data = twin.ps[3].data.clone()  # same size and dtype, another storage
    for p in twin.ps:
        p.grad = torch.ones_like(p)
    with pytest.raises(RuntimeError, match=r"flat buffers: parameter 3 .* no longer lives"):
        twin.ours.step()


# -- hooks and attributes --------------------------------------------------------------

def _fallback_params() -> list[torch.nn.Parameter]:
    """Parameters only torch's path takes (non-contiguous)."""
    return [torch.nn.Parameter(torch.randn(4, 3).t())]


@pytest.mark.parametrize("tier", ["native", "torch"])
@pytest.mark.parametrize("name", list(PAIRS))
def test_step_hooks_fire_once(name: str, tier: str) -> None:
    ours_cls, ref_cls = PAIRS[name]
    ref_cls([torch.nn.Parameter(torch.ones(2))], lr=0.1)  # torch's class constructed: its step is hooked
    params = _fallback_params() if tier == "torch" else [torch.nn.Parameter(torch.ones(3))]
    opt = ours_cls(params, lr=0.1)
    calls: list[str] = []
    handles = [opt.register_step_pre_hook(lambda *a: calls.append("pre")),
               opt.register_step_post_hook(lambda *a: calls.append("post")),
               register_optimizer_step_pre_hook(lambda *a: calls.append("global pre")),
               register_optimizer_step_post_hook(lambda *a: calls.append("global post"))]
    try:
        params[0].grad = torch.ones_like(params[0])
        opt.step()
    finally:
        for h in handles:
            h.remove()
    assert opt.fastopt_tier == tier
    assert sorted(calls) == ["global post", "global pre", "post", "pre"]


@pytest.mark.parametrize("name", list(PAIRS))
def test_a_step_leaves_no_attributes_torch_does_not(name: str) -> None:
    ours_cls, ref_cls = PAIRS[name]
    for params in (_fallback_params(), [torch.nn.Parameter(torch.ones(3))]):
        opt = ours_cls(params, lr=0.1)
        ref = ref_cls([torch.nn.Parameter(p.detach().clone()) for p in params], lr=0.1)
        params[0].grad = torch.ones_like(params[0])
        ref.param_groups[0]["params"][0].grad = torch.ones_like(params[0])
        opt.step()
        ref.step()
        public = {k for k in vars(opt) if not k.startswith("_")}
        assert public == {k for k in vars(ref) if not k.startswith("_")}
        assert opt.param_groups[0].keys() == ref.param_groups[0].keys()


# -- the native identity snapshot of the state ---------------------------------------------

def _snapshot_state() -> tuple[dict, list]:
    from collections import defaultdict
    ps = [torch.nn.Parameter(torch.zeros(2)) for _ in range(3)]
    state: dict = defaultdict(dict)
    for p in ps:
        state[p].update(step=torch.tensor(1.0), exp_avg=torch.zeros(2))
    return state, ps


STATE_EDITS: dict[str, Callable[[dict, list], None]] = {
    "cleared": lambda st, ps: st.clear(),
    "a dict replaced": lambda st, ps: st.__setitem__(ps[1], dict(st[ps[1]])),
    "an entry replaced": lambda st, ps: st[ps[2]].__setitem__("exp_avg", torch.zeros(2)),
    "an entry added": lambda st, ps: st[ps[0]].__setitem__("extra", torch.zeros(2)),
    "an entry removed": lambda st, ps: st[ps[0]].pop("step"),
    "a parameter added": lambda st, ps: st[torch.nn.Parameter(torch.zeros(1))].update(),
    "a parameter removed": lambda st, ps: st.pop(ps[2]),
    "a dict moved to another key": lambda st, ps: st.__setitem__(ps[0], st.pop(ps[2])),
    "entries reordered": lambda st, ps: st[ps[1]].__setitem__("step", st[ps[1]].pop("step")),
}


@pytest.mark.parametrize("edit", list(STATE_EDITS))
def test_native_state_snapshot_sees_every_replacement(edit: str) -> None:
    from fastopt import _C

    state, ps = _snapshot_state()
    snapshot = _C.state_addresses(state)
    held = [list(state.items()), [list(d.items()) for d in state.values()]]  # the objects kept alive
    assert _C.state_unchanged(state, snapshot)
    state[ps[0]]["exp_avg"].add_(1.0)  # in place: the same objects
    assert _C.state_unchanged(state, snapshot)
    STATE_EDITS[edit](state, ps)
    assert not _C.state_unchanged(state, snapshot)
    assert held


# -- cases found by trying to break the checks ---------------------------------------------

def _data_and_structure(opt: Any, ps: list) -> None:
    t = opt.state[ps[0]][_buffer(opt, ps[0])]
    t.data = t.data.clone()
    _ = opt.state[torch.nn.Parameter(torch.zeros(1))]  # a defaultdict read: the state grows too


MORE_MUTATIONS = {
    "a state tensor's .data replaced while the state grows": _data_and_structure,
    "a gradient left float32 by a float64 move": lambda opt, ps: setattr(ps[1], "data", ps[1].data.double()),
    "a parameter aliasing another's storage": lambda opt, ps: opt.param_groups[1]["params"].append(
        torch.nn.Parameter(ps[1].data)),
    "a tensor lr set on a group": lambda opt, ps: opt.param_groups[0].__setitem__("lr", torch.tensor(0.02)),
    "capturable set on a group": lambda opt, ps: opt.param_groups[0].__setitem__("capturable", True),
    "a parameter transposed in place": lambda opt, ps: _in_place_no_grad(ps[0].t_),
    # a state tensor's storage and address kept, its shape, strides or dtype changed in place
    "a state tensor transposed in place": lambda opt, ps: _state_tensor(opt, ps[0]).t_(),
    "a state tensor resized in place": lambda opt, ps: _state_tensor(opt, ps[1]).resize_(2),
    "a state tensor strided in place": lambda opt, ps: _state_tensor(opt, ps[1]).as_strided_((2,), (2,)),
    "a state tensor's .data reinterpreted as int32": lambda opt, ps: setattr(
        _state_tensor(opt, ps[1]), "data", _state_tensor(opt, ps[1]).data.view(torch.int32)),
    # (filled: the element a resize adds is uninitialised memory, different on the two sides)
    "a step counter resized in place": lambda opt, ps: _step_counter(
        opt, ps[1], lambda t: t.resize_(2).fill_(3.0)),
    "a step counter's .data reinterpreted as int32": lambda opt, ps: _step_counter(
        opt, ps[1], lambda t: setattr(t, "data", t.data.view(torch.int32))),
}


def _state_tensor(opt: Any, p: Any) -> torch.Tensor:
    return opt.state[p][_buffer(opt, p)]


def _step_counter(opt: Any, p: Any, fn: Callable[[torch.Tensor], Any]) -> None:
    """``fn`` on p's step counter, where its state has one (Adam's, not SGD's)."""
    if "step" in opt.state[p]:
        fn(opt.state[p]["step"])


def _in_place_no_grad(fn: Callable[[], Any]) -> None:
    with torch.no_grad():
        fn()


IN_PLACE_STATE_EDITS = [m for m in MORE_MUTATIONS if m.startswith(("a state tensor ", "a step counter"))
                        and "while the state grows" not in m]


@pytest.mark.parametrize("mutation", IN_PLACE_STATE_EDITS)
@pytest.mark.parametrize("name", ["SGD", "AdamW"])
def test_flat_buffers_refuse_state_edited_in_place(name: str, mutation: str) -> None:
    """A state tensor resized, restrided or retyped in place (its address kept) is seen when
    the gradients bypass the buffers, and refused by name: flat buffers hold state shaped and
    typed as its parameter, and one float32 step count."""
    twin = Twin(name)
    twin.ours.use_flat_buffers()
    twin.step(2)
    before = [p.detach().clone() for p in twin.ps]
    MORE_MUTATIONS[mutation](twin.ours, twin.ps)
    if name == "SGD" and "step counter" in mutation:  # (SGD keeps none: nothing changed)
        twin.ours.step()
        return
    for p in twin.ps:
        p.grad = torch.ones_like(p)
    with pytest.raises(ValueError, match=r"flat buffers (hold state shaped|keep one float32 count)"):
        twin.ours.step()
    for p, b in zip(twin.ps, before):
        assert torch.equal(p.detach(), b)  # refused before anything stepped


@pytest.mark.parametrize("mutation", list(MORE_MUTATIONS))
@pytest.mark.parametrize("name", list(PAIRS))
def test_more_mutations_give_torchs_result(name: str, mutation: str) -> None:
    if mutation == "capturable set on a group" and name == "SGD":
        pytest.skip("no oracle on this torch: SGD has no capturable")
    twin = Twin(name)
    twin.step(3)
    twin.both(MORE_MUTATIONS[mutation])
    if mutation == "a gradient left float32 by a float64 move":  # step with the gradients as left
        if same_outcome(twin.ours.step, twin.ref.step) is not None:
            twin.assert_same()
        return
    twin.step(2)
    twin.assert_same()


@pytest.mark.parametrize("when", ["from the first step", "after p.data ="])
@pytest.mark.parametrize("name", list(PAIRS))
def test_parameters_on_the_same_memory_step_one_after_another(name: str, when: str) -> None:
    """Two parameter objects over the same elements (``Parameter(a.data)``, a tied copy, or
    ``p.data =`` another's data after some native steps) step one after the other as torch's
    loop does, each reading what the one before wrote: never in one native pass, which would
    read both before either wrote."""
    ours_cls, ref_cls = PAIRS[name]
    gen = torch.Generator().manual_seed(3)
    a, c = (torch.nn.Parameter(torch.randn(6, 4, generator=gen)) for _ in range(2))
    b = torch.nn.Parameter(a.data if when == "from the first step" else torch.randn(6, 4, generator=gen))
    ps = [a, b, c]
    qs = [torch.nn.Parameter(p.detach().clone()) for p in ps]
    if when == "from the first step":
        qs[1] = torch.nn.Parameter(qs[0].data)
    ours, ref = ours_cls(ps, **OPTS[name]), ref_cls(qs, foreach=False, **OPTS[name])
    for step in range(4):
        if step == 2 and when == "after p.data =":
            assert ours.fastopt_tier == "native"
            c.data, qs[2].data = a.data, qs[0].data
        for p, q in zip(ps, qs):
            g = torch.randn(6, 4, generator=gen)
            p.grad, q.grad = g.clone(), g
        ours.step()
        ref.step()
        for p, q in zip(ps, qs):
            torch.testing.assert_close(p, q, rtol=1e-6, atol=1e-6)
    assert ours.fastopt_tier == "torch"


@pytest.mark.parametrize("tied", [(0, 999), (500, 3), (998, 999)])
def test_a_tie_anywhere_among_many_parameters_keeps_them_off_one_pass(tied: tuple[int, int]) -> None:
    """The plan's check that no two parameters start at the same address finds a tie wherever
    the two stand in a long list (first and last, out of order, side by side)."""
    gen = torch.Generator().manual_seed(5)
    ps = [torch.nn.Parameter(torch.randn(3, generator=gen)) for _ in range(1000)]
    ps[tied[1]] = torch.nn.Parameter(ps[tied[0]].data)
    qs = [torch.nn.Parameter(p.detach().clone()) for p in ps]
    qs[tied[1]] = torch.nn.Parameter(qs[tied[0]].data)
    ours, ref = fo.SGD(ps, lr=0.1, momentum=0.9), torch.optim.SGD(qs, lr=0.1, momentum=0.9, foreach=False)
    for _ in range(2):
        for p, q in zip(ps, qs):
            g = torch.randn(3, generator=gen)
            p.grad, q.grad = g.clone(), g
        ours.step()
        ref.step()
    assert ours.fastopt_tier == "torch"
    for p, q in zip(ps, qs):
        torch.testing.assert_close(p, q, rtol=1e-6, atol=1e-6)


def test_all_distinct_compares_every_value_with_every_other() -> None:
    values = np.array([7, 3, 2**63 + 5, 11, 2**40], dtype=np.uint64)
    assert all(map(_kernels.all_distinct, (values, values[:0], values[:1])))
    for i, j in ((0, 4), (4, 0), (1, 2), (2, 3)):
        tied = values.copy()
        tied[j] = tied[i]
        assert not _kernels.all_distinct(tied)


def test_sgd_first_step_buffers_do_not_reach_torchs_path() -> None:
    """A first-step momentum buffer made for the kernel, then another parameter sends the step
    to torch's path: the buffer must not be there for torch to read."""
    a, b = torch.nn.Linear(4, 3), torch.nn.Linear(4, 3)
    b.load_state_dict(a.state_dict())
    ours = fo.SGD([{"params": [a.weight]}, {"params": [a.bias]}], lr=0.1, momentum=0.9, dampening=0.5)
    ref = torch.optim.SGD([{"params": [b.weight]}, {"params": [b.bias]}], lr=0.1, momentum=0.9, dampening=0.5,
                          foreach=False)
    for m, o in ((a, ours), (b, ref)):
        m.bias.grad = torch.ones(3)  # only the bias has state after this step
        o.step()
        m.double()
        o.zero_grad()
        m(torch.ones(2, 4, dtype=torch.float64)).sum().backward()
        o.step()
    assert ours.fastopt_tier == "torch"
    torch.testing.assert_close(a.weight, b.weight)
    buffers = ours.state[a.weight]["momentum_buffer"], ref.state[b.weight]["momentum_buffer"]
    torch.testing.assert_close(*buffers)


def test_a_copy_of_a_flat_optimizer_steps_as_torch() -> None:
    twin = Twin("AdamW")
    twin.ours.use_flat_buffers()
    twin.step(2)
    ours, ref = copy.deepcopy((twin.ours, twin.ps)), copy.deepcopy((twin.ref, twin.qs))
    twin.ours, twin.ps, twin.ref, twin.qs = ours[0], ours[1], ref[0], ref[1]
    twin.step(2)
    twin.assert_same()


def test_flat_load_of_state_it_cannot_hold_warns_and_steps_by_default() -> None:
    twin = Twin("Adam", shapes=[(3,), (4,)], groups=1)
    twin.ps[1].grad = twin.qs[1].grad = None
    twin.ps[0].grad, twin.qs[0].grad = torch.ones(3), torch.ones(3)
    twin.ours.step()
    twin.ref.step()
    twin.step(1)  # step counts now 2 and 1
    fresh = fo.Adam(twin.ps, lr=0.05, weight_decay=0.01)
    for p in twin.ps:
        p.grad = torch.zeros_like(p)
    fresh.step()
    fresh.use_flat_buffers()
    with pytest.warns(UserWarning, match="cannot be laid out in flat buffers"):
        fresh.load_state_dict(copy.deepcopy(twin.ref.state_dict()))
    assert fresh.flat_buffers is None
    assert [float(fresh.state[p]["step"]) for p in twin.ps] == [2.0, 1.0]


#: over 4,096 parameters and state tensors: the native pass reads them on two threads
LARGE_SHAPES = SHAPES * 400


@pytest.mark.parametrize("mutation", ["state tensor replaced", "state dict of a parameter replaced",
                                      "state tensor's .data replaced", "state cleared", "p.data reassigned",
                                      "a state tensor resized in place",
                                      "a step counter's .data reinterpreted as int32"])
@pytest.mark.parametrize("name", ["SGD", "AdamW"])
def test_a_large_model_follows_mutations_as_torch(name: str, mutation: str) -> None:
    twin = Twin(name, shapes=LARGE_SHAPES)
    twin.step(2)
    twin.both({**MUTATIONS, **MORE_MUTATIONS}[mutation])
    twin.step(2)
    twin.assert_same()
