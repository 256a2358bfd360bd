"""Sample class-conditioned videos from a video model: text prompt + class embedding + guidance.

Each video is a function of its own seed: its starting noise comes from a generator
seeded with it; DDIM (η = 0) and DPM-Solver++ are deterministic from there, and
DDPM draws each step's noise from that same generator. To the bit, a video also
depends on its batch: matrix kernels pick their blocking (and so their summation
order) by the number of rows, so a seed sampled alone and in a batch of 3 differs
by float rounding (benchmarks/NOTES.md). `survgen generate` records each
candidate's batch, so that a lost video is made again in the same batch, bit for bit.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from survgen.classes import ClassVocabulary
from survgen.diffusion.sampling import SAMPLERS, make_sampler, sample_latents
from survgen.models.spatial import SpatialModel
from survgen.models.video_models import VideoModel
from survgen.models.video_unet import DeepCache

MAX_SAMPLER_STEPS = 1000
MAX_GUIDANCE = 50.0


def check_sampling_options(sampler: str, steps: int, guidance: float, guidance_interval=None,
                           cache_interval: int = 1) -> None:
    """Refuse out-of-range options before any work starts."""
    if sampler not in SAMPLERS:
        raise ValueError(f"unknown sampler {sampler!r}; choose one of {', '.join(SAMPLERS)}")
    if not 1 <= steps <= MAX_SAMPLER_STEPS:
        raise ValueError(f"--steps must be between 1 and {MAX_SAMPLER_STEPS}, got {steps}")
    if not 0 <= guidance <= MAX_GUIDANCE:
        raise ValueError(f"--guidance must be between 0 and {MAX_GUIDANCE} (1 = no guidance), got {guidance}")
    if guidance_interval is not None and (len(guidance_interval) != 2
                                          or not 0 <= guidance_interval[0] <= guidance_interval[1]):
        raise ValueError(f"--guidance-interval must be two timesteps LO,HI with 0 <= LO <= HI (guidance where "
                         f"LO <= t <= HI; the noisiest step is t ~ 999), got {guidance_interval}")
    if not 1 <= cache_interval <= MAX_SAMPLER_STEPS:
        raise ValueError(f"--cache-interval must be between 1 (no reuse) and {MAX_SAMPLER_STEPS}, got {cache_interval}")


def noise_generators(seeds: list[int]) -> list[torch.Generator]:
    return [torch.Generator().manual_seed(s) for s in seeds]


def initial_noise(generators: list[torch.Generator], shape: tuple[int, ...], device) -> torch.Tensor:
    """One standard-normal latent of `shape` per video, each from its own CPU generator."""
    return torch.stack([torch.randn(shape, generator=g) for g in generators]).to(device)


@dataclass
class VideoSampler:
    video_model: VideoModel
    spatial: SpatialModel
    vocabulary: ClassVocabulary
    _text: torch.Tensor | None = field(default=None, init=False, repr=False)  # every prompt's states, then ""

    @property
    def device(self) -> torch.device:
        return next(self.video_model.parameters()).device

    def latent_shape(self, num_frames: int) -> tuple[int, int, int, int]:
        size = self.video_model.latent_size
        return (self.video_model.latent_channels, num_frames, size, size)

    def _prompt_states(self, device) -> torch.Tensor:
        """Text-encoder states of every class prompt and of the empty prompt (last), computed once."""
        if self._text is None or self._text.device != device:
            self._text = self.spatial.encode_prompts(self.vocabulary.prompts() + [""]).to(device)
        return self._text

    @torch.no_grad()
    def sample(self, class_ids: list[int], seeds: list[int], *, num_frames: int = 16, steps: int = 25,
               guidance: float = 3.0, sampler: str = "ddim", guidance_interval: tuple[int, int] | None = None,
               cache_interval: int = 1, text_per_video: bool = True) -> torch.Tensor:
        """Videos `(b, f, 3, H, W)` in [-1, 1], one per (class, seed) pair, sampled as one batch.
        `guidance_interval` and `cache_interval`: see `survgen.diffusion.sampling.step_plan`;
        `text_per_video`: the prompt's keys and values once per video (`survgen.models.video_unet`)."""
        check_sampling_options(sampler, steps, guidance, guidance_interval, cache_interval)
        if len(class_ids) != len(seeds):
            raise ValueError(f"{len(class_ids)} classes for {len(seeds)} seeds; give one class per seed")
        savings = getattr(self.video_model, "sampling_savings", False)
        if cache_interval > 1 and not savings:
            raise ValueError(f"--cache-interval: a {self.video_model.arch} model has no deep-feature cache; "
                             "use --cache-interval 1")
        was_training = self.video_model.training
        self.video_model.eval()
        model_options = {"text_per_video": text_per_video} if savings else {}
        latents = self._sample_latents(class_ids, seeds, num_frames, sampler, model_options, steps=steps,
                                       guidance=guidance, guidance_interval=guidance_interval,
                                       cache_interval=cache_interval)
        frames = self.spatial.decode_latents(latents.transpose(1, 2).flatten(0, 1))  # (b·f, 3, H, W)
        self.video_model.train(was_training)
        return frames.reshape(len(class_ids), num_frames, *frames.shape[1:]).clamp(-1, 1)

    def _sample_latents(self, class_ids: list[int], seeds: list[int], num_frames: int, sampler: str,
                        model_options: dict, **options) -> torch.Tensor:
        """The reverse process; `model_options` go to every model call (the savings a survgen model has)."""
        device = self.device
        labels = torch.tensor(class_ids, device=device)
        text = self._prompt_states(device)
        cond_text, uncond_text = text[labels], text[-1:].expand(len(labels), -1, -1)
        null = torch.full_like(labels, self.video_model.null_class)
        cache = DeepCache() if options["cache_interval"] > 1 else None

        def predict(x, t, reuse):  # a guided step's batch is [uncond; cond], as sample_latents lays it out
            extra = {**model_options, "deep_cache": cache, "reuse": reuse} if cache is not None else model_options
            if x.shape[0] == len(labels):
                return self.video_model(x, t, cond_text, labels, **extra)
            return self.video_model(x, t, torch.cat([uncond_text, cond_text]), torch.cat([null, labels]), **extra)

        generators = noise_generators(seeds)
        noise = initial_noise(generators, self.latent_shape(num_frames), device)
        return sample_latents(predict, make_sampler(sampler, self.spatial.noise_scheduler.config), noise,
                              generators=generators, **options)
