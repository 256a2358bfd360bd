"""Baselines the later kernel work is measured against: `pytest benchmarks --benchmark-only`.

- one stage-2 training step of the tiny video U-Net, with and without gradient
  checkpointing (its cost in time; its saving in memory shows on a GPU);
- the pure-PyTorch temporal attention sub-layer, forward + backward, at the
  tiny preset's widest level and at an SD-1.5-like level scaled to CPU.

Each prints what it measured through pytest-benchmark's table; nothing is asserted
about speed here (ratios are read from the same run's table).
"""

import pytest
import torch

from survgen.kernels import temporal_attention
from survgen.models.spatial import build_tiny
from survgen.models.video_unet import TEMPORAL_PRESETS, VideoUNet


@pytest.fixture(scope="module")
def video_unet():
    torch.manual_seed(0)
    return VideoUNet(build_tiny(seed=0).unet, TEMPORAL_PRESETS["tiny"])


@pytest.mark.benchmark(group="stage-2 step, tiny, 2 videos x 16 frames at 16x16 latents")
@pytest.mark.parametrize("checkpointing", [False, True], ids=["plain", "gradient-checkpointing"])
def test_tiny_training_step(benchmark, video_unet, checkpointing):
    video_unet.enable_gradient_checkpointing(checkpointing)
    params = list(video_unet.temporal_parameters().values())
    g = torch.Generator().manual_seed(0)
    latents = torch.randn(2, 4, 16, 16, 16, generator=g)
    text = torch.randn(2, 32, video_unet.unet.config.cross_attention_dim, generator=g)
    t, labels = torch.tensor([10, 500]), torch.tensor([7, 1])

    def step():
        loss = video_unet(latents, t, text, labels).square().mean()
        grads = torch.autograd.grad(loss, params)
        return grads

    benchmark.pedantic(step, rounds=5, warmup_rounds=1)


@pytest.mark.benchmark(group="temporal attention (reference), forward + backward")
@pytest.mark.parametrize("shape", [(2, 16, 96, 16, 16), (1, 16, 320, 16, 16)], ids=["tiny-96ch", "sd15-320ch"])
def test_temporal_attention_reference(benchmark, shape):
    b, f, c, h, w = shape
    heads = 8
    g = torch.Generator().manual_seed(0)
    x = torch.randn(b * f, c, h, w, generator=g, requires_grad=True)
    weights = [torch.ones(c), torch.zeros(c), torch.randn(3 * c, c, generator=g) / c**0.5, None,
               torch.randn(c, c, generator=g) / c**0.5, torch.zeros(c)]
    for wt in weights:
        if wt is not None:
            wt.requires_grad_(True)

    def step():
        out = temporal_attention(x, f, *weights, heads, backend="reference")
        return torch.autograd.grad(out.square().mean(), [x])

    benchmark.pedantic(step, rounds=5, warmup_rounds=1)
