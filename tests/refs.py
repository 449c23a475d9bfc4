"""Access to the reference implementations (mmcv 1.7.2, mmengine 0.10.7) for parity tests."""

from __future__ import annotations

import functools
import importlib.util
import os
import sys
import types
import warnings
from pathlib import Path
from typing import Any

import pytest
import torch

from fastopt._compat import ensure_torchvision
from fastopt.grouping import freeze


def mmengine_build() -> Any:
    """mmengine's ``build_optim_wrapper`` (skips the test when mmengine is not installed)."""
    pytest.importorskip("mmengine")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        from mmengine.optim import build_optim_wrapper
    return build_optim_wrapper


def mmcv_runner() -> Any:
    """mmcv 1.x's ``mmcv.runner`` module (torchvision stubbed; skips when mmcv is absent)."""
    pytest.importorskip("mmcv")
    ensure_torchvision()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        import mmcv.runner
    return mmcv.runner


def quiet_mmengine_logger() -> None:
    """Keep mmengine's one-log-line-per-parameter output out of the test log."""
    import logging

    from mmengine.logging import MMLogger

    MMLogger.get_current_instance().setLevel(logging.ERROR)


def per_param(optimizer: torch.optim.Optimizer) -> dict[int, dict]:
    """``id(param) -> every key of its param group except params``; a tensor twice is an error."""
    out: dict[int, dict] = {}
    for group in optimizer.param_groups:
        hyper = {k: v for k, v in group.items() if k != "params"}
        for p in group["params"]:
            assert id(p) not in out, "parameter in two groups"
            out[id(p)] = hyper
    return out


def mismatches(ref: torch.optim.Optimizer, fast: torch.optim.Optimizer,
               names: dict[int, str]) -> list[str]:
    """Human-readable differences between the per-parameter hyperparameters of two optimizers."""
    a, b = per_param(ref), per_param(fast)
    out = []
    for pid in a.keys() - b.keys():
        out.append(f"{names.get(pid, '?')}: only in the reference")
    for pid in b.keys() - a.keys():
        out.append(f"{names.get(pid, '?')}: only in fastopt")
    for pid in a.keys() & b.keys():
        if freeze(a[pid]) != freeze(b[pid]):
            diff = {k: (a[pid].get(k, "<absent>"), b[pid].get(k, "<absent>"))
                    for k in a[pid].keys() | b[pid].keys() if a[pid].get(k) != b[pid].get(k)
                    or type(a[pid].get(k)) is not type(b[pid].get(k))}
            out.append(f"{names.get(pid, '?')}: {diff}")
    return sorted(out)


#: Single files of OpenMMLab projects that cannot be installed beside mmcv 1.7.2, placed here
#: by scripts/install_references.sh.
REFERENCES = Path(os.environ.get("FASTOPT_REFERENCES", Path(__file__).parents[1] / ".references"))


def reference_file(relative: str) -> Path:
    """``REFERENCES / relative``; skips the test when install_references.sh has not run."""
    path = REFERENCES / relative
    if not path.is_file():
        pytest.skip(f"{path} is missing: run scripts/install_references.sh")
    return path


def exec_original(path: str | Path, module_name: str, stand_ins: dict[str, types.ModuleType]) -> Any:
    """Execute one original module file as ``module_name`` with ``stand_ins`` in
    ``sys.modules`` while it loads (restored afterwards); returns the module."""
    saved = {k: sys.modules.get(k) for k in stand_ins}
    sys.modules.update(stand_ins)
    try:
        spec = importlib.util.spec_from_file_location(module_name, path)
        module = importlib.util.module_from_spec(spec)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            spec.loader.exec_module(module)
    finally:
        for k, v in saved.items():
            if v is None:
                sys.modules.pop(k, None)
            else:
                sys.modules[k] = v
    return module


@functools.cache
def exec_mmengine_original(package: str, path: str | Path) -> Any:
    """Execute (once) an mmengine-era original module file that registers itself in
    ``<package>.registry``: that module is a stand-in holding a scratch child registry."""
    from mmengine.registry import OPTIM_WRAPPER_CONSTRUCTORS, Registry

    registry = Registry(f"scratch {package} constructors", parent=OPTIM_WRAPPER_CONSTRUCTORS,
                        scope=f"test {path}")
    return exec_original(path, f"{package}_original_{Path(path).stem}", {
        package: stand_in(package),
        f"{package}.registry": stand_in("registry", OPTIM_WRAPPER_CONSTRUCTORS=registry)})


def stand_in(name: str, **attrs: Any) -> types.ModuleType:
    """An empty module named ``name`` with ``attrs`` (a package when it has ``__path__``)."""
    module = types.ModuleType(name)
    for key, value in attrs.items():
        setattr(module, key, value)
    return module


def outcome(fn: Any) -> tuple[Any, BaseException | None]:
    """``(fn(), None)``, or ``(None, exception)`` when ``fn`` raises; warnings silenced."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            return fn(), None
        except Exception as exc:
            return None, exc


def same_outcome(ref: tuple[Any, BaseException | None], fast: tuple[Any, BaseException | None]) -> bool:
    """Fails unless both ``outcome``s raised or neither did; True when both returned."""
    (_, ref_exc), (_, fast_exc) = ref, fast
    if ref_exc is not None:
        assert fast_exc is not None, f"the reference raised {ref_exc!r}, fastopt did not"
        return False
    assert fast_exc is None, f"fastopt raised {fast_exc!r}, the reference did not"
    return True
