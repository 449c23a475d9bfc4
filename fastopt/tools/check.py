"""``fastopt check``: build a config's optimizer with the installed reference and with fastopt,
and compare what every parameter gets.

The reference is mmengine's ``build_optim_wrapper`` for ``optim_wrapper=`` configs and mmcv
1.x's ``build_optimizer`` for ``optimizer=`` configs, the config's own ``constructor`` included
(resolved through the host registries under the config's scope). Every key of every
parameter's group is compared by value *and* type (``1`` and ``1.0`` differ, a tuple and a list
differ). When the reference raises, fastopt must raise the same exception class.
"""

from __future__ import annotations

import contextlib
import copy
import importlib.metadata
import logging
import math
import time
import warnings
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from typing import Any, Callable

import torch
from torch import nn

from .. import builder
from .._report import held_warnings
from ..grouping import group_params
from ..semantics import resolve as resolve_semantics
from .sources import buildable_here

__all__ = ["CheckReport", "Difference", "check", "installed_reference", "quiet_reference", "quiet_references",
           "reference_builder", "same_value"]


def same_value(a: Any, b: Any) -> bool:
    """Equal and of the same type, all the way down through dicts, lists and tuples (NaN equals
    NaN; tensors compare by dtype, shape and values)."""
    if type(a) is not type(b):
        return False
    if isinstance(a, dict):
        return a.keys() == b.keys() and all(same_value(a[k], b[k]) for k in a)
    if isinstance(a, (list, tuple)):
        return len(a) == len(b) and all(same_value(x, y) for x, y in zip(a, b))
    if isinstance(a, torch.Tensor):
        return a.dtype == b.dtype and a.shape == b.shape and bool(torch.equal(a, b))
    if isinstance(a, float) and math.isnan(a):
        return math.isnan(b)
    return bool(a == b)


@dataclass
class Difference:
    """One parameter whose group differs: the key, and both sides' values (repr and type)."""

    param: str
    key: str
    reference: str
    fastopt: str


@dataclass
class CheckReport:
    """The outcome of one check (``to_json()`` is what ``fastopt check --json`` prints)."""

    source: str
    api: str
    reference: str  # e.g. 'mmengine==0.10.7'
    semantics: str
    optimizer: str
    parity: bool
    params: int
    groups_reference: int | None
    groups_fastopt: int | None
    build_s_reference: float | None
    build_s_fastopt: float | None
    differences: list[Difference] = field(default_factory=list)
    num_differences: int = 0
    raised: str | None = None  # 'ExcClass: message' when both sides raised the same class
    notes: list[str] = field(default_factory=list)

    def to_json(self) -> dict[str, Any]:
        """A JSON-ready dict."""
        return asdict(self)


def _shown(value: Any) -> str:
    return "<absent>" if value is _ABSENT else f"{value!r} ({type(value).__name__})"


_ABSENT = object()


@contextlib.contextmanager
def quiet_references() -> Iterator[None]:
    """Keep mmengine's one-line-per-parameter log, the references' warnings and fastopt's own
    out of the way for the block (the logger's level and the warning filters are restored after it)."""
    try:
        from mmengine.logging import MMLogger
    except ImportError:
        logger = None
    else:
        logger = MMLogger.get_current_instance()
    level = None if logger is None else logger.level
    if logger is not None:
        logger.setLevel(logging.ERROR)
    try:
        with warnings.catch_warnings(), held_warnings():
            warnings.simplefilter("ignore")
            yield
    finally:
        if logger is not None:
            logger.setLevel(level)


def _dist_version(dist: str) -> str | None:
    try:
        return importlib.metadata.version(dist)
    except importlib.metadata.PackageNotFoundError:
        return None


def reference_builder(api: str) -> tuple[Callable[[nn.Module, dict], Any], str]:
    """The installed reference for ``api`` and its name: mmengine's ``build_optim_wrapper``
    ('mmengine') or mmcv 1.x's ``build_optimizer`` ('mmcv'); ImportError when absent."""
    if api == "mmengine":
        version = _dist_version("mmengine")
        if version is None:
            raise ImportError("the reference for optim_wrapper= configs is mmengine, which is not installed "
                              "(pip install mmengine)")
        from mmengine.optim import build_optim_wrapper

        return build_optim_wrapper, f"mmengine=={version}"
    version = _dist_version("mmcv") or _dist_version("mmcv-full") or _dist_version("mmcv-lite")
    if version is None or not version.startswith("1."):
        raise ImportError("the reference for mmcv 1.x optimizer= configs is mmcv 1.x, which is not installed"
                          + (f" (mmcv {version} is)" if version else ""))
    from ..integrations import import_mmcv_runner

    return import_mmcv_runner("the mmcv 1.x reference").build_optimizer, f"mmcv=={version}"


def quiet_reference(api: str) -> Callable[[nn.Module, dict], Any]:
    """``reference_builder(api)``'s builder, each call run under ``quiet_references``; the
    ImportError saying why when that reference cannot be used here."""
    build, _ = reference_builder(api)

    def quiet_build(model: nn.Module, cfg: dict) -> Any:
        with quiet_references():
            return build(model, cfg)

    return quiet_build


def installed_reference(api: str) -> Callable[[nn.Module, dict], Any] | None:
    """``quiet_reference(api)``, or None when that reference cannot be used here."""
    try:
        return quiet_reference(api)
    except ImportError:
        return None


def _optimizer_of(built: Any) -> torch.optim.Optimizer:
    return built if isinstance(built, torch.optim.Optimizer) else built.optimizer


def _per_param(optimizer: torch.optim.Optimizer) -> dict[int, dict[str, Any]]:
    """``id(param) -> its group's keys``. A ``param_names`` list parallel to ``params`` (how a
    group of several parameters names them: mmdet's layer decay, fastopt's merged groups) is
    read per parameter as ``param_name``, the key a one-parameter group carries (mmpretrain's
    layer decay), so the two layouts compare name for name."""
    out: dict[int, dict[str, Any]] = {}
    for group in optimizer.param_groups:
        params = group_params(group)
        hyper = {k: v for k, v in group.items() if k != "params"}
        names = hyper.get("param_names")
        parallel = isinstance(names, list) and len(names) == len(params)
        if parallel:
            del hyper["param_names"]
        for i, p in enumerate(params):
            if id(p) in out:
                raise ValueError("a parameter is in two param groups")
            out[id(p)] = {**hyper, "param_name": names[i]} if parallel else hyper
    return out


def _build(fn: Callable[[], Any]) -> tuple[Any, float, BaseException | None]:
    start = time.perf_counter()
    try:
        with quiet_references():
            built = fn()
    except Exception as exc:
        return None, time.perf_counter() - start, exc
    return built, time.perf_counter() - start, None


def _semantics(api: str, semantics: str | None) -> tuple[dict[str, Any], str]:
    """``semantics=`` for fastopt's builder, and the release it names (the installed host's when
    none is asked for)."""
    chosen = resolve_semantics(semantics, api)
    return ({} if semantics is None else {"semantics": str(chosen)}), str(chosen)


def check(model: nn.Module, api: str, cfg: dict, *, source: str = "model", semantics: str | None = None,
          limit: int = 20) -> CheckReport:
    """Build ``cfg`` for ``model`` with the installed reference and with fastopt and compare every
    key of every parameter's group (``api``: 'mmengine' or 'mmcv'); at most ``limit``
    differences are kept (``num_differences`` counts them all)."""
    if api not in ("mmengine", "mmcv"):
        raise ValueError(f"api must be 'mmengine' or 'mmcv', got {api!r}")
    reference, ref_name = reference_builder(api)
    cfg, note = buildable_here(api, cfg)
    notes = [] if note is None else [f"{note} on both sides"]
    fast = builder.build_optim_wrapper if api == "mmengine" else builder.build_optimizer
    extra, semantics_name = _semantics(api, semantics)
    opt_cfg = cfg.get("optimizer", {}) if api == "mmengine" else cfg
    optimizer_name = str(opt_cfg.get("type", "?")) if isinstance(opt_cfg, dict) else "?"
    names = {id(p): n for n, p in reversed(list(model.named_parameters(remove_duplicate=False)))}
    ref_built, ref_s, ref_exc = _build(lambda: reference(model, copy.deepcopy(cfg)))
    fast_built, fast_s, fast_exc = _build(lambda: fast(model, copy.deepcopy(cfg), **extra))
    report = CheckReport(source, api, ref_name, semantics_name, optimizer_name,
                         False, len(names), None, None, ref_s, fast_s, notes=notes)
    if ref_exc is not None or fast_exc is not None:
        if ref_exc is not None and fast_exc is not None and isinstance(fast_exc, type(ref_exc)):
            report.parity = True
            report.raised = f"{type(ref_exc).__name__}: {ref_exc}"
            return report
        side = ("reference", ref_exc) if ref_exc is not None else ("fastopt", fast_exc)
        other = fast_exc if side[0] == "reference" else ref_exc
        report.notes.append(f"{side[0]} raised {type(side[1]).__name__}: {side[1]}"
                            + (f"; the other raised {type(other).__name__}: {other}" if other is not None
                               else "; the other built"))
        report.num_differences = 1
        return report
    ref_opt, fast_opt = _optimizer_of(ref_built), _optimizer_of(fast_built)
    report.groups_reference = len(ref_opt.param_groups)
    report.groups_fastopt = len(fast_opt.param_groups)
    ref_pp, fast_pp = _per_param(ref_opt), _per_param(fast_opt)
    count = 0
    for pid, name in names.items():
        a, b = ref_pp.get(pid, _ABSENT), fast_pp.get(pid, _ABSENT)
        if a is _ABSENT and b is _ABSENT:
            continue
        if a is _ABSENT or b is _ABSENT:
            count += 1
            if len(report.differences) < limit:
                report.differences.append(Difference(name, "<in a group>", "no" if a is _ABSENT else "yes",
                                                     "no" if b is _ABSENT else "yes"))
            continue
        assert isinstance(a, dict) and isinstance(b, dict)
        for key in sorted(a.keys() | b.keys(), key=str):
            x, y = a.get(key, _ABSENT), b.get(key, _ABSENT)
            if x is _ABSENT or y is _ABSENT or not same_value(x, y):
                count += 1
                if len(report.differences) < limit:
                    report.differences.append(Difference(name, str(key), _shown(x), _shown(y)))
    if type(ref_opt).__name__ != type(fast_opt).__name__ and not isinstance(fast_opt, type(ref_opt)):
        report.notes.append(f"optimizer class: reference {type(ref_opt).__name__}, fastopt "
                            f"{type(fast_opt).__name__}")
        count += 1
    if api == "mmengine" and not isinstance(fast_built, type(ref_built)):
        report.notes.append(f"wrapper class: reference {type(ref_built).__name__}, fastopt "
                            f"{type(fast_built).__name__} (not a subclass)")
        count += 1
    report.num_differences = count  # (after the class differences: a mismatch never counts 0)
    report.parity = count == 0
    return report
