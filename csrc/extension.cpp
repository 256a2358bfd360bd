// survgen._C: the compiled core. Python imports it to register the C++/CUDA
// kernels of survgen.kernels with the torch dispatcher.
#include <torch/extension.h>

namespace survgen {

bool compiled_with_cuda() {
#ifdef SURVGEN_WITH_CUDA
  return true;
#else
  return false;
#endif
}

}  // namespace survgen

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  m.doc() = "survgen compiled kernels";
  m.def("compiled_with_cuda", &survgen::compiled_with_cuda,
        "True when this build includes the CUDA kernels");
}
