"""fastopt's LearningRateDecayOptimizerConstructor against the originals in MMDetection 3.3
(ConvNeXt) and MMSegmentation 1.2 (ConvNeXt, BEiT, MAE).

Neither package imports beside mmcv 1.7.2, so each original module file is loaded on its
own, with ``<package>.registry`` pointed at a scratch mmengine registry.
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
def _load_original(package: str) -> Any:
    spec = importlib.util.find_spec(package)
    path = f"{spec.submodule_search_locations[0]}/engine/optimizers/layer_decay_optimizer_constructor.py"
    from mmengine.registry import OPTIM_WRAPPER_CONSTRUCTORS, Registry

    stub = types.ModuleType(f"{package}.registry")
    stub.OPTIM_WRAPPER_CONSTRUCTORS = Registry(f"scratch {package} constructors",
                                               parent=OPTIM_WRAPPER_CONSTRUCTORS, scope=f"test_{package}")
    names = (package, f"{package}.registry")
    saved = {k: sys.modules.get(k) for k in names}
    sys.modules[package] = types.ModuleType(package)
    sys.modules[f"{package}.registry"] = stub
    try:
        module_spec = importlib.util.spec_from_file_location(f"{package}_layer_decay_original", path)
        module = importlib.util.module_from_spec(module_spec)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            module_spec.loader.exec_module(module)
    finally:
        for k, v in saved.items():
            if v is None:
                sys.modules.pop(k, None)
            else:
                sys.modules[k] = v
    return module.LearningRateDecayOptimizerConstructor


def _original(package: str) -> Any:
    pytest.importorskip("mmengine")
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        pytest.skip(f"{package} (the reference) is not installed")
    return _load_original(package)


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


class BEiT(nn.Module):
    """BEiT-shaped backbone (mmseg names): embeddings, patch_embed, 4 layers, final norms."""

    def __init__(self, dim: int = 8, layers: int = 4) -> None:
        super().__init__()
        self.cls_token = nn.Parameter(torch.zeros(1, 1, dim))
        self.patch_embed = nn.Module()
        self.patch_embed.projection = nn.Conv2d(3, dim, 4, 4)
        self.layers = nn.ModuleList()
        for _ in range(layers):
            layer = nn.Module()
            layer.ln1 = nn.LayerNorm(dim)
            layer.attn = nn.Module()
            layer.attn.qkv = nn.Linear(dim, 3 * dim, bias=False)
            layer.attn.q_bias = nn.Parameter(torch.zeros(dim))
            layer.attn.relative_position_bias_table = nn.Parameter(torch.zeros(9, 2))
            layer.gamma_1 = nn.Parameter(torch.ones(dim))
            layer.ffn = nn.Sequential(nn.Linear(dim, 2 * dim), nn.Linear(2 * dim, dim))
            self.layers.append(layer)
        self.ln1 = nn.LayerNorm(dim)


class Detector(nn.Module):
    def __init__(self, backbone: str = "ConvNeXt") -> None:
        super().__init__()
        self.backbone = ConvNeXt() if backbone == "ConvNeXt" else BEiT()
        self.neck = nn.Conv2d(8, 8, 1)
        self.head = nn.Linear(8, 3)
        bb = self.backbone
        stem = bb.downsample_layers[0][0] if backbone == "ConvNeXt" else bb.patch_embed.projection
        stem.weight.requires_grad_(False)  # a frozen stem weight


def _per_param(opt: torch.optim.Optimizer) -> dict[int, dict]:
    return {id(p): {k: v for k, v in g.items() if k not in ("params", "param_names")}
            for g in opt.param_groups for p in g["params"]}


CASES = [("mmdet", "ConvNeXt", "layer_wise"), ("mmdet", "ConvNeXt", "stage_wise"),
         ("mmseg", "ConvNeXt", "layer_wise"), ("mmseg", "ConvNeXt", "stage_wise"),
         ("mmseg", "BEiT", "layer_wise")]


@pytest.mark.parametrize(("package", "backbone", "decay_type"), CASES)
@pytest.mark.parametrize("opt_type", ["AdamW", "SGD"])
def test_matches_openmmlab(package: str, backbone: str, decay_type: str, opt_type: str) -> None:
    original = _original(package)
    quiet_mmengine_logger()
    model = Detector(backbone)
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
    with pytest.raises(NotImplementedError, match="defined for ConvNeXt"):
        fastopt.build_optim_wrapper(model, dict(optimizer=dict(type="SGD", lr=0.1, weight_decay=0.1),
                                                constructor="LearningRateDecayOptimizerConstructor",
                                                paramwise_cfg=dict(num_layers=6, decay_rate=0.7)))
