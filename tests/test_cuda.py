"""CUDA: fastopt's optimizers step CUDA tensors through torch's fused kernels on the merged
groups. Runs only where a GPU is present (skipped on CPU-only machines)."""

from __future__ import annotations

import pytest
import torch

from fastopt import optim as fo

from .amp import FUSED_PAIRS, check_clip_under_a_grad_scaler, check_coefficient_folded_into_grad_scale
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


@pytest.mark.parametrize("name", list(FUSED_PAIRS))
def test_cuda_clip_coefficient_is_folded_into_the_fused_step(name: str) -> None:
    check_coefficient_folded_into_grad_scale(name, "cuda")


def test_cuda_clip_under_a_grad_scaler() -> None:
    check_clip_under_a_grad_scaler("cuda")
