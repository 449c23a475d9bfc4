"""Why each parameter got its hyperparameters: the rule, the competing custom keys, the group.

>>> import torch.nn as nn
>>> model = nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4))
>>> report = explain(model, dict(optimizer=dict(type='SGD', lr=0.1, weight_decay=1e-4),
...                               paramwise_cfg=dict(norm_decay_mult=0.0)))
>>> for p in report.params:
...     print(p.name, p.rule, p.group, p.hyper['weight_decay'])
0.weight default 0 0.0001
0.bias default 0 0.0001
1.weight norm 1 0.0
1.bias norm 1 0.0
"""

from __future__ import annotations

import time
import warnings
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np
from torch import nn

from .. import _core
from .. import _rules as R
from .._report import held_warnings
from ..builder import config_api, with_semantics
from ..constructor import DefaultOptimizerConstructor, DefaultOptimWrapperConstructor
from ..registry import constructor_from_cfg
from ..semantics import Semantics

__all__ = ["Explanation", "ParamReport", "explain"]

_KIND_RULES = {R.FROZEN_KEPT: "frozen", R.SKIPPED: "skipped", R.DUPLICATE_ERROR: "duplicate"}


@dataclass
class ParamReport:
    """One parameter: where it went and why."""

    name: str
    group: int | None  # index into Explanation.groups; None when in no group
    rule: str  # custom, bias, norm, dwconv, dcn, flat, frozen, skipped, default (or lr+wd rules)
    custom_key: str | None  # the winning custom key
    also_matched: list[str]  # custom keys that matched too but lost to the longest-key rule
    switched_off: str | None  # built-in rule the custom key overrode ("default": none)
    hyper: dict[str, Any]  # the effective hyperparameters (group values, defaults included)
    shape: list[int]


@dataclass
class Explanation:
    """The outcome for one model and config: groups, parameters, warnings, timings."""

    api: str  # "mmengine" or "mmcv"
    optimizer: str
    groups: list[dict[str, Any]]  # hyperparameters (no params) plus "num_params" and "numel"
    params: list[ParamReport]
    unused_keys: list[str] = field(default_factory=list)
    build_s: float = 0.0
    semantics: str = ""  # the host release followed, e.g. "mmengine==0.10.7"

    def to_json(self) -> dict[str, Any]:
        """The documented JSON layout (docs/cli.md): {"groups": [...], "params": [...], ...}."""
        def clean(v: Any) -> Any:
            if isinstance(v, (list, tuple)):
                return [clean(x) for x in v]
            if isinstance(v, dict):
                return {str(k): clean(x) for k, x in v.items()}
            if isinstance(v, (bool, int, float, str)) or v is None:
                return v
            return repr(v)

        params = []
        for p in self.params:
            row = asdict(p)
            hyper = row.pop("hyper")
            row.update(clean(hyper))
            params.append(clean(row))
        return {"api": self.api, "semantics": self.semantics, "optimizer": self.optimizer,
                "build_s": self.build_s, "unused_keys": self.unused_keys, "groups": clean(self.groups),
                "params": params}


def explain(model: nn.Module, cfg: dict, semantics: str | Semantics | None = None) -> Explanation:
    """Explain how ``cfg`` (an ``optim_wrapper=`` or mmcv ``optimizer=`` config) treats ``model``
    under ``semantics`` (e.g. ``'mmengine==0.10.3'``; default: the installed host release)."""
    api = config_api(cfg)
    ctor = constructor_from_cfg(cfg, api)
    if not isinstance(ctor, (DefaultOptimizerConstructor, DefaultOptimWrapperConstructor)):
        raise TypeError(f"explain needs a fastopt constructor, got {type(ctor).__name__}")
    with_semantics(ctor, semantics)
    followed = str(ctor.semantics)
    if hasattr(model, "module"):
        model = model.module
    optimizer_cls = ctor.optimizer_class()
    start = time.perf_counter()
    with warnings.catch_warnings(record=True), held_warnings():  # (the report says what they would)
        warnings.simplefilter("always")
        built = ctor.construct(model, optimizer_cls)
    build_s = time.perf_counter() - start
    groups, defaults, plan = built.groups, built.defaults, built.plan
    if not ctor.paramwise_cfg:
        params = list(groups)
        hyper = {k: v for k, v in defaults.items() if k != "params"}
        reports = [ParamReport(name, 0, "default", None, [], None, hyper, list(p.shape))
                   for name, p in model.named_parameters()]
        return Explanation(api, str(ctor.optimizer_cfg["type"]), _group_rows([{"params": params}], defaults),
                           reports, [], build_s, followed)

    if plan is None:
        # A custom constructor decided the groups: report them, rules are its own.
        group_of_id = {id(p): gi for gi, g in enumerate(groups) for p in g["params"]}
        reports = []
        for name, p in model.named_parameters():
            gi = group_of_id.get(id(p))
            rule = f"constructor:{type(ctor).__name__}"
            if gi is None:  # the constructor left it out: not optimized, no hyperparameters
                reports.append(ParamReport(name, None, f"{rule} (left out)", None, [], None, {},
                                           list(p.shape)))
                continue
            hyper = dict(defaults)
            hyper.update({k: v for k, v in groups[gi].items() if k != "params"})
            reports.append(ParamReport(name, gi, rule, None, [], None, hyper, list(p.shape)))
        return Explanation(api, str(ctor.optimizer_cfg["type"]), _group_rows(groups, defaults), reports,
                           [], build_s, followed)

    group_of = {id(p): gi for gi, g in enumerate(groups) for p in g["params"]}
    keys = plan.keys
    priority = R.key_priority(keys)
    table = plan.table
    config = ctor.config_bits()
    flags = table.flags
    # the built-in rule a winning custom key switched off: the rules again, without custom keys
    builtin_ids, builtin_sigs = _core.assign(table.names, table.flag_array(), [], config)
    reports = []
    used: set[int] = set()
    for i, (p, s) in enumerate(zip(table.params, plan.sig_ids.tolist())):
        sig = plan.signatures[s]
        key, _, _, kind = sig
        name = table.display_name(i)
        gi = group_of.get(id(p)) if plan.overrides[s] is not None else None
        rule = _KIND_RULES.get(kind) or R.rule_name(sig)
        if kind in (R.FROZEN_KEPT, R.SKIPPED):  # frozen, or a shared tensor bypass_duplicate skipped
            bypassed = kind == R.SKIPPED and flags[i] & R.DUPLICATE and config & R.BYPASS_DUP
            rule = "frozen" if flags[i] & R.FROZEN and not bypassed else "shared (bypassed)"
        matched = [k for k in priority if k in table.names[i]] if kind == R.TRAINABLE else []
        switched = None
        if key >= 0:
            used.add(key)
            switched = R.rule_name(tuple(builtin_sigs[builtin_ids[i]].tolist()))
        hyper = dict(defaults)
        if gi is not None:
            hyper.update({k: v for k, v in groups[gi].items() if k != "params"})
        reports.append(ParamReport(
            name=name, group=gi, rule=rule, custom_key=keys[key] if key >= 0 else None,
            also_matched=[k for k in matched if key < 0 or k != keys[key]], switched_off=switched,
            hyper=hyper, shape=list(p.shape)))
    unused = [k for i, k in enumerate(keys) if i not in used]
    return Explanation(api, str(ctor.optimizer_cfg["type"]), _group_rows(groups, defaults), reports,
                       unused, build_s, followed)


def _group_rows(groups: list[dict], defaults: dict[str, Any]) -> list[dict[str, Any]]:
    rows = []
    for g in groups:
        row = dict(defaults)
        row.update({k: v for k, v in g.items() if k != "params"})
        row["num_params"] = len(g["params"])
        row["numel"] = int(np.sum([p.numel() for p in g["params"]])) if g["params"] else 0
        rows.append(row)
    return rows
