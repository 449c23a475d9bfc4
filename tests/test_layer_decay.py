"""fastopt's layer-wise lr decay constructors against the originals: MMDetection 3.3
(ConvNeXt), MMSegmentation 1.2 (ConvNeXt, BEiT, MAE; the deprecated BEiT
``LayerDecayOptimizerConstructor``) and MMDetection's ViTDet project.

Neither package imports beside mmcv 1.7.2, so each original module file is loaded on its
own, with ``<package>.registry`` pointed at a scratch mmengine registry.
"""

from __future__ import annotations

import copy
import functools
import importlib.util
import os
import warnings
from typing import Any

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from torch import nn

import fastopt

from .refs import (
    exec_mmengine_original,
    exec_original,
    mismatches,
    mmcv_runner,
    one_in,
    outcome,
    quiet_mmengine_logger,
    reference_file,
    same_outcome,
    stand_in,
    tally,
)


def _original_path(package: str) -> str:
    spec = importlib.util.find_spec(package)
    return f"{spec.submodule_search_locations[0]}/engine/optimizers/layer_decay_optimizer_constructor.py"


def _original(package: str, cls: str = "LearningRateDecayOptimizerConstructor") -> Any:
    pytest.importorskip("mmengine")
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        pytest.skip(f"{package} (the reference) is not installed")
    return getattr(exec_mmengine_original(package, _original_path(package)), cls)


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
         ("mmdet", "ConvNeXt", "layer_wise_vit"),
         ("mmseg", "ConvNeXt", "layer_wise"), ("mmseg", "ConvNeXt", "stage_wise"),
         ("mmseg", "BEiT", "layer_wise"), ("mmseg", "BEiT", "layer_wise_vit")]


@pytest.mark.parametrize(("package", "backbone", "decay_type"), CASES)
@pytest.mark.parametrize("opt_type", ["AdamW", "SGD"])
def test_matches_openmmlab(package: str, backbone: str, decay_type: str, opt_type: str) -> None:
    model = Detector(backbone)
    cfg = dict(optimizer=dict(type=opt_type, lr=1e-3, weight_decay=0.05),
               paramwise_cfg=dict(num_layers=6, decay_rate=0.7, decay_type=decay_type))
    ref, fast = _build_pair(_original(package), model, cfg, "LearningRateDecayOptimizerConstructor")
    names = {id(p): n for n, p in model.named_parameters()}
    assert mismatches(ref, fast, names) == []
    assert type(fast).__module__ == "fastopt.optim"
    lrs = {g["lr"] for g in fast.param_groups}
    assert len(lrs) > 3  # the decay really spreads the lrs
    ref_names = sorted(n for g in ref.param_groups for n in g["param_names"])
    assert ref_names == sorted(n for g in fast.param_groups for n in g["param_names"])
    assert _per_param(ref).keys() == _per_param(fast).keys()


def test_needs_a_convnext_backbone() -> None:
    model = nn.Module()
    model.backbone = nn.Linear(2, 2)
    with pytest.raises(NotImplementedError, match="defined for ConvNeXt"):
        fastopt.build_optim_wrapper(model, dict(optimizer=dict(type="SGD", lr=0.1, weight_decay=0.1),
                                                constructor="LearningRateDecayOptimizerConstructor",
                                                paramwise_cfg=dict(num_layers=6, decay_rate=0.7)))


def _ref_optimizer(original: Any, model: nn.Module, cfg: dict) -> Any:
    """The original constructor's optimizer for ``cfg`` (left as it is)."""
    quiet_mmengine_logger()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        wrapper_cfg = {k: v for k, v in copy.deepcopy(cfg).items() if k != "paramwise_cfg"}
        paramwise = copy.deepcopy(cfg["paramwise_cfg"])
        return original(optim_wrapper_cfg=wrapper_cfg, paramwise_cfg=paramwise)(model).optimizer


def _fast_optimizer(model: nn.Module, cfg: dict, constructor: str) -> Any:
    """fastopt's optimizer for ``cfg`` with ``constructor``."""
    return fastopt.build_optim_wrapper(model, dict(copy.deepcopy(cfg), constructor=constructor)).optimizer


def _build_pair(original: Any, model: nn.Module, cfg: dict, constructor: str) -> tuple[Any, Any]:
    """The original's optimizer and fastopt's for the same config (neither mutates ``cfg``)."""
    return _ref_optimizer(original, model, cfg), _fast_optimizer(model, cfg, constructor)


@pytest.mark.parametrize("backbone", ["BEiT", "ConvNeXt"])
def test_mmseg_deprecated_layer_decay_name(backbone: str) -> None:
    """``LayerDecayOptimizerConstructor`` with ``layer_decay_rate`` is MMSegmentation's BEiT one."""
    original = _original("mmseg", "LayerDecayOptimizerConstructor")
    model = Detector(backbone)
    cfg = dict(optimizer=dict(type="AdamW", lr=3e-5, weight_decay=0.05),
               paramwise_cfg=dict(num_layers=4, layer_decay_rate=0.9))
    before = copy.deepcopy(cfg)
    ref, fast = _build_pair(original, model, cfg, "LayerDecayOptimizerConstructor")
    assert cfg == before
    names = {id(p): n for n, p in model.named_parameters()}
    assert mismatches(ref, fast, names) == []
    assert len({g["lr"] for g in fast.param_groups}) > 3


# --------------------------------------------------------------------------- ViTDet
VITDET_FILE = "projects/ViTDet/vitdet/layer_decay_optimizer_constructor.py"


def _vitdet_original() -> Any:
    """MMDetection's ViTDet constructor, from the source checkout named by
    ``$FASTOPT_MMDET_SOURCE``: the ViTDet project ships in no mmdet wheel or sdist."""
    pytest.importorskip("mmengine")
    root = os.environ.get("FASTOPT_MMDET_SOURCE")
    if not root or not os.path.isfile(os.path.join(root, VITDET_FILE)):
        pytest.skip(f"set FASTOPT_MMDET_SOURCE to an mmdetection checkout (with {VITDET_FILE}) "
                    "to compare with the ViTDet original")
    return exec_mmengine_original("mmdet", os.path.join(root, VITDET_FILE)).LayerDecayOptimizerConstructor


class ViT(nn.Module):
    """ViTDet-shaped backbone with its traps: a frozen block weight, a final norm outside the
    blocks, a 1-D non-norm parameter and a bias inside the blocks."""

    def __init__(self, dim: int = 8, depth: int = 6) -> None:
        super().__init__()
        self.patch_embed = nn.Module()
        self.patch_embed.proj = nn.Conv2d(3, dim, 4, 4)
        self.pos_embed = nn.Parameter(torch.zeros(1, 5, dim))
        self.blocks = nn.ModuleList()
        for _ in range(depth):
            block = nn.Module()
            block.norm1 = nn.LayerNorm(dim)
            block.attn = nn.Module()
            block.attn.qkv = nn.Linear(dim, 3 * dim)
            block.attn.rel_pos_h = nn.Parameter(torch.zeros(7, 2))
            block.gamma = nn.Parameter(torch.ones(dim))
            block.norm2 = nn.LayerNorm(dim)
            block.mlp = nn.Sequential(nn.Linear(dim, 2 * dim), nn.Linear(2 * dim, dim))
            self.blocks.append(block)
        self.blocks[1].attn.qkv.weight.requires_grad_(False)
        self.norm = nn.LayerNorm(dim)


class ViTDetLike(nn.Module):
    """A ViT backbone plus a neck whose names contain ``pos_embed``, ``blocks`` and ``norm``."""

    def __init__(self, depth: int = 6) -> None:
        super().__init__()
        self.backbone = ViT(depth=depth)
        self.neck = nn.Module()
        self.neck.pos_embed = nn.Parameter(torch.zeros(1, 4, 8))
        self.neck.blocks = nn.ModuleList([nn.Sequential(nn.Conv2d(8, 8, 1), nn.GroupNorm(2, 8))])
        self.neck.norm = nn.LayerNorm(8)
        self.head = nn.Linear(8, 3)


def _vitdet_models() -> dict[str, Any]:
    from fastopt.tools import zoo

    return {"vitdet_b_mask_rcnn": lambda: zoo.catalogue.vitdet_h(width=0.05, depth=12),
            "vit_traps": ViTDetLike}


VITDET_CASES = [("vitdet_b_mask_rcnn", "AdamW", 12), ("vit_traps", "AdamW", 6),
                ("vit_traps", "SGD", 6), ("vit_traps", "AdamW", 3), ("vit_traps", "AdamW", 9)]


@pytest.mark.parametrize(("model_name", "opt_type", "num_layers"), VITDET_CASES)
def test_vitdet_matches_original(model_name: str, opt_type: str, num_layers: int) -> None:
    """Every parameter's group equals the ViTDet original's (also num_layers != depth)."""
    original = _vitdet_original()
    model = _vitdet_models()[model_name]()
    cfg = dict(optimizer=dict(type=opt_type, lr=1e-4, weight_decay=0.1),
               paramwise_cfg=dict(num_layers=num_layers, decay_rate=0.7, decay_type="layer_wise"))
    ref, fast = _build_pair(original, model, cfg, "LayerDecayOptimizerConstructor")
    names = {id(p): n for n, p in model.named_parameters()}
    assert mismatches(ref, fast, names) == []
    assert [g["group_name"] for g in ref.param_groups] == [g["group_name"] for g in fast.param_groups]
    assert type(fast).__module__ == "fastopt.optim"


def test_vitdet_rules() -> None:
    """The ViTDet recipe as documented in fastopt.layer_decay, parameter by parameter."""
    model = ViTDetLike(depth=6)
    opt = fastopt.build_optim_wrapper(model, dict(
        optimizer=dict(type="AdamW", lr=1e-4, weight_decay=0.1),
        constructor="LayerDecayOptimizerConstructor",
        paramwise_cfg=dict(num_layers=6, decay_rate=0.7))).optimizer
    by_name = {n: g for g in opt.param_groups for n in g["param_names"]}
    trainable = [n for n, p in model.named_parameters() if p.requires_grad]
    assert sorted(by_name) == sorted(trainable) and "backbone.blocks.1.attn.qkv.weight" not in by_name

    def check(name: str, depth: int, wd: float, kind: str) -> None:
        group = by_name[name]
        assert group["lr_scale"] == 0.7 ** (7 - depth) and group["lr"] == 0.7 ** (7 - depth) * 1e-4
        assert group["weight_decay"] == wd and type(group["weight_decay"]) is type(wd)
        assert group["group_name"] == f"layer_{depth}_{kind}"

    check("backbone.patch_embed.proj.weight", 0, 0.1, "decay")
    check("backbone.patch_embed.proj.bias", 0, 0.1, "decay")  # biases keep weight decay
    check("backbone.pos_embed", 0, 0, "no_decay_pos_embed")  # an int 0, as in the original
    check("backbone.blocks.0.norm1.weight", 1, 0.0, "no_decay")
    check("backbone.blocks.4.attn.qkv.bias", 5, 0.1, "decay")
    check("backbone.blocks.5.gamma", 6, 0.1, "decay")
    check("backbone.blocks.5.norm2.bias", 6, 0.0, "no_decay")
    check("backbone.norm.weight", 7, 0.1, "decay")  # outside the blocks: deepest, decayed
    check("neck.pos_embed", 7, 0, "no_decay_pos_embed")
    check("neck.blocks.0.1.weight", 7, 0.1, "decay")
    check("neck.norm.bias", 7, 0.1, "decay")
    check("head.weight", 7, 0.1, "decay")
    assert len(opt.param_groups) == 2 + 2 * 6 + 2  # (decay, pos_embed) at 0 and 7, two per block


@pytest.mark.parametrize(("constructor", "paramwise"), [
    ("FastLearningRateDecayOptimizerConstructor", dict(num_layers=4, decay_rate=0.9)),
    ("FastLayerDecayOptimizerConstructor", dict(num_layers=4, layer_decay_rate=0.9)),
])
def test_mmengine_plugin_layer_decay(constructor: str, paramwise: dict) -> None:
    """mmengine's own build_optim_wrapper with the plug-in's constructors vs MMSegmentation's."""
    original = _original("mmseg", constructor.removeprefix("Fast"))
    from mmengine.optim import OptimWrapper, build_optim_wrapper

    import fastopt.integrations.mmengine  # noqa: F401  (registers the constructors)

    model = Detector("BEiT")
    cfg = dict(optimizer=dict(type="AdamW", lr=3e-5, weight_decay=0.05), paramwise_cfg=paramwise)
    ref, _ = _build_pair(original, model, cfg, "LearningRateDecayOptimizerConstructor"
                         if "decay_rate" in paramwise else "LayerDecayOptimizerConstructor")
    wrapper = build_optim_wrapper(model, dict(copy.deepcopy(cfg), constructor=constructor))
    assert isinstance(wrapper, OptimWrapper) and type(wrapper).__name__ == "OptimWrapperWithFusedClip"
    assert mismatches(ref, wrapper.optimizer, {id(p): n for n, p in model.named_parameters()}) == []
    assert type(wrapper.optimizer).__module__ == "fastopt.optim"


# ------------------------------------------------------------ mmcv 1.x API (build_optimizer)
V1_FILES = {"mmdet": "mmdet-2.28.2/mmdet/core/optimizers/layer_decay_optimizer_constructor.py",
            "mmseg": "mmsegmentation-0.30.0/mmseg/core/optimizers/layer_decay_optimizer_constructor.py"}


@functools.cache
def _load_v1_module(package: str) -> Any:
    """Execute the mmcv 1.x-era original (MMDetection 2.28 / MMSegmentation 0.30) file under
    stand-in ``<package>.utils`` and ``<package>.core[.optimizers].builder`` modules."""
    import logging

    path = reference_file(V1_FILES[package])
    runner = mmcv_runner()
    builders = type(runner.OPTIMIZER_BUILDERS)(f"scratch {package} builders")
    builder = f"{package}.core.optimizers.builder" if package == "mmdet" else f"{package}.core.builder"
    return exec_original(path, f"{package}.core.optimizers.layer_decay_optimizer_constructor", {
        package: stand_in(package),
        f"{package}.utils": stand_in("utils", get_root_logger=lambda: logging.getLogger("fastopt-test-ref")),
        f"{package}.core": stand_in("core", __path__=[]),
        f"{package}.core.optimizers": stand_in("optimizers", __path__=[]),
        builder: stand_in("builder", OPTIMIZER_BUILDERS=builders)})


def _v1_original(package: str, cls: str) -> Any:
    return getattr(_load_v1_module(package), cls)


V1_CASES = [("mmdet", "LearningRateDecayOptimizerConstructor", "ConvNeXt", "layer_wise"),
            ("mmdet", "LearningRateDecayOptimizerConstructor", "ConvNeXt", "stage_wise"),
            ("mmseg", "LearningRateDecayOptimizerConstructor", "ConvNeXt", "layer_wise"),
            ("mmseg", "LearningRateDecayOptimizerConstructor", "ConvNeXt", "stage_wise"),
            ("mmseg", "LearningRateDecayOptimizerConstructor", "BEiT", "layer_wise"),
            ("mmseg", "LayerDecayOptimizerConstructor", "BEiT", None)]


@pytest.mark.parametrize(("package", "cls", "backbone", "decay_type"), V1_CASES)
@pytest.mark.parametrize("plugin", [False, True])
def test_mmcv_api_matches_mmcv_era_originals(package: str, cls: str, backbone: str, decay_type: str | None,
                                             plugin: bool) -> None:
    """fastopt.build_optimizer (and mmcv's own, through the plug-in) vs MMDetection 2.x /
    MMSegmentation 0.x, parameter by parameter."""
    original = _v1_original(package, cls)
    model = Detector(backbone)
    paramwise: dict[str, Any] = dict(num_layers=6)
    if decay_type is None:
        paramwise["layer_decay_rate"] = 0.9
    else:
        paramwise.update(decay_rate=0.7, decay_type=decay_type)
    optimizer = dict(type="AdamW", lr=1e-3, betas=(0.9, 0.999), weight_decay=0.05)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ref = original(copy.deepcopy(optimizer), copy.deepcopy(paramwise))(model)
        cfg = dict(copy.deepcopy(optimizer), paramwise_cfg=copy.deepcopy(paramwise))
        if plugin:
            importlib.import_module("fastopt.integrations.mmcv")  # registers the Fast* constructors

            fast = mmcv_runner().build_optimizer(model, dict(cfg, constructor=f"Fast{cls}"))
        else:
            fast = fastopt.build_optimizer(model, dict(cfg, constructor=cls))
    assert mismatches(ref, fast, {id(p): n for n, p in model.named_parameters()}) == []
    assert type(fast).__module__ == "fastopt.optim" and len({g["lr"] for g in fast.param_groups}) > 3


def test_resume_from_the_originals_checkpoint() -> None:
    """An optimizer state saved by MMSegmentation's constructor loads into fastopt's, and the
    next steps match the original's."""
    original = _original("mmseg")
    torch.manual_seed(0)
    model = Detector("BEiT")
    twin = copy.deepcopy(model)
    cfg = dict(optimizer=dict(type="AdamW", lr=1e-2, weight_decay=0.05),
               paramwise_cfg=dict(num_layers=4, decay_rate=0.7))
    ref, _ = _build_pair(original, model, cfg, "LearningRateDecayOptimizerConstructor")

    def set_grads(m: nn.Module, seed: int) -> None:
        gen = torch.Generator().manual_seed(seed)
        for p in m.parameters():
            p.grad = torch.randn(p.shape, generator=gen) if p.requires_grad else None

    for seed in range(2):
        set_grads(model, seed)
        ref.step()
    twin.load_state_dict(model.state_dict())
    fast = fastopt.build_optim_wrapper(twin, dict(copy.deepcopy(cfg),
                                                  constructor="LearningRateDecayOptimizerConstructor")).optimizer
    fast.load_state_dict(copy.deepcopy(ref.state_dict()))
    for seed in range(2, 4):
        set_grads(model, seed)
        set_grads(twin, seed)
        ref.step()
        fast.step()
    for (name, a), b in zip(model.named_parameters(), twin.parameters()):
        torch.testing.assert_close(b, a, rtol=1e-6, atol=1e-7, msg=name)


# ----------------------------------------------------------------------- random models
def _param(ndim: int) -> nn.Parameter:
    return nn.Parameter(torch.zeros((2,) * ndim))


@st.composite
def _indexed(draw: st.DrawFn, depth: int) -> nn.Module:
    """Numbered blocks (nested to ``depth``; up to five, one past ConvNeXt's four stages) holding
    1-D / 2-D parameters and norms, now and then with a raw parameter beside the numbers."""
    out = nn.Module()
    for i in range(draw(st.integers(1, 5 if depth > 1 else 4))):
        if depth > 1:
            out.add_module(str(i), draw(_indexed(depth - 1)))
            continue
        block = nn.Module()
        for name in draw(st.lists(st.sampled_from(["weight", "bias", "gamma", "norm", "qkv", "pos_embed"]),
                                  min_size=1, max_size=3, unique=True)):
            if name in ("norm", "qkv"):
                block.add_module(name, nn.LayerNorm(2) if name == "norm" else nn.Linear(2, 2))
            else:
                block.register_parameter(name, _param(draw(st.integers(1, 2))))
        out.add_module(str(i), block)
    if draw(one_in(8)):
        out.register_parameter("scale", _param(1))
    return out


BACKBONES = ("ConvNeXt", "BEiT", "MAE", "ConvNeXtMAE")
# MMDetection's original takes ConvNeXt only; for BEiT / MAE fastopt follows MMSegmentation's
MMDET_BACKBONES = ("ConvNeXt", "ConvNeXtMAE")


@st.composite
def decay_models(draw: st.DrawFn, kinds: tuple[str, ...] = BACKBONES) -> nn.Module:
    """Detectors whose backbone (named ConvNeXt, BEiT, MAE, both, or in one case in six ViT, which
    the recipes reject) has the layouts the depth rules read (downsample_layers, stages, layers,
    blocks, patch_embed, tokens) in random shapes; now and then a frozen parameter."""
    kind = "ViT" if draw(one_in(6)) else draw(st.sampled_from(kinds))
    backbone = type(kind, (nn.Module,), {})()
    parts = ["downsample_layers", "stages", "layers", "blocks", "patch_embed", "cls_token", "pos_embed",
             "mask_token", "norm", "extra"]
    for name in draw(st.lists(st.sampled_from(parts), min_size=1, max_size=5, unique=True)):
        if name in ("cls_token", "pos_embed", "mask_token"):
            backbone.register_parameter(name, _param(draw(st.integers(1, 3))))
        elif name in ("norm", "patch_embed"):
            backbone.add_module(name, nn.Conv2d(2, 2, 1) if name == "patch_embed" else nn.LayerNorm(2))
        else:
            backbone.add_module(name, draw(_indexed(2 if name in ("stages", "downsample_layers") else 1)))
    model = nn.Module()
    model.backbone = backbone
    model.neck = nn.Linear(2, 2)
    if draw(st.booleans()):
        model.register_parameter(draw(st.sampled_from(["pos_embed", "cls_token", "scale"])), _param(1))
    for p in model.parameters():
        if draw(one_in(10)):
            p.requires_grad_(False)
    return model


def _same_outcome(original: Any, constructor: str, model: nn.Module, optimizer: dict,
                  paramwise: dict) -> None:
    """The original and fastopt's constructor give every parameter the same group, or both raise."""
    cfg = dict(optimizer=optimizer, paramwise_cfg=paramwise)
    ref = outcome(lambda: _ref_optimizer(original, model, cfg))
    fast = outcome(lambda: _fast_optimizer(model, cfg, constructor))
    if same_outcome(ref, fast):
        assert mismatches(ref[0], fast[0], {id(p): n for n, p in model.named_parameters()}) == []


RANDOM = settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.too_slow])
#: The same examples drawn the same way every run, for the check that they exercise the rules:
#: the share of a random run's examples that split the parameters varies from run to run (45%
#: seen against mmdet), while a drift of the generator shows on a fixed sample as well.
FIXED = settings(RANDOM, derandomize=True, database=None)
#: Most examples give the parameters different groups; some raise (error parity), not most.
MIN_SPLIT = 0.5


def _learning_rate_decay_example(package: str, data: st.DataObject, num_layers: int, rate: float) -> None:
    model = data.draw(decay_models(BACKBONES if package == "mmseg" else MMDET_BACKBONES))
    # stage-wise decay is ConvNeXt's; on other backbones it is the rare case that must raise
    layer_wise = st.sampled_from(["layer_wise", "layer_wise_vit", ("layer_wise",)])
    convnext = "ConvNeXt" in type(model.backbone).__name__
    decay_type = data.draw(st.just("stage_wise") if data.draw(one_in(2 if convnext else 8)) else layer_wise)
    _same_outcome(_original(package), "LearningRateDecayOptimizerConstructor", model,
                  dict(type="AdamW", lr=1e-3, weight_decay=0.05),
                  dict(num_layers=num_layers, decay_rate=rate, decay_type=decay_type))


_DECAY_DRAWS = dict(data=st.data(), num_layers=st.integers(1, 12), rate=st.sampled_from([0.65, 0.9, 1.0]))
_learning_rate_decay_examples = RANDOM(given(**_DECAY_DRAWS)(_learning_rate_decay_example))
_fixed_learning_rate_decay_examples = FIXED(given(**_DECAY_DRAWS)(_learning_rate_decay_example))


@pytest.mark.parametrize("package", ["mmdet", "mmseg"])
def test_random_models_match_learning_rate_decay(package: str) -> None:
    """LearningRateDecayOptimizerConstructor on random layouts: the originals' groups, or both
    raise the same error. (MMDetection's original takes ConvNeXt only; fastopt also takes
    MMSegmentation's BEiT recipe, compared with MMSegmentation's.)"""
    with tally(f"random layer-decay layouts vs {package}"):
        _learning_rate_decay_examples(package=package)


@pytest.mark.parametrize("package", ["mmdet", "mmseg"])
def test_a_fixed_sample_matches_learning_rate_decay_and_exercises_the_rules(package: str) -> None:
    """The same on a fixed sample of the generator's examples, most of which split the
    parameters (where the rules can go wrong): a drifted generator fails here."""
    with tally(f"fixed sample of layer-decay layouts vs {package}") as t:
        _fixed_learning_rate_decay_examples(package=package)
    t.require(MIN_SPLIT)


@RANDOM
@given(model=decay_models(), num_layers=st.integers(1, 12), rate=st.sampled_from([0.7, 0.9]))
def _vitdet_examples(model: nn.Module, num_layers: int, rate: float) -> None:
    _same_outcome(_vitdet_original(), "LayerDecayOptimizerConstructor", model,
                  dict(type="AdamW", lr=1e-4, weight_decay=0.1), dict(num_layers=num_layers, decay_rate=rate))


def test_random_models_match_vitdet() -> None:
    """ViTDet's constructor on random layouts (needs FASTOPT_MMDET_SOURCE, see above)."""
    _vitdet_original()
    with tally("random layer-decay layouts vs ViTDet") as t:
        _vitdet_examples()
    t.require(MIN_SPLIT)
