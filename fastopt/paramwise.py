"""Validation of an optimizer config's numbers and its ``paramwise_cfg``: the structure and
multipliers the references check, and the stricter checks fastopt adds (docs/errors.md)."""

from __future__ import annotations

import difflib
import math
import numbers
from typing import Any

import torch

from ._report import host_warning
from ._rules import RULES

__all__ = ["check_multiplier", "validate_paramwise", "warn_unknown_keys"]


def check_multiplier(where: str, value: Any) -> None:
    """A multiplier (or base lr / weight decay) must be a finite non-negative real number."""
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise TypeError(f"{where} must be a number, got {value!r}")
    if math.isnan(value) or math.isinf(value) or value < 0:
        raise ValueError(f"{where} must be a finite non-negative number, got {value!r}")


def validate_paramwise(cfg: Any, base_lr: Any, base_wd: Any, mmengine: bool, *,
                       warn_unknown: bool = False) -> None:
    """Check ``cfg`` (a paramwise_cfg) against the optimizer's ``base_lr`` / ``base_wd`` with
    mmengine's (True) or mmcv 1.x's rules; ``warn_unknown``: warn about keys the default
    constructor does not read."""
    if not isinstance(cfg, dict):
        raise TypeError(f"paramwise_cfg should be None or a dict, but got {type(cfg)}")
    for name, value in (("lr", base_lr), ("weight_decay", base_wd)):
        if value is not None and not isinstance(value, torch.Tensor):
            check_multiplier(f"optimizer {name}", value)
    if warn_unknown:
        warn_unknown_keys(cfg, mmengine)
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
                    check_multiplier(f"custom_keys[{key!r}][{mult!r}]", value[mult])
            if base_wd is None and "decay_mult" in value:
                raise ValueError(
                    f"base_wd should not be None: custom_keys[{key!r}] sets decay_mult "
                    "but the optimizer config has no weight_decay"
                )
    for rule in RULES:
        if rule.key in cfg and (cfg[rule.key] is not None or not mmengine):
            check_multiplier(f"paramwise_cfg[{rule.key!r}]", cfg[rule.key])
    # the references check these three (not flat_decay_mult)
    wd_mults = [r.key for r in RULES if r.scales == "weight_decay" and r.mmcv and r.key in cfg]
    if wd_mults and base_wd is None:
        raise ValueError(
            f"base_wd should not be None: paramwise_cfg sets {', '.join(wd_mults)} "
            "but the optimizer config has no weight_decay"
        )


def warn_unknown_keys(cfg: dict, mmengine: bool) -> None:
    """A paramwise_cfg key the default constructor ignores is most likely a typo: warn (through
    the host's channel, ``host_warning``)."""
    known = {"custom_keys", "bypass_duplicate", *(r.key for r in RULES if mmengine or r.mmcv)}
    for key in cfg:
        if key not in known:
            hint = difflib.get_close_matches(str(key), sorted(known), n=1)
            tail = f"; did you mean {hint[0]!r}?" if hint else ""
            api = "mmengine's" if mmengine else "mmcv 1.x's"
            host_warning(f"paramwise_cfg key {key!r} is not used by {api} default constructor{tail}",
                         mmengine)
