"""The pure-PyTorch definition of temporal attention: the spec every backend is tested against.

Temporal attention mixes information across the frames of a video at each
spatial position. Activations arrive in the spatial U-Net's layout
`(b·f, c, h, w)` (the `f` frames of a video adjacent along dim 0) and leave in
it. Written with plain differentiable ops (permute, `layer_norm`, `linear`,
an explicit softmax), so autograd, autocast and any device work unchanged and
the code reads as the formula. `check_temporal_attention_args` is the shape
contract that the public op enforces before any backend runs.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

# The base of the transformer's sinusoidal encoding ("Attention Is All You Need").
_POSITION_BASE = 10000.0


def sinusoidal_frame_encoding(
    num_frames: int, channels: int, *, dtype: torch.dtype = torch.float32, device: torch.device | str | None = None
) -> torch.Tensor:
    """Sinusoidal position encoding of frame indices, shape `(num_frames, channels)`.

    Interleaved as in the transformer paper and AnimateDiff's motion modules:
    `PE[p, 2i] = sin(p / 10000^(2i/c))`, `PE[p, 2i+1] = cos(p / 10000^(2i/c))`.
    An odd `c` ends on a sine channel (it has one more sine than cosine).
    """
    if num_frames < 1 or channels < 1:
        raise ValueError(
            f"sinusoidal_frame_encoding: num_frames and channels must be >= 1, got {num_frames} and {channels}"
        )
    # float64 so that the encoding is the same to the last bit of float32 whatever the target dtype.
    position = torch.arange(num_frames, dtype=torch.float64, device=device)[:, None]
    even_channels = torch.arange(0, channels, 2, dtype=torch.float64, device=device)
    angle = position * torch.exp(even_channels * (-math.log(_POSITION_BASE) / channels))
    encoding = torch.empty(num_frames, channels, dtype=torch.float64, device=device)
    encoding[:, 0::2] = torch.sin(angle)
    encoding[:, 1::2] = torch.cos(angle[:, : channels // 2])
    return encoding.to(dtype)


def _divisors(n: int) -> list[int]:
    return [d for d in range(1, n + 1) if n % d == 0]


def check_temporal_attention_args(
    x: torch.Tensor,
    num_frames: int,
    norm_weight: torch.Tensor,
    norm_bias: torch.Tensor,
    qkv_weight: torch.Tensor,
    qkv_bias: torch.Tensor | None,
    out_weight: torch.Tensor,
    out_bias: torch.Tensor,
    heads: int,
) -> None:
    """Raise a one-line ValueError naming what is expected when the arguments break the contract."""
    if not isinstance(x, torch.Tensor) or x.dim() != 4:
        got = f"shape {tuple(x.shape)}" if isinstance(x, torch.Tensor) else type(x).__name__
        raise ValueError(f"temporal_attention: x must be a 4-D tensor (batch·frames, channels, height, width), got {got}")
    if not x.is_floating_point():
        raise ValueError(f"temporal_attention: x must be a floating-point tensor, got {x.dtype}")
    if isinstance(num_frames, bool) or not isinstance(num_frames, int) or num_frames < 1:
        raise ValueError(f"temporal_attention: num_frames must be a positive int, got {num_frames!r}")
    if x.shape[0] % num_frames:
        raise ValueError(
            f"temporal_attention: x.shape[0]={x.shape[0]} is not divisible by num_frames={num_frames}; "
            f"x must hold whole videos, laid out (batch·frames, c, h, w) with each video's frames adjacent"
        )
    c = x.shape[1]
    if isinstance(heads, bool) or not isinstance(heads, int) or heads < 1 or c % heads:
        raise ValueError(
            f"temporal_attention: heads={heads!r} must divide the {c} channels; choose one of {_divisors(c)}"
        )
    expected = {
        "norm_weight": (norm_weight, (c,)),
        "norm_bias": (norm_bias, (c,)),
        "qkv_weight": (qkv_weight, (3 * c, c)),
        "qkv_bias": (qkv_bias, (3 * c,)),
        "out_weight": (out_weight, (c, c)),
        "out_bias": (out_bias, (c,)),
    }
    for name, (tensor, shape) in expected.items():
        if tensor is None and name == "qkv_bias":
            continue
        if not isinstance(tensor, torch.Tensor):
            raise ValueError(f"temporal_attention: {name} must be a tensor of shape {shape}, got {type(tensor).__name__}")
        if tuple(tensor.shape) != shape:
            raise ValueError(
                f"temporal_attention: {name} must have shape {shape} for x with {c} channels, got {tuple(tensor.shape)}"
            )
        if tensor.device != x.device:
            raise ValueError(f"temporal_attention: {name} is on {tensor.device} but x is on {x.device}; move both to one device")


def temporal_attention_reference(
    x: torch.Tensor,
    num_frames: int,
    norm_weight: torch.Tensor,
    norm_bias: torch.Tensor,
    qkv_weight: torch.Tensor,
    qkv_bias: torch.Tensor | None,
    out_weight: torch.Tensor,
    out_bias: torch.Tensor,
    heads: int,
    eps: float = 1e-5,
) -> torch.Tensor:
    """One temporal self-attention sub-layer with its residual, `(b·f, c, h, w) -> (b·f, c, h, w)`.

    v   = x as (b·h·w, f, c): one sequence of f frames per spatial position
    n   = LayerNorm(v + PE[:f])
    q, k, v' = split(n @ qkv_weight^T + qkv_bias)       (in that order)
    a   = softmax(q k^T / sqrt(c/heads)) v'              per head, over the f axis
    out = v + a @ out_weight^T + out_bias                residual onto v without PE,
                                                         so zero out_weight/out_bias is the identity
    Arguments are assumed valid (see `check_temporal_attention_args`).
    """
    bf, c, h, w = x.shape
    f = num_frames
    b = bf // f
    head_dim = c // heads
    sequences = b * h * w

    v = x.reshape(b, f, c, h, w).permute(0, 3, 4, 1, 2).reshape(sequences, f, c)
    hidden = v + sinusoidal_frame_encoding(f, c, dtype=v.dtype, device=v.device)
    normed = F.layer_norm(hidden, (c,), norm_weight, norm_bias, eps)
    qkv = F.linear(normed, qkv_weight, qkv_bias)  # (sequences, f, 3c)
    # (sequences, f, 3, heads, head_dim) -> three (sequences, heads, f, head_dim)
    q, k, value = qkv.reshape(sequences, f, 3, heads, head_dim).permute(2, 0, 3, 1, 4).unbind(0)
    scores = (q @ k.transpose(-1, -2)) * (1.0 / math.sqrt(head_dim))  # (sequences, heads, f, f)
    attended = scores.softmax(dim=-1) @ value  # (sequences, heads, f, head_dim)
    attended = attended.transpose(1, 2).reshape(sequences, f, c)
    out = v + F.linear(attended, out_weight, out_bias)
    return out.reshape(b, h, w, f, c).permute(0, 3, 4, 1, 2).reshape(bf, c, h, w)
