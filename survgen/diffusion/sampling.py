"""Sampling loops over any diffusers scheduler, with classifier-free guidance and the step savings.

`predict(x, t, reuse)` is the model. On a guided step it receives the latents twice,
`[x; x]`, and must condition the first half on the null prompt/class and the second
half on the real one, so both branches of guidance run in one batched forward pass;
on an unguided step (outside `guidance_interval`) it receives `x` once and conditions
it on the real prompt only, half the work. `reuse` asks the model to reuse its deep
features from the last step that computed them (DeepCache, `cache_interval`); a
model without such a cache ignores it.
"""

from __future__ import annotations

import inspect
from dataclasses import dataclass
from typing import Callable

import torch
from diffusers import DDIMScheduler, DDPMScheduler, DPMSolverMultistepScheduler, SchedulerMixin, UniPCMultistepScheduler

SAMPLERS = {
    "ddim": DDIMScheduler,
    "dpm++": DPMSolverMultistepScheduler,  # DPM-Solver++ 2M
    "unipc": UniPCMultistepScheduler,  # UniPC-bh2, a predictor-corrector of order 2
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


@dataclass(frozen=True)
class Step:
    """One step of the reverse process: its timestep, whether guidance runs (both branches), and whether
    the model may reuse its cached deep features instead of computing them."""

    timestep: int
    guided: bool
    reuse: bool


def step_plan(timesteps: list[int], *, guidance_interval: tuple[int, int] | None = None,
              cache_interval: int = 1) -> list[Step]:
    """Which steps are guided and which reuse deep features.

    Guidance runs where `lo <= t <= hi` (Kynkäänniemi et al. 2024: guidance at the highest noise
    levels mostly costs diversity, at the lowest it changes little); None guides every step.
    Deep features are computed on every `cache_interval`-th step, the first included, and reused
    in between; 1 computes them every step.
    """
    if cache_interval < 1:
        raise ValueError(f"cache_interval must be at least 1, got {cache_interval}")
    lo, hi = guidance_interval if guidance_interval is not None else (float("-inf"), float("inf"))
    return [Step(int(t), guided=lo <= int(t) <= hi, reuse=i % cache_interval != 0)
            for i, t in enumerate(timesteps)]


@torch.no_grad()
def sample_latents(
    predict: Callable[[torch.Tensor, torch.Tensor, bool], torch.Tensor],
    scheduler: SchedulerMixin,
    noise: torch.Tensor,
    *,
    steps: int,
    guidance: float,
    guidance_interval: tuple[int, int] | None = None,
    cache_interval: int = 1,
    generators: list[torch.Generator] | None = None,
) -> torch.Tensor:
    """Run the reverse process from the standard Gaussian `noise` with classifier-free guidance.

    The caller draws `noise` (one generator per video makes each video a function of its
    own seed, whatever batch it lands in); DDIM and DPM-Solver++ are deterministic from
    there, and DDPM draws each step's noise from `generators` (one per video).
    guidance = 1 still evaluates both branches' batch layout on guided steps but uses only
    the conditional output, so the result does not depend on the guidance path taken.
    """
    if steps < 1:
        raise ValueError(f"steps must be >= 1, got {steps}")
    scheduler.set_timesteps(steps, device=noise.device)
    plan = step_plan(scheduler.timesteps.tolist(), guidance_interval=guidance_interval,
                     cache_interval=cache_interval)
    x = noise * scheduler.init_noise_sigma
    # the ancestral samplers draw fresh noise from the videos' generators; UniPC's step takes none
    noise_from = {"generator": generators} if "generator" in inspect.signature(scheduler.step).parameters else {}
    for t, step in zip(scheduler.timesteps, plan):
        if step.guided:
            uncond, cond = predict(scheduler.scale_model_input(torch.cat([x, x]), t), t, step.reuse).chunk(2)
            output = uncond + guidance * (cond - uncond)
        else:
            output = predict(scheduler.scale_model_input(x, t), t, step.reuse)
        x = scheduler.step(output, t, x, **noise_from).prev_sample
    return x
