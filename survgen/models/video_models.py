"""The three video model architectures behind one interface (`VideoModel`): `--arch survgen | lvdm | endora`.

survgen's video U-Net trains only its temporal blocks on the frozen stage-1
U-Net; the baselines are trained whole. All three share the stage-1 VAE and
text encoder. A model's config is saved as JSON next to its weights, with
`arch` saying which class to rebuild (no `arch`: survgen's).
"""

from __future__ import annotations

import dataclasses

from survgen.config import config_from_dict, config_to_dict
from survgen.models.baselines import BaselineConfig, build_baseline
from survgen.models.spatial import SpatialModel
from survgen.models.video_base import VideoModel
from survgen.models.video_unet import TEMPORAL_PRESETS, TemporalConfig, VideoUNet
from survgen.presets import DEFAULT_SAMPLING, NATIVE_IMAGE_SIZE, check_arch

# Sampling each architecture was published with, for the end-to-end benchmark:
# survgen's `generate` defaults; LVDM's DDIM with 50 steps at 256 px; Endora's
# (Latte's) ancestral DDPM with 250 steps at 128 px. Guidance for all.
PUBLISHED_SAMPLING = {
    "survgen": dict(**DEFAULT_SAMPLING, image_size=256),
    "lvdm": dict(sampler="ddim", steps=50, image_size=256),
    "endora": dict(sampler="ddpm", steps=250, image_size=128),
}


def published_sampling(arch: str, preset: str) -> dict:
    """`PUBLISHED_SAMPLING` at a preset's scale (the tiny preset's frames are 64/256 of the paper's)."""
    published = PUBLISHED_SAMPLING[check_arch(arch)]
    return {**published, "image_size": published["image_size"] * NATIVE_IMAGE_SIZE[preset] // 256}


def build_video_model(arch: str, spatial: SpatialModel, *, preset: str, num_classes: int, latent_size: int,
                      temporal: TemporalConfig | None = None) -> VideoModel:
    """A fresh video model of `arch` in `spatial`'s latent space (survgen's on top of its U-Net)."""
    check_arch(arch)
    if arch == "survgen":
        config = dataclasses.replace(temporal or TEMPORAL_PRESETS[preset], num_classes=num_classes,
                                     latent_size=latent_size)
        return VideoUNet(spatial.unet, config)
    return build_baseline(BaselineConfig(arch=arch, preset=preset, num_classes=num_classes,
                                         latent_channels=spatial.vae.config.latent_channels, latent_size=latent_size,
                                         text_dim=spatial.text_encoder.config.hidden_size))


def video_model_config(model: VideoModel) -> dict:
    return {"arch": model.arch, **config_to_dict(model.config)}


def video_model_from_config(config: dict, spatial: SpatialModel) -> VideoModel:
    """Rebuild (random weights) the model a saved config describes; unknown keys are refused."""
    arch = check_arch(config.get("arch", "survgen"))
    if arch == "survgen":
        return VideoUNet(spatial.unet, config_from_dict(TemporalConfig, {k: v for k, v in config.items() if k != "arch"}))
    return build_baseline(config_from_dict(BaselineConfig, config))
