"""What fastopt uses of torch that differs across the supported releases (2.1 to 2.14).

Every torch API newer than the floor, and every private one, is reached from here with a
fallback for the releases that lack it, so that the rest of the package reads one name:

- ``scalar_dtype()``: the dtype torch's optimizers give a new ``step`` counter
  (``torch.optim.optimizer._get_scalar_dtype`` where present);
- ``get_total_norm()``: ``torch.nn.utils.get_total_norm`` (torch >= 2.6), else the same norm
  of norms ``clip_grad_norm_`` takes;
- ``grad_scaler()`` / ``GRAD_SCALER_TYPES``: ``torch.amp.GradScaler`` (torch >= 2.3), else
  ``torch.cuda.amp.GradScaler``;
- ``DTensor``: ``torch.distributed.tensor.DTensor`` (torch >= 2.4), else the older
  ``torch.distributed._tensor`` one, else None;
- ``functional_kwargs()``: the keyword arguments torch's functional optimizer API takes on
  this release (``fused``, ``grad_scale``, ``has_complex``, ``decoupled_weight_decay`` came
  at different releases).

One private method of torch's classes is used as torch's own ``step`` uses it: each class's
``_init_group`` (the state torch's step creates, on every release from 2.1 to 2.14; torch's
AdamW before 2.7 takes an extra ``amsgrad`` argument). CI runs the torch tiers on 2.1.0,
2.5.1 and 2.13.0 against torch's classes.
"""

from __future__ import annotations

import inspect
import types
from collections import defaultdict
from collections.abc import Callable
from functools import cache
from typing import Any

import torch
from torch import Tensor

#: The oldest torch release fastopt supports (and tests in CI).
MIN_TORCH = (2, 1)


def torch_version(version: str | None = None) -> tuple[int, int]:
    """(major, minor) of ``version`` (default: the installed torch)."""
    parts = (version or torch.__version__).split("+")[0].split(".")
    return int(parts[0]), int("".join(c for c in parts[1] if c.isdigit()) or 0)


TORCH_VERSION = torch_version()


def check_torch_version(version: str | None = None) -> None:
    """Raise ImportError, in one line, on a torch older than :data:`MIN_TORCH`."""
    found = version or torch.__version__
    if torch_version(found) < MIN_TORCH:
        raise ImportError(f"fastopt needs torch>={MIN_TORCH[0]}.{MIN_TORCH[1]}; torch {found} is installed")


check_torch_version()


def scalar_dtype() -> torch.dtype:
    """The dtype torch's optimizers give a new ``step`` counter on the CPU: float32, or float64
    when the default dtype is float64."""
    try:
        from torch.optim.optimizer import _get_scalar_dtype
    except ImportError:  # older releases: the same rule, written out
        return torch.float64 if torch.get_default_dtype() == torch.float64 else torch.float32
    return _get_scalar_dtype()


def get_total_norm(grads: list[Tensor], norm_type: float) -> Tensor:
    """The norm of all ``grads`` together, as ``clip_grad_norm_`` takes it (the norm of the
    per-tensor norms, on the first gradient's device)."""
    fn = getattr(torch.nn.utils, "get_total_norm", None)
    if fn is not None:
        return fn(grads, norm_type)
    device = grads[0].device
    norms = [torch.linalg.vector_norm(g, norm_type) for g in grads]
    return torch.linalg.vector_norm(torch.stack([n.to(device) for n in norms]), norm_type)


def _scaler_types() -> tuple[type, ...]:
    types: list[type] = []
    for module in ("amp", "cuda.amp"):
        obj: Any = torch
        for part in module.split("."):
            obj = getattr(obj, part, None)
        cls = getattr(obj, "GradScaler", None)
        if isinstance(cls, type) and cls not in types:
            types.append(cls)
    return tuple(types)


#: The GradScaler classes this torch has (``torch.amp``'s first, where it exists).
GRAD_SCALER_TYPES: tuple[type, ...] = _scaler_types()
#: The GradScaler whose unscale_/step/update fastopt's fused AMP phase stands in for.
GRAD_SCALER: type | None = getattr(getattr(torch, "amp", None), "GradScaler", None) or (
    GRAD_SCALER_TYPES[0] if GRAD_SCALER_TYPES else None)


def grad_scaler(device_type: str, **kwargs: Any) -> Any:
    """A GradScaler for ``device_type``: ``torch.amp.GradScaler`` where this torch has it; on
    older releases CUDA's, and a clear error for other devices."""
    amp_scaler = getattr(getattr(torch, "amp", None), "GradScaler", None)
    if amp_scaler is not None:
        return amp_scaler(device_type, **kwargs)
    if device_type == "cuda":
        return torch.cuda.amp.GradScaler(**kwargs)
    raise RuntimeError(f"loss scaling on {device_type!r} needs torch.amp.GradScaler (torch>=2.3); "
                       f"torch {torch.__version__} has a GradScaler for CUDA only")


def _dtensor_type() -> type | None:
    for module in ("torch.distributed.tensor", "torch.distributed._tensor"):
        try:
            mod = __import__(module, fromlist=["DTensor"])
        except ImportError:
            continue
        cls = getattr(mod, "DTensor", None)
        if isinstance(cls, type):
            return cls
    return None


#: torch's DTensor class (FSDP2 parameters), or None where this torch has none.
DTensor: type | None = _dtensor_type()


@cache
def functional_parameters(fn: Callable[..., Any]) -> frozenset[str]:
    """The parameter names of ``fn`` (a torch functional optimizer, or an optimizer's
    ``_init_group``) on this release."""
    return frozenset(inspect.signature(fn).parameters)


def functional_kwargs(fn: Callable[..., Any], **kwargs: Any) -> dict[str, Any]:
    """``kwargs`` less the keywords ``fn`` (a torch functional optimizer) does not take on this
    release; a dropped keyword must hold its neutral value (None or False), else ValueError."""
    known = functional_parameters(fn)
    out = {}
    for key, value in kwargs.items():
        if key in known:
            out[key] = value
        elif value is not None and value is not False:
            raise ValueError(f"torch {torch.__version__}'s {fn.__module__}.{fn.__name__} does not take "
                             f"{key}={value!r}")
    return out


@cache
def sgd_keeps_unused_buffers() -> bool:
    """Whether this torch's SGD records a ``momentum_buffer: None`` entry for a parameter it
    steps without momentum (torch 2.1 does; later releases keep no state for it). Read off
    ``torch.optim.SGD._init_group`` itself, the code torch's step runs."""
    p = torch.zeros(1)
    p.grad = torch.zeros(1)
    holder = types.SimpleNamespace(state=defaultdict(dict))
    bufs: list[Any] = []
    group = {"params": [p], "momentum": 0.0, "fused": None, "foreach": None, "differentiable": False}
    torch.optim.SGD._init_group(holder, group, [], [], bufs)
    return len(bufs) > 0


_MODE_ENABLED = getattr(torch._C, "_is_torch_function_mode_enabled", None)


def torch_function_mode_on() -> bool:
    """Whether a torch function mode is on (True where this torch cannot tell)."""
    return True if _MODE_ENABLED is None else bool(_MODE_ENABLED())


def _increment_takes_lists() -> bool:
    try:
        torch._C._increment_version([torch.zeros(1), torch.zeros(1)])
    except (TypeError, RuntimeError):  # (releases whose increment takes one tensor)
        return False
    return True


_INCREMENT_TAKES_LISTS = _increment_takes_lists()


def increment_versions(tensors: list[Tensor]) -> None:
    """torch's ``increment_version`` over ``tensors`` (one call where this torch takes a list);
    an inference tensor outside inference mode, which it skips, raises torch's own error first,
    as an in-place op on it does."""
    if not torch.is_inference_mode_enabled():
        for t in tensors:
            if t.is_inference():
                t.copy_(t)  # (refused before it runs; were it let through, it changes nothing)
    if _INCREMENT_TAKES_LISTS:
        torch._C._increment_version(tensors)
    else:
        for t in tensors:
            torch._C._increment_version(t)
