"""The TSM recipe of MMAction2 (``TSMOptimWrapperConstructor`` in 1.x, ``TSMOptimizerConstructor``
in 0.x), for both APIs.

``paramwise_cfg=dict(fc_lr5=True | False)`` (the key is required). Modules are visited in
``model.modules()`` order:

- the first convolution (any ``_ConvNd``): weight ``lr``, ``weight_decay``; bias ``2 * lr``, 0;
- every other convolution and every ``nn.Linear``: the same (weight as given, bias doubled
  lr and no decay);
- BatchNorm / SyncBatchNorm / GroupNorm: trainable parameters only, ``lr``, weight decay 0;
- any other module without children that holds parameters is an error, and parameters held
  directly by modules with children are left out (as in the original);
- the last ``nn.Linear`` weight and the last collected bias (the classifier's, when it has
  one) get ``5 * lr`` with weight decay and ``10 * lr`` without when ``fc_lr5`` is set.

Weight decay 0 is an ``int`` as in the original. The original's seven groups are merged
where their hyperparameters are equal (first-conv and other weights; the two bias groups).
"""

from __future__ import annotations

from typing import Any

from torch import nn
from torch.nn.modules.batchnorm import _BatchNorm
from torch.nn.modules.conv import _ConvNd

from .constructor import DefaultOptimizerConstructor, DefaultOptimWrapperConstructor, RecipeConstructor
from .registry import OPTIM_WRAPPER_CONSTRUCTORS, OPTIMIZER_BUILDERS

__all__ = ["TSMOptimWrapperConstructor", "TSMOptimizerConstructor", "tsm_groups"]


def tsm_groups(model: nn.Module, cfg: dict, base_lr: Any, base_wd: Any) -> list[dict]:
    """The seven TSM groups of ``model`` in the original's order (some may be empty)."""
    if "fc_lr5" not in cfg:
        raise KeyError("TSM constructors need paramwise_cfg['fc_lr5'] (True or False)")
    first_weight: list = []
    first_bias: list = []
    weights: list = []
    biases: list = []
    norms: list = []
    seen_conv = False
    for name, m in model.named_modules():
        if isinstance(m, (_ConvNd, nn.Linear)):
            own = list(m.parameters())
            first = isinstance(m, _ConvNd) and not seen_conv
            seen_conv = seen_conv or isinstance(m, _ConvNd)
            (first_weight if first else weights).append(own[0])
            if len(own) == 2:
                (first_bias if first else biases).append(own[1])
        elif isinstance(m, (_BatchNorm, nn.GroupNorm)):
            norms.extend(p for p in m.parameters() if p.requires_grad)
        elif not m._modules and next(m.parameters(), None) is not None:
            raise ValueError(f"TSM constructors give no learning policy to {type(m).__name__} "
                             f"({name or 'the model'}): only convolutions, Linear, BatchNorm and "
                             "GroupNorm may hold parameters")
    if not weights or not biases:
        raise ValueError("TSM constructors need a last Linear/conv layer with a bias (the classifier), "
                         f"found {len(weights)} non-first weight(s) and {len(biases)} bias(es)")
    fc_weight, fc_bias = weights.pop(), biases.pop()
    fc_lr5 = bool(cfg["fc_lr5"])
    if not fc_lr5:
        weights.append(fc_weight)
        biases.append(fc_bias)
    return [
        {"params": first_weight, "lr": base_lr, "weight_decay": base_wd},
        {"params": first_bias, "lr": base_lr * 2, "weight_decay": 0},
        {"params": weights, "lr": base_lr, "weight_decay": base_wd},
        {"params": biases, "lr": base_lr * 2, "weight_decay": 0},
        {"params": norms, "lr": base_lr, "weight_decay": 0},
        {"params": [fc_weight] if fc_lr5 else [], "lr": base_lr * 5, "weight_decay": base_wd},
        {"params": [fc_bias] if fc_lr5 else [], "lr": base_lr * 10, "weight_decay": 0},
    ]


@OPTIM_WRAPPER_CONSTRUCTORS.register_module()
class TSMOptimWrapperConstructor(RecipeConstructor, DefaultOptimWrapperConstructor):
    """MMAction2 1.x ``TSMOptimWrapperConstructor``: returns an optim wrapper."""

    recipe = staticmethod(tsm_groups)


@OPTIMIZER_BUILDERS.register_module()
class TSMOptimizerConstructor(RecipeConstructor, DefaultOptimizerConstructor):
    """MMAction2 0.x ``TSMOptimizerConstructor`` (mmcv 1.x style): returns the optimizer."""

    recipe = staticmethod(tsm_groups)
