// survgen._C: the compiled core. Loading it defines the ops survgen::temporal_attention
// and survgen::temporal_attention_backward and registers their C++/CUDA kernels
// with the torch dispatcher (pytorch/extension-cpp's layout: schema and kernels
// here, fake and autograd in kernels/ops.py). Python asks it which kernels this
// build has (survgen.kernels.backends turns that into reasons).
//
// The registrations are part of the core, so the standalone CMake build's C++
// tests call the kernels through the dispatcher too. The pybind11 module is
// compiled only inside the Python extension build (torch's BuildExtension
// defines TORCH_EXTENSION_NAME).
#include "survgen.h"

#include <torch/library.h>

#include <exception>

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
  // One "op:device" entry per TORCH_LIBRARY_IMPL registration below.
  std::vector<std::string> names = {"temporal_attention:cpu", "temporal_attention_backward:cpu"};
#ifdef SURVGEN_WITH_CUDA
  names.push_back("temporal_attention:cuda");
#endif
  return names;
}

namespace {

// `kernel`, turning any C++ exception but c10::Error into a c10::Error, which is RuntimeError in Python.
// Left alone, std::length_error or std::invalid_argument reach Python as ValueError (pybind11's mapping), which
// the CLI reports as the user's bad input; but survgen.kernels checked every argument before the kernel ran,
// so it is a kernel failure.
template <auto kernel, const char* name>
struct KernelFailure;

template <typename Result, typename... Args, Result (*kernel)(Args...), const char* name>
struct KernelFailure<kernel, name> {
  static Result run(Args... args) {
    try {
      return kernel(args...);
    } catch (const c10::Error&) {
      throw;
    } catch (const std::exception& e) {
      TORCH_CHECK(false, "survgen._C's ", name, " failed inside the compiled kernel (", e.what(),
                  "); `--attention reference` runs without it");
    }
  }
};

constexpr char kForwardCpu[] = "temporal_attention_forward_cpu";
constexpr char kBackwardCpu[] = "temporal_attention_backward_cpu";
#ifdef SURVGEN_WITH_CUDA
constexpr char kForwardCuda[] = "temporal_attention_forward_cuda";
#endif

}  // namespace

}  // namespace survgen

// kernels/ops.py defines the same schemas (ops.SCHEMAS) where survgen._C is missing.
TORCH_LIBRARY(survgen, m) {
  m.def("temporal_attention(Tensor x, int num_frames, Tensor norm_weight, Tensor norm_bias, Tensor qkv_weight, "
        "Tensor? qkv_bias, Tensor out_weight, Tensor out_bias, int heads, float eps) -> Tensor");
  m.def("temporal_attention_backward(Tensor grad_out, Tensor x, int num_frames, Tensor norm_weight, "
        "Tensor norm_bias, Tensor qkv_weight, Tensor? qkv_bias, Tensor out_weight, Tensor out_bias, int heads, "
        "float eps) -> Tensor[]");
}

TORCH_LIBRARY_IMPL(survgen, CPU, m) {
  using survgen::KernelFailure;
  m.impl("temporal_attention",
         TORCH_FN((KernelFailure<&survgen::temporal_attention_forward_cpu, survgen::kForwardCpu>::run)));
  m.impl("temporal_attention_backward",
         TORCH_FN((KernelFailure<&survgen::temporal_attention_backward_cpu, survgen::kBackwardCpu>::run)));
}

#ifdef SURVGEN_WITH_CUDA
TORCH_LIBRARY_IMPL(survgen, CUDA, m) {
  using survgen::KernelFailure;
  m.impl("temporal_attention",
         TORCH_FN((KernelFailure<&survgen::temporal_attention_forward_cuda, survgen::kForwardCuda>::run)));
}
#endif

#ifdef TORCH_EXTENSION_NAME
PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  m.doc() = "survgen compiled kernels";
  m.def("compiled_with_cuda", &survgen::compiled_with_cuda,
        "True when this build includes the CUDA kernels");
  m.def("kernels", &survgen::kernels,
        "The fused kernels this build registered with the dispatcher, as 'op:device' strings");
}
#endif
