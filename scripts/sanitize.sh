#!/usr/bin/env bash
# Build the native core with AddressSanitizer + UndefinedBehaviorSanitizer (LeakSanitizer
# included) and run the native tests: matcher, rule assignment, step kernels in every
# instruction-set build. The extension module builds in the same tree, so every source compiles
# with -Werror. Exits non-zero on a warning, a test failure or a sanitizer report.
set -euo pipefail
cd "$(dirname "$0")/.."
python -m pip install -q pybind11
build=build/sanitize
cmake -S . -B "$build" -DCMAKE_BUILD_TYPE=RelWithDebInfo -DFASTOPT_SANITIZE=ON -DFASTOPT_BUILD_TESTS=ON \
  -DFASTOPT_WERROR=ON \
  -Dpybind11_DIR="$(python -c 'import pybind11; print(pybind11.get_cmake_dir())')" > /dev/null
cmake --build "$build" --target fastopt_native_tests _C -j 2 > /dev/null
ASAN_OPTIONS=detect_leaks=1:halt_on_error=1 UBSAN_OPTIONS=halt_on_error=1:print_stacktrace=1 \
  "$build/fastopt_native_tests"
