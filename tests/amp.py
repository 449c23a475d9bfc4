"""GradScaler helpers shared by the tests of the fused loss-scaled phase."""

from __future__ import annotations

import math
from typing import Any

import torch

from fastopt import optim as fo

from .torch_release import torch_total_norm

#: what GradScaler does to the gradients and the scale outside the fused phase
SCALER_PASSES = ("unscale_", "step", "update")


def cpu_scaler(loss_scale: str | float | dict) -> torch.amp.GradScaler:
    """The GradScaler a ``loss_scale`` config builds ('dynamic', a number, or GradScaler's
    arguments), on the CPU."""
    if loss_scale == "dynamic":
        return torch.amp.GradScaler("cpu")
    if isinstance(loss_scale, dict):
        return torch.amp.GradScaler("cpu", **loss_scale)
    return torch.amp.GradScaler("cpu", init_scale=loss_scale)


def refuse_scaler_passes(scaler: torch.amp.GradScaler) -> None:
    """Make ``scaler``'s unscale_, step and update raise: the fused phase must do without them."""
    for name in SCALER_PASSES:
        setattr(scaler, name, _refuse(name))


def _refuse(what: str) -> Any:
    def refuse(*args: Any, **kwargs: Any) -> None:
        raise AssertionError(f"the fused phase must not call GradScaler.{what}")

    return refuse


#: fastopt optimizer, torch's, and their arguments, for the fused-kernel (CUDA) tier's checks
FUSED_PAIRS = {"SGD": (fo.SGD, torch.optim.SGD, dict(lr=0.05, momentum=0.9, weight_decay=1e-4)),
               "Adam": (fo.Adam, torch.optim.Adam, dict(lr=1e-2, weight_decay=1e-4)),
               "AdamW": (fo.AdamW, torch.optim.AdamW, dict(lr=1e-2, weight_decay=1e-2))}


def check_coefficient_folded_into_grad_scale(name: str, device: str) -> None:
    """step(grad_mult=c) on the torch-fused tier = clip_grad_norm_ then torch's fused step, the
    coefficient a tensor the host never reads, no grad_scale left behind."""
    ours_cls, ref_cls, opts = FUSED_PAIRS[name]
    torch.manual_seed(0)
    ps = [torch.randn(s, device=device, requires_grad=True) for s in [(33, 7), (1000,)]]
    qs = [p.detach().clone().requires_grad_() for p in ps]
    a, b = ours_cls(ps, **opts), ref_cls(qs, fused=True, **opts)
    for _ in range(3):
        for p, q in zip(ps, qs):
            g = torch.randn(p.shape, device=device)
            p.grad, q.grad = g.clone(), g.clone()
        norm = torch_total_norm([p.grad for p in ps])
        a.step(grad_mult=torch.clamp(0.5 / (norm + 1e-6), max=1.0))
        torch.nn.utils.clip_grad_norm_(qs, 0.5)
        b.step()
        assert a.fastopt_tier == "torch-fused" and getattr(a, "grad_scale", None) is None
    for p, q in zip(ps, qs):
        torch.testing.assert_close(p, q, rtol=1e-5, atol=1e-6)


def check_clip_under_a_grad_scaler(device: str) -> None:
    """A loss scale and a clip coefficient in one fused step (grads divided by scale / c), an
    overflow skipped by the kernel, against GradScaler's unscale_ + clip_grad_norm_ + step."""
    torch.manual_seed(0)
    p = torch.randn(64, device=device, requires_grad=True)
    q = p.detach().clone().requires_grad_()
    a, b = fo.AdamW([p], lr=1e-2), torch.optim.AdamW([q], lr=1e-2, fused=True)
    sa, sb = torch.amp.GradScaler(device, init_scale=64.0), torch.amp.GradScaler(device, init_scale=64.0)
    for step in range(4):
        g = torch.randn(64, device=device) * (math.inf if step == 2 else 1.0)
        sa.scale((p * g).sum()).backward()
        sb.scale((q * g).sum()).backward()
        unscaled_norm = torch.linalg.vector_norm(p.grad / sa.get_scale())
        a.clip_next_step(torch.clamp(0.1 / (unscaled_norm + 1e-6), max=1.0))
        sa.step(a)
        sa.update()
        sb.unscale_(b)
        torch.nn.utils.clip_grad_norm_([q], 0.1)
        sb.step(b)
        sb.update()
        assert a.fastopt_tier == "torch-fused" and sa.get_scale() == sb.get_scale()
        p.grad = q.grad = None
    torch.testing.assert_close(p, q, rtol=1e-5, atol=1e-6)


def check_copies_step_alike(model: torch.nn.Module, wrapper: Any) -> None:
    """``wrapper`` (over ``model``) pickles and deep-copies to an object of its own class whose
    settings match, and a deep copy of both steps the copied model exactly as the original."""
    import copy
    import pickle

    model(torch.ones(2, 16)).sum().backward()
    for copied in (pickle.loads(pickle.dumps((model, wrapper)))[1], copy.deepcopy(wrapper)):
        assert type(copied) is type(wrapper)
        assert copied.optimizer is not wrapper.optimizer
        assert [g["lr"] for g in copied.param_groups] == [g["lr"] for g in wrapper.param_groups]
        assert copied.clip_grad_kwargs == wrapper.clip_grad_kwargs
    twin_model, twin = copy.deepcopy((model, wrapper))
    for p, q in zip(model.parameters(), twin_model.parameters()):
        q.grad = p.grad.clone()  # (a deep copy of a parameter leaves its gradient behind)
    wrapper.step()
    twin.step()
    for p, q in zip(model.parameters(), twin_model.parameters()):
        torch.testing.assert_close(p, q, rtol=0, atol=0)
