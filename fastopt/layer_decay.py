"""Layer-wise learning-rate decay constructors (the ConvNeXt / BEiT / MAE recipe of
MMDetection 2.x/3.x and MMSegmentation 0.x/1.x, and the ViT recipe of MMDetection's ViTDet
project), for both APIs: the classes below are registered in ``OPTIM_WRAPPER_CONSTRUCTORS``
(mmengine style) and ``Mmcv*`` twins under the same names in ``OPTIMIZER_BUILDERS`` (mmcv 1.x
style, returning the optimizer).

``LearningRateDecayOptimizerConstructor`` reads ``paramwise_cfg=dict(num_layers=N,
decay_rate=r, decay_type='layer_wise' | 'stage_wise')``. Every trainable parameter gets a
depth ``d`` from its name (the stem and position embeddings are shallowest, the head is
deepest), its group's ``lr = base_lr * r ** (N + 1 - d)`` (also kept as ``lr_scale``), and
weight decay 0 for 1-D tensors, biases and ``pos_embed`` / ``cls_token``. The groups carry
``group_name`` (``layer_{d}_decay`` / ``layer_{d}_no_decay``) and ``param_names`` like the
original, and come out in order of first appearance.

``LayerDecayOptimizerConstructor`` is the name two OpenMMLab configs use for different
recipes; the paramwise_cfg tells them apart (each original rejects the other's config):

- ``layer_decay_rate=r`` (MMSegmentation's BEiT configs): the layer-wise recipe above, with
  ``decay_rate=r``.
- ``decay_rate=r`` (MMDetection's ViTDet configs): ViTDet's own rules. Depth 0 for
  backbone parameters whose name contains ``patch_embed`` or ``pos_embed``, ``i + 1`` for
  ``backbone.blocks.i``, ``N + 1`` for everything else (necks and heads keep ``base_lr``);
  weight decay 0 only for ``norm`` parameters under ``backbone.blocks`` (group
  ``layer_{d}_no_decay``) and parameters named ``*pos_embed*`` (``layer_{d}_no_decay_pos_embed``,
  an ``int`` 0 as in the original); biases keep weight decay.
"""

from __future__ import annotations

from typing import Any

from torch import nn

from .constructor import DefaultOptimizerConstructor, DefaultOptimWrapperConstructor, RecipeConstructor
from .registry import OPTIM_WRAPPER_CONSTRUCTORS, OPTIMIZER_BUILDERS

__all__ = ["LayerDecayOptimizerConstructor", "LearningRateDecayOptimizerConstructor",
           "MmcvLayerDecayOptimizerConstructor", "MmcvLearningRateDecayOptimizerConstructor",
           "convnext_depth", "layer_decay_groups", "lr_decay_groups", "vit_depth", "vitdet_depth"]

_EMBEDDINGS = ("backbone.cls_token", "backbone.mask_token", "backbone.pos_embed")
# depth of each ConvNeXt downsampling layer, by stage (the last stage takes num_layers)
_DOWNSAMPLE_DEPTH = {0: 0, 1: 2, 2: 3}


def convnext_depth(name: str, num_layers: int, stage_wise: bool) -> int:
    """Depth of a ConvNeXt parameter for layer-wise (12 x 3-block steps in stage 2) or
    stage-wise decay; ``num_layers`` is the config's value (stage-wise passes it + 2).
    Names the original cannot place (a stage or downsampling layer past 3, a block index
    that is not a number) raise, as they do there."""
    parts = name.split(".")
    if name in _EMBEDDINGS:
        return 0
    if name.startswith("backbone.downsample_layers"):
        if stage_wise:
            return 0
        stage = int(parts[2])
        if stage == 3:
            return num_layers
        if stage not in _DOWNSAMPLE_DEPTH:
            raise ValueError(f"ConvNeXt layer-wise lr decay knows downsample_layers 0-3, got {name!r}")
        return _DOWNSAMPLE_DEPTH[stage]
    if name.startswith("backbone.stages"):
        stage = int(parts[2])
        if stage_wise:
            return stage + 1
        block = int(parts[3])  # read for every stage, as the original does
        if stage == 0:
            return 1
        if stage == 1:
            return 2
        if stage == 2:
            return 3 + block // 3
        if stage == 3:
            return num_layers
        raise ValueError(f"ConvNeXt layer-wise lr decay knows stages 0-3, got {name!r}")
    return num_layers - 1 if stage_wise else num_layers + 1  # necks and heads: deepest


def vit_depth(name: str, depth_count: int) -> int:
    """Depth of a BEiT / MAE parameter: embeddings 0, ``backbone.layers.i`` i + 1, the rest
    (final norms, neck, head) ``depth_count - 1``."""
    if name in _EMBEDDINGS or name.startswith("backbone.patch_embed"):
        return 0
    if name.startswith("backbone.layers"):
        return int(name.split(".")[2]) + 1
    return depth_count - 1


def vitdet_depth(name: str, num_layers: int) -> int:
    """Depth of a parameter for MMDetection's ViTDet recipe: backbone ``patch_embed`` /
    ``pos_embed`` 0, ``backbone.blocks.i`` i + 1, anything else ``num_layers + 1``."""
    if not name.startswith("backbone"):
        return num_layers + 1
    if "patch_embed" in name or "pos_embed" in name:
        return 0
    if ".blocks." in name:
        try:
            return int(name.split(".")[2]) + 1
        except ValueError:
            raise ValueError(f"ViTDet layer decay reads the block index of {name!r} from its third "
                             "name component, which is not a number (blocks must be backbone.blocks.i)"
                             ) from None
    return num_layers + 1


def _add(groups: dict[str, dict[str, Any]], key: str, scale: Any, lr: Any, weight_decay: Any,
         name: str, param: nn.Parameter) -> None:
    """Put ``param`` into the group named ``key``, created with the originals' keys on first use."""
    group = groups.get(key)
    if group is None:
        group = groups[key] = {"weight_decay": weight_decay, "params": [], "param_names": [],
                               "lr_scale": scale, "group_name": key, "lr": lr}
    group["params"].append(param)
    group["param_names"].append(name)


def _need(cfg: dict, *keys: str) -> None:
    missing = [k for k in keys if cfg.get(k) is None]
    if missing:
        raise KeyError(f"paramwise_cfg needs {' and '.join(keys)} for layer-wise lr decay "
                       f"(missing: {', '.join(missing)})")



def lr_decay_groups(module: nn.Module, cfg: dict, base_lr: Any, base_wd: Any) -> list[dict]:
    """The ``LearningRateDecayOptimizerConstructor`` groups (ConvNeXt, BEiT, MAE) of ``module``."""
    _need(cfg, "num_layers", "decay_rate")
    decay_type = cfg.get("decay_type", "layer_wise")
    try:
        layer_wise = "layer_wise" in decay_type  # the originals' test (any container works)
    except TypeError:
        raise TypeError(f"decay_type must be 'layer_wise' or 'stage_wise', got {decay_type!r}") from None
    if not layer_wise and decay_type != "stage_wise":
        raise ValueError(f"decay_type must be 'layer_wise' or 'stage_wise', got {decay_type!r}")
    kind = type(getattr(module, "backbone", None)).__name__
    # the originals test ConvNeXt first; MMDetection's take ConvNeXt only, MMSegmentation's
    # (followed here) also BEiT / MAE for layer-wise decay
    vit = "ConvNeXt" not in kind and ("BEiT" in kind or "MAE" in kind)
    if "ConvNeXt" not in kind and not (vit and layer_wise):
        raise NotImplementedError(f"{decay_type} lr decay is defined for ConvNeXt backbones "
                                  f"(and layer_wise for BEiT / MAE), got {kind}")
    depth_count = cfg["num_layers"] + 2
    groups: dict[str, dict[str, Any]] = {}
    for name, p in module.named_parameters():
        if not p.requires_grad:
            continue
        no_decay = p.ndim == 1 or name.endswith(".bias") or name in ("pos_embed", "cls_token")
        if vit:
            depth = vit_depth(name, depth_count)
        else:
            depth = convnext_depth(name, cfg["num_layers"] if layer_wise else depth_count, not layer_wise)
        scale = cfg["decay_rate"] ** (depth_count - depth - 1)
        key = f"layer_{depth}_{'no_decay' if no_decay else 'decay'}"
        _add(groups, key, scale, scale * base_lr, 0.0 if no_decay else base_wd, name, p)
    return list(groups.values())


def layer_decay_groups(module: nn.Module, cfg: dict, base_lr: Any, base_wd: Any) -> list[dict]:
    """The ``LayerDecayOptimizerConstructor`` groups of ``module``: MMSegmentation's BEiT
    recipe when ``cfg`` has ``layer_decay_rate``, else MMDetection's ViTDet recipe."""
    if "layer_decay_rate" in cfg:  # MMSegmentation's BEiT recipe, under its old key
        renamed = {k: v for k, v in cfg.items() if k != "layer_decay_rate"}
        renamed.update(decay_rate=cfg["layer_decay_rate"], decay_type="layer_wise_vit")
        return lr_decay_groups(module, renamed, base_lr, base_wd)
    _need(cfg, "num_layers", "decay_rate")
    depth_count = cfg["num_layers"] + 2
    groups: dict[str, dict[str, Any]] = {}
    for name, p in module.named_parameters():
        if not p.requires_grad:
            continue
        wd: Any = base_wd
        if name.startswith("backbone.blocks") and "norm" in name:
            kind, wd = "no_decay", 0.0
        elif "pos_embed" in name:
            kind, wd = "no_decay_pos_embed", 0
        else:
            kind = "decay"
        depth = vitdet_depth(name, cfg["num_layers"])
        scale = cfg["decay_rate"] ** (depth_count - 1 - depth)
        _add(groups, f"layer_{depth}_{kind}", scale, scale * base_lr * 1.0, wd, name, p)
    return list(groups.values())


@OPTIM_WRAPPER_CONSTRUCTORS.register_module()
class LearningRateDecayOptimizerConstructor(RecipeConstructor, DefaultOptimWrapperConstructor):
    """Layer-wise (or stage-wise) lr decay for ConvNeXt (and layer-wise for BEiT / MAE)
    backbones, one group per depth and decay kind; returns an optim wrapper."""

    recipe = staticmethod(lr_decay_groups)


@OPTIM_WRAPPER_CONSTRUCTORS.register_module()
class LayerDecayOptimizerConstructor(RecipeConstructor, DefaultOptimWrapperConstructor):
    """``LayerDecayOptimizerConstructor`` of MMDetection's ViTDet project (``decay_rate``), or
    MMSegmentation's deprecated BEiT one (``layer_decay_rate``), told apart by the config."""

    recipe = staticmethod(layer_decay_groups)


@OPTIMIZER_BUILDERS.register_module(name="LearningRateDecayOptimizerConstructor")
class MmcvLearningRateDecayOptimizerConstructor(RecipeConstructor, DefaultOptimizerConstructor):
    """mmcv 1.x-style ``LearningRateDecayOptimizerConstructor`` (MMDetection 2.x,
    MMSegmentation 0.x): same groups, returns the optimizer."""

    recipe = staticmethod(lr_decay_groups)


@OPTIMIZER_BUILDERS.register_module(name="LayerDecayOptimizerConstructor")
class MmcvLayerDecayOptimizerConstructor(RecipeConstructor, DefaultOptimizerConstructor):
    """mmcv 1.x-style ``LayerDecayOptimizerConstructor`` (MMSegmentation 0.x's BEiT recipe with
    ``layer_decay_rate``; ViTDet's with ``decay_rate``): returns the optimizer."""

    recipe = staticmethod(layer_decay_groups)
