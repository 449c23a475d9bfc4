"""fastopt's LearningRateDecayOptimizerConstructor against MMDetection 3.3's original.

mmdet 3.x does not import beside mmcv 1.7.2, so the original module file is loaded on its
own, with ``mmdet.registry`` pointed at a scratch mmengine registry.
"""

from __future__ import annotations

import copy
import functools
import importlib.util
import sys
import types
import warnings
from typing import Any

import pytest
import torch
from torch import nn

import fastopt

from .refs import mismatches, quiet_mmengine_logger


@functools.cache
def _load_original() -> Any:
    spec = importlib.util.find_spec("mmdet")
    path = f"{spec.submodule_search_locations[0]}/engine/optimizers/layer_decay_optimizer_constructor.py"
    from mmengine.registry import OPTIM_WRAPPER_CONSTRUCTORS, Registry

    stub = types.ModuleType("mmdet.registry")
    stub.OPTIM_WRAPPER_CONSTRUCTORS = Registry("scratch constructors", parent=OPTIM_WRAPPER_CONSTRUCTORS,
                                               scope="fastopt_tests")
    saved = {k: sys.modules.get(k) for k in ("mmdet", "mmdet.registry")}
    sys.modules["mmdet"] = types.ModuleType("mmdet")
    sys.modules["mmdet.registry"] = stub
    try:
        module_spec = importlib.util.spec_from_file_location("mmdet_layer_decay_original", path)
        module = importlib.util.module_from_spec(module_spec)
        module_spec.loader.exec_module(module)
    finally:
        for k, v in saved.items():
            if v is None:
                sys.modules.pop(k, None)
            else:
                sys.modules[k] = v
    return module.LearningRateDecayOptimizerConstructor


def _original() -> Any:
    pytest.importorskip("mmengine")
    spec = importlib.util.find_spec("mmdet")
    if spec is None or not spec.submodule_search_locations:
        pytest.skip("mmdet (the reference) is not installed")
    return _load_original()


class ConvNeXt(nn.Module):
    """ConvNeXt-shaped backbone with mmdet/mmpretrain parameter names (depths 2, 2, 9, 2)."""

    def __init__(self, dims: tuple[int, ...] = (4, 8, 8, 8), depths: tuple[int, ...] = (2, 2, 9, 2)) -> None:
        super().__init__()
        self.downsample_layers = nn.ModuleList(
            [nn.Sequential(nn.Conv2d(3, dims[0], 4, 4), nn.LayerNorm(dims[0]))]
            + [nn.Sequential(nn.LayerNorm(dims[i - 1]), nn.Conv2d(dims[i - 1], dims[i], 2, 2))
               for i in range(1, 4)])
        self.stages = nn.ModuleList()
        for dim, depth in zip(dims, depths):
            blocks = nn.Sequential()
            for _ in range(depth):
                block = nn.Module()
                block.depthwise_conv = nn.Conv2d(dim, dim, 7, padding=3, groups=dim)
                block.norm = nn.LayerNorm(dim)
                block.pointwise_conv1 = nn.Linear(dim, 4 * dim)
                block.pointwise_conv2 = nn.Linear(4 * dim, dim)
                block.gamma = nn.Parameter(torch.ones(dim))
                blocks.append(block)
            self.stages.append(blocks)
        self.norm3 = nn.LayerNorm(dims[-1])


class Detector(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.backbone = ConvNeXt()
        self.neck = nn.Conv2d(8, 8, 1)
        self.head = nn.Linear(8, 3)
        self.backbone.downsample_layers[0][0].weight.requires_grad_(False)  # a frozen stem weight


def _per_param(opt: torch.optim.Optimizer) -> dict[int, dict]:
    return {id(p): {k: v for k, v in g.items() if k not in ("params", "param_names")}
            for g in opt.param_groups for p in g["params"]}


@pytest.mark.parametrize("decay_type", ["layer_wise", "stage_wise"])
@pytest.mark.parametrize("opt_type", ["AdamW", "SGD"])
def test_matches_mmdetection(decay_type: str, opt_type: str) -> None:
    original = _original()
    quiet_mmengine_logger()
    model = Detector()
    cfg = dict(optimizer=dict(type=opt_type, lr=1e-3, weight_decay=0.05),
               paramwise_cfg=dict(num_layers=6, decay_rate=0.7, decay_type=decay_type))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        wrapper_cfg = {k: v for k, v in copy.deepcopy(cfg).items() if k != "paramwise_cfg"}
        paramwise = copy.deepcopy(cfg["paramwise_cfg"])
        ref = original(optim_wrapper_cfg=wrapper_cfg, paramwise_cfg=paramwise)(model)
        fast = fastopt.build_optim_wrapper(model, dict(copy.deepcopy(cfg),
                                                       constructor="LearningRateDecayOptimizerConstructor"))
    names = {id(p): n for n, p in model.named_parameters()}
    assert mismatches(ref.optimizer, fast.optimizer, names) == []
    assert type(fast.optimizer).__module__ == "fastopt.optim"
    lrs = {g["lr"] for g in fast.optimizer.param_groups}
    assert len(lrs) > 3  # the decay really spreads the lrs
    ref_names = sorted(n for g in ref.optimizer.param_groups for n in g["param_names"])
    assert ref_names == sorted(n for g in fast.optimizer.param_groups for n in g["param_names"])
    assert _per_param(ref.optimizer).keys() == _per_param(fast.optimizer).keys()


def test_needs_a_convnext_backbone() -> None:
    model = nn.Module()
    model.backbone = nn.Linear(2, 2)
    with pytest.raises(NotImplementedError, match="ConvNeXt"):
        fastopt.build_optim_wrapper(model, dict(optimizer=dict(type="SGD", lr=0.1, weight_decay=0.1),
                                                constructor="LearningRateDecayOptimizerConstructor",
                                                paramwise_cfg=dict(num_layers=6, decay_rate=0.7)))
