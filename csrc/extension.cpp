// survgen._C: the compiled core. Python imports it to register the C++/CUDA
// kernels of survgen.kernels with the torch dispatcher, and asks it which
// kernels this build has (survgen.kernels.backends turns that into reasons).
//
// The pybind11 module is compiled only inside the Python extension build
// (torch's BuildExtension defines TORCH_EXTENSION_NAME); the standalone CMake
// build compiles the rest into a plain C++ library for the C++ tests.
#include "survgen.h"

#ifdef TORCH_EXTENSION_NAME
#include <torch/extension.h>
#endif

namespace survgen {

bool compiled_with_cuda() {
#ifdef SURVGEN_WITH_CUDA
  return true;
#else
  return false;
#endif
}

std::vector<std::string> kernels() {
  // No fused kernel is written yet: each one adds its "op:device" entry here
  // next to its TORCH_LIBRARY_IMPL registration.
  return {};
}

}  // namespace survgen

#ifdef TORCH_EXTENSION_NAME
PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  m.doc() = "survgen compiled kernels";
  m.def("compiled_with_cuda", &survgen::compiled_with_cuda,
        "True when this build includes the CUDA kernels");
  m.def("kernels", &survgen::kernels,
        "The fused kernels registered by this build, as 'op:device' strings");
}
#endif
