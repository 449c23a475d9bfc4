"""The exception a user's ``except`` clause sees: for every config error mmengine 0.10.x's and
mmcv 1.x's own constructor tests raise, fastopt raises an instance of the reference's class
(its own clearer message; a stricter check as a subclass), and where two errors are in one
config, the one the reference reports first."""

from __future__ import annotations

import copy
from typing import Any, Callable

import pytest
from torch import nn

import fastopt

from .refs import assert_same_error, mmcv_runner, mmengine_build, outcome, quiet_mmengine_logger


class Net(nn.Module):
    """conv + BN + depth-wise conv + linear, with biases: every paramwise rule has a target."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3)
        self.bn = nn.BatchNorm2d(4)
        self.dw = nn.Conv2d(4, 4, 3, groups=4)
        self.head = nn.Linear(4, 2)


SGD = dict(type="SGD", lr=0.01, momentum=0.9, weight_decay=1e-4)
NO_WD = dict(type="SGD", lr=0.01, momentum=0.9)

#: (case, optimizer config, paramwise_cfg, extra top-level keys); None for "leave it out"
CASES: list[tuple[str, Any, Any, dict]] = [
    ("optimizer cfg not a dict", "SGD", None, {}),
    ("paramwise_cfg not a dict", SGD, [("bias_lr_mult", 2.0)], {}),
    ("custom_keys not a dict", SGD, dict(custom_keys=[("head", dict(lr_mult=0.1))]), {}),
    ("decay_mult without weight_decay", NO_WD, dict(custom_keys={"head": dict(decay_mult=0.5)}), {}),
    ("bias_decay_mult without weight_decay", NO_WD, dict(bias_decay_mult=0.5), {}),
    ("norm_decay_mult without weight_decay", NO_WD, dict(norm_decay_mult=0.0), {}),
    ("dwconv_decay_mult without weight_decay", NO_WD, dict(dwconv_decay_mult=0.0), {}),
    ("optimizer without type", dict(lr=0.01), None, {}),
    ("optimizer without type, paramwise", dict(lr=0.01), dict(bias_lr_mult=2.0), {}),
    ("no type and a bad paramwise_cfg", dict(lr=0.01), [("bias_lr_mult", 2.0)], {}),
    ("no type and a decay mult without weight_decay", dict(lr=0.01), dict(norm_decay_mult=0.0), {}),
    ("unknown optimizer type", dict(SGD, type="NoSuchOptimizer"), None, {}),
    ("unknown optimizer type, paramwise", dict(SGD, type="NoSuchOptimizer"), dict(bias_lr_mult=2.0), {}),
    ("unknown constructor", SGD, None, dict(constructor="NoSuchConstructor")),
    ("a negative lr (torch's check)", dict(SGD, lr=-1.0), dict(bias_lr_mult=2.0), {}),
    ("an unknown optimizer argument", dict(SGD, no_such_argument=1), dict(bias_lr_mult=2.0), {}),
    ("nesterov without momentum (torch's check)", dict(type="SGD", lr=0.1, nesterov=True), None, {}),
    ("no lr, bias_lr_mult", dict(type="SGD", momentum=0.9, weight_decay=1e-4), dict(bias_lr_mult=2.0), {}),
    ("no lr, a custom key's lr_mult", dict(type="SGD", momentum=0.9, weight_decay=1e-4),
     dict(custom_keys={"head": dict(lr_mult=0.1)}), {}),
]


def _applied(build: Callable[[nn.Module, Any], Any], cfg: Any) -> Callable[[], Any]:
    return lambda: build(Net(), copy.deepcopy(cfg))


def _mmengine_cfg(optimizer: Any, paramwise: Any, extra: dict, wrapper: dict | None = None) -> dict:
    cfg: dict = dict(wrapper or {}, **extra)
    if optimizer is not None:
        cfg["optimizer"] = copy.deepcopy(optimizer)
    if paramwise is not None:
        cfg["paramwise_cfg"] = copy.deepcopy(paramwise)
    return cfg


def _mmcv_cfg(optimizer: Any, paramwise: Any, extra: dict) -> Any:
    if not isinstance(optimizer, dict):
        return optimizer
    cfg = dict(copy.deepcopy(optimizer), **extra)
    if paramwise is not None:
        cfg["paramwise_cfg"] = copy.deepcopy(paramwise)
    return cfg


def _compare(reference: Callable[..., Any], ours: Callable[..., Any], cfg: Any = None) -> None:
    """Both raise (given ``Net()`` and a copy of ``cfg`` when one is given), fastopt an instance
    of the reference's class naming the keys the reference's message names."""
    if cfg is not None:
        reference, ours = _applied(reference, cfg), _applied(ours, cfg)
    (_, ref_exc), (_, fast_exc) = outcome(reference), outcome(ours)
    assert ref_exc is not None, "the case must be an error for the reference"
    assert fast_exc is not None, f"the reference raised {ref_exc!r}, fastopt built"
    assert_same_error(ref_exc, fast_exc)


@pytest.mark.parametrize("case, optimizer, paramwise, extra", CASES, ids=[c[0] for c in CASES])
def test_mmengine_errors(case: str, optimizer: Any, paramwise: Any, extra: dict) -> None:
    build = mmengine_build()
    quiet_mmengine_logger()
    cfg = _mmengine_cfg(optimizer, paramwise, extra)
    if not isinstance(optimizer, dict):
        cfg["optimizer"] = optimizer
    _compare(build, fastopt.build_optim_wrapper, cfg)


#: mmengine-only cases: the wrapper config itself
WRAPPER_CASES: list[tuple[str, dict]] = [
    ("optim_wrapper without optimizer", dict(type="OptimWrapper", paramwise_cfg=dict(bias_lr_mult=2.0))),
    ("optim_wrapper without optimizer, no paramwise", dict(type="OptimWrapper")),
    ("unknown wrapper type", dict(type="NoSuchWrapper", optimizer=SGD)),
    ("unknown wrapper argument", dict(type="OptimWrapper", optimizer=SGD, no_such_argument=1)),
]


@pytest.mark.parametrize("case, cfg", WRAPPER_CASES, ids=[c[0] for c in WRAPPER_CASES])
def test_mmengine_wrapper_errors(case: str, cfg: dict) -> None:
    build = mmengine_build()
    quiet_mmengine_logger()
    _compare(build, fastopt.build_optim_wrapper, cfg)


def test_mmengine_errors_for_a_config_that_is_not_a_dict() -> None:
    from mmengine.optim import DefaultOptimWrapperConstructor as Reference

    _compare(lambda: Reference("not a dict"),
             lambda: fastopt.DefaultOptimWrapperConstructor("not a dict"))  # type: ignore[arg-type]


@pytest.mark.parametrize("case, optimizer, paramwise, extra", CASES, ids=[c[0] for c in CASES])
def test_mmcv_errors(case: str, optimizer: Any, paramwise: Any, extra: dict) -> None:
    build = mmcv_runner().build_optimizer
    cfg = _mmcv_cfg(optimizer, paramwise, extra)
    _compare(build, fastopt.build_optimizer, cfg)


def test_the_cases_are_errors_on_both_references() -> None:
    """Every case above is an error for both references (else it tests nothing)."""
    mm, runner = mmengine_build(), mmcv_runner()
    quiet_mmengine_logger()
    for case, optimizer, paramwise, extra in CASES:
        engine_cfg = _mmengine_cfg(optimizer, paramwise, extra)
        assert outcome(_applied(mm, engine_cfg))[1] is not None, case
        mmcv_cfg = _mmcv_cfg(optimizer, paramwise, extra)
        assert outcome(_applied(runner.build_optimizer, mmcv_cfg))[1] is not None, case


def test_a_shared_tensor_without_bypass_duplicate() -> None:
    """A tensor reachable twice without ``bypass_duplicate``: torch's ValueError in both
    references (two groups hold it); fastopt's ValueError names both places."""
    from . import models as M

    mm, runner = mmengine_build(), mmcv_runner()
    quiet_mmengine_logger()
    paramwise = dict(bias_lr_mult=2.0, norm_decay_mult=0.0)
    engine_cfg = dict(optimizer=dict(SGD), paramwise_cfg=paramwise)
    mmcv_cfg = dict(SGD, paramwise_cfg=paramwise)
    for reference, ours, cfg in ((mm, fastopt.build_optim_wrapper, engine_cfg),
                                 (runner.build_optimizer, fastopt.build_optimizer, mmcv_cfg)):
        ref_exc = outcome(lambda b=reference, c=cfg: b(M.SharedNet(), copy.deepcopy(c)))[1]
        fast_exc = outcome(lambda b=ours, c=cfg: b(M.SharedNet(), copy.deepcopy(c)))[1]
        assert isinstance(ref_exc, ValueError) and "more than one parameter group" in str(ref_exc)
        assert fast_exc is not None
        assert_same_error(ref_exc, fast_exc)
