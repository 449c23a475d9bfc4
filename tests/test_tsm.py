"""fastopt's TSM constructors against MMAction2's originals: ``TSMOptimWrapperConstructor``
(MMAction2 1.2, mmengine) and ``TSMOptimizerConstructor`` (MMAction2 0.24, mmcv 1.x).

MMAction2 imports neither beside mmcv 1.7.2 nor twice, so scripts/install_references.sh takes
the two module files from the wheels and they are executed alone here.
"""

from __future__ import annotations

import copy
import functools
import importlib
import warnings
from typing import Any

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from torch import nn

import fastopt
from fastopt.tools import zoo

from .refs import (
    exec_mmengine_original,
    exec_original,
    mismatches,
    mmcv_runner,
    outcome,
    quiet_mmengine_logger,
    reference_file,
    same_outcome,
    stand_in,
    tally,
)

NEW = "mmaction2-1.2.0/mmaction/engine/optimizers/tsm_optim_wrapper_constructor.py"
OLD = "mmaction2-0.24.1/mmaction/core/optimizer/tsm_optimizer_constructor.py"


def _new_original() -> Any:
    pytest.importorskip("mmengine")
    return exec_mmengine_original("mmaction", reference_file(NEW)).TSMOptimWrapperConstructor


@functools.cache
def _old_original() -> Any:
    path = reference_file(OLD)
    runner = mmcv_runner()
    builders = type(runner.OPTIMIZER_BUILDERS)("scratch mmaction 0.x builders")
    stand_ins = {"mmcv.runner": stand_in("runner", OPTIMIZER_BUILDERS=builders,
                                         DefaultOptimizerConstructor=runner.DefaultOptimizerConstructor)}
    return exec_original(path, "mmaction_tsm_v0_original", stand_ins).TSMOptimizerConstructor


class TSMHead(nn.Module):
    """MMAction2 ``TSMHead``: dropout + ``fc_cls``."""

    def __init__(self, in_channels: int, num_classes: int = 400) -> None:
        super().__init__()
        self.dropout = nn.Dropout(0.5)
        self.fc_cls = nn.Linear(in_channels, num_classes)


class TSMR50(nn.Module):
    """TSM R-50 recognizer (ResNetTSM parameters are ResNet-50's) at reduced width."""

    def __init__(self, frozen_stages: int = -1) -> None:
        super().__init__()
        self.backbone = zoo.backbones.ResNet(depth=50, base_channels=8, frozen_stages=frozen_stages)
        self.cls_head = TSMHead(8 * 8 * 4)


class Odd(nn.Module):
    """The original's corner cases: a first conv with a bias, Conv3d / ConvTranspose / Conv1d,
    GroupNorm, SyncBatchNorm, a frozen BN, a Linear in the middle, a parameter held by a
    module with children (left out), and a bias-free classifier (the last bias collected is
    then another layer's)."""

    def __init__(self, classifier_bias: bool = False) -> None:
        super().__init__()
        self.stem = nn.Conv3d(3, 4, 3, bias=True)
        self.gn = nn.GroupNorm(2, 4)
        self.block = nn.Sequential(nn.ConvTranspose2d(4, 4, 2), nn.SyncBatchNorm(4), nn.Conv1d(4, 4, 1),
                                   nn.BatchNorm2d(4))
        self.block[3].weight.requires_grad_(False)
        self.mid = nn.Linear(4, 4)
        self.scale = nn.Parameter(torch.ones(1))
        self.fc = nn.Linear(4, 3, bias=classifier_bias)


def linear_first() -> nn.Module:
    """A Linear before the first convolution (only a convolution counts as the first)."""
    return nn.Sequential(nn.Linear(3, 4), nn.Conv2d(4, 4, 1), nn.BatchNorm2d(4), nn.Linear(4, 2))


MODELS = {"tsm_r50": TSMR50, "tsm_r50_frozen": lambda: TSMR50(frozen_stages=1), "odd": Odd,
          "odd_fc_bias": lambda: Odd(classifier_bias=True), "linear_first": linear_first}


OPTIMIZER = dict(type="SGD", lr=0.01, momentum=0.9, weight_decay=1e-4)


def _original(api: str, model: nn.Module, paramwise: dict) -> Any:
    """The original's optimizer for ``model``."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        if api == "mmengine":
            quiet_mmengine_logger()
            return _new_original()(optim_wrapper_cfg=dict(optimizer=dict(OPTIMIZER)),
                                   paramwise_cfg=dict(paramwise))(model).optimizer
        return _old_original()(dict(OPTIMIZER), dict(paramwise))(model)


def _fast(api: str, model: nn.Module, paramwise: dict, plugin: bool = False) -> Any:
    """fastopt's optimizer for ``model``: from fastopt's builder, or (``plugin``) from the host
    framework's builder with the plug-in's constructor."""
    name = "TSMOptimWrapperConstructor" if api == "mmengine" else "TSMOptimizerConstructor"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        if plugin:
            importlib.import_module(f"fastopt.integrations.{api}")
            name = "Fast" + name
        if api == "mmengine":
            from mmengine.optim import build_optim_wrapper

            build = build_optim_wrapper if plugin else fastopt.build_optim_wrapper
            return build(model, dict(optimizer=dict(OPTIMIZER), paramwise_cfg=dict(paramwise),
                                     constructor=name)).optimizer
        build = mmcv_runner().build_optimizer if plugin else fastopt.build_optimizer
        return build(model, dict(OPTIMIZER, paramwise_cfg=dict(paramwise), constructor=name))


@pytest.mark.parametrize("model_name", list(MODELS))
@pytest.mark.parametrize("fc_lr5", [True, False])
@pytest.mark.parametrize("plugin", [False, True])
@pytest.mark.parametrize("api", ["mmengine", "mmcv"])
def test_matches_mmaction2(model_name: str, fc_lr5: bool, api: str, plugin: bool) -> None:
    """Every parameter's lr and weight decay (values and types) equal the original's, and the
    parameters the original leaves out are left out."""
    model = MODELS[model_name]()
    ref, fast = _original(api, model, dict(fc_lr5=fc_lr5)), _fast(api, model, dict(fc_lr5=fc_lr5), plugin)
    names = {id(p): n for n, p in model.named_parameters()}
    assert mismatches(ref, fast, names) == []
    assert type(fast).__module__ == "fastopt.optim"
    nonempty = [g for g in fast.param_groups if g["params"]]
    assert len(nonempty) < len([g for g in ref.param_groups if g["params"]])  # weights merged
    if model_name.startswith("odd"):
        listed = {id(p) for g in fast.param_groups for p in g["params"]}
        assert id(model.scale) not in listed and id(model.block[3].weight) not in listed


@pytest.mark.parametrize("api", ["mmengine", "mmcv"])
def test_training_matches_mmaction2(api: str) -> None:
    """Steps with the merged groups (frozen convs listed, empty groups kept) move every
    parameter as the original's optimizer does."""
    torch.manual_seed(0)
    model = TSMR50(frozen_stages=1)
    twin = copy.deepcopy(model)
    start = copy.deepcopy(model)
    ref, fast = _original(api, model, dict(fc_lr5=True)), _fast(api, twin, dict(fc_lr5=True))
    for seed in range(3):
        for m in (model, twin):
            gen = torch.Generator().manual_seed(seed)
            for p in m.parameters():
                p.grad = torch.randn(p.shape, generator=gen) if p.requires_grad else None
        ref.step()
        fast.step()
    for (name, a), b in zip(model.named_parameters(), twin.parameters()):
        assert torch.equal(a, b), name  # SGD: bit-identical to torch
    changed = {n for (n, a), b in zip(model.named_parameters(), start.parameters()) if not torch.equal(a, b)}
    assert "cls_head.fc_cls.bias" in changed and "backbone.conv1.weight" not in changed  # frozen stem


@pytest.mark.parametrize("api", ["mmengine", "mmcv"])
def test_errors_where_the_original_fails(api: str) -> None:
    """Both raise: a LayerNorm (no learning policy), a model without a bias, a missing fc_lr5."""
    with_ln = nn.Sequential(nn.Conv2d(3, 4, 1), nn.LayerNorm(4), nn.Linear(4, 2))
    no_bias = nn.Sequential(nn.Conv2d(3, 4, 1, bias=False), nn.Linear(4, 2, bias=False))
    cases = [(with_ln, dict(fc_lr5=True), ValueError, "no learning policy to LayerNorm"),
             (no_bias, dict(fc_lr5=True), ValueError, "with a bias"),
             (TSMR50(), dict(other=1), KeyError, "fc_lr5")]
    for model, paramwise, error, message in cases:
        with pytest.raises((ValueError, KeyError, IndexError)):  # the original
            _original(api, model, paramwise)
        with pytest.raises(error, match=message):
            _fast(api, model, paramwise)


@pytest.mark.parametrize("api", ["mmengine", "mmcv"])
@pytest.mark.parametrize("model_name", ["linear_first", "tsm_r50_frozen"])
def test_checkpoints_cross_between_layouts(api: str, model_name: str) -> None:
    """The original's state dict (its seven groups, empty ones included) loads into fastopt's
    merged optimizer and the next steps match; fastopt.per_param_state_dict writes the
    original's layout back, which loads into the original's optimizer."""
    torch.manual_seed(0)
    model = MODELS[model_name]()
    twin = copy.deepcopy(model)
    ref, fast = _original(api, model, dict(fc_lr5=True)), _fast(api, twin, dict(fc_lr5=True))

    def step(seed: int, *pairs: tuple[nn.Module, Any]) -> None:
        for m, opt in pairs:
            gen = torch.Generator().manual_seed(seed)
            for p in m.parameters():
                p.grad = torch.randn(p.shape, generator=gen) if p.requires_grad else None
            opt.step()

    step(0, (model, ref))
    twin.load_state_dict(model.state_dict())
    saved = ref.state_dict()
    assert len(saved["param_groups"]) == 7 and len(fast.param_groups) < 7
    fast.load_state_dict(copy.deepcopy(saved))
    step(1, (model, ref), (twin, fast))
    for (name, a), b in zip(model.named_parameters(), twin.parameters()):
        assert torch.equal(a, b), name  # SGD: bit-identical to torch
    back = copy.deepcopy(fastopt.per_param_state_dict(fast))  # as if saved: no tensors shared
    sizes = [len(g["params"]) for g in saved["param_groups"]]
    assert [len(g["params"]) for g in back["param_groups"]] == sizes
    ref.load_state_dict(back)
    step(2, (model, ref), (twin, fast))
    for (name, a), b in zip(model.named_parameters(), twin.parameters()):
        assert torch.equal(a, b), name


# --------------------------------------------------------------------- random models
TSM_LEAVES = [lambda b: nn.Conv2d(4, 4, 1, bias=b), lambda b: nn.Conv1d(4, 4, 1, bias=b),
              lambda b: nn.Conv3d(4, 4, 1, bias=b), lambda b: nn.ConvTranspose2d(4, 4, 1, bias=b),
              lambda b: nn.Linear(4, 4, bias=b), lambda b: nn.BatchNorm2d(4, affine=b),
              lambda b: nn.GroupNorm(2, 4), lambda b: nn.SyncBatchNorm(4), lambda b: nn.ReLU(),
              lambda b: nn.LayerNorm(4), lambda b: nn.Embedding(3, 4)]


@st.composite
def tsm_models(draw: st.DrawFn, depth: int = 0) -> nn.Module:
    """Containers of convolutions, Linear and norm layers (rarely a layer TSM rejects), with
    frozen parameters, raw parameters on containers and a shared submodule now and then."""
    root = nn.Module()
    for i in range(draw(st.integers(1, 4))):
        if depth < 2 and draw(st.integers(0, 3)) == 0:
            child = draw(tsm_models(depth=depth + 1))
        else:
            kind = draw(st.integers(0, len(TSM_LEAVES) - 1) if draw(st.integers(0, 9)) == 0
                        else st.integers(0, 8))
            child = TSM_LEAVES[kind](draw(st.booleans()))
        root.add_module(f"m{i}", child)
    if draw(st.integers(0, 4)) == 0:
        root.scale = nn.Parameter(torch.ones(1))
    if depth == 0:
        root.fc = nn.Linear(4, 3, bias=draw(st.integers(0, 9)) != 0)  # the classifier, usually
        for p in root.parameters():
            if draw(st.integers(0, 7)) == 0:
                p.requires_grad_(False)
        inner = [m for m in root.modules() if m is not root]
        if inner and draw(st.integers(0, 5)) == 0:
            root.add_module("again", draw(st.sampled_from(inner)))
    return root


@settings(max_examples=120, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(model=tsm_models(), fc_lr5=st.booleans())
def _random_examples(api: str, model: nn.Module, fc_lr5: bool) -> None:
    ref = outcome(lambda: _original(api, model, dict(fc_lr5=fc_lr5)))
    fast = outcome(lambda: _fast(api, model, dict(fc_lr5=fc_lr5)))
    if same_outcome(ref, fast):
        names = {id(p): n for n, p in model.named_parameters(remove_duplicate=False)}
        assert mismatches(ref[0], fast[0], names) == []


@pytest.mark.parametrize("api", ["mmengine", "mmcv"])
def test_random_models_match_mmaction2(api: str) -> None:
    """Random models: the same lr / weight decay for every parameter as the original, or both
    raise the same error; most examples split the parameters."""
    with tally(f"random TSM models vs MMAction2 ({api})") as t:
        _random_examples(api=api)
    t.require(min_split=0.5)
