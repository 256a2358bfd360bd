"""The training objective of both stages: velocity (v) prediction on VAE latents.

x_t = √ᾱ_t·x_0 + √(1-ᾱ_t)·ε and the network predicts v = √ᾱ_t·ε - √(1-ᾱ_t)·x_0
(Salimans & Ho, 2022), as the paper does. Noise and timesteps come from the
caller's generator so that a resumed run draws exactly what an uninterrupted
one would.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from diffusers import DDPMScheduler
from diffusers.utils.torch_utils import randn_tensor


def sample_latents(vae, batch: dict, generator: torch.Generator, scale: float) -> torch.Tensor:
    """Scaled VAE latents of a batch's frames, one draw from each frame's posterior.

    The batch holds either `pixels` (..., 3, H, W), encoded here, or a latent
    cache's posterior `latent_mean` and `latent_std` (..., c, h, w). Both
    draw ε as diffusers' `DiagonalGaussianDistribution.sample(generator)`
    does (one `randn_tensor` over all frames, flattened to (n, c, h, w)), so a
    step from the cache sees the latents that encoding on the fly would.
    """
    if "latent_mean" in batch:
        mean, std = batch["latent_mean"], batch["latent_std"]
        frames = (mean.shape[:-3].numel(), *mean.shape[-3:])
        noise = randn_tensor(frames, generator=generator, device=mean.device, dtype=mean.dtype)
        latents = mean + std * noise.view(mean.shape)
    else:
        pixels = batch["pixels"]
        with torch.no_grad():
            latents = vae.encode(pixels.flatten(0, -4)).latent_dist.sample(generator=generator)
        latents = latents.unflatten(0, pixels.shape[:-3])
    return latents * scale


@dataclass
class NoisedLatents:
    noisy: torch.Tensor
    timesteps: torch.Tensor
    target: torch.Tensor


def noise_for_v_prediction(
    scheduler: DDPMScheduler, latents: torch.Tensor, generator: torch.Generator
) -> NoisedLatents:
    """Draw t and ε for each sample (dim 0) and return x_t, t and the v target."""
    if scheduler.config.prediction_type != "v_prediction":
        raise ValueError(f"expected a v-prediction noise scheduler, got {scheduler.config.prediction_type!r}")
    noise = torch.randn(latents.shape, generator=generator, dtype=latents.dtype).to(latents.device)
    timesteps = torch.randint(
        0, scheduler.config.num_train_timesteps, (latents.shape[0],), generator=generator
    ).to(latents.device)
    # add_noise/get_velocity broadcast ᾱ_t over trailing dims, so video latents (b, c, f, h, w) work too.
    noisy = scheduler.add_noise(latents, noise, timesteps)
    target = scheduler.get_velocity(latents, noise, timesteps)
    return NoisedLatents(noisy, timesteps, target)


def dropped_conditions(labels: torch.Tensor, probability: float, generator: torch.Generator) -> torch.Tensor:
    """Which samples lose their conditions (each with `probability`): trains the unconditional branch for guidance."""
    if probability <= 0:
        return torch.zeros(labels.shape, dtype=torch.bool, device=labels.device)
    return (torch.rand(labels.shape, generator=generator) < probability).to(labels.device)


def drop_conditions(labels: torch.Tensor, null_value: int, probability: float, generator: torch.Generator):
    """Replace each label by `null_value` with `probability`."""
    return torch.where(dropped_conditions(labels, probability, generator), null_value, labels)
