"""Flat-buffer mode: same results as torch with zero-initialised gradients, stable buffers."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

from fastopt import optim as fo

from .torch_release import needs_cpu_scaler

pytest.importorskip("fastopt._C")


def small_model() -> nn.Module:
    # (no bias before the norm layer: its gradient is ~0 and Adam would amplify rounding noise)
    return nn.Sequential(nn.Conv2d(3, 4, 3, bias=False), nn.BatchNorm2d(4), nn.ReLU(),
                         nn.Conv2d(4, 4, 3, groups=4), nn.Flatten(), nn.Linear(4 * 4 * 4, 3))


CASES = [(fo.AdamW, torch.optim.AdamW, dict(lr=1e-2, weight_decay=0.1)),
         (fo.Adam, torch.optim.Adam, dict(lr=1e-2, weight_decay=0.1, amsgrad=True)),
         (fo.SGD, torch.optim.SGD, dict(lr=0.05, momentum=0.9, dampening=0.1, weight_decay=1e-2))]


def grouped(model: nn.Module) -> list[dict]:
    ps = list(model.parameters())
    return [{"params": ps[0::2]}, {"params": ps[1::2], "lr": 0.02}]


@pytest.mark.parametrize(("ours_cls", "ref_cls", "opts"), CASES)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_flat_matches_torch(ours_cls: type, ref_cls: type, opts: dict, dtype: torch.dtype) -> None:
    torch.manual_seed(0)
    m1 = small_model().to(dtype)
    m2 = copy.deepcopy(m1)
    a, b = ours_cls(grouped(m1), **opts), ref_cls(grouped(m2), foreach=False, **opts)
    a.use_flat_buffers()
    for q in m2.parameters():  # flat mode: every parameter always has a gradient
        q.grad = torch.zeros_like(q)
    x = torch.randn(2, 3, 8, 8, dtype=dtype)
    for step in range(5):
        for model, opt in ((m1, a), (m2, b)):
            if step == 3:
                model.zero_grad()  # frees every grad: flat mode must notice and re-attach
            else:
                opt.zero_grad(set_to_none=False)
            model(x).pow(2).mean().backward()
            opt.step()
        for q in m2.parameters():
            if q.grad is None:
                q.grad = torch.zeros_like(q)
    tol = dict(rtol=1e-5, atol=1e-6) if dtype == torch.float32 else dict(rtol=1e-12, atol=1e-14)
    for p, q in zip(m1.parameters(), m2.parameters()):
        torch.testing.assert_close(p, q, **tol)
    for p, q in zip(m1.parameters(), m2.parameters()):
        for key, value in b.state[q].items():
            torch.testing.assert_close(a.state[p][key], value, **tol)
    flat = a.flat_buffers
    assert not flat.params_moved()
    views = [(p, v) for s in flat.segments for p, v in zip(s.params, s.grad_views)]
    assert all(p.grad.data_ptr() == v.data_ptr() for p, v in views)


def test_flat_state_dict_round_trip_and_reload() -> None:
    torch.manual_seed(0)
    model = small_model()
    opt = fo.AdamW(grouped(model), lr=1e-2)
    opt.use_flat_buffers()
    x = torch.randn(2, 3, 8, 8)
    for _ in range(2):
        opt.zero_grad()
        model(x).sum().backward()
        opt.step()
    sd = copy.deepcopy(opt.state_dict())
    ref_model = copy.deepcopy(model)
    ref = torch.optim.AdamW(grouped(ref_model), lr=1e-2, foreach=False)
    ref.load_state_dict(sd)  # fastopt flat -> torch
    opt.load_state_dict(sd)  # and back into flat mode
    assert opt.flat_buffers is not None
    for m, o in ((model, opt), (ref_model, ref)):
        o.zero_grad(set_to_none=False)
        m(x).sum().backward()
        o.step()
    for p, q in zip(model.parameters(), ref_model.parameters()):
        torch.testing.assert_close(p, q)


def test_flat_rejects_what_it_cannot_take() -> None:
    p = nn.Parameter(torch.randn(4, 6).t())
    with pytest.raises(ValueError, match="contiguous"):
        fo.SGD([p], lr=0.1).use_flat_buffers()


@needs_cpu_scaler
def test_flat_grad_scaler_skips_inf() -> None:
    model = small_model()
    opt = fo.SGD(model.parameters(), lr=0.1, momentum=0.9)
    opt.use_flat_buffers()
    scaler = torch.amp.GradScaler("cpu", init_scale=8.0)
    before = [p.detach().clone() for p in model.parameters()]
    opt.zero_grad()
    scaler.scale(model(torch.randn(2, 3, 8, 8)).sum() * float("inf")).backward()
    scaler.step(opt)
    scaler.update()
    assert all(torch.equal(a, b) for a, b in zip(before, model.parameters()))
    assert scaler.get_scale() == 4.0
