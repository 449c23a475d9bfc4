"""Gradient clipping fused into the step: one native pass for the global norm, and the clip
coefficient applied by the step kernel as it reads each gradient.

torch's ``clip_grad_norm_`` computes one norm per tensor, the norm of those, and then
multiplies every gradient in place; fastopt reads the gradients once for the norm
(``total_norm``: short float block sums added in double, in an order that does not depend on
the thread count) and hands the coefficient to the optimizer's step (``step(grad_mult=...)``), whose
kernel multiplies each gradient as torch's in-place ``mul_`` would (writing it back only
under a loss scale, unscaled and clipped, as ``unscale_`` and an in-place clip leave it).
Which parameters a host clips, and whether the coefficient may go into the step
(``clips_all_it_steps``, ``steps_exactly``, ``clip_in_next_step``), is decided here too.
Given the same coefficient the update is bit-identical to clipping then stepping; the norm
itself can differ from torch's in the last bits, because the two sum in different orders.

>>> import torch
>>> grads = [torch.full((3,), 2.0), torch.full((1,), 2.0)]
>>> norm, nonfinite = total_norm(grads)
>>> float(norm), nonfinite
(4.0, False)
>>> round(float(clip_coefficient(norm, max_norm=1.0)), 6)   # 1 / (4 + 1e-6)
0.25
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from typing import Any

import numpy as np
import torch
from torch import Tensor

from . import _kernels
from ._core import _C
from ._kernels import is_sharded
from ._torch_compat import get_total_norm

__all__ = ["NormTable", "check_clip_grad", "clip_coefficient", "clip_in_next_step", "clips_all_it_steps",
           "coefficient_of", "fused_clip", "fused_clip_grads", "host_clipped", "native_norm_table",
           "stepped_params", "steps_exactly",
           "total_norm"]

#: The arguments torch's clip functions take, by clip type.
CLIP_KEYS = {"norm": {"max_norm", "norm_type", "error_if_nonfinite", "foreach"},
             "value": {"clip_value", "foreach"}}


def _norm_type(norm_type: Any) -> float:
    try:
        value = float(norm_type)
    except (TypeError, ValueError):
        raise ValueError(f"clip_grad norm_type must be a number or 'inf', got {norm_type!r}") from None
    if math.isnan(value) or value < 0:
        raise ValueError(f"clip_grad norm_type must be a non-negative number or inf, got {norm_type!r}")
    return value


def check_clip_grad(clip_type: str, kwargs: dict[str, Any]) -> None:
    """Reject a ``clip_grad`` config torch would not take, or that makes no sense, with a
    message naming the key: unknown keys, a missing or non-positive (or NaN) ``max_norm`` /
    ``clip_value``, a norm type that is not a non-negative number."""
    if clip_type not in CLIP_KEYS:
        raise ValueError(f"clip_grad type must be 'norm' or 'value', got {clip_type!r}")
    unknown = sorted(set(kwargs) - CLIP_KEYS[clip_type])
    if unknown:
        raise TypeError(f"clip_grad (type {clip_type!r}) got unexpected keys {unknown}; "
                        f"torch takes {sorted(CLIP_KEYS[clip_type])}")
    limit = "max_norm" if clip_type == "norm" else "clip_value"
    if limit not in kwargs:
        raise KeyError(f"clip_grad (type {clip_type!r}) needs {limit!r}")
    value = kwargs[limit]
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not value > 0:
        raise ValueError(f"clip_grad {limit} must be a positive number, got {value!r}")
    if "norm_type" in kwargs:
        _norm_type(kwargs["norm_type"])


#: (pointers, sizes, dtype codes) of the gradients the native norm pass reads
NormTable = tuple[np.ndarray, np.ndarray, np.ndarray]

def native_norm_table(grads: list[Tensor], norm_type: float) -> NormTable | None:
    """What the native norm pass needs of ``grads``, or None when it does not take them: only
    plain (not sharded) contiguous CPU tensors of a kernel dtype, the 2- or inf-norm, and no
    empty tensor for the inf-norm (which torch refuses: let it say so). One native pass reads
    them all (``_kernels.tensor_table``)."""
    if _C is None or norm_type not in (2.0, math.inf) or not grads:
        return None
    table = _kernels.tensor_table(grads if type(grads) is list else list(grads))
    if table is None or (norm_type == math.inf and not table[1].all()):
        return None
    return table


def total_norm(grads: list[Tensor], norm_type: float | str = 2.0, divide_by: float = 1.0,
               table: NormTable | None = None) -> tuple[Tensor, bool | None]:
    """The norm of all ``grads`` taken together, as ``torch.nn.utils.get_total_norm`` gives it
    (a tensor of the first gradient's dtype), and whether any gradient holds inf/NaN. Native
    (one pass, double accumulation) where :func:`native_norm_table` takes the gradients (pass its
    ``table`` when already gathered); torch's otherwise, sharded (FSDP2) gradients included,
    whose norm spans every rank's shard (then the flag is None: not looked at). ``divide_by`` (a
    loss scale still in the gradients) divides the norm before it is rounded to the gradients'
    dtype."""
    p = _norm_type(norm_type)
    if not grads:
        return torch.tensor(0.0), False
    if table is not None and (p not in (2.0, math.inf) or (p == math.inf and not table[1].all())):
        table = None  # a norm the kernel does not take; an empty gradient: torch refuses the inf-norm
    if table is None:
        table = native_norm_table(grads, p)
    if table is None:
        norm = get_total_norm(grads, p)
        norm = norm.full_tensor() if is_sharded(norm) else norm  # type: ignore[attr-defined]
        return (norm if divide_by == 1.0 else norm / divide_by), None
    norm, nonfinite = _C.grad_norm(*table, p, num_threads=torch.get_num_threads())
    return torch.tensor(norm / divide_by, dtype=grads[0].dtype), bool(nonfinite)


def clip_coefficient(norm: Tensor, max_norm: float) -> Tensor:
    """torch's clip coefficient, computed as ``clip_grad_norm_`` computes it:
    ``max_norm / (norm + 1e-6)`` in the norm's dtype, at most 1."""
    return torch.clamp(max_norm / (norm + 1e-6), max=1.0)


# ------------------------------------------------------------------ clipping into the step
def fused_clip(params: list[Tensor], clip_grad: dict[str, Any], loss_scale: float | None = None
               ) -> tuple[Tensor, Tensor]:
    """``(norm, coefficient)`` of clipping ``params``' gradients by norm with torch's arguments
    (``max_norm``, ``norm_type``, ``error_if_nonfinite``; ``foreach`` has nothing to choose):
    one native norm pass, the coefficient for the optimizer's step to apply. With a
    ``loss_scale`` the gradients are still scaled: the norm is divided by it."""
    return fused_clip_grads([p.grad for p in params], clip_grad, loss_scale=loss_scale)


def fused_clip_grads(grads: list[Tensor], clip_grad: dict[str, Any], table: NormTable | None = None,
                     loss_scale: float | None = None) -> tuple[Tensor, Tensor]:
    """``fused_clip`` of the gradients themselves, their native ``table`` passed where gathered."""
    norm_type = clip_grad.get("norm_type", 2.0)
    norm, _ = total_norm(grads, norm_type, 1.0 if loss_scale is None else loss_scale, table=table)
    return norm, coefficient_of(norm, clip_grad)


def coefficient_of(norm: Tensor, clip_grad: dict[str, Any]) -> Tensor:
    """The clip coefficient of ``norm`` under ``clip_grad`` (torch's error on a non-finite norm
    when ``error_if_nonfinite``)."""
    if clip_grad.get("error_if_nonfinite") and not bool(torch.isfinite(norm)):
        raise RuntimeError(
            f"The total norm of order {float(clip_grad.get('norm_type', 2.0))} for gradients from "
            "`parameters` is non-finite, so it cannot be clipped. To disable this error and scale the "
            "gradients by the non-finite norm anyway, set `error_if_nonfinite=False`")
    return clip_coefficient(norm, clip_grad["max_norm"])


def host_clipped(params: Iterable[Tensor]) -> list[Tensor]:
    """What mmengine's and mmcv's clipping covers of ``params``: the parameters that require
    grad and have a gradient, in order."""
    return [p for p in params if p.requires_grad and p.grad is not None]


def stepped_params(optimizer: torch.optim.Optimizer) -> list[Tensor]:
    """The parameters of ``optimizer`` that have a gradient (what its step reads), in order."""
    return [p for g in optimizer.param_groups for p in g["params"] if p.grad is not None]


def clip_in_next_step(optimizer: torch.optim.Optimizer, params: Any, clip_grad: dict[str, Any]
                      ) -> Tensor | None:
    """Clip by norm into a fastopt optimizer's next step: the norm of every parameter in
    ``params`` that requires grad and has one (None when there is none), its coefficient
    handed to ``optimizer.clip_next_step``. What the host plug-ins do in place of torch's
    ``clip_grad_norm_``."""
    grads_of = host_clipped(params)
    if not grads_of:
        return None
    if not steps_exactly(optimizer, grads_of):  # the coefficient would reach other gradients
        return torch.nn.utils.clip_grad_norm_(grads_of, **clip_grad)
    norm, coefficient = fused_clip(grads_of, clip_grad)
    optimizer.clip_next_step(coefficient)  # type: ignore[attr-defined]
    return norm


def clips_all_it_steps(optimizer: torch.optim.Optimizer) -> bool:
    """Whether every parameter with a gradient in ``optimizer`` requires grad: then clipping what
    requires grad (mmengine's and mmcv's rule) covers every gradient the step reads, and the
    coefficient may go into the step."""
    return all(p.requires_grad for p in stepped_params(optimizer))


def steps_exactly(optimizer: torch.optim.Optimizer, clipped: list[Tensor]) -> bool:
    """Whether the parameters with a gradient in ``optimizer`` are exactly ``clipped``: then a
    clip coefficient the step applies to every gradient it reads clips just those."""
    stepped = stepped_params(optimizer)
    return len(stepped) == len(clipped) and {id(p) for p in stepped} == {id(p) for p in clipped}
