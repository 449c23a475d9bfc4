"""Optimizer checkpoints in the reference layout.

mmengine's and mmcv's default constructors give every parameter its own group, so their
optimizer state dicts have one group (and one state entry) per parameter, in the order the
model is walked; custom constructors (layer decay, TSM) have groups of their own. A fastopt
optimizer built from the same model and config merges equal groups; these functions
translate between the two layouts by the reference's parameter order and group sizes,
which the fastopt constructor records with the optimizer as a ``ReferenceLayout``; only this
module reads it.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass
from typing import Any

import torch

from .grouping import freeze

__all__ = ["ReferenceLayout", "attach_layout", "layout_of", "load_per_param_state_dict",
           "per_param_state_dict", "reference_group_sizes"]


@dataclass(frozen=True)
class ReferenceLayout:
    """How the reference constructor would have grouped the parameters a fastopt optimizer holds:
    the parameters in the reference's order, and its groups in that order as
    ``(size, index of the merged group they went into)``."""

    params: list[torch.Tensor]
    groups: list[tuple[int, int]]


def attach_layout(optimizer: torch.optim.Optimizer, layout: ReferenceLayout) -> None:
    """Record ``layout`` with ``optimizer`` (the constructor does, right after building it)."""
    optimizer._fastopt_reference_layout = layout


def layout_of(optimizer: torch.optim.Optimizer) -> ReferenceLayout | None:
    """The reference layout recorded with ``optimizer``; None when a fastopt constructor did not
    build it."""
    return getattr(optimizer, "_fastopt_reference_layout", None)


def _layout(optimizer: torch.optim.Optimizer) -> tuple[list[torch.Tensor], list[tuple[int, int]]]:
    """The reference's parameter order and its groups as (size, merged group index)."""
    layout = layout_of(optimizer)
    if layout is None:
        raise ValueError("this optimizer was not built by a fastopt constructor: the layout of the "
                         "reference optimizer is unknown")
    return layout.params, layout.groups


def reference_group_sizes(optimizer: torch.optim.Optimizer) -> list[int] | None:
    """Sizes of the reference optimizer's param groups (None if not built by fastopt)."""
    layout = layout_of(optimizer)
    return None if layout is None else [size for size, _ in layout.groups]


def _hyper(group: dict) -> dict:
    return {key: v for key, v in group.items() if key not in ("params", "param_names")}


def per_param_state_dict(optimizer: torch.optim.Optimizer) -> dict[str, Any]:
    """The optimizer's state dict in the reference layout (one group per parameter, walk order,
    for the default constructors), loadable by the mmengine/mmcv-built optimizer of the same
    model and config."""
    order, layout = _layout(optimizer)
    sd = optimizer.state_dict()
    index = {id(p): i for i, p in enumerate(p for g in optimizer.param_groups for p in g["params"])}
    groups, state, k = [], {}, 0
    for size, merged in layout:
        hyper = copy.deepcopy(_hyper(sd["param_groups"][merged]))
        groups.append({**hyper, "params": list(range(k, k + size))})
        for p in order[k:k + size]:
            if index[id(p)] in sd["state"]:
                state[k] = sd["state"][index[id(p)]]
            k += 1
    return {"state": state, "param_groups": groups}


def load_per_param_state_dict(optimizer: torch.optim.Optimizer, state_dict: dict[str, Any]) -> None:
    """Load a state dict saved in the reference layout into a fastopt (merged-group) optimizer."""
    order, layout = _layout(optimizer)
    saved_groups = state_dict["param_groups"]
    sizes = [len(g["params"]) for g in saved_groups]
    expected = [size for size, _ in layout]
    if sizes != expected:
        shape = "one group per parameter" if set(expected) == {1} else f"groups of sizes {expected}"
        raise ValueError(f"expected {shape} for {len(order)} parameters, got {len(saved_groups)} groups "
                         f"of sizes {sizes}; was this saved from the same model and config?")
    hyper_of: dict[int, dict] = {}
    for (_, merged), saved in zip(layout, saved_groups):
        hyper = hyper_of.setdefault(merged, _hyper(saved))
        if freeze(hyper) != freeze(_hyper(saved)):
            raise ValueError(f"the saved hyperparameters of groups merged into group {merged} differ "
                             f"({_hyper(saved)} vs {hyper}); they cannot share one group")
    saved_ids = [pid for g in saved_groups for pid in g["params"]]
    position = {id(p): k for k, p in enumerate(order)}
    new_groups, new_state, flat = [], {}, 0
    for gi, group in enumerate(optimizer.param_groups):
        for p in group["params"]:
            k = position.get(id(p))
            if k is None:
                raise ValueError(f"parameter {flat} of group {gi} is not in the saved layout")
            if saved_ids[k] in state_dict["state"]:
                new_state[flat] = state_dict["state"][saved_ids[k]]
            flat += 1
        new_groups.append({**hyper_of.get(gi, {}), "params": list(range(flat - len(group["params"]), flat))})
    optimizer.load_state_dict({"state": new_state, "param_groups": new_groups})
