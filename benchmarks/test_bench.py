"""pytest-benchmark suites: construction and step, fastopt beside the references, one run.

    pytest benchmarks/test_bench.py --benchmark-json=bench.json

Group names pair the variants (compare within a group); not part of the test run.
"""

from __future__ import annotations

import copy
from typing import Any

import pytest
import torch

import fastopt
from fastopt.tools import zoo
from fastopt.tools.check import installed_reference

MODELS = ["retinanet_r50_fpn", "cascade_mask_rcnn_swin_l"]


def _mmengine() -> Any:
    build = installed_reference("mmengine")
    if build is None:
        pytest.skip("mmengine not installed")
    return build


def _mmcv() -> Any:
    build = installed_reference("mmcv")
    if build is None:
        pytest.skip("mmcv 1.x not installed")
    return build


def _cfg(name: str) -> dict:
    spec = zoo.MODELS[name]
    return dict(optimizer=dict(spec.optimizer), paramwise_cfg=spec.paramwise_cfg or dict(norm_decay_mult=0.0))


@pytest.mark.filterwarnings("ignore")
@pytest.mark.parametrize("impl", ["fastopt", "fastopt (mmcv API)", "mmengine", "mmcv"])
@pytest.mark.parametrize("name", MODELS)
def test_construct(benchmark: Any, name: str, impl: str) -> None:
    benchmark.group = f"construct {name}"
    model = zoo.build(name)
    cfg = _cfg(name)
    if impl in ("mmcv", "fastopt (mmcv API)"):
        cfg = dict(cfg["optimizer"], paramwise_cfg=cfg["paramwise_cfg"])
        build = fastopt.build_optimizer if impl.startswith("fastopt") else _mmcv()
    else:
        build = fastopt.build_optim_wrapper if impl == "fastopt" else _mmengine()
    build(model, copy.deepcopy(cfg))  # warm-up
    out = benchmark(lambda: build(model, copy.deepcopy(cfg)))
    assert getattr(out, "optimizer", out).param_groups


STEP_IMPLS = ["fastopt", "fastopt flat", "torch fused merged", "mmengine", "mmengine+fused"]


@pytest.mark.filterwarnings("ignore")
@pytest.mark.parametrize("impl", STEP_IMPLS)
def test_step_adamw(benchmark: Any, impl: str) -> None:
    benchmark.group = "AdamW step cascade_mask_rcnn_swin_l (width 0.1)"
    model = zoo.build("cascade_mask_rcnn_swin_l", width=0.1)
    cfg = _cfg("cascade_mask_rcnn_swin_l")
    if impl.startswith("mmengine"):
        if impl == "mmengine+fused":
            cfg["optimizer"]["fused"] = True
        opt = _mmengine()(model, cfg).optimizer
    else:
        opt = fastopt.build_optim_wrapper(model, cfg).optimizer
        if impl == "torch fused merged":
            groups = [{k: v for k, v in g.items() if k not in ("fused", "foreach")} for g in opt.param_groups]
            opt = torch.optim.AdamW(groups, fused=True)
        elif impl == "fastopt flat":
            opt.use_flat_buffers()
    for g in opt.param_groups:
        for p in g["params"]:
            p.grad = torch.randn_like(p) * 1e-3
    opt.step()
    benchmark(opt.step)
