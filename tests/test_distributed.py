"""Distributed training on CPU (gloo, 2 processes): DDP, ZeroRedundancyOptimizer and FSDP2
(fully_shard: the kernel steps each rank's local shards) with fastopt give the same
parameters as one process stepping on the averaged gradients."""

from __future__ import annotations

import copy
import os
import socket
import tempfile

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from torch import nn

import fastopt
from fastopt import optim as fo

WORLD = 2
CFG = dict(optimizer=dict(type="AdamW", lr=1e-2, weight_decay=0.05),
           paramwise_cfg=dict(norm_decay_mult=0.0, custom_keys={"1.": dict(lr_mult=0.5)}))


def _model() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(6, 8), nn.LayerNorm(8), nn.ReLU(), nn.Linear(8, 2))


def _batch(rank: int, step: int) -> torch.Tensor:
    return torch.randn(4, 6, generator=torch.Generator().manual_seed(100 * step + rank))


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _worker(rank: int, port: int, out_dir: str, mode: str) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=WORLD)
    try:
        model = _model()
        if mode == "fsdp2":
            from torch.distributed.fsdp import fully_shard

            fully_shard(model)
            opt = fastopt.build_optim_wrapper(model, copy.deepcopy(CFG)).optimizer
            net = model
        elif mode == "ddp":
            ddp = nn.parallel.DistributedDataParallel(model)
            opt = fastopt.build_optim_wrapper(ddp, copy.deepcopy(CFG)).optimizer  # unwraps .module
            net = ddp
        else:
            from torch.distributed.optim import ZeroRedundancyOptimizer

            ddp = nn.parallel.DistributedDataParallel(model)
            opt = ZeroRedundancyOptimizer(ddp.parameters(), optimizer_class=fo.AdamW, lr=1e-2,
                                          weight_decay=0.05)
            net = ddp
        for step in range(3):
            opt.zero_grad()
            net(_batch(rank, step)).pow(2).mean().backward()
            opt.step()
        full = [p.full_tensor() if hasattr(p, "full_tensor") else p for p in model.parameters()]
        plan = getattr(opt, "_fastopt_plan", None)
        native = bool(plan is not None and plan.native) if mode != "zero" else True
        if rank == 0:
            torch.save(([p.detach() for p in full], native), os.path.join(out_dir, f"{mode}.pt"))
    finally:
        dist.destroy_process_group()


def _single(mode: str) -> list[torch.Tensor]:
    model = _model()
    if mode in ("ddp", "fsdp2"):
        opt = fastopt.build_optim_wrapper(model, copy.deepcopy(CFG)).optimizer
    else:
        opt = torch.optim.AdamW(model.parameters(), lr=1e-2, weight_decay=0.05, foreach=False)
    for step in range(3):
        opt.zero_grad()
        # DDP averages gradients over ranks: the mean loss over both ranks' batches
        loss = sum(model(_batch(r, step)).pow(2).mean() for r in range(WORLD)) / WORLD
        loss.backward()
        opt.step()
    return [p.detach() for p in model.parameters()]


@pytest.mark.parametrize("mode", ["ddp", "zero", "fsdp2"])
def test_two_processes_match_one(mode: str) -> None:
    if not dist.is_available() or not dist.is_gloo_available():
        pytest.skip("torch.distributed with gloo is not available")
    with tempfile.TemporaryDirectory() as out:
        mp.spawn(_worker, args=(_free_port(), out, mode), nprocs=WORLD, join=True)
        got, native = torch.load(os.path.join(out, f"{mode}.pt"))
    assert native, "the native kernel should have stepped (local shards for FSDP2)"
    for a, b in zip(got, _single(mode)):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)
