"""The OpenMMLab 2.x host environment (mmengine 0.10.7, mmcv-lite 2.1.0, mmdet 3.3.0, mmpretrain
1.2.0): its own venv and pytest run (``.ci/run``); the main run does not collect this folder."""

from __future__ import annotations

import importlib
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "scripts"))
host_stack = importlib.import_module("host_stack")
host_stack.install()


def shipped(package: str, relative: str) -> str:
    """Path of a config shipped inside an installed package (``<package>/.mim/configs``)."""
    mod = pytest.importorskip(package)
    path = Path(mod.__file__).parent / ".mim" / "configs" / relative
    assert path.is_file(), path
    return str(path)


@pytest.fixture(autouse=True)
def _quiet_mmengine() -> None:
    from mmengine.logging import MMLogger

    MMLogger.get_current_instance().setLevel("ERROR")


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """The host libraries warn at import and build time (moved modules, deprecated arguments);
    those warnings are theirs, not fastopt's."""
    for item in items:
        for category in ("ImportWarning", "DeprecationWarning", "FutureWarning", "UserWarning"):
            item.add_marker(pytest.mark.filterwarnings(f"ignore::{category}"))
