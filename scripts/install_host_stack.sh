#!/usr/bin/env bash
# The OpenMMLab 2.x host stack in a venv of its own (mmcv-lite 2.x cannot share one with the
# mmcv 1.7.2 reference): torch 2.13.0 CPU, mmengine 0.10.7, mmcv-lite 2.1.0, mmdet 3.3.0,
# mmpretrain 1.2.0, mmsegmentation 1.2.2, timm and torchvision (without their torch pins, which
# would pull a CUDA build of another torch), then fastopt itself.
#   bash scripts/install_host_stack.sh [VENV]   (default .venv-host)
set -euo pipefail
cd "$(dirname "$0")/.."
VENV="${1:-.venv-host}"
python -m venv "$VENV"
PY="$VENV/bin/python"
export PIP_DISABLE_PIP_VERSION_CHECK=1
$PY -m pip install -q "torch==2.13.0"
$PY -m pip install -q "mmengine==0.10.7" "mmcv-lite==2.1.0" "mmdet==3.3.0" "mmpretrain==1.2.0" \
  "mmsegmentation==1.2.2" pytest hypothesis huggingface_hub safetensors pyyaml pillow \
  "scikit-build-core>=0.10" "pybind11>=2.12" "setuptools<81" scikit-image lap
# (mmengine reads `_base_ = 'mmdet::...'` with pkg_resources, which setuptools 81 removed;
# scikit-image and lap are what BoxInst and the ByteTrack/OC-SORT trackers import while building)
# timm and torchvision ask for a torch other than 2.13.0; their code runs on it
$PY -m pip install -q --no-deps "timm==1.0.31" "torchvision==0.28.0"
$PY -m pip install -q -e . --no-build-isolation --no-deps
$PY - <<'PY'
import importlib.metadata as m
for pkg in ("torch", "mmengine", "mmcv-lite", "mmdet", "mmpretrain", "mmsegmentation", "timm", "torchvision"):
    print(f"{pkg}=={m.version(pkg)}")
PY
