"""The optimizer phase under a loss scale fused into fastopt's step for mmengine's own
``AmpOptimWrapper`` (built through fastopt): against the real mmengine class with clip_grad,
step by step (parameters, optimizer state, the scaler's state, the logged norm), with no
in-place unscaling; and ``fused_amp_step`` itself against GradScaler's sequence."""

from __future__ import annotations

import copy
import importlib
import math
import warnings
from typing import Any

import pytest
import torch

import fastopt
from fastopt import optim as fo
from fastopt.amp import fused_amp_step
from fastopt.host_wrapper import FusedAmpStep

from .amp import check_copies_step_alike, cpu_scaler, refuse_scaler_passes
from .torch_release import HAS_CPU_SCALER, needs_cpu_scaler

if not HAS_CPU_SCALER:  # every case here scales a loss on the CPU
    pytest.skip(needs_cpu_scaler.kwargs["reason"], allow_module_level=True)
from .refs import mmengine_build, quiet_mmengine_logger

LOSS_SCALES = ["dynamic", 512.0, dict(init_scale=1024.0, growth_interval=2)]
OVERFLOW_STEP = 2


def _model(seed: int = 0) -> torch.nn.Module:
    torch.manual_seed(seed)
    return torch.nn.Sequential(torch.nn.Linear(16, 32), torch.nn.LayerNorm(32), torch.nn.Linear(32, 4))


@pytest.fixture
def mmengine_amp(monkeypatch: pytest.MonkeyPatch) -> Any:
    """mmengine's build_optim_wrapper, with its AmpOptimWrapper allowed to build without a GPU."""
    build = mmengine_build()
    quiet_mmengine_logger()
    amp_module = importlib.import_module("mmengine.optim.optimizer.amp_optimizer_wrapper")
    monkeypatch.setattr(amp_module, "is_cuda_available", lambda: True)
    return build


def _pair(build_ref: Any, cfg: dict, route: str) -> tuple[torch.nn.Module, Any, torch.nn.Module, Any]:
    """(model, wrapper) built by fastopt and by mmengine's default constructor, each with a CPU
    GradScaler in place of the CUDA one mmengine builds."""
    a, b = _model(), _model()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # torch.cuda.amp.GradScaler without CUDA: deprecated, disabled
        if route == "fastopt":
            ours = fastopt.build_optim_wrapper(a, copy.deepcopy(cfg))
        else:
            importlib.import_module("fastopt.integrations.mmengine")
            ours = build_ref(a, dict(copy.deepcopy(cfg), constructor="FastOptimWrapperConstructor"))
        ref = build_ref(b, copy.deepcopy(cfg))
    loss_scale = cfg.get("loss_scale", "dynamic")
    ours.loss_scaler, ref.loss_scaler = cpu_scaler(loss_scale), cpu_scaler(loss_scale)
    return a, ours, b, ref


def _loss(model: torch.nn.Module, step: int, overflow: int | None = OVERFLOW_STEP) -> torch.Tensor:
    x = torch.randn(8, 16, generator=torch.Generator().manual_seed(step))
    return model(x).pow(2).sum() * (math.inf if step == overflow else 1.0)


@pytest.mark.parametrize("route", ["fastopt", "plugin"])
@pytest.mark.parametrize("loss_scale", LOSS_SCALES)
def test_mmengine_amp_wrapper_fuses_the_phase(mmengine_amp: Any, loss_scale: str | float | dict,
                                              route: str) -> None:
    """fastopt-built mmengine AmpOptimWrapper with clip_grad against mmengine's own (GradScaler's
    unscale_ + clip_grad_norm_ + step + update on torch's AdamW): the same parameters, optimizer
    state, scaler state and logged norm after every step; the overflowing step leaves parameters
    and state untouched and backs the dynamic scale off; the scaler's unscale_, step and update
    are never called."""
    from mmengine.logging import MessageHub
    from mmengine.optim import AmpOptimWrapper as MmengineAmpOptimWrapper

    cfg = dict(type="AmpOptimWrapper", loss_scale=loss_scale, clip_grad=dict(max_norm=0.5),
               optimizer=dict(type="AdamW", lr=0.05, weight_decay=0.01))
    a, ours, b, ref = _pair(mmengine_amp, cfg, route)
    assert isinstance(ours, MmengineAmpOptimWrapper) and isinstance(ours, FusedAmpStep)
    assert type(ours).__name__ == "AmpOptimWrapperWithFusedAmpStep"
    refuse_scaler_passes(ours.loss_scaler)
    hub = MessageHub.get_current_instance()
    scales = []
    for step in range(6):
        before = [p.detach().clone() for p in a.parameters()]
        steps_before = [int(ours.optimizer.state[p]["step"]) if p in ours.optimizer.state else 0
                        for p in a.parameters()]
        ref.update_params(_loss(b, step))
        theirs = hub.get_scalar("train/grad_norm").current()
        hub.update_scalar("train/grad_norm", -1.0)  # not a norm: ours must log its own
        ours.update_params(_loss(a, step))
        mine = hub.get_scalar("train/grad_norm").current()
        assert mine == pytest.approx(theirs, rel=1e-6, nan_ok=True), step
        assert ours.loss_scaler.state_dict() == ref.loss_scaler.state_dict(), step
        scales.append(ours.loss_scaler.get_scale())
        if step == OVERFLOW_STEP:
            assert not math.isfinite(mine)
            assert all(torch.equal(p, q) for p, q in zip(a.parameters(), before))
            assert steps_before == [int(ours.optimizer.state[p]["step"]) for p in a.parameters()]
        for p, q in zip(a.parameters(), b.parameters()):
            torch.testing.assert_close(p, q, rtol=1e-5, atol=1e-7)
    assert ours.optimizer.fastopt_tier == "native"
    for p, q in zip(a.parameters(), b.parameters()):
        mine_state, their_state = ours.optimizer.state[p], ref.optimizer.state[q]
        assert float(mine_state["step"]) == float(their_state["step"]) == 5.0
        for key in ("exp_avg", "exp_avg_sq"):
            torch.testing.assert_close(mine_state[key], their_state[key], rtol=1e-5, atol=1e-7)
    assert ours.state_dict()["loss_scaler"] == ref.state_dict()["loss_scaler"]
    if loss_scale == 512.0:
        assert scales == [512.0] * 6
    elif loss_scale == "dynamic":
        assert scales[OVERFLOW_STEP] == scales[0] / 2
    else:  # grows every second clean step, backs off on the overflow
        assert scales == [1024.0, 2048.0, 1024.0, 1024.0, 2048.0, 2048.0]


@pytest.mark.parametrize("clip_grad", [None, dict(type="value", clip_value=0.01)])
def test_mmengine_amp_wrapper_without_clipping_by_norm(mmengine_amp: Any, clip_grad: dict | None) -> None:
    """No clip_grad: the inf check and the unscaling are still fused (no GradScaler pass);
    clipping by value keeps mmengine's own sequence (its unscale_ runs). Either way the result is
    mmengine's."""
    cfg: dict[str, Any] = dict(type="AmpOptimWrapper", optimizer=dict(type="SGD", lr=0.1, momentum=0.9))
    if clip_grad is not None:
        cfg["clip_grad"] = clip_grad
    a, ours, b, ref = _pair(mmengine_amp, cfg, "fastopt")
    unscales = []
    if clip_grad is None:
        refuse_scaler_passes(ours.loss_scaler)
    else:
        unscale = ours.loss_scaler.unscale_
        ours.loss_scaler.unscale_ = lambda opt: unscales.append(unscale(opt))  # type: ignore[method-assign]
    for step in range(4):
        ref.update_params(_loss(b, step))
        ours.update_params(_loss(a, step))
        assert ours.loss_scaler.state_dict() == ref.loss_scaler.state_dict(), step
        for p, q in zip(a.parameters(), b.parameters()):
            torch.testing.assert_close(p, q, rtol=1e-5, atol=1e-7)
    assert len(unscales) == (0 if clip_grad is None else 4)


class _ProjectScaler(torch.amp.GradScaler):
    """A project's GradScaler subclass with its own ``update``: the fused phase cannot stand in
    for it, so mmengine's sequence runs (unscale_, clip into the step, the scaler's step)."""

    def update(self, new_scale: Any = None) -> None:
        super().update(new_scale)


@pytest.mark.parametrize("error_if_nonfinite", [False, True])
def test_mmengine_amp_wrapper_unfused_clip_on_an_overflow(mmengine_amp: Any,
                                                          error_if_nonfinite: bool) -> None:
    """With a scaler fastopt cannot fuse, the clip still goes into the step: on the overflowing
    step, whose update the scaler skips, the norm is still taken and logged (inf/NaN, as
    mmengine logs it) or refused with error_if_nonfinite, as mmengine's own wrapper does."""
    from mmengine.logging import MessageHub

    cfg = dict(type="AmpOptimWrapper", optimizer=dict(type="AdamW", lr=0.05, weight_decay=0.01),
               clip_grad=dict(max_norm=0.5, error_if_nonfinite=error_if_nonfinite))
    a, ours, b, ref = _pair(mmengine_amp, cfg, "plugin")
    ours.loss_scaler, ref.loss_scaler = _ProjectScaler("cpu"), _ProjectScaler("cpu")
    hub = MessageHub.get_current_instance()
    for step in range(OVERFLOW_STEP + 1):
        if step == OVERFLOW_STEP and error_if_nonfinite:
            for model, wrapper in ((b, ref), (a, ours)):
                with pytest.raises(RuntimeError, match="is non-finite, so it cannot be clipped"):
                    wrapper.update_params(_loss(model, step))
            break
        ref.update_params(_loss(b, step))
        theirs = hub.get_scalar("train/grad_norm").current()
        hub.update_scalar("train/grad_norm", -1.0)  # not a norm: ours must log its own
        ours.update_params(_loss(a, step))
        assert hub.get_scalar("train/grad_norm").current() == pytest.approx(theirs, rel=1e-6, nan_ok=True)
        assert ours.loss_scaler.state_dict() == ref.loss_scaler.state_dict()
    assert ours.optimizer.fastopt_tier == "native"
    for p, q in zip(a.parameters(), b.parameters()):
        torch.testing.assert_close(p, q, rtol=1e-5, atol=1e-7)


def test_mmengine_amp_wrapper_checkpoint_round_trip(mmengine_amp: Any) -> None:
    """The fused wrapper's state dict (optimizer + loss_scaler, grown scale included) resumes a
    fresh one: training on matches the uninterrupted run exactly, and mmengine's own."""
    cfg = dict(type="AmpOptimWrapper", loss_scale=dict(init_scale=256.0, growth_interval=2),
               clip_grad=dict(max_norm=0.5), optimizer=dict(type="AdamW", lr=0.05))
    a, ours, b, ref = _pair(mmengine_amp, cfg, "fastopt")
    for step in range(2):
        ours.update_params(_loss(a, step))
        ref.update_params(_loss(b, step))
    saved = copy.deepcopy(ours.state_dict())
    assert saved["loss_scaler"]["scale"] == ref.loss_scaler.get_scale() == 512.0
    c, resumed, _, _ = _pair(mmengine_amp, cfg, "fastopt")
    c.load_state_dict(a.state_dict())
    resumed.load_state_dict(copy.deepcopy(saved))
    for step in range(2, 6):
        ours.update_params(_loss(a, step))
        resumed.update_params(_loss(c, step))
        ref.update_params(_loss(b, step))
    assert resumed.loss_scaler.state_dict() == ours.loss_scaler.state_dict() == ref.loss_scaler.state_dict()
    for p, q, r in zip(c.parameters(), a.parameters(), b.parameters()):
        assert torch.equal(p, q)
        torch.testing.assert_close(p, r, rtol=1e-5, atol=1e-7)


def _scaled_grads(model: torch.nn.Module, scaler: torch.amp.GradScaler, step: int) -> None:
    model.zero_grad()
    scaler.scale(_loss(model, step, overflow=None)).backward()


def test_fused_amp_step_declines_what_it_cannot_fuse() -> None:
    """None, and nothing touched, for torch's optimizers, a disabled or subclassed scaler, a
    scaler that already unscaled this iteration, clip parameters beyond the optimizer's, and
    clip parameters short of what it steps (the coefficient would scale the others too)."""
    model = _model()
    scaler = torch.amp.GradScaler("cpu")
    _scaled_grads(model, scaler, 0)
    grads = [p.grad.clone() for p in model.parameters()]
    params = list(model.parameters())
    clip = dict(max_norm=0.5)
    assert fused_amp_step(torch.optim.SGD(params, lr=0.1), scaler, clip_grad=clip) is None
    assert fused_amp_step(fo.SGD(params, lr=0.1), torch.amp.GradScaler("cpu", enabled=False)) is None

    class Sharded(torch.amp.GradScaler):
        def unscale_(self, optimizer: torch.optim.Optimizer) -> None:
            super().unscale_(optimizer)

    assert fused_amp_step(fo.SGD(params, lr=0.1), Sharded("cpu"), clip_grad=clip) is None
    assert fused_amp_step(fo.SGD(params[:2], lr=0.1), scaler, params, clip) is None
    assert fused_amp_step(fo.SGD(params, lr=0.1), scaler, params[:2], clip) is None
    assert all(torch.equal(p.grad, g) for p, g in zip(model.parameters(), grads))
    opt = fo.SGD(params, lr=0.1)
    scaler.unscale_(opt)
    assert fused_amp_step(opt, scaler, clip_grad=clip) is None


@pytest.mark.parametrize("norm_type", [2.0, math.inf])
def test_fused_amp_step_matches_gradscaler_sequence(norm_type: float) -> None:
    """Directly against unscale_ + clip_grad_norm_ + step + update, SGD with momentum: the
    parameters bit for bit given the same coefficient (power-of-two scale), the norm, the scale,
    and the gradients left behind (unscaled and clipped, as unscale_ and the clip leave them)."""
    a, b = _model(), _model()
    ours = fo.SGD(a.parameters(), lr=0.1, momentum=0.9)
    ref = torch.optim.SGD(b.parameters(), lr=0.1, momentum=0.9, foreach=False)
    sa = torch.amp.GradScaler("cpu", init_scale=2.0**12, growth_interval=1)
    sb = torch.amp.GradScaler("cpu", init_scale=2.0**12, growth_interval=1)
    clip = dict(max_norm=0.5, norm_type=norm_type)
    for step in range(3):
        _scaled_grads(a, sa, step)
        _scaled_grads(b, sb, step)
        norm = fused_amp_step(ours, sa, clip_grad=clip)
        sb.unscale_(ref)
        their_norm = torch.nn.utils.clip_grad_norm_(list(b.parameters()), **clip)
        sb.step(ref)
        sb.update()
        torch.testing.assert_close(norm, their_norm, rtol=1e-6, atol=0)
        assert sa.state_dict() == sb.state_dict()
        assert getattr(ours, "grad_scale", None) is None and getattr(ours, "found_inf", None) is None
        for p, q in zip(a.parameters(), b.parameters()):
            torch.testing.assert_close(p, q, rtol=1e-6, atol=1e-7)
            torch.testing.assert_close(p.grad, q.grad, rtol=1e-5, atol=1e-8)
    assert sa.get_scale() == 2.0**15  # grew on every clean step


def test_the_mixed_in_amp_wrapper_pickles_and_copies(mmengine_amp: Any) -> None:
    """mmengine's AmpOptimWrapper with ``FusedAmpStep`` mixed in pickles and deep-copies to its
    own class (still mmengine's AmpOptimWrapper) and the copy steps as the original."""
    from mmengine.optim import AmpOptimWrapper as MmengineAmpOptimWrapper

    cfg = dict(type="AmpOptimWrapper", loss_scale=64.0, clip_grad=dict(max_norm=0.5),
               optimizer=dict(type="AdamW", lr=0.05, weight_decay=0.01))
    a, ours, _, _ = _pair(mmengine_amp, cfg, "fastopt")
    assert isinstance(ours, MmengineAmpOptimWrapper) and isinstance(ours, FusedAmpStep)
    check_copies_step_alike(a, ours)
