"""Registries and the two entry points: ``build_optimizer`` and ``build_optim_wrapper``."""

from __future__ import annotations

import copy
import importlib.util
import inspect
from typing import Any

import torch
from torch import nn

from . import optim
from .constructor import DefaultOptimizerConstructor, DefaultOptimWrapperConstructor
from .registry import Registry, build_from_cfg, resolve_type
from .wrapper import AmpOptimWrapper, OptimWrapper

__all__ = [
    "OPTIMIZERS",
    "OPTIMIZER_BUILDERS",
    "OPTIM_WRAPPERS",
    "OPTIM_WRAPPER_CONSTRUCTORS",
    "build_optim_wrapper",
    "build_optimizer",
]

OPTIMIZERS = Registry("optimizer")
OPTIMIZER_BUILDERS = Registry("optimizer builder")
OPTIM_WRAPPER_CONSTRUCTORS = Registry("optimizer wrapper constructor")
OPTIM_WRAPPERS = Registry("optim wrapper")


def _register_torch_optimizers() -> list[str]:
    names = []
    for name in dir(torch.optim):
        obj = getattr(torch.optim, name)
        is_optimizer = inspect.isclass(obj) and issubclass(obj, torch.optim.Optimizer)
        if is_optimizer and obj is not torch.optim.Optimizer:
            OPTIMIZERS.register_module(module=obj)
            names.append(name)
    return names


TORCH_OPTIMIZERS = _register_torch_optimizers()
# The accelerated subclasses take torch's names (isinstance checks still hold).
for _cls in (optim.SGD, optim.Adam, optim.AdamW):
    OPTIMIZERS.register_module(name=_cls.__name__, module=_cls, force=True)
OPTIMIZER_BUILDERS.register_module(module=DefaultOptimizerConstructor)
OPTIM_WRAPPER_CONSTRUCTORS.register_module(module=DefaultOptimWrapperConstructor)
OPTIM_WRAPPERS.register_module(module=OptimWrapper)
OPTIM_WRAPPERS.register_module(module=AmpOptimWrapper)


def _check_model(model: Any) -> None:
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be a torch.nn.Module, got {type(model).__name__}")


def build_optimizer(model: nn.Module, cfg: dict) -> torch.optim.Optimizer:
    """Build a torch optimizer from an mmcv 1.x ``optimizer=`` config (cfg is not modified)."""
    _check_model(model)
    if not isinstance(cfg, dict):
        raise TypeError(f"optimizer cfg must be a dict, got {type(cfg).__name__}")
    optimizer_cfg = copy.deepcopy(cfg)
    constructor_type = optimizer_cfg.pop("constructor", "DefaultOptimizerConstructor")
    paramwise_cfg = optimizer_cfg.pop("paramwise_cfg", None)
    constructor = build_from_cfg(
        dict(type=constructor_type, optimizer_cfg=optimizer_cfg, paramwise_cfg=paramwise_cfg),
        OPTIMIZER_BUILDERS,
    )
    return constructor(model)


def build_optim_wrapper(model: nn.Module, cfg: dict) -> Any:
    """Build an OptimWrapper from an mmengine ``optim_wrapper=`` config (cfg is not modified).

    With mmengine installed, wrapper types mmengine knows (``OptimWrapper``,
    ``AmpOptimWrapper``, ...) are built with mmengine's classes; otherwise with
    fastopt's own :class:`~fastopt.OptimWrapper`.
    """
    _check_model(model)
    if not isinstance(cfg, dict):
        raise TypeError(f"optim_wrapper cfg must be a dict, got {type(cfg).__name__}")
    wrapper_cfg = copy.deepcopy(cfg)
    constructor_type = wrapper_cfg.pop("constructor", "DefaultOptimWrapperConstructor")
    paramwise_cfg = wrapper_cfg.pop("paramwise_cfg", None)
    constructor = build_from_cfg(
        dict(type=constructor_type, optim_wrapper_cfg=wrapper_cfg, paramwise_cfg=paramwise_cfg),
        OPTIM_WRAPPER_CONSTRUCTORS,
    )
    return constructor(model)


def _mmengine_wrapper(name: str) -> Any:
    if importlib.util.find_spec("mmengine") is None:
        return None
    import mmengine.optim  # noqa: F401  (registers mmengine's wrappers)
    from mmengine.registry import OPTIM_WRAPPERS as MMENGINE_WRAPPERS

    return MMENGINE_WRAPPERS.get(name)


def wrapper_class(wrapper_type: Any) -> Any:
    """The class a wrapper ``type`` names: user registrations, then mmengine's, then fastopt's."""
    if isinstance(wrapper_type, str):
        own = OPTIM_WRAPPERS.get(wrapper_type)
        if own is not None and own not in (OptimWrapper, AmpOptimWrapper):
            return own  # registered by the user: theirs wins
        theirs = _mmengine_wrapper(wrapper_type)
        if theirs is not None:
            return theirs
    return resolve_type(wrapper_type, OPTIM_WRAPPERS)


def build_wrapper(cfg: dict, optimizer: torch.optim.Optimizer) -> Any:
    """Build the wrapper ``cfg`` names around ``optimizer``."""
    args = dict(cfg)
    cls = wrapper_class(args.pop("type"))
    args.setdefault("optimizer", optimizer)
    return cls(**args)
