"""Step-time robustness: threads, mixed dtypes, repeated construction, 64-bit indexing."""

from __future__ import annotations

import gc
import os
import threading

import pytest
import torch
from torch import nn

import fastopt
from fastopt import optim as fo

from .numerics import assert_few_differ
from .test_optim import LOW_PRECISION_SHARE

pytest.importorskip("fastopt._C")


def _rss_mb() -> float:
    with open("/proc/self/statm") as fh:
        return int(fh.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


def test_mixed_dtypes_across_groups_match_torch() -> None:
    torch.manual_seed(0)
    shapes = [(5, 3), (40_000,), (7,)]
    dtypes = [torch.float32, torch.float64, torch.bfloat16]
    ps = [torch.randn(s, dtype=d, requires_grad=True) for s, d in zip(shapes, dtypes)]
    qs = [p.detach().clone().requires_grad_() for p in ps]
    ours = fo.AdamW([{"params": [p]} for p in ps], lr=0.01)
    ref = torch.optim.AdamW([{"params": [q]} for q in qs], lr=0.01, foreach=False)
    for _ in range(3):
        for p, q in zip(ps, qs):
            g = torch.randn_like(p)
            p.grad, q.grad = g.clone(), g.clone()
        ours.step()
        ref.step()
    assert ours.fastopt_tier == "native"
    for p, q, tol in zip(ps[:2], qs[:2], [1e-6, 1e-12]):
        torch.testing.assert_close(p, q, rtol=tol, atol=tol)
    assert_few_differ([(ps[2], qs[2])], LOW_PRECISION_SHARE, max_ulps=1, what="bf16 parameter")


def test_two_optimizers_step_from_two_threads() -> None:
    torch.manual_seed(0)
    sets = [[torch.randn(50_000, requires_grad=True) for _ in range(4)] for _ in range(2)]
    refs = [[p.detach().clone().requires_grad_() for p in ps] for ps in sets]
    for ps, qs in zip(sets, refs):
        for p, q in zip(ps, qs):
            p.grad = torch.randn_like(p)
            q.grad = p.grad.clone()
    ours = [fo.SGD(ps, lr=0.1, momentum=0.9) for ps in sets]
    theirs = [torch.optim.SGD(qs, lr=0.1, momentum=0.9, foreach=False) for qs in refs]

    def run(opt: torch.optim.Optimizer) -> None:
        for _ in range(20):
            opt.step()

    threads = [threading.Thread(target=run, args=(o,)) for o in ours]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    for opt in theirs:
        run(opt)
    for ps, qs in zip(sets, refs):
        for p, q in zip(ps, qs):
            torch.testing.assert_close(p, q)


def test_no_growth_over_1000_construct_step_cycles() -> None:
    model = nn.Sequential(*[nn.Sequential(nn.Conv2d(4, 4, 1), nn.BatchNorm2d(4)) for _ in range(20)])
    cfg = dict(optimizer=dict(type="AdamW", lr=1e-3, weight_decay=0.05),
               paramwise_cfg=dict(norm_decay_mult=0.0, custom_keys={"1.": dict(lr_mult=0.1)}))
    for p in model.parameters():
        p.grad = torch.ones_like(p)

    def cycle(n: int) -> None:
        for _ in range(n):
            opt = fastopt.build_optim_wrapper(model, cfg).optimizer
            opt.step()
            opt.zero_grad(set_to_none=False)

    cycle(100)  # warm-up: allocator pools, caches
    gc.collect()
    before = _rss_mb()
    cycle(1000)
    gc.collect()
    assert _rss_mb() - before < 16, "memory grows with repeated construction and stepping"


@pytest.mark.skipif(os.environ.get("FASTOPT_BIG_TESTS") != "1", reason="needs ~9 GB; set FASTOPT_BIG_TESTS=1")
def test_tensor_over_2_pow_31_elements() -> None:
    n = 2**31 + 7
    p = nn.Parameter(torch.zeros(n, dtype=torch.bfloat16))
    p.grad = torch.ones(n, dtype=torch.bfloat16)
    fo.SGD([p], lr=0.5).step()
    # the last elements are past the 32-bit index range: they must be updated too
    assert p[-1].item() == -0.5 and p[2**31].item() == -0.5 and p[0].item() == -0.5
