"""fastopt's ``LearningRateDecayOptimWrapperConstructor`` against MMPretrain 1.2.0's original.

MMPretrain does not import beside mmcv 1.7.2, so scripts/install_references.sh takes the
module file from the wheel and it is executed alone here, with ``mmpretrain.registry`` pointed
at a scratch mmengine registry. The depths come from the models' own ``get_layer_depth``; the
models below answer like MMPretrain's ViT, Swin and ConvNeXt backbones behind an
``ImageClassifier`` (``get_layer_depth(name)`` asks the backbone with the ``'backbone.'``
prefix).

The original gives every parameter its own group named by ``param_name``; fastopt merges
parameters whose other keys are equal and lists their names in ``param_names``. The checks
compare every other key of every parameter's group, value and type, and the name.
"""

from __future__ import annotations

import copy
import warnings
from typing import Any

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from torch import nn

import fastopt
from fastopt.checkpoint import per_param_state_dict, reference_group_sizes
from fastopt.registry import OPTIM_WRAPPER_CONSTRUCTORS

from .refs import (
    duplicate_groups,
    exec_mmengine_original,
    hyper_difference,
    one_in,
    outcome,
    quiet_mmengine_logger,
    reference_file,
    same_outcome,
    tally,
)

ORIGINAL = "mmpretrain-1.2.0/mmpretrain/engine/optimizers/layer_decay_optim_wrapper_constructor.py"
NAME = "LearningRateDecayOptimWrapperConstructor"


def _original() -> Any:
    """MMPretrain 1.2.0's constructor class, executed from its file (a skip when it is missing,
    which fails under FASTOPT_REQUIRE_REFERENCES=1)."""
    pytest.importorskip("mmengine")
    return getattr(exec_mmengine_original("mmpretrain", reference_file(ORIGINAL)), NAME)


# ------------------------------------------------------------------------------------ models
class Recording(nn.Module):
    """A model whose ``get_layer_depth`` calls are recorded in ``calls`` (the original and
    fastopt must ask for the same names in the same order)."""

    def __init__(self) -> None:
        super().__init__()
        self.calls: list[str] = []

    def depth(self, name: str) -> tuple[int, int]:
        """The ``(layer_id, max_id)`` of ``name`` (the subclass's rule)."""
        raise NotImplementedError

    def get_layer_depth(self, param_name: str) -> tuple[int, int]:
        """Record the call, then answer by ``depth``."""
        self.calls.append(param_name)
        return self.depth(param_name)


class ViT(nn.Module):
    """MMPretrain ``VisionTransformer`` layout: tokens, ``patch_embed``, ``layers.i``, final ``ln1``.
    Depth: tokens and patch_embed 0, ``layers.i`` i + 1, anything else ``num_layers + 1``."""

    def __init__(self, num_layers: int = 3, dim: int = 4, built: int | None = None) -> None:
        super().__init__()
        self.num_layers = num_layers
        self.cls_token = nn.Parameter(torch.zeros(1, 1, dim))
        self.pos_embed = nn.Parameter(torch.zeros(1, 5, dim))
        self.patch_embed = nn.Module()
        self.patch_embed.projection = nn.Conv2d(3, dim, 2, 2)
        self.layers = nn.ModuleList()
        for _ in range(num_layers if built is None else built):
            layer = nn.Module()
            layer.ln1 = nn.LayerNorm(dim)
            layer.attn = nn.Module()
            layer.attn.qkv = nn.Linear(dim, 3 * dim)
            layer.attn.proj = nn.Linear(dim, dim)
            layer.gamma_1 = nn.Parameter(torch.ones(dim))
            layer.ln2 = nn.LayerNorm(dim)
            layer.ffn = nn.Sequential(nn.Linear(dim, 2 * dim), nn.GELU(), nn.Linear(2 * dim, dim))
            self.layers.append(layer)
        self.ln1 = nn.LayerNorm(dim)

    def get_layer_depth(self, param_name: str, prefix: str = "") -> tuple[int, int]:
        """ViT / BEiT depth rule."""
        total = self.num_layers + 2
        if not param_name.startswith(prefix):
            return total - 1, total
        rest = param_name[len(prefix):]
        if rest in ("cls_token", "pos_embed") or rest.startswith("patch_embed"):
            return 0, total
        if rest.startswith("layers"):
            return int(rest.split(".")[1]) + 1, total
        return total - 1, total


class Swin(nn.Module):
    """MMPretrain ``SwinTransformer`` layout: ``patch_embed`` (conv + norm), ``absolute_pos_embed``,
    ``stages.i.blocks.j`` with relative position tables, ``stages.i.downsample`` (norm +
    reduction), ``norm3``. Depth: patch_embed 0, block j of stage i ``sum(depths[:i]) + j + 1``,
    a downsample ``sum(depths[:i + 1])``, anything else ``sum(depths) + 1``."""

    def __init__(self, depths: tuple[int, ...] = (2, 2, 3, 1), dim: int = 4) -> None:
        super().__init__()
        self.depths = depths
        self.patch_embed = nn.Module()
        self.patch_embed.projection = nn.Conv2d(3, dim, 2, 2)
        self.patch_embed.norm = nn.LayerNorm(dim)
        self.absolute_pos_embed = nn.Parameter(torch.zeros(1, 4, dim))
        self.stages = nn.ModuleList()
        for i, depth in enumerate(depths):
            stage = nn.Module()
            stage.blocks = nn.ModuleList()
            for _ in range(depth):
                block = nn.Module()
                block.norm1 = nn.LayerNorm(dim)
                block.attn = nn.Module()
                block.attn.w_msa = nn.Module()
                block.attn.w_msa.relative_position_bias_table = nn.Parameter(torch.zeros(9, 2))
                block.attn.w_msa.qkv = nn.Linear(dim, 3 * dim)
                block.ffn = nn.Sequential(nn.Linear(dim, dim), nn.Linear(dim, dim))
                stage.blocks.append(block)
            if i < len(depths) - 1:
                stage.downsample = nn.Module()
                stage.downsample.norm = nn.LayerNorm(4 * dim)
                stage.downsample.reduction = nn.Linear(4 * dim, dim, bias=False)
            self.stages.append(stage)
        self.norm3 = nn.LayerNorm(dim)

    def get_layer_depth(self, param_name: str, prefix: str = "") -> tuple[int, int]:
        """Swin depth rule."""
        total = sum(self.depths) + 2
        if not param_name.startswith(prefix):
            return total - 1, total
        parts = param_name[len(prefix):].split(".")
        if parts[0] == "patch_embed" or parts[0].startswith("patch_embed"):
            return 0, total
        if parts[0].startswith("stages"):
            stage, block = int(parts[1]), parts[3]
            if block in ("reduction", "norm"):
                return sum(self.depths[:stage + 1]), total
            return sum(self.depths[:stage]) + int(block) + 1, total
        return total - 1, total


class ConvNeXt(nn.Module):
    """MMPretrain ``ConvNeXt`` layout: ``downsample_layers``, ``stages.i.j`` blocks, ``norm3``.
    Depth over 6 steps (12 when the third stage has more than 9 blocks): stem 0, stages 0 / 1
    at 1 / 2, stage 2 in steps of 3 blocks from 3, downsample 1 / 2 at 2 / 3, stage 3 and its
    downsample at the last step, the rest one past it."""

    def __init__(self, depths: tuple[int, ...] = (1, 1, 7, 1), dim: int = 4) -> None:
        super().__init__()
        self.depths = depths
        self.downsample_layers = nn.ModuleList(
            [nn.Sequential(nn.Conv2d(3, dim, 4, 4), nn.LayerNorm(dim))]
            + [nn.Sequential(nn.LayerNorm(dim), nn.Conv2d(dim, dim, 2, 2)) for _ in depths[1:]])
        self.stages = nn.ModuleList()
        for depth in depths:
            blocks = nn.Sequential()
            for _ in range(depth):
                block = nn.Module()
                block.depthwise_conv = nn.Conv2d(dim, dim, 7, padding=3, groups=dim)
                block.norm = nn.LayerNorm(dim)
                block.pointwise_conv1 = nn.Linear(dim, 2 * dim)
                block.pointwise_conv2 = nn.Linear(2 * dim, dim)
                block.gamma = nn.Parameter(torch.ones(dim))
                blocks.append(block)
            self.stages.append(blocks)
        self.norm3 = nn.LayerNorm(dim)

    def get_layer_depth(self, param_name: str, prefix: str = "") -> tuple[int, int]:
        """ConvNeXt depth rule."""
        last = 12 if self.depths[-2] > 9 else 6
        if not param_name.startswith(prefix):
            return last + 1, last + 2
        parts = param_name[len(prefix):].split(".")
        if parts[0] == "downsample_layers":
            stage = int(parts[1])
            return (0 if stage == 0 else stage + 1 if stage in (1, 2) else last), last + 2
        if parts[0] == "stages":
            stage, block = int(parts[1]), int(parts[2])
            return (stage + 1 if stage < 2 else 3 + block // 3 if stage == 2 else last), last + 2
        return last + 1, last + 2


class Classifier(Recording):
    """MMPretrain ``ImageClassifier``: a backbone, a parameter-free neck and ``head.fc``; depths
    come from the backbone with the ``'backbone.'`` prefix."""

    def __init__(self, backbone: nn.Module, classes: int = 3) -> None:
        super().__init__()
        self.backbone = backbone
        self.neck = nn.AdaptiveAvgPool2d(1)
        self.head = nn.Module()
        self.head.fc = nn.Linear(4, classes)

    def depth(self, name: str) -> tuple[int, int]:
        """The backbone's answer; NotImplementedError when it has no rule (as MMPretrain)."""
        if not hasattr(self.backbone, "get_layer_depth"):
            raise NotImplementedError(f"The backbone {type(self.backbone)} doesn't support `get_layer_depth`")
        return self.backbone.get_layer_depth(name, "backbone.")


BACKBONES = {"vit": ViT, "swin": Swin, "convnext": ConvNeXt}

# The paramwise_cfg of MMPretrain's configs that use this constructor.
MAE_FINETUNE = dict(layer_decay_rate=0.65, custom_keys={
    ".ln": dict(decay_mult=0.0), ".bias": dict(decay_mult=0.0), ".cls_token": dict(decay_mult=0.0),
    ".pos_embed": dict(decay_mult=0.0)})
BEIT_FINETUNE = dict(layer_decay_rate=0.65, custom_keys={
    ".cls_token": dict(decay_mult=0.0), ".pos_embed": dict(decay_mult=0.0), ".gamma": dict(decay_mult=0.0)},
    bias_decay_mult=0.0, norm_decay_mult=0.0, flat_decay_mult=0.0)
SIMMIM_SWIN = dict(layer_decay_rate=0.9, custom_keys={
    ".norm": dict(decay_mult=0.0), ".bias": dict(decay_mult=0.0), ".absolute_pos_embed": dict(decay_mult=0.0),
    ".relative_position_bias_table": dict(decay_mult=0.0)})
SPARK = dict(layer_decay_rate=0.7, norm_decay_mult=0.0, bias_decay_mult=0.0, flat_decay_mult=0.0)


# ------------------------------------------------------------------------------ comparison
def _ref_optimizer(original: Any, model: nn.Module, cfg: dict) -> Any:
    """The original's optimizer for ``cfg`` (built as mmengine's build_optim_wrapper would)."""
    quiet_mmengine_logger()
    cfg = copy.deepcopy(cfg)
    paramwise = cfg.pop("paramwise_cfg", None)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return original(optim_wrapper_cfg=cfg, paramwise_cfg=paramwise)(model).optimizer


def _fast_optimizer(model: nn.Module, cfg: dict) -> Any:
    """fastopt's optimizer for ``cfg`` under the constructor's name."""
    return fastopt.build_optim_wrapper(model, dict(copy.deepcopy(cfg), constructor=NAME)).optimizer


def differences(ref: torch.optim.Optimizer, fast: torch.optim.Optimizer, names: dict[int, str]) -> list[str]:
    """Every difference between the original's per-parameter groups and fastopt's merged ones:
    each key but ``param_name`` (value and type), the name against the parameter's entry in
    ``param_names``, parameters only on one side, and merged groups out of the original's order
    or not minimal."""
    expected: dict[int, dict] = {}
    order: list[int] = []
    for group in ref.param_groups:
        for p in group["params"]:
            expected[id(p)] = {k: v for k, v in group.items() if k != "params"}
            order.append(id(p))
    got: dict[int, tuple[int, dict]] = {}
    out = []
    for gi, group in enumerate(fast.param_groups):
        hyper = {k: v for k, v in group.items() if k not in ("params", "param_names")}
        listed = group.get("param_names")
        if listed is None:  # no paramwise_cfg: the plain group (a named one shows as param_name absent)
            got.update((id(p), (gi, hyper)) for p in group["params"])
            continue
        if len(listed) != len(group["params"]):
            out.append(f"group {gi}: param_names {listed!r} does not name its {len(group['params'])} params")
        for p, name in zip(group["params"], listed):
            got[id(p)] = (gi, dict(hyper, param_name=name))
    for pid in expected.keys() - got.keys():
        out.append(f"{names.get(pid, '?')}: only in the reference")
    for pid in got.keys() - expected.keys():
        out.append(f"{names.get(pid, '?')}: only in fastopt")
    for pid in expected.keys() & got.keys():
        diff = hyper_difference(expected[pid], got[pid][1])
        if diff:
            out.append(f"{names.get(pid, '?')}: {diff}")
    # merged groups in first-seen order, parameters in the original's order inside each
    sequence = [got[pid][0] for pid in order if pid in got]
    firsts = list(dict.fromkeys(sequence))
    if firsts != sorted(firsts):
        out.append(f"groups not in the original's first-seen order: {firsts}")
    in_order: list[list[int]] = [[] for _ in fast.param_groups]
    for pid in order:
        if pid in got:
            in_order[got[pid][0]].append(pid)
    if in_order != [[id(p) for p in g["params"]] for g in fast.param_groups]:
        out.append("parameters inside a group are not in the original's order")
    stripped = copy.copy(fast)  # duplicate_groups reads param_groups only
    stripped.param_groups = [{k: v for k, v in g.items() if k != "param_names"} for g in fast.param_groups]
    if duplicate_groups(stripped):
        out.append(f"groups with equal settings were not merged: {duplicate_groups(stripped)}")
    return sorted(out)


def _names(model: nn.Module) -> dict[int, str]:
    return {id(p): n for n, p in model.named_parameters(remove_duplicate=False)}


def _calls(model: nn.Module) -> list[str]:
    inner = getattr(model, "module", model)
    return list(getattr(inner, "calls", []))


def _reset(model: nn.Module) -> None:
    inner = getattr(model, "module", model)
    if isinstance(getattr(inner, "calls", None), list):
        inner.calls.clear()


def _both(model: nn.Module, cfg: dict) -> tuple[Any, Any, list[str], list[str]]:
    """The original's and fastopt's outcomes, and the get_layer_depth calls each made."""
    original = _original()
    _reset(model)
    ref = outcome(lambda: _ref_optimizer(original, model, cfg))
    ref_calls = _calls(model)
    _reset(model)
    fast = outcome(lambda: _fast_optimizer(model, cfg))
    return ref, fast, ref_calls, _calls(model)


# ------------------------------------------------------------------------------- fixed cases
CASES = [("vit", MAE_FINETUNE), ("vit", BEIT_FINETUNE), ("vit", SPARK), ("swin", SIMMIM_SWIN),
         ("swin", SPARK), ("convnext", SPARK), ("convnext", MAE_FINETUNE)]


@pytest.mark.parametrize(("backbone", "paramwise"), CASES)
@pytest.mark.parametrize("opt_type", ["AdamW", "SGD"])
def test_matches_mmpretrain(backbone: str, paramwise: dict, opt_type: str) -> None:
    """MMPretrain's config recipes on ViT / Swin / ConvNeXt classifiers with a frozen stem
    weight: every parameter's group equals the original's; the groups are merged."""
    model = Classifier(BACKBONES[backbone]())
    next(model.backbone.parameters()).requires_grad_(False)
    optimizer = dict(type=opt_type, lr=4e-3, weight_decay=0.05)
    if opt_type == "SGD":
        optimizer["momentum"] = 0.9
    (ref, ref_exc), (fast, fast_exc), ref_calls, fast_calls = _both(
        model, dict(optimizer=optimizer, paramwise_cfg=paramwise))
    assert ref_exc is None and fast_exc is None, (ref_exc, fast_exc)
    assert differences(ref, fast, _names(model)) == []
    assert fast_calls == ref_calls and len(ref_calls) == len(ref.param_groups)
    assert type(fast).__module__ == "fastopt.optim"
    assert len(fast.param_groups) < len(ref.param_groups) / 2
    assert len({g["lr"] for g in fast.param_groups}) > 3  # the decay spreads the lrs


def test_rules_by_hand() -> None:
    """The documented rules on a ViT with four layers (depths 0-5, rate 0.5), value and type."""
    model = Classifier(ViT(num_layers=4))
    model.backbone.layers[2].ln2.weight.requires_grad_(False)
    opt = fastopt.build_optim_wrapper(model, dict(
        optimizer=dict(type="AdamW", lr=1.0, weight_decay=0.1), constructor=NAME,
        paramwise_cfg=dict(layer_decay_rate=0.5, bias_decay_mult=0.0, flat_decay_mult=0.5,
                           custom_keys={".cls_token": dict(decay_mult=0), "ln1": dict(lr_mult=3.0),
                                        "layers.3": dict(decay_mult=2.0, momentum=0.7)}))).optimizer
    by_name = {n: g for g in opt.param_groups for n in g["param_names"]}
    assert "backbone.layers.2.ln2.weight" not in by_name  # frozen: left out
    assert len(by_name) == sum(p.requires_grad for p in model.parameters())

    def check(name: str, layer: int, wd: Any, **extra: Any) -> None:
        group = by_name[name]
        scale = 0.5 ** (5 - layer)
        assert (group["layer_id"], group["lr_scale"], group["lr"]) == (layer, scale, scale)
        assert group["weight_decay"] == wd and type(group["weight_decay"]) is type(wd), (name, group)
        assert {k: group[k] for k in extra} == extra

    check("backbone.cls_token", 0, 0.0)  # 0.1 * 0 is a float
    check("backbone.pos_embed", 0, 0.1)  # a 3-D tensor: no rule
    check("backbone.patch_embed.projection.bias", 0, 0.0)  # bias rule
    check("backbone.layers.0.ln1.weight", 1, 0.1, lr_mult=3.0)  # custom key: lr_mult copied, lr not scaled
    check("backbone.layers.0.ln2.bias", 1, 0.0)  # no norm_decay_mult: the bias rule
    check("backbone.layers.0.ln2.weight", 1, 0.05)  # then the flat rule
    check("backbone.layers.1.gamma_1", 2, 0.05)
    check("backbone.layers.3.attn.qkv.weight", 4, 0.2, momentum=0.7)
    check("backbone.layers.3.ln1.bias", 4, 0.2)  # 'layers.3' is longer than 'ln1'
    check("backbone.ln1.weight", 5, 0.1)  # final norm: deepest, custom 'ln1'
    check("head.fc.weight", 5, 0.1)
    assert [n for n, g in by_name.items() if "lr_mult" in g] == [
        n for n in by_name if "ln1" in n and "layers.3" not in n]


def test_no_paramwise_cfg_is_one_plain_group() -> None:
    """Without paramwise_cfg the original never asks for depths: one group, frozen ones too."""
    model = Classifier(ViT())
    next(model.parameters()).requires_grad_(False)
    (ref, _), (fast, fast_exc), ref_calls, fast_calls = _both(
        model, dict(optimizer=dict(type="AdamW", lr=1e-3, weight_decay=0.05)))
    assert fast_exc is None and len(fast.param_groups) == len(ref.param_groups) == 1
    assert [id(p) for p in fast.param_groups[0]["params"]] == [id(p) for p in ref.param_groups[0]["params"]]
    assert ref_calls == fast_calls == []


class EveryLeaf(Recording):
    """Every kind of parameter the weight-decay rules tell apart, in one module tree: norm
    layers inside and outside the norm rule (RMSNorm), a Linear, a Conv2d, raw parameters named
    ``bias`` (on a module that is no norm layer), 1-D, 0-D and 2-D; depth by module order."""

    def __init__(self) -> None:
        super().__init__()
        self.norms = nn.ModuleList([nn.LayerNorm(2), nn.BatchNorm1d(2), nn.GroupNorm(1, 2),
                                    nn.InstanceNorm1d(2, affine=True), nn.RMSNorm(2)])
        self.fc = nn.Linear(2, 2)
        self.conv = nn.Conv2d(2, 2, 1, groups=2)
        self.raw = nn.Module()
        self.raw.bias = _param(2)
        self.raw.flat = _param(1)
        self.raw.scalar = _param(0)

    def depth(self, name: str) -> tuple[int, int]:
        """norms.i at i, the rest at 5, of 7."""
        parts = name.split(".")
        return (int(parts[1]) if parts[0] == "norms" else 5), 7


@pytest.mark.parametrize("norm", ["absent", None, 0.25])
@pytest.mark.parametrize("bias", ["absent", None, 0.5])
@pytest.mark.parametrize("flat", ["absent", None, 2.0])
def test_rule_precedence(norm: Any, bias: Any, flat: Any) -> None:
    """norm before bias before flat, each only when its multiplier is not None; custom keys first;
    no depthwise-conv rule, no bias lr."""
    paramwise: dict[str, Any] = dict(layer_decay_rate=0.8, custom_keys={"norms.3": dict(decay_mult=3.0)},
                                     dwconv_decay_mult=7.0, bias_lr_mult=9.0)  # not read here
    for key, value in (("norm_decay_mult", norm), ("bias_decay_mult", bias), ("flat_decay_mult", flat)):
        if value != "absent":
            paramwise[key] = value
    model = EveryLeaf()
    (ref, ref_exc), (fast, fast_exc), _, _ = _both(
        model, dict(optimizer=dict(type="AdamW", lr=1e-3, weight_decay=0.1), paramwise_cfg=paramwise))
    assert ref_exc is None and fast_exc is None, (ref_exc, fast_exc)
    assert differences(ref, fast, _names(model)) == []


def test_custom_key_priority() -> None:
    """The longest matching key wins, then the alphabetically first: here the alphabetical order
    alone, or the reversed one, would pick another key."""
    keys = {".1.ln": dict(decay_mult=0.5), "layers.1.ln2": dict(decay_mult=2.0), "n2.b": dict(decay_mult=4.0),
            "ln2.": dict(decay_mult=3.0)}
    model = Classifier(ViT())
    (ref, ref_exc), (fast, fast_exc), _, _ = _both(model, dict(
        optimizer=dict(type="AdamW", lr=1e-3, weight_decay=0.1),
        paramwise_cfg=dict(layer_decay_rate=0.9, custom_keys=keys)))
    assert ref_exc is None and fast_exc is None, (ref_exc, fast_exc)
    assert differences(ref, fast, _names(model)) == []
    wd = {n: g["weight_decay"] for g in fast.param_groups for n in g["param_names"]}
    assert wd["backbone.layers.1.ln2.bias"] == 0.2  # 'layers.1.ln2' over '.1.ln', 'ln2.', 'n2.b'
    assert wd["backbone.layers.1.ln1.bias"] == 0.05  # '.1.ln' alone
    assert wd["backbone.layers.0.ln2.bias"] == 0.30000000000000004  # 'ln2.' before 'n2.b'


@pytest.mark.parametrize("case", ["no get_layer_depth", "backbone without it", "no weight_decay",
                                  "no lr", "shared module", "decay_mult without weight_decay"])
def test_errors_match(case: str) -> None:
    """The original's failures, raised by fastopt with the same class (and named keys)."""
    optimizer: dict[str, Any] = dict(type="AdamW", lr=1e-3, weight_decay=0.05)
    paramwise: dict[str, Any] = dict(layer_decay_rate=0.9)
    model: nn.Module = Classifier(ViT())
    if case == "no get_layer_depth":
        model = nn.Sequential(nn.Linear(2, 2), nn.LayerNorm(2))
    elif case == "backbone without it":
        model = Classifier(nn.Sequential(nn.Linear(2, 2)))
    elif case == "no weight_decay":
        del optimizer["weight_decay"]
    elif case == "no lr":
        del optimizer["lr"]
    elif case == "shared module":
        model.head.shared = model.backbone.layers[0].ffn
    else:
        del optimizer["weight_decay"]
        paramwise["custom_keys"] = {"ln": dict(decay_mult=0.0)}
    ref, fast, _, _ = _both(model, dict(optimizer=optimizer, paramwise_cfg=paramwise))
    assert ref[1] is not None, "the original built an optimizer"
    assert not same_outcome(ref, fast)


def test_registered_beside_mmdet_constructor() -> None:
    """MMPretrain's name and MMDetection's ``LearningRateDecayOptimizerConstructor`` are two
    registrations with their own recipes; the latter still builds its groups."""
    ours = OPTIM_WRAPPER_CONSTRUCTORS.get(NAME)
    mmdet = OPTIM_WRAPPER_CONSTRUCTORS.get("LearningRateDecayOptimizerConstructor")
    assert ours is fastopt.layer_decay.LearningRateDecayOptimWrapperConstructor
    assert mmdet is fastopt.layer_decay.LearningRateDecayOptimizerConstructor and mmdet is not ours
    model = nn.Module()
    model.backbone = type("ConvNeXt", (ConvNeXt,), {})()
    model.head = nn.Linear(4, 2)
    opt = fastopt.build_optim_wrapper(model, dict(
        optimizer=dict(type="AdamW", lr=1e-3, weight_decay=0.05),
        constructor="LearningRateDecayOptimizerConstructor",
        paramwise_cfg=dict(num_layers=6, decay_rate=0.7, decay_type="layer_wise"))).optimizer
    assert {"group_name", "lr_scale", "param_names"} <= opt.param_groups[0].keys()
    assert "layer_id" not in opt.param_groups[0]


def test_checkpoint_layout_is_one_group_per_parameter() -> None:
    """The optimizer records the original's layout (one group per trainable parameter, in its
    order), and fastopt's state dict maps onto it."""
    model = Classifier(Swin())
    cfg = dict(optimizer=dict(type="AdamW", lr=1e-3, weight_decay=0.05), paramwise_cfg=SIMMIM_SWIN)
    ref = _ref_optimizer(_original(), model, cfg)
    fast = _fast_optimizer(model, cfg)
    sizes = reference_group_sizes(fast)
    assert sizes == [1] * len(ref.param_groups)
    saved = per_param_state_dict(fast)
    assert [g["params"] for g in saved["param_groups"]] == [[i] for i in range(len(ref.param_groups))]
    for mine, theirs in zip(saved["param_groups"], ref.state_dict()["param_groups"]):
        assert hyper_difference({k: v for k, v in theirs.items() if k not in ("params", "param_name")},
                                {k: v for k, v in mine.items() if k != "params"}) == {}


def test_resume_from_the_originals_checkpoint() -> None:
    """An optimizer state saved by the original loads into fastopt's merged groups, and the next
    steps match the original's."""
    torch.manual_seed(0)
    model = Classifier(ViT())
    twin = copy.deepcopy(model)
    cfg = dict(optimizer=dict(type="AdamW", lr=1e-2, weight_decay=0.05), paramwise_cfg=MAE_FINETUNE)
    ref = _ref_optimizer(_original(), model, cfg)

    def set_grads(m: nn.Module, seed: int) -> None:
        gen = torch.Generator().manual_seed(seed)
        for p in m.parameters():
            p.grad = torch.randn(p.shape, generator=gen)

    for seed in range(2):
        set_grads(model, seed)
        ref.step()
    twin.load_state_dict(model.state_dict())
    fast = _fast_optimizer(twin, cfg)
    fast.load_state_dict(copy.deepcopy(ref.state_dict()))
    for seed in range(2, 4):
        set_grads(model, seed)
        set_grads(twin, seed)
        ref.step()
        fast.step()
    for (name, a), b in zip(model.named_parameters(), twin.parameters()):
        torch.testing.assert_close(b, a, rtol=1e-6, atol=1e-7, msg=name)


# ---------------------------------------------------------------------------- random models
class Generic(Recording):
    """A random module tree whose depth rule is a function of the name: the number of dots or
    the first number in the name, offset by ``shift`` (negative exponents when it passes
    ``max_id``), over ``max_id``."""

    def __init__(self, max_id: int, shift: int, by_number: bool) -> None:
        super().__init__()
        self.max_id, self.shift, self.by_number = max_id, shift, by_number

    def depth(self, name: str) -> tuple[int, int]:
        """Depth of ``name`` by the drawn rule."""
        if self.by_number:
            numbers = [int(part) for part in name.split(".") if part.isdigit()]
            return (numbers[0] + 1 if numbers else self.max_id - 1) + self.shift, self.max_id
        return name.count(".") + self.shift, self.max_id


def _param(ndim: int) -> nn.Parameter:
    return nn.Parameter(torch.zeros((2,) * ndim))


LEAVES = ("norm", "ln1", "bn", "gn", "inorm", "rms", "qkv", "conv", "bias", "gamma", "pos_embed", "cls_token",
          "relative_position_bias_table", "scale")


def _leaf(name: str, ndim: int) -> nn.Module | nn.Parameter:
    """A norm layer (some of them outside the norm rule: RMSNorm), a Linear / Conv2d, or a raw
    parameter (``bias`` then is a parameter named bias on a module that is no norm layer)."""
    makers = {"norm": lambda: nn.LayerNorm(2), "ln1": lambda: nn.LayerNorm(2),
              "bn": lambda: nn.BatchNorm1d(2), "gn": lambda: nn.GroupNorm(1, 2),
              "inorm": lambda: nn.InstanceNorm1d(2, affine=True), "rms": lambda: nn.RMSNorm(2),
              "qkv": lambda: nn.Linear(2, 2), "conv": lambda: nn.Conv2d(2, 2, 1, groups=2)}
    return makers[name]() if name in makers else _param(ndim)


@st.composite
def _tree(draw: st.DrawFn, depth: int) -> nn.Module:
    """Numbered and named submodules, leaves of every kind the rules tell apart."""
    out = nn.Module()
    for i in range(draw(st.integers(1, 3))):
        if depth > 1 and draw(st.booleans()):
            out.add_module(str(i) if draw(st.booleans()) else f"layers{i}", draw(_tree(depth - 1)))
            continue
        block = nn.Module()
        for name in draw(st.lists(st.sampled_from(LEAVES), min_size=1, max_size=3, unique=True)):
            leaf = _leaf(name, draw(st.integers(0, 3)))
            if isinstance(leaf, nn.Parameter):
                block.register_parameter(name, leaf)
            else:
                block.add_module(name, leaf)
        out.add_module(str(i), block)
    return out


@st.composite
def pretrain_models(draw: st.DrawFn) -> nn.Module:
    """A classifier over a ViT / Swin / ConvNeXt of random size (a ViT with fewer or more
    layers than it claims, a backbone without a depth rule, a 'layers' entry that is not a
    number), or a random tree with a rule of its own; now and then frozen or shared parameters,
    a shared module, a DDP-style ``.module`` wrapper, or no ``get_layer_depth`` at all."""
    kind = draw(st.sampled_from(["vit", "swin", "convnext", "generic", "generic"]))
    model: nn.Module
    if kind == "generic":
        model = Generic(draw(st.integers(1, 6)), draw(st.sampled_from([0, 0, 0, 1, 3])), draw(st.booleans()))
        model.add_module("tree", draw(_tree(3)))
        model.head = nn.Linear(2, 2)
    else:
        if kind == "vit":
            num = draw(st.integers(1, 4))
            backbone: nn.Module = ViT(num, built=num if draw(st.booleans()) else draw(st.integers(1, 5)))
            if draw(one_in(12)):
                backbone.layers.add_module("extra", nn.LayerNorm(4))  # int('extra') fails in the rule
        elif kind == "swin":
            backbone = Swin(tuple(draw(st.lists(st.integers(1, 3), min_size=1, max_size=4))))
        else:
            backbone = ConvNeXt((1, 1, draw(st.sampled_from([2, 4, 10])), 1))
        model = Classifier(backbone if not draw(one_in(20)) else nn.Sequential(nn.Linear(4, 4)))
    params = list(model.parameters())
    for p in params:
        if draw(one_in(8)):
            p.requires_grad_(False)
    if draw(one_in(12)):  # the same tensor under a second name in another module
        holder = nn.Module()
        holder.tied = draw(st.sampled_from(params))
        model.add_module("tied_holder", holder)
    if draw(one_in(12)):  # one module under two parents
        model.add_module("again", draw(st.sampled_from([m for m in model.modules() if m is not model])))
    if draw(one_in(20)):
        model = WithoutDepth(model)
    if draw(one_in(10)):
        wrapper = nn.Module()
        wrapper.module = model
        model = wrapper
    return model


class WithoutDepth(nn.Module):
    """A model that does not answer ``get_layer_depth`` (its inner one does)."""

    def __init__(self, inner: nn.Module) -> None:
        super().__init__()
        self.inner = inner


MULTS = st.sampled_from(["absent", "absent", None, 0.0, 0, 0.5, 2.0])
KEYS = st.sampled_from([".ln", "ln1", ".bias", "bias", "norm", ".norm", "cls_token", ".pos_embed", "layers.0",
                        "layers0", "gamma", "qkv", "head", "0.", "relative_position_bias_table", "backbone"])
EXTRAS = st.sampled_from([{}, {}, dict(lr_mult=0.1), dict(lr=5.0), dict(weight_decay=0.3), dict(momentum=0.5),
                          dict(betas=(0.8, 0.9))])


@st.composite
def pretrain_configs(draw: st.DrawFn) -> dict:
    """An optim_wrapper config: AdamW or SGD, int or float lr and weight decay (now and then
    none), a decay rate (int 1 too; 0.0 fails on negative exponents), the three multipliers
    (absent, None or a number) and custom keys with decay_mult and extra entries."""
    opt_type = draw(st.sampled_from(["AdamW", "SGD"]))
    optimizer: dict[str, Any] = dict(type=opt_type, lr=draw(st.sampled_from([1e-3, 0.01, 1])))
    if opt_type == "SGD":
        optimizer["momentum"] = 0.9
    if not draw(one_in(10)):
        optimizer["weight_decay"] = draw(st.sampled_from([0.05, 0.1, 0.1, 0]))
    if draw(one_in(20)):
        del optimizer["lr"]
    paramwise: dict[str, Any] = {}
    rate = draw(st.sampled_from(["absent", 0.65, 0.9, 0.5, 1.0, 1, 0.0]))
    if rate != "absent":
        paramwise["layer_decay_rate"] = rate
    for key in ("norm_decay_mult", "bias_decay_mult", "flat_decay_mult"):
        mult = draw(MULTS)
        # without weight_decay the original rejects norm / bias multipliers (flat is not checked)
        if mult != "absent" and ("weight_decay" in optimizer or key == "flat_decay_mult" or draw(one_in(4))):
            paramwise[key] = mult
    if draw(one_in(4)):  # mmengine keys this constructor does not read
        paramwise[draw(st.sampled_from(["dwconv_decay_mult", "bias_lr_mult"]))] = 0.5
    if draw(st.booleans()):
        custom = {}
        for key in draw(st.lists(KEYS, max_size=4, unique=True)):
            entry = dict(draw(EXTRAS))
            if draw(st.integers(0, 3)) > 0 and ("weight_decay" in optimizer or draw(one_in(4))):
                entry["decay_mult"] = draw(st.sampled_from([0.0, 0, 0.5, 1]))
            custom[key] = entry
        paramwise["custom_keys"] = custom
    if not paramwise and not draw(one_in(10)):
        paramwise["layer_decay_rate"] = 0.75
    return dict(optimizer=optimizer, paramwise_cfg=paramwise)


RANDOM = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
#: The same examples drawn the same way every run, for the check that they exercise the rules:
#: the share of a random run's examples that split the parameters varies from run to run
#: (45-87% seen), while a drift of the generator shows on a fixed sample as well.
FIXED = settings(RANDOM, derandomize=True, database=None)


def _example(model: nn.Module, cfg: dict) -> None:
    ref, fast, ref_calls, fast_calls = _both(model, cfg)
    if same_outcome(ref, fast):
        assert differences(ref[0], fast[0], _names(model)) == []
        assert fast_calls == ref_calls


_random_examples = RANDOM(given(model=pretrain_models(), cfg=pretrain_configs())(_example))
_fixed_examples = FIXED(given(model=pretrain_models(), cfg=pretrain_configs())(_example))


def test_random_models_and_configs_match_mmpretrain() -> None:
    """Random layouts, depth rules and configs: the original's groups (every key, type, name,
    and the same get_layer_depth calls), or both raise the same error."""
    _original()
    with tally("random models vs MMPretrain's LearningRateDecayOptimWrapperConstructor"):
        _random_examples()


def test_a_fixed_sample_matches_mmpretrain_and_exercises_the_rules() -> None:
    """The same on a fixed sample of the generator's examples, most of which split the
    parameters (where the rules can go wrong): a drifted generator fails here."""
    _original()
    with tally("fixed sample vs MMPretrain's LearningRateDecayOptimWrapperConstructor") as t:
        _fixed_examples()
    t.require(0.5)
