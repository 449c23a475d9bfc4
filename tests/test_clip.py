"""Gradient clipping fused into the step: the native global norm against torch's, the clip
coefficient applied inside the kernel against torch's clip-then-step, the wrapper's phase
against the reference sequence, clear errors, and a fixed loss scale."""

from __future__ import annotations

import importlib
import math

import pytest
import torch

import fastopt
from fastopt import optim as fo
from fastopt.clip_grad import total_norm
from fastopt.host_wrapper import FusedClip

from .amp import (
    FUSED_PAIRS,
    check_clip_under_a_grad_scaler,
    check_coefficient_folded_into_grad_scale,
    check_copies_step_alike,
    cpu_scaler,
    refuse_scaler_passes,
)
from .numerics import assert_few_differ, ulp_distance
from .test_optim import LOW_PRECISION_SHARE
from .torch_release import EMPTY_INF_NORM, needs_cpu_scaler, needs_fused_on_cpu, torch_total_norm

SHAPES = [(0,), (1,), (7, 3), (33_000,), (70_001,), (5,), ()]


def _grads(dtype: torch.dtype, seed: int = 0, scale: float = 1.0) -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return [(torch.randn(s, generator=g, dtype=torch.float64) * scale).to(dtype) for s in SHAPES]


@pytest.mark.parametrize("norm_type", [2.0, math.inf, "inf"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_total_norm_matches_torch(dtype: torch.dtype, norm_type: float | str) -> None:
    grads = [g for g in _grads(dtype, scale=1e-3) if g.numel() or float(norm_type) == 2.0]
    ours, nonfinite = total_norm(grads, norm_type)
    theirs = torch_total_norm(grads, float(norm_type))
    assert nonfinite is False and ours.dtype == theirs.dtype == dtype
    torch.testing.assert_close(ours, theirs, rtol=1e-6, atol=0)


def test_total_norm_is_within_1e_7_of_the_exact_norm_on_large_tensors() -> None:
    """Millions of elements: the native norm stays within 1e-7 of the fp64 value (torch's fp32
    reductions drift to ~1e-5 there, docs/optimizers.md)."""
    g = torch.Generator().manual_seed(5)
    grads = [torch.randn(n, generator=g) for n in (4_000_000, 3_000_001, 1)]
    exact = torch_total_norm([t.double() for t in grads], 2.0)
    torch.testing.assert_close(total_norm(grads)[0].double(), exact, rtol=1e-7, atol=0)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_total_norm_low_precision_within_an_ulp_of_torch(dtype: torch.dtype) -> None:
    """torch rounds each tensor's norm to the gradients' dtype before the norm of norms; the
    native pass accumulates in double and rounds once, so they can differ by one ulp."""
    grads = _grads(dtype)
    ours, _ = total_norm(grads)
    theirs = torch_total_norm(grads, 2.0)
    assert int(ulp_distance(ours, theirs)) <= 1, (ours, theirs)


def test_inf_norm_of_an_empty_gradient_is_torchs_error() -> None:
    with pytest.raises(RuntimeError, match=EMPTY_INF_NORM):
        total_norm(_grads(torch.float32), math.inf)


def test_total_norm_is_the_same_for_any_thread_count() -> None:
    grads = _grads(torch.float32, seed=3)
    before = torch.get_num_threads()
    try:
        results = []
        for threads in (1, 2, 3):
            torch.set_num_threads(threads)
            results.append(float(total_norm(grads)[0]))
    finally:
        torch.set_num_threads(before)
    assert results[0] == results[1] == results[2]


@pytest.mark.parametrize("bad", [math.inf, -math.inf, math.nan])
@pytest.mark.parametrize("norm_type", [2.0, math.inf])
def test_non_finite_gradients_are_reported(bad: float, norm_type: float) -> None:
    grads = [g for g in _grads(torch.float32) if g.numel()]
    grads[3][12_345] = bad
    norm, nonfinite = total_norm(grads, norm_type)
    theirs = torch_total_norm(grads, norm_type)
    assert nonfinite is True
    assert math.isnan(float(norm)) == math.isnan(float(theirs))
    assert math.isinf(float(norm)) == math.isinf(float(theirs))


def test_norms_torch_computes_for_fastopt() -> None:
    """Other norm types (and tensors the native pass does not take) go through torch."""
    grads = _grads(torch.float32)
    norm, nonfinite = total_norm(grads, 1.0)
    assert nonfinite is None
    torch.testing.assert_close(norm, torch_total_norm(grads, 1.0))


def _pair(name: str, dtype: torch.dtype, opts: dict) -> tuple[list, list, torch.optim.Optimizer,
                                                            torch.optim.Optimizer]:
    ps = [p.requires_grad_() for p in _grads(dtype, seed=7)]
    qs = [p.detach().clone().requires_grad_() for p in ps]
    ours = getattr(fo, name)(ps, **opts)
    ref = getattr(torch.optim, name)(qs, foreach=False, **opts)
    return ps, qs, ours, ref


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.bfloat16])
def test_given_the_same_coefficient_sgd_is_bit_identical_to_clip_then_step(dtype: torch.dtype) -> None:
    ps, qs, ours, ref = _pair("SGD", dtype, dict(lr=0.1, momentum=0.9, weight_decay=1e-4, nesterov=True))
    for step in range(3):
        grads = _grads(dtype, seed=10 + step)
        coefficient = torch.tensor(0.3 + 0.1 * step)  # float32, as clip_grad_norm_'s
        for p, q, g in zip(ps, qs, grads):
            p.grad, q.grad = g.clone(), g.clone()
            q.grad.mul_(coefficient)  # what clip_grad_norm_ does
        ours.step(grad_mult=coefficient)
        ref.step()
        assert ours.fastopt_tier == "native"
        for p, g in zip(ps, grads):
            assert torch.equal(p.grad, g), "the gradients are read, not rewritten"
        if dtype == torch.bfloat16:  # torch's scalar tail rounds more often (tests/test_optim.py)
            assert_few_differ(list(zip(ps, qs)), LOW_PRECISION_SHARE, what="bf16 parameters")
        else:
            assert all(torch.equal(p, q) for p, q in zip(ps, qs))


@pytest.mark.parametrize("name", ["Adam", "AdamW"])
def test_given_the_same_coefficient_adam_moments_are_bit_identical(name: str) -> None:
    # Adam's L2 term is added to the gradient by torch's own add-with-alpha kernel, which fuses
    # the multiply-add on some CPUs (AMD EPYC, torch 2.13) and not on others; the moments are then
    # bit-identical only without it. AdamW's decoupled decay does not touch the gradient.
    wd = 0.0 if name == "Adam" else 0.01
    ps, qs, ours, ref = _pair(name, torch.float32, dict(lr=1e-3, weight_decay=wd))
    for step in range(3):
        coefficient = torch.tensor(0.25)
        for p, q, g in zip(ps, qs, _grads(torch.float32, seed=20 + step)):
            p.grad, q.grad = g.clone(), g * coefficient
        ours.step(grad_mult=coefficient)
        ref.step()
    for p, q in zip(ps, qs):
        for key in ("exp_avg", "exp_avg_sq"):
            assert torch.equal(ours.state[p][key], ref.state[q][key]), key
        torch.testing.assert_close(p, q, rtol=4 * 2**-23, atol=1e-9)


def test_coefficient_on_torch_tiers_multiplies_in_place() -> None:
    """A parameter the kernel cannot take (non-contiguous): torch's step, after the same in-place
    multiplication clip_grad_norm_ does."""
    p = torch.nn.Parameter(torch.randn(4, 6).t())
    q = torch.nn.Parameter(p.detach().clone())
    ours, ref = fo.SGD([p], lr=0.1, momentum=0.9), torch.optim.SGD([q], lr=0.1, momentum=0.9, foreach=False)
    for _ in range(2):
        g = torch.randn(p.shape)
        p.grad, q.grad = g.clone(), g * torch.tensor(0.5)
        ours.step(grad_mult=torch.tensor(0.5))
        ref.step()
    assert ours.fastopt_tier == "torch"
    assert torch.equal(p, q)


def _model(seed: int = 0) -> torch.nn.Module:
    torch.manual_seed(seed)
    return torch.nn.Sequential(torch.nn.Linear(16, 32), torch.nn.LayerNorm(32), torch.nn.Linear(32, 4))


@pytest.mark.parametrize("max_norm", [0.05, 1e6])
@pytest.mark.parametrize("opt", ["AdamW", "SGD"])
def test_wrapper_phase_matches_clip_grad_norm_then_step(opt: str, max_norm: float,
                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    """fastopt's OptimWrapper with clip_grad (its own class, as without mmengine) against the
    reference sequence: clip_grad_norm_ then torch's step on the same groups."""
    from fastopt import host_wrapper as wrapper_module

    monkeypatch.setattr(wrapper_module, "mmengine_registry_get", lambda registry, name: None)
    opt_cfg = (dict(type=opt, lr=0.05, weight_decay=0.01) if opt == "AdamW"
               else dict(type=opt, lr=0.1, momentum=0.9))
    a, b = _model(), _model()
    wrapper = fastopt.build_optim_wrapper(a, dict(optimizer=opt_cfg,
                                                  clip_grad=dict(max_norm=max_norm)))
    ref = getattr(torch.optim, opt)(b.parameters(), foreach=False,
                                    **{k: v for k, v in opt_cfg.items() if k != "type"})
    for step in range(4):
        x = torch.randn(8, 16, generator=torch.Generator().manual_seed(step))
        wrapper.update_params(a(x).pow(2).sum())
        ref.zero_grad()
        b(x).pow(2).sum().backward()
        norm = torch.nn.utils.clip_grad_norm_(list(b.parameters()), max_norm)
        ref.step()
        torch.testing.assert_close(wrapper.grad_norm, norm, rtol=1e-6, atol=0)
    assert wrapper.optimizer.fastopt_tier == "native"
    for p, q in zip(a.parameters(), b.parameters()):
        torch.testing.assert_close(p, q, rtol=1e-5, atol=1e-7)


@pytest.mark.parametrize("norm_type", [2.0, 3.0, "inf"])
def test_own_wrapper_clips_what_requires_grad(norm_type: float | str,
                                              monkeypatch: pytest.MonkeyPatch) -> None:
    """fastopt's own OptimWrapper clips the parameters that require grad and have one, as
    mmengine's does, and steps the rest unclipped (a parameter frozen after backward keeps its
    gradient); norm types the native pass does not take still clip inside the step."""
    from fastopt import host_wrapper as wrapper_module

    monkeypatch.setattr(wrapper_module, "mmengine_registry_get", lambda registry, name: None)
    a, b = _model(), _model()
    ours = fastopt.build_optim_wrapper(a, dict(optimizer=dict(type="SGD", lr=0.1, momentum=0.9),
                                               clip_grad=dict(max_norm=0.05, norm_type=norm_type)))
    assert type(ours) is wrapper_module.OptimWrapper
    ref = torch.optim.SGD(b.parameters(), lr=0.1, momentum=0.9, foreach=False)
    for step in range(3):
        x = torch.randn(8, 16, generator=torch.Generator().manual_seed(step))
        frozen = step == 1
        for model in (a, b):
            model[0].weight.requires_grad_(True)
            model(x).pow(2).sum().backward()
            model[0].weight.requires_grad_(not frozen)
        ours.step()
        clipped = [p for p in b.parameters() if p.requires_grad]
        norm = torch.nn.utils.clip_grad_norm_(clipped, 0.05, norm_type=norm_type)
        ref.step()
        torch.testing.assert_close(ours.grad_norm, norm, rtol=1e-6, atol=0)
        ours.zero_grad()
        ref.zero_grad()
        for p, q in zip(a.parameters(), b.parameters()):
            torch.testing.assert_close(p, q, rtol=1e-6, atol=1e-7)


def test_max_norm_above_the_norm_changes_nothing() -> None:
    a, b = _model(), _model()
    clipped = fastopt.build_optim_wrapper(a, dict(optimizer=dict(type="SGD", lr=0.1),
                                                  clip_grad=dict(max_norm=1e9)))
    plain = fastopt.build_optim_wrapper(b, dict(optimizer=dict(type="SGD", lr=0.1)))
    x = torch.randn(8, 16)
    clipped.update_params(a(x).sum())
    plain.update_params(b(x).sum())
    for p, q in zip(a.parameters(), b.parameters()):
        assert torch.equal(p, q)


@pytest.mark.parametrize(("clip_grad", "exc", "pattern"), [
    (dict(max_norm=0.0), ValueError, "max_norm must be a positive number"),
    (dict(max_norm=-1), ValueError, "max_norm must be a positive number"),
    (dict(max_norm=math.nan), ValueError, "max_norm must be a positive number"),
    (dict(norm_type=2), KeyError, "needs 'max_norm'"),
    (dict(max_norm=1.0, norm_type="two"), ValueError, "norm_type must be a number or 'inf'"),
    (dict(max_norm=1.0, norm_type=-1), ValueError, "norm_type must be a non-negative number"),
    (dict(max_norm=1.0, max_nrom=2), TypeError, r"unexpected keys \['max_nrom'\]"),
    (dict(type="value", clip_value=0), ValueError, "clip_value must be a positive number"),
    (dict(type="value", max_norm=1.0), TypeError, r"unexpected keys \['max_norm'\]"),
    (dict(type="l2", max_norm=1.0), ValueError, "type must be 'norm' or 'value'"),
])
def test_bad_clip_grad_is_a_clear_error(clip_grad: dict, exc: type, pattern: str) -> None:
    with pytest.raises(exc, match=pattern):
        fastopt.OptimWrapper(fo.SGD(_model().parameters(), lr=0.1), clip_grad=clip_grad)


def test_error_if_nonfinite_raises_like_torch() -> None:
    model = _model()
    wrapper = fastopt.OptimWrapper(fo.SGD(model.parameters(), lr=0.1, momentum=0.9),
                                   clip_grad=dict(max_norm=1.0, error_if_nonfinite=True))
    model(torch.randn(2, 16)).sum().backward()
    next(model.parameters()).grad[0, 0] = math.inf
    before = [p.detach().clone() for p in model.parameters()]
    with pytest.raises(RuntimeError, match="non-finite, so it cannot be clipped"):
        wrapper.step()
    # as with torch's clip_grad_norm_ before the step: nothing updated, no state created
    assert not wrapper.optimizer.state
    assert all(torch.equal(p, q) for p, q in zip(model.parameters(), before))


@pytest.mark.parametrize("flat", [False, True])
@pytest.mark.parametrize("norm_type", [2.0, "inf"])
def test_wrapper_phase_with_missing_and_empty_gradients(norm_type: float | str, flat: bool) -> None:
    """The norm the step takes from the gradients it gathers covers exactly the parameters with a
    gradient (one without, one empty) on the native and flat-buffer tiers, as torch's
    clip_grad_norm_ then step over the same parameters."""
    def params() -> list[torch.nn.Parameter]:
        torch.manual_seed(0)
        return [torch.nn.Parameter(torch.randn(*shape)) for shape in [(5, 3), (0,), (7,), (4, 4)]]

    a, b = params(), params()
    ours = fastopt.OptimWrapper(fo.AdamW(a, lr=0.05, weight_decay=0.01),
                                clip_grad=dict(max_norm=0.5, norm_type=norm_type))
    if flat:
        ours.optimizer.use_flat_buffers()
    ref = torch.optim.AdamW(b, lr=0.05, weight_decay=0.01, foreach=False)
    for step in range(3):
        g = torch.Generator().manual_seed(step)
        grads = [torch.randn(p.shape, generator=g) for p in a]
        with_grad = [0, 1, 3] if step % 2 else [0, 2, 3]  # the empty one (1) only every other step
        for i in range(len(a)):
            if flat:  # flat buffers keep every gradient: zero stands for "no gradient"
                a[i].grad.copy_(grads[i] if i in with_grad else torch.zeros_like(grads[i]))
            else:
                a[i].grad = grads[i].clone() if i in with_grad else None
            b[i].grad = grads[i].clone() if (i in with_grad or flat) else None
            if flat and i not in with_grad:
                b[i].grad.zero_()
        has = [q for q in b if q.grad is not None]
        if norm_type == "inf" and any(q.numel() == 0 for q in has):
            with pytest.raises(RuntimeError, match=EMPTY_INF_NORM):
                torch.nn.utils.clip_grad_norm_(has, 0.5, norm_type=norm_type)
            with pytest.raises(RuntimeError, match=EMPTY_INF_NORM):
                ours.step()
            continue
        norm = torch.nn.utils.clip_grad_norm_(has, 0.5, norm_type=norm_type)
        ref.step()
        ours.step()
        torch.testing.assert_close(ours.grad_norm, norm, rtol=1e-6, atol=0)
        assert ours.optimizer.fastopt_tier == ("flat" if flat else "native")
        for p, q in zip(a, b):
            torch.testing.assert_close(p, q, rtol=1e-6, atol=1e-7)


@needs_cpu_scaler
def test_fixed_loss_scale_stays_fixed() -> None:
    """``loss_scale=512.`` (an mmengine config's static scale): builds on torch 2.13, keeps the
    scale at 512 through an overflowing step, and skips that step."""
    model = _model()
    wrapper = fastopt.AmpOptimWrapper(fo.SGD(model.parameters(), lr=0.1), loss_scale=512.0)
    for step in range(3):
        before = [p.detach().clone() for p in model.parameters()]
        loss = model(torch.randn(4, 16)).sum() * (math.inf if step == 1 else 1.0)
        wrapper.update_params(loss)
        moved = any(not torch.equal(p, b) for p, b in zip(model.parameters(), before))
        assert moved == (step != 1)
        assert wrapper.loss_scaler.get_scale() == 512.0


@pytest.mark.parametrize("route", ["fastopt", "plugin"])
@pytest.mark.parametrize("case", ["2-norm", "1-norm", "3-norm", "frozen with a gradient"])
def test_mmengine_wrapper_clips_natively_and_logs_the_norm(route: str, case: str) -> None:
    """With mmengine installed the wrapper is a subclass of mmengine's own class that fuses the
    clipping (named for it, isinstance of mmengine's), the norm logged to mmengine's message hub as
    mmengine logs it, parameters as mmengine's own wrapper leaves them; norm types the native
    pass does not take go through torch's norm inside the step; a parameter frozen after
    backward (a gradient, no requires_grad) is stepped unclipped, as mmengine leaves it."""
    from mmengine.logging import MessageHub
    from mmengine.optim import OptimWrapper as MmengineOptimWrapper

    from .refs import mmengine_build, quiet_mmengine_logger

    build_ref = mmengine_build()
    quiet_mmengine_logger()
    norm_type = float(case[0]) if case[0].isdigit() else 2.0
    cfg = dict(optimizer=dict(type="AdamW", lr=0.05, weight_decay=0.01),
               clip_grad=dict(max_norm=0.05, norm_type=norm_type), paramwise_cfg=dict(norm_decay_mult=0.0))
    a, b = _model(), _model()
    if route == "fastopt":
        ours = fastopt.build_optim_wrapper(a, cfg)
    else:
        importlib.import_module("fastopt.integrations.mmengine")
        ours = build_ref(a, dict(cfg, constructor="FastOptimWrapperConstructor"))
    ref = build_ref(b, cfg)
    assert isinstance(ours, MmengineOptimWrapper) and type(ours).__name__ == "OptimWrapperWithFusedClip"
    assert isinstance(ours, FusedClip)
    hub = MessageHub.get_current_instance()
    for step in range(4):
        x = torch.randn(8, 16, generator=torch.Generator().manual_seed(step))
        for model, wrapper in ((b, ref), (a, ours)):
            model[0].weight.requires_grad_(True)
            model(x).pow(2).sum().backward()
            if case == "frozen with a gradient":
                model[0].weight.requires_grad_(False)
            wrapper.step()
            wrapper.zero_grad()
            if wrapper is ref:
                theirs = hub.get_scalar("train/grad_norm").current()
        mine = hub.get_scalar("train/grad_norm").current()
        assert mine == pytest.approx(theirs, rel=1e-6)
    assert ours.optimizer.fastopt_tier == "native"
    for p, q in zip(a.parameters(), b.parameters()):
        torch.testing.assert_close(p, q, rtol=1e-5, atol=1e-7)
    assert ours.state_dict().keys() == ref.state_dict().keys()


def test_mmengine_wrapper_clip_grad_on_its_own_logs_at_once() -> None:
    """``_clip_grad()`` called on its own (a hook, a custom loop) on mmengine's wrapper as fastopt
    builds it is mmengine's: the gradients clipped in place and ``train/grad_norm`` logged before
    it returns, the same values as mmengine's own wrapper. The ``step()`` after it still clips in
    the one fused pass (torch's clip function is not called again) and logs that norm, as
    mmengine's second clip does; the parameters end as mmengine's."""
    from mmengine.logging import MessageHub

    from .refs import mmengine_build, quiet_mmengine_logger

    build_ref = mmengine_build()
    quiet_mmengine_logger()
    a, b = _model(), _model()
    MessageHub.get_instance("fastopt-test-clip-alone-reference")
    ref = build_ref(b, dict(optimizer=dict(type="SGD", lr=0.1, momentum=0.9), clip_grad=dict(max_norm=0.05)))
    MessageHub.get_instance("fastopt-test-clip-alone-fastopt")
    ours = fastopt.build_optim_wrapper(a, dict(optimizer=dict(type="SGD", lr=0.1, momentum=0.9),
                                               clip_grad=dict(max_norm=0.05)))
    assert isinstance(ours, FusedClip) and ours.message_hub is not ref.message_hub
    torch_clips = []
    clip_func = ours.clip_func

    def counted(*args: object, **kwargs: object) -> torch.Tensor:
        torch_clips.append(1)
        return clip_func(*args, **kwargs)

    ours.clip_func = counted
    for step in range(3):
        x = torch.randn(8, 16, generator=torch.Generator().manual_seed(step))
        for model, wrapper in ((b, ref), (a, ours)):
            model(x).pow(2).sum().backward()
            wrapper._clip_grad()
        # torch's clip on both sides: the same bits until a fused step has moved the parameters
        tolerance = dict(rtol=0.0, atol=0.0) if step == 0 else dict(rtol=1e-5, atol=1e-8)
        torch.testing.assert_close(ours.message_hub.get_scalar("train/grad_norm").current(),
                                   ref.message_hub.get_scalar("train/grad_norm").current(), **tolerance)
        for p, q in zip(a.parameters(), b.parameters()):
            torch.testing.assert_close(p.grad, q.grad, **tolerance)
        ref.step()
        ours.step()
        assert len(torch_clips) == step + 1  # the step clipped in its own fused pass
        assert ours.optimizer.fastopt_tier == "native"
        mine = ours.message_hub.get_scalar("train/grad_norm").current()
        assert mine == pytest.approx(ref.message_hub.get_scalar("train/grad_norm").current(), rel=1e-6)
        ref.zero_grad()
        ours.zero_grad()
    for p, q in zip(a.parameters(), b.parameters()):
        torch.testing.assert_close(p, q, rtol=1e-5, atol=1e-7)


def test_mixed_in_wrappers_pickle_and_copy_as_the_host_class() -> None:
    """A host wrapper with fastopt's fusion mixed in pickles and deep-copies: the copy is of the
    same mixed class, still an instance of mmengine's class, and steps as the original does."""
    from mmengine.optim import OptimWrapper as MmengineOptimWrapper

    from .refs import mmengine_build, quiet_mmengine_logger

    mmengine_build()
    quiet_mmengine_logger()
    cfg = dict(type="OptimWrapper", optimizer=dict(type="AdamW", lr=0.05, weight_decay=0.01),
               clip_grad=dict(max_norm=0.05), paramwise_cfg=dict(norm_decay_mult=0.0))
    model = _model()
    wrapper = fastopt.build_optim_wrapper(model, cfg)
    assert isinstance(wrapper, MmengineOptimWrapper) and isinstance(wrapper, FusedClip)
    check_copies_step_alike(model, wrapper)


@needs_cpu_scaler
@pytest.mark.parametrize("loss_scale", ["dynamic", 256.0, dict(init_scale=1024.0, growth_interval=2)])
def test_amp_phase_matches_unscale_clip_step(loss_scale: str | float | dict) -> None:
    """fastopt's AmpOptimWrapper with clip_grad (one native pass for the norm and the inf check of
    the scaled gradients, unscale and clip inside the kernel) against GradScaler.unscale_ +
    clip_grad_norm_ + scaler.step + scaler.update on torch's AdamW: the same parameters, norms
    and scale after every step, an overflowing step skipped by both, growth on schedule."""
    a, b = _model(), _model()
    wrapper = fastopt.AmpOptimWrapper(fo.AdamW(a.parameters(), lr=0.05, weight_decay=0.01),
                                      loss_scale=loss_scale, clip_grad=dict(max_norm=0.5))
    ref = torch.optim.AdamW(b.parameters(), lr=0.05, weight_decay=0.01, foreach=False)
    refuse_scaler_passes(wrapper.loss_scaler)
    scaler = cpu_scaler(loss_scale)
    for step in range(6):
        x = torch.randn(8, 16, generator=torch.Generator().manual_seed(step))
        blow_up = math.inf if step == 2 else 1.0
        wrapper.update_params(a(x).pow(2).sum() * blow_up)
        ref.zero_grad()
        scaler.scale(b(x).pow(2).sum() * blow_up).backward()
        scaler.unscale_(ref)
        norm = torch.nn.utils.clip_grad_norm_(list(b.parameters()), 0.5)
        scaler.step(ref)
        scaler.update(loss_scale if isinstance(loss_scale, float) else None)
        assert wrapper.loss_scaler.get_scale() == scaler.get_scale(), step
        if step != 2:
            torch.testing.assert_close(wrapper.grad_norm, norm, rtol=1e-6, atol=0)
        for p, q in zip(a.parameters(), b.parameters()):
            torch.testing.assert_close(p, q, rtol=1e-5, atol=1e-7)
    assert wrapper.optimizer.fastopt_tier == "native"
    assert wrapper.loss_scaler.state_dict() == scaler.state_dict()


@needs_cpu_scaler
def test_amp_without_clipping_is_fused_too() -> None:
    """No clip_grad: the inf/NaN check is the same native read (no GradScaler pass writes the
    gradients), the step unscales; against scaler.step + scaler.update on torch's SGD."""
    a, b = _model(), _model()
    wrapper = fastopt.AmpOptimWrapper(fo.SGD(a.parameters(), lr=0.1, momentum=0.9),
                                      loss_scale=dict(init_scale=64.0, growth_interval=2))
    refuse_scaler_passes(wrapper.loss_scaler)
    ref = torch.optim.SGD(b.parameters(), lr=0.1, momentum=0.9, foreach=False)
    scaler = torch.amp.GradScaler("cpu", init_scale=64.0, growth_interval=2)
    for step in range(5):
        x = torch.randn(8, 16, generator=torch.Generator().manual_seed(step))
        blow_up = math.nan if step == 2 else 1.0
        wrapper.update_params(a(x).pow(2).sum() * blow_up)
        ref.zero_grad()
        scaler.scale(b(x).pow(2).sum() * blow_up).backward()
        scaler.step(ref)
        scaler.update()
        assert wrapper.loss_scaler.state_dict() == scaler.state_dict(), step
        for p, q in zip(a.parameters(), b.parameters()):
            torch.testing.assert_close(p, q, rtol=1e-6, atol=1e-7)
    assert wrapper.optimizer.fastopt_tier == "native" and wrapper.grad_norm is None


@pytest.fixture
def torch_fused_tier_on_cpu(monkeypatch: pytest.MonkeyPatch) -> None:
    """CPU tensors routed to the torch-fused tier (the one CUDA tensors take), whose clip
    coefficient is folded into the ``grad_scale`` torch's fused kernels divide by: the CUDA
    path's logic, run where there is no GPU (torch's fused kernels exist on the CPU too)."""
    from fastopt import _kernels, _tiers

    if needs_fused_on_cpu.args[0]:
        pytest.skip(needs_fused_on_cpu.kwargs["reason"])
    monkeypatch.setattr(_kernels, "group_native", lambda group, params_checked=False: False)
    monkeypatch.setattr(_tiers, "TORCH_FUSED_DEVICES", ("cpu",))


@pytest.mark.usefixtures("torch_fused_tier_on_cpu")
@pytest.mark.parametrize("name", list(FUSED_PAIRS))
def test_torch_fused_tier_folds_the_coefficient_into_grad_scale(name: str) -> None:
    check_coefficient_folded_into_grad_scale(name, "cpu")


@needs_cpu_scaler
@pytest.mark.usefixtures("torch_fused_tier_on_cpu")
def test_torch_fused_tier_clips_under_a_grad_scaler() -> None:
    check_clip_under_a_grad_scaler("cpu")


@pytest.mark.usefixtures("torch_fused_tier_on_cpu")
def test_torch_fused_tier_takes_the_wrappers_clip() -> None:
    """fastopt's wrapper hands the step its clip as a MultOf; on the torch-fused tier it is
    worked out from the gradients and folded into grad_scale: clip_grad_norm_ + fused step."""
    a, b = _model(), _model()
    ours = fastopt.OptimWrapper(fo.AdamW(a.parameters(), lr=0.05, weight_decay=0.01),
                                clip_grad=dict(max_norm=0.05))
    ref = torch.optim.AdamW(b.parameters(), lr=0.05, weight_decay=0.01, fused=True)
    for step in range(3):
        x = torch.randn(8, 16, generator=torch.Generator().manual_seed(step))
        ours.update_params(a(x).pow(2).sum())
        ref.zero_grad()
        b(x).pow(2).sum().backward()
        norm = torch.nn.utils.clip_grad_norm_(list(b.parameters()), 0.05)
        ref.step()
        torch.testing.assert_close(ours.grad_norm, norm, rtol=1e-6, atol=0)
        assert ours.optimizer.fastopt_tier == "torch-fused"
    for p, q in zip(a.parameters(), b.parameters()):
        torch.testing.assert_close(p, q, rtol=1e-5, atol=1e-6)
