"""Sample pictures written during training, so a person can watch the model improve."""

from __future__ import annotations

from pathlib import Path

import torch

from survgen.classes import ClassVocabulary
from survgen.diffusion.sampling import make_sampler, sample_latents
from survgen.diffusion.video_sampler import VideoSampler, initial_noise, noise_generators
from survgen.models.spatial import SpatialModel
from survgen.presets import DEFAULT_SAMPLING
from survgen.visualize import grid, save_png, to_uint8


@torch.no_grad()
def write_image_samples(spatial: SpatialModel, path: Path, vocabulary: ClassVocabulary, *,
                        per_class: int = 4, steps: int = 25, guidance: float = 3.0, seed: int = 0) -> Path:
    """One row per class: `per_class` frames sampled from the stage-1 model with DDIM and guidance."""
    unet = spatial.unet
    was_training = unet.training
    unet.eval()
    device = next(unet.parameters()).device
    prompts = vocabulary.prompts()
    text = spatial.encode_prompts(prompts + [""])
    cond = text[:-1].repeat_interleave(per_class, dim=0)
    uncond = text[-1:].expand_as(cond)
    size = unet.config.sample_size
    shape = (len(prompts) * per_class, unet.config.in_channels, size, size)

    def predict(x, t, reuse):  # every step guided, no cache: always [uncond; cond]
        return unet(x, t, torch.cat([uncond, cond])).sample

    noise = initial_noise(noise_generators([seed * 1000 + i for i in range(shape[0])]), shape[1:], device)
    latents = sample_latents(predict, make_sampler("ddim", spatial.noise_scheduler.config), noise,
                             steps=steps, guidance=guidance)
    decoded = to_uint8(spatial.decode_latents(latents))
    images = decoded.reshape(len(prompts), per_class, *decoded.shape[1:])
    unet.train(was_training)
    labels = [vocabulary.code(i) for i in range(len(prompts))]
    return save_png(grid(list(images), labels), path)


def write_video_samples(video_model, spatial: SpatialModel, folder: Path, vocabulary: ClassVocabulary,
                        class_ids: list[int], *, per_class: int = 2, num_frames: int = 16, steps: int = 25,
                        guidance: float = 3.0, seed: int = 0) -> Path:
    """Sample `per_class` videos of each class: a GIF each and one PNG with a row of frames per video.
    They are sampled as `generate` samples by default (`DEFAULT_SAMPLING`), with `steps` steps."""
    from survgen.data.video import write_video

    labels = [c for c in class_ids for _ in range(per_class)]
    seeds = [seed * 1000 + i for i in range(len(labels))]
    sampling = {**DEFAULT_SAMPLING, "steps": steps}
    if not getattr(video_model, "sampling_savings", False):  # a baseline has no deep-feature cache
        sampling["cache_interval"] = 1
    videos = to_uint8(VideoSampler(video_model, spatial, vocabulary).sample(
        labels, seeds, num_frames=num_frames, guidance=guidance, **sampling))
    names = [f"{vocabulary.code(c)}-{i % per_class}" for i, c in enumerate(labels)]
    for name, video in zip(names, videos):
        write_video(folder / f"{name}.gif", video, fps=8)
    return save_png(grid(list(videos), names), folder / "frames.png")
