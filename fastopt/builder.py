"""The two entry points: ``build_optimizer`` (mmcv 1.x) and ``build_optim_wrapper`` (mmengine).

The registries they read live in ``registry.py``; the classes register themselves where they
are defined (``optim.py``, ``constructor.py``, ``wrapper.py``, ``layer_decay.py``, ``tsm.py``).
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from .constructor import DefaultOptimizerConstructor, DefaultOptimWrapperConstructor
from .errors import ConfigNotADictError
from .registry import (
    OPTIM_WRAPPER_CONSTRUCTORS,
    OPTIM_WRAPPERS,
    OPTIMIZER_BUILDERS,
    OPTIMIZERS,
    TORCH_OPTIMIZERS,
    constructor_from_cfg,
)
from .semantics import Semantics

__all__ = [
    "OPTIMIZERS",
    "OPTIMIZER_BUILDERS",
    "OPTIM_WRAPPERS",
    "OPTIM_WRAPPER_CONSTRUCTORS",
    "TORCH_OPTIMIZERS",
    "build_optim_wrapper",
    "build_optimizer",
    "config_api",
    "with_semantics",
]


def _check_model(model: Any) -> None:
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be a torch.nn.Module, got {type(model).__name__}")


def config_api(cfg: dict) -> str:
    """Whose config ``cfg`` is: 'mmengine' for an ``optim_wrapper=`` dict (it holds an
    ``optimizer``), 'mmcv' for an mmcv 1.x ``optimizer=`` dict."""
    return "mmengine" if "optimizer" in cfg else "mmcv"


def with_semantics(ctor: Any, semantics: str | Semantics | None) -> Any:
    """``ctor`` set to follow ``semantics`` (e.g. ``'mmengine==0.10.3'``); None leaves its
    default, the installed host release. Only fastopt's constructors take a choice."""
    if semantics is None:
        return ctor
    if not isinstance(ctor, (DefaultOptimizerConstructor, DefaultOptimWrapperConstructor)):
        raise TypeError(f"semantics={str(semantics)!r} needs one of fastopt's constructors; "
                        f"{type(ctor).__name__} follows its own code")
    ctor.semantics = semantics
    return ctor


def build_optimizer(model: nn.Module, cfg: dict, semantics: str | Semantics | None = None
                    ) -> torch.optim.Optimizer:
    """Build a torch optimizer from an mmcv 1.x ``optimizer=`` config (cfg is not modified);
    ``semantics`` such as ``'mmcv==1.3.0'`` (default: the installed mmcv 1.x, else 1.7.2)."""
    _check_model(model)
    if not isinstance(cfg, dict):
        raise ConfigNotADictError(f"optimizer cfg must be a dict, got {type(cfg).__name__}")
    return with_semantics(constructor_from_cfg(cfg, "mmcv"), semantics)(model)


def build_optim_wrapper(model: nn.Module, cfg: dict, semantics: str | Semantics | None = None) -> Any:
    """Build an OptimWrapper from an mmengine ``optim_wrapper=`` config (cfg is not modified);
    ``semantics`` such as ``'mmengine==0.10.3'`` (default: the installed mmengine, else 0.10.7).

    With mmengine installed, wrapper types mmengine knows (``OptimWrapper``,
    ``AmpOptimWrapper``, ...) are built with mmengine's classes; otherwise with
    fastopt's own :class:`~fastopt.OptimWrapper`.
    """
    _check_model(model)
    if not isinstance(cfg, dict):
        raise ConfigNotADictError(f"optim_wrapper cfg must be a dict, got {type(cfg).__name__}")
    return with_semantics(constructor_from_cfg(cfg, "mmengine"), semantics)(model)
