"""`temporal_attention`: the temporal-attention op that the video U-Net calls, the one entry point for model code.

It checks the arguments against the contract, picks a backend (see `backends`:
fused kernels first, the pure-PyTorch `reference` otherwise, or the one named by
`backend=`, `set_backend`/`use_backend` or $SURVGEN_ATTENTION; a call that
records gradients skips backends with a `not_for_training` reason) and runs it.
Every backend means exactly what `reference.temporal_attention_reference`
computes. The op is also registered with torch.library as
`torch.ops.survgen.temporal_attention` (see `ops`).

survgen.kernels has no `__init__.py` (nor has survgen.cli): the checkout's
root is on sys.path under `python -m`, and a root folder with one would hide
any installed package of the same name (Hugging Face's `kernels`, which
transformers depends on). Import from the module that defines a name.
"""

from __future__ import annotations

import torch

from .backends import select_backend
from .reference import check_temporal_attention_args


def temporal_attention(
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
    *,
    backend: str | None = None,
) -> torch.Tensor:
    """Temporal self-attention sub-layer with residual, on the U-Net's layout `(b·f, c, h, w)`.

    Per spatial position, the `num_frames` frames of each video attend to each
    other: `x + out_proj(MHA(LayerNorm(x + PE)))` over frames, `heads` heads
    (must divide c). Shapes: norm_weight/norm_bias `(c,)`, qkv_weight `(3c, c)`
    (q, k, v rows in that order), qkv_bias `(3c,)` or None, out_weight `(c, c)`,
    out_bias `(c,)`. Raises ValueError on arguments that break this, and
    BackendUnavailableError when the named `backend` cannot run `x`.
    """
    check_temporal_attention_args(
        x, num_frames, norm_weight, norm_bias, qkv_weight, qkv_bias, out_weight, out_bias, heads
    )
    tensors = (x, norm_weight, norm_bias, qkv_weight, qkv_bias, out_weight, out_bias)
    training = torch.is_grad_enabled() and any(t is not None and t.requires_grad for t in tensors)
    chosen = select_backend(x, backend, training=training)
    if chosen.name != "reference":
        # The fused kernels compute in x's dtype (accumulating in fp32); under autocast
        # x arrives in bf16/fp16 while the weights stay fp32. The casts are differentiable.
        norm_weight, norm_bias, qkv_weight, qkv_bias, out_weight, out_bias = (
            t if t is None or t.dtype == x.dtype else t.to(x.dtype)
            for t in (norm_weight, norm_bias, qkv_weight, qkv_bias, out_weight, out_bias)
        )
    return chosen.forward(x, num_frames, norm_weight, norm_bias, qkv_weight, qkv_bias, out_weight, out_bias, heads, eps)
