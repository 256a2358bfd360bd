"""Fused temporal attention against the eager reference, per U-Net level: `pytest benchmarks --benchmark-only`.

Levels: the four temporal-attention levels of the sd15 preset at 256 px with
classifier-free guidance (b = 2 videos, f = 16 frames: 320 ch at 32×32, 640 at
16×16, 1280 at 8×8 and 4×4) and the tiny preset's levels (64/128/128 channels
of 2 videos at 16×16 latents: 16×16, 8×8, 4×4), forward and forward + backward,
for every backend that can run on this machine (the reference always).

The float32 matmul rate of this machine is measured in the same run (a 2048³
matmul) so that achieved GFLOP/s can be read against it: benchmarks/conftest.py
prints, after pytest-benchmark's table, each backend's time, its speed-up over
the reference of the same level, and its GFLOP/s as a fraction of that peak.
"""

from __future__ import annotations

import pytest
import torch

from survgen.kernels.backends import BACKEND_NAMES, backend_report

# (name, videos, frames, channels, height, width, heads)
LEVELS = [
    ("sd15-320@32x32", 2, 16, 320, 32, 32, 8),
    ("sd15-640@16x16", 2, 16, 640, 16, 16, 8),
    ("sd15-1280@8x8", 2, 16, 1280, 8, 8, 8),
    ("sd15-1280@4x4", 2, 16, 1280, 4, 4, 8),
    ("tiny-64@16x16", 2, 16, 64, 16, 16, 4),
    ("tiny-128@8x8", 2, 16, 128, 8, 8, 4),
    ("tiny-128@4x4", 2, 16, 128, 4, 4, 4),
]
PEAK_SIZE = 2048


def forward_flops(videos, frames, channels, height, width) -> int:
    """Multiply-adds ×2 of one forward: Q/K/V (6c²) and output (2c²) projections per token, and the
    two f×f×c attention products per sequence; LayerNorm and softmax are not counted."""
    tokens = videos * frames * height * width
    return 8 * tokens * channels**2 + 4 * tokens * frames * channels


def _backends_here() -> list[str]:
    probe = torch.empty(1, 1, 1, 1, device="cuda" if torch.cuda.is_available() else "cpu")
    # The Triton interpreter is a test tool, not a speed: benchmark it only on a GPU.
    return [name for name, reasons in backend_report(probe).items() if not reasons]


def _inputs(videos, frames, channels, height, width, requires_grad):
    device = "cuda" if torch.cuda.is_available() else "cpu"
    dtype = torch.bfloat16 if device == "cuda" else torch.float32
    g = torch.Generator(device="cpu").manual_seed(0)

    def rand(*shape, scale=1.0):
        return (torch.randn(*shape, generator=g) * scale).to(device, dtype).requires_grad_(requires_grad)

    x = rand(videos * frames, channels, height, width)
    weights = [rand(channels, scale=0.1) + 1, rand(channels, scale=0.1), rand(3 * channels, channels,
               scale=channels**-0.5), None, rand(channels, channels, scale=channels**-0.5), rand(channels, scale=0.1)]
    weights = [w.detach().requires_grad_(requires_grad) if w is not None else None for w in weights]
    return x, weights


def _synchronize():
    if torch.cuda.is_available():
        torch.cuda.synchronize()


@pytest.mark.benchmark(group="matmul peak")
def test_matmul_peak(benchmark):
    """The float32 (bf16 on a GPU) matmul rate every kernel's GFLOP/s is read against."""
    device = "cuda" if torch.cuda.is_available() else "cpu"
    dtype = torch.bfloat16 if device == "cuda" else torch.float32
    a = torch.randn(PEAK_SIZE, PEAK_SIZE, device=device, dtype=dtype)
    b = torch.randn(PEAK_SIZE, PEAK_SIZE, device=device, dtype=dtype)
    benchmark.extra_info.update(flops=2 * PEAK_SIZE**3, role="peak")

    def run():
        a @ b
        _synchronize()

    benchmark.pedantic(run, rounds=10, warmup_rounds=2)


@pytest.mark.parametrize("backend", [b for b in BACKEND_NAMES if b in _backends_here()])
@pytest.mark.parametrize("level", LEVELS, ids=[level[0] for level in LEVELS])
@pytest.mark.parametrize("direction", ["forward", "forward+backward"])
def test_temporal_attention(benchmark, direction, level, backend):
    from survgen.kernels.attention import temporal_attention

    name, videos, frames, channels, height, width, heads = level
    benchmark.group = f"temporal attention {direction} {name}"
    flops = forward_flops(videos, frames, channels, height, width)
    # Backward: twice the forward's products (gradients of inputs and of weights).
    benchmark.extra_info.update(flops=flops if direction == "forward" else 3 * flops, backend=backend)
    x, weights = _inputs(videos, frames, channels, height, width, requires_grad=direction != "forward")
    grad_out = torch.randn_like(x)

    def run():
        out = temporal_attention(x, frames, *weights, heads, backend=backend)
        if direction != "forward":
            out.backward(grad_out)
        _synchronize()

    with torch.no_grad() if direction == "forward" else torch.enable_grad():
        benchmark.pedantic(run, rounds=5 if channels <= 128 else 3, warmup_rounds=1)
