// The sinusoidal frame encoding shared by the CPU and CUDA kernels.
#include "temporal_attention.h"

#include <cmath>

namespace survgen {

at::Tensor frame_encoding_table(int64_t num_frames, int64_t channels, const at::Tensor& like) {
  const auto f64 = like.options().dtype(at::kDouble);
  const at::Tensor position = at::arange(num_frames, f64).unsqueeze(1);
  const at::Tensor even_channels = at::arange(0, channels, 2, f64);
  const at::Tensor angle = position * at::exp(even_channels * (-std::log(10000.0) / static_cast<double>(channels)));
  at::Tensor encoding = at::empty({num_frames, channels}, f64);
  encoding.slice(1, 0, channels, 2).copy_(at::sin(angle));
  encoding.slice(1, 1, channels, 2).copy_(at::cos(angle.slice(1, 0, channels / 2)));
  return encoding.to(like.scalar_type()).contiguous();
}

}  // namespace survgen
