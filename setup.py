"""Builds the compiled extension survgen._C from csrc/.

The C++ sources always build (CPU); CUDA sources are added when the installed
torch was built with CUDA and nvcc is found. Everything else is declared in
pyproject.toml. Install with `pip install --no-build-isolation -e .` so the
build uses the torch already installed (an isolated build would fetch another).
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
            extra_compile_args={"cxx": extra_cxx, "nvcc": ["-O3", "--use_fast_math"]},
        )
    return CppExtension("survgen._C", cpp_sources, extra_compile_args={"cxx": extra_cxx})


setup(ext_modules=[_extension()], cmdclass={"build_ext": BuildExtension.with_options(use_ninja=False)})
