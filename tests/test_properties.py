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

from .refs import (
    duplicate_groups,
    mismatches,
    mmcv_runner,
    mmengine_build,
    one_in,
    outcome,
    quiet_mmengine_logger,
    same_outcome,
    tally,
)

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


ONE_IN_FIVE = one_in(5)
MULT = st.sampled_from([0.0, 0.5, 2.0, 3.0, 0.25, 1, 1.0])  # ints and floats: value types must survive
RULE_KEYS = ["bias_lr_mult", "bias_decay_mult", "norm_decay_mult", "dwconv_decay_mult", "flat_decay_mult",
             "dcn_offset_lr_mult"]
CUSTOM_KEYS = ["backbone", "neck.", ".bias", "norm", "layer", "1", "σ", "", "head.fc", "0.weight", "bn"]


@st.composite
def module_trees(draw: st.DrawFn, depth: int = 0) -> nn.Module:
    """A tree of containers and leaves under random names; the root always holds a layer with
    a bias and a norm layer, so that bias and norm rules have something to tell apart."""
    root = Holder()
    used: set[str] = set()
    if depth == 0:
        for kind in (draw(st.sampled_from([0, 1, 5])), draw(st.sampled_from([2, 3, 4]))):
            name = draw(NAMES.filter(lambda n: n not in used))
            used.add(name)
            root.add_module(name, leaf(kind, 1))
    for _ in range(draw(st.integers(1, 3)) if depth < 2 else 0):
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
    if draw(ONE_IN_FIVE):  # one or two frozen parameters (more would leave little to tell apart)
        for i in draw(st.lists(st.integers(0, len(params) - 1), min_size=1, max_size=2, unique=True)):
            params[i].requires_grad_(False)
    modules = [m for m in model.modules() if m is not model]
    if modules and draw(ONE_IN_FIVE):  # a shared submodule under a second parent
        model.add_module("shared_again", draw(st.sampled_from(modules)))
    return model


def name_pieces(model: nn.Module) -> list[str]:
    """Substrings of the model's own parameter names (a first component, a dotted middle, a
    last component with its dot): custom keys drawn from them match something."""
    pieces = []
    for name, _ in model.named_parameters():
        parts = name.split(".")
        pieces += [parts[0], f".{parts[-1]}", ".".join(parts[:2])]
    return sorted(set(pieces))


@st.composite
def paramwise(draw: st.DrawFn, model: nn.Module | None = None) -> dict[str, Any]:
    """A paramwise_cfg with at least one rule or custom key (an empty one splits nothing);
    custom keys come from a fixed list and, given a model, from pieces of its names."""
    cfg: dict[str, Any] = {k: draw(MULT) for k in draw(st.lists(st.sampled_from(RULE_KEYS), max_size=4,
                                                                  unique=True))}
    if not cfg or draw(st.booleans()):
        vocabulary = (name_pieces(model) if model is not None else []) + CUSTOM_KEYS
        custom = {}
        for k in draw(st.lists(st.sampled_from(vocabulary), min_size=1, max_size=4, unique=True)):
            entry: dict[str, Any] = {}
            for mult in draw(st.sampled_from([("lr_mult",), ("decay_mult",), ("lr_mult", "decay_mult"), ()])):
                entry[mult] = draw(MULT)
            if draw(ONE_IN_FIVE):
                entry["momentum"] = 0.5  # an extra key: mmengine copies it into the group
            custom[k] = entry
        cfg["custom_keys"] = custom
    if draw(ONE_IN_FIVE):
        cfg["bypass_duplicate"] = True
    return cfg


@st.composite
def cases(draw: st.DrawFn) -> tuple[nn.Module, dict[str, Any], dict[str, Any]]:
    """A random model, an optimizer config (one in five without weight_decay, where decay rules
    must raise) and a paramwise_cfg for the model."""
    model = draw(models())
    optimizer = dict(OPTIMIZER)
    if draw(ONE_IN_FIVE):
        del optimizer["weight_decay"]
    return model, optimizer, draw(paramwise(model))


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
    assert duplicate_groups(f_opt) == [], "two groups with equal hyperparameters: not minimal"


SETTINGS = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
OPTIMIZER = dict(type="SGD", lr=0.1, momentum=0.9, weight_decay=1e-4)
#: Most examples must give parameters different hyperparameters (that is where the rules can
#: go wrong); some must raise (error parity), not most.
MIN_SPLIT = 0.5


@SETTINGS
@given(case=cases())
def _mmengine_examples(native: bool, case: tuple[nn.Module, dict, dict]) -> None:
    model, optimizer, pw = case
    build = mmengine_build()
    quiet_mmengine_logger()
    cfg = dict(optimizer=optimizer, paramwise_cfg=pw)
    with pytest.MonkeyPatch.context() as mp:
        if not native:
            mp.setattr(_core, "_C", None)
        _check(model, outcome(lambda: build(model, copy.deepcopy(cfg))),
               outcome(lambda: fastopt.build_optim_wrapper(model, copy.deepcopy(cfg))))


@SETTINGS
@given(case=cases())
def _mmcv_examples(native: bool, case: tuple[nn.Module, dict, dict]) -> None:
    model, optimizer, pw = case
    runner = mmcv_runner()
    pw = {k: v for k, v in pw.items() if k != "flat_decay_mult"}
    cfg = dict(optimizer, paramwise_cfg=pw)
    with pytest.MonkeyPatch.context() as mp:
        if not native:
            mp.setattr(_core, "_C", None)
        _check(model, outcome(lambda: runner.build_optimizer(model, copy.deepcopy(cfg))),
               outcome(lambda: fastopt.build_optimizer(model, copy.deepcopy(cfg))))


@pytest.mark.parametrize("native", [True, False])
def test_random_trees_match_mmengine(native: bool) -> None:
    with tally(f"random trees vs mmengine (native={native})") as t:
        _mmengine_examples(native=native)
    t.require(MIN_SPLIT)


@pytest.mark.parametrize("native", [True, False])
def test_random_trees_match_mmcv(native: bool) -> None:
    with tally(f"random trees vs mmcv (native={native})") as t:
        _mmcv_examples(native=native)
    t.require(MIN_SPLIT)
