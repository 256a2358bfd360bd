#!/usr/bin/env bash
# AddressSanitizer + UndefinedBehaviorSanitizer over csrc/: builds the C++ tests (CMake, SURVGEN_SANITIZE=ON)
# and a sanitized survgen._C (setup.py, SURVGEN_SANITIZE=1), both into one temporary directory, and runs the
# C++ tests and the CPU kernel tests (tests/test_kernels.py, tests/test_kernels_cpu.py) under them. The
# installed survgen._C is not touched: the Python tests import a copy of the package whose _C is the
# sanitized one.
#
#   scripts/sanitize.sh            # with the project's venv active
#
# Only our code is instrumented (torch and Python are not), and any UB report in it aborts the run. Inside
# Python, libasan and libubsan are preloaded (ASan's runtime must come first) and leak checking is off:
# CPython and torch keep their allocations until exit, which LeakSanitizer would report.
set -euo pipefail

repo=$(cd "$(dirname "$0")/.." && pwd)
python=${PYTHON:-python}
scratch=$(mktemp -d)
trap 'rm -rf "$scratch"' EXIT
export UBSAN_OPTIONS=print_stacktrace=1:halt_on_error=1

# A build's output only when it failed.
quietly() {
  "$@" >"$scratch/build.log" 2>&1 || { cat "$scratch/build.log"; return 1; }
}

echo "== C++ tests, ASan + UBSan" >&2
quietly cmake -S "$repo" -B "$scratch/cmake" -DSURVGEN_SANITIZE=ON \
  -DCMAKE_PREFIX_PATH="$("$python" -c 'import torch; print(torch.utils.cmake_prefix_path)')"
quietly cmake --build "$scratch/cmake" -j"$(nproc)"
ASAN_OPTIONS=detect_leaks=0 ctest --test-dir "$scratch/cmake" --output-on-failure

echo "== survgen._C, ASan + UBSan: CPU kernel tests" >&2
(cd "$repo" && export SURVGEN_SANITIZE=1 MAX_JOBS="$(nproc)" &&
  quietly "$python" setup.py build_ext --build-lib "$scratch/lib" --build-temp "$scratch/temp")
# The package as a wheel lays it out (kernels/ and cli/ inside survgen/), with the sanitized _C.
mkdir "$scratch/package"
cp -r "$repo/survgen" "$scratch/package/survgen"
cp -r "$repo/kernels" "$repo/cli" "$scratch/package/survgen/"
cp "$scratch"/lib/survgen/_C*.so "$scratch/package/survgen/"
ldd "$scratch"/package/survgen/_C*.so | grep -q libasan || { echo "the sanitized survgen._C does not link libasan" >&2; exit 1; }
cd "$scratch"
preload="$(gcc -print-file-name=libasan.so) $(gcc -print-file-name=libubsan.so)"
run() {
  PYTHONPATH="$scratch/package" PYTHONDONTWRITEBYTECODE=1 TMPDIR="$scratch" LD_PRELOAD="$preload" \
    ASAN_OPTIONS=detect_leaks=0 "$python" "$@"
}
run -c 'import torch, survgen._C as c; print("survgen._C:", c.__file__)' >&2
run -m pytest -q -p no:cacheprovider "$repo/tests/test_kernels.py" "$repo/tests/test_kernels_cpu.py"
