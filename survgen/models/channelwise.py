"""Channel-wise (depthwise) 3D convolution whose backward is two forward convolutions.

PyTorch's CPU backward for a grouped `conv3d` with one channel per group is
10-30× its forward (oneDNN has no fast depthwise-3D backward; channels-last
helps but leaves it 5-25× slower), and X3D's channel-wise layers made its
training step 83 % convolution backward (benchmarks/NOTES.md). Both
gradients are themselves channel-wise convolutions, which run at forward speed:

- grad x: the output gradient, zero-stuffed by the stride, correlated with the
  flipped kernel ("full" padding k - 1 - p);
- grad weight: per channel, the padded input correlated with the output
  gradient as the kernel, dilated by the stride, summed over the batch; run as
  one convolution with batch × channels groups.

`ChannelwiseConv3d` is an `nn.Conv3d` (same parameters, same state dict) that
takes this path for CPU tensors; elsewhere (cuDNN's depthwise backward is fast)
and for anything it does not cover (bias, dilation, padding beyond k - 1) it
is `nn.Conv3d`. The reference is `nn.Conv3d`'s own autograd
(tests/test_classifier.py).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class _ChannelwiseConv3d(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, weight, stride, padding):
        ctx.save_for_backward(x, weight)
        ctx.stride, ctx.padding = stride, padding
        return F.conv3d(x, weight, None, stride, padding, 1, x.shape[1])

    @staticmethod
    def backward(ctx, grad):
        x, weight = ctx.saved_tensors
        grad_x = _grad_input(grad, weight, x.shape, ctx.stride, ctx.padding) if ctx.needs_input_grad[0] else None
        grad_w = _grad_weight(x, grad, weight.shape, ctx.stride, ctx.padding) if ctx.needs_input_grad[1] else None
        return grad_x, grad_w, None, None


def _grad_input(grad: torch.Tensor, weight: torch.Tensor, shape: torch.Size, stride, padding) -> torch.Tensor:
    if any(s > 1 for s in stride):
        stuffed = grad.new_zeros(*grad.shape[:2], *((n - 1) * s + 1 for n, s in zip(grad.shape[2:], stride)))
        stuffed[:, :, ::stride[0], ::stride[1], ::stride[2]] = grad
        grad = stuffed.contiguous(memory_format=_format_of(grad))
    kernel = weight.shape[2:]
    # The rows a strided forward never reached (its last window ended before the input did) get zero gradient.
    short = [n - (g + k - 1 - 2 * p) for n, g, k, p in zip(shape[2:], grad.shape[2:], kernel, padding)]
    if any(short):
        grad = F.pad(grad, (0, short[2], 0, short[1], 0, short[0]))
    full = tuple(k - 1 - p for k, p in zip(kernel, padding))
    return F.conv3d(grad, weight.flip(2, 3, 4), None, 1, full, 1, weight.shape[0])


def _grad_weight(x: torch.Tensor, grad: torch.Tensor, shape: torch.Size, stride, padding) -> torch.Tensor:
    b, c = x.shape[:2]
    padded = F.pad(x, (padding[2], padding[2], padding[1], padding[1], padding[0], padding[0]))
    inputs = padded.transpose(0, 1).reshape(1, c * b, *padded.shape[2:])
    kernels = grad.transpose(0, 1).reshape(c * b, 1, *grad.shape[2:])
    per_video = F.conv3d(inputs, kernels, None, 1, 0, stride, c * b)
    kt, kh, kw = shape[2:]
    return per_video[0, :, :kt, :kh, :kw].reshape(c, b, kt, kh, kw).sum(1).unsqueeze(1)


def _format_of(t: torch.Tensor) -> torch.memory_format:
    return torch.channels_last_3d if t.is_contiguous(memory_format=torch.channels_last_3d) and not t.is_contiguous() \
        else torch.contiguous_format


class ChannelwiseConv3d(nn.Conv3d):
    """`nn.Conv3d(channels, channels, kernel_size, groups=channels, bias=False)` with the fast CPU backward."""

    def __init__(self, channels: int, kernel_size, stride=1, padding=0):
        super().__init__(channels, channels, kernel_size, stride=stride, padding=padding, groups=channels, bias=False)
        self.fast_backward = all(p <= k - 1 for p, k in zip(self.padding, self.kernel_size))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.fast_backward and x.device.type == "cpu" and torch.is_grad_enabled():
            return _ChannelwiseConv3d.apply(x, self.weight, self.stride, self.padding)
        return super().forward(x)
