// survgen._C: the compiled core. Python imports it to register the C++/CUDA
// kernels of survgen.kernels with the torch dispatcher, and asks it which
// kernels this build has (survgen.kernels.backends turns that into reasons).
//
// The pybind11 module is compiled only inside the Python extension build
// (torch's BuildExtension defines TORCH_EXTENSION_NAME); the standalone CMake
// build compiles the rest into a plain C++ library for the C++ tests.
#include "survgen.h"

#include "temporal_attention.h"

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
  // One "op:device" entry per fused kernel bound below; survgen.kernels.ops
  // registers each with the torch.library op for that device.
  std::vector<std::string> names = {"temporal_attention:cpu", "temporal_attention_backward:cpu"};
#ifdef SURVGEN_WITH_CUDA
  names.push_back("temporal_attention:cuda");
#endif
  return names;
}

}  // namespace survgen

#ifdef TORCH_EXTENSION_NAME
PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  m.doc() = "survgen compiled kernels";
  m.def("compiled_with_cuda", &survgen::compiled_with_cuda,
        "True when this build includes the CUDA kernels");
  m.def("kernels", &survgen::kernels,
        "The fused kernels in this build, as 'op:device' strings");
  // The kernels release the GIL: they run for milliseconds to seconds on their own threads.
  const auto no_gil = pybind11::call_guard<pybind11::gil_scoped_release>();
  m.def("temporal_attention_forward_cpu", &survgen::temporal_attention_forward_cpu, no_gil,
        "Fused temporal attention, CPU (see survgen.kernels.temporal_attention)");
  m.def("temporal_attention_backward_cpu", &survgen::temporal_attention_backward_cpu, no_gil,
        "Gradients of the fused temporal attention, CPU (recomputes the forward per tile)");
#ifdef SURVGEN_WITH_CUDA
  m.def("temporal_attention_forward_cuda", &survgen::temporal_attention_forward_cuda, no_gil,
        "Fused temporal attention, CUDA (see survgen.kernels.temporal_attention)");
#endif
}
#endif
