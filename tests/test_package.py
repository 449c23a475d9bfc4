"""Package-level checks: the native core is the one under test, the public API is complete."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

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


ROOT = Path(__file__).parents[1]
#: The command-line scripts of the repository (benchmarks, helper scripts); ``test_bench.py`` is a
#: pytest-benchmark suite, not a script.
SCRIPTS = sorted(p for d in ("benchmarks", "scripts") for p in (ROOT / d).glob("*.py")
                 if p.name != "test_bench.py")


@pytest.mark.parametrize("script", SCRIPTS, ids=[f"{p.parent.name}/{p.name}" for p in SCRIPTS])
def test_every_script_starts(script: Path) -> None:
    """Each script imports what it uses from fastopt and answers ``--help`` (a renamed or moved
    name fails here, not in CI's later stages)."""
    done = subprocess.run([sys.executable, str(script), "--help"], cwd=ROOT, capture_output=True, text=True,
                          timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    assert "usage" in done.stdout.lower()
