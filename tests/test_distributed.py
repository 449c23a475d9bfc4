"""Distributed training on CPU (gloo, 2 processes): under DDP, ZeroRedundancyOptimizer and FSDP2
(fully_shard: the kernel steps each rank's local shards), fastopt's optimizer ends with the same
parameters as torch's own AdamW under the same wrapper, built from the same config by mmengine,
and its native kernel did the stepping (on the optimizer ZeRO keeps for each rank's shard)."""

from __future__ import annotations

import copy
import gc
import os
import socket
import tempfile
from typing import Any

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from torch import nn

import fastopt
from fastopt import optim as fo

from .refs import mmengine_build
from .torch_release import HAS_FULLY_SHARD, fully_shard

WORLD = 2
CFG = dict(optimizer=dict(type="AdamW", lr=1e-2, weight_decay=0.05, foreach=False),
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


def _build(mode: str, impl: str) -> tuple[nn.Module, nn.Module, torch.optim.Optimizer]:
    """(model, the module to call, optimizer) for one wrapper; ``impl`` is fastopt or torch."""
    model = _model()
    if mode == "zero":
        from torch.distributed.optim import ZeroRedundancyOptimizer

        ddp = nn.parallel.DistributedDataParallel(model)
        cls = fo.AdamW if impl == "fastopt" else torch.optim.AdamW
        return model, ddp, ZeroRedundancyOptimizer(ddp.parameters(), optimizer_class=cls, lr=1e-2,
                                                   weight_decay=0.05)
    build = fastopt.build_optim_wrapper if impl == "fastopt" else mmengine_build()
    if mode.startswith("fsdp2"):
        fully_shard(model)
        if mode == "fsdp2-clip":  # the wrapper clips: the norm must span every rank's shard
            return model, model, build(model, dict(copy.deepcopy(CFG), clip_grad=dict(max_norm=0.05)))
        return model, model, build(model, copy.deepcopy(CFG)).optimizer
    ddp = nn.parallel.DistributedDataParallel(model)
    return model, ddp, build(ddp, copy.deepcopy(CFG)).optimizer  # both unwrap .module


def _stepped_natively(opt: Any) -> bool:
    opt = getattr(opt, "optimizer", opt)  # an OptimWrapper's optimizer
    local = getattr(opt, "optim", opt)  # ZeRO steps its rank's shard with an optimizer of its own
    return getattr(local, "fastopt_tier", None) == "native"


def _worker(rank: int, port: int, out_dir: str, mode: str, impl: str) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=WORLD)
    try:
        model, net, opt = _build(mode, impl)
        for step in range(3):
            loss = net(_batch(rank, step)).pow(2).mean()
            if isinstance(opt, torch.optim.Optimizer):
                opt.zero_grad()
                loss.backward()
                opt.step()
            else:  # a wrapper: backward, clip, step, zero_grad
                opt.update_params(loss)
        full = [p.full_tensor() if hasattr(p, "full_tensor") else p for p in model.parameters()]
        result = ([p.detach().clone() for p in full], _stepped_natively(opt))
        if rank == 0:
            torch.save(result, os.path.join(out_dir, f"{mode}-{impl}.pt"))
        # DDP's reducer and ZeRO hold gloo work objects: release them before the group goes down,
        # and have no collective still in flight then
        del model, net, opt, full
        gc.collect()
        dist.barrier()
    finally:
        dist.destroy_process_group()


def _run(mode: str, impl: str, out: str) -> tuple[list[torch.Tensor], bool]:
    """Train in two fresh processes (one process group per run) and return rank 0's result."""
    mp.spawn(_worker, args=(_free_port(), out, mode, impl), nprocs=WORLD, join=True)
    return torch.load(os.path.join(out, f"{mode}-{impl}.pt"), weights_only=True)


@pytest.mark.parametrize("mode", ["ddp", "zero", "fsdp2", "fsdp2-clip"])
def test_two_processes_match_torch_under_the_same_wrapper(mode: str) -> None:
    mmengine_build()  # the reference must be importable here before the workers start
    if not dist.is_available() or not dist.is_gloo_available():
        pytest.skip("torch.distributed with gloo is not available")
    if mode.startswith("fsdp2") and not HAS_FULLY_SHARD:
        pytest.skip("needs torch>=2.6: FSDP2 on the CPU (torch.distributed.fsdp.fully_shard)")
    with tempfile.TemporaryDirectory() as out:
        ours, native = _run(mode, "fastopt", out)
        theirs, torch_native = _run(mode, "torch", out)
    assert native, "the native kernel should have stepped (local shards for FSDP2, ZeRO's shard optimizer)"
    assert not torch_native
    for a, b in zip(ours, theirs):
        torch.testing.assert_close(a, b, rtol=1e-6, atol=1e-7)
    moved = [not torch.equal(p, q) for p, q in zip(ours, _model().parameters())]
    assert all(moved), "every parameter should have been updated"
