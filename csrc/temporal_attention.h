// The fused temporal-attention kernels of survgen._C, one function per device
// and direction. Arguments are those of survgen.kernels.temporal_attention,
// already checked in Python (shapes, devices, heads | c); x is (b·f, c, h, w).
// The pure-PyTorch definition they all compute is kernels/reference.py.
#pragma once

#include <ATen/ATen.h>

#include <optional>
#include <vector>

namespace survgen {

// kernels/reference.py's sinusoidal_frame_encoding(num_frames, channels): computed
// in float64 on like's device, then cast to like's dtype, so it is the same
// table, to the bit, that the reference adds. Defined in frame_encoding.cpp.
at::Tensor frame_encoding_table(int64_t num_frames, int64_t channels, const at::Tensor& like);

// x + out_proj(MHA(LayerNorm(x + PE))) over the num_frames frames at each
// spatial position; returns a new contiguous (b·f, c, h, w) tensor.
at::Tensor temporal_attention_forward_cpu(const at::Tensor& x, int64_t num_frames, const at::Tensor& norm_weight,
                                          const at::Tensor& norm_bias, const at::Tensor& qkv_weight,
                                          const std::optional<at::Tensor>& qkv_bias, const at::Tensor& out_weight,
                                          const at::Tensor& out_bias, int64_t heads, double eps);

// Gradients of x, norm_weight, norm_bias, qkv_weight, [qkv_bias if given,]
// out_weight, out_bias, in that order (the order of survgen::temporal_attention_backward).
std::vector<at::Tensor> temporal_attention_backward_cpu(const at::Tensor& grad_out, const at::Tensor& x,
                                                        int64_t num_frames, const at::Tensor& norm_weight,
                                                        const at::Tensor& norm_bias, const at::Tensor& qkv_weight,
                                                        const std::optional<at::Tensor>& qkv_bias,
                                                        const at::Tensor& out_weight, const at::Tensor& out_bias,
                                                        int64_t heads, double eps);

#ifdef SURVGEN_WITH_CUDA
at::Tensor temporal_attention_forward_cuda(const at::Tensor& x, int64_t num_frames, const at::Tensor& norm_weight,
                                           const at::Tensor& norm_bias, const at::Tensor& qkv_weight,
                                           const std::optional<at::Tensor>& qkv_bias, const at::Tensor& out_weight,
                                           const at::Tensor& out_bias, int64_t heads, double eps);
#endif

}  // namespace survgen
