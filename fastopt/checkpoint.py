"""Optimizer checkpoints in the reference layout: one param group per parameter.

mmengine's and mmcv's constructors give every parameter its own group, so their optimizer
state dicts have one group (and one state entry) per parameter, in the order the model is
walked. A fastopt optimizer built from the same model and config merges those groups;
these functions translate between the two layouts by that walk order, which the
fastopt constructor records on the optimizer.
"""

from __future__ import annotations

import copy
from typing import Any

import torch

from .grouping import freeze

__all__ = ["load_per_param_state_dict", "per_param_state_dict"]


def _order(optimizer: torch.optim.Optimizer) -> list[torch.Tensor]:
    order = getattr(optimizer, "_fastopt_param_order", None)
    if order is None:
        raise ValueError("this optimizer was not built by a fastopt constructor: the per-parameter "
                         "layout of the reference is unknown")
    return order


def per_param_state_dict(optimizer: torch.optim.Optimizer) -> dict[str, Any]:
    """The optimizer's state dict in the reference layout (one group per parameter, walk order),
    loadable by the mmengine/mmcv-built optimizer of the same model and config."""
    order = _order(optimizer)
    sd = optimizer.state_dict()
    index = {id(p): i for i, p in enumerate(p for g in optimizer.param_groups for p in g["params"])}
    group_of = {id(p): gi for gi, g in enumerate(optimizer.param_groups) for p in g["params"]}
    groups, state = [], {}
    for k, p in enumerate(order):
        hyper = {key: v for key, v in sd["param_groups"][group_of[id(p)]].items()
                 if key not in ("params", "param_names")}
        groups.append({**copy.deepcopy(hyper), "params": [k]})
        if index[id(p)] in sd["state"]:
            state[k] = sd["state"][index[id(p)]]
    return {"state": state, "param_groups": groups}


def load_per_param_state_dict(optimizer: torch.optim.Optimizer, state_dict: dict[str, Any]) -> None:
    """Load a state dict saved in the reference layout into a fastopt (merged-group) optimizer."""
    order = _order(optimizer)
    saved_groups = state_dict["param_groups"]
    if len(saved_groups) != len(order) or any(len(g["params"]) != 1 for g in saved_groups):
        raise ValueError(f"expected one group per parameter for {len(order)} parameters, got "
                         f"{len(saved_groups)} groups; was this saved from the same model and config?")
    saved_index = {id(p): k for k, p in enumerate(order)}
    saved_ids = [g["params"][0] for g in saved_groups]
    new_groups, new_state, flat = [], {}, 0
    for gi, group in enumerate(optimizer.param_groups):
        hyper = None
        for p in group["params"]:
            k = saved_index.get(id(p))
            if k is None:
                raise ValueError(f"parameter {flat} of group {gi} is not in the saved layout")
            saved = {key: v for key, v in saved_groups[k].items() if key not in ("params", "param_names")}
            if hyper is None:
                hyper = saved
            elif freeze(saved) != freeze(hyper):
                raise ValueError(f"the saved hyperparameters of parameters merged into group {gi} differ "
                                 f"({saved} vs {hyper}); they cannot share one group")
            if saved_ids[k] in state_dict["state"]:
                new_state[flat] = state_dict["state"][saved_ids[k]]
            flat += 1
        new_groups.append({**(hyper or {}), "params": list(range(flat - len(group["params"]), flat))})
    optimizer.load_state_dict({"state": new_state, "param_groups": new_groups})
