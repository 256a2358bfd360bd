// Fused temporal attention on the CPU: forward and backward of
// kernels/reference.py's temporal_attention_reference, without leaving the
// U-Net's (b·f, c, h, w) layout.
//
// Why this shape of kernel. The sequences are tiny (f ≈ 16 frames) and there
// are many of them (b·h·w positions), so the eager reference spends its time
// on permute copies, separate LayerNorm/add passes and batched 16×16 matmuls.
// Here the work is cut into tiles of P positions × f frames of one video
// (~256 tokens) that stay in cache, one tile per task of ATen's parallel_for:
//
//   gather + PE + LayerNorm   reads x directly: for a fixed frame and channel
//                             the h·w positions are contiguous, so the tile is
//                             built channel-major, H[c][frame·P + position]
//   Q/K/V = Wqkv · H          one GEMM per tile (MKL, single-threaded inside
//                             the parallel region), output channel-major too
//   attention                 per head, vectorised across positions: lane l of
//                             a vector is position l, so the 16×16 scores, the
//                             softmax and the weighted sum of values for 8
//                             positions run as plain vector arithmetic
//   Y = Wout · A              one GEMM per tile
//   + bias + residual         written straight back to (b·f, c, h, w)
//
// Almost all flops are in the two GEMMs, which run at the BLAS rate; the rest
// is a few passes over a cache-resident tile. Backward recomputes the forward
// of a tile (nothing but x is saved, as flash-attention does), then runs the
// same pipeline in reverse; weight gradients accumulate per thread and are
// summed in thread order, so results are deterministic for a thread count.
//
// Positions past h·w in the last tile are padded with x = 0: their tokens are
// computed (finite: LayerNorm of the encoding alone) but never written, and in
// backward their incoming gradient is zero, so they add nothing to any
// gradient.
//
// Vector code: the element-wise loops are written over a block of kLanes
// positions and compiled twice, for the baseline ISA and with AVX2+FMA
// (chosen at run time), so the extension runs on any x86-64 or ARM CPU and
// uses 256-bit vectors where they exist.
#include "temporal_attention.h"

#include <ATen/Parallel.h>
#include <c10/core/impl/alloc_cpu.h>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <functional>
#include <map>
#include <mutex>
#include <numeric>
#include <type_traits>
#include <vector>

namespace survgen {
namespace {

// Positions per vector block: one 256-bit register of floats.
constexpr int64_t kLanes = 8;
// Tokens per tile. Each tile's GEMMs repack the weights (up to 20 MB at
// c = 1280), so wide layers want long tiles to amortise that; narrow layers
// want tiles that stay in L2. Measured on a 2-core AVX2 machine: 1024 tokens
// beat 256 and 512 at every sd15 level (c >= 320), 256 beat 1024 at the tiny
// preset's 64- and 128-channel levels.
constexpr int64_t kTileTokensNarrow = 256;
constexpr int64_t kTileTokensWide = 1024;
constexpr int64_t kWideChannels = 256;

#if defined(__GNUC__)
#define SURVGEN_INLINE inline __attribute__((always_inline))
#else
#define SURVGEN_INLINE inline
#endif

// ---------------------------------------------------------------- geometry
struct TileShape {
  int64_t frames;     // f
  int64_t channels;   // c
  int64_t heads;
  int64_t head_dim;   // c / heads
  int64_t area;       // h·w of the input
  int64_t positions;  // P: positions per tile, a multiple of kLanes
  int64_t tokens;     // f·P, the leading dimension of every channel-major tile
};

TileShape tile_shape(const at::Tensor& x, int64_t frames, int64_t heads) {
  TileShape s{};
  s.frames = frames;
  s.channels = x.size(1);
  s.heads = heads;
  s.head_dim = s.channels / heads;
  s.area = x.size(2) * x.size(3);
  const int64_t tokens = s.channels >= kWideChannels ? kTileTokensWide : kTileTokensNarrow;
  const int64_t wanted = std::max<int64_t>(kLanes, (tokens + frames - 1) / frames);
  const int64_t needed = s.area;  // no tile wider than the image
  s.positions = (std::min(wanted, needed) + kLanes - 1) / kLanes * kLanes;
  s.tokens = frames * s.positions;
  return s;
}

// ---------------------------------------------------------------- lane vectors
// Lanes<scalar_t>: kLanes values of one (frame, channel) at kLanes adjacent
// positions, as a GCC/Clang vector type. Arithmetic on it compiles to one
// instruction per 256 bits where the ISA has them (two 128-bit halves on the
// baseline), which the attention loops need: left to the auto-vectoriser they
// get vectorised across frames instead, with shuffles and scalar exp.
template <typename scalar_t>
struct LaneType;
template <>
struct LaneType<float> {
  typedef float type __attribute__((vector_size(kLanes * sizeof(float))));
};
template <>
struct LaneType<double> {
  typedef double type __attribute__((vector_size(kLanes * sizeof(double))));
};
template <typename scalar_t>
using Lanes = typename LaneType<scalar_t>::type;

template <typename scalar_t>
SURVGEN_INLINE Lanes<scalar_t> load_lanes(const scalar_t* p) {
  Lanes<scalar_t> v;
  std::memcpy(&v, p, sizeof(v));  // unaligned: a tile row starts at any multiple of kLanes
  return v;
}

template <typename scalar_t>
SURVGEN_INLINE void store_lanes(scalar_t* p, Lanes<scalar_t> v) {
  std::memcpy(p, &v, sizeof(v));
}

template <typename scalar_t>
SURVGEN_INLINE Lanes<scalar_t> splat(scalar_t value) {
  return Lanes<scalar_t>{} + value;
}

template <typename scalar_t>
SURVGEN_INLINE Lanes<scalar_t> max_lanes(Lanes<scalar_t> a, Lanes<scalar_t> b) {
  return a > b ? a : b;
}

// exp of lanes that are all <= 0 (softmax after subtracting the row max).
// float: Cephes' expf polynomial after range reduction by ln 2, then scaling
// by 2^n through the exponent bits, all in lane arithmetic (max relative
// error ~2 ulp; arguments below -87 flush to ~0, as softmax wants).
// double (the gradcheck path): the libm exp per lane, exact to the last bit.
SURVGEN_INLINE Lanes<float> exp_nonpositive(Lanes<float> x) {
  typedef int32_t IntLanes __attribute__((vector_size(kLanes * sizeof(int32_t))));
  x = max_lanes<float>(x, splat(-87.0f));
  // Round to nearest by the 1.5·2^23 trick: exact for |x·log2 e| < 2^22.
  const Lanes<float> n = (x * 1.44269504088896341f + 12582912.0f) - 12582912.0f;
  const Lanes<float> r = x - n * 0.693359375f + n * 2.12194440e-4f;
  Lanes<float> p = splat(1.9875691500e-4f);
  p = p * r + 1.3981999507e-3f;
  p = p * r + 8.3334519073e-3f;
  p = p * r + 4.1665795894e-2f;
  p = p * r + 1.6666665459e-1f;
  p = p * r + 5.0000001201e-1f;
  p = p * r * r + r + 1.0f;
  const IntLanes bits = (__builtin_convertvector(n, IntLanes) + 127) << 23;
  Lanes<float> scale;
  std::memcpy(&scale, &bits, sizeof(scale));
  return p * scale;
}

SURVGEN_INLINE Lanes<double> exp_nonpositive(Lanes<double> x) {
  for (int64_t l = 0; l < kLanes; ++l) x[l] = std::exp(x[l]);
  return x;
}

// ---------------------------------------------------------------- tile passes
// Each pass works on one tile of video `video`, positions [first, first + count),
// count <= P. Tiles are channel-major, and within a channel's row the tokens
// come in blocks of kLanes positions, each block holding all frames:
//   element (channel, frame t, position p) at
//   channel * tokens + (p / kLanes) * f * kLanes + t * kLanes + p % kLanes
// so that everything the attention of one lane block reads (f lane vectors per
// channel) is contiguous, and the GEMMs do not care (tokens are just columns).

// Tile row of channel `ch` from an input row: dst[token(t, p)] = (p < count ? src[p] : 0) + add,
// for every position p of the tile; `dst_frame` points at the row's frame-t lanes.
template <typename scalar_t>
SURVGEN_INLINE void gather_row(const TileShape& s, scalar_t* dst_frame, const scalar_t* src, int64_t count,
                               scalar_t add) {
  const int64_t block_stride = s.frames * kLanes;
  for (int64_t p0 = 0; p0 < s.positions; p0 += kLanes) {
    scalar_t* dst = dst_frame + (p0 / kLanes) * block_stride;
    if (p0 + kLanes <= count) {
      store_lanes(dst, load_lanes(src + p0) + add);
    } else {
      for (int64_t l = 0; l < kLanes; ++l) dst[l] = (p0 + l < count ? src[p0 + l] : scalar_t(0)) + add;
    }
  }
}

// H = LayerNorm(x + PE) of the tile; also the normalised values before the
// affine (xhat), and the per-token mean and 1/std, which backward needs.
template <typename scalar_t>
SURVGEN_INLINE void gather_normalize(const TileShape& s, const scalar_t* x_video, int64_t first, int64_t count,
                                     const scalar_t* encoding, const scalar_t* weight, const scalar_t* bias,
                                     scalar_t eps, scalar_t* normed, scalar_t* xhat, scalar_t* mean,
                                     scalar_t* rstd) {
  const int64_t c = s.channels, T = s.tokens;
  for (int64_t t = 0; t < s.frames; ++t) {
    for (int64_t ch = 0; ch < c; ++ch) {
      gather_row(s, xhat + ch * T + t * kLanes, x_video + (t * c + ch) * s.area + first, count,
                 encoding[t * c + ch]);
    }
  }
  // Two-pass statistics per token (mean, then centred variance), as layer_norm.
  const scalar_t inv_c = scalar_t(1) / scalar_t(c);
  for (int64_t i = 0; i < T; ++i) mean[i] = 0;
  for (int64_t ch = 0; ch < c; ++ch) {
    const scalar_t* row = xhat + ch * T;
    for (int64_t i = 0; i < T; ++i) mean[i] += row[i];
  }
  for (int64_t i = 0; i < T; ++i) {
    mean[i] *= inv_c;
    rstd[i] = 0;
  }
  for (int64_t ch = 0; ch < c; ++ch) {
    const scalar_t* row = xhat + ch * T;
    for (int64_t i = 0; i < T; ++i) {
      const scalar_t d = row[i] - mean[i];
      rstd[i] += d * d;
    }
  }
  for (int64_t i = 0; i < T; ++i) rstd[i] = scalar_t(1) / std::sqrt(rstd[i] * inv_c + eps);
  for (int64_t ch = 0; ch < c; ++ch) {
    scalar_t* row = xhat + ch * T;
    scalar_t* out = normed + ch * T;
    const scalar_t w = weight[ch], b = bias[ch];
    for (int64_t i = 0; i < T; ++i) {
      row[i] = (row[i] - mean[i]) * rstd[i];
      out[i] = row[i] * w + b;
    }
  }
}

// Register-blocked lane products for `attend`, N outputs at a time so that the
// accumulators stay in registers (a loop over a runtime frame count would keep
// them in memory: a load and a store per multiply-add).
//   scores: out[n] = Σ_d q[d] · k[d, n]            (N key frames n)
//   values: out[n] = Σ_j p[j] · v[d0 + n, j]       (N channels d0 + n)
template <int N, typename scalar_t>
SURVGEN_INLINE void score_block(Lanes<scalar_t>* out, const scalar_t* q, const scalar_t* k, int64_t depth,
                                int64_t row_stride, int64_t frame_stride) {
  Lanes<scalar_t> acc[N] = {};
  for (int64_t d = 0; d < depth; ++d) {
    const Lanes<scalar_t> qd = load_lanes(q + d * row_stride);
    for (int n = 0; n < N; ++n) acc[n] += qd * load_lanes(k + d * row_stride + n * frame_stride);
  }
  for (int n = 0; n < N; ++n) out[n] = acc[n];
}

template <int N, typename scalar_t>
SURVGEN_INLINE void value_block(scalar_t* out, const Lanes<scalar_t>* p, const scalar_t* v, int64_t frames,
                                int64_t row_stride, int64_t frame_stride) {
  Lanes<scalar_t> acc[N] = {};
  for (int64_t j = 0; j < frames; ++j) {
    const Lanes<scalar_t> pj = p[j];
    for (int n = 0; n < N; ++n) acc[n] += pj * load_lanes(v + n * row_stride + j * frame_stride);
  }
  for (int n = 0; n < N; ++n) store_lanes(out + n * row_stride, acc[n]);
}

// Softmax attention over frames for every head and position of the tile,
// kLanes positions at a time (one lane each).
// qkv: (3c, tokens) channel-major, q rows first; attended: (c, tokens).
// probs (kept for backward when not null): heads × (P / kLanes) × f × f lane vectors;
// scratch: f × f lane vectors.
template <typename scalar_t>
SURVGEN_INLINE void attend(const TileShape& s, const scalar_t* qkv, scalar_t scale, scalar_t* attended,
                           Lanes<scalar_t>* probs, Lanes<scalar_t>* scratch) {
  using V = Lanes<scalar_t>;
  constexpr int kBlock = 4;
  const int64_t f = s.frames, c = s.channels, D = s.head_dim, T = s.tokens;
  const int64_t blocks = s.positions / kLanes;
  for (int64_t h = 0; h < s.heads; ++h) {
    const scalar_t* q = qkv + (h * D) * T;
    const scalar_t* k = qkv + (c + h * D) * T;
    const scalar_t* v = qkv + (2 * c + h * D) * T;
    scalar_t* out = attended + (h * D) * T;
    for (int64_t blk = 0; blk < blocks; ++blk) {
      const int64_t base = blk * f * kLanes;  // this lane block's frames, in every channel row
      V* p = probs != nullptr ? probs + (h * blocks + blk) * f * f : scratch;
      for (int64_t i = 0; i < f; ++i) {
        V* row = p + i * f;  // row[j]: score of frame i on frame j, per position
        const scalar_t* qi = q + base + i * kLanes;
        const scalar_t* k0 = k + base;
        int64_t j = 0;
        for (; j + kBlock <= f; j += kBlock) score_block<kBlock>(row + j, qi, k0 + j * kLanes, D, T, kLanes);
        for (; j < f; ++j) score_block<1>(row + j, qi, k0 + j * kLanes, D, T, kLanes);
        V top = row[0];
        for (j = 1; j < f; ++j) top = max_lanes<scalar_t>(top, row[j]);
        V total{};
        for (j = 0; j < f; ++j) {
          row[j] = exp_nonpositive((row[j] - top) * scale);
          total += row[j];
        }
        const V inverse = scalar_t(1) / total;
        for (j = 0; j < f; ++j) row[j] *= inverse;
        scalar_t* oi = out + base + i * kLanes;
        const scalar_t* v0 = v + base;
        int64_t d = 0;
        for (; d + kBlock <= D; d += kBlock) value_block<kBlock>(oi + d * T, row, v0 + d * T, f, T, kLanes);
        for (; d < D; ++d) value_block<1>(oi + d * T, row, v0 + d * T, f, T, kLanes);
      }
    }
  }
}

// out = x + projected + out_bias, written back to (b·f, c, h, w).
template <typename scalar_t>
SURVGEN_INLINE void scatter_residual(const TileShape& s, const scalar_t* x_video, int64_t first, int64_t count,
                                     const scalar_t* projected, const scalar_t* out_bias, scalar_t* out_video) {
  const int64_t c = s.channels, T = s.tokens, block_stride = s.frames * kLanes;
  for (int64_t t = 0; t < s.frames; ++t)
    for (int64_t ch = 0; ch < c; ++ch) {
      const int64_t offset = (t * c + ch) * s.area + first;
      const scalar_t* x = x_video + offset;
      const scalar_t* y = projected + ch * T + t * kLanes;
      scalar_t* out = out_video + offset;
      const scalar_t b = out_bias[ch];
      for (int64_t p0 = 0; p0 < count; p0 += kLanes) {
        const scalar_t* yb = y + (p0 / kLanes) * block_stride;
        if (p0 + kLanes <= count) {
          store_lanes(out + p0, load_lanes(x + p0) + load_lanes(yb) + b);
        } else {
          for (int64_t l = 0; p0 + l < count; ++l) out[p0 + l] = x[p0 + l] + yb[l] + b;
        }
      }
    }
}

// Incoming gradient of the tile, channel-major, zero on padded positions.
template <typename scalar_t>
SURVGEN_INLINE void gather_grad(const TileShape& s, const scalar_t* grad_video, int64_t first, int64_t count,
                                scalar_t* grad_tile) {
  const int64_t c = s.channels, T = s.tokens;
  for (int64_t t = 0; t < s.frames; ++t)
    for (int64_t ch = 0; ch < c; ++ch)
      gather_row(s, grad_tile + ch * T + t * kLanes, grad_video + (t * c + ch) * s.area + first, count, scalar_t(0));
}

// Backward of `attend`: from d(attended) to d(q, k, v), using the saved probs.
//   dP = dA·Vᵀ,  dV = Pᵀ·dA,  dS = P ∘ (dP − rowsum(P ∘ dP)),  dQ = scale·dS·K,  dK = scale·dSᵀ·Q
template <typename scalar_t>
SURVGEN_INLINE void attend_backward(const TileShape& s, const scalar_t* qkv, scalar_t scale,
                                    const Lanes<scalar_t>* probs, const scalar_t* grad_attended, scalar_t* grad_qkv,
                                    Lanes<scalar_t>* scratch) {
  using V = Lanes<scalar_t>;
  const int64_t f = s.frames, c = s.channels, D = s.head_dim, T = s.tokens;
  const int64_t blocks = s.positions / kLanes;
  for (int64_t h = 0; h < s.heads; ++h) {
    const scalar_t* q = qkv + (h * D) * T;
    const scalar_t* k = qkv + (c + h * D) * T;
    const scalar_t* v = qkv + (2 * c + h * D) * T;
    const scalar_t* da = grad_attended + (h * D) * T;
    scalar_t* dq = grad_qkv + (h * D) * T;
    scalar_t* dk = grad_qkv + (c + h * D) * T;
    scalar_t* dv = grad_qkv + (2 * c + h * D) * T;
    for (int64_t blk = 0; blk < blocks; ++blk) {
      const int64_t base = blk * f * kLanes;
      const V* p = probs + (h * blocks + blk) * f * f;
      V* ds = scratch;  // f × f: dP, then dS in place
      for (int64_t i = 0; i < f; ++i) {
        V* row = ds + i * f;
        for (int64_t j = 0; j < f; ++j) row[j] = V{};
        for (int64_t d = 0; d < D; ++d) {
          const V dad = load_lanes(da + d * T + base + i * kLanes);
          const scalar_t* vd = v + d * T + base;
          for (int64_t j = 0; j < f; ++j) row[j] += dad * load_lanes(vd + j * kLanes);
        }
        const V* prow = p + i * f;
        V dot{};
        for (int64_t j = 0; j < f; ++j) dot += prow[j] * row[j];
        for (int64_t j = 0; j < f; ++j) row[j] = prow[j] * (row[j] - dot) * scale;
      }
      for (int64_t d = 0; d < D; ++d) {
        const scalar_t* qd = q + d * T + base;
        const scalar_t* kd = k + d * T + base;
        const scalar_t* dad = da + d * T + base;
        for (int64_t i = 0; i < f; ++i) {
          // dQ[i] = Σ_j dS[i, j] K[j];  dK[i] = Σ_j dS[j, i] Q[j];  dV[i] = Σ_j P[j, i] dA[j]
          V acc_q{}, acc_k{}, acc_v{};
          for (int64_t j = 0; j < f; ++j) {
            acc_q += ds[i * f + j] * load_lanes(kd + j * kLanes);
            acc_k += ds[j * f + i] * load_lanes(qd + j * kLanes);
            acc_v += p[j * f + i] * load_lanes(dad + j * kLanes);
          }
          store_lanes(dq + d * T + base + i * kLanes, acc_q);
          store_lanes(dk + d * T + base + i * kLanes, acc_k);
          store_lanes(dv + d * T + base + i * kLanes, acc_v);
        }
      }
    }
  }
}

// Backward of LayerNorm + the residual: grad_x = grad_out + d(LayerNorm input),
// scattered to (b·f, c, h, w); accumulates the norm weight and bias gradients.
// Reuses grad_normed as scratch.
//   g = dN ∘ w;  dH = rstd · (g − mean_c(g) − xhat · mean_c(g ∘ xhat))
template <typename scalar_t>
SURVGEN_INLINE void normalize_backward_scatter(const TileShape& s, int64_t first, int64_t count,
                                               scalar_t* grad_normed, const scalar_t* xhat,
                                               const scalar_t* rstd, const scalar_t* weight,
                                               const scalar_t* grad_tile, scalar_t* grad_weight,
                                               scalar_t* grad_bias, scalar_t* sum_g, scalar_t* sum_gx,
                                               scalar_t* grad_x_video) {
  const int64_t c = s.channels, T = s.tokens;
  for (int64_t i = 0; i < T; ++i) sum_g[i] = sum_gx[i] = 0;
  for (int64_t ch = 0; ch < c; ++ch) {
    const scalar_t* dn = grad_normed + ch * T;
    const scalar_t* xh = xhat + ch * T;
    const scalar_t w = weight[ch];
    scalar_t dw = 0, db = 0;
    for (int64_t i = 0; i < T; ++i) {
      dw += dn[i] * xh[i];
      db += dn[i];
      const scalar_t g = dn[i] * w;
      sum_g[i] += g;
      sum_gx[i] += g * xh[i];
    }
    grad_weight[ch] += dw;
    grad_bias[ch] += db;
  }
  const scalar_t inv_c = scalar_t(1) / scalar_t(c);
  for (int64_t i = 0; i < T; ++i) {
    sum_g[i] *= inv_c;
    sum_gx[i] *= inv_c;
  }
  // Per token: rstd · (dN·w − mean(g) − xhat·mean(g·xhat)), laid out like the tile, then + dY and scattered.
  const int64_t block_stride = s.frames * kLanes;
  for (int64_t ch = 0; ch < c; ++ch) {
    const scalar_t w = weight[ch];
    scalar_t* dn = grad_normed + ch * T;  // overwritten with d(LayerNorm input) + dY
    const scalar_t* xh = xhat + ch * T;
    const scalar_t* dy = grad_tile + ch * T;
    for (int64_t i = 0; i < T; ++i) dn[i] = dy[i] + rstd[i] * (dn[i] * w - sum_g[i] - xh[i] * sum_gx[i]);
  }
  for (int64_t t = 0; t < s.frames; ++t)
    for (int64_t ch = 0; ch < c; ++ch) {
      const scalar_t* src = grad_normed + ch * T + t * kLanes;
      scalar_t* dst = grad_x_video + (t * c + ch) * s.area + first;
      for (int64_t p0 = 0; p0 < count; p0 += kLanes) {
        const scalar_t* block = src + (p0 / kLanes) * block_stride;
        if (p0 + kLanes <= count) {
          store_lanes(dst + p0, load_lanes(block));
        } else {
          for (int64_t l = 0; p0 + l < count; ++l) dst[p0 + l] = block[l];
        }
      }
    }
}

// ---------------------------------------------------------------- ISA dispatch
// The passes above, bundled per scalar type and compiled twice for float
// (baseline and AVX2+FMA); `passes<scalar_t>()` returns the set this CPU runs.
template <typename scalar_t>
struct Passes {
  decltype(&gather_normalize<scalar_t>) gather_normalize;
  decltype(&attend<scalar_t>) attend;
  decltype(&scatter_residual<scalar_t>) scatter_residual;
  decltype(&gather_grad<scalar_t>) gather_grad;
  decltype(&attend_backward<scalar_t>) attend_backward;
  decltype(&normalize_backward_scatter<scalar_t>) normalize_backward_scatter;
};

// Stamps one set of non-inline wrappers whose bodies (the always-inline passes)
// are compiled for the target given by ATTRIBUTE.
#define SURVGEN_DEFINE_PASSES(NAME, SCALAR, ATTRIBUTE)                                                      \
  ATTRIBUTE void NAME##_gather_normalize(const TileShape& s, const SCALAR* x, int64_t first, int64_t count,  \
                                         const SCALAR* e, const SCALAR* w, const SCALAR* b, SCALAR eps,      \
                                         SCALAR* n, SCALAR* xh, SCALAR* m, SCALAR* r) {                      \
    gather_normalize<SCALAR>(s, x, first, count, e, w, b, eps, n, xh, m, r);                                \
  }                                                                                                          \
  ATTRIBUTE void NAME##_attend(const TileShape& s, const SCALAR* qkv, SCALAR scale, SCALAR* a,               \
                               Lanes<SCALAR>* p, Lanes<SCALAR>* scratch) {                                   \
    attend<SCALAR>(s, qkv, scale, a, p, scratch);                                                            \
  }                                                                                                          \
  ATTRIBUTE void NAME##_scatter_residual(const TileShape& s, const SCALAR* x, int64_t first, int64_t count,  \
                                         const SCALAR* y, const SCALAR* b, SCALAR* out) {                    \
    scatter_residual<SCALAR>(s, x, first, count, y, b, out);                                                 \
  }                                                                                                          \
  ATTRIBUTE void NAME##_gather_grad(const TileShape& s, const SCALAR* g, int64_t first, int64_t count,       \
                                    SCALAR* tile) {                                                          \
    gather_grad<SCALAR>(s, g, first, count, tile);                                                           \
  }                                                                                                          \
  ATTRIBUTE void NAME##_attend_backward(const TileShape& s, const SCALAR* qkv, SCALAR scale,                \
                                        const Lanes<SCALAR>* p, const SCALAR* da, SCALAR* dqkv,              \
                                        Lanes<SCALAR>* scratch) {                                            \
    attend_backward<SCALAR>(s, qkv, scale, p, da, dqkv, scratch);                                            \
  }                                                                                                          \
  ATTRIBUTE void NAME##_normalize_backward_scatter(                                                          \
      const TileShape& s, int64_t first, int64_t count, SCALAR* dn, const SCALAR* xh, const SCALAR* r,       \
      const SCALAR* w, const SCALAR* g, SCALAR* dw, SCALAR* db, SCALAR* sg, SCALAR* sgx, SCALAR* dx) {       \
    normalize_backward_scatter<SCALAR>(s, first, count, dn, xh, r, w, g, dw, db, sg, sgx, dx);               \
  }                                                                                                          \
  constexpr Passes<SCALAR> NAME##_passes{NAME##_gather_normalize,  NAME##_attend,                            \
                                         NAME##_scatter_residual,  NAME##_gather_grad,                       \
                                         NAME##_attend_backward,   NAME##_normalize_backward_scatter};

#define SURVGEN_NO_ATTRIBUTE
SURVGEN_DEFINE_PASSES(baseline_f32, float, SURVGEN_NO_ATTRIBUTE)
SURVGEN_DEFINE_PASSES(baseline_f64, double, SURVGEN_NO_ATTRIBUTE)
#if defined(__GNUC__) && (defined(__x86_64__) || defined(__i386__))
#define SURVGEN_HAVE_AVX2_PASSES 1
SURVGEN_DEFINE_PASSES(avx2_f32, float, __attribute__((target("avx2,fma"))))
#endif

template <typename scalar_t>
const Passes<scalar_t>& passes();

template <>
const Passes<float>& passes<float>() {
#ifdef SURVGEN_HAVE_AVX2_PASSES
  static const bool avx2 = __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma");
  if (avx2) return avx2_f32_passes;
#endif
  return baseline_f32_passes;
}

template <>
const Passes<double>& passes<double>() {
  return baseline_f64_passes;  // float64 is for gradcheck: exactness, not speed
}
// ---------------------------------------------------------------- GEMM
// The Fortran BLAS that libtorch_cpu exports (MKL in the pip wheels), called
// directly: everything inside at::parallel_for below is raw pointers and plain
// C++, no at:: op. An op there goes through the dispatcher on a worker thread,
// under whatever dispatch state (Python modes, registrations being changed by
// the Python thread) the caller's thread has; ATen's own cpublas::gemm is not
// exported. Inside the parallel region MKL runs single-threaded.
extern "C" {
void sgemm_(const char* transa, const char* transb, const int* m, const int* n, const int* k, const float* alpha,
            const float* a, const int* lda, const float* b, const int* ldb, const float* beta, float* c,
            const int* ldc);
void dgemm_(const char* transa, const char* transb, const int* m, const int* n, const int* k, const double* alpha,
            const double* a, const int* lda, const double* b, const int* ldb, const double* beta, double* c,
            const int* ldc);
}

// Row-major C (m×n) = op(A)·op(B) + beta·C, with op(A) m×k and op(B) k×n; lda/ldb are the row lengths of A and B
// as stored. BLAS is column-major, where row-major C is Cᵀ = op(B)ᵀ·op(A)ᵀ: the operands swap.
template <typename scalar_t>
void gemm(bool transpose_a, bool transpose_b, int64_t m, int64_t n, int64_t k, const scalar_t* a, int64_t lda,
          const scalar_t* b, int64_t ldb, scalar_t beta, scalar_t* c) {
  const char ta = transpose_a ? 'T' : 'N', tb = transpose_b ? 'T' : 'N';
  const int M = static_cast<int>(n), N = static_cast<int>(m), K = static_cast<int>(k);
  const int LDB = static_cast<int>(ldb), LDA = static_cast<int>(lda), LDC = static_cast<int>(n);
  const scalar_t one = 1;
  if constexpr (std::is_same_v<scalar_t, float>) {
    sgemm_(&tb, &ta, &M, &N, &K, &one, b, &LDB, a, &LDA, &beta, c, &LDC);
  } else {
    dgemm_(&tb, &ta, &M, &N, &K, &one, b, &LDB, a, &LDA, &beta, c, &LDC);
  }
}

// ---------------------------------------------------------------- shared set-up
struct Operands {
  TileShape shape;
  at::Tensor x, encoding, norm_weight, norm_bias, qkv_weight, qkv_bias, out_weight, out_bias;
  int64_t videos, tiles_per_video;
};

// Contiguous operands in x's dtype, the frame encoding, and the tiling.
Operands prepare(const at::Tensor& x, int64_t num_frames, const at::Tensor& norm_weight, const at::Tensor& norm_bias,
                 const at::Tensor& qkv_weight, const std::optional<at::Tensor>& qkv_bias,
                 const at::Tensor& out_weight, const at::Tensor& out_bias, int64_t heads) {
  TORCH_CHECK(x.device().is_cpu(), "temporal_attention_forward_cpu: x must be a CPU tensor, got ", x.device());
  TORCH_CHECK(x.scalar_type() == at::kFloat || x.scalar_type() == at::kDouble,
              "temporal_attention (cpu kernel): x must be float32 or float64, got ", x.scalar_type(),
              "; use backend='reference' for other dtypes");
  const auto like = [&](const at::Tensor& t) { return t.to(x.scalar_type()).contiguous(); };
  Operands o;
  o.x = x.contiguous();
  o.shape = tile_shape(o.x, num_frames, heads);
  const int64_t f = num_frames, c = o.shape.channels;
  o.encoding = frame_encoding_table(f, c, o.x);
  o.norm_weight = like(norm_weight);
  o.norm_bias = like(norm_bias);
  o.qkv_weight = like(qkv_weight);
  o.qkv_bias = qkv_bias.has_value() ? like(*qkv_bias) : at::Tensor();
  o.out_weight = like(out_weight);
  o.out_bias = like(out_bias);
  o.videos = x.size(0) / f;
  // An empty image (h·w = 0) has no tile, and tiles no position wide.
  o.tiles_per_video = o.shape.area == 0 ? 0 : (o.shape.area + o.shape.positions - 1) / o.shape.positions;
  return o;
}

// The operands as the raw pointers that parallel_for's threads read (qkv_bias null when absent).
template <typename scalar_t>
struct TileOperands {
  const scalar_t *x, *encoding, *norm_weight, *norm_bias, *qkv_weight, *qkv_bias, *out_weight, *out_bias;

  explicit TileOperands(const Operands& o)
      : x(o.x.data_ptr<scalar_t>()),
        encoding(o.encoding.data_ptr<scalar_t>()),
        norm_weight(o.norm_weight.data_ptr<scalar_t>()),
        norm_bias(o.norm_bias.data_ptr<scalar_t>()),
        qkv_weight(o.qkv_weight.data_ptr<scalar_t>()),
        qkv_bias(o.qkv_bias.defined() ? o.qkv_bias.data_ptr<scalar_t>() : nullptr),
        out_weight(o.out_weight.data_ptr<scalar_t>()),
        out_bias(o.out_bias.data_ptr<scalar_t>()) {}
};

// Lane vectors, 64-byte aligned as the attention loops load them: c10::alloc_cpu, the allocation under ATen's
// CPU allocator, without the dispatcher. A std::vector of them would not do: GCC drops a vector type's
// alignment in a template argument, and std::allocator then aligns to 16 bytes only.
template <typename scalar_t>
class LaneBuffer {
 public:
  explicit LaneBuffer(int64_t count)
      : data_(count > 0 ? static_cast<Lanes<scalar_t>*>(c10::alloc_cpu(count * sizeof(Lanes<scalar_t>))) : nullptr) {}
  ~LaneBuffer() { c10::free_cpu(data_); }
  LaneBuffer(const LaneBuffer&) = delete;
  LaneBuffer& operator=(const LaneBuffer&) = delete;
  Lanes<scalar_t>* data() const { return data_; }

 private:
  Lanes<scalar_t>* data_;
};

// Per-tile buffers, allocated once per worker thread, outside ATen's tensors (no dispatcher there).
template <typename scalar_t>
struct TileBuffers {
  std::vector<scalar_t> normed, xhat, mean, rstd, qkv, attended, projected;
  LaneBuffer<scalar_t> probs, scratch;  // probs: none unless kept for backward

  TileBuffers(const TileShape& s, bool keep_probs)
      : normed(s.channels * s.tokens),
        xhat(s.channels * s.tokens),
        mean(s.tokens),
        rstd(s.tokens),
        qkv(3 * s.channels * s.tokens),
        attended(s.channels * s.tokens),
        projected(s.channels * s.tokens),
        probs(keep_probs ? s.heads * (s.positions / kLanes) * s.frames * s.frames : 0),
        scratch(s.frames * s.frames) {}
};

// Forward of one tile up to the attention output (shared by forward and backward).
template <typename scalar_t>
void tile_forward(const TileShape& s, const TileOperands<scalar_t>& o, const Passes<scalar_t>& run, int64_t video,
                  int64_t first, int64_t count, TileBuffers<scalar_t>& buf, scalar_t eps) {
  const int64_t c = s.channels, T = s.tokens;
  const scalar_t* x_video = o.x + video * s.frames * c * s.area;
  run.gather_normalize(s, x_video, first, count, o.encoding, o.norm_weight, o.norm_bias, eps, buf.normed.data(),
                       buf.xhat.data(), buf.mean.data(), buf.rstd.data());
  // Q/K/V: (3c, tokens) = Wqkv · H + bias per row.
  if (o.qkv_bias != nullptr) {
    for (int64_t row = 0; row < 3 * c; ++row) std::fill_n(buf.qkv.data() + row * T, T, o.qkv_bias[row]);
  }
  gemm<scalar_t>(false, false, 3 * c, T, c, o.qkv_weight, c, buf.normed.data(), T,
                 o.qkv_bias != nullptr ? scalar_t(1) : scalar_t(0), buf.qkv.data());
  const scalar_t scale = scalar_t(1) / std::sqrt(static_cast<scalar_t>(s.head_dim));
  run.attend(s, buf.qkv.data(), scale, buf.attended.data(), buf.probs.data(),
             buf.scratch.data());
}

// Row sums of a (rows, T) tile added to sums[rows], summed in double: a float running sum over a tile's
// ~1000 tokens loses the bias gradients' accuracy (at::sum, which this replaces, sums pairwise).
template <typename scalar_t>
void add_row_sums(const scalar_t* tile, int64_t rows, int64_t T, scalar_t* sums) {
  for (int64_t row = 0; row < rows; ++row) {
    const scalar_t* r = tile + row * T;
    sums[row] += static_cast<scalar_t>(std::accumulate(r, r + T, 0.0));
  }
}

}  // namespace

// ---------------------------------------------------------------- forward
at::Tensor temporal_attention_forward_cpu(const at::Tensor& x, int64_t num_frames, const at::Tensor& norm_weight,
                                          const at::Tensor& norm_bias, const at::Tensor& qkv_weight,
                                          const std::optional<at::Tensor>& qkv_bias, const at::Tensor& out_weight,
                                          const at::Tensor& out_bias, int64_t heads, double eps) {
  const Operands o = prepare(x, num_frames, norm_weight, norm_bias, qkv_weight, qkv_bias, out_weight, out_bias, heads);
  at::Tensor out = at::empty_like(o.x);
  const TileShape& s = o.shape;
  AT_DISPATCH_FLOATING_TYPES(o.x.scalar_type(), "temporal_attention_forward_cpu", [&] {
    const Passes<scalar_t>& run = passes<scalar_t>();
    const TileOperands<scalar_t> raw(o);
    scalar_t* out_data = out.data_ptr<scalar_t>();
    at::parallel_for(0, o.videos * o.tiles_per_video, 1, [&](int64_t begin, int64_t end) {
      TileBuffers<scalar_t> buf(s, /*keep_probs=*/false);
      for (int64_t tile = begin; tile < end; ++tile) {
        const int64_t video = tile / o.tiles_per_video;
        const int64_t first = (tile % o.tiles_per_video) * s.positions;
        const int64_t count = std::min(s.positions, s.area - first);
        tile_forward<scalar_t>(s, raw, run, video, first, count, buf, static_cast<scalar_t>(eps));
        gemm<scalar_t>(false, false, s.channels, s.tokens, s.channels, raw.out_weight, s.channels,
                       buf.attended.data(), s.tokens, 0, buf.projected.data());
        const int64_t offset = video * s.frames * s.channels * s.area;
        run.scatter_residual(s, raw.x + offset, first, count, buf.projected.data(), raw.out_bias,
                             out_data + offset);
      }
    });
  });
  return out;
}

// ---------------------------------------------------------------- backward
namespace {

// Weight gradients of the tiles of one parallel_for range, in x's dtype, flat and row-major.
template <typename scalar_t>
struct WeightGrads {
  std::vector<scalar_t> norm_weight, norm_bias, qkv_weight, qkv_bias, out_weight, out_bias;

  explicit WeightGrads(int64_t c)
      : norm_weight(c), norm_bias(c), qkv_weight(3 * c * c), qkv_bias(3 * c), out_weight(c * c), out_bias(c) {}

  void add(const WeightGrads& other) {
    const auto add_to = [](std::vector<scalar_t>& mine, const std::vector<scalar_t>& theirs) {
      std::transform(mine.begin(), mine.end(), theirs.begin(), mine.begin(), std::plus<scalar_t>());
    };
    add_to(norm_weight, other.norm_weight);
    add_to(norm_bias, other.norm_bias);
    add_to(qkv_weight, other.qkv_weight);
    add_to(qkv_bias, other.qkv_bias);
    add_to(out_weight, other.out_weight);
    add_to(out_bias, other.out_bias);
  }
};

// A new tensor of `sizes` holding `values` (x's dtype), cast to the dtype of the parameter it is the gradient of.
template <typename scalar_t>
at::Tensor gradient_tensor(const std::vector<scalar_t>& values, at::IntArrayRef sizes, const at::Tensor& parameter) {
  at::Tensor t = at::empty(sizes, at::TensorOptions().dtype(c10::CppTypeToScalarType<scalar_t>::value));
  std::copy(values.begin(), values.end(), t.data_ptr<scalar_t>());
  return t.to(parameter.scalar_type());
}

// Backward of the tiles [begin, end) of one range: grad_x written in place, weight gradients into `acc`.
template <typename scalar_t>
void backward_tiles(const Operands& o, const TileOperands<scalar_t>& raw, const Passes<scalar_t>& run,
                    const scalar_t* grad, scalar_t* grad_x, scalar_t eps, int64_t begin, int64_t end,
                    WeightGrads<scalar_t>& acc) {
  const TileShape& s = o.shape;
  const int64_t c = s.channels, T = s.tokens;
  const scalar_t scale = scalar_t(1) / std::sqrt(static_cast<scalar_t>(s.head_dim));
  TileBuffers<scalar_t> buf(s, /*keep_probs=*/true);
  std::vector<scalar_t> grad_tile(c * T), grad_attended(c * T), grad_qkv(3 * c * T), grad_normed(c * T), sum_g(T),
      sum_gx(T);
  for (int64_t tile = begin; tile < end; ++tile) {
    const int64_t video = tile / o.tiles_per_video;
    const int64_t first = (tile % o.tiles_per_video) * s.positions;
    const int64_t count = std::min(s.positions, s.area - first);
    const int64_t offset = video * s.frames * c * s.area;
    tile_forward<scalar_t>(s, raw, run, video, first, count, buf, eps);
    run.gather_grad(s, grad + offset, first, count, grad_tile.data());
    // Output projection: dWout += dY·Aᵀ, dbout += Σ dY, dA = Woutᵀ·dY.
    gemm<scalar_t>(false, true, c, c, T, grad_tile.data(), T, buf.attended.data(), T, 1, acc.out_weight.data());
    add_row_sums(grad_tile.data(), c, T, acc.out_bias.data());
    gemm<scalar_t>(true, false, c, T, c, raw.out_weight, c, grad_tile.data(), T, 0, grad_attended.data());
    run.attend_backward(s, buf.qkv.data(), scale, buf.probs.data(), grad_attended.data(), grad_qkv.data(),
                        buf.scratch.data());
    // Q/K/V projection: dWqkv += dQKV·Hᵀ, dbqkv += Σ dQKV, dH = Wqkvᵀ·dQKV.
    gemm<scalar_t>(false, true, 3 * c, c, T, grad_qkv.data(), T, buf.normed.data(), T, 1, acc.qkv_weight.data());
    if (raw.qkv_bias != nullptr) add_row_sums(grad_qkv.data(), 3 * c, T, acc.qkv_bias.data());
    gemm<scalar_t>(true, false, c, T, 3 * c, raw.qkv_weight, c, grad_qkv.data(), T, 0, grad_normed.data());
    run.normalize_backward_scatter(s, first, count, grad_normed.data(), buf.xhat.data(), buf.rstd.data(),
                                   raw.norm_weight, grad_tile.data(), acc.norm_weight.data(), acc.norm_bias.data(),
                                   sum_g.data(), sum_gx.data(), grad_x + offset);
  }
}

}  // namespace

std::vector<at::Tensor> temporal_attention_backward_cpu(const at::Tensor& grad_out, const at::Tensor& x,
                                                        int64_t num_frames, const at::Tensor& norm_weight,
                                                        const at::Tensor& norm_bias, const at::Tensor& qkv_weight,
                                                        const std::optional<at::Tensor>& qkv_bias,
                                                        const at::Tensor& out_weight, const at::Tensor& out_bias,
                                                        int64_t heads, double eps) {
  const Operands o = prepare(x, num_frames, norm_weight, norm_bias, qkv_weight, qkv_bias, out_weight, out_bias, heads);
  TORCH_CHECK(grad_out.sizes() == x.sizes(), "temporal_attention_backward_cpu: grad_out has shape ", grad_out.sizes(),
              ", x has ", x.sizes());
  const at::Tensor grad = grad_out.to(o.x.scalar_type()).contiguous();
  const int64_t c = o.shape.channels;
  at::Tensor grad_x = at::empty_like(o.x);
  std::vector<at::Tensor> grads;
  AT_DISPATCH_FLOATING_TYPES(o.x.scalar_type(), "temporal_attention_backward_cpu", [&] {
    const Passes<scalar_t>& run = passes<scalar_t>();
    const TileOperands<scalar_t> raw(o);
    const scalar_t* grad_data = grad.data_ptr<scalar_t>();
    scalar_t* grad_x_data = grad_x.data_ptr<scalar_t>();
    // Weight gradients accumulate per parallel_for range, then are summed in the
    // order of the ranges: deterministic for a given thread count.
    std::map<int64_t, WeightGrads<scalar_t>> partial;  // keyed by the first tile of the range
    std::mutex partial_mutex;
    at::parallel_for(0, o.videos * o.tiles_per_video, 1, [&](int64_t begin, int64_t end) {
      WeightGrads<scalar_t> acc(c);
      backward_tiles<scalar_t>(o, raw, run, grad_data, grad_x_data, static_cast<scalar_t>(eps), begin, end, acc);
      const std::lock_guard<std::mutex> lock(partial_mutex);
      partial.emplace(begin, std::move(acc));
    });
    WeightGrads<scalar_t> total(c);
    for (const auto& [first_tile, acc] : partial) total.add(acc);
    // Gradients in the dtype of the parameters they belong to.
    grads = {grad_x.to(x.scalar_type()), gradient_tensor(total.norm_weight, {c}, norm_weight),
             gradient_tensor(total.norm_bias, {c}, norm_bias),
             gradient_tensor(total.qkv_weight, {3 * c, c}, qkv_weight)};
    if (qkv_bias.has_value()) grads.push_back(gradient_tensor(total.qkv_bias, {3 * c}, *qkv_bias));
    grads.push_back(gradient_tensor(total.out_weight, {c, c}, out_weight));
    grads.push_back(gradient_tensor(total.out_bias, {c}, out_bias));
  });
  return grads;
}

}  // namespace survgen
