"""Temporal attention in Triton: `temporal_attention_reference`, fused around cuBLAS projections.

The shape of the problem
------------------------
Temporal attention runs a tiny attention many times: at every spatial position
of every video, the `f` frames (f <= ~32; 16 for AnimateDiff-style models)
attend to each other. A 64x64 latent batch of 4 videos is 16,384 sequences of
16 tokens. Eager PyTorch spends its time on the wrong things:

* the permutes between the U-Net's `(b·f, c, h, w)` layout and token rows
  `(b·h·w, f, c)` are full copies of the activation, one on the way in and
  one on the way out, plus the PE add and the LayerNorm as separate passes;
* attention kernels are tiled for long sequences (128+ queries per tile):
  with 16 keys most of each tile is padding, and the `(b·h·w·heads, f, f)`
  score tensor makes yet another round trip through memory.

What this file does
-------------------
Three Triton kernels and two torch matmuls, in the order they run:

1. `_encode_norm_kernel` reads x in place (NCHW: for a fixed frame and
   channel, neighbouring positions are adjacent, so loads along positions are
   coalesced), adds the frame encoding, LayerNorms each token with fp32
   statistics and writes token rows `(b·h·w·f, c)`: the permute is fused into
   the pass that has to read x anyway.
2. `normed @ qkv_weight^T + qkv_bias` and, later, `attended @ out_weight^T`
   are plain torch matmuls. They hold nearly all the FLOPs (8c² per token
   against 4fc for the attention itself), are ordinary large GEMMs over all
   tokens at once, and cuBLAS is hard to beat on those; inside `triton_op`
   torch.compile still sees them and may fuse around them.
3. `_frame_attention_kernel` computes softmax attention for BLOCK_P whole
   sequences × one head per program: one (BLOCK_P·F_PAD)-row tile of
   queries, keys and values, `tl.dot` with fp32 accumulation, and a
   block-diagonal mask so that only frames of the same position attend to
   each other. Scores never leave registers.
4. `_residual_kernel` adds out_bias and the residual x and writes the result
   straight back to NCHW: the inverse permute, fused into the epilogue.

Grid axes 1 and 2 of a CUDA launch are limited to 65,535 programs; only axis
0 can be large. Every kernel therefore puts its big axis (position blocks of
all videos and frames) on axis 0, and only small ones (heads, channel blocks)
on axis 1.

Padding: `tl.dot` needs every dimension >= 16 on GPUs. Rather than pad each
sequence of f frames to 16, a tile stacks BLOCK_P sequences of F_PAD =
next_power_of_2(f) rows each, 16 to 64 rows in all (more only for f > 64;
f = 3: 16 sequences of 4 rows), and masks the score tile block-diagonally;
head_dim is padded to a power of two >= 16. `tl.dot` rather than
broadcast-and-`tl.sum` products: it runs on tensor cores for bf16/fp16 (and
TF32), and the products of a whole tile would not fit in registers as a 3-D
broadcast. Every load and store is masked, so c, h·w, f and head_dim need not
be powers of two.

Precision: LayerNorm statistics, scores, softmax and both attention products
accumulate in fp32 whatever the input dtype; intermediates (normed tokens,
q/k/v, attention output) are stored in the input's dtype, as eager autocast
code would. fp32 inputs get IEEE products unless torch allows TF32.

Autograd: the backward is `survgen::temporal_attention_backward` (see
`ops`), which recomputes through the reference; only x and the weights are
saved. The op runs on CUDA tensors, and on CPU tensors under Triton's
interpreter (TRITON_INTERPRET=1, set before this module is imported) for tests.
"""

from __future__ import annotations

import math
from typing import Optional

import torch
import torch.nn.functional as F
import triton
import triton.language as tl

from . import ops
from .reference import sinusoidal_frame_encoding


# ---------------------------------------------------------------- kernels
@triton.jit
def _encode_norm_kernel(
    x_ptr, encoding_ptr, norm_weight_ptr, norm_bias_ptr, normed_ptr,
    num_frames, channels, positions, position_blocks, eps,
    BLOCK_C: tl.constexpr, BLOCK_P: tl.constexpr,
):
    """normed[token] = LayerNorm(x[image, :, position] + PE[frame]) for BLOCK_P positions of one image.

    An image is one row of x's dim 0 (a frame of a video); token rows are
    ordered (video, position, frame), so each sequence's frames are adjacent.
    """
    pid = tl.program_id(0)
    image = pid // position_blocks
    frame = image % num_frames
    video = image // num_frames
    channel = tl.arange(0, BLOCK_C)
    position = (pid % position_blocks) * BLOCK_P + tl.arange(0, BLOCK_P)
    channel_ok = channel < channels
    mask = channel_ok[:, None] & (position < positions)[None, :]

    # int64 bases: b·f·c·h·w can exceed 2^31 elements for long, large videos.
    nchw = image.to(tl.int64) * channels * positions + channel[:, None] * positions + position[None, :]
    hidden = tl.load(x_ptr + nchw, mask=mask, other=0.0).to(tl.float32)
    encoding = tl.load(encoding_ptr + frame * channels + channel, mask=channel_ok, other=0.0)
    hidden += encoding[:, None]

    # LayerNorm over channels (axis 0) in fp32; padded channels are zero and excluded from the variance.
    mean = tl.sum(hidden, axis=0) / channels
    centered = tl.where(channel_ok[:, None], hidden - mean[None, :], 0.0)
    rstd = 1.0 / tl.sqrt(tl.sum(centered * centered, axis=0) / channels + eps)
    weight = tl.load(norm_weight_ptr + channel, mask=channel_ok, other=0.0).to(tl.float32)
    bias = tl.load(norm_bias_ptr + channel, mask=channel_ok, other=0.0).to(tl.float32)
    normed = centered * rstd[None, :] * weight[:, None] + bias[:, None]

    token = (video.to(tl.int64) * positions + position) * num_frames + frame
    tl.store(normed_ptr + token[None, :] * channels + channel[:, None],
             normed.to(normed_ptr.dtype.element_ty), mask=mask)


@triton.jit
def _frame_attention_kernel(
    qkv_ptr, attended_ptr,
    sequences, num_frames, channels, head_dim, scale,
    F_PAD: tl.constexpr, BLOCK_P: tl.constexpr, BLOCK_D: tl.constexpr, DOT_PRECISION: tl.constexpr,
):
    """attended = softmax(q k^T · scale) v for one head of BLOCK_P sequences, all in one tile.

    Tile row r is frame r % F_PAD of sequence r // F_PAD of the block; qkv rows
    are tokens (sequence·f + frame) holding [q | k | v], each `channels` wide.
    """
    head = tl.program_id(1)
    row = tl.arange(0, BLOCK_P * F_PAD)
    local_sequence = row // F_PAD
    frame = row % F_PAD
    sequence = tl.program_id(0) * BLOCK_P + local_sequence
    dim = tl.arange(0, BLOCK_D)
    mask = ((sequence < sequences) & (frame < num_frames))[:, None] & (dim < head_dim)[None, :]

    token = sequence.to(tl.int64) * num_frames + frame
    q_ptrs = qkv_ptr + token[:, None] * (3 * channels) + head * head_dim + dim[None, :]
    q = tl.load(q_ptrs, mask=mask, other=0.0)
    k = tl.load(q_ptrs + channels, mask=mask, other=0.0)
    v = tl.load(q_ptrs + 2 * channels, mask=mask, other=0.0)

    scores = tl.dot(q, tl.trans(k), input_precision=DOT_PRECISION) * scale
    # Block-diagonal: a query sees only the real frames of its own sequence. Every
    # row keeps at least one finite score (f >= 1), so no row is all -inf.
    same_sequence = local_sequence[:, None] == local_sequence[None, :]
    scores = tl.where(same_sequence & (frame < num_frames)[None, :], scores, float("-inf"))
    probabilities = tl.exp(scores - tl.max(scores, axis=1)[:, None])
    # Normalise after the second dot, as flash-attention does: one divide per output, not per score.
    attended = tl.dot(probabilities.to(v.dtype), v, input_precision=DOT_PRECISION)
    attended = attended / tl.sum(probabilities, axis=1)[:, None]

    tl.store(attended_ptr + token[:, None] * channels + head * head_dim + dim[None, :],
             attended.to(attended_ptr.dtype.element_ty), mask=mask)


@triton.jit
def _residual_kernel(
    x_ptr, projected_ptr, out_bias_ptr, out_ptr,
    num_frames, channels, positions, position_blocks,
    BLOCK_C: tl.constexpr, BLOCK_P: tl.constexpr,
):
    """out[image, c, position] = x + projected[token, c] + out_bias[c], written in x's NCHW layout."""
    pid = tl.program_id(0)
    image = pid // position_blocks
    frame = image % num_frames
    video = image // num_frames
    channel = tl.program_id(1) * BLOCK_C + tl.arange(0, BLOCK_C)
    position = (pid % position_blocks) * BLOCK_P + tl.arange(0, BLOCK_P)
    channel_ok = channel < channels
    mask = channel_ok[:, None] & (position < positions)[None, :]

    nchw = image.to(tl.int64) * channels * positions + channel[:, None] * positions + position[None, :]
    token = (video.to(tl.int64) * positions + position) * num_frames + frame
    residual = tl.load(x_ptr + nchw, mask=mask, other=0.0).to(tl.float32)
    projected = tl.load(projected_ptr + token[None, :] * channels + channel[:, None], mask=mask, other=0.0)
    bias = tl.load(out_bias_ptr + channel, mask=channel_ok, other=0.0).to(tl.float32)
    out = residual + projected.to(tl.float32) + bias[:, None]
    tl.store(out_ptr + nchw, out.to(out_ptr.dtype.element_ty), mask=mask)


# ---------------------------------------------------------------- launch parameters
# Not timed on hardware (no GPU was available while writing this). Sized from the
# register use that ptxas reports when the kernels are compiled ahead of time for
# sm_80/sm_90 (no spills for head_dim <= 256 in bf16/fp16, <= 128 in IEEE fp32;
# f <= 32): to be revisited with a profiler.
_NORM_TILE_ELEMENTS = 8192  # channels x positions per LayerNorm program: all channels must fit in one tile
_RESIDUAL_BLOCK = 64  # channels and positions per residual program
# Attention tile: rows (BLOCK_P sequences x F_PAD frames) x BLOCK_D, at most 64 rows.
# IEEE fp32 dots run on FMA units, not tensor cores, and need about twice the registers.
_ATTENTION_TILE_ELEMENTS = {"tf32": 8192, "ieee": 4096}


def _dot_precision(dtype: torch.dtype) -> str:
    """IEEE fp32 products unless torch itself allows TF32 for fp32 matmuls (as it then does for the projections).

    input_precision only matters for fp32 operands; "tf32" is Triton's default, accepted for every dtype.
    """
    if dtype == torch.float32 and torch.get_float32_matmul_precision() == "highest":
        return "ieee"
    return "tf32"


# ---------------------------------------------------------------- the launcher
def _launch(
    x: torch.Tensor,
    num_frames: int,
    norm_weight: torch.Tensor,
    norm_bias: torch.Tensor,
    qkv_weight: torch.Tensor,
    qkv_bias: Optional[torch.Tensor],
    out_weight: torch.Tensor,
    out_bias: torch.Tensor,
    heads: int,
    eps: float = 1e-5,
) -> torch.Tensor:
    """The op's body: `temporal_attention_reference` as three kernels and two GEMMs (arguments already checked).

    Kernels are launched through wrap_triton, so that torch.compile can trace them.
    """
    x = x.contiguous()
    images, channels, height, width = x.shape
    positions = height * width
    tokens = images * positions
    sequences = tokens // num_frames
    head_dim = channels // heads
    wrap = torch.library.wrap_triton

    # 1. PE + LayerNorm, NCHW -> token rows. One program: one image x BLOCK_P positions x all channels.
    block_c = triton.next_power_of_2(channels)
    block_p = min(triton.next_power_of_2(positions), max(1, _NORM_TILE_ELEMENTS // block_c))
    position_blocks = triton.cdiv(positions, block_p)
    # fp32 table, computed in float64 by the reference's own function: bit-identical frame encoding.
    encoding = sinusoidal_frame_encoding(num_frames, channels, device=x.device)
    normed = torch.empty(tokens, channels, dtype=x.dtype, device=x.device)
    wrap(_encode_norm_kernel)[(images * position_blocks,)](
        x, encoding, norm_weight, norm_bias, normed,
        num_frames, channels, positions, position_blocks, eps,
        BLOCK_C=block_c, BLOCK_P=block_p, num_warps=8 if block_c * block_p >= 4096 else 4,
    )

    # 2. Q, K, V for every token at once: one large GEMM.
    qkv = F.linear(normed, qkv_weight, qkv_bias)

    # 3. Attention, BLOCK_P whole sequences x one head per program; heads (small) on grid axis 1.
    #    tl.dot needs >= 16 rows and columns on GPUs: rows come from stacking sequences, head_dim is padded.
    frames_padded = triton.next_power_of_2(num_frames)
    block_d = max(16, triton.next_power_of_2(head_dim))
    precision = _dot_precision(qkv.dtype)
    rows = max(16, frames_padded, min(64, _ATTENTION_TILE_ELEMENTS[precision] // block_d))
    attended = torch.empty(tokens, channels, dtype=qkv.dtype, device=x.device)
    wrap(_frame_attention_kernel)[(triton.cdiv(sequences, rows // frames_padded), heads)](
        qkv, attended,
        sequences, num_frames, channels, head_dim, 1.0 / math.sqrt(head_dim),
        F_PAD=frames_padded, BLOCK_P=rows // frames_padded, BLOCK_D=block_d, DOT_PRECISION=precision,
        num_warps=8 if rows * block_d >= 4096 else 4,
    )

    # 4. Output projection (GEMM), then bias + residual, token rows -> NCHW.
    projected = torch.mm(attended, out_weight.t())
    out = torch.empty_like(x)
    block_c = min(_RESIDUAL_BLOCK, triton.next_power_of_2(channels))
    block_p = min(_RESIDUAL_BLOCK, triton.next_power_of_2(positions))
    position_blocks = triton.cdiv(positions, block_p)
    wrap(_residual_kernel)[(images * position_blocks, triton.cdiv(channels, block_c))](
        x, projected, out_bias, out,
        num_frames, channels, positions, position_blocks,
        BLOCK_C=block_c, BLOCK_P=block_p, num_warps=4,
    )
    return out


# ---------------------------------------------------------------- the op
# triton_op rather than custom_op: torch.compile traces into the body and sees the
# kernels (launched through wrap_triton) and the matmuls instead of one opaque node.
# Under TRITON_INTERPRET=1, @triton.jit yields InterpretedFunctions, which
# wrap_triton returns unwrapped (pytorch/pytorch#152868, fixed in #185597), so the
# same op also runs eagerly on CPU tensors for tests. Callers go through
# `survgen.kernels.temporal_attention(..., backend="triton")`, which checks the arguments.
temporal_attention_triton = torch.library.triton_op("survgen::temporal_attention_triton", _launch, mutates_args=())


# triton_op registers its body as the fake kernel, which launches the kernels through
# wrap_triton. Under the interpreter wrap_triton hands back the plain kernel, which
# cannot run on fake tensors (no data); an explicit fake works everywhere and is
# cheaper. torch.compile still traces the body (triton_op's functional decomposition).
@temporal_attention_triton.register_fake
def _temporal_attention_triton_fake(x, num_frames, norm_weight, norm_bias, qkv_weight, qkv_bias, out_weight,
                                    out_bias, heads, eps=1e-5):
    return torch.empty_like(x, memory_format=torch.contiguous_format)


# ---------------------------------------------------------------- autograd
# As `ops.temporal_attention_op`: save only x and the weights; the backward op
# recomputes the forward (through the reference) and returns the gradients.
temporal_attention_triton.register_autograd(ops.recompute_backward, setup_context=ops.save_inputs)

