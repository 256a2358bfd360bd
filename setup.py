"""Builds the compiled extension survgen._C from csrc/.

The C++ sources always build (CPU); CUDA sources are added when the installed
torch was built with CUDA and nvcc is found. Everything else is declared in
pyproject.toml. Install with `pip install --no-build-isolation -e .` so the
build uses the torch already installed (an isolated build would fetch another).

SURVGEN_SANITIZE=1 builds it with AddressSanitizer and UndefinedBehaviorSanitizer
(scripts/sanitize.sh builds such a copy into a temporary directory; it only runs
with libasan preloaded, so never install it).
"""

import glob
import os

from setuptools import setup
from torch.utils.cpp_extension import CUDA_HOME, BuildExtension, CppExtension, CUDAExtension
import torch

HERE = os.path.dirname(os.path.abspath(__file__))


def _extension():
    cpp_sources = sorted(glob.glob(os.path.join("csrc", "*.cpp")))
    cuda_sources = sorted(glob.glob(os.path.join("csrc", "*.cu")))
    extra_cxx = ["-O3", "-std=c++20"]
    extra_link = []
    if os.environ.get("SURVGEN_SANITIZE", "0") == "1":
        # Any UB report in our code aborts, so that a test run cannot pass over one.
        sanitizers = ["-fsanitize=address,undefined", "-fno-sanitize-recover=undefined"]
        extra_cxx += [*sanitizers, "-fno-omit-frame-pointer", "-g"]
        extra_link += sanitizers
    with_cuda = (
        torch.version.cuda is not None
        and CUDA_HOME is not None
        and os.environ.get("SURVGEN_NO_CUDA", "0") != "1"
    )
    if with_cuda and cuda_sources:
        return CUDAExtension(
            "survgen._C",
            cpp_sources + cuda_sources,
            define_macros=[("SURVGEN_WITH_CUDA", "1")],
            # No --use_fast_math: it would flush denormals and approximate exp/div in the float32 kernels,
            # which are tested against float64 with float32's own error as the bound.
            # TORCH_CUDA_ARCH_LIST (read by torch's build) picks the GPU architectures.
            extra_compile_args={"cxx": extra_cxx, "nvcc": ["-O3"]},
            extra_link_args=extra_link,
        )
    return CppExtension("survgen._C", cpp_sources, extra_compile_args={"cxx": extra_cxx}, extra_link_args=extra_link)


# BuildExtension builds with ninja (parallel, incremental) when it is installed, else with setuptools.
setup(ext_modules=[_extension()], cmdclass={"build_ext": BuildExtension})
