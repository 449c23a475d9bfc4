"""Bad input gets a clear error (or warning) when the optimizer is built, naming the offending key.

The table mirrors docs/errors.md: (id, call, exception, message regex).
"""

from __future__ import annotations

import math
import warnings
from typing import Any, Callable

import pytest
import torch
from torch import nn

import fastopt
from fastopt import optim as fo

from . import models as M


def model() -> nn.Module:
    return nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), nn.Linear(4, 2))


def mmcv(cfg: Any, m: Any = None) -> Callable[[], Any]:
    return lambda: fastopt.build_optimizer(model() if m is None else m, cfg)


def engine(cfg: Any, m: Any = None) -> Callable[[], Any]:
    return lambda: fastopt.build_optim_wrapper(model() if m is None else m, cfg)


SGD = dict(type="SGD", lr=0.1, weight_decay=1e-4)
NO_WD = dict(type="SGD", lr=0.1)


def backbone_model(kind: str, nested_blocks: bool = False) -> nn.Module:
    """A model whose backbone class is named ``kind`` (the layer-decay constructors read it)."""
    m = nn.Module()
    m.backbone = type(kind, (nn.Module,), {})()
    m.backbone.stem = nn.Conv2d(3, 4, 1)
    if nested_blocks:
        m.backbone.stage = nn.Module()
        m.backbone.stage.blocks = nn.ModuleList([nn.Linear(2, 2)])
    m.head = nn.Linear(4, 2)
    return m


def convnext_model(stages: int = 0) -> nn.Module:
    """A ConvNeXt-named backbone, with ``stages`` numbered stages of one block each."""
    m = backbone_model("ConvNeXt")
    if stages:
        m.backbone.stages = nn.ModuleList([nn.Sequential(nn.Linear(2, 2)) for _ in range(stages)])
    return m


def frozen_model() -> nn.Module:
    m = model()
    for p in m.parameters():
        p.requires_grad_(False)
    return m


ERRORS: list[tuple[str, Callable[[], Any], type[BaseException], str]] = [
    ("cfg not a dict (mmcv)", mmcv("SGD"), TypeError, "optimizer cfg must be a dict"),
    ("cfg not a dict (mmengine)", engine(["SGD"]), TypeError, "optim_wrapper cfg must be a dict"),
    ("missing type", mmcv(dict(lr=0.1)), KeyError, "must contain the key 'type'"),
    ("missing optimizer", engine(dict(type="OptimWrapper")), KeyError, 'must contain an "optimizer"'),
    ("optimizer not a dict", engine(dict(optimizer="SGD")), TypeError, r"optim_wrapper_cfg\['optimizer'\]"),
    ("unknown optimizer", mmcv(dict(type="SDG", lr=0.1)), KeyError, "'SDG' is not registered.*did you mean 'SGD'"),
    ("unknown constructor", mmcv(dict(SGD, constructor="DefaultOptimizerConstrutor")), KeyError,
     "did you mean 'DefaultOptimizerConstructor'"),
    ("unknown wrapper", engine(dict(type="OptimWraper", optimizer=SGD)), KeyError, "did you mean 'OptimWrapper'"),
    ("type of wrong kind", mmcv(dict(type=3, lr=0.1)), TypeError, "type must be a str or a class"),
    ("paramwise_cfg not a dict", mmcv(dict(SGD, paramwise_cfg=[1])), TypeError, "paramwise_cfg should be"),
    ("custom_keys not a dict", mmcv(dict(SGD, paramwise_cfg=dict(custom_keys=["a"]))), TypeError,
     "custom_keys must be a dict"),
    ("custom key not a str", engine(dict(optimizer=SGD, paramwise_cfg=dict(custom_keys={1: {}}))), TypeError,
     "custom_keys keys must be str"),
    ("custom key value not a dict", mmcv(dict(SGD, paramwise_cfg=dict(custom_keys={"0": 0.1}))), TypeError,
     r"custom_keys\['0'\] must be a dict"),
    ("lr_mult not a number", mmcv(dict(SGD, paramwise_cfg=dict(custom_keys={"0": dict(lr_mult="2")}))),
     TypeError, r"custom_keys\['0'\]\['lr_mult'\] must be a number"),
    ("lr_mult a bool", mmcv(dict(SGD, paramwise_cfg=dict(custom_keys={"0": dict(lr_mult=True)}))),
     TypeError, "must be a number"),
    ("negative lr_mult", mmcv(dict(SGD, paramwise_cfg=dict(custom_keys={"0": dict(lr_mult=-1)}))),
     ValueError, "finite non-negative"),
    ("NaN decay_mult", engine(dict(optimizer=SGD, paramwise_cfg=dict(custom_keys={"0": dict(decay_mult=math.nan)}))),
     ValueError, r"\['decay_mult'\] must be a finite"),
    ("infinite bias_lr_mult", mmcv(dict(SGD, paramwise_cfg=dict(bias_lr_mult=math.inf))), ValueError,
     r"paramwise_cfg\['bias_lr_mult'\] must be a finite"),
    ("None multiplier (mmcv)", mmcv(dict(SGD, paramwise_cfg=dict(norm_decay_mult=None))), TypeError,
     r"paramwise_cfg\['norm_decay_mult'\] must be a number"),
    ("infinite optimizer lr", mmcv(dict(type="SGD", lr=math.inf)), ValueError, "optimizer lr must be a finite"),
    ("string optimizer lr", engine(dict(optimizer=dict(type="SGD", lr="0.1"))), TypeError,
     "optimizer lr must be a number"),
    ("negative weight_decay", mmcv(dict(type="SGD", lr=0.1, weight_decay=-1)), ValueError,
     "optimizer weight_decay must be a finite"),
    ("decay mult without weight_decay", mmcv(dict(NO_WD, paramwise_cfg=dict(norm_decay_mult=0.0))), ValueError,
     "sets norm_decay_mult but the optimizer config has no weight_decay"),
    ("custom decay_mult without weight_decay",
     engine(dict(optimizer=NO_WD, paramwise_cfg=dict(custom_keys={"0": dict(decay_mult=0.0)}))), ValueError,
     r"custom_keys\['0'\] sets decay_mult"),
    ("lr missing where a rule needs it", mmcv(dict(type="SGD", paramwise_cfg=dict(bias_lr_mult=2.0))), ValueError,
     r"bias_lr_mult sets the lr of '0.bias'.*has no 'lr'"),
    ("unknown optimizer argument", mmcv(dict(type="SGD", lr=0.1, momentom=0.9)), TypeError,
     "SGD: .*unexpected keyword argument 'momentom'"),
    ("model not a Module", lambda: fastopt.build_optimizer([torch.zeros(1)], dict(type="SGD", lr=0.1)), TypeError,
     "model must be a torch.nn.Module"),
    ("model without parameters", mmcv(dict(SGD, paramwise_cfg=dict(norm_decay_mult=0.0)), nn.ReLU()), ValueError,
     "ReLU has no parameters to optimize"),
    ("every parameter frozen (mmengine)", engine(dict(optimizer=SGD, paramwise_cfg=dict(norm_decay_mult=0.0)),
                                                 frozen_model()), ValueError, "all 6 parameters are frozen"),
    ("shared tensor without bypass_duplicate",
     mmcv(dict(SGD, paramwise_cfg=dict(norm_decay_mult=0.0)), M.SharedNet()), ValueError,
     "'decoder.weight' is the same tensor as 'embed.weight'"),
    ("frozen tied tensor (mmcv adds it twice)",
     mmcv(dict(SGD, paramwise_cfg=dict(bypass_duplicate=True)), M.FrozenSharedNet()), ValueError,
     "'b.weight' is the same tensor as 'a.weight'"),
    ("registry: duplicate name", lambda: fastopt.OPTIMIZERS.register_module(module=torch.optim.SGD), KeyError,
     "'SGD' is already registered in 'optimizer' as fastopt.optim.SGD"),
    ("registry: non-callable", lambda: fastopt.Registry("x").register_module(module=3), TypeError,
     "only callables can be registered"),
    ("build_from_cfg: not a dict", lambda: fastopt.build_from_cfg(3, fastopt.OPTIMIZERS), TypeError,
     "cfg must be a dict"),
    ("layer decay without decay_rate",
     engine(dict(optimizer=SGD, constructor="LearningRateDecayOptimizerConstructor",
                 paramwise_cfg=dict(num_layers=6)), convnext_model()), KeyError, "missing: decay_rate"),
    ("layer decay: unknown decay_type",
     engine(dict(optimizer=SGD, constructor="LearningRateDecayOptimizerConstructor",
                 paramwise_cfg=dict(num_layers=6, decay_rate=0.9, decay_type="block_wise")), convnext_model()),
     ValueError, "decay_type must be 'layer_wise' or 'stage_wise', got 'block_wise'"),
    ("layer decay: ConvNeXt stage past 3",
     engine(dict(optimizer=SGD, constructor="LearningRateDecayOptimizerConstructor",
                 paramwise_cfg=dict(num_layers=6, decay_rate=0.9)), convnext_model(stages=5)),
     ValueError, r"layer-wise lr decay knows stages 0-3, got 'backbone\.stages\.4\.0\.weight'"),
    ("layer decay: unsupported backbone",
     engine(dict(optimizer=SGD, constructor="LearningRateDecayOptimizerConstructor",
                 paramwise_cfg=dict(num_layers=6, decay_rate=0.9, decay_type="stage_wise")), backbone_model("BEiT")),
     NotImplementedError, "stage_wise lr decay is defined for ConvNeXt backbones"),
    ("ViTDet block index not a number",
     engine(dict(optimizer=SGD, constructor="LayerDecayOptimizerConstructor",
                 paramwise_cfg=dict(num_layers=2, decay_rate=0.7)), backbone_model("ViT", nested_blocks=True)),
     ValueError, r"block index of 'backbone\.stage\.blocks\.0\.weight'"),
    ("TSM without fc_lr5", mmcv(dict(SGD, constructor="TSMOptimizerConstructor", paramwise_cfg=dict(x=1))),
     KeyError, r"paramwise_cfg\['fc_lr5'\]"),
    ("TSM: a layer without a policy",
     engine(dict(optimizer=SGD, constructor="TSMOptimWrapperConstructor", paramwise_cfg=dict(fc_lr5=True)),
            nn.Sequential(nn.Conv2d(3, 4, 1), nn.LayerNorm(4), nn.Linear(4, 2))), ValueError,
     r"no learning policy to LayerNorm \(1\)"),
    ("TSM: no classifier bias",
     mmcv(dict(SGD, constructor="TSMOptimizerConstructor", paramwise_cfg=dict(fc_lr5=True)),
          nn.Sequential(nn.Conv2d(3, 4, 1, bias=False), nn.Linear(4, 2, bias=False))), ValueError,
     "need a last Linear/conv layer with a bias"),
]


@pytest.mark.parametrize(("case", "call", "exc", "pattern"), ERRORS, ids=[e[0] for e in ERRORS])
def test_error_table(case: str, call: Callable[[], Any], exc: type[BaseException], pattern: str) -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        with pytest.raises(exc, match=pattern):
            call()


def test_error_table_is_large_enough() -> None:
    assert len(ERRORS) >= 25


WARNINGS = [
    ("paramwise key typo", mmcv(dict(SGD, paramwise_cfg=dict(norm_decay_mul=0.0))),
     "'norm_decay_mul' is not used by mmcv 1.x's default constructor; did you mean 'norm_decay_mult'"),
    ("flat_decay_mult under mmcv", mmcv(dict(SGD, paramwise_cfg=dict(flat_decay_mult=0.0))),
     "'flat_decay_mult' is not used by mmcv 1.x's"),
    ("custom key matching nothing", mmcv(dict(SGD, paramwise_cfg=dict(custom_keys={"bakbone": {}}))),
     r"custom_keys \['bakbone'\] match no trainable parameter"),
    ("bypassed shared tensor", mmcv(dict(SGD, paramwise_cfg=dict(bypass_duplicate=True)), M.SharedNet()),
     "is duplicate. It is skipped since bypass_duplicate=True"),
]


@pytest.mark.parametrize(("case", "call", "pattern"), WARNINGS, ids=[w[0] for w in WARNINGS])
def test_warning_table(case: str, call: Callable[[], Any], pattern: str) -> None:
    """Under mmcv 1.x's semantics: Python warnings (mmengine's go to its logger:
    tests/test_host_logs.py)."""
    with pytest.warns(UserWarning, match=pattern):
        call()


def test_subclass_keys_do_not_warn() -> None:
    class MyConstructor(fastopt.DefaultOptimizerConstructor):
        pass

    with warnings.catch_warnings():
        warnings.simplefilter("error")
        MyConstructor(dict(SGD), dict(fc_lr5=True))


def test_step_time_errors_name_the_problem() -> None:
    emb = nn.Embedding(4, 2, sparse=True)
    opt = fo.AdamW(emb.parameters())
    emb(torch.tensor([1])).sum().backward()
    with pytest.raises(RuntimeError, match=r"Adam does not support sparse gradients"):
        opt.step()
