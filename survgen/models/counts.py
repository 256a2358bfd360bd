"""Parameter counts of an architecture's preset, computed on the meta device (no weights allocated), and the
preset's models built there (`spatial_on_meta`) for the counts of `survgen.diffusion.cost` and
`survgen.training.memory`.
"""

from __future__ import annotations

import torch
from diffusers import AutoencoderKL
from transformers import CLIPTextConfig, CLIPTextModel

from survgen.classes import ClassVocabulary
from survgen.models.spatial import SD15_TEXT_CONFIG, SD15_UNET_CONFIG, SD15_VAE_CONFIG, SpatialModel, build_tiny
from survgen.models.video_models import NATIVE_IMAGE_SIZE, build_video_model, check_arch

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


def spatial_on_meta(preset: str) -> SpatialModel:
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
        spatial = spatial_on_meta(preset)
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
