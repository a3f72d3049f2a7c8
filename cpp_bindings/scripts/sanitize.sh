#!/usr/bin/env bash
# Build the C++ core and its tests with AddressSanitizer + UndefinedBehaviorSanitizer in a
# separate build directory and run ctest; any sanitizer report fails the run.
#   bash cpp_bindings/scripts/sanitize.sh [BUILD_DIR]     (default: cpp_bindings/build-sanitize)
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
build="${1:-$here/build-sanitize}"
jobs="${ONNXCAM_JOBS:-2}"

export ASAN_OPTIONS="${ASAN_OPTIONS:-detect_leaks=1:abort_on_error=1:strict_string_checks=1:detect_stack_use_after_return=1}"
export UBSAN_OPTIONS="${UBSAN_OPTIONS:-print_stacktrace=1:halt_on_error=1}"

cmake -S "$here" -B "$build" -DCMAKE_BUILD_TYPE=Debug -DONNXCAM_SANITIZE=ON -DONNXCAM_WERROR=ON
cmake --build "$build" -j "$jobs"
ctest --test-dir "$build" --output-on-failure
echo "sanitize.sh: all tests passed under ASan + UBSan ($build)"
