"""Sample pictures written during training, so a person can watch the model improve."""

from __future__ import annotations

from pathlib import Path

import torch

from survgen.classes import ClassVocabulary
from survgen.diffusion.sampling import make_sampler, sample_latents
from survgen.models.spatial import SpatialModel
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

    def predict(x, t):
        return unet(x, t, torch.cat([uncond, cond])).sample

    generator = torch.Generator().manual_seed(seed)
    latents = sample_latents(predict, make_sampler("ddim", spatial.noise_scheduler.config), shape,
                             steps=steps, guidance=guidance, generator=generator, device=device)
    decoded = to_uint8(spatial.decode_latents(latents))
    images = decoded.reshape(len(prompts), per_class, *decoded.shape[1:])
    unet.train(was_training)
    labels = [vocabulary.code(i) for i in range(len(prompts))]
    return save_png(grid(list(images), labels), path)


@torch.no_grad()
def write_video_samples(video_unet, spatial: SpatialModel, folder: Path, vocabulary: ClassVocabulary,
                        class_ids: list[int], *, per_class: int = 2, num_frames: int = 16, steps: int = 25,
                        guidance: float = 3.0, seed: int = 0) -> Path:
    """Sample `per_class` videos of each class: a GIF each and one PNG with a row of frames per video."""
    from survgen.data.video import write_video

    was_training = video_unet.training
    video_unet.eval()
    device = next(video_unet.parameters()).device
    labels = torch.tensor(class_ids, device=device).repeat_interleave(per_class)
    text = spatial.encode_prompts(vocabulary.prompts() + [""])
    cond_text, uncond_text = text[labels], text[-1:].expand(len(labels), -1, -1)
    null = torch.full_like(labels, video_unet.null_class)
    unet_cfg = video_unet.unet.config
    shape = (len(labels), unet_cfg.in_channels, num_frames, unet_cfg.sample_size, unet_cfg.sample_size)

    def predict(x, t):
        return video_unet(x, t, torch.cat([uncond_text, cond_text]), torch.cat([null, labels]))

    generator = torch.Generator().manual_seed(seed)
    latents = sample_latents(predict, make_sampler("ddim", spatial.noise_scheduler.config), shape,
                             steps=steps, guidance=guidance, generator=generator, device=device)
    frames = spatial.decode_latents(latents.transpose(1, 2).flatten(0, 1))  # (b·f, 3, H, W)
    decoded = to_uint8(frames)
    videos = decoded.reshape(len(labels), num_frames, *decoded.shape[1:])
    video_unet.train(was_training)
    names = [f"{vocabulary.code(int(c))}-{i % per_class}" for i, c in enumerate(labels.tolist())]
    for name, video in zip(names, videos):
        write_video(folder / f"{name}.gif", video, fps=8)
    return save_png(grid(list(videos), names), folder / "frames.png")
