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

``LearningRateDecayOptimWrapperConstructor`` (MMPretrain 1.x, mmengine style only) leaves the
depths to the model: its ``get_layer_depth(param_name)`` returns ``(layer_id, max_id)`` (the
classifiers and self-supervised algorithms ask their backbone, with the ``'backbone.'``
prefix), and a model without that method is rejected. ``paramwise_cfg`` reads
``layer_decay_rate`` (default 1.0), ``custom_keys``, ``norm_decay_mult``, ``bias_decay_mult`` and
``flat_decay_mult``. Modules are visited depth first, each module's own parameters before its
children's; frozen parameters are left out. A trainable parameter gets

- ``weight_decay`` (only when the optimizer config has one) from the first rule that applies:
  the longest matching custom key (then alphabetical; a substring of the dotted name, no
  leading dot) sets ``base_wd * decay_mult`` and copies the key's other entries into the group
  (its ``lr_mult`` has no effect on lr, its ``lr`` is overwritten, its ``weight_decay`` wins);
  then the norm rule (BatchNorm, InstanceNorm, GroupNorm, LayerNorm layers), the bias rule (a
  parameter named ``bias``), the flat rule (1-D tensors), each when its multiplier is not None;
  else ``base_wd``;
- ``lr_scale = layer_decay_rate ** (max_id - layer_id - 1)``, ``lr = base_lr * lr_scale`` and
  ``layer_id``.

The original makes one group per parameter and names it in ``param_name``; fastopt merges
parameters whose other keys are equal and lists the names of each group's parameters, in
order, in ``param_names`` (torch's own key for them). Without ``weight_decay`` in the optimizer
config the original cannot build the optimizer (``KeyError: 'weight_decay'``), and neither
does fastopt.
"""

from __future__ import annotations

import dataclasses
from typing import Any

from torch import nn

from ._rules import key_priority
from ._walk import NORM_TYPES
from .checkpoint import ReferenceLayout
from .constructor import (
    Construction,
    DefaultOptimizerConstructor,
    DefaultOptimWrapperConstructor,
    RecipeConstructor,
)
from .grouping import group_params, merge_param_groups_indexed
from .registry import OPTIM_WRAPPER_CONSTRUCTORS, OPTIMIZER_BUILDERS

__all__ = ["LayerDecayOptimizerConstructor", "LearningRateDecayOptimWrapperConstructor",
           "LearningRateDecayOptimizerConstructor", "MmcvLayerDecayOptimizerConstructor",
           "MmcvLearningRateDecayOptimizerConstructor", "convnext_depth", "layer_decay_groups",
           "lr_decay_groups", "pretrain_decay_groups", "vit_depth", "vitdet_depth"]

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


# ------------------------------------------------------------------------------ MMPretrain
def _modules_depth_first(model: nn.Module) -> list[tuple[str, nn.Module]]:
    """``(prefix, module)`` in MMPretrain's visiting order: a module, then each child's subtree
    (``named_children`` order); the prefix ends with a dot. A module reached through two parents
    is visited twice, as there."""
    out: list[tuple[str, nn.Module]] = []
    stack = [("", model)]
    while stack:
        prefix, module = stack.pop()
        out.append((prefix, module))
        stack.extend((f"{prefix}{name}.", child) for name, child in reversed(list(module.named_children())))
    return out


def _pretrain_weight_decay(group: dict[str, Any], cfg: dict, keys: list[str], base_wd: Any, name: str,
                           local: str, param: nn.Parameter, in_norm: bool) -> None:
    """Set the weight decay of ``group`` (the parameter ``name``, ``local`` in its module) by
    MMPretrain's rule order: custom key, norm, bias, flat, else ``base_wd``."""
    key = next((k for k in keys if k in name), None)
    if key is not None:
        extra = dict(cfg["custom_keys"][key])
        group["weight_decay"] = base_wd * extra.pop("decay_mult", 1.0)
        group.update(extra)
        return
    for applies, mult_key in ((in_norm, "norm_decay_mult"), (local == "bias", "bias_decay_mult"),
                              (param.ndim == 1, "flat_decay_mult")):
        mult = cfg.get(mult_key)
        if applies and mult is not None:
            group["weight_decay"] = base_wd * mult
            return
    group["weight_decay"] = base_wd


def pretrain_decay_groups(model: nn.Module, cfg: dict, base_lr: Any, base_wd: Any) -> list[dict]:
    """MMPretrain's ``LearningRateDecayOptimWrapperConstructor`` groups of ``model``: one per
    trainable parameter in visiting order, with ``weight_decay`` (when ``base_wd`` is set),
    ``lr``, ``lr_scale``, ``layer_id`` and ``param_name``, as the original makes them."""
    depth_of = getattr(model, "get_layer_depth", None)
    if depth_of is None:
        raise NotImplementedError(f"layer-wise lr decay (LearningRateDecayOptimWrapperConstructor) needs "
                                  f"a model with a get_layer_depth method; {type(model).__name__} has none")
    keys = key_priority(list(cfg.get("custom_keys", {})))
    rate = cfg.get("layer_decay_rate", 1.0)
    groups: list[dict] = []
    for prefix, module in _modules_depth_first(model):
        in_norm = isinstance(module, NORM_TYPES)  # (MMPretrain's norm classes are the same)
        for local, param in module.named_parameters(recurse=False):
            if not param.requires_grad:
                continue
            name = prefix + local
            group: dict[str, Any] = {"params": [param]}
            if base_wd is not None:
                _pretrain_weight_decay(group, cfg, keys, base_wd, name, local, param, in_norm)
            layer_id, max_id = depth_of(name)
            scale = rate ** (max_id - layer_id - 1)
            if base_lr is None:
                raise TypeError(f"layer-wise lr decay sets the lr of {name!r} as a multiple of the "
                                "optimizer's lr, but the optimizer config has no 'lr'")
            group.update(lr=base_lr * scale, lr_scale=scale, layer_id=layer_id, param_name=name)
            groups.append(group)
    if base_wd is None and groups:
        raise KeyError("weight_decay: LearningRateDecayOptimWrapperConstructor needs the optimizer's "
                       "weight_decay (MMPretrain's original fails without it too)")
    return groups


def _remap(layout: ReferenceLayout, into: list[int]) -> ReferenceLayout:
    """``layout`` with each group's merged index sent through ``into`` (-1 stays -1)."""
    other = getattr(layout, "other", None)
    changes: dict[str, Any] = {"groups": [(size, into[g] if g >= 0 else g) for size, g in layout.groups]}
    if other is not None:
        changes["other"] = _remap(other, into)
    return dataclasses.replace(layout, **changes)


def _merge_named(built: Construction) -> Construction:
    """Merge groups that differ only in ``param_name``; each merged group lists its parameters'
    names in ``param_names``, in the order of its ``params``."""
    if not built.groups or not isinstance(built.groups[0], dict):
        return built  # no paramwise_cfg: the bare parameters
    stripped = [{k: v for k, v in g.items() if k != "param_name"} for g in built.groups]
    merged, into = merge_param_groups_indexed(stripped, built.defaults)
    for group, g, source in zip(stripped, into, built.groups):
        names = merged[g].setdefault("param_names", [])
        names.extend([source["param_name"]] * len(group_params(group)))
    return dataclasses.replace(built, groups=merged, layout=_remap(built.layout, into))


@OPTIM_WRAPPER_CONSTRUCTORS.register_module()
class LearningRateDecayOptimWrapperConstructor(RecipeConstructor, DefaultOptimWrapperConstructor):
    """MMPretrain's layer-wise lr decay (depths from the model's ``get_layer_depth``); returns an
    optim wrapper whose groups merge parameters of equal settings."""

    recipe = staticmethod(pretrain_decay_groups)

    def construct(self, model: nn.Module, optimizer_cls: Any) -> Construction:
        """The recipe's per-parameter groups, merged, with ``param_names`` for ``param_name``."""
        return _merge_named(super().construct(model, optimizer_cls))
