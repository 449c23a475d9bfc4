"""The two entry points: ``build_optimizer`` (mmcv 1.x) and ``build_optim_wrapper`` (mmengine).

The registries they read live in ``registry.py``; the classes register themselves where they
are defined (``optim.py``, ``constructor.py``, ``wrapper.py``, ``layer_decay.py``, ``tsm.py``).
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from .registry import (
    OPTIM_WRAPPER_CONSTRUCTORS,
    OPTIM_WRAPPERS,
    OPTIMIZER_BUILDERS,
    OPTIMIZERS,
    TORCH_OPTIMIZERS,
    constructor_from_cfg,
)

__all__ = [
    "OPTIMIZERS",
    "OPTIMIZER_BUILDERS",
    "OPTIM_WRAPPERS",
    "OPTIM_WRAPPER_CONSTRUCTORS",
    "TORCH_OPTIMIZERS",
    "build_optim_wrapper",
    "build_optimizer",
]


def _check_model(model: Any) -> None:
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be a torch.nn.Module, got {type(model).__name__}")


def build_optimizer(model: nn.Module, cfg: dict) -> torch.optim.Optimizer:
    """Build a torch optimizer from an mmcv 1.x ``optimizer=`` config (cfg is not modified)."""
    _check_model(model)
    if not isinstance(cfg, dict):
        raise TypeError(f"optimizer cfg must be a dict, got {type(cfg).__name__}")
    return constructor_from_cfg(cfg, "mmcv")(model)


def build_optim_wrapper(model: nn.Module, cfg: dict) -> Any:
    """Build an OptimWrapper from an mmengine ``optim_wrapper=`` config (cfg is not modified).

    With mmengine installed, wrapper types mmengine knows (``OptimWrapper``,
    ``AmpOptimWrapper``, ...) are built with mmengine's classes; otherwise with
    fastopt's own :class:`~fastopt.OptimWrapper`.
    """
    _check_model(model)
    if not isinstance(cfg, dict):
        raise TypeError(f"optim_wrapper cfg must be a dict, got {type(cfg).__name__}")
    return constructor_from_cfg(cfg, "mmengine")(model)
