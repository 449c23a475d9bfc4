#!/usr/bin/env bash
# Install the CPU build of torch and the reference implementations the parity
# tests compare against: mmengine 0.10.7, mmcv 1.7.2 (pure Python, no ops) and the
# layer-decay constructor files of MMDetection / MMSegmentation.
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
# Their mmcv 1.x-era releases (MMDetection 2.28.2, MMSegmentation 0.30.0) hold the mmcv-style
# layer decay constructors; only those two files are taken from the sdists, into .references/.
REFS="${FASTOPT_REFERENCES:-$(cd "$(dirname "$0")/.." && pwd)/.references}"
MMDET2=mmdet-2.28.2/mmdet/core/optimizers/layer_decay_optimizer_constructor.py
MMSEG0=mmsegmentation-0.30.0/mmseg/core/optimizers/layer_decay_optimizer_constructor.py
if [ ! -f "$REFS/$MMDET2" ] || [ ! -f "$REFS/$MMSEG0" ]; then
  sdists="$(mktemp -d)"
  $PIP download -q --no-deps --no-binary :all: -d "$sdists" "mmdet==2.28.2" "mmsegmentation==0.30.0"
  mkdir -p "$REFS"
  tar xzf "$sdists/mmdet-2.28.2.tar.gz" -C "$REFS" "$MMDET2"
  tar xzf "$sdists/mmsegmentation-0.30.0.tar.gz" -C "$REFS" "$MMSEG0"
  rm -rf "$sdists"
fi
echo "mmcv-era layer decay references in $REFS"
python - <<'PY'
import importlib.metadata as m
for pkg in ("torch", "mmengine", "mmcv", "mmdet", "mmsegmentation"):
    print(f"{pkg}=={m.version(pkg)}")
PY
