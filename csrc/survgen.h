// The C++ face of survgen._C: what the compiled core reports about itself.
// Shared by the Python extension (csrc/extension.cpp) and the standalone
// C++ tests (csrc/tests/, built by CMakeLists.txt).
#pragma once

#include <string>
#include <vector>

namespace survgen {

// True when this build includes the CUDA kernels (csrc/*.cu compiled and linked).
bool compiled_with_cuda();

// The fused kernels this build registered with the torch dispatcher, as
// "op:device" (e.g. "temporal_attention:cpu"). survgen.kernels reads this list
// to say honestly which backends can run.
std::vector<std::string> kernels();

}  // namespace survgen
