#!/usr/bin/env bash
# survgen's GPU check in one command: `bash benchmarks/gpu_check.sh`, about 8 minutes at most on one H100/H200.
# It builds survgen._C (its CUDA kernels for TORCH_CUDA_ARCH_LIST, by default this GPU's architecture), then runs
# benchmarks/gpu_check.py, which runs `pytest -m gpu tests/test_kernels_gpu.py`, checks every attention backend
# against float64, times them, and runs the sd15 video U-Net. It writes gpu_check.json and gpu_check.md to $OUT
# (else benchmarks/results/gpu/); its last line is `gpu_check: N checks, M failed`, its exit status 1 when M > 0.
#
# The machine needs CUDA torch, triton, pytest, pybind11, setuptools, ninja and nvcc (without nvcc survgen._C
# builds without the cuda backend, and that check fails); no package registry. Wheels the image lacks go in .whl/
# at the repository root, and this script installs them itself:
#   python3 -m pip install -q --no-index --no-deps --target /tmp/site .whl/*.whl && export PYTHONPATH=/tmp/site
# For an image with torch, triton, accelerate, transformers, safetensors, huggingface-hub, typer, rich, numpy,
# pillow, pytest and pytest-benchmark, carry (all pure Python, py3-none-any):
#   diffusers                 the video U-Net's spatial blocks (only the U-Net checks fail without it)
#   requests, urllib3, idna, certifi, charset-normalizer
#                             diffusers checks requests' version at import and imports it; huggingface-hub >= 1
#                             no longer brings it (leave out those the image has)
# fetched where PyPI is reachable, e.g.:
#   pip download --no-deps --only-binary=:all: --platform any --python-version 3.10 -d .whl \
#       diffusers requests urllib3 idna certifi charset-normalizer
# Not needed: av and decord (nothing here reads video files), importlib_metadata (the standard library's serves).
#
# SURVGEN_GPU_CHECK_DRY=1: the same steps on the CPU in under a minute (Triton's interpreter, float32, small shapes:
# `Plan` in gpu_check.py), building survgen._C only if it does not import, writing to $OUT or a temporary folder.
# CI runs it so that the script cannot rot between GPU runs.
set -euo pipefail
cd "$(dirname "$0")/.."
# A system Python marked externally managed (PEP 668) would refuse the installs below; pip ignores it if older.
export PIP_BREAK_SYSTEM_PACKAGES=1

if [ -d .whl ]; then
  python3 -m pip install -q --no-index --no-deps --target /tmp/site .whl/*.whl
  export PYTHONPATH=/tmp/site${PYTHONPATH:+:$PYTHONPATH}
fi

build() {
  python3 -m pip install -q --no-index --no-build-isolation --no-deps -e .
}

if [ "${SURVGEN_GPU_CHECK_DRY:-0}" = 1 ]; then
  python3 -c "import torch, survgen._C" 2>/dev/null || build  # _C links against the libraries torch loads
else
  if [ -z "${TORCH_CUDA_ARCH_LIST:-}" ]; then
    # This GPU's, e.g. 9.0 (empty without one: torch's build then picks its own).
    probe="import torch; print('%d.%d' % torch.cuda.get_device_capability() if torch.cuda.is_available() else '')"
    TORCH_CUDA_ARCH_LIST=$(python3 -c "$probe")
    export TORCH_CUDA_ARCH_LIST
  fi
  command -v nvcc >/dev/null || echo "gpu_check.sh: nvcc is not on PATH: survgen._C may build without CUDA" >&2
  # A survgen._C built before (a CPU-only one, say) can look up to date to setuptools: build it afresh.
  rm -f survgen/_C*.so
  build
fi
exec python3 benchmarks/gpu_check.py
