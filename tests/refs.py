"""Access to the reference implementations (mmcv 1.7.2, mmengine 0.10.7) for parity tests."""

from __future__ import annotations

import warnings
from typing import Any

import pytest
import torch

from fastopt._compat import ensure_torchvision
from fastopt.grouping import freeze


def mmengine_build() -> Any:
    """mmengine's ``build_optim_wrapper`` (skips the test when mmengine is not installed)."""
    pytest.importorskip("mmengine")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        from mmengine.optim import build_optim_wrapper
    return build_optim_wrapper


def mmcv_runner() -> Any:
    """mmcv 1.x's ``mmcv.runner`` module (torchvision stubbed; skips when mmcv is absent)."""
    pytest.importorskip("mmcv")
    ensure_torchvision()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        import mmcv.runner
    return mmcv.runner


def quiet_mmengine_logger() -> None:
    """Keep mmengine's one-log-line-per-parameter output out of the test log."""
    import logging

    from mmengine.logging import MMLogger

    MMLogger.get_current_instance().setLevel(logging.ERROR)


def per_param(optimizer: torch.optim.Optimizer) -> dict[int, dict]:
    """``id(param) -> every key of its param group except params``; a tensor twice is an error."""
    out: dict[int, dict] = {}
    for group in optimizer.param_groups:
        hyper = {k: v for k, v in group.items() if k != "params"}
        for p in group["params"]:
            assert id(p) not in out, "parameter in two groups"
            out[id(p)] = hyper
    return out


def mismatches(ref: torch.optim.Optimizer, fast: torch.optim.Optimizer,
               names: dict[int, str]) -> list[str]:
    """Human-readable differences between the per-parameter hyperparameters of two optimizers."""
    a, b = per_param(ref), per_param(fast)
    out = []
    for pid in a.keys() - b.keys():
        out.append(f"{names.get(pid, '?')}: only in the reference")
    for pid in b.keys() - a.keys():
        out.append(f"{names.get(pid, '?')}: only in fastopt")
    for pid in a.keys() & b.keys():
        if freeze(a[pid]) != freeze(b[pid]):
            diff = {k: (a[pid].get(k, "<absent>"), b[pid].get(k, "<absent>"))
                    for k in a[pid].keys() | b[pid].keys() if a[pid].get(k) != b[pid].get(k)
                    or type(a[pid].get(k)) is not type(b[pid].get(k))}
            out.append(f"{names.get(pid, '?')}: {diff}")
    return sorted(out)
