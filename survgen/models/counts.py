"""Parameter counts of a preset, computed on the meta device (no weights allocated)."""

from __future__ import annotations

from dataclasses import replace

import torch
from diffusers import AutoencoderKL
from transformers import CLIPTextConfig, CLIPTextModel

from survgen.classes import ClassVocabulary
from survgen.models.spatial import SD15_TEXT_CONFIG, SD15_UNET_CONFIG, SD15_VAE_CONFIG, build_tiny
from survgen.models.video_unet import TEMPORAL_PRESETS, VideoUNet


def _count(module: torch.nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


def preset_parameter_counts(preset: str, num_classes: int = len(ClassVocabulary())) -> dict[str, int]:
    """Spatial (frozen in stage 2), temporal (trained in stage 2) and total counts of a preset."""
    with torch.device("meta"):
        if preset == "tiny":
            spatial = build_tiny()
            unet, vae, text = spatial.unet, spatial.vae, spatial.text_encoder
        elif preset == "sd15":
            from diffusers import UNet2DConditionModel

            unet = UNet2DConditionModel(**SD15_UNET_CONFIG)
            vae = AutoencoderKL(**SD15_VAE_CONFIG)
            text = CLIPTextModel(CLIPTextConfig(**SD15_TEXT_CONFIG))
        else:
            raise ValueError(f"unknown preset {preset!r}; choose tiny or sd15")
        video = VideoUNet(unet, replace(TEMPORAL_PRESETS[preset], num_classes=num_classes))
    temporal = sum(p.numel() for n, p in video.temporal_parameters().items() if not n.startswith("class_embedding"))
    class_embedding = _count(video.class_embedding)
    spatial = _count(unet) + _count(vae) + _count(text)
    return {
        "spatial_unet": _count(unet),
        "vae": _count(vae),
        "text_encoder": _count(text),
        "temporal_blocks": temporal,
        "class_embedding": class_embedding,
        "stage2_trainable": temporal + class_embedding,
        "total": spatial + temporal + class_embedding,
    }
