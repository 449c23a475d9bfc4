"""Shared fixtures: deterministic torch, quiet references; in CI every reference must be present."""

from __future__ import annotations

import os
from typing import Any

import pytest
import torch

from .refs import TALLIES, install_torchvision_stand_in, remove_torchvision_stand_in

#: The only skips allowed where FASTOPT_REQUIRE_REFERENCES=1 (CI): hardware or opt-in sizes,
#: sources no registry ships, and what the installed torch release itself cannot do
#: (tests/torch_release.py). Any other skip (a reference or the native core missing)
#: fails the test there.
ALLOWED_SKIPS = ("needs a CUDA device", "FASTOPT_BIG_TESTS=1", "FASTOPT_MMDET_SOURCE", "needs torch>=",
                 "no oracle on this torch", "this torch exports no C shim")

#: tests/host/ needs the OpenMMLab 2.x stack (mmcv-lite 2.x, which cannot share a venv with the
#: mmcv 1.7.2 reference): .ci/run gives it a venv and a pytest run of its own.
collect_ignore = [] if os.environ.get("FASTOPT_HOST_STACK") == "1" else ["host"]


def pytest_configure(config: pytest.Config) -> None:
    """mmcv 1.x's ``mmcv.runner`` imports torchvision: where it does not import, a stand-in module
    is installed for the whole run (the mmcv plug-in, the mmcv references, the doctest collection
    of ``fastopt/integrations/mmcv.py``). Not for the host stack: scripts/host_stack.py imports
    its real torchvision."""
    if os.environ.get("FASTOPT_HOST_STACK") != "1":
        install_torchvision_stand_in()


def pytest_unconfigure(config: pytest.Config) -> None:
    """Take the torchvision stand-in out again."""
    remove_torchvision_stand_in()


@pytest.fixture(autouse=True)
def _seed() -> None:
    torch.manual_seed(0)


@pytest.fixture(autouse=True, scope="session")
def _check_native_pointers() -> Any:
    """Every native step checks each address it hands the kernel against the tensor it came
    from (a stale cache fails the test that made it stale, instead of writing to freed memory)."""
    from fastopt import _kernels

    saved, _kernels.CHECK_POINTERS = getattr(_kernels, "CHECK_POINTERS", False), True
    yield
    _kernels.CHECK_POINTERS = saved


def _fail_forbidden_skip(report: Any) -> None:
    if os.environ.get("FASTOPT_REQUIRE_REFERENCES") != "1" or not report.skipped:
        return
    if hasattr(report, "wasxfail"):
        return
    reason = report.longrepr[2] if isinstance(report.longrepr, tuple) else str(report.longrepr)
    if not any(allowed in reason for allowed in ALLOWED_SKIPS):
        report.outcome = "failed"
        report.longrepr = ("skipped where every reference must be present "
                           f"(FASTOPT_REQUIRE_REFERENCES=1): {reason}")


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo) -> Any:
    """A skip for a missing reference fails under FASTOPT_REQUIRE_REFERENCES=1."""
    result = yield
    _fail_forbidden_skip(result.get_result())


@pytest.hookimpl(hookwrapper=True)
def pytest_make_collect_report(collector: pytest.Collector) -> Any:
    """The same for a module skipped as a whole (``importorskip`` at import)."""
    result = yield
    _fail_forbidden_skip(result.get_result())


def pytest_terminal_summary(terminalreporter: Any) -> None:
    """How the randomized parity tests' examples fell (split / one setting / raised)."""
    if TALLIES:
        terminalreporter.section("randomized parity examples")
        for t in TALLIES:
            terminalreporter.write_line(t.summary())
