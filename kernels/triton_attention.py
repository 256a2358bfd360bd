"""Temporal attention in Triton: `temporal_attention_reference` as three fused kernels around two torch GEMMs.

x comes and goes in the U-Net's NCHW layout `(b·f, c, h, w)`; arguments are checked by the caller
(`survgen.kernels.temporal_attention`). `_encode_norm_kernel` reads x in place, adds the frame encoding and
LayerNorms each token into token rows `(b·h·w·f, c)`; the Q/K/V and output projections are torch matmuls
(cuBLAS); `_frame_attention_kernel` attends BLOCK_P whole sequences × one head per program in one
block-diagonally masked tile; `_residual_kernel` adds bias and residual and writes NCHW back. Statistics,
scores and products accumulate in fp32; intermediates are stored in x's dtype. Backward saves only x and the
weights and recomputes through the reference (`ops.recompute_backward`). The op runs on CUDA tensors, and on
CPU tensors under Triton's interpreter (TRITON_INTERPRET=1, set before this module is imported), where the
tests check it in fp32. Design notes: benchmarks/NOTES.md.
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
# Sized from the register use ptxas reports for sm_80/sm_90 (no spills for f <= 32 and head_dim <= 256
# in bf16/fp16, <= 128 in IEEE fp32), not tuned by timing (benchmarks/NOTES.md).
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
# Every grid puts its big axis (position blocks of all images, or sequence blocks) on axis 0: CUDA limits
# axes 1 and 2 to 65,535 programs, so only small ones (heads, channel blocks) go there.
def _encode_norm(x: torch.Tensor, num_frames: int, norm_weight: torch.Tensor, norm_bias: torch.Tensor,
                 eps: float) -> torch.Tensor:
    """PE + LayerNorm, NCHW x -> token rows `(b·h·w·f, c)`.

    One program: one image x BLOCK_P positions x all channels (LayerNorm needs them all in one tile).
    """
    images, channels, height, width = x.shape
    positions = height * width
    block_c = triton.next_power_of_2(channels)
    block_p = min(triton.next_power_of_2(positions), max(1, _NORM_TILE_ELEMENTS // block_c))
    position_blocks = triton.cdiv(positions, block_p)
    # fp32 table, computed in float64 by the reference's own function: bit-identical frame encoding.
    encoding = sinusoidal_frame_encoding(num_frames, channels, device=x.device)
    normed = torch.empty(images * positions, channels, dtype=x.dtype, device=x.device)
    torch.library.wrap_triton(_encode_norm_kernel)[(images * position_blocks,)](
        x, encoding, norm_weight, norm_bias, normed,
        num_frames, channels, positions, position_blocks, eps,
        BLOCK_C=block_c, BLOCK_P=block_p, num_warps=8 if block_c * block_p >= 4096 else 4,
    )
    return normed


def _frame_attention(qkv: torch.Tensor, num_frames: int, heads: int) -> torch.Tensor:
    """Attention over the frames of every sequence, from `[q | k | v]` token rows to `(tokens, c)` token rows.

    BLOCK_P whole sequences x one head per program; heads (few) on grid axis 1. tl.dot needs >= 16 rows and
    columns on GPUs: rows come from stacking sequences of F_PAD = next_power_of_2(f) rows, head_dim is padded.
    """
    tokens, channels = qkv.shape[0], qkv.shape[1] // 3
    sequences = tokens // num_frames
    head_dim = channels // heads
    frames_padded = triton.next_power_of_2(num_frames)
    block_d = max(16, triton.next_power_of_2(head_dim))
    precision = _dot_precision(qkv.dtype)
    rows = max(16, frames_padded, min(64, _ATTENTION_TILE_ELEMENTS[precision] // block_d))
    attended = torch.empty(tokens, channels, dtype=qkv.dtype, device=qkv.device)
    torch.library.wrap_triton(_frame_attention_kernel)[(triton.cdiv(sequences, rows // frames_padded), heads)](
        qkv, attended,
        sequences, num_frames, channels, head_dim, 1.0 / math.sqrt(head_dim),
        F_PAD=frames_padded, BLOCK_P=rows // frames_padded, BLOCK_D=block_d, DOT_PRECISION=precision,
        num_warps=8 if rows * block_d >= 4096 else 4,
    )
    return attended


def _residual(x: torch.Tensor, projected: torch.Tensor, out_bias: torch.Tensor, num_frames: int) -> torch.Tensor:
    """x + projected + out_bias, token rows -> x's NCHW layout."""
    images, channels, height, width = x.shape
    positions = height * width
    out = torch.empty_like(x)
    block_c = min(_RESIDUAL_BLOCK, triton.next_power_of_2(channels))
    block_p = min(_RESIDUAL_BLOCK, triton.next_power_of_2(positions))
    position_blocks = triton.cdiv(positions, block_p)
    torch.library.wrap_triton(_residual_kernel)[(images * position_blocks, triton.cdiv(channels, block_c))](
        x, projected, out_bias, out,
        num_frames, channels, positions, position_blocks,
        BLOCK_C=block_c, BLOCK_P=block_p, num_warps=4,
    )
    return out


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
    normed = _encode_norm(x, num_frames, norm_weight, norm_bias, eps)
    qkv = F.linear(normed, qkv_weight, qkv_bias)  # Q, K, V for every token at once: one large GEMM
    attended = _frame_attention(qkv, num_frames, heads)
    projected = torch.mm(attended, out_weight.t())
    return _residual(x, projected, out_bias, num_frames)


# ---------------------------------------------------------------- the op
# triton_op rather than custom_op: torch.compile traces into the body and sees the
# kernels (launched through wrap_triton) and the matmuls instead of one opaque node.
# Under TRITON_INTERPRET=1, @triton.jit yields InterpretedFunctions, which
# wrap_triton returns unwrapped (pytorch/pytorch#152868), so the
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

