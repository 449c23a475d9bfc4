"""Layer-wise learning-rate decay constructors (the ConvNeXt / BEiT / MAE recipe of
MMDetection 3.x and MMSegmentation 1.x).

``LearningRateDecayOptimizerConstructor`` reads ``paramwise_cfg=dict(num_layers=N,
decay_rate=r, decay_type='layer_wise' | 'stage_wise')``. Every trainable parameter gets a
depth ``d`` from its name (the stem and position embeddings are shallowest, the head is
deepest), its group's ``lr = base_lr * r ** (N + 1 - d)`` (also kept as ``lr_scale``), and
weight decay 0 for 1-D tensors, biases and ``pos_embed`` / ``cls_token``. The groups carry
``group_name`` (``layer_{d}_decay`` / ``layer_{d}_no_decay``) and ``param_names`` like the
original, and come out in order of first appearance.
"""

from __future__ import annotations

from typing import Any

from torch import nn

from .builder import OPTIM_WRAPPER_CONSTRUCTORS
from .constructor import DefaultOptimWrapperConstructor

__all__ = ["LearningRateDecayOptimizerConstructor", "convnext_depth", "vit_depth"]

_EMBEDDINGS = ("backbone.cls_token", "backbone.mask_token", "backbone.pos_embed")
# depth of each ConvNeXt downsampling layer, by stage (the last stage takes num_layers)
_DOWNSAMPLE_DEPTH = {0: 0, 1: 2, 2: 3}


def convnext_depth(name: str, num_layers: int, stage_wise: bool) -> int:
    """Depth of a ConvNeXt parameter for layer-wise (12 x 3-block steps in stage 2) or
    stage-wise decay; ``num_layers`` is the config's value (stage-wise passes it + 2)."""
    parts = name.split(".")
    if name in _EMBEDDINGS:
        return 0
    if name.startswith("backbone.downsample_layers"):
        if stage_wise:
            return 0
        stage = int(parts[2])
        return _DOWNSAMPLE_DEPTH.get(stage, num_layers) if stage < 4 else num_layers
    if name.startswith("backbone.stages"):
        stage = int(parts[2])
        if stage_wise:
            return stage + 1
        if stage == 0:
            return 1
        if stage == 1:
            return 2
        if stage == 2:
            return 3 + int(parts[3]) // 3
        return num_layers
    return num_layers - 1 if stage_wise else num_layers + 1  # necks and heads: deepest


def vit_depth(name: str, depth_count: int) -> int:
    """Depth of a BEiT / MAE parameter: embeddings 0, ``backbone.layers.i`` i + 1, the rest
    (final norms, neck, head) ``depth_count - 1``."""
    if name in _EMBEDDINGS or name.startswith("backbone.patch_embed"):
        return 0
    if name.startswith("backbone.layers"):
        return int(name.split(".")[2]) + 1
    return depth_count - 1


@OPTIM_WRAPPER_CONSTRUCTORS.register_module()
class LearningRateDecayOptimizerConstructor(DefaultOptimWrapperConstructor):
    """Layer-wise (or stage-wise) lr decay for ConvNeXt (and layer-wise for BEiT / MAE)
    backbones, one group per depth and decay kind."""

    def add_params(self, params: list[dict], module: nn.Module, prefix: str = "",
                   is_dcn_module: Any = None) -> None:
        """One group per (depth, decay/no-decay), as the MMDetection constructor builds them."""
        cfg = self.paramwise_cfg
        if "num_layers" not in cfg or "decay_rate" not in cfg:
            raise KeyError("paramwise_cfg needs num_layers and decay_rate for layer-wise lr decay")
        decay_type = cfg.get("decay_type", "layer_wise")
        if decay_type not in ("layer_wise", "stage_wise"):
            raise ValueError(f"decay_type must be 'layer_wise' or 'stage_wise', got {decay_type!r}")
        kind = type(getattr(module, "backbone", None)).__name__
        vit = "BEiT" in kind or "MAE" in kind
        if "ConvNeXt" not in kind and not (vit and decay_type == "layer_wise"):
            raise NotImplementedError(f"{decay_type} lr decay is defined for ConvNeXt backbones "
                                      f"(and layer_wise for BEiT / MAE), got {kind}")
        depth_count = cfg["num_layers"] + 2
        stage_wise = decay_type == "stage_wise"
        groups: dict[str, dict[str, Any]] = {}
        for name, p in module.named_parameters():
            if not p.requires_grad:
                continue
            no_decay = p.ndim == 1 or name.endswith(".bias") or name in ("pos_embed", "cls_token")
            if vit:
                depth = vit_depth(name, depth_count)
            else:
                depth = convnext_depth(name, depth_count if stage_wise else cfg["num_layers"], stage_wise)
            key = f"layer_{depth}_{'no_decay' if no_decay else 'decay'}"
            group = groups.get(key)
            if group is None:
                scale = cfg["decay_rate"] ** (depth_count - depth - 1)
                group = groups[key] = {"weight_decay": 0.0 if no_decay else self.base_wd, "params": [],
                                       "param_names": [], "lr_scale": scale, "group_name": key,
                                       "lr": scale * self.base_lr}
            group["params"].append(p)
            group["param_names"].append(name)
        params.extend(groups.values())
