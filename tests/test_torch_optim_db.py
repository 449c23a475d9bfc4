"""torch's own optimizer test inputs, run against fastopt's SGD, Adam and AdamW.

torch ships its OptimizerInfo database in the wheel (``torch.testing._internal.common_optimizers``,
torch >= 2.2): for each optimizer, the constructor inputs its test_optim.py runs (every
option, tensor lr, and each implementation flag: foreach, fused, differentiable) and the
inputs that must raise. Each case here is one of test_optim.py's checks, run with torch's
class and with fastopt's on equal parameters: what torch's class does, fastopt's does (the
same parameters, state and state_dict after the same steps; the same error class and message
where torch's raises). torch 2.1 ships no database: there the same cases run over
:data:`OWN_INPUTS`, the same options written out.
"""

from __future__ import annotations

import copy
import re
from collections.abc import Callable
from types import SimpleNamespace
from typing import Any

import pytest
import torch
from torch.optim.optimizer import register_optimizer_step_post_hook, register_optimizer_step_pre_hook

from fastopt import optim as fo

from .test_faithful import assert_entries_equal, assert_state_dicts_equal, same_outcome

pytest.importorskip("fastopt._C")

PAIRS = {"SGD": (fo.SGD, torch.optim.SGD), "Adam": (fo.Adam, torch.optim.Adam),
         "AdamW": (fo.AdamW, torch.optim.AdamW)}


def _db() -> tuple[dict[str, list[tuple[str, dict]]], dict[str, list[Any]]] | None:
    """(constructor inputs, error inputs) per optimizer from torch's database, or None."""
    try:
        from torch.testing._internal import common_optimizers as co
    except ImportError:  # torch < 2.2 ships no database (or its test helpers are missing)
        return None
    infos = {i.optim_cls.__name__: i for i in co.optim_db if i.optim_cls.__name__ in PAIRS}
    inputs = {name: [(x.desc, x.kwargs) for x in
                     co._get_optim_inputs_including_global_cliquey_kwargs("cpu", torch.float32, info)]
              for name, info in infos.items()}
    errors = {name: list(info.optim_error_inputs_func("cpu", torch.float32)) if info.optim_error_inputs_func
              else [] for name, info in infos.items()}
    return inputs, errors


#: The options torch's database lists, for a torch that ships none (2.1).
OWN_INPUTS: dict[str, list[tuple[str, dict]]] = {
    "SGD": [("default", {}), ("non-default lr", {"lr": 1e-2}), ("tensor lr", {"lr": torch.tensor(0.001)}),
            ("non-zero weight_decay", {"weight_decay": 0.5}), ("momentum", {"momentum": 0.9}),
            ("maximize", {"weight_decay": 0.1, "maximize": True}),
            ("dampening", {"momentum": 0.9, "dampening": 0.5}),
            ("nesterov", {"momentum": 0.9, "nesterov": True, "weight_decay": 0.1})],
    "Adam": [("default", {}), ("non-default lr", {"lr": 0.01}), ("tensor lr", {"lr": torch.tensor(0.001)}),
             ("nonzero weight_decay", {"weight_decay": 0.1}),
             ("maximize", {"weight_decay": 0.1, "maximize": True}),
             ("amsgrad", {"weight_decay": 0.1, "amsgrad": True}), ("betas", {"betas": (0.5, 0.9)})],
}
OWN_INPUTS["AdamW"] = OWN_INPUTS["Adam"]
_FLAGS = ("foreach", "differentiable")
OWN_INPUTS = {name: [(f"{desc}{f' & {flag}' if flag else ''}", {**kw, **({flag: True} if flag else {})})
                     for desc, kw in cases for flag in ("", *_FLAGS)] for name, cases in OWN_INPUTS.items()}

def _own_errors() -> dict[str, list[Any]]:
    """Invalid options torch's constructors refuse, for a torch that ships no error table."""
    bad = {"SGD": [{"lr": -0.1}, {"momentum": -0.5}, {"weight_decay": -1.0},
                   {"momentum": 0.9, "nesterov": True, "dampening": 0.5}],
           "Adam": [{"lr": -0.1}, {"eps": -1.0}, {"betas": (1.0, 0.9)}, {"betas": (0.9, -0.1)},
                    {"weight_decay": -1.0}]}
    bad["AdamW"] = bad["Adam"]
    def entry(kw: dict) -> SimpleNamespace:
        spec = SimpleNamespace(params=None, kwargs=kw, desc=str(kw))
        return SimpleNamespace(optimizer_error_input=spec, error_on="construction", error_type=Exception)
    return {name: [entry(kw) for kw in kws] for name, kws in bad.items()}


_FOUND = _db()
INPUTS, ERROR_INPUTS = _FOUND if _FOUND is not None else (OWN_INPUTS, _own_errors())
CASES = [(name, desc, kwargs) for name in PAIRS for desc, kwargs in INPUTS[name]]
IDS = [f"{name}-{desc}" for name, desc, _ in CASES]


def _params(dtype: torch.dtype = torch.float32) -> list[torch.nn.Parameter]:
    gen = torch.Generator().manual_seed(0)
    return [torch.nn.Parameter(torch.randn(s, generator=gen, dtype=torch.float64).to(dtype))
            for s in [(3, 4), (5,), (2, 3), (1,)]]


def _groups(params: list, kwargs: dict) -> list[dict]:
    # two groups, the second with a weight decay of its own (lr kept as given: a tensor lr stays one)
    return [{"params": params[:2]}, {"params": params[2:], "weight_decay": 0.01}]


def _kwargs(kwargs: dict) -> dict:
    return {k: (v.clone() if isinstance(v, torch.Tensor) else v) for k, v in kwargs.items()}


def _pair(name: str, kwargs: dict, dtype: torch.dtype = torch.float32) -> tuple[Any, Any, list, list]:
    ours_cls, ref_cls = PAIRS[name]
    ps = _params(dtype)
    qs = [torch.nn.Parameter(p.detach().clone()) for p in ps]
    ours = ours_cls(_groups(ps, kwargs), **_kwargs(kwargs))
    return ours, ref_cls(_groups(qs, kwargs), **_kwargs(kwargs)), ps, qs


def _grads(ps: list, qs: list, seed: int) -> None:
    gen = torch.Generator().manual_seed(seed)
    for p, q in zip(ps, qs):
        g = torch.randn(p.shape, generator=gen, dtype=torch.float64)
        p.grad, q.grad = g.to(p.dtype), g.to(q.dtype)


def _steps(ours: Any, ref: Any, ps: list, qs: list, n: int, seed: int = 1) -> None:
    for i in range(n):
        _grads(ps, qs, seed + i)
        same_outcome(ours.step, ref.step)


def _same(ours: Any, ref: Any, ps: list, qs: list) -> None:
    for p, q in zip(ps, qs):
        torch.testing.assert_close(p.detach(), q.detach(), rtol=1e-5, atol=1e-6)
        if q in ref.state:
            assert_entries_equal(ours.state[p], ref.state[q])
        else:
            assert p not in ours.state
    assert_state_dicts_equal(ours.state_dict(), ref.state_dict())


def _detached_copy(obj: Any) -> Any:
    """A deep copy of a state dict whose tensors are detached (a differentiable optimizer's
    state is part of the autograd graph, which deepcopy refuses)."""
    if isinstance(obj, torch.Tensor):
        return obj.detach().clone()
    if isinstance(obj, dict):
        return {k: _detached_copy(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return type(obj)(_detached_copy(v) for v in obj)
    return copy.deepcopy(obj)


def _outcome_of(fn: Callable[[], Any]) -> Exception | None:
    try:
        fn()
    except Exception as err:
        return err
    return None


@pytest.mark.parametrize(("name", "desc", "kwargs"), CASES, ids=IDS)
def test_steps_as_torchs_class(name: str, desc: str, kwargs: dict) -> None:
    """test_optim's correctness cases: several steps, lr changed between them, a parameter
    without a gradient on one step; parameters, state and state_dict as torch's."""
    err = _outcome_of(lambda: PAIRS[name][1](_groups(_params(), kwargs), **_kwargs(kwargs)))
    if err is not None:  # torch's class refuses these options: so must fastopt's
        with pytest.raises(type(err), match=re.escape(str(err))):
            PAIRS[name][0](_groups(_params(), kwargs), **_kwargs(kwargs))
        return
    ours, ref, ps, qs = _pair(name, kwargs)
    _steps(ours, ref, ps, qs, 2)
    for a, b in zip(ours.param_groups, ref.param_groups):
        if not isinstance(b["lr"], torch.Tensor):
            a["lr"] = b["lr"] = b["lr"] * 0.5
    _grads(ps, qs, 7)
    ps[1].grad = qs[1].grad = None
    same_outcome(ours.step, ref.step)
    _steps(ours, ref, ps, qs, 2, seed=11)
    _same(ours, ref, ps, qs)


@pytest.mark.parametrize(("name", "desc", "kwargs"), CASES, ids=IDS)
def test_state_dict_round_trips_and_cross_loads(name: str, desc: str, kwargs: dict) -> None:
    """test_optim's state_dict cases: a state dict saved after some steps, loaded into a new
    optimizer of either class, steps on exactly as the original (both ways)."""
    if _outcome_of(lambda: PAIRS[name][1](_groups(_params(), kwargs), **_kwargs(kwargs))) is not None:
        return  # refused by torch's class: test_steps_as_torchs_class checks fastopt refuses it too
    for first, second in ((0, 1), (1, 0), (0, 0)):
        classes = PAIRS[name]
        ps = _params()
        qs = [torch.nn.Parameter(p.detach().clone()) for p in ps]
        a = classes[first](_groups(ps, kwargs), **_kwargs(kwargs))
        ref = PAIRS[name][1](_groups(qs, kwargs), **_kwargs(kwargs))
        _steps(a, ref, ps, qs, 2)
        saved = _detached_copy(a.state_dict())
        b = classes[second](_groups(ps, kwargs), **_kwargs(kwargs))
        b.load_state_dict(saved)
        _steps(b, ref, ps, qs, 2, seed=5)
        _same(b, ref, ps, qs)


@pytest.mark.parametrize(("name", "desc", "kwargs"), CASES, ids=IDS)
def test_hooks_fire_once_and_deepcopy_keeps_public_attrs(name: str, desc: str, kwargs: dict) -> None:
    """test_optim's step-hook cases (per optimizer and global, pre and post, with torch's own
    class constructed in the process) and its deepcopy-of-public-attributes case."""
    ours_cls, ref_cls = PAIRS[name]
    if _outcome_of(lambda: ref_cls(_groups(_params(), kwargs), **_kwargs(kwargs))) is not None:
        return
    ps, qs = _params(), _params()
    opt = ours_cls(_groups(ps, kwargs), **_kwargs(kwargs))
    ref = ref_cls(_groups(qs, kwargs), **_kwargs(kwargs))  # torch's class's step is hooked from now on
    calls: list[str] = []

    def record(what: str) -> Callable[..., None]:
        return lambda optimizer, *a: calls.append(what) if optimizer is opt else None
    handles = [opt.register_step_pre_hook(record("pre")), opt.register_step_post_hook(record("post")),
               register_optimizer_step_pre_hook(record("global pre")),
               register_optimizer_step_post_hook(record("global post"))]
    try:
        for p, q in zip(ps, qs):
            p.grad, q.grad = torch.ones_like(p), torch.ones_like(q)
        stepped = same_outcome(opt.step, ref.step) is not None
    finally:
        for h in handles:
            h.remove()
    # a step that raises (as torch's does) has run its pre-hooks only
    expected = ["global pre", "pre", "post", "global post"] if stepped else ["global pre", "pre"]
    assert calls == expected, calls
    copies = same_outcome(lambda: copy.deepcopy(opt), lambda: copy.deepcopy(ref))
    if copies is None:  # torch's refuses too (a differentiable optimizer's state is not a leaf)
        return

    def public(o: Any) -> set[str]:
        return {k for k in vars(o) if not k.startswith("_")}
    assert public(opt) == public(copies[0]) == public(ref) == public(copies[1])


@pytest.mark.parametrize(("name", "desc", "kwargs"), CASES, ids=IDS)
def test_complex_params_as_torchs_class(name: str, desc: str, kwargs: dict) -> None:
    """test_optim's complex cases: complex parameters step as torch's class steps them."""
    ours_cls, ref_cls = PAIRS[name]
    if _outcome_of(lambda: ref_cls(_groups(_params(), kwargs), **_kwargs(kwargs))) is not None:
        return
    ps = [torch.nn.Parameter(torch.randn(3, 2, dtype=torch.complex64)), torch.nn.Parameter(torch.randn(4))]
    qs = [torch.nn.Parameter(p.detach().clone()) for p in ps]
    ours, ref = ours_cls(ps, **_kwargs(kwargs)), ref_cls(qs, **_kwargs(kwargs))
    for i in range(3):
        gen = torch.Generator().manual_seed(i)
        for p, q in zip(ps, qs):
            g = torch.randn(p.shape, generator=gen, dtype=p.dtype)
            p.grad, q.grad = g.clone(), g.clone()
        same_outcome(ours.step, ref.step)
    for p, q in zip(ps, qs):
        torch.testing.assert_close(p.detach(), q.detach(), rtol=1e-5, atol=1e-6)


ERROR_CASES = [(name, e) for name in PAIRS for e in ERROR_INPUTS.get(name, [])]


@pytest.mark.parametrize(("name", "error"), ERROR_CASES,
                         ids=[f"{n}-{e.optimizer_error_input.desc}" for n, e in ERROR_CASES])
def test_error_inputs_raise_as_torchs_class(name: str, error: Any) -> None:
    """test_optim's error-input table: the same error class and message as torch's class,
    at construction or at the step as the table says."""
    ours_cls, ref_cls = PAIRS[name]
    spec = error.optimizer_error_input

    def run(cls: type) -> None:
        params = spec.params if spec.params is not None else _params()
        opt = cls(copy.copy(params) if isinstance(params, list) else params, **_kwargs(spec.kwargs))
        if getattr(error.error_on, "name", error.error_on) == "STEP_ERROR":
            opt.step()

    err = _outcome_of(lambda: run(ref_cls))
    assert err is not None and isinstance(err, error.error_type), (err, error.error_type)
    with pytest.raises(type(err), match=re.escape(str(err))):
        run(ours_cls)
