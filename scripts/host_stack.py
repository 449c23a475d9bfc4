"""Make the OpenMMLab 2.x stack importable on a CPU-only machine, for the host tests and the
config sweep (never imported by the fastopt package itself).

- ``mmcv-lite`` ships no compiled ops (``mmcv._ext``); building a model never calls them, so a
  stand-in module answers every op name with a function that raises if it is ever called. Its
  ``__spec__`` has no loader, so mmengine's ``mmcv_full_available()`` answers False, as it does
  for the real mmcv-lite.
- The registry's torchvision wheel is a CUDA build whose fake-op registrations fail beside a
  CPU torch; ``torch.library.register_fake`` is skipped while torchvision imports (its models
  construct fine without them).
"""

from __future__ import annotations

import importlib.machinery
import sys
import types
from typing import Any


class _MissingOps(types.ModuleType):
    """``mmcv._ext`` stand-in: any op name is a function that raises when called."""

    def __getattr__(self, name: str) -> Any:
        if name.startswith("__"):
            raise AttributeError(name)

        def op(*args: Any, **kwargs: Any) -> Any:
            raise RuntimeError(f"mmcv op {name!r} is not compiled in mmcv-lite")

        return op


def install() -> None:
    """Register the ``mmcv._ext`` stand-in and import torchvision without its fake-op
    registrations (idempotent)."""
    if "mmcv._ext" not in sys.modules:
        ext = _MissingOps("mmcv._ext")
        ext.__spec__ = importlib.machinery.ModuleSpec("mmcv._ext", None)
        sys.modules["mmcv._ext"] = ext
    if "torchvision" in sys.modules:
        return
    import torch

    real = torch.library.register_fake

    def skip(op: Any, fn: Any = None, **kwargs: Any) -> Any:
        return (lambda f: f) if fn is None else fn

    torch.library.register_fake = skip
    try:
        import torchvision  # noqa: F401
    except Exception:
        pass  # the host tests report what then fails to import
    finally:
        torch.library.register_fake = real


if __name__ == "__main__":
    # python scripts/host_stack.py fastopt ARGS...: the fastopt command with the stand-ins in place
    USAGE = "usage: python scripts/host_stack.py fastopt COMMAND [ARGS...]"
    if sys.argv[1:2] in (["-h"], ["--help"]):
        print(USAGE)
        sys.exit(0)
    if len(sys.argv) < 2 or sys.argv[1] != "fastopt":
        raise SystemExit(USAGE)
    install()
    from fastopt.tools.cli import main

    sys.exit(main(sys.argv[2:]))
