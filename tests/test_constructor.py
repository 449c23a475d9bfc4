"""Custom constructors, DCN rules, grouping invariants and registry behaviour."""

from __future__ import annotations

import copy
import inspect
import sys
import types
import warnings
from typing import Any

import pytest
import torch
from torch import nn

import fastopt
from fastopt import _walk
from fastopt.grouping import freeze

from . import models as M
from .refs import mismatches, mmcv_runner, mmengine_build, per_param, quiet_mmengine_logger


def _names(model: nn.Module) -> dict[int, str]:
    return {id(p): n for n, p in model.named_parameters()}


# ---------------------------------------------------------------- custom add_params overrides
def tsm_add_params(self: Any, params: list[dict], model: nn.Module, **kwargs: Any) -> None:
    """A TSM-style constructor: parameters sorted into five hand-made groups (fc_lr5)."""
    first_conv: list = []
    normal: list = []
    norm: list = []
    fc: list = []
    first_seen = False
    last_linear = [m for m in model.modules() if isinstance(m, nn.Linear)][-1]
    for m in model.modules():
        if isinstance(m, nn.Conv2d):
            if not first_seen:
                first_conv += list(m.parameters(recurse=False))
                first_seen = True
            else:
                normal += list(m.parameters(recurse=False))
        elif isinstance(m, nn.Linear):
            (fc if m is last_linear and self.paramwise_cfg.get("fc_lr5") else normal).extend(
                m.parameters(recurse=False))
        elif isinstance(m, (nn.BatchNorm2d, nn.GroupNorm, nn.SyncBatchNorm)):
            norm += list(m.parameters(recurse=False))
    params.append({"params": first_conv, "lr": self.base_lr, "weight_decay": self.base_wd})
    params.append({"params": normal, "lr": self.base_lr, "weight_decay": self.base_wd})
    params.append({"params": norm, "lr": self.base_lr, "weight_decay": 0})
    params.append({"params": fc, "lr": self.base_lr * 5, "weight_decay": self.base_wd})


def layer_decay_add_params(self: Any, params: list[dict], module: nn.Module, prefix: str = "",
                           is_dcn_module: Any = None) -> None:
    """Defers to the default add_params (which recurses through this override), then halves
    the lr of everything added under ``backbone``."""
    start = len(params)
    super(type(self), self).add_params(params, module, prefix, is_dcn_module)
    if prefix == "backbone":
        for g in params[start:]:
            g["lr"] = g.get("lr", self.base_lr) * 0.5


OVERRIDES = {"tsm": tsm_add_params, "layer_decay": layer_decay_add_params}
PW = {"tsm": dict(fc_lr5=True), "layer_decay": dict(norm_decay_mult=0.0, bias_lr_mult=2.0,
                                                      custom_keys={"layer1": dict(lr_mult=0.1)})}


@pytest.mark.parametrize("kind", list(OVERRIDES))
@pytest.mark.parametrize("api", ["mmcv", "mmengine"])
def test_custom_constructor_parity(kind: str, api: str) -> None:
    model = M.FrozenStemNet() if kind == "layer_decay" else M.MixedNormNet()
    for p in model.parameters():
        p.requires_grad_(True)
    name = f"Test{kind.title()}{api.title()}Constructor"
    opt_cfg = dict(type="SGD", lr=0.01, momentum=0.9, weight_decay=1e-4)
    if api == "mmcv":
        runner = mmcv_runner()
        ref_cls = type(name, (runner.DefaultOptimizerConstructor,), {"add_params": OVERRIDES[kind]})
        fast_cls = type(name, (fastopt.DefaultOptimizerConstructor,), {"add_params": OVERRIDES[kind]})
        runner.OPTIMIZER_BUILDERS.register_module(module=ref_cls, force=True)
        fastopt.OPTIMIZER_BUILDERS.register_module(module=fast_cls, force=True)
        cfg = dict(opt_cfg, constructor=name, paramwise_cfg=PW[kind])
        ref = runner.build_optimizer(model, copy.deepcopy(cfg))
        fast = fastopt.build_optimizer(model, cfg)
    else:
        build = mmengine_build()
        quiet_mmengine_logger()
        from mmengine.optim import DefaultOptimWrapperConstructor
        from mmengine.registry import OPTIM_WRAPPER_CONSTRUCTORS

        ref_cls = type(name, (DefaultOptimWrapperConstructor,), {"add_params": OVERRIDES[kind]})
        fast_cls = type(name, (fastopt.DefaultOptimWrapperConstructor,), {"add_params": OVERRIDES[kind]})
        OPTIM_WRAPPER_CONSTRUCTORS.register_module(module=ref_cls, force=True)
        fastopt.OPTIM_WRAPPER_CONSTRUCTORS.register_module(module=fast_cls, force=True)
        cfg = dict(optimizer=opt_cfg, constructor=name, paramwise_cfg=PW[kind])
        ref = build(model, copy.deepcopy(cfg)).optimizer
        fast = fastopt.build_optim_wrapper(model, cfg).optimizer
    assert mismatches(ref, fast, _names(model)) == []
    assert len(fast.param_groups) < len(ref.param_groups) or kind == "tsm"
    if kind == "layer_decay":
        assert sum(len(g["params"]) for g in fast.param_groups) == len(list(model.parameters()))


# ---------------------------------------------------------------- deformable convs
class DeformConv2d(nn.Module):
    """Stand-in for mmcv.ops.DeformConv2d (own weight, no bias)."""

    def __init__(self, cin: int, cout: int) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.zeros(cout, cin, 3, 3))
        self.conv_offset = nn.Conv2d(cin, 18, 3)


class ModulatedDeformConv2d(nn.Module):
    """Stand-in for mmcv.ops.ModulatedDeformConv2d (weight and bias)."""

    def __init__(self, cin: int, cout: int) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.zeros(cout, cin, 3, 3))
        self.bias = nn.Parameter(torch.zeros(cout))


class ModulatedDeformConv2dPack(ModulatedDeformConv2d):
    """Stand-in for the Pack variant: a ``conv_offset`` Conv2d child predicts offsets."""

    def __init__(self, cin: int, cout: int) -> None:
        super().__init__(cin, cout)
        self.conv_offset = nn.Conv2d(cin, 27, 3)
        self.extra = nn.Sequential(nn.BatchNorm2d(4), nn.Linear(4, 4))


class DcnNet(nn.Module):
    """A ResNet block whose conv2 is a DCN, plus conv_offset-named convs outside DCNs."""

    def __init__(self) -> None:
        super().__init__()
        self.backbone = nn.Module()
        self.backbone.layer2 = nn.Sequential(nn.Module())
        blk = self.backbone.layer2[0]
        blk.conv1 = nn.Conv2d(4, 4, 1)
        blk.conv2 = ModulatedDeformConv2dPack(4, 4)
        blk.bn2 = nn.BatchNorm2d(4)
        blk.dcn_plain = DeformConv2d(4, 4)
        self.conv_offset_head = nn.Conv2d(4, 4, 3)


@pytest.fixture
def fake_dcn(monkeypatch: pytest.MonkeyPatch) -> None:
    """Make all three implementations see DCN modules, as with mmcv-full installed."""
    ops = types.ModuleType("mmcv.ops")
    ops.DeformConv2d = DeformConv2d
    ops.ModulatedDeformConv2d = ModulatedDeformConv2d
    monkeypatch.setitem(sys.modules, "mmcv.ops", ops)
    monkeypatch.setattr(_walk, "dcn_types", lambda: (DeformConv2d, ModulatedDeformConv2d))


@pytest.mark.parametrize("pw", [dict(dcn_offset_lr_mult=0.1), dict(dcn_offset_lr_mult=0.1, bias_lr_mult=2.0,
                                bias_decay_mult=0.0, flat_decay_mult=0.5, norm_decay_mult=0.0),
                                dict(bias_lr_mult=3.0), dict(custom_keys={"conv_offset": dict(lr_mult=0)})])
@pytest.mark.parametrize("api", ["mmcv", "mmengine"])
@pytest.mark.filterwarnings("ignore:paramwise_cfg key 'flat_decay_mult' is not used by mmcv")
def test_dcn_parity(api: str, pw: dict, fake_dcn: None, monkeypatch: pytest.MonkeyPatch) -> None:
    model = DcnNet()
    opt = dict(type="SGD", lr=0.01, momentum=0.9, weight_decay=1e-4)
    if api == "mmcv":
        runner = mmcv_runner()
        import mmcv.runner.optimizer.default_constructor as ref_mod

        monkeypatch.setattr(ref_mod, "check_ops_exist", lambda: True)
        ref = runner.build_optimizer(model, dict(opt, paramwise_cfg=copy.deepcopy(pw)))
        fast = fastopt.build_optimizer(model, dict(opt, paramwise_cfg=pw))
    else:
        build = mmengine_build()
        quiet_mmengine_logger()
        import mmengine.optim.optimizer.default_constructor as ref_mod

        monkeypatch.setattr(ref_mod, "mmcv_full_available", lambda: True)
        ref = build(model, dict(optimizer=opt, paramwise_cfg=copy.deepcopy(pw))).optimizer
        fast = fastopt.build_optim_wrapper(model, dict(optimizer=opt, paramwise_cfg=pw)).optimizer
    assert mismatches(ref, fast, _names(model)) == []
    # The rule really fired: the DCN's offset conv got its own lr where a multiplier is set.
    offset = model.backbone.layer2[0].conv2.conv_offset.weight
    lr = per_param(fast)[id(offset)]["lr"]
    assert lr == (0.0 if "custom_keys" in pw else 0.01 * pw.get("dcn_offset_lr_mult", 1.0))


# ---------------------------------------------------------------- invariants
@pytest.mark.filterwarnings("ignore:custom_keys .* match no trainable parameter")
@pytest.mark.parametrize("model_name", ["faster_rcnn_r50_fpn", "cascade_mask_rcnn_swin_l", "vitdet_h",
                                        "mobilenet_v2_ssdlite"])
def test_group_invariants(model_name: str) -> None:
    from fastopt.tools import zoo

    spec = zoo.MODELS[model_name]
    model = zoo.build(model_name)
    cfg = dict(spec.optimizer, paramwise_cfg=spec.paramwise_cfg or dict(norm_decay_mult=0.0))
    opt = fastopt.build_optimizer(model, cfg)
    order = {id(p): i for i, p in enumerate(model.parameters())}
    seen: set[int] = set()
    firsts = []
    for g in opt.param_groups:
        pos = [order[id(p)] for p in g["params"]]
        assert pos == sorted(pos), "params inside a group must keep model order"
        assert not seen & set(map(id, g["params"])), "a parameter in two groups"
        seen |= set(map(id, g["params"]))
        firsts.append(pos[0])
    assert firsts == sorted(firsts), "groups must be ordered by first appearance"
    assert seen == set(order), "every parameter in exactly one group"
    distinct = {freeze({k: v for k, v in g.items() if k != "params"}) for g in opt.param_groups}
    assert len(distinct) == len(opt.param_groups), "two groups with equal hyperparameters"


def test_no_paramwise_gives_one_group_with_frozen_params() -> None:
    model = M.FrozenStemNet()
    opt = fastopt.build_optimizer(model, dict(type="SGD", lr=0.1))
    assert len(opt.param_groups) == 1
    assert len(opt.param_groups[0]["params"]) == len(list(model.parameters()))


def test_duplicate_error_names_both_places() -> None:
    with pytest.raises(ValueError, match=r"'decoder.weight' is the same tensor as "
                                         r"'embed.weight'"):
        fastopt.build_optimizer(M.SharedNet(), dict(type="SGD", lr=0.1, paramwise_cfg=dict(bias_lr_mult=2.0)))


def test_bypass_duplicate_warns_as_mmcv_does() -> None:
    with pytest.warns(UserWarning, match="is duplicate. It is skipped since bypass_duplicate=True"):
        opt = fastopt.build_optimizer(M.SharedNet(), dict(type="SGD", lr=0.1,
                                                          paramwise_cfg=dict(bypass_duplicate=True)))
    assert sum(len(g["params"]) for g in opt.param_groups) == len(list(M.SharedNet().parameters()))


def test_unused_custom_key_warns() -> None:
    with pytest.warns(UserWarning, match="bakcbone"):
        fastopt.build_optimizer(M.FrozenStemNet(), dict(
            type="SGD", lr=0.1, paramwise_cfg=dict(custom_keys={"bakcbone": dict(lr_mult=0.1)})))


def test_missing_lr_is_a_clear_error() -> None:
    with pytest.raises(ValueError, match="has no 'lr'"):
        fastopt.build_optimizer(M.MixedNormNet(), dict(type="SGD", paramwise_cfg=dict(bias_lr_mult=2.0)))


def test_mmengine_extra_lr_needs_no_base_lr() -> None:
    model = nn.Sequential(nn.Linear(2, 2))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        wrapper = fastopt.build_optim_wrapper(model, dict(
            optimizer=dict(type="Adam"), paramwise_cfg=dict(custom_keys={"0": dict(lr=0.5)})))
    assert [g["lr"] for g in wrapper.optimizer.param_groups] == [0.5]


# ---------------------------------------------------------------- registry
def test_registry_decorator_call_and_duplicates() -> None:
    reg = fastopt.Registry("thing")

    @reg.register_module()
    class A:
        pass

    reg.register_module(name="B", module=A)
    assert reg.get("A") is A and reg.get("B") is A and "A" in reg and len(reg) == 2
    with pytest.raises(KeyError, match=r"already registered .* as .*A"):
        reg.register_module(module=A)
    reg.register_module(module=A, force=True)
    with pytest.raises(KeyError, match="did you mean 'A'"):
        reg.build(dict(type="AA"))
    with pytest.raises(KeyError, match='"type"'):
        fastopt.build_from_cfg(dict(x=1), reg)
    assert isinstance(reg.build(dict(type="A")), A)
    assert isinstance(fastopt.build_from_cfg(dict(), reg, default_args=dict(type=A)), A)


def test_optimizers_registry_has_every_torch_optimizer() -> None:
    for name in ["SGD", "Adam", "AdamW", "Adagrad", "RMSprop", "LBFGS", "Adamax", "NAdam", "RAdam"]:
        assert issubclass(fastopt.OPTIMIZERS.get(name), getattr(torch.optim, name))


def test_unknown_optimizer_type_suggests() -> None:
    with pytest.raises(KeyError, match="did you mean 'AdamW'"):
        fastopt.build_optimizer(nn.Linear(2, 2), dict(type="AdamWW", lr=0.1))


def test_wrapper_without_mmengine(monkeypatch: pytest.MonkeyPatch) -> None:
    from fastopt import host_wrapper as wrapper_module

    monkeypatch.setattr(wrapper_module, "mmengine_registry_get", lambda registry, name: None)
    model = nn.Linear(3, 1)
    wrapper = fastopt.build_optim_wrapper(model, dict(
        optimizer=dict(type="SGD", lr=0.1), accumulative_counts=2, clip_grad=dict(max_norm=1.0)))
    assert type(wrapper) is fastopt.OptimWrapper
    before = model.weight.detach().clone()
    x = torch.ones(4, 3)
    wrapper.update_params(model(x).sum())
    assert torch.equal(model.weight, before)  # accumulating
    wrapper.update_params(model(x).sum())
    assert not torch.equal(model.weight, before)
    assert model.weight.grad is None or not model.weight.grad.any()
    assert wrapper.get_lr() == {"lr": [0.1]}
    wrapper.load_state_dict(wrapper.state_dict())


def test_warnings_point_at_the_callers_line(monkeypatch: pytest.MonkeyPatch) -> None:
    """Each construction warning on Python's channel (unknown paramwise key, unused custom key) is
    attributed to the line that called fastopt, whichever entry point and depth raised it."""
    from fastopt import _report

    monkeypatch.setattr(_report, "_mmengine_print_log", lambda: None)  # (mmengine's: its logger)
    model = nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4))
    paramwise = dict(custom_keys={"nothing": dict(lr_mult=0.1)}, norm_decay_mul=0.0)
    mmcv_cfg = dict(type="SGD", lr=0.1, weight_decay=1e-4, paramwise_cfg=paramwise)
    engine_cfg = dict(optimizer=dict(type="SGD", lr=0.1, weight_decay=1e-4), paramwise_cfg=paramwise)
    for build, cfg in ((fastopt.build_optimizer, mmcv_cfg), (fastopt.build_optim_wrapper, engine_cfg)):
        with pytest.warns(UserWarning) as record:
            line = inspect.currentframe().f_lineno + 1  # type: ignore[union-attr]
            build(model, copy.deepcopy(cfg))
        ours = [w for w in record if "nothing" in str(w.message) or "norm_decay_mul" in str(w.message)]
        assert len(ours) == 2
        assert {(w.filename, w.lineno) for w in ours} == {(__file__, line)}


def test_a_subclass_that_overrides_the_plan_hooks_decides() -> None:
    """``config_bits`` and ``plan`` are hooks: under mmengine's semantics (where a config bit
    switches a rule on), a subclass that drops the norm rule's bit gets groups without it."""
    from fastopt import _rules

    class NoNormRule(fastopt.DefaultOptimWrapperConstructor):
        def config_bits(self) -> int:
            norm = next(r.config_bit for r in _rules.RULES if r.key == "norm_decay_mult")
            return super().config_bits() & ~norm

    model = nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4))
    cfg = dict(optimizer=dict(type="SGD", lr=0.1, weight_decay=1e-4))
    ours = NoNormRule(copy.deepcopy(cfg), dict(norm_decay_mult=0.0))(model).optimizer
    assert {g["weight_decay"] for g in ours.param_groups} == {1e-4}
    default = fastopt.DefaultOptimWrapperConstructor(copy.deepcopy(cfg), dict(norm_decay_mult=0.0))(model)
    assert {g["weight_decay"] for g in default.optimizer.param_groups} == {1e-4, 0.0}
