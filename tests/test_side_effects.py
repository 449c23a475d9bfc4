"""fastopt changes nothing in the process it was not asked to: importing it and building optimizers
leaves other libraries' state as it found it (each check in a fresh interpreter), and an
environment whose mmcv ops cannot give the references' DCN rules fails loudly rather than
building other groups in silence.

``python -m tests.test_side_effects [PLANT]`` runs the probe: it prints the differences between
the process state before and after ``import fastopt`` and two builds (PLANT: Python code run in
between, which the checker must catch).
"""

from __future__ import annotations

import builtins
import contextlib
import copyreg
import gc
import hashlib
import importlib
import importlib.machinery
import importlib.util
import json
import logging
import os
import random
import signal
import subprocess
import sys
import sysconfig
import threading
import types
import warnings
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parents[1]


def _run(*args: str) -> subprocess.CompletedProcess:
    """``python ARGS`` in a fresh interpreter at the repository root."""
    return subprocess.run([sys.executable, *args], cwd=ROOT, capture_output=True, text=True, timeout=300)


# ------------------------------------------------------------------ a fresh `import fastopt`


def test_import_fastopt_loads_no_stand_in_and_no_downstream_library() -> None:
    done = _run("-c", "import fastopt, sys; print(sorted(m for m in sys.modules "
                      "if m.startswith(('torchvision', 'mmdet'))))")
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "[]"


# ------------------------------------------------------------------ state snapshots (the probe)


def _fingerprint(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()[:16]


def _class_dict(cls: type) -> dict[str, Any]:
    return dict(vars(cls))


def _global_hooks(module: types.ModuleType) -> dict[str, Any]:
    """Copies of a torch module's process-wide hook tables (``_global_*`` dicts)."""
    return {name: dict(value) for name, value in vars(module).items()
            if name.startswith("_global_") and isinstance(value, dict)}


def _logger_state(logger: logging.Logger) -> tuple:
    return (logger.level, list(logger.handlers), logger.propagate, logger.disabled,
            list(logger.filters))


def snapshot() -> dict[str, Any]:
    """Process state another library (or the user) owns: torch, numpy, the random modules,
    warnings, logging, sys hooks, mmengine's classes and registries, mmcv 1.x's registries when
    ``mmcv.runner`` is loaded."""
    import numpy as np
    import torch

    state: dict[str, Any] = {
        "torch.get_num_threads()": torch.get_num_threads(),
        "torch.get_num_interop_threads()": torch.get_num_interop_threads(),
        "torch.get_default_dtype()": torch.get_default_dtype(),
        "torch.is_grad_enabled()": torch.is_grad_enabled(),
        "torch.is_anomaly_enabled()": torch.is_anomaly_enabled(),
        "torch.are_deterministic_algorithms_enabled()": torch.are_deterministic_algorithms_enabled(),
        "torch.get_float32_matmul_precision()": torch.get_float32_matmul_precision(),
        "torch.backends.cudnn.benchmark": torch.backends.cudnn.benchmark,
        "torch.get_rng_state()": _fingerprint(torch.get_rng_state().numpy().tobytes()),
        "torch.multiprocessing sharing strategy": torch.multiprocessing.get_sharing_strategy(),
        "torch.optim.optimizer global hooks": _global_hooks(sys.modules["torch.optim.optimizer"]),
        "torch.nn.modules.module global hooks": _global_hooks(sys.modules["torch.nn.modules.module"]),
        "numpy.geterr()": np.geterr(),
        "numpy.get_printoptions()": repr(np.get_printoptions()),
        "numpy.random state": _fingerprint(repr(np.random.get_state()).encode()),
        "random state": _fingerprint(repr(random.getstate()).encode()),
        "warnings.filters": list(warnings.filters),
        "warnings.showwarning": warnings.showwarning,
        "logging root": _logger_state(logging.getLogger()),
        "logging loggers": {name: _logger_state(logger)
                            for name, logger in logging.Logger.manager.loggerDict.items()
                            if isinstance(logger, logging.Logger)},
        "sys.path": list(sys.path),
        "sys.meta_path": list(sys.meta_path),
        "sys.path_hooks": list(sys.path_hooks),
        "sys.excepthook": sys.excepthook,
        "sys.displayhook": sys.displayhook,
        "sys.getrecursionlimit()": sys.getrecursionlimit(),
        "threading.excepthook": threading.excepthook,
        "signal handlers": {sig.name: signal.getsignal(sig) for sig in (signal.SIGINT, signal.SIGTERM)},
        "gc": (gc.isenabled(), gc.get_threshold()),
        "os.environ": dict(os.environ),
        "os.getcwd()": os.getcwd(),
        "builtins": dict(vars(builtins)),
        "copyreg.dispatch_table": dict(copyreg.dispatch_table),
    }
    if hasattr(torch.serialization, "get_safe_globals"):
        state["torch.serialization.get_safe_globals()"] = list(torch.serialization.get_safe_globals())
    for cls in (torch.optim.Optimizer, torch.optim.SGD, torch.optim.Adam, torch.optim.AdamW,
                torch.nn.Module, torch.nn.Parameter, torch.Tensor):
        state[f"{cls.__module__}.{cls.__qualname__}.__dict__"] = _class_dict(cls)
    if "mmengine" in sys.modules:
        state.update(_mmengine_snapshot())
    if "mmcv.runner" in sys.modules:
        state.update(_registries("mmcv.runner", sys.modules["mmcv.runner"]))
    return state


def _registries(prefix: str, module: types.ModuleType) -> dict[str, Any]:
    """``module_dict`` copies of every registry that is an attribute of ``module``."""
    return {f"{prefix}.{name}.module_dict": dict(value.module_dict) for name, value in vars(module).items()
            if type(value).__name__ == "Registry" and hasattr(value, "module_dict")}


def _mmengine_snapshot() -> dict[str, Any]:
    import mmengine.registry
    from mmengine.logging import MMLogger
    from mmengine.optim import AmpOptimWrapper, DefaultOptimWrapperConstructor, OptimWrapper
    from mmengine.optim.scheduler.param_scheduler import _ParamScheduler
    from mmengine.registry import DefaultScope

    state = {f"mmengine {cls.__qualname__}.__dict__": _class_dict(cls)
             for cls in (_ParamScheduler, OptimWrapper, AmpOptimWrapper, DefaultOptimWrapperConstructor)}
    state.update(_registries("mmengine.registry", mmengine.registry))
    state["mmengine registry children"] = {
        name: dict(reg.children) for name, reg in vars(mmengine.registry).items()
        if isinstance(reg, mmengine.registry.Registry)}
    state["mmengine MMLogger instances"] = {name: _logger_state(logger)
                                            for name, logger in MMLogger._instance_dict.items()}
    state["mmengine DefaultScope instances"] = dict(DefaultScope._instance_dict)
    return state


def _same(a: Any, b: Any) -> bool:
    """Same state: equal containers of the same objects (identity for objects, ``==`` for values)."""
    if isinstance(a, dict) and isinstance(b, dict):
        return a.keys() == b.keys() and all(_same(a[k], b[k]) for k in a)
    if isinstance(a, (list, tuple)) and isinstance(b, (list, tuple)):
        return type(a) is type(b) and len(a) == len(b) and all(_same(x, y) for x, y in zip(a, b))
    if a is b:
        return True
    if isinstance(a, (bool, int, float, str, bytes, type(None))) or type(a).__module__ == "torch":
        return type(a) is type(b) and a == b
    return False


def differences(before: dict[str, Any], after: dict[str, Any]) -> list[str]:
    """The snapshot entries that changed, with the keys that changed inside dicts."""
    out = []
    for key in sorted(before.keys() | after.keys()):
        a, b = before.get(key), after.get(key)
        if _same(a, b):
            continue
        if isinstance(a, dict) and isinstance(b, dict):
            changed = sorted(str(k) for k in a.keys() | b.keys() if k not in a or k not in b
                             or not _same(a[k], b[k]))
            out.append(f"{key}: {changed}")
        else:
            out.append(f"{key}: {a!r} -> {b!r}")
    return out


#: What fastopt may load: itself, and the libraries it is built on or hands its results to.
LEGITIMATE_IMPORTS = ("fastopt", "torch", "numpy", "mmengine", "_C")


def _standard_library(name: str, module: Any) -> bool:
    """True for a module of Python's standard library."""
    names = getattr(sys, "stdlib_module_names", None)  # Python >= 3.10
    if names is not None:
        return name.partition(".")[0] in names
    file = getattr(module, "__file__", None)
    if file is None:
        return name in sys.builtin_module_names
    stdlib = sysconfig.get_paths()["stdlib"]
    return file.startswith(stdlib) and "site-packages" not in file


def new_modules(before: dict[str, Any], after: dict[str, Any]) -> list[str]:
    """Modules loaded in between that are neither the standard library nor ``LEGITIMATE_IMPORTS``;
    modules that disappeared (``-name``) or were replaced by another object (``~name``)."""
    added = sorted(m for m in after.keys() - before.keys()
                   if m.partition(".")[0] not in LEGITIMATE_IMPORTS and not _standard_library(m, after[m]))
    gone = sorted(f"-{m}" for m in before.keys() - after.keys())
    replaced = sorted(f"~{m}" for m in before.keys() & after.keys() if before[m] is not after[m])
    return added + gone + replaced


def _host_set_up() -> Any:
    """Import the host libraries and let them do their own lazy set-up, as a host's own build
    would: torch imports its compiler stack at a first ``add_param_group``, mmengine creates its
    default logger at a first registry lookup, ``mmcv.runner`` needs torchvision (a stand-in where
    the real one does not import, as the user of the mmcv plug-in provides). Returns a model."""
    import numpy  # noqa: F401
    import torch
    from torch import nn

    torch.optim.SGD([nn.Parameter(torch.zeros(1))], lr=0.1)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        if importlib.util.find_spec("mmengine") is not None:
            import mmengine.optim  # noqa: F401
            from mmengine.registry import OPTIM_WRAPPERS

            OPTIM_WRAPPERS.get("OptimWrapper")
        if importlib.util.find_spec("mmcv") is not None:
            from tests.refs import install_torchvision_stand_in

            install_torchvision_stand_in()
            with contextlib.suppress(ImportError):  # mmcv 2.x has no runner
                import mmcv.runner  # noqa: F401
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), nn.Conv2d(4, 4, 3, groups=4), nn.Flatten(),
                         nn.Linear(4, 2))


def _changes(modules: dict[str, Any], before: dict[str, Any]) -> dict[str, list[str]]:
    """What changed since ``modules`` (``sys.modules``) and ``before`` (a snapshot) were taken."""
    after = snapshot()
    # loggers a legitimately imported module creates as it loads (fastopt's own included) are new
    # state of that module; every logger that existed before must be as it was
    after["logging loggers"] = {name: value for name, value in after["logging loggers"].items()
                                if name in before["logging loggers"]
                                or name.partition(".")[0] not in LEGITIMATE_IMPORTS}
    return {"state": differences(before, after), "modules": new_modules(modules, dict(sys.modules))}


def probe(plants: list[str]) -> dict[str, Any]:
    """Set up the host libraries, take a snapshot, import fastopt, build an optimizer and an optim
    wrapper (paramwise_cfg) and step both: ``build`` is what changed (snapshot entries, and modules
    loaded that are neither the standard library nor legitimate imports). Then each of ``plants``
    (Python code) runs in turn: ``plants`` holds what changed with each."""
    import torch

    model = _host_set_up()
    modules, before = dict(sys.modules), snapshot()

    import fastopt

    paramwise = dict(norm_decay_mult=0.0, bias_lr_mult=2.0, dwconv_decay_mult=0.5,
                     custom_keys={"4": dict(lr_mult=0.1)})
    optimizer = fastopt.build_optimizer(model, dict(type="SGD", lr=0.1, momentum=0.9, weight_decay=1e-4,
                                                    paramwise_cfg=paramwise))
    wrapper = fastopt.build_optim_wrapper(model, dict(
        optimizer=dict(type="AdamW", lr=1e-3, weight_decay=0.05), paramwise_cfg=paramwise,
        clip_grad=dict(max_norm=1.0)))
    for p in model.parameters():
        p.grad = torch.ones_like(p)
    optimizer.step()
    wrapper.step()
    found: dict[str, Any] = {"build": _changes(modules, before), "plants": []}
    for plant in plants:
        modules, before = dict(sys.modules), snapshot()
        exec(plant, {"torch": torch, "warnings": warnings, "logging": logging, "sys": sys, "types": types})
        found["plants"].append(_changes(modules, before))
    return found


def _probe(*plants: str) -> dict[str, Any]:
    done = _run("-m", "tests.test_side_effects", *plants)
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout.strip().splitlines()[-1])


def test_building_optimizers_changes_no_other_librarys_state() -> None:
    """A fresh interpreter: the host libraries imported, then ``import fastopt``,
    ``build_optimizer`` and ``build_optim_wrapper`` with a paramwise_cfg and a step of each; every
    snapshot entry is as it was and no other library was loaded."""
    assert _probe()["build"] == {"state": [], "modules": []}


#: Side effects planted between the snapshots, and the entry the checker must report.
PLANTS = {
    "torch threads": ("torch.set_num_threads(torch.get_num_threads() + 1)", "torch.get_num_threads()"),
    "a torchvision stand-in": ("sys.modules['torchvision'] = types.ModuleType('torchvision')", "torchvision"),
    "warnings filters": ("warnings.simplefilter('ignore')", "warnings.filters"),
    "mmengine's scheduler loading": (
        "from mmengine.optim.scheduler.param_scheduler import _ParamScheduler\n"
        "_ParamScheduler.load_state_dict = lambda self, sd: None", "_ParamScheduler.__dict__"),
    "an mmengine registration": (
        "import fastopt.optim\nfrom mmengine.registry import OPTIMIZERS\n"
        "OPTIMIZERS.register_module(name='SGD', module=fastopt.optim.SGD, force=True)",
        "mmengine.registry.OPTIMIZERS.module_dict: ['SGD']"),
    "a global optimizer hook": ("from torch.optim.optimizer import register_optimizer_step_pre_hook\n"
                                "register_optimizer_step_pre_hook(lambda *a: None)",
                                "torch.optim.optimizer global hooks"),
    "a torch.optim.Optimizer attribute": ("torch.optim.Optimizer.step_count = 0",
                                          "Optimizer.__dict__: ['step_count']"),
    "mmengine's logger": ("from mmengine.logging import MMLogger\n"
                          "MMLogger.get_current_instance().setLevel(logging.CRITICAL)",
                          "mmengine MMLogger instances: ['mmengine']"),
    "torch's logger": ("logging.getLogger('torch').addHandler(logging.NullHandler())",
                       "logging loggers: ['torch']"),
    "the global RNG": ("torch.rand(1)", "torch.get_rng_state()"),
}


@pytest.fixture(scope="module")
def planted() -> dict[str, dict[str, list[str]]]:
    """What the probe reported for each of ``PLANTS`` (one fresh interpreter for all)."""
    pytest.importorskip("mmengine")  # some plants change mmengine's state
    found = _probe(*(code for code, _ in PLANTS.values()))
    assert found["build"] == {"state": [], "modules": []}
    return dict(zip(PLANTS, found["plants"]))


@pytest.mark.parametrize("plant", list(PLANTS))
def test_the_probe_sees_a_planted_side_effect(plant: str, planted: dict[str, dict[str, list[str]]]) -> None:
    expected = PLANTS[plant][1]
    lines = planted[plant]["state"] + planted[plant]["modules"]
    assert any(expected in line for line in lines), planted[plant]


# ------------------------------------------------------------------ DCN rules: loud, not silent


def _broken_mmcv(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, ops_source: str) -> None:
    """An ``mmcv`` package whose compiled ops (``_ext``) are present and whose ``mmcv.ops`` runs
    ``ops_source``, in place of any installed mmcv for this test."""
    root = tmp_path / "mmcv"
    (root / "ops").mkdir(parents=True)
    (root / "_ext.so").write_bytes(b"")
    (root / "ops" / "__init__.py").write_text(ops_source)
    spec = importlib.machinery.ModuleSpec("mmcv", None, is_package=True)
    spec.submodule_search_locations = [str(root)]
    mmcv = types.ModuleType("mmcv")
    mmcv.__spec__, mmcv.__path__ = spec, [str(root)]
    monkeypatch.setitem(sys.modules, "mmcv", mmcv)
    monkeypatch.delitem(sys.modules, "mmcv.ops", raising=False)


@pytest.fixture
def fresh_dcn_types() -> Any:
    """``fastopt._walk`` with the cached DCN lookup cleared before and after the test."""
    from fastopt import _walk

    _walk.dcn_types.cache_clear()
    yield _walk
    _walk.dcn_types.cache_clear()


@pytest.mark.parametrize("ops_source, error", [
    ("raise ImportError('libcudart.so.11.0: cannot open shared object file')", ImportError),
    ("import torchvision_is_not_here", ModuleNotFoundError),
    ("assert False, 'deform_conv_forward miss in module _ext'", AssertionError),
], ids=["extension-does-not-load", "a-dependency-is-missing", "op-missing-from-the-build"])
def test_dcn_rules_fail_loudly_when_the_compiled_ops_do_not_import(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, fresh_dcn_types: Any, ops_source: str,
        error: type) -> None:
    """With ``mmcv._ext`` present both references import mmcv.ops unguarded and fail; fastopt fails
    too, with the same exception class and the cause, instead of building without the DCN rules."""
    from torch import nn

    import fastopt

    _broken_mmcv(tmp_path, monkeypatch, ops_source)
    with pytest.raises(error, match=r"mmcv's compiled ops are installed .* 'from mmcv.ops import "
                                    r"DeformConv2d, ModulatedDeformConv2d' fails") as caught:
        fresh_dcn_types.dcn_types()
    assert isinstance(caught.value.__cause__, error)
    with pytest.raises(error, match="the DCN rules apply"):
        fastopt.build_optimizer(nn.Conv2d(2, 2, 1), dict(type="SGD", lr=0.1, paramwise_cfg=dict(
            dcn_offset_lr_mult=0.1)))


def test_dcn_types_come_from_working_compiled_ops(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                  fresh_dcn_types: Any) -> None:
    _broken_mmcv(tmp_path, monkeypatch, "from torch.nn import Conv2d\n"
                                        "class DeformConv2d(Conv2d): pass\n"
                                        "class ModulatedDeformConv2d(Conv2d): pass\n")
    assert [c.__name__ for c in fresh_dcn_types.dcn_types()] == ["DeformConv2d", "ModulatedDeformConv2d"]


def test_no_compiled_ops_means_no_dcn_rules_and_no_mmcv_import(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, fresh_dcn_types: Any) -> None:
    _broken_mmcv(tmp_path, monkeypatch, "raise AssertionError('mmcv.ops must not be imported')")
    (tmp_path / "mmcv" / "_ext.so").unlink()
    assert fresh_dcn_types.dcn_types() == ()
    assert "mmcv.ops" not in sys.modules


if __name__ == "__main__":
    print(json.dumps(probe(sys.argv[1:])))
