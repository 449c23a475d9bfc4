"""Package-level checks: the native core is the one under test, the public API is complete."""

from __future__ import annotations

import os

import pytest

import fastopt


def test_native_core_is_loaded() -> None:
    """A missing extension would silently test the Python fallback instead."""
    if os.environ.get("FASTOPT_ALLOW_PURE_PYTHON") == "1":
        pytest.skip("pure-Python fallback explicitly allowed")
    assert fastopt.HAVE_NATIVE, "fastopt._C failed to import; rebuild with `pip install -e .`"


def test_public_api() -> None:
    for name in ["build_optimizer", "build_optim_wrapper", "Registry", "build_from_cfg",
                 "OPTIMIZERS", "OPTIMIZER_BUILDERS", "OPTIM_WRAPPER_CONSTRUCTORS", "OPTIM_WRAPPERS",
                 "DefaultOptimizerConstructor", "DefaultOptimWrapperConstructor", "OptimWrapper"]:
        assert name in fastopt.__all__
        assert getattr(fastopt, name) is not None
