#!/usr/bin/env bash
# Install the CPU build of torch and the reference implementations the parity
# tests compare against: mmengine 0.10.7, mmcv 1.7.2 (pure Python, no ops) and the
# layer-decay constructor files of MMDetection / MMSegmentation.
#   PYTHON=VENV/bin/python TORCH_SPEC=torch==2.5.1 bash scripts/install_references.sh
# installs them into another environment, beside another torch (scripts/install_torch_venv.sh).
set -euo pipefail
PY="${PYTHON:-python}"
PIP="${PIP:-$PY -m pip}"

$PIP install -q "${TORCH_SPEC:-torch==2.13.0}"
$PIP install -q "mmengine==0.10.7"
if ! $PY -c "import importlib.metadata as m; assert m.version('mmcv') == '1.7.2'" 2>/dev/null; then
  # mmcv 1.x only builds with an old setuptools and without build isolation.
  $PIP install -q "setuptools<70" wheel
  MMCV_WITH_OPS=0 $PIP install -q --no-build-isolation "mmcv==1.7.2"
  $PIP install -q "setuptools>=77"
fi
# MMDetection 3.x and MMSegmentation 1.x ship the layer-wise lr decay constructors the tests
# compare against; they need mmcv 2.x to import as packages, so only their files are used.
$PIP install -q --no-deps "mmdet==3.3.0" "mmsegmentation==1.2.2"
# Files of OpenMMLab projects that cannot be imported beside mmcv 1.7.2 / each other, taken
# alone from their releases into .references/: the mmcv 1.x-era layer decay constructors
# (MMDetection 2.28.2, MMSegmentation 0.30.0 sdists) and MMAction2's TSM constructors
# (1.2.0 for mmengine, 0.24.1 for mmcv 1.x; wheels).
REFS="${FASTOPT_REFERENCES:-$(cd "$(dirname "$0")/.." && pwd)/.references}"
FETCH="$PY $(dirname "$0")/fetch_release_file.py"
MMDET2=mmdet/core/optimizers/layer_decay_optimizer_constructor.py
MMSEG0=mmseg/core/optimizers/layer_decay_optimizer_constructor.py
MMACTION1=mmaction/engine/optimizers/tsm_optim_wrapper_constructor.py
MMACTION0=mmaction/core/optimizer/tsm_optimizer_constructor.py
[ -f "$REFS/mmdet-2.28.2/$MMDET2" ] || $FETCH mmdet 2.28.2 sdist "$REFS" "$MMDET2"
[ -f "$REFS/mmsegmentation-0.30.0/$MMSEG0" ] || $FETCH mmsegmentation 0.30.0 sdist "$REFS" "$MMSEG0"
[ -f "$REFS/mmaction2-1.2.0/$MMACTION1" ] || $FETCH mmaction2 1.2.0 wheel "$REFS" "$MMACTION1"
[ -f "$REFS/mmaction2-0.24.1/$MMACTION0" ] || $FETCH mmaction2 0.24.1 wheel "$REFS" "$MMACTION0"
# Earlier releases' default constructors, for tests/test_versions.py (mmengine wheels, mmcv sdists).
MMENGINE_CTOR=mmengine/optim/optimizer/default_constructor.py
MMCV_CTOR=mmcv/runner/optimizer/default_constructor.py
for v in 0.7.0 0.7.4 0.8.0 0.8.5 0.9.1 0.10.3 0.10.4; do
  [ -f "$REFS/mmengine-$v/$MMENGINE_CTOR" ] || $FETCH mmengine "$v" wheel "$REFS" "$MMENGINE_CTOR"
done
for v in 1.3.0 1.5.0; do
  [ -f "$REFS/mmcv-$v/$MMCV_CTOR" ] || $FETCH mmcv "$v" sdist "$REFS" "$MMCV_CTOR"
done
[ -f "$REFS/mmpretrain-1.2.0/mmpretrain/engine/optimizers/layer_decay_optim_wrapper_constructor.py" ] || $FETCH mmpretrain 1.2.0 wheel "$REFS" mmpretrain/engine/optimizers/layer_decay_optim_wrapper_constructor.py
echo "single-file references in $REFS"
$PY - <<'PY'
import importlib.metadata as m
for pkg in ("torch", "mmengine", "mmcv", "mmdet", "mmsegmentation"):
    print(f"{pkg}=={m.version(pkg)}")
PY
