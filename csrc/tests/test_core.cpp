// Standalone test of survgen's compiled core, run by ctest (see CMakeLists.txt).
// Checks that the core reports the build it came from and that libtorch links.
#include <ATen/ATen.h>

#include <iostream>
#include <string>

#include "survgen.h"

#ifndef SURVGEN_EXPECT_CUDA
#error "CMakeLists.txt passes SURVGEN_EXPECT_CUDA=0|1: whether this build linked CUDA sources"
#endif

namespace {

int failures = 0;

void expect(bool ok, const std::string& what) {
  if (!ok) {
    std::cerr << "FAIL: " << what << "\n";
    ++failures;
  }
}

}  // namespace

int main() {
  expect(survgen::compiled_with_cuda() == (SURVGEN_EXPECT_CUDA != 0),
         "compiled_with_cuda() matches whether CMake linked csrc/*.cu into the core");

  for (const std::string& kernel : survgen::kernels()) {
    const auto colon = kernel.find(':');
    expect(colon != std::string::npos && colon > 0, "kernel entry '" + kernel + "' has the form op:device");
    const std::string device = colon == std::string::npos ? "" : kernel.substr(colon + 1);
    expect(device == "cpu" || device == "cuda", "kernel entry '" + kernel + "' names device cpu or cuda");
    expect(device != "cuda" || survgen::compiled_with_cuda(),
           "kernel entry '" + kernel + "' is a CUDA kernel in a build without CUDA");
  }

  // The core is built against the pip torch's libtorch: a tensor op must run.
  const at::Tensor ones = at::ones({3}, at::kFloat);
  expect(ones.sum().item<float>() == 3.0f, "libtorch computes at::ones({3}).sum() == 3");

  if (failures == 0) {
    std::cout << "survgen core: compiled_with_cuda=" << survgen::compiled_with_cuda()
              << ", kernels=" << survgen::kernels().size() << "\n";
  }
  return failures == 0 ? 0 : 1;
}
