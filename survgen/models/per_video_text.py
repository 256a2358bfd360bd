"""Cross-attention to a prompt shared by all frames of a video: text keys and values once per video.

The video U-Net runs a video's `f` frames through the spatial layers as `f` images,
and every frame's cross-attention would project the same prompt's states to keys and
values again. Given the text states once per video, `(b, seq, d)`, with the frames'
hidden states `(b·f, n, c)` (a video's frames adjacent), this processor attends each
video's `f·n` queries together to its one set of keys and values. Every query sees the
same keys as before, so the output equals the per-frame computation up to float rounding;
the projections cost `1/f` of what they did. Called with one text row per image (stage 1,
or per-frame text), it is diffusers' processor unchanged.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from diffusers.models.attention_processor import Attention, AttnProcessor2_0


class PerVideoTextProcessor(AttnProcessor2_0):
    def __call__(self, attn: Attention, hidden_states: torch.Tensor, encoder_hidden_states: torch.Tensor | None = None,
                 attention_mask: torch.Tensor | None = None, temb: torch.Tensor | None = None, *args, **kwargs):
        if encoder_hidden_states is None or encoder_hidden_states.shape[0] == hidden_states.shape[0]:
            return super().__call__(attn, hidden_states, encoder_hidden_states, attention_mask, temb, *args, **kwargs)
        videos, (rows, tokens, _) = encoder_hidden_states.shape[0], hidden_states.shape
        if hidden_states.ndim != 3 or rows % videos or attention_mask is not None or attn.residual_connection \
                or attn.group_norm is not None or attn.spatial_norm is not None or attn.norm_q is not None:
            raise ValueError("per-video text states need SD-style cross-attention on (b·f, n, c) tokens with no mask")
        if attn.norm_cross:
            encoder_hidden_states = attn.norm_encoder_hidden_states(encoder_hidden_states)
        heads = attn.heads

        def split_heads(x: torch.Tensor) -> torch.Tensor:  # (videos, length, heads·d) -> (videos, heads, length, d)
            return x.reshape(videos, -1, heads, x.shape[-1] // heads).transpose(1, 2)

        query = split_heads(attn.to_q(hidden_states).reshape(videos, (rows // videos) * tokens, -1))
        key, value = split_heads(attn.to_k(encoder_hidden_states)), split_heads(attn.to_v(encoder_hidden_states))
        out = F.scaled_dot_product_attention(query, key, value)  # (videos, heads, f·n, d)
        out = out.transpose(1, 2).reshape(rows, tokens, -1).to(query.dtype)
        return attn.to_out[1](attn.to_out[0](out)) / attn.rescale_output_factor


def use_per_video_text(unet) -> None:
    """Give every cross-attention of `unet` (diffusers' `attn2`) the per-video processor."""
    processors = unet.attn_processors
    unet.set_attn_processor({name: PerVideoTextProcessor() if ".attn2." in name else processor
                             for name, processor in processors.items()})
