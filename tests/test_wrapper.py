"""fastopt's own OptimWrapper / AmpOptimWrapper (used when mmengine is not installed)."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

import fastopt
from fastopt import host_wrapper as wrapper_module

from .torch_release import needs_cpu_scaler


@pytest.fixture
def no_mmengine(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(wrapper_module, "mmengine_registry_get", lambda registry, name: None)


def _model() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(6, 8), nn.LayerNorm(8), nn.Linear(8, 1))


@needs_cpu_scaler
@pytest.mark.parametrize("dtype", ["bfloat16", "float16"])
def test_amp_wrapper_matches_a_manual_gradscaler_loop(dtype: str, no_mmengine: None) -> None:
    a, b = _model(), _model()
    cfg = dict(type="AmpOptimWrapper", dtype=dtype, loss_scale=dict(init_scale=2.0**10),
               optimizer=dict(type="AdamW", lr=1e-2, weight_decay=0.05), clip_grad=dict(max_norm=1.0),
               paramwise_cfg=dict(norm_decay_mult=0.0))
    wrapper = fastopt.build_optim_wrapper(a, copy.deepcopy(cfg))
    assert type(wrapper) is fastopt.AmpOptimWrapper
    ref = torch.optim.AdamW([{"params": [b[0].weight, b[0].bias, b[2].weight, b[2].bias]},
                             {"params": list(b[1].parameters()), "weight_decay": 0.0}],
                            lr=1e-2, weight_decay=0.05, foreach=False)
    scaler = torch.amp.GradScaler("cpu", init_scale=2.0**10)
    cast = getattr(torch, dtype)
    for step in range(4):
        x = torch.randn(5, 6, generator=torch.Generator().manual_seed(step))
        blow_up = float("inf") if step == 1 else 1.0  # the scaler must skip this step
        with wrapper.optim_context(a):
            loss_a = a(x).float().pow(2).mean() * blow_up
        wrapper.update_params(loss_a)
        ref.zero_grad()
        with torch.autocast("cpu", dtype=cast):
            loss_b = b(x).float().pow(2).mean() * blow_up
        scaler.scale(loss_b).backward()
        scaler.unscale_(ref)
        torch.nn.utils.clip_grad_norm_(b.parameters(), max_norm=1.0)
        scaler.step(ref)
        scaler.update()
    for p, q in zip(a.parameters(), b.parameters()):
        torch.testing.assert_close(p, q, rtol=1e-5, atol=1e-6)
    assert wrapper.loss_scaler.get_scale() == scaler.get_scale() < 2.0**10
    state = wrapper.state_dict()
    assert "loss_scaler" in state
    wrapper.load_state_dict(state)


def test_plain_wrapper_clip_by_value_and_momentum(no_mmengine: None) -> None:
    model = _model()
    wrapper = fastopt.build_optim_wrapper(model, dict(optimizer=dict(type="SGD", lr=0.1, momentum=0.9),
                                                      clip_grad=dict(type="value", clip_value=0.01)))
    model(torch.ones(2, 6)).sum().mul(100).backward()
    wrapper.step()
    assert all(p.grad.abs().max() <= 0.01 + 1e-7 for p in model.parameters())
    assert wrapper.get_momentum() == {"momentum": [0.9]}


@needs_cpu_scaler
def test_wrapper_rejects_bad_arguments(no_mmengine: None) -> None:
    """Bad arguments raise ValueError as before, and where mmengine asserts, an AssertionError too."""
    opt = torch.optim.SGD(_model().parameters(), lr=0.1)
    with pytest.raises(ValueError, match="accumulative_counts") as raised:
        fastopt.OptimWrapper(opt, accumulative_counts=0)
    assert isinstance(raised.value, AssertionError)
    with pytest.raises(ValueError, match="clip_grad type"):
        fastopt.OptimWrapper(opt, clip_grad=dict(type="l3", max_norm=1))
    with pytest.raises(ValueError, match="dtype should be any of") as raised:
        fastopt.AmpOptimWrapper(opt, dtype="float8")
    assert isinstance(raised.value, AssertionError)
