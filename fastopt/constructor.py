"""Optimizer constructors with mmcv 1.x and mmengine paramwise_cfg semantics.

Every parameter gets exactly the hyperparameters the reference constructor
would give it, but one walk of the model and one native call decide them all,
and parameters whose hyperparameters are equal share one param group.

>>> import torch.nn as nn
>>> model = nn.Sequential(nn.Conv2d(3, 8, 3), nn.BatchNorm2d(8))
>>> ctor = DefaultOptimizerConstructor(
...     dict(type='SGD', lr=0.01, weight_decay=1e-4), dict(norm_decay_mult=0.0))
>>> [len(g['params']) for g in ctor(model).param_groups]
[2, 2]
"""

from __future__ import annotations

import difflib
import inspect
import logging
import math
import numbers
import warnings
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any, Callable

import numpy as np
import torch
from torch import nn

from . import _core
from ._rules import (
    BYPASS_DUP,
    DUPLICATE,
    DUPLICATE_ERROR,
    FROZEN,
    HAS_WD,
    KEEP_FROZEN,
    LR_CUSTOM,
    LR_RULES,
    MMENGINE,
    RULES,
    SKIPPED,
    TRAINABLE,
    WD_CUSTOM,
    WD_RULES,
)
from ._walk import ParamTable, dcn_types, own_children, walk
from .checkpoint import ReferenceLayout, attach_layout
from .grouping import group_params, merge_hypers, merge_param_groups_indexed
from .registry import (
    OPTIM_WRAPPER_CONSTRUCTORS,
    OPTIMIZER_BUILDERS,
    OPTIMIZERS,
    SCOPE_KEY,
    Registry,
    build_from_cfg,
    resolve_type,
    within_scope,
)
from .semantics import Semantics, resolve
from .wrapper import build_wrapper

logger = logging.getLogger("fastopt")

__all__ = ["Construction", "DefaultOptimWrapperConstructor", "DefaultOptimizerConstructor", "GroupPlan",
           "RecipeConstructor"]

def _check_multiplier(where: str, value: Any) -> None:
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise TypeError(f"{where} must be a number, got {value!r}")
    if math.isnan(value) or math.isinf(value) or value < 0:
        raise ValueError(f"{where} must be a finite non-negative number, got {value!r}")


@dataclass
class GroupPlan:
    """The outcome of the rules for one model: per parameter, its signature and group."""

    table: ParamTable
    sig_ids: np.ndarray  # per parameter: row of ``signatures``
    signatures: list[tuple[int, int, int, int]]  # (key, lr_rule, wd_rule, kind)
    overrides: list[dict[str, Any] | None]  # per signature; None: in no group
    keys: list[str]  # custom keys, indexed by signature[0]

    def kinds(self) -> np.ndarray:
        """Per parameter: its Kind (trainable, frozen kept, skipped, duplicate error)."""
        kind_of_sig = np.array([sig[3] for sig in self.signatures], dtype=np.int32)
        return kind_of_sig[self.sig_ids] if len(kind_of_sig) else np.zeros(0, dtype=np.int32)

    def per_param_groups(self) -> list[dict[str, Any]]:
        """One ``{'params': [p], **overrides}`` dict per kept parameter, in model order."""
        out = []
        overrides = self.overrides
        for p, s in zip(self.table.params, self.sig_ids.tolist()):
            o = overrides[s]
            if o is not None:
                out.append({"params": [p], **o})
        return out


@dataclass
class Construction:
    """What one construction decided: the groups handed to the optimizer, the defaults every
    group inherits, the rules' per-parameter plan (None where no paramwise_cfg or a subclass's
    own ``add_params`` decided) and the reference's layout, for checkpoints."""

    groups: list
    defaults: dict[str, Any]
    plan: GroupPlan | None
    layout: ReferenceLayout


class _ConstructorBase:
    """Shared machinery; subclasses pick mmcv (False) or mmengine (True) semantics, and
    ``semantics`` the host release within that API."""

    mmengine: bool = False
    _semantics: Semantics | None = None

    base_lr: Any
    base_wd: Any
    paramwise_cfg: dict
    optimizer_cfg: dict

    def _validate_cfg(self) -> None:
        """Check paramwise_cfg's structure and multipliers, as the references do and more."""
        cfg = self.paramwise_cfg
        if not isinstance(cfg, dict):
            raise TypeError(f"paramwise_cfg should be None or a dict, but got {type(cfg)}")
        for name, value in (("lr", self.base_lr), ("weight_decay", self.base_wd)):
            if value is not None and not isinstance(value, torch.Tensor):
                _check_multiplier(f"optimizer {name}", value)
        if type(self) in (DefaultOptimizerConstructor, DefaultOptimWrapperConstructor):
            self._warn_unknown_keys()
        if "custom_keys" in cfg:
            custom = cfg["custom_keys"]
            if not isinstance(custom, dict):
                raise TypeError(f"If specified, custom_keys must be a dict, but got {type(custom)}")
            for key, value in custom.items():
                if not isinstance(key, str):
                    raise TypeError(f"custom_keys keys must be str, got {key!r}")
                if not isinstance(value, dict):
                    raise TypeError(
                        f"custom_keys[{key!r}] must be a dict such as dict(lr_mult=0.1), "
                        f"got {value!r}"
                    )
                for mult in ("lr_mult", "decay_mult"):
                    if mult in value:
                        _check_multiplier(f"custom_keys[{key!r}][{mult!r}]", value[mult])
                if self.base_wd is None and "decay_mult" in value:
                    raise ValueError(
                        f"base_wd should not be None: custom_keys[{key!r}] sets decay_mult "
                        "but the optimizer config has no weight_decay"
                    )
        for rule in RULES:
            if rule.key in cfg and (cfg[rule.key] is not None or not self.mmengine):
                _check_multiplier(f"paramwise_cfg[{rule.key!r}]", cfg[rule.key])
        # the references check these three (not flat_decay_mult)
        wd_mults = [r.key for r in RULES if r.scales == "weight_decay" and r.mmcv and r.key in cfg]
        if wd_mults and self.base_wd is None:
            raise ValueError(
                f"base_wd should not be None: paramwise_cfg sets {', '.join(wd_mults)} "
                "but the optimizer config has no weight_decay"
            )

    def _warn_unknown_keys(self) -> None:
        """A paramwise_cfg key the default constructor ignores is most likely a typo."""
        known = {"custom_keys", "bypass_duplicate", *(r.key for r in RULES if self.mmengine or r.mmcv)}
        for key in self.paramwise_cfg:
            if key not in known:
                hint = difflib.get_close_matches(str(key), sorted(known), n=1)
                tail = f"; did you mean {hint[0]!r}?" if hint else ""
                api = "mmengine's" if self.mmengine else "mmcv 1.x's"
                warnings.warn(f"paramwise_cfg key {key!r} is not used by {api} default constructor{tail}",
                              UserWarning, stacklevel=5)

    @property
    def semantics(self) -> Semantics:
        """The host release whose behaviour this constructor follows (by default the installed one)."""
        if self._semantics is None:
            self._semantics = resolve(None, "mmengine" if self.mmengine else "mmcv")
        return self._semantics

    @semantics.setter
    def semantics(self, value: str | Semantics | None) -> None:
        self._semantics = resolve(value, "mmengine" if self.mmengine else "mmcv")

    # -- rules ---------------------------------------------------------------------------
    def config_bits(self) -> int:
        """The ConfigFlag bits (``_rules.py``) this constructor's config and semantics set."""
        cfg = self.paramwise_cfg
        bits = MMENGINE if self.mmengine else 0
        if self.mmengine and self.semantics.keep_frozen:
            bits |= KEEP_FROZEN
        if self.base_wd is not None:
            bits |= HAS_WD
        if cfg.get("bypass_duplicate", False):
            bits |= BYPASS_DUP
        for rule in RULES:
            if cfg.get(rule.key) is not None:
                bits |= rule.config_bit
        return bits

    def _multiplier(self, name: str) -> Any:
        value = self.paramwise_cfg.get(name)
        return 1.0 if value is None else value  # mmcv's default; mmengine never asks then

    def _need_lr(self, why: str, param_name: str) -> Any:
        if self.base_lr is None:
            raise ValueError(
                f"{why} sets the lr of {param_name!r} as a multiple of the optimizer's lr, "
                "but the optimizer config has no 'lr'"
            )
        return self.base_lr

    def _overrides(self, sig: tuple[int, int, int, int], keys: list[str], example: str) -> dict | None:
        """Hyperparameters a signature sets, computed exactly as the reference computes them."""
        key, lr_rule, wd_rule, kind = sig
        if kind == SKIPPED:
            return None
        if kind != TRAINABLE:  # frozen kept by mmcv; duplicates are rejected later
            return {}
        out: dict[str, Any] = {}
        if lr_rule == LR_CUSTOM:
            name = keys[key]
            entry = self.paramwise_cfg["custom_keys"][name]
            if not (self.mmengine and "lr" in entry):  # the entry's own lr wins in mmengine
                base = self._need_lr(f"custom_keys[{name!r}]", example)
                out["lr"] = base * entry.get("lr_mult", 1.0)
            if wd_rule == WD_CUSTOM:
                out["weight_decay"] = self.base_wd * entry.get("decay_mult", 1.0)
            if self.mmengine:
                out.update(entry)
            return out
        if lr_rule:
            mult = LR_RULES[lr_rule].key
            out["lr"] = self._need_lr(mult, example) * self._multiplier(mult)
        if wd_rule:
            out["weight_decay"] = self.base_wd * self._multiplier(WD_RULES[wd_rule].key)
        return out

    def plan(self, module: nn.Module, prefix: str = "", is_dcn_module: Any = None,
             seen: dict[int, int] | None = None, recurse: bool = True) -> GroupPlan:
        """Decide every parameter under ``module``: one walk, one native call."""
        table = walk(module, prefix, bool(is_dcn_module), seen, recurse=recurse)
        custom = self.paramwise_cfg.get("custom_keys", {}) or {}
        keys = list(custom)
        ids, rows = _core.assign(table.names, table.flag_array(), keys, self.config_bits())
        signatures = [tuple(r) for r in rows.tolist()]
        first_of = np.full(len(signatures), -1, dtype=np.int64)
        if len(ids):
            uniq, first = np.unique(ids, return_index=True)
            first_of[uniq] = first
        overrides = [
            self._overrides(sig, keys, table.display_name(int(first_of[s])))
            for s, sig in enumerate(signatures)
        ]
        return GroupPlan(table, ids, signatures, overrides, keys)

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
        plan = self.plan(module, prefix, is_dcn_module, dict(self._seen(params)),
                         recurse=not overridden)
        self._warn_skipped(plan)
        params.extend(plan.per_param_groups())
        if overridden:
            dcn = dcn_types()
            child_in_dcn = bool(dcn) and isinstance(module, dcn)
            for name, child in own_children(module):
                self.add_params(params, child, f"{prefix}.{name}" if prefix else name, child_in_dcn)

    def _warn_skipped(self, plan: GroupPlan) -> None:
        if not self.paramwise_cfg.get("bypass_duplicate", False):
            return  # a frozen repeat skipped because it is frozen (mmengine 0.10.4 on)
        skipped = [plan.table.display_name(i) for i in np.flatnonzero(plan.kinds() == SKIPPED).tolist()
                   if i in plan.table.first_seen]
        if skipped:
            warnings.warn(
                f"{len(skipped)} shared parameter(s) skipped because bypass_duplicate=True "
                f"(first: {skipped[0]!r})", UserWarning, stacklevel=3)

    # -- groups ----------------------------------------------------------------------------
    #: Optimizer registries of a host framework searched after fastopt's own (set by the
    #: mmengine/mmcv plug-ins, so custom optimizers registered there keep working).
    fallback_optimizers: Any = None

    def _optimizer_class(self, registry: Registry) -> Any:
        name = self.optimizer_cfg["type"]
        with within_scope(self.optimizer_cfg.get(SCOPE_KEY)):
            return self._resolve_optimizer(name, registry)

    def _resolve_optimizer(self, name: Any, registry: Registry) -> Any:
        if isinstance(name, str) and name not in registry and self.fallback_optimizers is not None:
            found = self.fallback_optimizers.get(name)
            if found is not None:
                return found
        return resolve_type(name, registry)

    @property
    def overrides_add_params(self) -> bool:
        """True for a subclass with its own ``add_params`` (its groups are merged afterwards)."""
        return type(self).add_params is not _ConstructorBase.add_params

    def _build_optimizer(self, optimizer_cls: Any, built: Construction, first_arg: str = "params") -> Any:
        cfg = {k: v for k, v in self.optimizer_cfg.items() if k not in ("type", SCOPE_KEY)}
        cfg[first_arg] = built.groups
        optimizer = build_from_cfg(dict(cfg, type=optimizer_cls), Registry("optimizer"))
        # so that checkpoints in the reference's layout map both ways
        attach_layout(optimizer, built.layout)
        return optimizer

    def defaults(self, optimizer_cls: Any) -> dict[str, Any]:
        """Values every group gets unless it overrides them: signature defaults, then cfg."""
        defaults: dict[str, Any] = {}
        try:
            sig = inspect.signature(optimizer_cls)
        except (TypeError, ValueError):
            sig = None
        if sig is not None:
            for name, p in sig.parameters.items():
                if p.default is not inspect.Parameter.empty:
                    defaults[name] = p.default
        defaults.update({k: v for k, v in self.optimizer_cfg.items() if k not in ("type", SCOPE_KEY)})
        return defaults

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
        plan = self.plan(model)
        self._warn_skipped(plan)
        self._warn_unused_keys(plan)
        groups, group_of_param = self._groups_from_plan(plan, defaults)
        return Construction(groups, defaults, plan, self._layout(plan, group_of_param))

    def _layout(self, plan: GroupPlan, group_of_param: np.ndarray) -> ReferenceLayout:
        """The reference's layout: one group per kept parameter, in walk order. For mmengine,
        also the layout of the releases on the other side of 0.10.4 (frozen parameters as bare
        groups, or absent), so that checkpoints of either load."""
        params = plan.table.params
        kept = plan.kinds() != SKIPPED

        def layout(mask: np.ndarray, other: ReferenceLayout | None = None) -> ReferenceLayout:
            idx = np.flatnonzero(mask).tolist()
            return ReferenceLayout([params[i] for i in idx], [(1, g) for g in group_of_param[idx].tolist()],
                                   other)

        flags = plan.table.flag_array()
        toggled = (flags & FROZEN != 0) & (flags & DUPLICATE == 0)
        if not self.mmengine or not toggled.any():
            return layout(kept)
        return layout(kept, layout(kept ^ toggled))

    def _groups_from_plan(self, plan: GroupPlan, defaults: dict[str, Any]) -> tuple[list[dict], np.ndarray]:
        """The merged groups, and each parameter's group index (-1 when skipped)."""
        table = plan.table
        # Reject tensors the reference would put in two groups (torch raises then).
        for i in np.flatnonzero(plan.kinds() == DUPLICATE_ERROR)[:1].tolist():
            first = table.first_seen.get(i, -1)
            where = table.display_name(first) if first >= 0 else "an earlier group"
            raise ValueError(
                f"parameter {table.display_name(i)!r} is the same tensor as {where!r}; "
                "a parameter can be in only one group (set "
                "paramwise_cfg=dict(bypass_duplicate=True) to skip shared parameters)"
            )
        # Merge signatures with equal effective hyperparameters, first-seen order.
        hypers, into = merge_hypers(plan.overrides, defaults)
        groups: list[dict] = [{"params": [], **h} for h in hypers]
        group_of_sig = np.asarray(into, dtype=np.int64).reshape(-1)
        # Distribute parameters: a stable sort by group keeps model order inside groups.
        group_of_param = group_of_sig[plan.sig_ids]
        order = np.argsort(group_of_param, kind="stable")
        counts = np.bincount(group_of_param[group_of_param >= 0], minlength=len(groups))
        start = int(np.count_nonzero(group_of_param < 0))  # skipped parameters sort first
        params = table.params
        for g, count in enumerate(counts.tolist()):
            members = order[start:start + count].tolist()
            start += count
            groups[g]["params"] = [params[i] for i in members]
        if not groups:
            raise ValueError(f"no parameter to optimize: all {len(table.params)} parameters are frozen "
                             "(requires_grad=False) or skipped as shared")
        logger.debug("fastopt: %d parameters in %d param groups", len(table.params), len(groups))
        return groups, group_of_param

    def _warn_unused_keys(self, plan: GroupPlan) -> None:
        used = {sig[0] for sig in plan.signatures if sig[0] >= 0}
        unused = [k for i, k in enumerate(plan.keys) if i not in used]
        if unused:
            warnings.warn(
                f"custom_keys {unused} match no trainable parameter; check for typos "
                "(a key matches when it is a substring of 'prefix.name')",
                UserWarning, stacklevel=4)


@OPTIMIZER_BUILDERS.register_module()
class DefaultOptimizerConstructor(_ConstructorBase):
    """mmcv 1.x ``DefaultOptimizerConstructor``: ``ctor(model)`` returns a torch optimizer."""

    mmengine = False

    def __init__(self, optimizer_cfg: dict, paramwise_cfg: dict | None = None, *,
                 semantics: str | Semantics | None = None) -> None:
        self.semantics = semantics  # e.g. 'mmcv==1.7.2'; None: the installed mmcv 1.x
        if not isinstance(optimizer_cfg, dict):
            raise TypeError(f"optimizer_cfg should be a dict, but got {type(optimizer_cfg)}")
        if "type" not in optimizer_cfg:
            raise KeyError("optimizer_cfg must contain the key 'type', e.g. type='SGD'")
        self.optimizer_cfg = optimizer_cfg
        self.paramwise_cfg = {} if paramwise_cfg is None else paramwise_cfg
        self.base_lr = optimizer_cfg.get("lr")
        self.base_wd = optimizer_cfg.get("weight_decay")
        self._validate_cfg()

    def __call__(self, model: nn.Module) -> torch.optim.Optimizer:
        """Build the optimizer for ``model`` (unwrapping ``model.module`` first)."""
        if hasattr(model, "module"):
            model = model.module
        optimizer_cls = self._optimizer_class(OPTIMIZERS)
        return self._build_optimizer(optimizer_cls, self.construct(model, optimizer_cls))


@OPTIM_WRAPPER_CONSTRUCTORS.register_module()
class DefaultOptimWrapperConstructor(_ConstructorBase):
    """mmengine ``DefaultOptimWrapperConstructor``: ``ctor(model)`` returns an OptimWrapper."""

    mmengine = True

    def __init__(self, optim_wrapper_cfg: dict, paramwise_cfg: dict | None = None, *,
                 semantics: str | Semantics | None = None) -> None:
        self.semantics = semantics  # e.g. 'mmengine==0.10.3'; None: the installed mmengine
        if not isinstance(optim_wrapper_cfg, dict):
            raise TypeError(f"optim_wrapper_cfg should be a dict, but got {type(optim_wrapper_cfg)}")
        if "optimizer" not in optim_wrapper_cfg:
            raise KeyError('optim_wrapper_cfg must contain an "optimizer" config')
        self.optim_wrapper_cfg = optim_wrapper_cfg.copy()
        self.optimizer_cfg = self.optim_wrapper_cfg.pop("optimizer")
        if not isinstance(self.optimizer_cfg, dict) or "type" not in self.optimizer_cfg:
            raise TypeError(
                f"optim_wrapper_cfg['optimizer'] must be a dict with 'type', got {self.optimizer_cfg!r}"
            )
        self.paramwise_cfg = {} if paramwise_cfg is None else paramwise_cfg
        self.base_lr = self.optimizer_cfg.get("lr", None)
        self.base_wd = self.optimizer_cfg.get("weight_decay", None)
        self._validate_cfg()

    def __call__(self, model: nn.Module) -> Any:
        """Build the optim wrapper (and its optimizer) for ``model``."""
        if hasattr(model, "module"):
            model = model.module
        optimizer_cls = self._optimizer_class(OPTIMIZERS)
        semantics = self.semantics
        # mmengine 0.9 on hands the parameters to the first argument, whatever its name
        first_arg = next(iter(inspect.signature(optimizer_cls).parameters)) if semantics.first_arg_lookup \
            else "params"
        optimizer = self._build_optimizer(optimizer_cls, self.construct(model, optimizer_cls), first_arg)
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
