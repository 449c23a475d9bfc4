"""Param groups built from a plan: parameters with equal hyperparameters merged into one
group (model order kept inside each), the reference's per-parameter layout for checkpoints,
the defaults every group inherits, and the optimizer built over the groups."""

from __future__ import annotations

import inspect
import logging
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from ._rules import DUPLICATE, DUPLICATE_ERROR, FROZEN, SKIPPED
from .checkpoint import ReferenceLayout, attach_layout
from .grouping import merge_hypers
from .planner import GroupPlan
from .registry import SCOPE_KEY, Registry, build_from_cfg

logger = logging.getLogger("fastopt")

__all__ = ["Construction", "build_optimizer_over", "groups_from_plan", "optimizer_defaults",
           "reference_layout"]


@dataclass
class Construction:
    """What one construction decided: the groups handed to the optimizer, the defaults every
    group inherits, the rules' per-parameter plan (None where no paramwise_cfg or a subclass's
    own ``add_params`` decided) and the reference's layout, for checkpoints."""

    groups: list
    defaults: dict[str, Any]
    plan: GroupPlan | None
    layout: ReferenceLayout


def optimizer_defaults(optimizer_cls: Any, optimizer_cfg: dict) -> dict[str, Any]:
    """Values every group gets unless it overrides them: the class signature's defaults, then
    the optimizer config's entries."""
    defaults: dict[str, Any] = {}
    try:
        sig = inspect.signature(optimizer_cls)
    except (TypeError, ValueError):
        sig = None
    if sig is not None:
        for name, p in sig.parameters.items():
            if p.default is not inspect.Parameter.empty:
                defaults[name] = p.default
    defaults.update({k: v for k, v in optimizer_cfg.items() if k not in ("type", SCOPE_KEY)})
    return defaults


def groups_from_plan(plan: GroupPlan, defaults: dict[str, Any]) -> tuple[list[dict], np.ndarray]:
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


def reference_layout(plan: GroupPlan, group_of_param: np.ndarray, mmengine: bool) -> ReferenceLayout:
    """The reference's layout: one group per kept parameter, in walk order. For mmengine, also
    the layout of the releases on the other side of 0.10.4 (frozen parameters as bare groups,
    or absent), so that checkpoints of either load."""
    params = plan.table.params
    kept = plan.kinds() != SKIPPED

    def layout(mask: np.ndarray, other: ReferenceLayout | None = None) -> ReferenceLayout:
        idx = np.flatnonzero(mask).tolist()
        return ReferenceLayout([params[i] for i in idx], [(1, g) for g in group_of_param[idx].tolist()],
                               other)

    flags = plan.table.flag_array()
    toggled = (flags & FROZEN != 0) & (flags & DUPLICATE == 0)
    if not mmengine or not toggled.any():
        return layout(kept)
    return layout(kept, layout(kept ^ toggled))


def build_optimizer_over(optimizer_cls: Any, optimizer_cfg: dict, built: Construction,
                         first_arg: str = "params") -> torch.optim.Optimizer:
    """``optimizer_cls`` over the construction's groups (handed as ``first_arg``), with the
    config's other entries, and the reference's layout attached so checkpoints map both ways."""
    cfg = {k: v for k, v in optimizer_cfg.items() if k not in ("type", SCOPE_KEY)}
    cfg[first_arg] = built.groups
    optimizer = build_from_cfg(dict(cfg, type=optimizer_cls), Registry("optimizer"))
    attach_layout(optimizer, built.layout)
    return optimizer
