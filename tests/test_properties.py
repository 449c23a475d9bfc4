"""Property tests: random module trees, names and paramwise configs.

For every generated model and config, fastopt's per-parameter hyperparameters equal those
of the real mmengine 0.10.7 and mmcv 1.7.2 constructors (or both raise), every parameter
is in exactly one group, and the group count is minimal (no two groups are equal). The
same holds with the native core switched off (the plain-Python fallback).
"""

from __future__ import annotations

import copy
from typing import Any

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from torch import nn

import fastopt
from fastopt import _core
from fastopt.grouping import freeze

from .refs import mismatches, mmcv_runner, mmengine_build, outcome, quiet_mmengine_logger, same_outcome

NAMES = st.sampled_from(["backbone", "neck", "head", "layer1", "layers", "norm", "bias", "conv_offset",
                         "bn", "gn", "ln", "fc", "dw", "σ", "块", "0", "1", "11", "attn", "block"])


class Holder(nn.Module):
    """A container that also owns raw parameters (0-d, 1-d, 2-d)."""


def leaf(kind: int, cin: int) -> nn.Module:
    if kind == 0:
        return nn.Conv2d(cin, 4, 1, bias=True)
    if kind == 1:
        return nn.Conv2d(4, 4, 3, groups=4, bias=bool(cin % 2))  # depthwise
    if kind == 2:
        return nn.BatchNorm2d(4)
    if kind == 3:
        return nn.GroupNorm(2, 4)
    if kind == 4:
        return nn.LayerNorm(4)
    if kind == 5:
        return nn.Linear(4, 3, bias=bool(cin % 2))
    if kind == 6:
        return nn.Embedding(5, 4)
    return nn.Conv2d(4, 4, 3, groups=2)  # grouped, not depthwise


@st.composite
def module_trees(draw: st.DrawFn, depth: int = 0) -> nn.Module:
    root = Holder()
    n_children = draw(st.integers(0 if depth else 1, 3 if depth < 2 else 0))
    used: set[str] = set()
    for _ in range(n_children):
        name = draw(NAMES)
        if name in used:
            continue
        used.add(name)
        if depth < 2 and draw(st.booleans()):
            child = draw(module_trees(depth=depth + 1))
        else:
            child = leaf(draw(st.integers(0, 7)), draw(st.integers(1, 4)))
        root.add_module(name, child)
    for pname in draw(st.lists(st.sampled_from(["bias", "weight", "scale", "pos_embed", "gamma"]),
                               max_size=2, unique=True)):
        if pname in used:
            continue
        shape = draw(st.sampled_from([(), (3,), (2, 3)]))
        root.register_parameter(pname, nn.Parameter(torch.zeros(shape)))
    return root


@st.composite
def models(draw: st.DrawFn) -> nn.Module:
    model = draw(module_trees())
    params = list(model.parameters())
    for p in params:  # some frozen parameters
        if draw(st.integers(0, 9)) == 0:
            p.requires_grad_(False)
    modules = [m for m in model.modules() if m is not model]
    if modules and draw(st.integers(0, 4)) == 0:  # a shared submodule under a second parent
        model.add_module("shared_again", draw(st.sampled_from(modules)))
    return model


MULT = st.sampled_from([0.0, 0.5, 1.0, 2.0, 1])


@st.composite
def paramwise(draw: st.DrawFn) -> dict[str, Any]:
    cfg: dict[str, Any] = {}
    for key in ("bias_lr_mult", "bias_decay_mult", "norm_decay_mult", "dwconv_decay_mult",
                "flat_decay_mult", "dcn_offset_lr_mult"):
        if draw(st.booleans()):
            cfg[key] = draw(MULT)
    if draw(st.booleans()):
        keys = draw(st.lists(st.sampled_from(["backbone", "neck.", ".bias", "norm", "layer", "1", "σ", "",
                                              "head.fc", "0.weight", "bn"]), max_size=4, unique=True))
        custom = {}
        for k in keys:
            entry: dict[str, Any] = {}
            if draw(st.booleans()):
                entry["lr_mult"] = draw(MULT)
            if draw(st.booleans()):
                entry["decay_mult"] = draw(MULT)
            if draw(st.integers(0, 4)) == 0:
                entry["momentum"] = 0.5  # an extra key: mmengine copies it into the group
            custom[k] = entry
        cfg["custom_keys"] = custom
    if draw(st.booleans()):
        cfg["bypass_duplicate"] = True
    return cfg


def _check(model: nn.Module, ref: Any, fast: Any) -> None:
    if not same_outcome(ref, fast):
        return
    (r, _), (f, _) = ref, fast
    r_opt, f_opt = getattr(r, "optimizer", r), getattr(f, "optimizer", f)
    names = {id(p): n for n, p in model.named_parameters(remove_duplicate=False)}
    assert mismatches(r_opt, f_opt, names) == []
    seen: set[int] = set()
    for g in f_opt.param_groups:
        ids = {id(p) for p in g["params"]}
        assert not ids & seen, "a parameter in two groups"
        seen |= ids
    keys = [freeze({k: v for k, v in g.items() if k != "params"}) for g in f_opt.param_groups]
    assert len(set(keys)) == len(keys), "two groups with equal hyperparameters: not minimal"


SETTINGS = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
OPTIMIZER = dict(type="SGD", lr=0.1, momentum=0.9, weight_decay=1e-4)


@pytest.mark.parametrize("native", [True, False])
@SETTINGS
@given(model=models(), pw=paramwise())
def test_random_trees_match_mmengine(model: nn.Module, pw: dict, native: bool) -> None:
    build = mmengine_build()
    quiet_mmengine_logger()
    cfg = dict(optimizer=dict(OPTIMIZER), paramwise_cfg=pw)
    with pytest.MonkeyPatch.context() as mp:
        if not native:
            mp.setattr(_core, "_C", None)
        _check(model, outcome(lambda: build(model, copy.deepcopy(cfg))),
               outcome(lambda: fastopt.build_optim_wrapper(model, copy.deepcopy(cfg))))


@pytest.mark.parametrize("native", [True, False])
@SETTINGS
@given(model=models(), pw=paramwise())
def test_random_trees_match_mmcv(model: nn.Module, pw: dict, native: bool) -> None:
    runner = mmcv_runner()
    pw = {k: v for k, v in pw.items() if k != "flat_decay_mult"}
    cfg = dict(OPTIMIZER, paramwise_cfg=pw)
    with pytest.MonkeyPatch.context() as mp:
        if not native:
            mp.setattr(_core, "_C", None)
        _check(model, outcome(lambda: runner.build_optimizer(model, copy.deepcopy(cfg))),
               outcome(lambda: fastopt.build_optimizer(model, copy.deepcopy(cfg))))
