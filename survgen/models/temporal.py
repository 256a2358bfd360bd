"""The temporal transformer block that stage 2 inserts after each spatial layer of the U-Net.

On activations in the spatial layout `(b·f, c, h, w)` it lets the `f` frames
of a video exchange information at every spatial position:
`attention_layers` self-attention sub-layers over frames (sinusoidal frame
position encoding → LayerNorm → Q/K/V → multi-head attention → output
projection → residual, all inside `survgen.kernels.temporal_attention`), then
a pointwise MLP sub-layer (LayerNorm → GEGLU → linear → residual).

Every residual branch ends in a zero-initialised projection, so a fresh block
is exactly the identity and a fresh video model reproduces the stage-1 image
model frame by frame (paper: "we initialize the output projection layers of
the temporal blocks to zero and include a residual connection").
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from survgen.kernels.attention import temporal_attention


def temporal_block_parameter_count(channels: int, attention_layers: int = 1, mlp_ratio: int = 4) -> int:
    """Parameters of one `TemporalTransformerBlock`, from the formula (nothing allocated).

    Per attention sub-layer: LayerNorm 2c, Q/K/V 3c·c (no bias), output c·c + c.
    MLP sub-layer with inner width m·c: LayerNorm 2c, GEGLU in c·2mc + 2mc, out mc·c + c.
    """
    c, inner = channels, mlp_ratio * channels
    attention = 2 * c + 3 * c * c + c * c + c
    mlp = 2 * c + (c * 2 * inner + 2 * inner) + (inner * c + c)
    return attention_layers * attention + mlp


class TemporalSelfAttention(nn.Module):
    """One self-attention sub-layer over frames, with its residual (the weights of `temporal_attention`)."""

    def __init__(self, channels: int, heads: int, norm_eps: float):
        super().__init__()
        self.heads = heads
        self.norm = nn.LayerNorm(channels, eps=norm_eps)
        # No Q/K/V bias, as the attention layers of diffusers and AnimateDiff's motion modules.
        self.to_qkv = nn.Linear(channels, 3 * channels, bias=False)
        self.to_out = nn.Linear(channels, channels)
        nn.init.zeros_(self.to_out.weight)
        nn.init.zeros_(self.to_out.bias)

    def forward(self, hidden_states: torch.Tensor, num_frames: int) -> torch.Tensor:
        return temporal_attention(
            hidden_states, num_frames, self.norm.weight, self.norm.bias, self.to_qkv.weight, None,
            self.to_out.weight, self.to_out.bias, self.heads, self.norm.eps,
        )


class GEGLUFeedForward(nn.Module):
    """Linear c → 2·inner, GELU-gated (diffusers' GEGLU: value half times GELU of gate half), then linear inner → c."""

    def __init__(self, channels: int, inner_channels: int):
        super().__init__()
        self.proj_in = nn.Linear(channels, 2 * inner_channels)
        self.proj_out = nn.Linear(inner_channels, channels)
        nn.init.zeros_(self.proj_out.weight)
        nn.init.zeros_(self.proj_out.bias)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        value, gate = self.proj_in(tokens).chunk(2, dim=-1)
        return self.proj_out(value * F.gelu(gate))


class TemporalTransformerBlock(nn.Module):
    """Self-attention over frames (× `attention_layers`) + MLP, on `(b·f, c, h, w)`; identity when fresh."""

    def __init__(
        self,
        channels: int,
        heads: int = 8,
        attention_layers: int = 1,
        mlp_ratio: int = 4,
        max_frames: int = 32,
        norm_eps: float = 1e-5,
    ):
        super().__init__()
        if heads < 1 or channels % heads:
            divisors = [d for d in range(1, channels + 1) if channels % d == 0]
            raise ValueError(
                f"TemporalTransformerBlock: heads={heads} must divide channels={channels}; choose one of {divisors}"
            )
        if attention_layers < 1 or mlp_ratio < 1 or max_frames < 1:
            raise ValueError(
                "TemporalTransformerBlock: attention_layers, mlp_ratio and max_frames must be >= 1, got "
                f"{attention_layers}, {mlp_ratio}, {max_frames}"
            )
        self.channels = channels
        self.heads = heads
        self.max_frames = max_frames
        self.attentions = nn.ModuleList(
            TemporalSelfAttention(channels, heads, norm_eps) for _ in range(attention_layers)
        )
        self.mlp_norm = nn.LayerNorm(channels, eps=norm_eps)
        self.mlp = GEGLUFeedForward(channels, mlp_ratio * channels)

    def forward(self, hidden_states: torch.Tensor, num_frames: int) -> torch.Tensor:
        """`hidden_states` `(b·f, c, h, w)` with each video's `num_frames` frames adjacent → same shape."""
        if num_frames > self.max_frames:
            raise ValueError(
                f"TemporalTransformerBlock: num_frames={num_frames} exceeds max_frames={self.max_frames}; "
                "build the temporal blocks with a larger max_frames (TemporalConfig.max_frames)"
            )
        x = hidden_states
        for attention in self.attentions:
            x = attention(x, num_frames)
        # The MLP acts on each (frame, position) token alone, so it runs channels-last
        # without going through the temporal layout.
        tokens = x.permute(0, 2, 3, 1)
        tokens = tokens + self.mlp(self.mlp_norm(tokens))
        return tokens.permute(0, 3, 1, 2).contiguous()
