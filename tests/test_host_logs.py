"""Warnings on the host's channel: under mmengine's semantics with mmengine installed, what
mmengine's own constructor logs appears in its logger's output (frozen parameters skipped, shared
ones bypassed), and fastopt's own warnings go there too; under mmcv 1.x's, Python warnings as
mmcv's constructor gives them; without a host, Python warnings."""

from __future__ import annotations

import copy
import warnings
from typing import Any

import pytest
from torch import nn

import fastopt
from fastopt import _report

from . import models as M
from .refs import mmcv_runner, mmengine_build, mmengine_log

SGD = dict(type="SGD", lr=0.1, momentum=0.9, weight_decay=1e-4)

#: (case, model factory, paramwise_cfg): models and configs the references warn about
CASES: list[tuple[str, Any, dict]] = [
    ("frozen stem", M.FrozenStemNet, dict(norm_decay_mult=0.0)),
    ("shared tensors bypassed", M.SharedNet, dict(bypass_duplicate=True)),
    ("frozen and shared", M.FrozenSharedNet, dict(bypass_duplicate=True, bias_lr_mult=2.0)),
]


def _python_warnings(call: Any) -> list[str]:
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        call()
    return [str(w.message) for w in caught if issubclass(w.category, UserWarning)
            and "jit" not in str(w.message)]


@pytest.mark.parametrize("case, model, paramwise", CASES, ids=[c[0] for c in CASES])
def test_mmengine_warnings_reach_its_logger(case: str, model: Any, paramwise: dict) -> None:
    build = mmengine_build()
    cfg = dict(optimizer=dict(SGD), paramwise_cfg=paramwise)
    with mmengine_log() as theirs:
        build(model(), copy.deepcopy(cfg))
    assert theirs, "the case must make mmengine warn"
    with mmengine_log() as ours, warnings.catch_warnings():
        warnings.simplefilter("error")  # (nothing on Python's channel)
        fastopt.build_optim_wrapper(model(), copy.deepcopy(cfg))
    assert sorted(ours) == sorted(theirs)


MMCV_CASES = CASES[:2]  # (mmcv adds a frozen shared tensor twice, and torch raises)


@pytest.mark.parametrize("case, model, paramwise", MMCV_CASES, ids=[c[0] for c in MMCV_CASES])
def test_mmcv_warnings_are_python_warnings_as_mmcv_gives_them(case: str, model: Any, paramwise: dict) -> None:
    build = mmcv_runner().build_optimizer
    cfg = dict(SGD, paramwise_cfg=paramwise)
    theirs = _python_warnings(lambda: build(model(), copy.deepcopy(cfg)))
    ours = _python_warnings(lambda: fastopt.build_optimizer(model(), copy.deepcopy(cfg)))
    assert sorted(ours) == sorted(theirs)
    if "shared" in case:
        assert theirs


def test_fastopt_warnings_take_the_hosts_channel() -> None:
    """fastopt's own warnings (a paramwise key no constructor reads, a custom key matching
    nothing) go to mmengine's logger under its semantics, to Python's warnings under mmcv's."""
    mmengine_build()
    paramwise = dict(norm_decay_mul=0.0, custom_keys={"bakbone": dict(lr_mult=0.1)})
    with mmengine_log() as logged, warnings.catch_warnings():
        warnings.simplefilter("error")
        fastopt.build_optim_wrapper(M.MixedNormNet(), dict(optimizer=dict(SGD), paramwise_cfg=paramwise))
    assert any("'norm_decay_mul' is not used by mmengine's" in m for m in logged)
    assert any("custom_keys ['bakbone'] match no trainable parameter" in m for m in logged)
    with mmengine_log() as logged:
        python = _python_warnings(lambda: fastopt.build_optimizer(M.MixedNormNet(),
                                                                   dict(SGD, paramwise_cfg=paramwise)))
    assert not logged and len(python) == 2


def test_without_mmengine_its_warnings_are_python_warnings(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(_report, "_mmengine_print_log", lambda: None)
    cfg = dict(optimizer=dict(SGD), paramwise_cfg=dict(bypass_duplicate=True))
    messages = _python_warnings(lambda: fastopt.build_optim_wrapper(M.SharedNet(), cfg))
    assert messages and all("is duplicate. It is skipped since bypass_duplicate=True" in m for m in messages)


def test_the_warnings_are_said_once_per_build() -> None:
    """A subclass with its own ``add_params`` (the legacy path, one plan per module) says each
    parameter's message once."""
    mmengine_build()

    class PerModule(fastopt.DefaultOptimWrapperConstructor):
        def add_params(self, params: list[dict], module: nn.Module, prefix: str = "",
                       is_dcn_module: Any = None) -> None:
            super().add_params(params, module, prefix, is_dcn_module)

    with mmengine_log() as logged:
        PerModule(dict(optimizer=dict(SGD)), dict(norm_decay_mult=0.0))(M.FrozenStemNet())
    assert logged and len(logged) == len(set(logged))
