"""Sampling loops over any diffusers scheduler, with classifier-free guidance.

`predict(x, t)` is the model: it receives the latents twice, `[x; x]`, and must
condition the first half on the null prompt/class and the second half on the
real one, so both branches of guidance run in one batched forward pass.
"""

from __future__ import annotations

from typing import Callable

import torch
from diffusers import DDIMScheduler, DDPMScheduler, DPMSolverMultistepScheduler, SchedulerMixin

SAMPLERS = {
    "ddim": DDIMScheduler,
    "dpm++": DPMSolverMultistepScheduler,
    "ddpm": DDPMScheduler,  # ancestral: fresh noise every step (Latte's and Endora's sampler, 250 steps)
}


def make_sampler(name: str, training_scheduler_config) -> SchedulerMixin:
    """A sampling scheduler sharing the training noise schedule and prediction type."""
    if name not in SAMPLERS:
        raise ValueError(f"unknown sampler {name!r}; choose one of {', '.join(SAMPLERS)}")
    extra = {"algorithm_type": "dpmsolver++"} if name == "dpm++" else {}
    if name == "ddim":
        extra = {"set_alpha_to_one": False, "steps_offset": 1, "clip_sample": False}
    return SAMPLERS[name].from_config(training_scheduler_config, **extra)


@torch.no_grad()
def sample_latents(
    predict: Callable[[torch.Tensor, torch.Tensor], torch.Tensor],
    scheduler: SchedulerMixin,
    noise: torch.Tensor,
    *,
    steps: int,
    guidance: float,
    generators: list[torch.Generator] | None = None,
) -> torch.Tensor:
    """Run the reverse process from the standard Gaussian `noise` with classifier-free guidance.

    The caller draws `noise` (one generator per video makes each video a function of its
    own seed, whatever batch it lands in); DDIM and DPM-Solver++ are deterministic from
    there, and DDPM draws each step's noise from `generators` (one per video).
    guidance = 1 still evaluates both branches' batch layout but uses only the
    conditional output, so the result does not depend on the guidance path taken.
    """
    if steps < 1:
        raise ValueError(f"steps must be >= 1, got {steps}")
    scheduler.set_timesteps(steps, device=noise.device)
    x = noise * scheduler.init_noise_sigma
    for t in scheduler.timesteps:
        model_in = scheduler.scale_model_input(torch.cat([x, x]), t)
        uncond, cond = predict(model_in, t).chunk(2)
        output = uncond + guidance * (cond - uncond)
        x = scheduler.step(output, t, x, generator=generators).prev_sample
    return x
