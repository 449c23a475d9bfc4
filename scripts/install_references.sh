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
python - <<'PY'
import importlib.metadata as m
for pkg in ("torch", "mmengine", "mmcv"):
    print(f"{pkg}=={m.version(pkg)}")
PY
