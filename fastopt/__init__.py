"""fastopt: OpenMMLab-compatible optimizer construction in linear time, with merged groups.

``build_optimizer`` (mmcv 1.x) and ``build_optim_wrapper`` (mmengine) give every
parameter exactly the hyperparameters the reference constructors give it, while
parameters with equal hyperparameters share one param group.
"""

from __future__ import annotations

import importlib
from typing import Any

import torch  # noqa: F401  (loaded before the extension: one OpenMP runtime)

from . import (
    _torch_compat,  # noqa: F401  (first: on an unsupported torch, one line saying so)
    host,
    optim,
)
from ._core import HAVE_NATIVE
from .builder import (
    OPTIM_WRAPPER_CONSTRUCTORS,
    OPTIM_WRAPPERS,
    OPTIMIZER_BUILDERS,
    OPTIMIZERS,
    build_optim_wrapper,
    build_optimizer,
)
from .checkpoint import (
    load_per_param_state_dict,
    merged_scheduler_state,
    per_param_scheduler_state,
    per_param_state_dict,
)
from .constructor import DefaultOptimizerConstructor, DefaultOptimWrapperConstructor, GroupPlan
from .grouping import merge_param_groups
from .layer_decay import LayerDecayOptimizerConstructor, LearningRateDecayOptimizerConstructor
from .registry import Registry, build_from_cfg
from .tsm import TSMOptimizerConstructor, TSMOptimWrapperConstructor
from .wrapper import AmpOptimWrapper, OptimWrapper

#: Public names served by the tools subpackage, imported on first use (``import fastopt``
#: alone loads no tool module).
_TOOL_NAMES = {
    "explain": "fastopt.tools.explain",
    "Explanation": "fastopt.tools.explain",
    "load_model": "fastopt.tools.sources",
    "load_config": "fastopt.tools.sources",
}


def __getattr__(name: str) -> Any:
    """``fastopt.explain``, ``fastopt.load_model``, ...: the tool's function, loaded on first use."""
    module = _TOOL_NAMES.get(name)
    if module is None:
        raise AttributeError(f"module 'fastopt' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_TOOL_NAMES))

__version__ = "0.1.0"

__all__ = [
    "HAVE_NATIVE",
    "OPTIMIZERS",
    "OPTIMIZER_BUILDERS",
    "OPTIM_WRAPPERS",
    "OPTIM_WRAPPER_CONSTRUCTORS",
    "AmpOptimWrapper",
    "DefaultOptimWrapperConstructor",
    "DefaultOptimizerConstructor",
    "Explanation",
    "GroupPlan",
    "LayerDecayOptimizerConstructor",
    "LearningRateDecayOptimizerConstructor",
    "OptimWrapper",
    "Registry",
    "TSMOptimWrapperConstructor",
    "TSMOptimizerConstructor",
    "__version__",
    "build_from_cfg",
    "build_optim_wrapper",
    "build_optimizer",
    "explain",
    "host",
    "load_config",
    "load_model",
    "load_per_param_state_dict",
    "merge_param_groups",
    "merged_scheduler_state",
    "optim",
    "per_param_scheduler_state",
    "per_param_state_dict",
]
