"""What the tests need of torch that differs across the supported releases (2.1 to 2.14).

The oracles stay torch's own on every release: where a newer API is missing, the same value
comes from the torch function that existed before it; where torch itself cannot do a thing on
the installed release (loss scaling on the CPU before 2.3, fused CPU kernels before 2.4,
FSDP2 before 2.6), the test is skipped with a reason that says which release it needs.
"""

from __future__ import annotations

import functools
from typing import Any

import pytest
import torch

#: torch.amp.GradScaler, which scales losses on the CPU too (torch >= 2.3)
HAS_CPU_SCALER = hasattr(torch.amp, "GradScaler")
needs_cpu_scaler = pytest.mark.skipif(
    not HAS_CPU_SCALER, reason="needs torch>=2.3: loss scaling on the CPU (torch.amp.GradScaler)")

def _fully_shard() -> Any:
    """FSDP2's ``fully_shard`` where it runs on the CPU (torch >= 2.6, its public name there;
    2.4 and 2.5 have it under ``_composable``, for CUDA streams only), else None."""
    try:
        from torch.distributed.fsdp import fully_shard as fn
    except ImportError:
        return None
    return fn


#: FSDP2's fully_shard, or None where it cannot run on the CPU
fully_shard = _fully_shard()
HAS_FULLY_SHARD = fully_shard is not None

#: torch's error for the inf-norm of an empty tensor, as worded by any supported release
EMPTY_INF_NORM = r"inf(inity)? norm on an empty tensor"


def torch_total_norm(grads: list[torch.Tensor], norm_type: float = 2.0) -> torch.Tensor:
    """The norm of all ``grads`` together as the installed torch computes it:
    ``get_total_norm`` (torch >= 2.6), else ``clip_grad_norm_`` with no limit (which returns
    that norm and multiplies every gradient by exactly 1)."""
    fn = getattr(torch.nn.utils, "get_total_norm", None)
    if fn is not None:
        return fn(grads, norm_type)
    holders = []
    for g in grads:
        holder = torch.zeros_like(g, requires_grad=True)
        holder.grad = g
        holders.append(holder)
    return torch.nn.utils.clip_grad_norm_(holders, float("inf"), norm_type=norm_type)


@functools.cache
def fused_on_cpu(cls: type) -> bool:
    """Whether torch's ``cls`` has a fused kernel for CPU tensors on this release."""
    try:
        p = torch.zeros(2, requires_grad=True)
        opt = cls([p], lr=0.1, fused=True)
        p.grad = torch.ones(2)
        opt.step()
    except (RuntimeError, ValueError, TypeError):
        return False
    return True


@functools.cache
def steps_on_cpu(cls: type, dtype: torch.dtype) -> bool:
    """Whether torch's own ``cls`` (single-tensor path) steps ``dtype`` parameters on the CPU
    on this release (torch 2.1's Adam has no float16 ``addcdiv`` there)."""
    p = torch.zeros(3, dtype=dtype, requires_grad=True)
    opt = cls([p], lr=0.1, foreach=False)
    p.grad = torch.ones_like(p)
    try:
        opt.step()
    except RuntimeError:
        return False
    return True


def skip_without_oracle(cls: type, dtype: torch.dtype) -> None:
    """Skip a comparison with torch's ``cls`` where this torch cannot step ``dtype`` itself."""
    if not steps_on_cpu(cls, dtype):
        pytest.skip(f"no oracle on this torch: torch {torch.__version__}'s own {cls.__name__} "
                    f"cannot step {dtype} on the CPU")


needs_fused_on_cpu = pytest.mark.skipif(
    not all(fused_on_cpu(c) for c in (torch.optim.SGD, torch.optim.Adam, torch.optim.AdamW)),
    reason="needs torch>=2.5: torch's fused SGD/Adam/AdamW kernels on the CPU")
