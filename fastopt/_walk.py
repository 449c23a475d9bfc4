"""One walk of a model, in the order mmcv/mmengine's ``add_params`` visits it."""

from __future__ import annotations

import functools
import glob
import importlib.util
import os
from collections.abc import Iterator
from dataclasses import dataclass, field

import numpy as np
from torch import Tensor, nn
from torch.nn.modules.batchnorm import _BatchNorm
from torch.nn.modules.instancenorm import _InstanceNorm

from ._rules import (
    CONV_OFFSET,
    DUPLICATE,
    FROZEN,
    IN_DCN,
    IS_BIAS,
    IS_CONV2D,
    IS_DWCONV,
    IS_FLAT,
    IS_NORM,
)

#: Module classes whose parameters the norm rules apply to (as both references).
NORM_TYPES: tuple[type, ...] = (_BatchNorm, _InstanceNorm, nn.GroupNorm, nn.LayerNorm)

_DEFAULT_NAMED_PARAMETERS = nn.Module.named_parameters
_DEFAULT_NAMED_CHILDREN = nn.Module.named_children


def _compiled_mmcv_ops() -> str | None:
    """The folder of mmcv's compiled ops (``mmcv._ext``) when they are installed, else None; found
    without importing mmcv, as ``pkgutil.find_loader('mmcv._ext')`` finds them for the references."""
    spec = importlib.util.find_spec("mmcv")
    if spec is None or not spec.submodule_search_locations:
        return None
    for folder in spec.submodule_search_locations:
        if glob.glob(os.path.join(folder, "_ext*")):
            return folder
    return None


@functools.cache
def dcn_types() -> tuple[type, ...]:
    """mmcv.ops deformable conv classes when mmcv-full's compiled ops are installed, else ().

    As in both references (mmcv 1.7.2's ``check_ops_exist()``, mmengine 0.10.7's
    ``mmcv_full_available()``), present compiled ops mean ``from mmcv.ops import DeformConv2d,
    ModulatedDeformConv2d``; when that import fails the references fail, and so does this, with
    the cause named, instead of building without the DCN rules.
    """
    folder = _compiled_mmcv_ops()
    if folder is None:
        return ()
    try:
        from mmcv.ops import DeformConv2d, ModulatedDeformConv2d
    # a broken mmcv-full build: an extension that does not load (ImportError) or lacks an op
    # mmcv.ops asks for (mmcv's ext_loader asserts each one)
    except (ImportError, AssertionError) as exc:
        error = type(exc)(
            f"mmcv's compiled ops are installed ({folder}), so the DCN rules apply, but "
            f"'from mmcv.ops import DeformConv2d, ModulatedDeformConv2d' fails: "
            f"{type(exc).__name__}: {exc}. mmcv's and mmengine's own constructors fail the same "
            "way here; install an mmcv-full built for this torch (and a torchvision mmcv.runner "
            "can import), or uninstall it to build without the DCN rules")
        if isinstance(exc, ImportError) and isinstance(error, ImportError):
            error.name, error.path = exc.name, exc.path
        raise error from exc
    return (DeformConv2d, ModulatedDeformConv2d)


@dataclass
class ParamTable:
    """Parameters in visiting order with the names the references match and their facts."""

    params: list[Tensor] = field(default_factory=list)
    names: list[str] = field(default_factory=list)  # f"{prefix}.{name}", as matched
    flags: list[int] = field(default_factory=list)
    first_seen: dict[int, int] = field(default_factory=dict)  # index of a duplicate -> first

    def flag_array(self) -> np.ndarray:
        """Flags as the uint32 array the core takes."""
        return np.asarray(self.flags, dtype=np.uint32)

    def display_name(self, i: int) -> str:
        """The parameter's dotted name without the leading dot of top-level ones."""
        name = self.names[i]
        return name[1:] if name.startswith(".") else name


def _own_parameters(module: nn.Module) -> Iterator[tuple[str, Tensor]]:
    if type(module).named_parameters is not _DEFAULT_NAMED_PARAMETERS:
        yield from module.named_parameters(recurse=False)
        return
    memo: set[int] = set()
    for name, p in module._parameters.items():
        if p is None or id(p) in memo:
            continue
        memo.add(id(p))
        yield name, p


def own_children(module: nn.Module) -> list[tuple[str, nn.Module]]:
    if type(module).named_children is not _DEFAULT_NAMED_CHILDREN:
        return list(module.named_children())
    memo: set[int] = set()
    out = []
    for name, child in module._modules.items():
        if child is None or id(child) in memo:
            continue
        memo.add(id(child))
        out.append((name, child))
    return out


def _type_info(cls: type, dcn: tuple[type, ...]) -> tuple[int, bool, bool, bool]:
    """(flags implied by the class, is Conv2d, is a DCN, walks with nn.Module's own methods)."""
    base = IS_NORM if issubclass(cls, NORM_TYPES) else 0
    conv = issubclass(cls, nn.Conv2d)
    if conv:
        base |= IS_CONV2D
    default = (cls.named_parameters is _DEFAULT_NAMED_PARAMETERS
               and cls.named_children is _DEFAULT_NAMED_CHILDREN)
    return base, conv, bool(dcn) and issubclass(cls, dcn), default


def walk(
    module: nn.Module,
    prefix: str = "",
    in_dcn: bool = False,
    seen: dict[int, int] | None = None,
    dcn: tuple[type, ...] | None = None,
    recurse: bool = True,
) -> ParamTable:
    """Collect every parameter under ``module`` in reference order (pre-order, own params first).

    ``seen`` maps ``id(tensor)`` to its first index for tensors visited before
    (a caller's earlier groups use -1); repeats are flagged ``DUPLICATE``. With
    ``recurse=False`` only ``module``'s own parameters are collected.
    """
    dcn = dcn_types() if dcn is None else dcn
    seen = {} if seen is None else seen
    table = ParamTable()
    params, names, flags, first_seen = table.params, table.names, table.flags, table.first_seen
    infos: dict[type, tuple[int, bool, bool, bool]] = {}
    stack: list[tuple[nn.Module, str, bool]] = [(module, prefix, in_dcn)]
    while stack:
        mod, pre, dcn_parent = stack.pop()
        cls = type(mod)
        info = infos.get(cls)
        if info is None:
            info = infos[cls] = _type_info(cls, dcn)
        base, conv, is_dcn, default = info
        if conv and mod.in_channels == mod.groups:
            base |= IS_DWCONV
        if dcn_parent:
            base |= IN_DCN
        if "conv_offset" in pre:
            base |= CONV_OFFSET
        if default:
            own = mod._parameters
            items = own.items() if len(own) < 2 else _own_parameters(mod)
        else:
            items = mod.named_parameters(recurse=False)
        for name, p in items:
            if p is None:
                continue
            f = base
            if name == "bias":
                f |= IS_BIAS
            if p.ndim == 1:
                f |= IS_FLAT
            if not p.requires_grad:
                f |= FROZEN
            index = len(params)
            first = seen.setdefault(id(p), index)
            if first != index:
                f |= DUPLICATE
                first_seen[index] = first
            params.append(p)
            names.append(f"{pre}.{name}")
            flags.append(f)
        if not recurse:
            break
        children = mod._modules
        if not children:
            continue
        if len(children) > 1 or not default:
            children = dict(own_children(mod))
        for child_name, child in reversed(children.items()):
            if child is not None:
                stack.append((child, f"{pre}.{child_name}" if pre else child_name, is_dcn))
    return table
