#!/usr/bin/env bash
# Install the CPU build of torch and the two reference implementations the parity
# tests compare against: mmengine 0.10.7 and mmcv 1.7.2 (pure Python, no ops).
set -euo pipefail
PIP="${PIP:-python -m pip}"

$PIP install -q "torch==2.13.0"
$PIP install -q "mmengine==0.10.7"
if ! python -c "import importlib.metadata as m; assert m.version('mmcv') == '1.7.2'" 2>/dev/null; then
  # mmcv 1.x only builds with an old setuptools and without build isolation.
  $PIP install -q "setuptools<70" wheel
  MMCV_WITH_OPS=0 $PIP install -q --no-build-isolation "mmcv==1.7.2"
  $PIP install -q "setuptools>=77"
fi
# MMDetection 3.x and MMSegmentation 1.x ship the layer-wise lr decay constructors the tests
# compare against; they need mmcv 2.x to import as packages, so only their files are used.
$PIP install -q --no-deps "mmdet==3.3.0" "mmsegmentation==1.2.2"
python - <<'PY'
import importlib.metadata as m
for pkg in ("torch", "mmengine", "mmcv", "mmdet", "mmsegmentation"):
    print(f"{pkg}=={m.version(pkg)}")
PY
