"""fastopt's ``LearningRateDecayOptimWrapperConstructor`` against MMPretrain 1.2.0's own, on the
configs MMPretrain ships with it and on its backbones' ``get_layer_depth`` rules.

The reference is mmengine's ``build_optim_wrapper`` under the ``mmpretrain`` scope (which
resolves MMPretrain's constructor); fastopt's ``build_optim_wrapper`` resolves its own. The
original gives every parameter a group of its own named by ``param_name``; fastopt merges
parameters whose other keys are equal and names them in ``param_names``. Every other key of
every parameter's group is compared, value and type, and the name.
"""

from __future__ import annotations

import copy
import time
from typing import Any

import pytest
import torch
from torch import nn

import fastopt
from fastopt.tools import sources

from .conftest import shipped

NAME = "LearningRateDecayOptimWrapperConstructor"

#: Every config MMPretrain 1.2.0 ships with this constructor (the fine-tuning benchmarks of its
#: self-supervised methods), by the backbone whose depth rule it exercises.
CONFIGS = [
    "beit/benchmarks/beit-base-p16_8xb128-coslr-100e_in1k.py",  # BEiTViT
    "beitv2/benchmarks/beit-base-p16_8xb128-coslr-100e_in1k.py",
    "cae/benchmarks/beit-base-p16_8xb128-coslr-100e_in1k.py",
    "eva/benchmarks/vit-base-p16_8xb128-coslr-100e_in1k.py",  # VisionTransformer
    "mae/benchmarks/vit-base-p16_8xb128-coslr-100e_in1k.py",
    "mae/benchmarks/vit-large-p16_8xb128-coslr-50e_in1k.py",
    "mae/benchmarks/vit-huge-p14_8xb128-coslr-50e_in1k.py",
    "mae/benchmarks/vit-huge-p14_32xb8-coslr-50e_in1k-448px.py",
    "maskfeat/benchmarks/vit-base-p16_8xb256-coslr-100e_in1k.py",
    "mff/benchmarks/vit-base-p16_8xb128-coslr-100e_in1k.py",
    "milan/benchmarks/vit-base-p16_8xb128-coslr-100e_in1k.py",
    "mixmim/benchmarks/mixmim-base_8xb128-coslr-100e_in1k.py",  # MixMIM (neck rule)
    "simmim/benchmarks/swin-base-w6_8xb256-coslr-100e_in1k-192px.py",  # SwinTransformer
    "simmim/benchmarks/swin-base-w7_8xb256-coslr-100e_in1k.py",
    "simmim/benchmarks/swin-large-w14_8xb256-coslr-100e_in1k.py",
    "spark/benchmarks/convnextv2-tiny_8xb256-coslr-300e_in1k.py",  # ConvNeXt (6 steps)
    "spark/benchmarks/resnet50_8xb256-coslr-300e_in1k.py",  # ResNet
]

#: Backbones with a ``get_layer_depth`` that no shipped config pairs with this constructor,
#: built into an ImageClassifier (a self-supervised MAE for the algorithms' own rule).
PAIRS = {
    "hivit": dict(type="ImageClassifier", backbone=dict(type="HiViT", arch="tiny", img_size=224),
                  neck=dict(type="GlobalAveragePooling"),
                  head=dict(type="LinearClsHead", num_classes=10, in_channels=384)),
    "vit_sam": dict(type="ImageClassifier", backbone=dict(type="ViTSAM", arch="base", img_size=256),
                    head=dict(type="LinearClsHead", num_classes=10, in_channels=256)),
    "convnext_base": dict(type="ImageClassifier", backbone=dict(type="ConvNeXt", arch="base"),
                          neck=dict(type="GlobalAveragePooling"),
                          head=dict(type="LinearClsHead", num_classes=10, in_channels=1024)),
    "beit_frozen_stages": dict(type="ImageClassifier",
                               backbone=dict(type="BEiTViT", arch="base", frozen_stages=3,
                                             use_abs_pos_emb=True),
                               neck=None, head=dict(type="LinearClsHead", num_classes=10, in_channels=768)),
    "swin_frozen_stages": dict(type="ImageClassifier", backbone=dict(type="SwinTransformer", arch="tiny",
                                                                     frozen_stages=1, use_abs_pos_embed=True),
                               neck=dict(type="GlobalAveragePooling"),
                               head=dict(type="LinearClsHead", num_classes=10, in_channels=768)),
    "mae_selfsup": dict(type="MAE", backbone=dict(type="MAEViT", arch="b", patch_size=16, mask_ratio=0.75),
                        neck=dict(type="MAEPretrainDecoder", patch_size=16, in_chans=3, embed_dim=768,
                                  decoder_embed_dim=512, decoder_depth=2, decoder_num_heads=16),
                        head=dict(type="MAEPretrainHead", norm_pix=True, patch_size=16,
                                  loss=dict(type="PixelReconstructionLoss", criterion="L2"))),
}

#: The paramwise_cfg the pairs get: MMPretrain's BEiT fine-tuning recipe, with custom keys.
PAIR_OPTIM = dict(optimizer=dict(type="AdamW", lr=4e-3, weight_decay=0.05, betas=(0.9, 0.999)),
                  constructor=NAME,
                  paramwise_cfg=dict(layer_decay_rate=0.65, bias_decay_mult=0.0, norm_decay_mult=0.0,
                                     flat_decay_mult=0.0,
                                     custom_keys={".cls_token": dict(decay_mult=0.0),
                                                  ".pos_embed": dict(decay_mult=0.0),
                                                  "relative_position_bias_table": dict(decay_mult=0.0)}))


@pytest.fixture(autouse=True)
def _mmpretrain_scope() -> None:
    """mmengine resolves the constructor and models under the ``mmpretrain`` scope."""
    pytest.importorskip("mmpretrain")
    from mmengine.registry import init_default_scope

    init_default_scope("mmpretrain")


def _build(cfg: dict) -> nn.Module:
    """The model of ``cfg`` from MMPretrain's registry: on the meta device where its constructor
    allows, else on the CPU."""
    from mmpretrain.registry import MODELS

    try:
        with torch.device("meta"):
            return MODELS.build(copy.deepcopy(cfg))
    except (RuntimeError, NotImplementedError):
        return MODELS.build(copy.deepcopy(cfg))


def _cpu_wrapper(cfg: dict) -> dict:
    """``cfg`` with ``AmpOptimWrapper`` built as ``OptimWrapper`` where there is no CUDA device
    (mmengine's needs one; the groups do not depend on the wrapper)."""
    cfg = copy.deepcopy(cfg)
    if cfg.get("type") == "AmpOptimWrapper" and not torch.cuda.is_available():
        cfg = {k: v for k, v in cfg.items() if k not in ("loss_scale", "dtype", "use_fsdp")}
        cfg["type"] = "OptimWrapper"
    return cfg


def differences(ref: torch.optim.Optimizer, fast: torch.optim.Optimizer, model: nn.Module) -> list[str]:
    """Per parameter: every key of the original's group but ``param_name`` against fastopt's
    (value and type, ``fastopt.tools.check.same_value``), the name against the parameter's entry in
    ``param_names``; parameters on one side only."""
    from fastopt.tools.check import same_value

    names = {id(p): n for n, p in model.named_parameters()}
    expected = {id(p): g for g in ref.param_groups for p in g["params"]}
    got: dict[int, dict] = {}
    for group in fast.param_groups:
        hyper = {k: v for k, v in group.items() if k not in ("params", "param_names")}
        for p, name in zip(group["params"], group["param_names"], strict=True):
            got[id(p)] = dict(hyper, param_name=name)
    out = [f"{names.get(pid, '?')}: only in {'the reference' if pid in expected else 'fastopt'}"
           for pid in expected.keys() ^ got.keys()]
    for pid in expected.keys() & got.keys():
        a = {k: v for k, v in expected[pid].items() if k != "params"}
        b = got[pid]
        bad = [k for k in a.keys() | b.keys() if k not in a or k not in b or not same_value(a[k], b[k])]
        out.extend(f"{names.get(pid, '?')}: {k}: {a.get(k, '<absent>')!r} != {b.get(k, '<absent>')!r}"
                   for k in sorted(bad))
    return sorted(out)


def _compare(model: nn.Module, cfg: dict, min_lrs: int = 4) -> tuple[Any, Any]:
    """mmengine's and fastopt's optimizers for ``cfg``; asserts parity, a merge and at least
    ``min_lrs`` distinct lrs."""
    from mmengine.optim import build_optim_wrapper
    from mmengine.registry import OPTIM_WRAPPER_CONSTRUCTORS

    with OPTIM_WRAPPER_CONSTRUCTORS.switch_scope_and_registry(None) as scoped:
        host_cls = scoped.get(cfg["constructor"])
    assert host_cls.__module__.startswith("mmpretrain."), host_cls  # the reference is MMPretrain's own
    assert fastopt.registry.OPTIM_WRAPPER_CONSTRUCTORS.lookup(cfg["constructor"]) \
        is fastopt.layer_decay.LearningRateDecayOptimWrapperConstructor
    start = time.perf_counter()
    ref = build_optim_wrapper(model, _cpu_wrapper(cfg)).optimizer
    middle = time.perf_counter()
    fast = fastopt.build_optim_wrapper(model, _cpu_wrapper(cfg)).optimizer
    end = time.perf_counter()
    print(f"{len(ref.param_groups)} -> {len(fast.param_groups)} groups, "
          f"mmengine {middle - start:.3f}s, fastopt {end - middle:.3f}s")
    assert differences(ref, fast, model) == []
    if cfg["optimizer"]["type"] in ("SGD", "Adam", "AdamW"):  # others (Lamb) are MMPretrain's own
        assert type(fast).__module__ == "fastopt.optim"
    assert len(fast.param_groups) < len(ref.param_groups) / 2
    assert len({g["lr"] for g in fast.param_groups}) >= min_lrs
    return ref, fast


@pytest.mark.parametrize("relative", CONFIGS, ids=[c.split("/")[0] + ":" + c.split("/")[-1] for c in CONFIGS])
def test_shipped_config_matches_mmpretrain(relative: str) -> None:
    """The config's own model and optim_wrapper: every parameter's group equals MMPretrain's."""
    source = sources.resolve(shipped("mmpretrain", relative))
    model = source.build()
    api, cfg, _ = source.optim
    assert api == "mmengine" and cfg["constructor"] == NAME and "layer_decay_rate" in cfg["paramwise_cfg"]
    _compare(model, cfg)


@pytest.mark.parametrize("name", list(PAIRS))
def test_backbone_depth_rules_match_mmpretrain(name: str) -> None:
    """HiViT, ViTSAM, a 12-step ConvNeXt, BEiT and Swin with frozen stages (left out of the
    groups) and a self-supervised MAE (the algorithm's own rule), with the BEiT recipe."""
    model = _build(PAIRS[name]).train()  # Swin freezes its stages in train()
    # HiViT's rule reads 'layers.i' but its blocks are 'blocks.i': two depths, as in MMPretrain
    ref, _ = _compare(model, copy.deepcopy(PAIR_OPTIM), min_lrs=2 if name == "hivit" else 4)
    trainable = sum(p.requires_grad for p in model.parameters())
    assert sum(len(g["params"]) for g in ref.param_groups) == trainable
    if "frozen" in name:
        assert trainable < len(list(model.parameters()))


def test_unsupported_backbone_raises_like_mmpretrain() -> None:
    """A classifier whose backbone has no depth rule (MobileNetV2): the same NotImplementedError."""
    from mmengine.optim import build_optim_wrapper

    model = _build(dict(type="ImageClassifier", backbone=dict(type="MobileNetV2"),
                        head=dict(type="LinearClsHead", num_classes=10, in_channels=1280)))
    with pytest.raises(NotImplementedError) as ref_exc:
        build_optim_wrapper(model, copy.deepcopy(PAIR_OPTIM))
    with pytest.raises(NotImplementedError) as fast_exc:
        fastopt.build_optim_wrapper(model, copy.deepcopy(PAIR_OPTIM))
    assert str(ref_exc.value) == str(fast_exc.value)


def test_merged_groups_step_like_mmpretrain() -> None:
    """Two AdamW steps on a small BEiT over the original's per-parameter groups and over
    fastopt's merged ones give the same weights."""
    from mmengine.optim import build_optim_wrapper
    from mmpretrain.registry import MODELS

    torch.manual_seed(0)
    cfg = dict(type="ImageClassifier", backbone=dict(type="BEiTViT", arch="deit-tiny", img_size=32,
                                                     patch_size=8),
               neck=None, head=dict(type="LinearClsHead", num_classes=4, in_channels=192))
    model = MODELS.build(cfg)
    twin = copy.deepcopy(model)
    ref = build_optim_wrapper(model, copy.deepcopy(PAIR_OPTIM)).optimizer
    fast = fastopt.build_optim_wrapper(twin, copy.deepcopy(PAIR_OPTIM)).optimizer
    for seed in range(2):
        for m, opt in ((model, ref), (twin, fast)):
            gen = torch.Generator().manual_seed(seed)
            for p in m.parameters():
                p.grad = torch.randn(p.shape, generator=gen)
            opt.step()
    for (name, a), b in zip(model.named_parameters(), twin.parameters()):
        torch.testing.assert_close(b, a, rtol=1e-6, atol=1e-7, msg=name)


def test_names_cover_every_parameter() -> Any:
    """Each merged group's ``param_names`` names its ``params`` in order (torch's own key)."""
    model = _build(PAIRS["swin_frozen_stages"]).train()
    fast = fastopt.build_optim_wrapper(model, copy.deepcopy(PAIR_OPTIM)).optimizer
    by_id = {id(p): n for n, p in model.named_parameters()}
    for group in fast.param_groups:
        assert group["param_names"] == [by_id[id(p)] for p in group["params"]]
