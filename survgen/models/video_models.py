"""The three video model architectures behind one interface: `--arch survgen | lvdm | endora`.

Every video model takes latents `(b, c, f, h, w)`, a timestep, the prompt's
text-encoder states and a class label (`null_class`: none) and predicts v; it
names what stage 2 trains (`trainable_parameters`) and the latent frame size
it was trained at (`latent_channels`, `latent_size`). survgen's video U-Net
trains only its temporal blocks on the frozen stage-1 U-Net; the baselines are
trained whole. All three share the stage-1 VAE and text encoder.

A model's config is saved as JSON next to its weights; `arch` in it says which
class to rebuild (a config without it is survgen's, as written before the
baselines existed).
"""

from __future__ import annotations

import dataclasses

from survgen.models.baselines import BASELINES, BaselineConfig, EndoraVideoTransformer, LVDMVideoModel, build_baseline
from survgen.models.spatial import SpatialModel
from survgen.models.video_unet import TEMPORAL_PRESETS, TemporalConfig, VideoUNet

ARCHS = ("survgen",) + BASELINES
VideoModel = VideoUNet | LVDMVideoModel | EndoraVideoTransformer

# Sampling each architecture was published with, for the end-to-end benchmark:
# survgen's `generate` defaults; LVDM's DDIM with 50 steps at 256 px; Endora's
# (Latte's) ancestral DDPM with 250 steps at 128 px. Guidance for all.
PUBLISHED_SAMPLING = {
    "survgen": dict(sampler="ddim", steps=25, image_size=256),
    "lvdm": dict(sampler="ddim", steps=50, image_size=256),
    "endora": dict(sampler="ddpm", steps=250, image_size=128),
}
# survgen with its fast sampler: the shipped model's classifier acceptance is unchanged from DDIM 25
# (benchmarks/results/acceptance_default-dpmpp-10.json) at 2.5× fewer model evaluations.
FAST_SAMPLING = dict(sampler="dpm++", steps=10)
NATIVE_IMAGE_SIZE = {"tiny": 64, "sd15": 256}  # the frame size each preset trains and samples at (sd15: the paper's)


def published_sampling(arch: str, preset: str) -> dict:
    """`PUBLISHED_SAMPLING` at a preset's scale (the tiny preset's frames are 64/256 of the paper's)."""
    published = PUBLISHED_SAMPLING[check_arch(arch)]
    return {**published, "image_size": published["image_size"] * NATIVE_IMAGE_SIZE[preset] // 256}


def check_arch(arch: str) -> str:
    if arch not in ARCHS:
        raise ValueError(f"unknown --arch {arch!r}; choose one of {', '.join(ARCHS)}")
    return arch


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


def arch_of(model: VideoModel) -> str:
    return "survgen" if isinstance(model, VideoUNet) else model.config.arch


def video_model_config(model: VideoModel) -> dict:
    return {"arch": arch_of(model), **model.config.to_dict()}


def video_model_from_config(config: dict, spatial: SpatialModel) -> VideoModel:
    """Rebuild (random weights) the model a saved config describes."""
    arch = check_arch(config.get("arch", "survgen"))
    if arch == "survgen":
        return VideoUNet(spatial.unet, TemporalConfig.from_dict(config))
    return build_baseline(BaselineConfig.from_dict(config))
