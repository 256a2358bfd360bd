"""The paper's baselines as video models in survgen's latent space: LVDM-style and Endora-style.

Both are trained whole on a class's clips (as LVDM and Endora are), on the same
VAE latents and the same frozen text encoder as SurV-Gen, so only the video
model differs. Both take what `VideoUNet` takes: latents `(b, c, f, h, w)`, a
timestep, the prompt's text-encoder states `(b, seq, d)` and a class label
(`null_class` for guidance's unconditional branch), and return the v-prediction.

- `LVDMVideoModel`: diffusers' `UNet3DConditionModel`, the ModelScope/LVDM
  3D U-Net (spatial resnets and cross-attention, temporal convolutions and
  temporal attention at every level). The class embedding enters through the
  U-Net's own `timestep_cond` input: projected and added to the sinusoidal
  timestep features before the time-embedding MLP.
- `EndoraVideoTransformer`: diffusers' `LatteTransformer3DModel`, Latte's
  interlaced spatial and temporal transformer blocks on 2×2 latent patches.
  Its forward is Latte's, with the class embedding added to the timestep
  embedding (Latte's class-conditional variant: c = t + y) and the spatial
  blocks' outputs available for Endora's DINO prior loss.

Presets: `tiny` is about the size of the tiny SurV-Gen video model (CPU);
`sd15` is the paper's scale (Table 1: LVDM 548M, Endora 675M trainable).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from diffusers import LatteTransformer3DModel, UNet3DConditionModel
from torch import nn

from survgen.models.video_base import CheckpointedUnits, checked_class_labels, per_video_timesteps
from survgen.presets import BASELINES

# The SD-shaped 4-level 3D U-Net at 0.6× SD's width: 509M parameters at the sd15 scale.
LVDM_PRESETS = {
    "tiny": dict(block_out_channels=(32, 64, 96), layers_per_block=1, attention_head_dim=4,
                 down_block_types=("CrossAttnDownBlock3D", "CrossAttnDownBlock3D", "DownBlock3D"),
                 up_block_types=("UpBlock3D", "CrossAttnUpBlock3D", "CrossAttnUpBlock3D")),
    "sd15": dict(block_out_channels=(192, 384, 768, 768), layers_per_block=2, attention_head_dim=8,
                 down_block_types=("CrossAttnDownBlock3D",) * 3 + ("DownBlock3D",),
                 up_block_types=("UpBlock3D",) + ("CrossAttnUpBlock3D",) * 3),
}
# Endora (Latte-XL): 28 blocks (14 spatial + 14 temporal, interlaced), hidden 1152, 16 heads, patch 2.
# diffusers counts a spatial+temporal pair as one layer.
ENDORA_PRESETS = {
    "tiny": dict(num_layers=4, num_attention_heads=4, attention_head_dim=32, patch_size=2),
    "sd15": dict(num_layers=14, num_attention_heads=16, attention_head_dim=72, patch_size=2),
}


@dataclass
class BaselineConfig:
    """How a baseline video model is built. Saved next to its weights."""

    arch: str  # lvdm | endora
    preset: str  # tiny | sd15
    num_classes: int = 8
    latent_channels: int = 4
    latent_size: int = 16  # latent frames are latent_size × latent_size
    text_dim: int = 768  # the text encoder's hidden size
    max_frames: int = 32  # Endora: frames its temporal position embedding covers

    def __post_init__(self):
        if self.arch not in BASELINES:
            raise ValueError(f"unknown baseline {self.arch!r}; choose one of {', '.join(BASELINES)}")
        presets = LVDM_PRESETS if self.arch == "lvdm" else ENDORA_PRESETS
        if self.preset not in presets:
            raise ValueError(f"unknown {self.arch} preset {self.preset!r}; choose one of {', '.join(presets)}")
        if self.arch == "endora" and self.latent_size % self.model_config()["patch_size"]:
            raise ValueError(f"endora: latent size {self.latent_size} is not a multiple of the patch size "
                             f"{self.model_config()['patch_size']}; choose an image size that is")

    def model_config(self) -> dict:
        """The preset's arguments of the diffusers model."""
        return (LVDM_PRESETS if self.arch == "lvdm" else ENDORA_PRESETS)[self.preset]



def _check_latents(sample: torch.Tensor, config: BaselineConfig) -> None:
    if sample.ndim != 5 or sample.shape[1] != config.latent_channels:
        raise ValueError(f"{config.arch}: expects latents (b, {config.latent_channels}, f, h, w); "
                         f"got shape {tuple(sample.shape)}")


class BaselineVideoModel(nn.Module):
    """What both baselines share: their config, the null class, the latent shape, training whole."""

    def __init__(self, config: BaselineConfig):
        super().__init__()
        self.config = config
        self.null_class = config.num_classes  # index of the "no class" embedding, for classifier-free guidance
        self.arch = config.arch

    @property
    def latent_channels(self) -> int:
        return self.config.latent_channels

    @property
    def latent_size(self) -> int:
        return self.config.latent_size

    def trainable_parameters(self) -> dict[str, nn.Parameter]:
        """A baseline is trained whole."""
        return dict(self.named_parameters())

    def frozen_modules(self) -> list[nn.Module]:
        return []


class LVDMVideoModel(BaselineVideoModel):
    """LVDM-style 3D U-Net (`UNet3DConditionModel`) with a class embedding on the timestep."""

    def __init__(self, config: BaselineConfig):
        super().__init__(config)
        model = config.model_config()
        class_dim = model["block_out_channels"][0]
        self.unet = UNet3DConditionModel(sample_size=config.latent_size, in_channels=config.latent_channels,
                                         out_channels=config.latent_channels, cross_attention_dim=config.text_dim,
                                         time_cond_proj_dim=class_dim, **model)
        self.class_embedding = nn.Embedding(config.num_classes + 1, class_dim)

    def enable_gradient_checkpointing(self, enabled: bool = True) -> None:
        if enabled:
            raise ValueError("--gradient-checkpointing is not available for --arch lvdm: diffusers' "
                             "UNet3DConditionModel does not support it; lower --batch-size or use --grad-accum")

    def forward(self, sample: torch.Tensor, timestep: torch.Tensor, encoder_hidden_states: torch.Tensor,
                class_labels: torch.Tensor) -> torch.Tensor:
        _check_latents(sample, self.config)
        b = sample.shape[0]
        labels = checked_class_labels(class_labels, b, self.config.num_classes).to(sample.device)
        return self.unet(sample, per_video_timesteps(timestep, b, sample.device), encoder_hidden_states,
                         timestep_cond=self.class_embedding(labels).to(sample.dtype), return_dict=False)[0]


class EndoraVideoTransformer(CheckpointedUnits, BaselineVideoModel):
    """Endora/Latte-style spatio-temporal transformer (`LatteTransformer3DModel`) with a class embedding."""

    def __init__(self, config: BaselineConfig):
        super().__init__(config)
        model = config.model_config()
        self.transformer = LatteTransformer3DModel(
            in_channels=config.latent_channels, out_channels=config.latent_channels, sample_size=config.latent_size,
            caption_channels=config.text_dim, cross_attention_dim=model["num_attention_heads"] * model["attention_head_dim"],
            activation_fn="gelu-approximate", norm_type="ada_norm_single", attention_bias=True,
            norm_elementwise_affine=False, norm_eps=1e-6, video_length=config.max_frames, **model)
        self.hidden_size = model["num_attention_heads"] * model["attention_head_dim"]
        self.class_embedding = nn.Embedding(config.num_classes + 1, self.hidden_size)

    @property
    def num_spatial_blocks(self) -> int:
        return len(self.transformer.transformer_blocks)

    @property
    def token_grid(self) -> int:
        """Tokens per side of a latent frame."""
        return self.config.latent_size // self.transformer.config.patch_size

    def forward(self, sample: torch.Tensor, timestep: torch.Tensor, encoder_hidden_states: torch.Tensor,
                class_labels: torch.Tensor, *, features_of: tuple[int, ...] = ()):
        """The v-prediction `(b, c, f, h, w)`; with `features_of`, also those spatial blocks' outputs
        `(b·f, tokens, hidden)`, for the DINO prior."""
        _check_latents(sample, self.config)
        latte = self.transformer
        b, c, f, h, w = sample.shape
        if f > self.config.max_frames:
            raise ValueError(f"endora: built for at most {self.config.max_frames} frames, got {f}")
        p = latte.config.patch_size
        if h % p or w % p:
            raise ValueError(f"endora: latent size {h}×{w} is not a multiple of the patch size {p}")
        labels = checked_class_labels(class_labels, b, self.config.num_classes).to(sample.device)
        x = latte.pos_embed(sample.permute(0, 2, 1, 3, 4).reshape(b * f, c, h, w))  # (b·f, tokens, d)
        tokens = x.shape[1]

        # Latte's adaLN-single on the timestep embedding plus the class embedding.
        conditioning = latte.adaln_single.emb(per_video_timesteps(timestep, b, sample.device), resolution=None,
                                              aspect_ratio=None, batch_size=b, hidden_dtype=x.dtype)
        conditioning = conditioning + self.class_embedding(labels).to(x.dtype)
        modulation = latte.adaln_single.linear(latte.adaln_single.silu(conditioning))  # (b, 6d)

        text = latte.caption_projection(encoder_hidden_states).repeat_interleave(f, dim=0)
        modulation_spatial = modulation.repeat_interleave(f, dim=0)
        modulation_temporal = modulation.repeat_interleave(tokens, dim=0)
        features = {}
        for i, (spatial, temporal) in enumerate(zip(latte.transformer_blocks, latte.temporal_transformer_blocks)):
            x = self.run_unit(spatial, x, None, text, None, modulation_spatial)
            if i in features_of:
                features[i] = x
            x = x.reshape(b, f, tokens, -1).transpose(1, 2).reshape(b * tokens, f, -1)  # frames as the sequence
            if i == 0 and f > 1:  # as Latte: a single frame gets no frame position
                x = x + latte.temp_pos_embed[:, :f].to(x.dtype)
            x = self.run_unit(temporal, x, None, None, None, modulation_temporal)
            x = x.reshape(b, tokens, f, -1).transpose(1, 2).reshape(b * f, tokens, -1)

        shift, scale = (latte.scale_shift_table[None] + conditioning.repeat_interleave(f, dim=0)[:, None]).chunk(2, dim=1)
        x = latte.proj_out(latte.norm_out(x) * (1 + scale) + shift)
        gh, gw = h // p, w // p
        x = x.reshape(b, f, gh, gw, p, p, c).permute(0, 6, 1, 2, 4, 3, 5).reshape(b, c, f, h, w)
        return (x, [features[i] for i in features_of]) if features_of else x


def build_baseline(config: BaselineConfig) -> LVDMVideoModel | EndoraVideoTransformer:
    return LVDMVideoModel(config) if config.arch == "lvdm" else EndoraVideoTransformer(config)


def prior_block_indices(num_blocks: int, dino_layers: tuple[int, ...], dino_depth: int) -> list[int]:
    """Spatial blocks matched to DINO layers at the same relative depth (Endora: DINO layers 2, 5, 8, 11)."""
    return [max(0, math.ceil(num_blocks * (layer + 1) / dino_depth) - 1) for layer in dino_layers]
