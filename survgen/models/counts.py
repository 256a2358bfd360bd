"""Parameter counts and FLOPs of an architecture's preset, computed on the meta device (no weights allocated).

FLOPs are counted by torch's `FlopCounterMode` over one forward pass on meta
tensors (shapes only): matmuls, convolutions and attention, with survgen's
temporal attention through its pure-PyTorch reference (the fused kernels do
the same arithmetic). They are a machine-independent cost of an architecture
at a scale no CPU can time, not a measurement.
"""

from __future__ import annotations

import torch
from diffusers import AutoencoderKL
from transformers import CLIPTextConfig, CLIPTextModel

from survgen.classes import ClassVocabulary
from survgen.models.spatial import (SD15_TEXT_CONFIG, SD15_UNET_CONFIG, SD15_VAE_CONFIG, SpatialModel, build_tiny,
                                    v_prediction_scheduler)
from survgen.models.video_models import NATIVE_IMAGE_SIZE, build_video_model, check_arch, published_sampling

# Paper Table 1's trainable parameters, the tolerance our sd15 preset is held to, and why it differs.
PAPER_TRAINABLE = {
    "survgen": (435_000_000, 0.10, "AnimateDiff-style temporal blocks with two attention sub-layers"),
    "lvdm": (548_000_000, 0.10, "the SD-shaped 4-level 3D U-Net at 0.6× SD's width (LVDM's exact widths "
                                "are not given)"),
    "endora": (675_000_000, 0.25, "diffusers' Latte shares one adaLN modulation across its blocks "
                                  "(PixArt-α's adaLN-single) where Endora, like DiT, has one per block "
                                  "(28 × 6·1152² = 223M); its text cross-attention (which Endora lacks) adds 74M"),
}


def _count(module: torch.nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


def _spatial_on_meta(preset: str) -> SpatialModel:
    """The preset's VAE, text encoder and U-Net, built inside a `torch.device("meta")` block."""
    if preset == "tiny":
        return build_tiny()
    if preset == "sd15":
        from diffusers import UNet2DConditionModel

        return SpatialModel(AutoencoderKL(**SD15_VAE_CONFIG), CLIPTextModel(CLIPTextConfig(**SD15_TEXT_CONFIG)),
                            None, UNet2DConditionModel(**SD15_UNET_CONFIG), None)
    raise ValueError(f"unknown preset {preset!r}; choose tiny or sd15")


def preset_parameter_counts(preset: str, arch: str = "survgen",
                            num_classes: int = len(ClassVocabulary())) -> dict[str, int]:
    """What stage 2 trains, what stays frozen, and the total, for `arch` at `preset`."""
    check_arch(arch)
    with torch.device("meta"):
        spatial = _spatial_on_meta(preset)
        video = build_video_model(arch, spatial, preset=preset, num_classes=num_classes,
                                  latent_size=NATIVE_IMAGE_SIZE[preset] // spatial.vae_downsample)
    trainable = sum(p.numel() for p in video.trainable_parameters().values())
    counts = {"vae": _count(spatial.vae), "text_encoder": _count(spatial.text_encoder)}
    if arch == "survgen":
        class_embedding = _count(video.class_embedding)
        counts |= {"spatial_unet": _count(spatial.unet), "temporal_blocks": trainable - class_embedding,
                   "class_embedding": class_embedding}
    else:
        counts |= {f"{arch}_video_model": trainable}
    counts["stage2_trainable"] = trainable
    counts["total"] = counts["vae"] + counts["text_encoder"] + _count(video)
    if preset == "sd15":
        counts["paper_trainable"] = PAPER_TRAINABLE[arch][0]
    return counts


def sampling_flops(arch: str, preset: str, *, frames: int = 16, text_per_video: bool = True, **sampling) -> dict:
    """FLOPs of generating one `frames`-frame video: the video model's forward pass at each step of the
    sampler's plan (`survgen.diffusion.sampling.step_plan`) and the VAE decoding of its frames.

    A guided step runs both branches (a batch of 2), an unguided one the conditional branch alone; a
    step that reuses the deep features runs only the outermost level. Each kind of step is counted
    as it runs, so skipped work is not counted. `sampling` (sampler, steps, image_size,
    guidance_interval, cache_interval) overrides the architecture's published sampling
    (`published_sampling`; survgen's: generate's defaults).
    """
    from survgen.diffusion.sampling import make_sampler, step_plan

    sampling = {"guidance_interval": None, "cache_interval": 1, **published_sampling(arch, preset), **sampling}
    scheduler = make_sampler(sampling["sampler"], v_prediction_scheduler().config)
    scheduler.set_timesteps(sampling["steps"])
    plan = step_plan(scheduler.timesteps.tolist(), guidance_interval=sampling["guidance_interval"],
                     cache_interval=sampling["cache_interval"])
    image_size = sampling["image_size"]
    with torch.device("meta"):
        spatial = _spatial_on_meta(preset)
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

    from survgen.kernels import use_backend

    with torch.no_grad(), use_backend("reference"), FlopCounterMode(display=False) as counter:
        fn(*args, **kwargs)
    return counter.get_total_flops()


def _step_flops(model, spatial: SpatialModel, frames: int, latent: int, text_per_video: bool,
                kinds: set[tuple[bool, bool]]) -> dict[tuple[bool, bool], int]:
    """FLOPs of one forward pass for each (guided, reuse) kind of step, on meta tensors."""
    from survgen.models.video_unet import DeepCache

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
