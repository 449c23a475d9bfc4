"""CUDA: fastopt's optimizers step CUDA tensors through torch's fused kernels on the merged
groups. Runs only where a GPU is present (skipped on CPU-only machines)."""

from __future__ import annotations

import pytest
import torch

from fastopt import optim as fo

from .numerics import assert_few_differ

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")

PAIRS = {"SGD": (fo.SGD, torch.optim.SGD, dict(lr=0.05, momentum=0.9, weight_decay=1e-4)),
         "AdamW": (fo.AdamW, torch.optim.AdamW, dict(lr=1e-3, weight_decay=0.05))}


@pytest.mark.parametrize("name", list(PAIRS))
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_cuda_matches_torch_fused_and_cpu(name: str, dtype: torch.dtype) -> None:
    ours_cls, ref_cls, opts = PAIRS[name]
    torch.manual_seed(0)
    cpu = [torch.randn(s, dtype=dtype, requires_grad=True) for s in [(33, 7), (1000,), (0,)]]
    gpu = [p.detach().cuda().requires_grad_() for p in cpu]
    ref = [p.detach().cuda().requires_grad_() for p in cpu]
    a = ours_cls([{"params": gpu[:1]}, {"params": gpu[1:], "lr": opts["lr"] / 2}], **opts)
    b = ref_cls([{"params": ref[:1]}, {"params": ref[1:], "lr": opts["lr"] / 2}], fused=True, **opts)
    c = ours_cls([{"params": cpu[:1]}, {"params": cpu[1:], "lr": opts["lr"] / 2}], **opts)
    for _ in range(4):
        for x, y, z in zip(gpu, ref, cpu):
            g = torch.randn(z.shape, dtype=dtype)
            x.grad, y.grad, z.grad = g.cuda(), g.cuda(), g.clone()
        a.step()
        b.step()
        c.step()
    assert all(g["fused"] is None for g in a.param_groups)  # groups left as the user built them
    if dtype == torch.float32:
        for x, y, z in zip(gpu, ref, cpu):
            torch.testing.assert_close(x, y, rtol=1e-5, atol=1e-6)
            torch.testing.assert_close(x.cpu(), z, rtol=1e-5, atol=1e-6)
    else:  # bf16: torch's fused kernel on merged groups = on the user's groups; the CPU kernel
        # rounds once per stored value like it, so only a few elements may differ, by an ulp
        assert_few_differ([(x, y) for x, y in zip(gpu, ref)], 1e-3, max_ulps=1, what="vs torch fused")
        assert_few_differ([(x.cpu(), z) for x, z in zip(gpu, cpu)], 1e-2, max_ulps=2, what="vs CPU kernel")


def test_cuda_grad_scaler_skips_inf() -> None:
    p = torch.randn(16, device="cuda", requires_grad=True)
    opt = fo.AdamW([p], lr=1e-2)
    scaler = torch.amp.GradScaler("cuda", init_scale=8.0)
    before = p.detach().clone()
    scaler.scale((p * float("inf")).sum()).backward()
    scaler.step(opt)
    scaler.update()
    assert torch.equal(p, before) and scaler.get_scale() == 4.0


@pytest.mark.parametrize("name", list(PAIRS))
def test_cuda_clip_coefficient_is_folded_into_the_fused_step(name: str) -> None:
    """step(grad_mult=c) on CUDA = clip_grad_norm_ then torch's fused step, with the coefficient
    a device tensor that is never read on the host."""
    ours_cls, ref_cls, opts = PAIRS[name]
    torch.manual_seed(0)
    ps = [torch.randn(s, device="cuda", requires_grad=True) for s in [(33, 7), (1000,)]]
    qs = [p.detach().clone().requires_grad_() for p in ps]
    a = ours_cls(ps, **opts)
    b = ref_cls(qs, fused=True, **opts)
    for _ in range(3):
        for p, q in zip(ps, qs):
            g = torch.randn(p.shape, device="cuda")
            p.grad, q.grad = g.clone(), g.clone()
        norm = torch.nn.utils.get_total_norm([p.grad for p in ps])
        coefficient = torch.clamp(0.5 / (norm + 1e-6), max=1.0)
        a.step(grad_mult=coefficient)
        torch.nn.utils.clip_grad_norm_(qs, 0.5)
        b.step()
        assert a.fastopt_tier == "torch-fused" and getattr(a, "grad_scale", None) is None
    for p, q in zip(ps, qs):
        torch.testing.assert_close(p, q, rtol=1e-5, atol=1e-6)


def test_cuda_clip_under_a_grad_scaler() -> None:
    """A loss scale and a clip coefficient in one fused step: grads divided by scale / c."""
    torch.manual_seed(0)
    p = torch.randn(64, device="cuda", requires_grad=True)
    q = p.detach().clone().requires_grad_()
    a = fo.AdamW([p], lr=1e-2)
    b = torch.optim.AdamW([q], lr=1e-2, fused=True)
    sa = torch.amp.GradScaler("cuda", init_scale=64.0)
    sb = torch.amp.GradScaler("cuda", init_scale=64.0)
    for _ in range(3):
        g = torch.randn(64, device="cuda")
        sa.scale((p * g).sum()).backward()
        sb.scale((q * g).sum()).backward()
        coefficient = torch.clamp(0.1 / (torch.linalg.vector_norm(p.grad / 64.0) + 1e-6), max=1.0)
        a.clip_next_step(coefficient)
        sa.step(a)
        sa.update()
        sb.unscale_(b)
        torch.nn.utils.clip_grad_norm_([q], 0.1)
        sb.step(b)
        sb.update()
        p.grad = q.grad = None
    torch.testing.assert_close(p, q, rtol=1e-5, atol=1e-6)
