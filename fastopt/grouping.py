"""Merging per-parameter param groups into as few groups as exactness allows."""

from __future__ import annotations

from typing import Any

__all__ = ["freeze", "group_params", "merge_hypers", "merge_param_groups", "merge_param_groups_indexed"]


def freeze(value: Any) -> Any:
    """A hashable, type-strict stand-in for a hyperparameter value or dict.

    Types are part of the key so ``1`` and ``1.0`` (or ``True``) never merge:
    a merged group must keep every value exactly as the reference has it.
    """
    if isinstance(value, dict):
        return ("dict", tuple(sorted(((k, freeze(v)) for k, v in value.items()), key=repr)))
    if isinstance(value, (list, tuple)):
        return (type(value).__name__, tuple(freeze(v) for v in value))
    try:
        hash(value)
    except TypeError:
        return ("id", id(value))
    return (type(value).__name__, value)


def merge_param_groups(groups: list[dict], defaults: dict[str, Any] | None = None) -> list[dict]:
    """Merge groups whose hyperparameters (over ``defaults``) are equal, in first-seen order.

    Parameters keep their order inside each group. A tensor in two groups is an error.

    >>> import torch
    >>> a, b, c = (torch.nn.Parameter(torch.zeros(1)) for _ in range(3))
    >>> merged = merge_param_groups([{'params': [a], 'lr': 0.1}, {'params': [b]},
    ...                              {'params': [c], 'lr': 0.1}])
    >>> [(len(g['params']), g.get('lr')) for g in merged]
    [(2, 0.1), (1, None)]
    """
    return merge_param_groups_indexed(groups, defaults)[0]


def group_params(group: dict) -> list:
    """A param group's ``params`` as a list (torch also takes a single tensor there)."""
    params = group["params"]
    return [params] if hasattr(params, "data_ptr") else list(params)


def merge_hypers(hypers: list[dict[str, Any] | None], defaults: dict[str, Any] | None = None
                 ) -> tuple[list[dict[str, Any]], list[int]]:
    """The distinct hyperparameter dicts (equal over ``defaults`` means the same), in
    first-seen order, and for each input the index of its dict (-1 for None: in no group)."""
    defaults = defaults or {}
    out: list[dict[str, Any]] = []
    index: dict[Any, int] = {}
    into: list[int] = []
    for hyper in hypers:
        if hyper is None:
            into.append(-1)
            continue
        g = index.setdefault(freeze({**defaults, **hyper}), len(out))
        if g == len(out):
            out.append(hyper)
        into.append(g)
    return out, into


def merge_param_groups_indexed(groups: list[dict], defaults: dict[str, Any] | None = None
                               ) -> tuple[list[dict], list[int]]:
    """``merge_param_groups``, plus the index of the merged group each input group went into."""
    hypers, into = merge_hypers([{k: v for k, v in g.items() if k != "params"} for g in groups], defaults)
    out: list[dict] = [{"params": [], **h} for h in hypers]
    owner: dict[int, int] = {}
    for i, (group, g) in enumerate(zip(groups, into)):
        params = group_params(group)
        for p in params:
            first = owner.setdefault(id(p), i)
            if first != i:
                raise ValueError(
                    f"a parameter of shape {tuple(p.shape)} is in param group {first} and "
                    f"param group {i}; a parameter can be in only one group"
                )
        out[g]["params"].extend(params)
    return out, into
