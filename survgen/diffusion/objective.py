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


def drop_conditions(labels: torch.Tensor, null_value: int, probability: float, generator: torch.Generator):
    """Replace each label by `null_value` with `probability`: trains the unconditional branch for guidance."""
    if probability <= 0:
        return labels
    drop = torch.rand(labels.shape, generator=generator) < probability
    return torch.where(drop.to(labels.device), torch.full_like(labels, null_value), labels)
