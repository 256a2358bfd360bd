// CUDA forward of survgen::temporal_attention (spec: kernels/reference.py,
// temporal_attention_reference). x is (b·f, c, h, w); at every spatial position
// of every video the f frames form one sequence of tokens with c channels.
//
// Five steps, each on the current CUDA stream:
//   1. gather_layernorm_kernel   NCHW x  -> normed tokens (sequences·f, c): LayerNorm(x + PE)
//   2. at::linear (cuBLAS)       normed  -> q, k, v  (sequences·f, 3c)
//   3. frame_attention_kernel    q, k, v -> attended (sequences·f, c): softmax over frames, per head
//   4. at::linear (cuBLAS)       attended -> projected (sequences·f, c)
//   5. scatter_residual_kernel   out = x + projected, back to NCHW
// Token rows are sequence-major with frames inner: row = (sequence·f + frame),
// sequence = video·(h·w) + position, which is the reference's (b·h·w, f, c).
//
// Statistics, scores, softmax and weighted sums accumulate in at::opmath_type
// (float for half/bfloat16/float, double for double). Where the reference rounds
// an intermediate to x's dtype before the next op (x + PE, the residual sum),
// the kernels round at the same point.
//
// Only the forward lives here; backward on CUDA recomputes through the reference.

// CPU-only torch wheels ship the c10/cuda headers without the CMake-generated
// c10/cuda/impl/cuda_cmake_macros.h; it only defines C10_CUDA_BUILD_SHARED_LIBS,
// which matters for Windows DLL exports alone. Skipping it lets this file
// compile against such a wheel (the CMake compile check); with a CUDA torch the
// file exists and is used as usual.
#if defined(__has_include)
#if !__has_include(<c10/cuda/impl/cuda_cmake_macros.h>)
#define C10_CUDA_NO_CMAKE_CONFIGURE_FILE
#endif
#endif

#include "temporal_attention.h"

#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <c10/core/impl/LocalDispatchKeySet.h>

#include <cuda_runtime.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <limits>

namespace survgen {
namespace {

// Transposing tiles are one warp wide, so each warp's global loads and stores
// touch one contiguous run: along positions on the NCHW side, along channels on
// the token side.
constexpr int kTile = 32;
// Warps per block in the tiled kernels; each warp walks the tile's rows with this stride.
constexpr int kTileRows = 8;
constexpr int kWarpSize = 32;
constexpr int kAttentionThreads = 128;
// Shared memory for one chunk of softmax rows. Under the 48 KiB that every
// block may use without opting in, and small enough for several blocks per SM.
constexpr int64_t kScoreBytes = 32 * 1024;

__device__ __forceinline__ float exp_acc(float value) { return expf(value); }
__device__ __forceinline__ double exp_acc(double value) { return exp(value); }
__device__ __forceinline__ float rsqrt_acc(float value) { return rsqrtf(value); }
__device__ __forceinline__ double rsqrt_acc(double value) { return rsqrt(value); }

// Butterfly reductions: every lane ends with the same result, so all lanes
// agree on a row's max and total. All 32 lanes must call them.
template <typename acc_t>
__device__ __forceinline__ acc_t warp_max(acc_t value) {
  for (int offset = kWarpSize / 2; offset > 0; offset /= 2) {
    const acc_t other = __shfl_xor_sync(0xffffffffu, value, offset);
    value = other > value ? other : value;
  }
  return value;
}

template <typename acc_t>
__device__ __forceinline__ acc_t warp_sum(acc_t value) {
  for (int offset = kWarpSize / 2; offset > 0; offset /= 2) {
    value += __shfl_xor_sync(0xffffffffu, value, offset);
  }
  return value;
}

// x + PE, rounded to x's dtype: the reference adds the encoding after casting it
// to x's dtype, so for half/bfloat16 the sum it normalises is already rounded.
template <typename scalar_t, typename acc_t>
__device__ __forceinline__ acc_t with_encoding(scalar_t value, scalar_t encoding) {
  return static_cast<acc_t>(static_cast<scalar_t>(static_cast<acc_t>(value) + static_cast<acc_t>(encoding)));
}

// Step 1. One block per (image, tile of kTile positions), image = video·f + frame
// (x's dim 0); block (kTile, kTileRows). Lane = position in the tile, so reads of
// x for a fixed channel are contiguous; the normed tile goes through shared
// memory so that writes to the token matrix are contiguous along channels.
// Statistics are two-pass (mean, then mean of squared deviations) in acc_t, as
// exact as LayerNorm's own; the second and third reads of x mostly hit L2.
template <typename scalar_t, typename acc_t>
__global__ void gather_layernorm_kernel(const scalar_t* __restrict__ x, const scalar_t* __restrict__ frame_encoding,
                                        const acc_t* __restrict__ norm_weight, const acc_t* __restrict__ norm_bias,
                                        scalar_t* __restrict__ normed, int64_t num_frames, int64_t channels,
                                        int64_t positions, int64_t position_tiles, acc_t eps) {
  __shared__ acc_t partial[kTileRows][kTile];
  // +1 column: the transposed read walks a column, and the padding puts its 32 entries in 32 banks.
  __shared__ acc_t tile[kTile][kTile + 1];

  const int lane = threadIdx.x;
  const int row = threadIdx.y;
  const int64_t image = blockIdx.x / position_tiles;
  const int64_t first_position = (blockIdx.x % position_tiles) * kTile;
  const int64_t video = image / num_frames;
  const int64_t frame = image % num_frames;
  const int64_t position = first_position + lane;
  const bool in_range = position < positions;

  const scalar_t* x_image = x + image * channels * positions;
  const scalar_t* encoding = frame_encoding + frame * channels;

  acc_t sum = 0;
  if (in_range) {
    for (int64_t channel = row; channel < channels; channel += kTileRows) {
      sum += with_encoding<scalar_t, acc_t>(x_image[channel * positions + position], encoding[channel]);
    }
  }
  partial[row][lane] = sum;
  __syncthreads();
  acc_t mean = 0;
  for (int r = 0; r < kTileRows; ++r) {
    mean += partial[r][lane];
  }
  mean /= static_cast<acc_t>(channels);
  __syncthreads();  // partial is refilled below

  acc_t squares = 0;
  if (in_range) {
    for (int64_t channel = row; channel < channels; channel += kTileRows) {
      const acc_t deviation =
          with_encoding<scalar_t, acc_t>(x_image[channel * positions + position], encoding[channel]) - mean;
      squares += deviation * deviation;
    }
  }
  partial[row][lane] = squares;
  __syncthreads();
  acc_t variance = 0;
  for (int r = 0; r < kTileRows; ++r) {
    variance += partial[r][lane];
  }
  variance /= static_cast<acc_t>(channels);  // biased, as LayerNorm
  const acc_t rstd = rsqrt_acc(variance + eps);

  for (int64_t first_channel = 0; first_channel < channels; first_channel += kTile) {
    // tile[channel offset][position offset], filled along positions (this lane's mean and rstd).
    for (int r = row; r < kTile; r += kTileRows) {
      const int64_t channel = first_channel + r;
      if (in_range && channel < channels) {
        const acc_t hidden = with_encoding<scalar_t, acc_t>(x_image[channel * positions + position], encoding[channel]);
        tile[r][lane] = (hidden - mean) * rstd * norm_weight[channel] + norm_bias[channel];
      }
    }
    __syncthreads();
    // Drained along channels: lane = channel offset, r = position offset.
    for (int r = row; r < kTile; r += kTileRows) {
      const int64_t token_position = first_position + r;
      const int64_t channel = first_channel + lane;
      if (token_position < positions && channel < channels) {
        const int64_t token = (video * positions + token_position) * num_frames + frame;
        normed[token * channels + channel] = static_cast<scalar_t>(tile[lane][r]);
      }
    }
    __syncthreads();  // the next channel chunk overwrites tile
  }
}

// Step 3. One block per (sequence, head), blockIdx.x = sequence·heads + head: the
// sequence count (b·h·w, times heads) is the huge axis and grid.x is the only one
// that holds it (2^31-1; y and z stop at 65,535). q, k and v are read from the
// (tokens, 3c) matrix directly, [q heads | k heads | v heads] per row as the
// reference splits it; a (sequence, head) touches 3·f·head_dim elements, which
// stay in L1 while the block reuses them, so shared memory holds only the
// scores, and any head_dim works. Query frames go in chunks of query_rows rows
// so the scores fit in kScoreBytes for any frame count up to the launcher's limit.
template <typename scalar_t, typename acc_t>
__global__ void frame_attention_kernel(const scalar_t* __restrict__ qkv, scalar_t* __restrict__ attended,
                                       int64_t num_frames, int64_t channels, int64_t heads, int64_t head_dim,
                                       int64_t query_rows, acc_t scale) {
  // One untyped buffer: every instantiation declares the same extern array.
  extern __shared__ __align__(sizeof(double)) unsigned char shared_bytes[];
  acc_t* probabilities = reinterpret_cast<acc_t*>(shared_bytes);  // (query_rows, num_frames)

  const int64_t sequence = blockIdx.x / heads;
  const int64_t head = blockIdx.x % heads;
  const int64_t row_stride = 3 * channels;
  const scalar_t* queries = qkv + sequence * num_frames * row_stride + head * head_dim;
  const scalar_t* keys = queries + channels;
  const scalar_t* values = queries + 2 * channels;
  scalar_t* out = attended + sequence * num_frames * channels + head * head_dim;

  const int warp = threadIdx.x / kWarpSize;
  const int lane = threadIdx.x % kWarpSize;
  const int warps = blockDim.x / kWarpSize;

  for (int64_t first_query = 0; first_query < num_frames; first_query += query_rows) {
    const int64_t rows = num_frames - first_query < query_rows ? num_frames - first_query : query_rows;

    for (int64_t index = threadIdx.x; index < rows * num_frames; index += blockDim.x) {
      const scalar_t* query = queries + (first_query + index / num_frames) * row_stride;
      const scalar_t* key = keys + (index % num_frames) * row_stride;
      acc_t dot = 0;
      for (int64_t d = 0; d < head_dim; ++d) {
        dot += static_cast<acc_t>(query[d]) * static_cast<acc_t>(key[d]);
      }
      probabilities[index] = dot * scale;
    }
    __syncthreads();

    // One warp per row; r is the same for all lanes of a warp, so the
    // shuffles inside see all 32 lanes. Each lane touches only its own
    // columns j, so the row needs no barrier between the passes.
    for (int64_t r = warp; r < rows; r += warps) {
      acc_t* row = probabilities + r * num_frames;
      acc_t row_max = row[0];
      for (int64_t j = lane; j < num_frames; j += kWarpSize) {
        row_max = row[j] > row_max ? row[j] : row_max;
      }
      row_max = warp_max(row_max);
      acc_t total = 0;
      for (int64_t j = lane; j < num_frames; j += kWarpSize) {
        const acc_t weight = exp_acc(row[j] - row_max);
        row[j] = weight;
        total += weight;
      }
      total = warp_sum(total);
      const acc_t inverse_total = static_cast<acc_t>(1) / total;
      for (int64_t j = lane; j < num_frames; j += kWarpSize) {
        row[j] *= inverse_total;
      }
    }
    __syncthreads();

    // Consecutive threads take consecutive head channels d: contiguous reads of
    // each value row and contiguous writes of each attended row.
    for (int64_t index = threadIdx.x; index < rows * head_dim; index += blockDim.x) {
      const int64_t r = index / head_dim;
      const int64_t d = index % head_dim;
      const acc_t* row = probabilities + r * num_frames;
      acc_t sum = 0;
      for (int64_t key_frame = 0; key_frame < num_frames; ++key_frame) {
        sum += row[key_frame] * static_cast<acc_t>(values[key_frame * row_stride + d]);
      }
      out[(first_query + r) * channels + d] = static_cast<scalar_t>(sum);
    }
    __syncthreads();  // the next chunk overwrites probabilities
  }
}

// Step 5. One block per (image, tile of positions, tile of channels), channel
// tiles innermost so neighbouring blocks read neighbouring parts of the same
// token rows; block (kTile, kTileRows). The tile is read along channels from the
// token matrix and written along positions to NCHW. The sum is rounded to x's
// dtype once, as the reference's v + linear(...) is.
template <typename scalar_t, typename acc_t>
__global__ void scatter_residual_kernel(const scalar_t* __restrict__ x, const scalar_t* __restrict__ projected,
                                        scalar_t* __restrict__ out, int64_t num_frames, int64_t channels,
                                        int64_t positions, int64_t position_tiles, int64_t channel_tiles) {
  __shared__ acc_t tile[kTile][kTile + 1];  // tile[position offset][channel offset]

  const int lane = threadIdx.x;
  const int row = threadIdx.y;
  const int64_t first_channel = (blockIdx.x % channel_tiles) * kTile;
  const int64_t image_tile = blockIdx.x / channel_tiles;
  const int64_t first_position = (image_tile % position_tiles) * kTile;
  const int64_t image = image_tile / position_tiles;
  const int64_t video = image / num_frames;
  const int64_t frame = image % num_frames;

  for (int r = row; r < kTile; r += kTileRows) {
    const int64_t position = first_position + r;
    const int64_t channel = first_channel + lane;
    if (position < positions && channel < channels) {
      const int64_t token = (video * positions + position) * num_frames + frame;
      tile[r][lane] = static_cast<acc_t>(projected[token * channels + channel]);
    }
  }
  __syncthreads();
  for (int r = row; r < kTile; r += kTileRows) {
    const int64_t channel = first_channel + r;
    const int64_t position = first_position + lane;
    if (position < positions && channel < channels) {
      const int64_t offset = (image * channels + channel) * positions + position;
      out[offset] = static_cast<scalar_t>(static_cast<acc_t>(x[offset]) + tile[lane][r]);
    }
  }
}

// ------------------------------------------------------------------ launcher

void check_grid(int64_t blocks, const char* what) {
  TORCH_CHECK(blocks <= static_cast<int64_t>(std::numeric_limits<int>::max()),
              "temporal_attention (CUDA): ", blocks, " blocks of ", what,
              " exceed the 2^31-1 grid limit; split x along its batch dimension");
}

void check_linear_weight(const at::Tensor& weight, const at::Tensor& x, const char* name) {
  TORCH_CHECK(weight.is_cuda() && weight.scalar_type() == x.scalar_type(), "temporal_attention (CUDA): ", name,
              " must be a CUDA tensor of x's dtype ", x.scalar_type(), ", got ", weight.scalar_type(), " on ",
              weight.device());
}

template <typename scalar_t>
void forward(const at::Tensor& x, at::Tensor& out, int64_t num_frames, const at::Tensor& norm_weight,
             const at::Tensor& norm_bias, const at::Tensor& qkv_weight, const std::optional<at::Tensor>& qkv_bias,
             const at::Tensor& out_weight, const at::Tensor& out_bias, int64_t heads, double eps) {
  using acc_t = at::opmath_type<scalar_t>;
  const int64_t images = x.size(0);
  const int64_t channels = x.size(1);
  const int64_t positions = x.size(2) * x.size(3);
  const int64_t sequences = images / num_frames * positions;
  const int64_t tokens = sequences * num_frames;
  const int64_t head_dim = channels / heads;
  const int64_t position_tiles = (positions + kTile - 1) / kTile;
  const int64_t channel_tiles = (channels + kTile - 1) / kTile;
  const cudaStream_t stream = c10::cuda::getCurrentCUDAStream();
  const dim3 tile_block(kTile, kTileRows);

  // LayerNorm's affine parameters in acc_t: exact for x's dtype, and kept at full
  // precision when they are float32 while x is half/bfloat16.
  const at::Tensor weight = norm_weight.to(c10::CppTypeToScalarType<acc_t>::value).contiguous();
  const at::Tensor bias = norm_bias.to(c10::CppTypeToScalarType<acc_t>::value).contiguous();
  const at::Tensor encoding = frame_encoding_table(num_frames, channels, x);

  at::Tensor normed = at::empty({tokens, channels}, x.options());
  check_grid(images * position_tiles, "gather_layernorm");
  gather_layernorm_kernel<scalar_t, acc_t><<<static_cast<unsigned int>(images * position_tiles), tile_block, 0, stream>>>(
      x.const_data_ptr<scalar_t>(), encoding.const_data_ptr<scalar_t>(), weight.const_data_ptr<acc_t>(),
      bias.const_data_ptr<acc_t>(), normed.mutable_data_ptr<scalar_t>(), num_frames, channels, positions,
      position_tiles, static_cast<acc_t>(eps));
  C10_CUDA_KERNEL_LAUNCH_CHECK();

  const at::Tensor qkv = at::linear(normed, qkv_weight, qkv_bias).contiguous();  // (tokens, 3c)

  const int64_t score_row_bytes = num_frames * static_cast<int64_t>(sizeof(acc_t));
  const int64_t query_rows = std::min<int64_t>(num_frames, kScoreBytes / score_row_bytes);
  TORCH_CHECK(query_rows >= 1, "temporal_attention (CUDA): num_frames=", num_frames, " is more than the ",
              kScoreBytes / static_cast<int64_t>(sizeof(acc_t)), " frames one row of ", sizeof(acc_t),
              "-byte scores can hold in ", kScoreBytes, " bytes of shared memory");
  at::Tensor attended = at::empty({tokens, channels}, x.options());
  check_grid(sequences * heads, "frame_attention (sequences x heads)");
  frame_attention_kernel<scalar_t, acc_t><<<static_cast<unsigned int>(sequences * heads), kAttentionThreads,
                                            static_cast<size_t>(query_rows * score_row_bytes), stream>>>(
      qkv.const_data_ptr<scalar_t>(), attended.mutable_data_ptr<scalar_t>(), num_frames, channels, heads, head_dim,
      query_rows, static_cast<acc_t>(1.0 / std::sqrt(static_cast<double>(head_dim))));
  C10_CUDA_KERNEL_LAUNCH_CHECK();

  const at::Tensor projected = at::linear(attended, out_weight, out_bias).contiguous();  // (tokens, c)

  check_grid(images * position_tiles * channel_tiles, "scatter_residual");
  scatter_residual_kernel<scalar_t, acc_t>
      <<<static_cast<unsigned int>(images * position_tiles * channel_tiles), tile_block, 0, stream>>>(
          x.const_data_ptr<scalar_t>(), projected.const_data_ptr<scalar_t>(), out.mutable_data_ptr<scalar_t>(),
          num_frames, channels, positions, position_tiles, channel_tiles);
  C10_CUDA_KERNEL_LAUNCH_CHECK();
}

}  // namespace

// Defined whether or not SURVGEN_WITH_CUDA is set: the macro only decides
// whether temporal_attention.h declares it for the extension's binding.
at::Tensor temporal_attention_forward_cuda(const at::Tensor& x, int64_t num_frames, const at::Tensor& norm_weight,
                                           const at::Tensor& norm_bias, const at::Tensor& qkv_weight,
                                           const std::optional<at::Tensor>& qkv_bias, const at::Tensor& out_weight,
                                           const at::Tensor& out_bias, int64_t heads, double eps) {
  TORCH_CHECK(x.is_cuda(), "temporal_attention_forward_cuda: x must be a CUDA tensor, got one on ", x.device());
  TORCH_CHECK(x.dim() == 4, "temporal_attention_forward_cuda: x must be (batch·frames, c, h, w), got ", x.sizes());
  TORCH_CHECK(num_frames >= 1 && x.size(0) % num_frames == 0, "temporal_attention_forward_cuda: num_frames=",
              num_frames, " must divide x.shape[0]=", x.size(0));
  TORCH_CHECK(heads >= 1 && x.size(1) % heads == 0, "temporal_attention_forward_cuda: heads=", heads,
              " must divide the ", x.size(1), " channels");
  check_linear_weight(qkv_weight, x, "qkv_weight");
  if (qkv_bias.has_value()) {
    check_linear_weight(*qkv_bias, x, "qkv_bias");
  }
  check_linear_weight(out_weight, x, "out_weight");
  check_linear_weight(out_bias, x, "out_bias");

  const c10::cuda::CUDAGuard device_guard(x.device());
  // The kernels read at::linear's results as x's dtype; under autocast at::linear would hand back bf16/fp16
  // for float32 x. So the op computes in x's dtype, as its contract says, whatever autocast is on.
  const c10::impl::ExcludeDispatchKeyGuard no_autocast(c10::autocast_dispatch_keyset);
  const at::Tensor input = x.contiguous();
  at::Tensor out = at::empty_like(input, at::MemoryFormat::Contiguous);
  if (input.numel() == 0) {
    return out;  // nothing to compute, and a zero-block launch is an error
  }
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, input.scalar_type(), "temporal_attention_forward_cuda", [&] {
    forward<scalar_t>(input, out, num_frames, norm_weight, norm_bias, qkv_weight, qkv_bias, out_weight, out_bias,
                      heads, eps);
  });
  return out;
}

}  // namespace survgen
