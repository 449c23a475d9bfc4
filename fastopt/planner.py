"""The per-parameter plan: which rule applies to each parameter of a model (one walk, one
native call) and the hyperparameters each outcome sets, computed as the reference does."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
from torch import nn

from . import _core
from ._report import host_warning
from ._rules import (
    BYPASS_DUP,
    DUPLICATE,
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
from ._walk import ParamTable, walk
from .errors import MissingLrError
from .semantics import Semantics

__all__ = ["GroupPlan", "Planner"]


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

    def skip_messages(self, mmengine: bool, keep_frozen: bool, bypass_duplicate: bool) -> list[str]:
        """What the reference says of each parameter it leaves out, in model order: a shared
        tensor ``bypass_duplicate`` skips ('<module> is duplicate. It is skipped since
        bypass_duplicate=True', both references) and, from mmengine 0.10.4 on, a frozen one
        ('<name> is skipped since its requires_grad=False')."""
        flags = self.table.flag_array()
        out = []
        for i in np.flatnonzero(self.kinds() == SKIPPED).tolist():
            name = self.table.names[i]
            if flags[i] & FROZEN:
                if mmengine and not keep_frozen:
                    out.append(f"{name} is skipped since its requires_grad=False")
            elif flags[i] & DUPLICATE and bypass_duplicate:
                module = name.rpartition(".")[0]
                out.append(f"{module} is duplicate. It is skipped since bypass_duplicate=True")
        return out

    def unused_keys_message(self) -> str | None:
        """The warning for custom keys that match no trainable parameter (most likely typos)."""
        used = {sig[0] for sig in self.signatures if sig[0] >= 0}
        unused = [k for i, k in enumerate(self.keys) if i not in used]
        if not unused:
            return None
        return (f"custom_keys {unused} match no trainable parameter; check for typos "
                "(a key matches when it is a substring of 'prefix.name')")


class Planner:
    """Decides a model's parameters for one paramwise_cfg, base lr and weight decay under one
    host's semantics (mmengine's when ``mmengine``, else mmcv 1.x's)."""

    def __init__(self, paramwise_cfg: dict, base_lr: Any, base_wd: Any, mmengine: bool,
                 semantics: Semantics, config_bits: int | None = None) -> None:
        self.paramwise_cfg = paramwise_cfg
        self.base_lr = base_lr
        self.base_wd = base_wd
        self.mmengine = mmengine
        self.semantics = semantics
        self._config_bits = config_bits  # (a constructor's own, when it decides them)

    def config_bits(self) -> int:
        """The ConfigFlag bits (``_rules.py``) this config and semantics set (or those given)."""
        if self._config_bits is not None:
            return self._config_bits
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
            raise MissingLrError(
                f"{why} sets the lr of {param_name!r} as a multiple of the optimizer's lr, "
                "but the optimizer config has no 'lr'"
            )
        return self.base_lr

    def overrides(self, sig: tuple[int, int, int, int], keys: list[str], example: str) -> dict | None:
        """Hyperparameters a signature sets, computed exactly as the reference computes them
        (None: the parameter is in no group; ``example`` names one parameter for errors)."""
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

    def report(self, plan: GroupPlan, unused_keys: bool = True) -> None:
        """Say what the reference says of the plan's skipped parameters, and warn about unused
        custom keys, through the host's channel (``host_warning``)."""
        bypass = bool(self.paramwise_cfg.get("bypass_duplicate", False))
        for message in plan.skip_messages(self.mmengine, self.semantics.keep_frozen, bypass):
            host_warning(message, self.mmengine)
        unused = plan.unused_keys_message() if unused_keys else None
        if unused is not None:
            host_warning(unused, self.mmengine)

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
            self.overrides(sig, keys, table.display_name(int(first_of[s])))
            for s, sig in enumerate(signatures)
        ]
        return GroupPlan(table, ids, signatures, overrides, keys)
