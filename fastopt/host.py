"""Types the installed host libraries register: optimizers, optimizer-wrapper constructors and
optimizer builders that mmengine's registries (under the current default scope: mmdet,
mmpretrain, mmseg, ...) or mmcv 1.x's registries hold and fastopt's own do not.

fastopt's registries consult these lookups after their own entries, so a config naming
``type='LARS'`` or ``constructor='SomeProjectConstructor'`` builds exactly as mmengine / mmcv
would build it. A host constructor is wrapped so that fastopt still merges its groups:

- one that keeps the default ``__call__`` and overrides ``add_params`` (the usual way to write
  a constructor) has its ``add_params`` called once; its per-parameter groups are merged and
  the optimizer is built by fastopt (SGD, Adam and AdamW step with fastopt's kernels);
- any other runs as it is, and the optimizer it built is rebuilt over merged groups.
"""

from __future__ import annotations

import copy
import importlib.util
import sys
from typing import Any

import torch
from torch import nn

from .checkpoint import ReferenceLayout, attach_layout
from .constructor import DefaultOptimizerConstructor, DefaultOptimWrapperConstructor
from .grouping import merge_param_groups_indexed
from .registry import OPTIM_WRAPPER_CONSTRUCTORS, OPTIMIZER_BUILDERS, OPTIMIZERS, mmengine_registry_get

__all__ = ["host_constructor", "mmcv_registry_get"]


def mmcv_registry_get(registry: str, name: str) -> Any | None:
    """``name`` in mmcv 1.x's ``mmcv.runner`` registry ``registry``, when a host has already
    imported ``mmcv.runner`` (fastopt never imports it on its own); None otherwise."""
    if "mmcv.runner" not in sys.modules:
        return None
    builder = sys.modules.get("mmcv.runner.optimizer.builder")
    reg = getattr(builder, registry, None)
    return None if reg is None else reg.get(name)


def _host_optimizer(name: str) -> Any | None:
    found = mmengine_registry_get("OPTIMIZERS", name)
    if found is None:
        found = mmcv_registry_get("OPTIMIZERS", name)
    return found if callable(found) else None


def _default_calls() -> set[Any]:
    """The ``__call__`` of the host default constructors (a subclass keeping it builds through
    ``add_params``)."""
    calls = set()
    if importlib.util.find_spec("mmengine") is not None:
        from mmengine.optim import DefaultOptimWrapperConstructor as MmengineDefault

        calls.add(MmengineDefault.__call__)
    builder = sys.modules.get("mmcv.runner.optimizer.default_constructor")
    if builder is not None:
        calls.add(builder.DefaultOptimizerConstructor.__call__)
    return calls


def _rebuild_merged(optimizer: torch.optim.Optimizer) -> torch.optim.Optimizer:
    """An optimizer like ``optimizer`` (same type, defaults, state-free) over merged groups;
    SGD/Adam/AdamW become fastopt's classes."""
    per_param = [dict(g) for g in optimizer.param_groups]
    defaults = dict(optimizer.defaults)
    merged, into = merge_param_groups_indexed(per_param, defaults)
    cls = type(optimizer)
    fast = OPTIMIZERS.get(cls.__name__)
    if cls in (torch.optim.SGD, torch.optim.Adam, torch.optim.AdamW) and fast is not None:
        cls = fast
    new = cls(merged, **{k: v for k, v in defaults.items() if k != "params"})
    attach_layout(new, ReferenceLayout.of_groups(per_param, into))
    return new


_ADAPTERS: dict[tuple[Any, str], type] = {}


def host_constructor(host_cls: Any, api: str) -> type:
    """A fastopt constructor class that runs the host constructor ``host_cls`` and merges the
    groups it decides (``api``: 'mmengine' wrapper constructor or 'mmcv' optimizer builder)."""
    key = (host_cls, api)
    if key in _ADAPTERS:
        return _ADAPTERS[key]
    base: Any = DefaultOptimWrapperConstructor if api == "mmengine" else DefaultOptimizerConstructor
    cfg_name = "optim_wrapper_cfg" if api == "mmengine" else "optimizer_cfg"
    by_add_params = host_cls.__call__ in _default_calls() and hasattr(host_cls, "add_params")

    class HostConstructor(base):  # type: ignore[misc, valid-type]
        __doc__ = f"{host_cls.__module__}.{host_cls.__qualname__}, its groups merged by fastopt."
        host_class = host_cls

        def __init__(self, *args: Any, **kwargs: Any) -> None:
            # (optim_wrapper_cfg | optimizer_cfg, paramwise_cfg=None), as the host's signature
            cfg = args[0] if args else kwargs.pop(cfg_name)
            paramwise_cfg = args[1] if len(args) > 1 else kwargs.pop("paramwise_cfg", None)
            self.host = host_cls(copy.deepcopy(cfg), copy.deepcopy(paramwise_cfg))
            super().__init__(cfg, paramwise_cfg, **kwargs)

        def _validate_cfg(self) -> None:  # the host constructor checked its config itself
            return None

        def add_params(self, params: list[dict], module: nn.Module, prefix: str = "",
                       is_dcn_module: Any = None) -> None:
            """The host constructor's per-parameter groups for ``module``."""
            self.host.add_params(params, module)

        def __call__(self, model: nn.Module) -> Any:
            if by_add_params:
                return super().__call__(model)
            built = self.host(model)
            if api == "mmcv":
                return _rebuild_merged(built)
            built.optimizer = _rebuild_merged(built.optimizer)
            return built

    HostConstructor.__name__ = HostConstructor.__qualname__ = f"Host{host_cls.__name__}"
    _ADAPTERS[key] = HostConstructor
    return HostConstructor


def _host_wrapper_constructor(name: str) -> Any | None:
    found = mmengine_registry_get("OPTIM_WRAPPER_CONSTRUCTORS", name)
    return None if found is None else host_constructor(found, "mmengine")


def _host_optimizer_builder(name: str) -> Any | None:
    found = mmcv_registry_get("OPTIMIZER_BUILDERS", name)
    return None if found is None else host_constructor(found, "mmcv")


OPTIMIZERS.add_fallback(_host_optimizer)
OPTIM_WRAPPER_CONSTRUCTORS.add_fallback(_host_wrapper_constructor)
OPTIMIZER_BUILDERS.add_fallback(_host_optimizer_builder)
