#!/usr/bin/env bash
# A venv with another torch release, the references (mmengine 0.10.7, mmcv 1.7.2) and fastopt,
# for running the core suites on every torch in the supported range:
#   bash scripts/install_torch_venv.sh VENV TORCH_VERSION     (e.g. .venv-torch2.1 2.1.0)
# PyPI's torch wheels before 2.13 are CUDA builds (about 3 GB with their nvidia libraries);
# they run on the CPU. torch before 2.3 was built against numpy 1.x.
set -euo pipefail
cd "$(dirname "$0")/.."
VENV="$1"
VERSION="$2"
export PIP_DISABLE_PIP_VERSION_CHECK=1
[ -x "$VENV/bin/python" ] || python -m venv "$VENV"
PY="$VENV/bin/python"
NUMPY="numpy"
case "$VERSION" in
  2.0.*|2.1.*|2.2.*)
    NUMPY="numpy<2"
    # every install below keeps numpy 1.x, and an OpenCV built against it (mmcv imports cv2);
    # and pkg_resources, which torch's cpp_extension imports there (setuptools 81 removed it)
    printf 'numpy<2\nopencv-python<4.12\nsetuptools<81\n' > "$VENV/constraints.txt"
    export PIP_CONSTRAINT="$(cd "$VENV" && pwd)/constraints.txt" ;;
esac
$PY -m pip install -q "torch==$VERSION" "$NUMPY"
PYTHON="$PY" TORCH_SPEC="torch==$VERSION" bash scripts/install_references.sh
$PY -m pip install -q "scikit-build-core>=0.10" "pybind11>=2.12" cmake ninja "$NUMPY"
# fastopt itself, built in a build folder of this venv's own (the main one may be in use)
$PY -m pip install -q -e ".[test]" "torch==$VERSION" "$NUMPY" --no-build-isolation \
  -C build-dir="build/$(basename "$VENV")"
$PY -c "import torch, fastopt, fastopt._C; print('torch', torch.__version__, 'fastopt', fastopt.__version__)"
