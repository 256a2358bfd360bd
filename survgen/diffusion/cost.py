"""What sampling one video costs, counted: the video model's forward pass at each step of the sampler's plan and
the VAE decoding, in FLOPs on the meta device (shapes only).

FLOPs are counted by torch's `FlopCounterMode` over forward passes on meta tensors: matmuls, convolutions and
attention, with survgen's temporal attention through its pure-PyTorch reference (the fused kernels do the same
arithmetic). A machine-independent cost at a scale no CPU can time, not a measurement; `survgen info` reports it.
"""

from __future__ import annotations

import torch

from survgen.classes import ClassVocabulary
from survgen.diffusion.sampling import make_sampler, step_plan
from survgen.models.counts import spatial_on_meta
from survgen.models.spatial import SpatialModel, v_prediction_scheduler
from survgen.models.video_models import build_video_model, published_sampling
from survgen.models.video_unet import DeepCache


def sampling_flops(arch: str, preset: str, *, frames: int = 16, text_per_video: bool = True, **sampling) -> dict:
    """FLOPs of generating one `frames`-frame video: the video model's forward pass at each step of the
    sampler's plan (`survgen.diffusion.sampling.step_plan`) and the VAE decoding of its frames.

    A guided step runs both branches (a batch of 2), an unguided one the conditional branch alone; a
    step that reuses the deep features runs only the outermost level. Each kind of step is counted
    as it runs, so skipped work is not counted. `sampling` (sampler, steps, image_size,
    guidance_interval, cache_interval) overrides the architecture's published sampling
    (`published_sampling`; survgen's: generate's defaults).
    """
    sampling = {"guidance_interval": None, "cache_interval": 1, **published_sampling(arch, preset), **sampling}
    scheduler = make_sampler(sampling["sampler"], v_prediction_scheduler().config)
    scheduler.set_timesteps(sampling["steps"])
    plan = step_plan(scheduler.timesteps.tolist(), guidance_interval=sampling["guidance_interval"],
                     cache_interval=sampling["cache_interval"])
    image_size = sampling["image_size"]
    with torch.device("meta"):
        spatial = spatial_on_meta(preset)
        latent = image_size // spatial.vae_downsample
        model = build_video_model(arch, spatial, preset=preset, num_classes=len(ClassVocabulary()),
                                  latent_size=latent).eval()
        kinds = _step_flops(model, spatial, frames, latent, text_per_video, {(s.guided, s.reuse) for s in plan})
        decoding = _flops(spatial.vae.decode, torch.empty(frames, spatial.vae.config.latent_channels, latent, latent))
    per_step = [kinds[s.guided, s.reuse] for s in plan]
    return {**sampling, "frames": frames,
            "guided_steps": sum(s.guided for s in plan), "reused_steps": sum(s.reuse for s in plan),
            "flops_per_step": sum(per_step) / len(per_step), "flops_decode": decoding,
            "flops_per_video": sum(per_step) + decoding}


def _flops(fn, *args, **kwargs) -> int:
    from torch.utils.flop_counter import FlopCounterMode

    from survgen.kernels.backends import use_backend

    with torch.no_grad(), use_backend("reference"), FlopCounterMode(display=False) as counter:
        fn(*args, **kwargs)
    return counter.get_total_flops()


def _step_flops(model, spatial: SpatialModel, frames: int, latent: int, text_per_video: bool,
                kinds: set[tuple[bool, bool]]) -> dict[tuple[bool, bool], int]:
    """FLOPs of one forward pass for each (guided, reuse) kind of step, on meta tensors."""
    text_config = spatial.text_encoder.config
    flops = {}
    for guided, reuse in kinds:
        batch = 2 if guided else 1
        sample = torch.empty(batch, spatial.vae.config.latent_channels, frames, latent, latent)
        args = (sample, torch.zeros(batch, dtype=torch.long),
                torch.empty(batch, text_config.max_position_embeddings, text_config.hidden_size),
                torch.zeros(batch, dtype=torch.long))
        options = {}
        if getattr(model, "sampling_savings", False):
            options = {"text_per_video": text_per_video, "deep_cache": DeepCache(), "reuse": reuse}
            if reuse:
                model(*args, **options)  # a full pass first, to fill the cache
        elif reuse:
            raise ValueError(f"a {model.arch} model has no deep-feature cache; use cache_interval 1")
        flops[guided, reuse] = _flops(model, *args, **options)
    return flops
