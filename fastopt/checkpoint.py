"""Optimizer checkpoints in the reference layout.

mmengine's and mmcv's default constructors give every parameter its own group, so their
optimizer state dicts have one group (and one state entry) per parameter, in the order the
model is walked; custom constructors (layer decay, TSM) have groups of their own. A fastopt
optimizer built from the same model and config merges equal groups; these functions
translate between the two layouts by the reference's parameter order and group sizes,
which the fastopt constructor records with the optimizer as a ``ReferenceLayout``; only this
module reads it.

mmengine up to 0.10.3 keeps each frozen parameter as a bare group, 0.10.4 on leaves it out;
checkpoints saved under either layout load whatever semantics the optimizer was built with
(the layout carries the other one). A ``base_param_settings`` entry (mmengine 0.8 on's
OptimWrapper) is not part of the optimizer's state and is ignored here.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass
from typing import Any

import torch

from .grouping import freeze, group_params

__all__ = ["SCHEDULER_GROUP_KEYS", "ReferenceLayout", "attach_layout", "is_reference_layout", "layout_of",
           "load_per_param_state_dict", "merged_scheduler_state", "per_param_scheduler_state",
           "per_param_state_dict", "reference_group_sizes"]


@dataclass(frozen=True)
class ReferenceLayout:
    """How the reference constructor would have grouped the parameters a fastopt optimizer holds:
    the parameters in the reference's order, and its groups in that order as
    ``(size, index of the merged group they went into)``; -1 for a frozen parameter this
    optimizer does not hold. ``other``: the same model under the other frozen-parameter
    layout of mmengine (bare groups up to 0.10.3, absent from 0.10.4), when it differs."""

    params: list[torch.Tensor]
    groups: list[tuple[int, int]]
    other: ReferenceLayout | None = None

    @classmethod
    def of_groups(cls, groups: list[dict], into: list[int]) -> ReferenceLayout:
        """The layout of reference ``groups`` (dicts with ``params``, in order) whose i-th went
        into merged group ``into[i]``."""
        return cls([p for g in groups for p in group_params(g)],
                   [(len(group_params(g)), i) for g, i in zip(groups, into)])

    def layouts(self) -> list[ReferenceLayout]:
        """This layout, then the other one when there is one."""
        return [self] if self.other is None else [self, self.other]


def attach_layout(optimizer: torch.optim.Optimizer, layout: ReferenceLayout) -> None:
    """Record ``layout`` with ``optimizer`` (the constructor does, right after building it)."""
    optimizer._fastopt_reference_layout = layout


def layout_of(optimizer: torch.optim.Optimizer) -> ReferenceLayout | None:
    """The reference layout recorded with ``optimizer``; None when a fastopt constructor did not
    build it."""
    return getattr(optimizer, "_fastopt_reference_layout", None)


def _layout(optimizer: torch.optim.Optimizer) -> ReferenceLayout:
    """The reference layout recorded with ``optimizer``; ValueError when there is none."""
    layout = layout_of(optimizer)
    if layout is None:
        raise ValueError("this optimizer was not built by a fastopt constructor: the layout of the "
                         "reference optimizer is unknown")
    return layout


def reference_group_sizes(optimizer: torch.optim.Optimizer) -> list[int] | None:
    """Sizes of the reference optimizer's param groups (None if not built by fastopt)."""
    layout = layout_of(optimizer)
    return None if layout is None else [size for size, _ in layout.groups]


def is_reference_layout(optimizer: torch.optim.Optimizer, sizes: list[int]) -> bool:
    """True when param groups of ``sizes`` are a reference layout of ``optimizer`` (either
    frozen-parameter layout), so ``load_per_param_state_dict`` can load them."""
    layout = layout_of(optimizer)
    return layout is not None and any(sizes == [size for size, _ in lay.groups] for lay in layout.layouts())


#: Per-parameter labels some constructors put in their groups (mmdet's ``param_names`` list,
#: mmpretrain's ``param_name``): names, not hyperparameters, so layouts match without them.
_LABELS = ("params", "param_names", "param_name")


def _hyper(group: dict) -> dict:
    return {key: v for key, v in group.items() if key not in _LABELS}


def per_param_state_dict(optimizer: torch.optim.Optimizer) -> dict[str, Any]:
    """The optimizer's state dict in the reference layout (one group per parameter, walk order,
    for the default constructors), loadable by the mmengine/mmcv-built optimizer of the same
    model and config."""
    layout = _layout(optimizer)
    order = layout.params
    sd = optimizer.state_dict()
    index = {id(p): i for i, p in enumerate(p for g in optimizer.param_groups for p in g["params"])}
    groups, state, k = [], {}, 0
    for size, merged in layout.groups:
        hyper = copy.deepcopy(_hyper(sd["param_groups"][merged]))
        groups.append({**hyper, "params": list(range(k, k + size))})
        for p in order[k:k + size]:
            if index[id(p)] in sd["state"]:
                state[k] = sd["state"][index[id(p)]]
            k += 1
    return {"state": state, "param_groups": groups}


def load_per_param_state_dict(optimizer: torch.optim.Optimizer, state_dict: dict[str, Any]) -> None:
    """Load a state dict saved in the reference layout into a fastopt (merged-group) optimizer."""
    main = _layout(optimizer)
    saved_groups = state_dict["param_groups"]
    sizes = [len(g["params"]) for g in saved_groups]
    chosen = next((lay for lay in main.layouts() if sizes == [size for size, _ in lay.groups]), None)
    if chosen is None:
        shapes = []
        for lay in main.layouts():
            expected = [size for size, _ in lay.groups]
            shape = "one group per parameter" if set(expected) == {1} else f"groups of sizes {expected}"
            shapes.append(f"{shape} for {len(lay.params)} parameters")
        raise ValueError(f"expected {' or '.join(shapes)}, got {len(saved_groups)} groups of sizes {sizes}; "
                         "was this saved from the same model and config?")
    hyper_of: dict[int, dict] = {}
    for (_, merged), saved in zip(chosen.groups, saved_groups):
        if merged < 0:  # a frozen parameter's bare group: this optimizer does not hold it
            continue
        hyper = hyper_of.setdefault(merged, _hyper(saved))
        if freeze(hyper) != freeze(_hyper(saved)):
            raise ValueError(f"the saved hyperparameters of groups merged into group {merged} differ "
                             f"({_hyper(saved)} vs {hyper}); they cannot share one group")
    saved_ids = [pid for g in saved_groups for pid in g["params"]]
    position = {id(p): k for k, p in enumerate(chosen.params)}
    held = {id(p) for p in main.params}  # a frozen parameter the saved layout leaves out has no state
    new_groups, new_state, flat = [], {}, 0
    for gi, group in enumerate(optimizer.param_groups):
        for p in group["params"]:
            k = position.get(id(p))
            if k is None and id(p) not in held:
                raise ValueError(f"parameter {flat} of group {gi} is not in the saved layout")
            if k is not None and saved_ids[k] in state_dict["state"]:
                new_state[flat] = state_dict["state"][saved_ids[k]]
            flat += 1
        # a group only of parameters the saved layout leaves out keeps its hyperparameters
        hyper = hyper_of[gi] if gi in hyper_of else _hyper(group)
        new_groups.append({**hyper, "params": list(range(flat - len(group["params"]), flat))})
    optimizer.load_state_dict({"state": new_state, "param_groups": new_groups})


#: The entries of a param scheduler's state that hold one value per param group: mmengine's
#: ``_ParamScheduler`` (``base_values``, ``_last_value``; ``min_values`` of ReduceOnPlateau) and
#: torch's ``LRScheduler`` (``base_lrs``, ``_last_lr``; ``min_lrs`` of ReduceLROnPlateau,
#: ``max_lrs`` of CyclicLR). The states of a scheduler's children (torch's SequentialLR and
#: ChainedScheduler keep them under ``_schedulers``) are mapped the same way.
SCHEDULER_GROUP_KEYS = ("base_values", "_last_value", "min_values",
                        "base_lrs", "_last_lr", "min_lrs", "max_lrs")


def _per_group_entries(state: dict[str, Any], count: int) -> list[str]:
    return [k for k in SCHEDULER_GROUP_KEYS if isinstance(state.get(k), list) and len(state[k]) == count]


def _with_children(state: dict[str, Any], mapped: dict[str, Any], each: Any) -> dict[str, Any]:
    children = state.get("_schedulers")
    if isinstance(children, list) and all(isinstance(c, dict) for c in children):
        return {**mapped, "_schedulers": [each(c) for c in children]}
    return mapped


def merged_scheduler_state(optimizer: torch.optim.Optimizer, state: dict[str, Any],
                           trailing: int = 0) -> dict[str, Any]:
    """A param scheduler's state saved against the reference optimizer's groups (one value per
    reference group in ``SCHEDULER_GROUP_KEYS``), with those lists taken onto ``optimizer``'s
    merged groups: each merged group gets the value of the first reference group merged into it
    (they all hold the same one). ``trailing``: entries the scheduler keeps after the
    optimizer's groups (mmengine's ``OptimWrapper`` shows its ``base_param_settings`` as one
    more group), kept at the end. Any other state (this optimizer's own layout, or no
    recorded layout) comes back as it is."""
    layout = layout_of(optimizer)
    if layout is None:
        return state
    merged_count = len(optimizer.param_groups)
    mapped = state
    for lay in layout.layouts():
        count = len(lay.groups)
        keys = _per_group_entries(state, count + trailing)
        if count == merged_count or not keys or _per_group_entries(state, merged_count + trailing):
            continue
        first: dict[int, int] = {}
        for j, (_, merged) in enumerate(lay.groups):
            first.setdefault(merged, j)
        if any(gi not in first for gi in range(merged_count)):
            continue  # a merged group no saved group went into: nothing to take its value from
        mapped = {**state, **{k: [state[k][first[gi]] for gi in range(merged_count)] + state[k][count:]
                              for k in keys}}
        break
    return _with_children(state, mapped, lambda child: merged_scheduler_state(optimizer, child, trailing))


def per_param_scheduler_state(optimizer: torch.optim.Optimizer, state: dict[str, Any],
                              trailing: int = 0) -> dict[str, Any]:
    """A param scheduler's state over ``optimizer``'s merged groups written for the reference
    optimizer's groups (each reference group the value of the merged group it went into), the
    ``trailing`` entries as in :func:`merged_scheduler_state`: what ``per_param_state_dict`` is
    to the optimizer's state, for going back to the reference constructor."""
    layout = _layout(optimizer)
    merged_count = len(optimizer.param_groups)
    keys = _per_group_entries(state, merged_count + trailing)
    mapped = {**state, **{k: [state[k][merged] for _, merged in layout.groups] + state[k][merged_count:]
                          for k in keys}}
    return _with_children(state, mapped, lambda child: per_param_scheduler_state(optimizer, child, trailing))
