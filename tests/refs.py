"""Access to the reference implementations (mmcv 1.7.2, mmengine 0.10.7) for parity tests."""

from __future__ import annotations

import collections
import contextlib
import functools
import importlib.util
import os
import re
import sys
import types
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import torch

#: The module that stands in for torchvision in the test process (None until one is installed).
_TORCHVISION_STAND_IN: types.ModuleType | None = None


def install_torchvision_stand_in() -> bool:
    """Make ``import torchvision`` succeed for mmcv 1.x's ``mmcv.runner``, which imports it at load
    time: where the real package does not import, an empty module (with the ``__version__``
    mmengine's environment report reads) goes into ``sys.modules``. True when one was installed."""
    global _TORCHVISION_STAND_IN
    if "torchvision" in sys.modules:
        return False
    try:
        import torchvision  # noqa: F401
    except (ImportError, RuntimeError, AttributeError):  # absent, or not loading beside this torch
        stub = types.ModuleType("torchvision")
        stub.__version__ = "0.0.0"  # type: ignore[attr-defined]
        sys.modules["torchvision"] = _TORCHVISION_STAND_IN = stub
        return True
    return False


def remove_torchvision_stand_in() -> None:
    """Take the stand-in :func:`install_torchvision_stand_in` installed out of ``sys.modules``."""
    global _TORCHVISION_STAND_IN
    if _TORCHVISION_STAND_IN is not None and sys.modules.get("torchvision") is _TORCHVISION_STAND_IN:
        del sys.modules["torchvision"]
    _TORCHVISION_STAND_IN = None


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
    install_torchvision_stand_in()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        import mmcv.runner
    return mmcv.runner


@contextlib.contextmanager
def mmengine_log(level: int = 30) -> Iterator[list[str]]:
    """The messages of the records mmengine's current ``MMLogger`` passes at ``level`` or above
    (WARNING by default) inside the block; the logger's level and handlers restored after it."""
    import logging

    from mmengine.logging import MMLogger

    logger = MMLogger.get_current_instance()
    messages: list[str] = []

    class Keep(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            messages.append(record.getMessage())

    handler, before = Keep(level), logger.level
    logger.addHandler(handler)
    logger.setLevel(level)
    try:
        yield messages
    finally:
        logger.removeHandler(handler)
        logger.setLevel(before)


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


def same_value(a: Any, b: Any) -> bool:
    """Equal values of the same type, all the way down: ``1`` and ``1.0`` differ, ``(0.9, 0.999)``
    and ``[0.9, 0.999]`` differ, ``True`` and ``1`` differ; NaN equals NaN. Written here, apart
    from fastopt's own merge key, so that the parity checker does not reuse the code it checks."""
    if type(a) is not type(b):
        return False
    if isinstance(a, dict):
        return a.keys() == b.keys() and all(same_value(a[k], b[k]) for k in a)
    if isinstance(a, (list, tuple)):
        return len(a) == len(b) and all(same_value(x, y) for x, y in zip(a, b))
    if isinstance(a, torch.Tensor):
        return a.dtype == b.dtype and a.shape == b.shape and bool(torch.equal(a, b))
    if isinstance(a, float) and a != a:
        return b != b
    return bool(a == b)


_ABSENT = object()


def _shown(value: Any) -> str:
    return "<absent>" if value is _ABSENT else f"{value!r} ({type(value).__name__})"


def hyper_difference(a: dict, b: dict) -> dict[str, str]:
    """``key -> 'reference value (type) != fastopt value (type)'`` for every key where two
    hyperparameter dicts differ (a key missing on one side included)."""
    out = {}
    for key in sorted(a.keys() | b.keys(), key=str):
        x, y = a.get(key, _ABSENT), b.get(key, _ABSENT)
        if x is _ABSENT or y is _ABSENT or not same_value(x, y):
            out[key] = f"{_shown(x)} != {_shown(y)}"
    return out


def mismatches(ref: torch.optim.Optimizer, fast: torch.optim.Optimizer,
               names: dict[int, str]) -> list[str]:
    """Human-readable differences between the per-parameter hyperparameters of two optimizers:
    every key of every parameter's group, value and value type."""
    a, b = per_param(ref), per_param(fast)
    out = []
    for pid in a.keys() - b.keys():
        out.append(f"{names.get(pid, '?')}: only in the reference")
    for pid in b.keys() - a.keys():
        out.append(f"{names.get(pid, '?')}: only in fastopt")
    for pid in a.keys() & b.keys():
        diff = hyper_difference(a[pid], b[pid])
        if diff:
            out.append(f"{names.get(pid, '?')}: {diff}")
    return sorted(out)


def duplicate_groups(optimizer: torch.optim.Optimizer) -> list[tuple[int, int]]:
    """Pairs of param groups with the same hyperparameters (a merge that was not minimal)."""
    hypers = [{k: v for k, v in g.items() if k != "params"} for g in optimizer.param_groups]
    return [(i, j) for i in range(len(hypers)) for j in range(i + 1, len(hypers))
            if same_value(hypers[i], hypers[j])]


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


def one_in(n: int) -> Any:
    """A hypothesis strategy that is True about once in ``n`` draws. (hypothesis favours the ends
    of an integer range and the first entries of a list, so ``integers(0, n - 1) == 0`` comes out
    True far more often than that; the middle value does not.)"""
    from hypothesis import strategies as st

    return st.integers(0, n - 1).map(lambda i: i == n // 2)


def outcome(fn: Any) -> tuple[Any, BaseException | None]:
    """``(fn(), None)``, or ``(None, exception)`` when ``fn`` raises; warnings silenced."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            return fn(), None
        except Exception as exc:
            return None, exc


#: Where a reference fails by accident rather than by a check of its own, fastopt raises a
#: clear error of another class first, as docs/errors.md lists: (reference class, pattern of
#: the reference's message, fastopt's class, pattern of fastopt's message).
STRICTER: list[tuple[type, str, type, str]] = [
    # TSM: no Linear/conv with a bias, the original pops from an empty list
    (IndexError, "pop from empty list", ValueError, "need a last Linear/conv layer with a bias"),
    # ConvNeXt layer decay past stage 3, the original reads a variable it never set
    (UnboundLocalError, "layer_id|stage_id", ValueError,
     "layer-wise lr decay knows (downsample_layers|stages)"),
]

#: Config keys that, when the reference's message names one, fastopt's message names too.
CONFIG_KEYS = ("lr", "weight_decay", "lr_mult", "decay_mult", "bias_lr_mult", "bias_decay_mult",
               "norm_decay_mult", "dwconv_decay_mult", "flat_decay_mult", "dcn_offset_lr_mult",
               "custom_keys", "bypass_duplicate", "num_layers", "decay_rate", "layer_decay_rate",
               "decay_type", "fc_lr5", "base_wd", "paramwise_cfg")


def named_keys(message: str) -> set[str]:
    """The ``CONFIG_KEYS`` that ``message`` names as whole words."""
    return {k for k in CONFIG_KEYS if re.search(rf"(?<![\w.]){k}(?!\w)", message)}


def assert_same_error(ref_exc: BaseException, fast_exc: BaseException) -> None:
    """fastopt raised the reference's exception class (or a documented stricter one), and its
    message names every config key the reference's message names."""
    stricter = any(isinstance(ref_exc, ref_cls) and re.search(ref_pattern, str(ref_exc))
                   and isinstance(fast_exc, fast_cls) and re.search(fast_pattern, str(fast_exc))
                   for ref_cls, ref_pattern, fast_cls, fast_pattern in STRICTER)
    assert stricter or isinstance(fast_exc, type(ref_exc)), (
        f"the reference raised {ref_exc!r}; fastopt raised {fast_exc!r}, neither the same class "
        "nor a stricter error listed in refs.STRICTER")
    missing = named_keys(str(ref_exc)) - named_keys(str(fast_exc))
    assert not missing, f"the reference's error names {sorted(missing)}, fastopt's does not: " \
                        f"{ref_exc!r} vs {fast_exc!r}"


def same_outcome(ref: tuple[Any, BaseException | None], fast: tuple[Any, BaseException | None]) -> bool:
    """Fails unless both ``outcome``s raised the same error (``assert_same_error``) or neither
    raised; True when both returned. Counts the outcome in the innermost open ``tally``."""
    (built, ref_exc), (_, fast_exc) = ref, fast
    if _OPEN:
        _OPEN[-1].record(built, ref_exc)
    if ref_exc is not None:
        assert fast_exc is not None, f"the reference raised {ref_exc!r}, fastopt did not"
        assert_same_error(ref_exc, fast_exc)
        return False
    assert fast_exc is None, f"fastopt raised {fast_exc!r}, the reference did not"
    return True


class Tally:
    """How the reference's outcomes of one randomized test fell: ``raised``, ``one setting`` (every
    parameter gets the same hyperparameters) or ``split`` (at least two settings)."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.counts: collections.Counter[str] = collections.Counter()

    def record(self, built: Any, exc: BaseException | None) -> None:
        """Count one example by the reference's result."""
        if exc is not None:
            self.counts["raised"] += 1
            return
        hypers: list[dict] = []
        for hyper in per_param(getattr(built, "optimizer", built)).values():
            if not any(same_value(hyper, h) for h in hypers):
                hypers.append(hyper)
        self.counts["split" if len(hypers) > 1 else "one setting"] += 1

    def share(self, kind: str) -> float:
        """The fraction of recorded examples of ``kind``."""
        return self.counts[kind] / max(1, sum(self.counts.values()))

    def summary(self) -> str:
        """One line: the count and the share of each kind."""
        total = sum(self.counts.values())
        kinds = ", ".join(f"{k} {self.share(k):.0%}" for k in ("split", "one setting", "raised"))
        return f"{self.name}: {total} examples: {kinds}"

    def require(self, min_split: float) -> None:
        """Fail when the generator drifted: fewer than ``min_split`` of the examples give the
        parameters different hyperparameters (where the rules can go wrong)."""
        assert self.share("split") >= min_split, f"examples no longer exercise the rules: {self.summary()}"


_OPEN: list[Tally] = []
#: Every finished tally of this session, for the summary at the end of the test run.
TALLIES: list[Tally] = []


@contextlib.contextmanager
def tally(name: str) -> Iterator[Tally]:
    """Count the outcomes ``same_outcome`` sees inside the block (a hypothesis run, say)."""
    t = Tally(name)
    _OPEN.append(t)
    try:
        yield t
    finally:
        _OPEN.pop()
        TALLIES.append(t)
