"""`survgen::temporal_attention` as a torch.library custom op: schema, implementations, fake and autograd.

The op is the dispatcher's entry point for the fused backends: the compiled
kernels of survgen._C are registered for its CPU/CUDA keys at the end of this
file, and `torch.compile` sees one opaque node with a known output shape (the
fake implementation) instead of tracing the attention. Where no fused kernel
exists for a device, the op runs the pure-PyTorch reference there.

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

from . import compiled
from .reference import temporal_attention_reference


@torch.library.custom_op("survgen::temporal_attention", mutates_args=())
def temporal_attention_op(
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
) -> torch.Tensor:
    """Temporal attention on `(b·f, c, h, w)`; arguments as `survgen.kernels.temporal_attention` (already checked)."""
    return temporal_attention_reference(
        x, num_frames, norm_weight, norm_bias, qkv_weight, qkv_bias, out_weight, out_bias, heads, eps
    )


@temporal_attention_op.register_fake
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


temporal_attention_backward_op = torch.library.custom_op(
    "survgen::temporal_attention_backward", reference_backward, mutates_args=()
)


@temporal_attention_backward_op.register_fake
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


temporal_attention_op.register_autograd(backward_through(temporal_attention_backward_op), setup_context=save_inputs)


# ---------------------------------------------------------------- the compiled kernels
# survgen._C binds plain functions; registering them here keeps the whole op
# family (schema, fake, autograd, per-device kernels) in this one file.
def native_kernel(kernel, name: str):
    """`kernel` (survgen._C's `name`) as the kernel failure it is when C++ throws: pybind11 turns
    std::length_error and std::invalid_argument into ValueError, which the CLI would report as the
    user's bad input, but the op checked every argument before the kernel ran."""

    def run(*args):
        try:
            return kernel(*args)
        except ValueError as e:
            raise RuntimeError(f"survgen._C.{name} failed inside the compiled kernel ({e}); `--attention reference` "
                               "runs without it") from e

    return run


# (the op, its name in survgen._C's kernel list, the stem of the bound function)
_COMPILED = ((temporal_attention_op, "temporal_attention", "temporal_attention_forward"),
             (temporal_attention_backward_op, "temporal_attention_backward", "temporal_attention_backward"))
for _device in ("cpu", "cuda"):
    for _op, _kernel, _stem in _COMPILED:
        if compiled.has_kernel(_kernel, _device):
            _function = f"{_stem}_{_device}"
            _op.register_kernel(_device)(native_kernel(getattr(compiled.CORE, _function), _function))
