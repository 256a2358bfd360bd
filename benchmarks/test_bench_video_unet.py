"""The video U-Net end to end, fused temporal attention against the reference: `pytest benchmarks --benchmark-only`.

- one stage-2 training step of the tiny video U-Net (2 videos × 16 frames at
  16×16 latents), with and without gradient checkpointing, per attention backend;
- the video U-Net forward (one denoising step with guidance: 2 videos × 16
  frames), tiny preset at 16×16 latents and the sd15 architecture (built from
  its config, random weights) at 32×32 latents (256 px), per attention backend.

The backends are those that can run here (`survgen info`); the reference is the
baseline. Nothing is asserted about speed: ratios are read from one run's table.
"""

import pytest
import torch

from survgen.kernels.backends import backend_report, use_backend
from survgen.models.spatial import build_tiny
from survgen.models.video_unet import TEMPORAL_PRESETS, VideoUNet

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
BACKENDS = [name for name, reasons in backend_report(torch.empty(1, 1, 1, 1, device=DEVICE)).items() if not reasons]


@pytest.fixture(scope="module")
def tiny_video_unet():
    torch.manual_seed(0)
    return VideoUNet(build_tiny(seed=0).unet, TEMPORAL_PRESETS["tiny"]).to(DEVICE)


@pytest.fixture(scope="module")
def sd15_video_unet():
    from diffusers import UNet2DConditionModel

    from survgen.models.counts import SD15_UNET_CONFIG

    torch.manual_seed(0)
    return VideoUNet(UNet2DConditionModel(**SD15_UNET_CONFIG), TEMPORAL_PRESETS["sd15"]).to(DEVICE).eval()


def _video_inputs(model: VideoUNet, size: int):
    g = torch.Generator().manual_seed(0)
    latents = torch.randn(2, 4, 16, size, size, generator=g)
    text = torch.randn(2, 77, model.unet.config.cross_attention_dim, generator=g)
    t, labels = torch.tensor([10, 500]), torch.tensor([7, 1])
    return [v.to(DEVICE) for v in (latents, t, text, labels)]


def _synchronize():
    if DEVICE == "cuda":
        torch.cuda.synchronize()


@pytest.mark.benchmark(group="stage-2 step, tiny, 2 videos x 16 frames at 16x16 latents")
@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("checkpointing", [False, True], ids=["plain", "gradient-checkpointing"])
def test_tiny_training_step(benchmark, tiny_video_unet, checkpointing, backend):
    tiny_video_unet.enable_gradient_checkpointing(checkpointing)
    params = list(tiny_video_unet.trainable_parameters().values())
    latents, t, text, labels = _video_inputs(tiny_video_unet, 16)

    def step():
        with use_backend(backend):
            loss = tiny_video_unet(latents, t, text, labels).square().mean()
            torch.autograd.grad(loss, params)
        _synchronize()

    benchmark.pedantic(step, rounds=5, warmup_rounds=1)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("preset, size", [("tiny", 16), pytest.param("sd15", 32, marks=pytest.mark.paper_scale)],
                         ids=["tiny", "sd15"])
def test_forward(benchmark, request, preset, size, backend):
    model = request.getfixturevalue(f"{preset}_video_unet")
    benchmark.group = f"video U-Net forward, {preset}, 2 videos x 16 frames at {size}x{size} latents"
    inputs = _video_inputs(model, size)

    def forward():
        with torch.no_grad(), use_backend(backend):
            model(*inputs)
        _synchronize()

    # The sd15 architecture takes tens of seconds per forward on a CPU: one round there.
    slow = preset == "sd15" and DEVICE == "cpu"
    benchmark.pedantic(forward, rounds=1 if slow else 5, warmup_rounds=0 if slow else 1)
