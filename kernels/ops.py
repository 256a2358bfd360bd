"""`survgen::temporal_attention` as a torch.library custom op: the Python half of it (fake, autograd, reference).

The op is the dispatcher's entry point for the fused backends. survgen._C
(csrc/extension.cpp) defines its schema and registers the compiled kernels for
its CPU/CUDA keys in C++, as pytorch/extension-cpp does, so the dispatcher calls
them directly, never through Python; this file adds the fake implementation
(`torch.compile` sees one opaque node with a known output shape instead of
tracing the attention), the autograd formula, and the pure-PyTorch reference
for every device without a fused kernel. Where survgen._C did not load, the
schemas are defined here and the reference runs everywhere.

Backward is its own op, `survgen::temporal_attention_backward`, with its own
per-device kernels; its default implementation recomputes the forward through
the reference with `torch.func.vjp`. Only x and the weights are saved for
backward (the fused kernels recompute the attention per tile, as
flash-attention does), so the op costs one activation of memory, not the
seven that autograd through the reference keeps. Double backward is not
supported.
"""

from __future__ import annotations

from typing import Optional

import torch

from . import compiled  # noqa: F401  (imported for its side effect: loading survgen._C registers the ops)
from .reference import temporal_attention_reference


# The schemas survgen._C defines in C++ (csrc/extension.cpp), defined here only where it did not load.
SCHEMAS = {
    "temporal_attention": "(Tensor x, int num_frames, Tensor norm_weight, Tensor norm_bias, Tensor qkv_weight, "
                          "Tensor? qkv_bias, Tensor out_weight, Tensor out_bias, int heads, float eps) -> Tensor",
    "temporal_attention_backward": "(Tensor grad_out, Tensor x, int num_frames, Tensor norm_weight, Tensor norm_bias, "
                                   "Tensor qkv_weight, Tensor? qkv_bias, Tensor out_weight, Tensor out_bias, "
                                   "int heads, float eps) -> Tensor[]",
}


def _op(name: str) -> torch._ops.OpOverload:
    """`survgen::name`: the op survgen._C defined when it loaded (`compiled` imports it), else defined here."""
    if not hasattr(torch.ops.survgen, name):
        torch.library.define(f"survgen::{name}", SCHEMAS[name])
    return getattr(torch.ops.survgen, name).default


temporal_attention_op = _op("temporal_attention")
temporal_attention_backward_op = _op("temporal_attention_backward")

# The reference is the kernel of every device survgen._C has none for (CompositeExplicitAutograd: a backend's own
# kernel, such as the C++ CPU one, takes precedence). Arguments as `survgen.kernels.temporal_attention`, already
# checked.
torch.library.register_kernel(temporal_attention_op, None, temporal_attention_reference)


@torch.library.register_fake(temporal_attention_op)
def _temporal_attention_fake(x, num_frames, norm_weight, norm_bias, qkv_weight, qkv_bias, out_weight, out_bias,
                             heads, eps):
    return torch.empty_like(x, memory_format=torch.contiguous_format)


def reference_backward(
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
    """Gradients of x, norm_weight, norm_bias, qkv_weight, [qkv_bias,] out_weight, out_bias (qkv_bias's only if given),
    by recomputing the reference forward: the backward op's kernel wherever no fused one is registered."""
    tensors = [t for t in (x, norm_weight, norm_bias, qkv_weight, qkv_bias, out_weight, out_bias) if t is not None]

    def forward(x, norm_weight, norm_bias, qkv_weight, *rest):
        qkv_bias = rest[0] if len(rest) == 3 else None
        out_weight, out_bias = rest[-2:]
        return temporal_attention_reference(
            x, num_frames, norm_weight, norm_bias, qkv_weight, qkv_bias, out_weight, out_bias, heads, eps
        )

    # torch.func.vjp rather than torch.autograd.grad: an op's implementation runs
    # below the autograd dispatch key, where plain autograd records nothing.
    _, vjp = torch.func.vjp(forward, *tensors)
    return list(vjp(grad_out))


torch.library.register_kernel(temporal_attention_backward_op, None, reference_backward)


@torch.library.register_fake(temporal_attention_backward_op)
def _temporal_attention_backward_fake(grad_out, x, num_frames, norm_weight, norm_bias, qkv_weight, qkv_bias,
                                      out_weight, out_bias, heads, eps):
    tensors = (x, norm_weight, norm_bias, qkv_weight, qkv_bias, out_weight, out_bias)
    return [torch.empty_like(t, memory_format=torch.contiguous_format) for t in tensors if t is not None]


def save_inputs(ctx, inputs, output):
    """Autograd set-up of the temporal-attention ops: keep x and the weights only (backward recomputes)."""
    x, num_frames, norm_weight, norm_bias, qkv_weight, qkv_bias, out_weight, out_bias, heads, eps = inputs
    ctx.save_for_backward(x, norm_weight, norm_bias, qkv_weight, qkv_bias, out_weight, out_bias)
    ctx.num_frames, ctx.heads, ctx.eps = num_frames, heads, eps
    ctx.has_qkv_bias = qkv_bias is not None


def backward_through(backward_op):
    """Autograd backward of a temporal-attention op whose gradients `backward_op` computes from grad_out, x and
    the weights (arguments as `temporal_attention_backward_op`)."""

    def backward(ctx, grad_out):
        x, norm_weight, norm_bias, qkv_weight, qkv_bias, out_weight, out_bias = ctx.saved_tensors
        grads = backward_op(
            grad_out, x, ctx.num_frames, norm_weight, norm_bias, qkv_weight, qkv_bias, out_weight,
            out_bias, ctx.heads, ctx.eps,
        )
        grad_x, grad_norm_weight, grad_norm_bias, grad_qkv_weight, *rest = grads
        grad_qkv_bias = rest.pop(0) if ctx.has_qkv_bias else None
        grad_out_weight, grad_out_bias = rest
        # One entry per op input; the ints and the float (num_frames, heads, eps) have no gradient.
        return (grad_x, None, grad_norm_weight, grad_norm_bias, grad_qkv_weight, grad_qkv_bias, grad_out_weight,
                grad_out_bias, None, None)

    return backward


torch.library.register_autograd(temporal_attention_op, backward_through(temporal_attention_backward_op),
                                setup_context=save_inputs)
