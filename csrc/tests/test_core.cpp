// Standalone test of survgen's compiled core, run by ctest (see CMakeLists.txt and .ci/run).
// Checks that the core reports the build it came from, that libtorch links, and
// that the CPU temporal-attention kernel agrees with the reference written here
// in ATen ops (forward), and that its backward is the derivative of its forward
// (directional finite differences), in float64 on an awkward shape; and that the
// core registers the kernels with the dispatcher (the op survgen::temporal_attention
// runs them).
#include <ATen/ATen.h>
#include <ATen/core/dispatch/Dispatcher.h>

#include <cmath>
#include <iostream>
#include <string>

#include "survgen.h"
#include "temporal_attention.h"

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

// kernels/reference.py in ATen: (b·f, c, h, w) -> (b·h·w, f, c), x + PE, LayerNorm,
// Q/K/V, softmax over frames per head, output projection, residual, back.
at::Tensor reference_forward(const at::Tensor& x, int64_t f, const at::Tensor& nw, const at::Tensor& nb,
                             const at::Tensor& qkv_w, const at::Tensor& out_w, const at::Tensor& out_b,
                             int64_t heads) {
  const int64_t bf = x.size(0), c = x.size(1), h = x.size(2), w = x.size(3), b = bf / f, d = c / heads;
  const at::Tensor v = x.reshape({b, f, c, h, w}).permute({0, 3, 4, 1, 2}).reshape({b * h * w, f, c});
  at::Tensor pe = at::empty({f, c}, x.options());
  for (int64_t p = 0; p < f; ++p)
    for (int64_t j = 0; j < c; ++j) {
      const double angle = p * std::exp((j - j % 2) * (-std::log(10000.0) / c));
      pe[p][j] = j % 2 == 0 ? std::sin(angle) : std::cos(angle);
    }
  const at::Tensor normed = at::layer_norm(v + pe, {c}, nw, nb, 1e-5);
  const auto qkv = at::linear(normed, qkv_w).reshape({b * h * w, f, 3, heads, d}).permute({2, 0, 3, 1, 4});
  const at::Tensor probs = at::softmax(at::matmul(qkv[0], qkv[1].transpose(-1, -2)) / std::sqrt(double(d)), -1);
  const at::Tensor attended = at::matmul(probs, qkv[2]).transpose(1, 2).reshape({b * h * w, f, c});
  const at::Tensor out = v + at::linear(attended, out_w, out_b);
  return out.reshape({b, h, w, f, c}).permute({0, 3, 4, 1, 2}).reshape({bf, c, h, w});
}

void check_temporal_attention_cpu() {
  at::manual_seed(0);
  const auto opt = at::TensorOptions().dtype(at::kDouble);
  const int64_t b = 2, f = 5, c = 12, heads = 3, h = 3, w = 7;  // 21 positions: a padded tile
  const at::Tensor x = at::randn({b * f, c, h, w}, opt), nw = 1 + 0.2 * at::randn({c}, opt),
                   nb = 0.2 * at::randn({c}, opt), qkv_w = 0.6 * at::randn({3 * c, c}, opt),
                   out_w = 0.3 * at::randn({c, c}, opt), out_b = 0.3 * at::randn({c}, opt);
  const at::Tensor got = survgen::temporal_attention_forward_cpu(x, f, nw, nb, qkv_w, std::nullopt, out_w, out_b,
                                                                 heads, 1e-5);
  const at::Tensor want = reference_forward(x, f, nw, nb, qkv_w, out_w, out_b, heads);
  expect(at::allclose(got, want, 1e-10, 1e-10), "temporal_attention_forward_cpu equals the ATen reference");

  // <grad_x, dx> must equal d/dt <g, forward(x + t·dx)> (central differences, float64).
  const at::Tensor g = at::randn_like(x), dx = at::randn_like(x);
  const auto grads = survgen::temporal_attention_backward_cpu(g, x, f, nw, nb, qkv_w, std::nullopt, out_w, out_b,
                                                              heads, 1e-5);
  expect(grads.size() == 6, "backward returns x, norm weight/bias, qkv weight, out weight/bias gradients");
  const double eps = 1e-6;
  const auto at_x = [&](const at::Tensor& point) {
    return (survgen::temporal_attention_forward_cpu(point, f, nw, nb, qkv_w, std::nullopt, out_w, out_b, heads,
                                                    1e-5) * g).sum().item<double>();
  };
  const double numeric = (at_x(x + eps * dx) - at_x(x - eps * dx)) / (2 * eps);
  const double analytic = (grads[0] * dx).sum().item<double>();
  expect(std::abs(numeric - analytic) <= 1e-6 * (1 + std::abs(analytic)),
         "temporal_attention_backward_cpu's x gradient is the derivative of the forward");

  // The op, as Python calls it: the dispatcher runs the CPU kernel registered by TORCH_LIBRARY_IMPL.
  const auto op = c10::Dispatcher::singleton()
                      .findSchemaOrThrow("survgen::temporal_attention", "")
                      .typed<at::Tensor(const at::Tensor&, int64_t, const at::Tensor&, const at::Tensor&,
                                        const at::Tensor&, const std::optional<at::Tensor>&, const at::Tensor&,
                                        const at::Tensor&, int64_t, double)>();
  expect(at::equal(op.call(x, f, nw, nb, qkv_w, std::nullopt, out_w, out_b, heads, 1e-5), got),
         "survgen::temporal_attention through the dispatcher is temporal_attention_forward_cpu");
  const auto backward = c10::Dispatcher::singleton().findSchemaOrThrow("survgen::temporal_attention_backward", "");
  expect(backward.hasKernelForDispatchKey(c10::DispatchKey::CPU),
         "survgen::temporal_attention_backward has a CPU kernel");
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

  check_temporal_attention_cpu();

  if (failures == 0) {
    std::cout << "survgen core: compiled_with_cuda=" << survgen::compiled_with_cuda()
              << ", kernels=" << survgen::kernels().size() << "\n";
  }
  return failures == 0 ? 0 : 1;
}
