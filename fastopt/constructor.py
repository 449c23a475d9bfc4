"""Optimizer constructors with mmcv 1.x and mmengine paramwise_cfg semantics.

Every parameter gets exactly the hyperparameters the reference constructor
would give it, but one walk of the model and one native call decide them all,
and parameters whose hyperparameters are equal share one param group.

A constructor reads its config (validated by ``paramwise.py``), asks a ``Planner``
(``planner.py``) for the per-parameter plan, and builds the merged groups and the
optimizer from it (``assembly.py``); this module holds the classes the registries name,
the host release they follow, how they find the optimizer class, and the legacy
``add_params`` path of subclasses that override it.

>>> import torch.nn as nn
>>> model = nn.Sequential(nn.Conv2d(3, 8, 3), nn.BatchNorm2d(8))
>>> ctor = DefaultOptimizerConstructor(
...     dict(type='SGD', lr=0.01, weight_decay=1e-4), dict(norm_decay_mult=0.0))
>>> [len(g['params']) for g in ctor(model).param_groups]
[2, 2]
"""

from __future__ import annotations

import inspect
from collections.abc import Iterable
from typing import Any, Callable

import torch
from torch import nn

from ._walk import dcn_types, own_children
from .assembly import (
    Construction,
    build_optimizer_over,
    groups_from_plan,
    optimizer_defaults,
    reference_layout,
)
from .checkpoint import ReferenceLayout
from .errors import ConfigNotADictError, MissingOptimizerError, MissingTypeError
from .grouping import group_params, merge_param_groups_indexed
from .host_wrapper import build_wrapper
from .paramwise import validate_paramwise
from .planner import GroupPlan, Planner
from .registry import (
    OPTIM_WRAPPER_CONSTRUCTORS,
    OPTIMIZER_BUILDERS,
    OPTIMIZERS,
    SCOPE_KEY,
    Registry,
    resolve_type,
    within_scope,
)
from .semantics import Semantics, resolve

__all__ = ["Construction", "DefaultOptimWrapperConstructor", "DefaultOptimizerConstructor", "GroupPlan",
           "RecipeConstructor"]


class _ConstructorBase:
    """What both constructors share; subclasses pick mmcv (False) or mmengine (True)
    semantics, and ``semantics`` the host release within that API."""

    mmengine: bool = False
    _semantics: Semantics | None = None

    base_lr: Any
    base_wd: Any
    paramwise_cfg: dict
    optimizer_cfg: dict

    def _validate_cfg(self) -> None:
        """Check paramwise_cfg's structure and multipliers, as the references do and more."""
        default = type(self) in (DefaultOptimizerConstructor, DefaultOptimWrapperConstructor)
        validate_paramwise(self.paramwise_cfg, self.base_lr, self.base_wd, self.mmengine,
                           warn_unknown=default)

    @property
    def semantics(self) -> Semantics:
        """The host release whose behaviour this constructor follows (by default the installed one)."""
        if self._semantics is None:
            self._semantics = resolve(None, "mmengine" if self.mmengine else "mmcv")
        return self._semantics

    @semantics.setter
    def semantics(self, value: str | Semantics | None) -> None:
        self._semantics = resolve(value, "mmengine" if self.mmengine else "mmcv")

    # -- the plan ----------------------------------------------------------------------------
    def planner(self) -> Planner:
        """The planner for this constructor's config and semantics as they are now, with the bits
        ``config_bits`` gives (a subclass that overrides it decides them)."""
        return Planner(self.paramwise_cfg, self.base_lr, self.base_wd, self.mmengine, self.semantics,
                       self.config_bits())

    def config_bits(self) -> int:
        """The ConfigFlag bits (``_rules.py``) this constructor's config and semantics set."""
        default = Planner(self.paramwise_cfg, self.base_lr, self.base_wd, self.mmengine, self.semantics)
        return default.config_bits()

    def plan(self, module: nn.Module, prefix: str = "", is_dcn_module: Any = None,
             seen: dict[int, int] | None = None, recurse: bool = True) -> GroupPlan:
        """Decide every parameter under ``module``: one walk, one native call."""
        return self.planner().plan(module, prefix, is_dcn_module, seen, recurse)

    def _seen(self, params: list[dict]) -> dict[int, int]:
        """``id -> -1`` for every tensor already in ``params``, updated incrementally."""
        cache = getattr(self, "_seen_cache", None)
        if cache is None or cache[0] is not params or cache[1] > len(params):
            cache = (params, 0, {})
        _, done, seen = cache
        for group in params[done:]:
            for p in group_params(group):
                seen.setdefault(id(p), -1)
        self._seen_cache = (params, len(params), seen)
        return seen

    def add_params(self, params: list[dict], module: nn.Module, prefix: str = "",
                   is_dcn_module: Any = None) -> None:
        """Append one group dict per parameter of ``module`` to ``params`` (reference layout).

        As in the references, children are visited through ``self.add_params``, so a
        subclass override sees every submodule; ``__call__`` merges the result.
        """
        overridden = self.overrides_add_params
        plan = self.plan(module, prefix, is_dcn_module, dict(self._seen(params)), recurse=not overridden)
        self.planner().report(plan, unused_keys=False)
        params.extend(plan.per_param_groups())
        if overridden:
            dcn = dcn_types()
            child_in_dcn = bool(dcn) and isinstance(module, dcn)
            for name, child in own_children(module):
                self.add_params(params, child, f"{prefix}.{name}" if prefix else name, child_in_dcn)

    @property
    def overrides_add_params(self) -> bool:
        """True for a subclass with its own ``add_params`` (its groups are merged afterwards)."""
        return type(self).add_params is not _ConstructorBase.add_params

    # -- the optimizer -------------------------------------------------------------------------
    #: Optimizer registries of a host framework searched after fastopt's own (set by the
    #: mmengine/mmcv plug-ins, so custom optimizers registered there keep working).
    fallback_optimizers: Any = None

    def optimizer_class(self, registry: Registry = OPTIMIZERS) -> Any:
        """The optimizer class the config's ``type`` names: in ``registry`` under the config's
        ``_scope_``, then in the host's registries (``fallback_optimizers``); a class as is."""
        if "type" not in self.optimizer_cfg:
            shown = {k: v for k, v in self.optimizer_cfg.items() if k != "params"}
            raise MissingTypeError(f"the optimizer config must contain the key 'type' (e.g. type='SGD'), "
                                   f"got {shown}")
        name = self.optimizer_cfg["type"]
        with within_scope(self.optimizer_cfg.get(SCOPE_KEY)):
            if isinstance(name, str) and name not in registry and self.fallback_optimizers is not None:
                found = self.fallback_optimizers.get(name)
                if found is not None:
                    return found
            return resolve_type(name, registry)

    def defaults(self, optimizer_cls: Any) -> dict[str, Any]:
        """Values every group gets unless it overrides them: signature defaults, then cfg."""
        return optimizer_defaults(optimizer_cls, self.optimizer_cfg)

    def param_groups(self, model: nn.Module, optimizer_cls: Any) -> Iterable | list[dict]:
        """The merged param groups for ``model`` (or ``model.parameters()`` without paramwise)."""
        return self.construct(model, optimizer_cls).groups

    def construct(self, model: nn.Module, optimizer_cls: Any) -> Construction:
        """Decide the groups for ``model`` in one walk: what the optimizer gets, and the plan
        and layout that ``explain`` and the checkpoint code read."""
        if next(model.parameters(), None) is None:
            raise ValueError(f"{type(model).__name__} has no parameters to optimize")
        defaults = self.defaults(optimizer_cls)
        if not self.paramwise_cfg:
            params = list(model.parameters())
            return Construction(params, defaults, None, ReferenceLayout(params, [(len(params), 0)]))
        if self.overrides_add_params:
            per_param: list[dict] = []
            self.add_params(per_param, model)
            merged, into = merge_param_groups_indexed(per_param, defaults)
            return Construction(merged, defaults, None, ReferenceLayout.of_groups(per_param, into))
        plan = self.plan(model)  # (through the methods a subclass may override)
        self.planner().report(plan)
        groups, group_of_param = groups_from_plan(plan, defaults)
        return Construction(groups, defaults, plan, reference_layout(plan, group_of_param, self.mmengine))


@OPTIMIZER_BUILDERS.register_module()
class DefaultOptimizerConstructor(_ConstructorBase):
    """mmcv 1.x ``DefaultOptimizerConstructor``: ``ctor(model)`` returns a torch optimizer."""

    mmengine = False

    def __init__(self, optimizer_cfg: dict, paramwise_cfg: dict | None = None, *,
                 semantics: str | Semantics | None = None) -> None:
        self.semantics = semantics  # e.g. 'mmcv==1.7.2'; None: the installed mmcv 1.x
        if not isinstance(optimizer_cfg, dict):
            raise ConfigNotADictError(f"optimizer_cfg should be a dict, but got {type(optimizer_cfg)}")
        self.optimizer_cfg = optimizer_cfg  # (its 'type' is read when the optimizer is built, as mmcv does)
        self.paramwise_cfg = {} if paramwise_cfg is None else paramwise_cfg
        self.base_lr = optimizer_cfg.get("lr")
        self.base_wd = optimizer_cfg.get("weight_decay")
        self._validate_cfg()

    def __call__(self, model: nn.Module) -> torch.optim.Optimizer:
        """Build the optimizer for ``model`` (unwrapping ``model.module`` first)."""
        if hasattr(model, "module"):
            model = model.module
        optimizer_cls = self.optimizer_class()
        return build_optimizer_over(optimizer_cls, self.optimizer_cfg, self.construct(model, optimizer_cls))


@OPTIM_WRAPPER_CONSTRUCTORS.register_module()
class DefaultOptimWrapperConstructor(_ConstructorBase):
    """mmengine ``DefaultOptimWrapperConstructor``: ``ctor(model)`` returns an OptimWrapper."""

    mmengine = True

    def __init__(self, optim_wrapper_cfg: dict, paramwise_cfg: dict | None = None, *,
                 semantics: str | Semantics | None = None) -> None:
        self.semantics = semantics  # e.g. 'mmengine==0.10.3'; None: the installed mmengine
        if not isinstance(optim_wrapper_cfg, dict):
            raise ConfigNotADictError(
                f"optim_wrapper_cfg should be a dict, but got {type(optim_wrapper_cfg)}")
        if "optimizer" not in optim_wrapper_cfg:
            raise MissingOptimizerError('optim_wrapper_cfg must contain an "optimizer" config, e.g. '
                                        "optimizer=dict(type='SGD', lr=0.01)")
        self.optim_wrapper_cfg = optim_wrapper_cfg.copy()
        self.optimizer_cfg = self.optim_wrapper_cfg.pop("optimizer")
        if not isinstance(self.optimizer_cfg, dict):
            raise ConfigNotADictError(
                f"optim_wrapper_cfg['optimizer'] should be a dict, got {self.optimizer_cfg!r}")
        # (its 'type' is read when the optimizer is built, as mmengine does)
        self.paramwise_cfg = {} if paramwise_cfg is None else paramwise_cfg
        self.base_lr = self.optimizer_cfg.get("lr", None)
        self.base_wd = self.optimizer_cfg.get("weight_decay", None)
        self._validate_cfg()

    def __call__(self, model: nn.Module) -> Any:
        """Build the optim wrapper (and its optimizer) for ``model``."""
        if hasattr(model, "module"):
            model = model.module
        optimizer_cls = self.optimizer_class()
        semantics = self.semantics
        # mmengine 0.9 on hands the parameters to the first argument, whatever its name
        first_arg = next(iter(inspect.signature(optimizer_cls).parameters)) if semantics.first_arg_lookup \
            else "params"
        built = self.construct(model, optimizer_cls)
        optimizer = build_optimizer_over(optimizer_cls, self.optimizer_cfg, built, first_arg)
        wrapper_cfg = self.optim_wrapper_cfg.copy()
        wrapper_cfg.setdefault("type", "OptimWrapper")
        return build_wrapper(wrapper_cfg, optimizer, base_param_settings=semantics.base_param_settings)


class RecipeConstructor:
    """Mixin for a constructor whose groups are one function of the model and config (layer
    decay, TSM): put it before ``DefaultOptimizerConstructor`` / ``DefaultOptimWrapperConstructor``
    and set ``recipe`` to ``staticmethod(fn)``; the groups it returns are merged as usual."""

    recipe: Callable[[nn.Module, dict, Any, Any], list[dict]]
    paramwise_cfg: dict
    base_lr: Any
    base_wd: Any

    def add_params(self, params: list[dict], module: nn.Module, prefix: str = "",
                   is_dcn_module: Any = None) -> None:
        """Append ``recipe(module, paramwise_cfg, base_lr, base_wd)`` to ``params``."""
        params.extend(self.recipe(module, self.paramwise_cfg, self.base_lr, self.base_wd))
