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
from survgen.models.spatial import SD15_TEXT_CONFIG, SD15_UNET_CONFIG, SD15_VAE_CONFIG, SpatialModel, build_tiny
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


def sampling_flops(arch: str, preset: str, *, image_size: int | None = None, steps: int | None = None,
                   sampler: str | None = None, frames: int = 16) -> dict:
    """FLOPs of generating one `frames`-frame video: `steps` guided forward passes of the video model
    (conditional and unconditional branch as one batch of 2) and the VAE decoding of its frames.

    `image_size`, `steps` and `sampler` (a label: every sampler costs one guided pass per step) default
    to the architecture's published sampling (`published_sampling`).
    """
    from torch.utils.flop_counter import FlopCounterMode

    from survgen.kernels import use_backend

    published = published_sampling(arch, preset)
    image_size, steps = image_size or published["image_size"], steps or published["steps"]
    with torch.device("meta"):
        spatial = _spatial_on_meta(preset)
        latent = image_size // spatial.vae_downsample
        model = build_video_model(arch, spatial, preset=preset, num_classes=len(ClassVocabulary()),
                                  latent_size=latent).eval()
        channels = spatial.vae.config.latent_channels
        text = torch.empty(2, spatial.text_encoder.config.max_position_embeddings,
                           spatial.text_encoder.config.hidden_size)
        labels = torch.zeros(2, dtype=torch.long)
        with torch.no_grad(), use_backend("reference"), FlopCounterMode(display=False) as step:
            model(torch.empty(2, channels, frames, latent, latent), labels, text, labels)
        with torch.no_grad(), FlopCounterMode(display=False) as decode:
            spatial.vae.decode(torch.empty(frames, channels, latent, latent))
    per_step, decoding = step.get_total_flops(), decode.get_total_flops()
    return {"sampler": sampler or published["sampler"], "steps": steps, "image_size": image_size, "frames": frames,
            "flops_per_step": per_step, "flops_decode": decoding, "flops_per_video": steps * per_step + decoding}
