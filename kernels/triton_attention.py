"""Temporal attention in Triton: `temporal_attention_reference` as fused kernels around torch GEMMs, forward and
backward.

x comes and goes in the U-Net's layout `(b·f, c, h, w)`, NCHW or channels_last, read and written in place
through its strides (no permute copies); arguments are checked by the caller (`survgen.kernels.temporal_attention`).
Forward: `_encode_norm_kernel` adds the frame encoding and LayerNorms each token into token rows
`(b·h·w·f, c)`; the Q/K/V and output projections are torch matmuls (cuBLAS: tensor cores in bf16/fp16);
`_frame_attention_kernel` attends BLOCK_P whole sequences × one head per program in one block-diagonally masked
tile; `_residual_kernel` adds bias and residual and writes x's layout back. Backward (`_launch_backward`):
autograd saves only x and the weights; the forward's kernels recompute what it needs, then attention's and
LayerNorm's backward kernels and four GEMMs give every gradient. Statistics, scores and products accumulate in
fp32; intermediates are stored in x's dtype. The ops run on CUDA tensors, and on CPU tensors under Triton's
interpreter (TRITON_INTERPRET=1, set before this module is imported), where the tests check them in fp32.
Design notes: benchmarks/NOTES.md.
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
def _norm_tile(
    x_ptr, encoding_ptr, num_frames, channels, positions, position_blocks, eps, x_image, x_channel, x_position,
    BLOCK_C: tl.constexpr, BLOCK_P: tl.constexpr,
):
    """The LayerNorm tile of program `pid`: one image (a row of x's dim 0, a frame of a video) x BLOCK_P
    positions x all channels. Returns the tile's indices, its mask, x_hat = (x + PE[frame] - mean) / std and
    1/std, statistics in fp32 (padded channels are zero and excluded from the variance)."""
    pid = tl.program_id(0)
    image = pid // position_blocks
    frame = image % num_frames
    video = image // num_frames
    channel = tl.arange(0, BLOCK_C)
    position = (pid % position_blocks) * BLOCK_P + tl.arange(0, BLOCK_P)
    channel_ok = channel < channels
    mask = channel_ok[:, None] & (position < positions)[None, :]

    # int64 bases: b·f·c·h·w can exceed 2^31 elements for long, large videos.
    offsets = image.to(tl.int64) * x_image + channel[:, None] * x_channel + position[None, :] * x_position
    hidden = tl.load(x_ptr + offsets, mask=mask, other=0.0).to(tl.float32)
    hidden += tl.load(encoding_ptr + frame * channels + channel, mask=channel_ok, other=0.0)[:, None]
    mean = tl.sum(hidden, axis=0) / channels
    centered = tl.where(channel_ok[:, None], hidden - mean[None, :], 0.0)
    rstd = 1.0 / tl.sqrt(tl.sum(centered * centered, axis=0) / channels + eps)
    # Token rows are ordered (video, position, frame), so each sequence's frames are adjacent.
    token = (video.to(tl.int64) * positions + position) * num_frames + frame
    return image, channel, position, channel_ok, mask, token, centered * rstd[None, :], rstd


@triton.jit
def _encode_norm_kernel(
    x_ptr, encoding_ptr, norm_weight_ptr, norm_bias_ptr, normed_ptr,
    num_frames, channels, positions, position_blocks, eps, x_image, x_channel, x_position,
    BLOCK_C: tl.constexpr, BLOCK_P: tl.constexpr,
):
    """normed[token] = LayerNorm(x[image, :, position] + PE[frame]) for one `_norm_tile`."""
    _, channel, _, channel_ok, mask, token, x_hat, _ = _norm_tile(
        x_ptr, encoding_ptr, num_frames, channels, positions, position_blocks, eps, x_image, x_channel, x_position,
        BLOCK_C, BLOCK_P)
    weight = tl.load(norm_weight_ptr + channel, mask=channel_ok, other=0.0).to(tl.float32)
    bias = tl.load(norm_bias_ptr + channel, mask=channel_ok, other=0.0).to(tl.float32)
    normed = x_hat * weight[:, None] + bias[:, None]
    tl.store(normed_ptr + token[None, :] * channels + channel[:, None],
             normed.to(normed_ptr.dtype.element_ty), mask=mask)


@triton.jit
def _attention_tile(
    qkv_ptr, sequences, num_frames, channels, head_dim, scale,
    F_PAD: tl.constexpr, BLOCK_P: tl.constexpr, BLOCK_D: tl.constexpr, DOT_PRECISION: tl.constexpr,
):
    """The tile of program (sequence block, head): q, k, v of one head of BLOCK_P sequences and the unnormalised
    softmax of their scores. Returns this head's offsets in the `[q | k | v]` rows and in `channels`-wide token
    rows, the mask, q, k, v and exp(scores - row max).

    Tile row r is frame r % F_PAD of sequence r // F_PAD of the block; qkv rows are tokens (sequence·f + frame)
    holding [q | k | v], each `channels` wide.
    """
    head = tl.program_id(1)
    row = tl.arange(0, BLOCK_P * F_PAD)
    local_sequence = row // F_PAD
    frame = row % F_PAD
    sequence = tl.program_id(0) * BLOCK_P + local_sequence
    dim = tl.arange(0, BLOCK_D)
    mask = ((sequence < sequences) & (frame < num_frames))[:, None] & (dim < head_dim)[None, :]

    token = sequence.to(tl.int64) * num_frames + frame
    in_qkv = token[:, None] * (3 * channels) + head * head_dim + dim[None, :]
    q = tl.load(qkv_ptr + in_qkv, mask=mask, other=0.0)
    k = tl.load(qkv_ptr + in_qkv + channels, mask=mask, other=0.0)
    v = tl.load(qkv_ptr + in_qkv + 2 * channels, mask=mask, other=0.0)

    scores = tl.dot(q, tl.trans(k), input_precision=DOT_PRECISION) * scale
    # Block-diagonal: a query sees only the real frames of its own sequence. Every
    # row keeps at least one finite score (f >= 1), so no row is all -inf.
    same_sequence = local_sequence[:, None] == local_sequence[None, :]
    scores = tl.where(same_sequence & (frame < num_frames)[None, :], scores, float("-inf"))
    in_tokens = token[:, None] * channels + head * head_dim + dim[None, :]
    return in_qkv, in_tokens, mask, q, k, v, tl.exp(scores - tl.max(scores, axis=1)[:, None])


@triton.jit
def _frame_attention_kernel(
    qkv_ptr, attended_ptr,
    sequences, num_frames, channels, head_dim, scale,
    F_PAD: tl.constexpr, BLOCK_P: tl.constexpr, BLOCK_D: tl.constexpr, DOT_PRECISION: tl.constexpr,
):
    """attended = softmax(q k^T · scale) v for one `_attention_tile`."""
    _, in_tokens, mask, _, _, v, probabilities = _attention_tile(
        qkv_ptr, sequences, num_frames, channels, head_dim, scale, F_PAD, BLOCK_P, BLOCK_D, DOT_PRECISION)
    # Normalise after the second dot, as flash-attention does: one divide per output, not per score.
    attended = tl.dot(probabilities.to(v.dtype), v, input_precision=DOT_PRECISION)
    attended = attended / tl.sum(probabilities, axis=1)[:, None]
    tl.store(attended_ptr + in_tokens, attended.to(attended_ptr.dtype.element_ty), mask=mask)


@triton.jit
def _block_tile(num_frames, channels, positions, position_blocks, x_image, x_channel, x_position,
                BLOCK_C: tl.constexpr, BLOCK_P: tl.constexpr):
    """The tile of program (pid, channel block): one image x BLOCK_P positions x BLOCK_C channels. Returns its
    offsets in x's layout, its token rows' offsets `token * channels + channel`, its channels and its mask."""
    pid = tl.program_id(0)
    image = pid // position_blocks
    frame = image % num_frames
    video = image // num_frames
    channel = tl.program_id(1) * BLOCK_C + tl.arange(0, BLOCK_C)
    position = (pid % position_blocks) * BLOCK_P + tl.arange(0, BLOCK_P)
    channel_ok = channel < channels
    mask = channel_ok[:, None] & (position < positions)[None, :]
    in_x = image.to(tl.int64) * x_image + channel[:, None] * x_channel + position[None, :] * x_position
    token = (video.to(tl.int64) * positions + position) * num_frames + frame
    return in_x, token[None, :] * channels + channel[:, None], channel, channel_ok, mask


@triton.jit
def _residual_kernel(
    x_ptr, projected_ptr, out_bias_ptr, out_ptr,
    num_frames, channels, positions, position_blocks, x_image, x_channel, x_position,
    BLOCK_C: tl.constexpr, BLOCK_P: tl.constexpr,
):
    """out[image, c, position] = x + projected[token, c] + out_bias[c], written in x's layout."""
    in_x, in_tokens, channel, channel_ok, mask = _block_tile(
        num_frames, channels, positions, position_blocks, x_image, x_channel, x_position, BLOCK_C, BLOCK_P)
    residual = tl.load(x_ptr + in_x, mask=mask, other=0.0).to(tl.float32)
    projected = tl.load(projected_ptr + in_tokens, mask=mask, other=0.0)
    bias = tl.load(out_bias_ptr + channel, mask=channel_ok, other=0.0).to(tl.float32)
    out = residual + projected.to(tl.float32) + bias[:, None]
    tl.store(out_ptr + in_x, out.to(out_ptr.dtype.element_ty), mask=mask)


@triton.jit
def _to_tokens_kernel(
    x_ptr, tokens_ptr,
    num_frames, channels, positions, position_blocks, x_image, x_channel, x_position,
    BLOCK_C: tl.constexpr, BLOCK_P: tl.constexpr,
):
    """tokens[token, c] = x[image, c, position]: x's layout to token rows, the inverse of `_residual_kernel`'s store."""
    in_x, in_tokens, _, _, mask = _block_tile(
        num_frames, channels, positions, position_blocks, x_image, x_channel, x_position, BLOCK_C, BLOCK_P)
    tl.store(tokens_ptr + in_tokens, tl.load(x_ptr + in_x, mask=mask, other=0.0), mask=mask)


@triton.jit
def _frame_attention_backward_kernel(
    qkv_ptr, d_attended_ptr, d_qkv_ptr,
    sequences, num_frames, channels, head_dim, scale,
    F_PAD: tl.constexpr, BLOCK_P: tl.constexpr, BLOCK_D: tl.constexpr, DOT_PRECISION: tl.constexpr,
):
    """d[q | k | v] of one `_attention_tile` from d_attended.

    A whole sequence fits in the tile, so the softmax is recomputed exactly here (nothing saved from the
    forward): p = softmax(s), dv = p^T do, ds = p * (do v^T - rowsum(p * do v^T)), dq = ds k, dk = ds^T q.
    """
    in_qkv, in_tokens, mask, q, k, v, probabilities = _attention_tile(
        qkv_ptr, sequences, num_frames, channels, head_dim, scale, F_PAD, BLOCK_P, BLOCK_D, DOT_PRECISION)
    probabilities = probabilities / tl.sum(probabilities, axis=1)[:, None]
    d_attended = tl.load(d_attended_ptr + in_tokens, mask=mask, other=0.0)

    # Padded rows load zeros, so their d_attended is zero and they add nothing to dv or ds.
    d_v = tl.dot(tl.trans(probabilities.to(v.dtype)), d_attended, input_precision=DOT_PRECISION)
    d_probabilities = tl.dot(d_attended, tl.trans(v), input_precision=DOT_PRECISION)
    d_scores = probabilities * (d_probabilities - tl.sum(probabilities * d_probabilities, axis=1)[:, None])
    d_scores = (d_scores * scale).to(q.dtype)
    d_q = tl.dot(d_scores, k, input_precision=DOT_PRECISION)
    d_k = tl.dot(tl.trans(d_scores), q, input_precision=DOT_PRECISION)

    element = d_qkv_ptr.dtype.element_ty  # d_qkv has qkv's rows: [dq | dk | dv]
    tl.store(d_qkv_ptr + in_qkv, d_q.to(element), mask=mask)
    tl.store(d_qkv_ptr + in_qkv + channels, d_k.to(element), mask=mask)
    tl.store(d_qkv_ptr + in_qkv + 2 * channels, d_v.to(element), mask=mask)


@triton.jit
def _norm_backward_kernel(
    x_ptr, encoding_ptr, norm_weight_ptr, d_normed_ptr, grad_out_ptr, grad_x_ptr, partial_ptr,
    num_frames, channels, positions, position_blocks, eps, x_image, x_channel, x_position,
    g_image, g_channel, g_position,
    BLOCK_C: tl.constexpr, BLOCK_P: tl.constexpr,
):
    """grad_x = grad_out (the residual) + LayerNorm's backward of d_normed, written in x's layout; per program, the
    sums over its positions of d_normed * x_hat and d_normed (LayerNorm weight and bias gradients) into `partial`.

    The tile is `_encode_norm_kernel`'s, which recomputes x_hat and 1/std from x rather than saving them.
    """
    image, channel, position, channel_ok, mask, token, x_hat, rstd = _norm_tile(
        x_ptr, encoding_ptr, num_frames, channels, positions, position_blocks, eps, x_image, x_channel, x_position,
        BLOCK_C, BLOCK_P)
    d_normed = tl.load(d_normed_ptr + token[None, :] * channels + channel[:, None], mask=mask, other=0.0)
    d_normed = d_normed.to(tl.float32)
    weight = tl.load(norm_weight_ptr + channel, mask=channel_ok, other=0.0).to(tl.float32)
    d_x_hat = d_normed * weight[:, None]
    d_hidden = (d_x_hat - x_hat * (tl.sum(d_x_hat * x_hat, axis=0) / channels)[None, :]
                - (tl.sum(d_x_hat, axis=0) / channels)[None, :]) * rstd[None, :]
    image_base = image.to(tl.int64)
    grad = tl.load(grad_out_ptr + image_base * g_image + channel[:, None] * g_channel + position[None, :] * g_position,
                   mask=mask, other=0.0).to(tl.float32) + d_hidden
    tl.store(grad_x_ptr + image_base * x_image + channel[:, None] * x_channel + position[None, :] * x_position,
             grad.to(grad_x_ptr.dtype.element_ty), mask=mask)

    partial = partial_ptr + tl.program_id(0).to(tl.int64) * 2 * channels + channel
    tl.store(partial, tl.sum(d_normed * x_hat, axis=1), mask=channel_ok)
    tl.store(partial + channels, tl.sum(d_normed, axis=1), mask=channel_ok)

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
def _image_layout(t: torch.Tensor) -> tuple[torch.Tensor, tuple[int, int, int]]:
    """`t` (b·f, c, h, w) and its (image, channel, position) strides, position = y·w + x: as it is when NCHW- or
    channels_last-dense (the U-Net's two layouts, both read in place), else an NCHW copy."""
    if not (t.is_contiguous() or t.is_contiguous(memory_format=torch.channels_last)):
        t = t.contiguous()
    height, width = t.shape[2:]
    # A size-1 dim's stride is arbitrary: positions step along w, or along h when w is 1.
    return t, (t.stride(0), t.stride(1), t.stride(3) if width > 1 else t.stride(2))


# Every grid puts its big axis (position blocks of all images, or sequence blocks) on axis 0: CUDA limits
# axes 1 and 2 to 65,535 programs, so only small ones (heads, channel blocks) go there.
def _encode_norm(x: torch.Tensor, num_frames: int, norm_weight: torch.Tensor, norm_bias: torch.Tensor,
                 eps: float) -> torch.Tensor:
    """PE + LayerNorm, x (`_image_layout`) -> token rows `(b·h·w·f, c)`.

    One program: one image x BLOCK_P positions x all channels (LayerNorm needs them all in one tile).
    """
    x, x_strides = _image_layout(x)
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
        num_frames, channels, positions, position_blocks, eps, *x_strides,
        BLOCK_C=block_c, BLOCK_P=block_p, num_warps=8 if block_c * block_p >= 4096 else 4,
    )
    return normed


def _attention_launch(num_frames: int, head_dim: int, dtype: torch.dtype, elements: int) -> dict:
    """Launch parameters of the attention kernels: BLOCK_P whole sequences of F_PAD = next_power_of_2(f) rows,
    head_dim padded to BLOCK_D, at most `elements` per operand tile (tl.dot needs >= 16 rows and columns)."""
    frames_padded = triton.next_power_of_2(num_frames)
    block_d = max(16, triton.next_power_of_2(head_dim))
    rows = max(16, frames_padded, min(64, elements // block_d))
    return dict(F_PAD=frames_padded, BLOCK_P=rows // frames_padded, BLOCK_D=block_d,
                DOT_PRECISION=_dot_precision(dtype), num_warps=8 if rows * block_d >= 4096 else 4)


def _frame_attention(qkv: torch.Tensor, num_frames: int, heads: int) -> torch.Tensor:
    """Attention over the frames of every sequence, from `[q | k | v]` token rows to `(tokens, c)` token rows.

    BLOCK_P whole sequences x one head per program; heads (few) on grid axis 1.
    """
    tokens, channels = qkv.shape[0], qkv.shape[1] // 3
    sequences = tokens // num_frames
    head_dim = channels // heads
    tile = _attention_launch(num_frames, head_dim, qkv.dtype, _ATTENTION_TILE_ELEMENTS[_dot_precision(qkv.dtype)])
    attended = torch.empty(tokens, channels, dtype=qkv.dtype, device=qkv.device)
    torch.library.wrap_triton(_frame_attention_kernel)[(triton.cdiv(sequences, tile["BLOCK_P"]), heads)](
        qkv, attended, sequences, num_frames, channels, head_dim, 1.0 / math.sqrt(head_dim), **tile,
    )
    return attended


def _frame_attention_backward(qkv: torch.Tensor, d_attended: torch.Tensor, num_frames: int,
                              heads: int) -> torch.Tensor:
    """d[q | k | v] token rows from the forward's `[q | k | v]` and d_attended token rows; tiles as the forward's,
    halved (the backward holds twice the operands)."""
    tokens, channels = d_attended.shape
    sequences = tokens // num_frames
    head_dim = channels // heads
    elements = _ATTENTION_TILE_ELEMENTS[_dot_precision(qkv.dtype)] // 2
    tile = _attention_launch(num_frames, head_dim, qkv.dtype, elements)
    d_qkv = torch.empty_like(qkv)
    torch.library.wrap_triton(_frame_attention_backward_kernel)[(triton.cdiv(sequences, tile["BLOCK_P"]), heads)](
        qkv, d_attended, d_qkv, sequences, num_frames, channels, head_dim, 1.0 / math.sqrt(head_dim), **tile,
    )
    return d_qkv


def _residual(x: torch.Tensor, projected: torch.Tensor, out_bias: torch.Tensor, num_frames: int) -> torch.Tensor:
    """x + projected + out_bias, token rows -> x's layout (`_image_layout`; x is already in one)."""
    x, x_strides = _image_layout(x)
    images, channels, height, width = x.shape
    positions = height * width
    out = torch.empty_like(x)  # a dense x's strides, so the kernel writes out with x's offsets
    block_c = min(_RESIDUAL_BLOCK, triton.next_power_of_2(channels))
    block_p = min(_RESIDUAL_BLOCK, triton.next_power_of_2(positions))
    position_blocks = triton.cdiv(positions, block_p)
    torch.library.wrap_triton(_residual_kernel)[(images * position_blocks, triton.cdiv(channels, block_c))](
        x, projected, out_bias, out,
        num_frames, channels, positions, position_blocks, *x_strides,
        BLOCK_C=block_c, BLOCK_P=block_p, num_warps=4,
    )
    return out


def _to_tokens(x: torch.Tensor, num_frames: int) -> torch.Tensor:
    """`(b·f, c, h, w)` (`_image_layout`) -> token rows `(b·h·w·f, c)`, tiled as `_residual`."""
    x, x_strides = _image_layout(x)
    images, channels, height, width = x.shape
    positions = height * width
    tokens = torch.empty(images * positions, channels, dtype=x.dtype, device=x.device)
    block_c = min(_RESIDUAL_BLOCK, triton.next_power_of_2(channels))
    block_p = min(_RESIDUAL_BLOCK, triton.next_power_of_2(positions))
    position_blocks = triton.cdiv(positions, block_p)
    torch.library.wrap_triton(_to_tokens_kernel)[(images * position_blocks, triton.cdiv(channels, block_c))](
        x, tokens, num_frames, channels, positions, position_blocks, *x_strides,
        BLOCK_C=block_c, BLOCK_P=block_p, num_warps=4,
    )
    return tokens


def _norm_backward(x: torch.Tensor, d_normed: torch.Tensor, grad_out: torch.Tensor, num_frames: int,
                   norm_weight: torch.Tensor, eps: float) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """grad_x (in x's layout, residual included) and the LayerNorm weight and bias gradients, tiled as
    `_encode_norm`; x and grad_out each in a layout of `_image_layout`.

    The weight gradients are summed in fp32 per program, then over programs by torch: no atomics, so the
    result is the same on every run.
    """
    (x, x_strides), (grad_out, grad_strides) = _image_layout(x), _image_layout(grad_out)
    images, channels, height, width = x.shape
    positions = height * width
    block_c = triton.next_power_of_2(channels)
    block_p = min(triton.next_power_of_2(positions), max(1, _NORM_TILE_ELEMENTS // block_c))
    position_blocks = triton.cdiv(positions, block_p)
    programs = images * position_blocks
    encoding = sinusoidal_frame_encoding(num_frames, channels, device=x.device)
    grad_x = torch.empty_like(x)
    partial = torch.empty(programs, 2, channels, dtype=torch.float32, device=x.device)
    torch.library.wrap_triton(_norm_backward_kernel)[(programs,)](
        x, encoding, norm_weight, d_normed, grad_out, grad_x, partial,
        num_frames, channels, positions, position_blocks, eps, *x_strides, *grad_strides,
        BLOCK_C=block_c, BLOCK_P=block_p, num_warps=8 if block_c * block_p >= 4096 else 4,
    )
    return grad_x, partial[:, 0].sum(0).to(norm_weight.dtype), partial[:, 1].sum(0).to(norm_weight.dtype)


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
    x, _ = _image_layout(x)
    normed = _encode_norm(x, num_frames, norm_weight, norm_bias, eps)
    qkv = F.linear(normed, qkv_weight, qkv_bias)  # Q, K, V for every token at once: one large GEMM
    attended = _frame_attention(qkv, num_frames, heads)
    projected = torch.mm(attended, out_weight.t())
    return _residual(x, projected, out_bias, num_frames)


def _launch_backward(
    grad_out: torch.Tensor,
    x: torch.Tensor,
    num_frames: int,
    norm_weight: torch.Tensor,
    norm_bias: torch.Tensor,
    qkv_weight: torch.Tensor,
    qkv_bias: Optional[torch.Tensor],
    out_weight: torch.Tensor,
    out_bias: torch.Tensor,
    heads: int,
    eps: float,
) -> list[torch.Tensor]:
    """Gradients of x, norm_weight, norm_bias, qkv_weight, [qkv_bias,] out_weight, out_bias, as
    `ops.reference_backward` returns them: four kernels and five GEMMs.

    Only x and the weights were saved: the forward's normed tokens, Q/K/V and attended tokens are recomputed
    (one LayerNorm pass, one GEMM, one attention pass), so the op keeps one activation for backward.
    """
    normed = _encode_norm(x, num_frames, norm_weight, norm_bias, eps)
    qkv = F.linear(normed, qkv_weight, qkv_bias)
    attended = _frame_attention(qkv, num_frames, heads)
    grad_tokens = _to_tokens(grad_out, num_frames)
    d_out_weight = torch.mm(grad_tokens.t(), attended)
    d_out_bias = grad_tokens.sum(0, dtype=torch.float32).to(out_bias.dtype)
    d_qkv = _frame_attention_backward(qkv, torch.mm(grad_tokens, out_weight), num_frames, heads)
    d_qkv_weight = torch.mm(d_qkv.t(), normed)
    d_qkv_bias = [] if qkv_bias is None else [d_qkv.sum(0, dtype=torch.float32).to(qkv_bias.dtype)]
    grad_x, d_norm_weight, d_norm_bias = _norm_backward(x, torch.mm(d_qkv, qkv_weight), grad_out, num_frames,
                                                        norm_weight, eps)
    return [grad_x, d_norm_weight, d_norm_bias, d_qkv_weight, *d_qkv_bias, d_out_weight,
            d_out_bias]


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
    return torch.empty_like(_image_layout(x)[0])  # the output keeps x's layout


# ---------------------------------------------------------------- autograd
# The backward is its own triton_op, so torch.compile traces its kernels too; autograd saves only x and the
# weights (`ops.save_inputs`) and calls it.
temporal_attention_triton_backward = torch.library.triton_op(
    "survgen::temporal_attention_triton_backward", _launch_backward, mutates_args=()
)


@temporal_attention_triton_backward.register_fake
def _temporal_attention_triton_backward_fake(grad_out, x, num_frames, norm_weight, norm_bias, qkv_weight, qkv_bias,
                                             out_weight, out_bias, heads, eps):
    weights = (norm_weight, norm_bias, qkv_weight, qkv_bias, out_weight, out_bias)
    return [torch.empty_like(_image_layout(x)[0]),  # grad x keeps x's layout
            *(torch.empty_like(t, memory_format=torch.contiguous_format) for t in weights if t is not None)]


temporal_attention_triton.register_autograd(ops.backward_through(temporal_attention_triton_backward),
                                            setup_context=ops.save_inputs)
