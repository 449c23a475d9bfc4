"""GradScaler helpers shared by the tests of the fused loss-scaled phase."""

from __future__ import annotations

from typing import Any

import torch

#: what GradScaler does to the gradients and the scale outside the fused phase
SCALER_PASSES = ("unscale_", "step", "update")


def cpu_scaler(loss_scale: str | float | dict) -> torch.amp.GradScaler:
    """The GradScaler a ``loss_scale`` config builds ('dynamic', a number, or GradScaler's
    arguments), on the CPU."""
    if loss_scale == "dynamic":
        return torch.amp.GradScaler("cpu")
    if isinstance(loss_scale, dict):
        return torch.amp.GradScaler("cpu", **loss_scale)
    return torch.amp.GradScaler("cpu", init_scale=loss_scale)


def refuse_scaler_passes(scaler: torch.amp.GradScaler) -> None:
    """Make ``scaler``'s unscale_, step and update raise: the fused phase must do without them."""
    for name in SCALER_PASSES:
        setattr(scaler, name, _refuse(name))


def _refuse(what: str) -> Any:
    def refuse(*args: Any, **kwargs: Any) -> None:
        raise AssertionError(f"the fused phase must not call GradScaler.{what}")

    return refuse
