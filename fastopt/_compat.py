"""Small compatibility shims shared by the mmcv plug-in, the benchmarks and the tests."""

from __future__ import annotations

import sys
import types


def ensure_torchvision() -> None:
    """Make ``import torchvision`` succeed: mmcv 1.x's ``mmcv.runner`` imports it at load time.

    When the real package cannot be imported beside this torch build, an empty stand-in
    module (with a ``__version__``, which mmengine's environment report reads) is registered.
    """
    if "torchvision" in sys.modules:
        return
    try:
        import torchvision  # noqa: F401
    except Exception:
        stub = types.ModuleType("torchvision")
        stub.__version__ = "0.0.0"  # type: ignore[attr-defined]
        sys.modules["torchvision"] = stub
