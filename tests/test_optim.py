"""Numerics of fastopt.optim against torch.optim (foreach=False, the single-tensor reference).

Parameters AND optimizer state are compared after several steps, over the option
matrix, with shapes including zero-size and odd lengths, lr changed between
steps, grads missing for some parameters, several param groups, and every
built-in instruction-set variant of the native kernel.
"""

from __future__ import annotations

from typing import Any

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import fastopt
from fastopt import _kernels, _tiers
from fastopt import optim as fo

from .numerics import assert_few_differ
from .torch_release import needs_cpu_scaler, needs_fused_on_cpu, skip_without_oracle

_C = pytest.importorskip("fastopt._C")

PAIRS = {"SGD": (fo.SGD, torch.optim.SGD), "Adam": (fo.Adam, torch.optim.Adam),
         "AdamW": (fo.AdamW, torch.optim.AdamW)}
#: fp32's atol: with lr 0.3 and L2 decay 0.3 the parameters' last-bit differences from torch's
#: feed back into the gradient through the decay, so after 5 steps a moment that cancels to about
#: 0.01 from terms near 3 differs by up to 1.33e-6 (Adam, betas (0.3, 0.5), maximize: the worst
#: over every option and two seeds); 4e-6 leaves a margin for the other shapes drawn.
TOL = {torch.float32: dict(rtol=1e-5, atol=4e-6), torch.float64: dict(rtol=1e-12, atol=1e-14)}
#: bf16/fp16: fastopt computes in float and rounds once per stored value, like the vectorised body
#: of torch's kernels; only the elements torch handles in its scalar tail (it rounds every
#: intermediate there) may differ. After a few steps that is well under 0.1% of the elements.
LOW_PRECISION_SHARE = 1e-3
SHAPES = [(0,), (1,), (22,), (7, 3), (33_000,), (2, 3, 5), ()]


def _isas() -> list[str]:
    out = []
    current = _C.cpu_isa()
    for isa in ("baseline", "avx2", "avx512"):
        try:
            _C.set_cpu_isa(isa)
            out.append(isa)
        except ValueError:
            pass
    _C.set_cpu_isa(current)
    return out


def options(name: str) -> st.SearchStrategy[dict]:
    """Hypothesis strategy over every option of one optimizer."""
    common = dict(lr=st.sampled_from([1e-3, 0.05, 0.3]), weight_decay=st.sampled_from([0.0, 1e-2, 0.3]),
                  maximize=st.booleans())
    if name == "SGD":
        return st.fixed_dictionaries(dict(common, momentum=st.sampled_from([0.0, 0.9]),
                                          dampening=st.sampled_from([0.0, 0.3]), nesterov=st.booleans())
                                     ).filter(lambda o: not o["nesterov"] or (o["momentum"] > 0
                                                                              and o["dampening"] == 0))
    return st.fixed_dictionaries(dict(common, betas=st.sampled_from([(0.9, 0.999), (0.3, 0.5), (0.0, 0.99)]),
                                      eps=st.sampled_from([1e-8, 1e-3]), amsgrad=st.booleans()))


def make_params(shapes: list[tuple], dtype: torch.dtype, seed: int) -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(s, generator=g, dtype=torch.float64).to(dtype).requires_grad_() for s in shapes]


def run_pair(name: str, opts: dict, dtype: torch.dtype, shapes: list[tuple], steps: int = 5,
             seed: int = 0, groups: int = 2, skip_grad: int | None = None) -> tuple[Any, Any, list, list]:
    ours_cls, ref_cls = PAIRS[name]
    ps = make_params(shapes, dtype, seed)
    qs = [p.detach().clone().requires_grad_() for p in ps]

    def grouped(ts: list) -> list[dict]:
        return [{"params": ts[i::groups], **({"lr": opts["lr"] * 0.5} if i else {})} for i in range(groups)]

    ours = ours_cls(grouped(ps), **opts)
    ref = ref_cls(grouped(qs), foreach=False, **opts)
    gen = torch.Generator().manual_seed(seed + 1)
    for step in range(steps):
        for i, (p, q) in enumerate(zip(ps, qs)):
            if skip_grad is not None and i == skip_grad and step % 2 == 0:
                p.grad = q.grad = None
                continue
            g = torch.randn(p.shape, generator=gen, dtype=torch.float64).to(dtype)
            p.grad, q.grad = g.clone(), g.clone()
        if step == 2:  # a scheduler changing lr between steps
            for a, b in zip(ours.param_groups, ref.param_groups):
                a["lr"] = b["lr"] = b["lr"] * 0.1
        ours.step()
        ref.step()
    return ours, ref, ps, qs


def assert_same(ours: Any, ref: Any, ps: list, qs: list, dtype: torch.dtype) -> None:
    """Parameters and every state entry equal torch's: within ``TOL`` for fp32/fp64; for bf16/fp16
    at most ``LOW_PRECISION_SHARE`` of all elements differ at all (per state key, over all tensors)."""
    for p, q in zip(ps, qs):
        a, b = ours.state.get(p, {}), ref.state.get(q, {})
        assert a.keys() == b.keys()
        for k in a:
            if a[k] is None:
                assert b[k] is None
            else:
                assert a[k].dtype == b[k].dtype, k
    keys = sorted({k for p in ps for k, v in ours.state.get(p, {}).items() if torch.is_tensor(v)})
    pairs = {"params": list(zip(ps, qs)),
             **{k: [(ours.state[p][k], ref.state[q][k]) for p, q in zip(ps, qs) if k in ours.state.get(p, {})]
                for k in keys}}
    for what, tensors in pairs.items():
        if dtype in TOL:
            for a, b in tensors:
                torch.testing.assert_close(a, b, equal_nan=True, **TOL[dtype],
                                           msg=lambda m, w=what: f"{w}: {m}")
        else:
            assert_few_differ(tensors, LOW_PRECISION_SHARE, what=what)


@pytest.mark.parametrize("name", list(PAIRS))
@settings(max_examples=60, deadline=None)
@given(data=st.data())
def test_matches_torch_fp32(name: str, data: st.DataObject) -> None:
    opts = data.draw(options(name))
    shapes = data.draw(st.lists(st.sampled_from(SHAPES), min_size=1, max_size=6))
    ours, ref, ps, qs = run_pair(name, opts, torch.float32, shapes, skip_grad=0)
    assert ours.fastopt_tier == "native"
    assert_same(ours, ref, ps, qs, torch.float32)


@pytest.mark.parametrize("dtype", [torch.float64, torch.bfloat16, torch.float16])
@pytest.mark.parametrize("name", list(PAIRS))
@pytest.mark.parametrize(("lr", "weight_decay"), [(0.01, 0.01), (0.05, 0.3)])
def test_matches_torch_other_dtypes(name: str, dtype: torch.dtype, lr: float, weight_decay: float) -> None:
    skip_without_oracle(PAIRS[name][1], dtype)
    opts = dict(lr=lr, weight_decay=weight_decay)
    if name == "SGD":
        opts.update(momentum=0.9, nesterov=True)
    else:
        opts.update(amsgrad=True)
    ours, ref, ps, qs = run_pair(name, opts, dtype, [*SHAPES, (70_001,)])
    assert ours.fastopt_tier == "native"
    assert_same(ours, ref, ps, qs, dtype)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
@pytest.mark.parametrize("name", list(PAIRS))
def test_low_precision_step_is_within_ulps_of_torch(name: str, dtype: torch.dtype) -> None:
    """One step from the same state: nearly every element bit-identical to torch's, the rest a
    few ulps away (torch's scalar tail rounds each intermediate; with cancellation that can reach
    ten ulps of a small result)."""
    skip_without_oracle(PAIRS[name][1], dtype)
    opts: dict = dict(lr=0.05, weight_decay=0.3)
    opts.update(momentum=0.9, nesterov=True) if name == "SGD" else opts.update(betas=(0.8, 0.99))
    ours, ref, ps, qs = run_pair(name, opts, dtype, [(70_001,), (33, 7), (5,)], steps=1)
    assert_few_differ(list(zip(ps, qs)), LOW_PRECISION_SHARE, max_ulps=16, what="params")
    for key in ours.state[ps[0]]:
        if key != "step":
            assert_few_differ([(ours.state[p][key], ref.state[q][key]) for p, q in zip(ps, qs)],
                              LOW_PRECISION_SHARE, max_ulps=16, what=key)


SGD_OPTIONS = [dict(lr=0.1), dict(lr=0.1, momentum=0.9),
               dict(lr=0.1, momentum=0.9, dampening=0.3, weight_decay=1e-4),
               dict(lr=0.05, momentum=0.9, nesterov=True, weight_decay=0.3, maximize=True)]


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("opts", SGD_OPTIONS)
def test_sgd_is_bit_identical_to_torch(opts: dict, dtype: torch.dtype) -> None:
    """Every fused multiply-add sits where torch's add-with-alpha has one: same bits."""
    ours, ref, ps, qs = run_pair("SGD", opts, dtype, [(33_000,), (7, 3), (5,)], steps=4, skip_grad=1)
    assert ours.fastopt_tier == "native"
    for p, q in zip(ps, qs):
        assert torch.equal(p, q)
        if "momentum" in opts:
            assert torch.equal(ours.state[p]["momentum_buffer"], ref.state[q]["momentum_buffer"])


@pytest.mark.parametrize("betas", [(0.9, 0.999), (0.3, 0.5)])  # both lerp formulas
@pytest.mark.parametrize("name", ["Adam", "AdamW"])
def test_adam_moments_are_bit_identical_to_torch(name: str, betas: tuple[float, float]) -> None:
    """exp_avg (lerp) and exp_avg_sq (mul_ + addcmul_) match torch bit for bit; parameters
    only differ through torch's inexactly rounded sqrt, by an ulp or two. (With L2 decay the
    gradient reads the parameter, so Adam runs without it here.)"""
    opts = dict(lr=1e-3, weight_decay=0.01 if name == "AdamW" else 0.0, betas=betas, amsgrad=True)
    ours, ref, ps, qs = run_pair(name, opts, torch.float32, [(33_000,), (7, 3)], steps=4)
    for p, q in zip(ps, qs):
        for key in ("exp_avg", "exp_avg_sq", "max_exp_avg_sq"):
            assert torch.equal(ours.state[p][key], ref.state[q][key]), key
        assert (p != q).float().mean().item() < 3e-3  # 0.006% (AVX-512) to 0.13% (AVX2) seen
        eps = torch.finfo(torch.float32).eps
        torch.testing.assert_close(p, q, rtol=4 * eps, atol=4 * eps * 1e-3)


@pytest.mark.parametrize("name", list(PAIRS))
def test_every_isa_gives_identical_bits(name: str) -> None:
    isas = _isas()
    current = _C.cpu_isa()
    results = []
    try:
        for isa in isas:
            _C.set_cpu_isa(isa)
            opts = dict(lr=0.01, weight_decay=0.1) if name != "SGD" else dict(lr=0.1, momentum=0.9)
            _, _, ps, _ = run_pair(name, opts, torch.float32, [*SHAPES, (70001,)])
            results.append([p.detach().clone() for p in ps])
    finally:
        _C.set_cpu_isa(current)
    for other in results[1:]:
        for a, b in zip(results[0], other):
            assert torch.equal(a, b)


@pytest.mark.parametrize("name", list(PAIRS))
def test_state_dict_round_trips_with_torch(name: str) -> None:
    opts = dict(lr=0.01, momentum=0.9) if name == "SGD" else dict(lr=0.01)
    ours, ref, ps, qs = run_pair(name, opts, torch.float32, [(3, 4), (5,)], steps=3)
    ours_cls, ref_cls = PAIRS[name]
    # torch's state into fastopt, fastopt's state into torch; both continue identically.
    a = ours_cls([{"params": ps[0::2]}, {"params": ps[1::2], "lr": opts["lr"] * 0.5}], **opts)
    b = ref_cls([{"params": qs[0::2]}, {"params": qs[1::2], "lr": opts["lr"] * 0.5}], foreach=False, **opts)
    a.load_state_dict(ref.state_dict())
    b.load_state_dict(ours.state_dict())  # fastopt -> torch
    for p, q in zip(ps, qs):
        g = torch.randn_like(p)
        p.grad, q.grad = g.clone(), g.clone()
    with torch.no_grad():
        for p, q in zip(ps, qs):
            q.copy_(p)
    a.step()
    b.step()
    assert a.fastopt_tier == "native"
    for p, q in zip(ps, qs):
        torch.testing.assert_close(p, q, rtol=1e-5, atol=1e-6)
    assert type(a.state_dict()["state"][0]) is dict


@needs_cpu_scaler
@pytest.mark.parametrize("name", list(PAIRS))
def test_grad_scaler_unscales_and_skips_inf(name: str) -> None:
    ours_cls, ref_cls = PAIRS[name]
    torch.manual_seed(0)
    ps = [torch.randn(9, requires_grad=True), torch.randn(4, 4, requires_grad=True)]
    qs = [p.detach().clone().requires_grad_() for p in ps]
    opts = dict(lr=0.05, momentum=0.9) if name == "SGD" else dict(lr=0.05)
    ours, ref = ours_cls(ps, **opts), ref_cls(qs, foreach=False, **opts)
    s1 = torch.amp.GradScaler("cpu", init_scale=1024.0)
    s2 = torch.amp.GradScaler("cpu", init_scale=1024.0)
    for step in range(4):
        for opt, scaler, ts in ((ours, s1, ps), (ref, s2, qs)):
            opt.zero_grad()
            loss = sum((t * (i + 1)).sum() ** 2 for i, t in enumerate(ts))
            if step == 1:
                loss = loss * float("inf")  # this step must be skipped
            scaler.scale(loss).backward()
            scaler.step(opt)
            scaler.update()
        for p, q in zip(ps, qs):
            torch.testing.assert_close(p, q, rtol=1e-5, atol=1e-6)
    assert s1.get_scale() == s2.get_scale()
    assert ours.fastopt_tier == "native"


def test_sgd_sparse_grads_match_torch() -> None:
    emb_a, emb_b = torch.nn.Embedding(10, 3, sparse=True), torch.nn.Embedding(10, 3, sparse=True)
    emb_b.load_state_dict(emb_a.state_dict())
    a = fo.SGD(emb_a.parameters(), lr=0.1)
    b = torch.optim.SGD(emb_b.parameters(), lr=0.1)
    idx = torch.tensor([1, 2, 2, 7])
    for emb, opt in ((emb_a, a), (emb_b, b)):
        emb(idx).sum().backward()
        opt.step()
    torch.testing.assert_close(emb_a.weight, emb_b.weight)


def test_adam_rejects_sparse_grads_like_torch() -> None:
    emb = torch.nn.Embedding(10, 3, sparse=True)
    opt = fo.Adam(emb.parameters())
    emb(torch.tensor([1])).sum().backward()
    with pytest.raises(RuntimeError, match="does not support sparse gradients"):
        opt.step()


@pytest.mark.parametrize("name", list(PAIRS))
def test_non_contiguous_and_complex_fall_back_to_torch(name: str) -> None:
    ours_cls, ref_cls = PAIRS[name]
    p = torch.nn.Parameter(torch.randn(4, 6).t())
    q = torch.nn.Parameter(p.detach().clone())
    assert not p.is_contiguous()
    ours, ref = ours_cls([p], lr=0.01), ref_cls([q], lr=0.01, foreach=False)
    for _ in range(3):
        g = torch.randn(p.shape)
        p.grad, q.grad = g.clone(), g.clone()
        ours.step()
        ref.step()
    assert ours.fastopt_tier == "torch"
    torch.testing.assert_close(p, q)


def test_param_data_replaced_between_steps() -> None:
    p = torch.nn.Parameter(torch.randn(5))
    q = torch.nn.Parameter(p.detach().clone())
    ours, ref = fo.AdamW([p], lr=0.1), torch.optim.AdamW([q], lr=0.1, foreach=False)
    for step in range(3):
        if step == 1:
            p.data = p.data.clone()  # new storage, same Parameter object
        p.grad = q.grad = torch.ones(5)
        ours.step()
        ref.step()
    torch.testing.assert_close(p, q)


def test_add_param_group_between_steps() -> None:
    a, b = torch.nn.Parameter(torch.ones(3)), torch.nn.Parameter(torch.ones(2))
    c, d = torch.nn.Parameter(torch.ones(3)), torch.nn.Parameter(torch.ones(2))
    ours, ref = fo.SGD([a], lr=0.1, momentum=0.9), torch.optim.SGD([c], lr=0.1, momentum=0.9)
    for step in range(3):
        if step == 1:
            ours.add_param_group({"params": [b], "lr": 0.5})
            ref.add_param_group({"params": [d], "lr": 0.5})
        for t in (a, b, c, d):
            t.grad = torch.full_like(t, 0.5)
        ours.step()
        ref.step()
    torch.testing.assert_close(a, c)
    torch.testing.assert_close(b, d)


def test_registered_as_torch_names() -> None:
    for name, (ours, theirs) in PAIRS.items():
        assert fastopt.OPTIMIZERS.get(name) is ours
        assert issubclass(ours, theirs)


def test_kernel_rejects_bad_shapes_and_null_pointers() -> None:
    import numpy as np

    with pytest.raises(ValueError, match="expected ptrs"):
        _C.adam_step(np.zeros((1, 5), np.uint64), np.ones(1, np.int64), np.zeros(1, np.int32),
                     np.zeros(1, np.int32), np.zeros((1, 5)), 0.0)
    with pytest.raises(ValueError, match="tensor 0: null param pointer"):
        _C.sgd_step(np.zeros((1, 3), np.uint64), np.ones(1, np.int64), np.zeros(1, np.int32),
                    np.zeros(1, np.int32), np.zeros((1, 4)), 0.0)
    with pytest.raises(ValueError, match="unsupported dtype code 9"):
        _C.sgd_step(np.ones((1, 3), np.uint64), np.ones(1, np.int64), np.full(1, 9, np.int32),
                    np.zeros(1, np.int32), np.zeros((1, 4)), 0.0)


@needs_cpu_scaler
@needs_fused_on_cpu
@pytest.mark.parametrize("name", list(PAIRS))
def test_device_path_uses_torch_fused_kernels(name: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """Tensors the native kernel does not take (e.g. CUDA) step through torch's fused kernel
    on the merged groups. Exercised on CPU by routing CPU tensors to that path."""
    ours_cls, ref_cls = PAIRS[name]
    monkeypatch.setattr(_kernels, "group_native", lambda group, params_checked=False: False)
    monkeypatch.setattr(_tiers, "TORCH_FUSED_DEVICES", ("cpu",))
    torch.manual_seed(0)
    ps = [torch.randn(s, requires_grad=True) for s in [(5, 3), (7,), (0,)]]
    qs = [p.detach().clone().requires_grad_() for p in ps]
    opts: dict = dict(lr=0.05, weight_decay=0.01)
    if name == "SGD":
        opts["momentum"] = 0.9
    ours = ours_cls([{"params": ps[:1]}, {"params": ps[1:], "lr": 0.01}], **opts)
    ref = ref_cls([{"params": qs[:1]}, {"params": qs[1:], "lr": 0.01}], fused=True, **opts)
    s1, s2 = (torch.amp.GradScaler("cpu", init_scale=256.0) for _ in range(2))
    for step in range(4):
        for opt, scaler, ts in ((ours, s1, ps), (ref, s2, qs)):
            opt.zero_grad()
            loss = sum((t * (i + 1)).sum() ** 2 for i, t in enumerate(ts))
            scaler.scale(loss * (float("inf") if step == 1 else 1.0)).backward()
            scaler.step(opt)
            scaler.update()
    for p, q in zip(ps, qs):
        torch.testing.assert_close(p, q)
    assert all(g["fused"] is None for g in ours.param_groups)  # the user's groups are left as they were
    if name != "SGD":
        assert ours.state[ps[0]]["step"].dtype == torch.float32
