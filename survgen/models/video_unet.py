"""Stage 2's video U-Net: the frozen 2D U-Net with a temporal block after each spatial layer.

The frames of a video run through the spatial layers as a batch of images,
`(b·f, c, h, w)`; after each resnet/attention pair of the down, mid and up
blocks a `TemporalTransformerBlock` mixes information across the `f` frames at
every spatial position. A learned class-label embedding is added to the
timestep embedding. Every temporal output projection and the class embedding
start at zero, so a fresh video U-Net reproduces the stage-1 image U-Net frame
by frame; only the temporal blocks and the class embedding are trained.

The forward pass walks diffusers' `UNet2DConditionModel` blocks in the same
order as its own forward (resnets, attentions, samplers and skip connections
are diffusers' modules, called the same way) and calls the temporal block at
each insertion point. Supported blocks are SD's: CrossAttnDownBlock2D,
DownBlock2D, UNetMidBlock2DCrossAttn, CrossAttnUpBlock2D, UpBlock2D.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import partial

import torch
from diffusers import UNet2DConditionModel
from torch import nn

from survgen.models.temporal import TemporalTransformerBlock
from survgen.models.video_base import CheckpointedUnits, checked_class_labels, per_video_timesteps

SUPPORTED_DOWN = ("CrossAttnDownBlock2D", "DownBlock2D")
SUPPORTED_MID = ("UNetMidBlock2DCrossAttn",)
SUPPORTED_UP = ("CrossAttnUpBlock2D", "UpBlock2D")


@dataclass
class TemporalConfig:
    """How the temporal layers are built. Saved next to the temporal weights."""

    num_classes: int = 8
    heads: int = 8  # attention heads at every level, as AnimateDiff's motion modules
    attention_layers: int = 1  # self-attention sub-layers per temporal block (AnimateDiff uses 2)
    mlp_ratio: int = 4
    max_frames: int = 32
    latent_size: int | None = None  # latent frame size stage 2 trained at; None: the U-Net's sample_size


class VideoUNet(CheckpointedUnits, nn.Module):
    """`UNet2DConditionModel` + temporal blocks + class embedding, on latents `(b, c, f, h, w)`.

    Gradient checkpointing (`enable_gradient_checkpointing`) takes every spatial layer
    (resnet + cross-attention), every temporal block, the mid block's resnets and attention,
    the upsamplers and the output layers as units. The frozen spatial layers need no weight
    gradient, but the temporal blocks' gradients flow back through them, so without
    checkpointing every frozen activation is kept. A spatial layer and its temporal block
    are two units rather than one: one more tensor kept each, but half what the largest
    recomputation holds.
    """

    arch = "survgen"

    def __init__(self, unet: UNet2DConditionModel, config: TemporalConfig):
        super().__init__()
        self._check_supported(unet)
        self.unet = unet
        self.config = config
        self.null_class = config.num_classes  # index of the "no class" embedding, for classifier-free guidance
        time_embed_dim = unet.time_embedding.linear_2.out_features
        self.class_embedding = nn.Embedding(config.num_classes + 1, time_embed_dim)
        nn.init.zeros_(self.class_embedding.weight)

        def block(channels: int) -> TemporalTransformerBlock:
            return TemporalTransformerBlock(
                channels,
                heads=config.heads,
                attention_layers=config.attention_layers,
                mlp_ratio=config.mlp_ratio,
                max_frames=config.max_frames,
            )

        out_channels = unet.config.block_out_channels
        self.temporal_down = nn.ModuleList(
            nn.ModuleList(block(out_channels[i]) for _ in b.resnets) for i, b in enumerate(unet.down_blocks)
        )
        self.temporal_mid = nn.ModuleList(block(out_channels[-1]) for _ in unet.mid_block.attentions)
        reversed_channels = list(reversed(out_channels))
        self.temporal_up = nn.ModuleList(
            nn.ModuleList(block(reversed_channels[i]) for _ in b.resnets) for i, b in enumerate(unet.up_blocks)
        )
        self.enable_gradient_checkpointing(False)
        self.freeze_spatial()

    @staticmethod
    def _check_supported(unet: UNet2DConditionModel) -> None:
        kinds = (
            [(type(b).__name__, SUPPORTED_DOWN) for b in unet.down_blocks]
            + [(type(unet.mid_block).__name__, SUPPORTED_MID)]
            + [(type(b).__name__, SUPPORTED_UP) for b in unet.up_blocks]
        )
        bad = [name for name, ok in kinds if name not in ok]
        if bad:
            raise ValueError(
                f"VideoUNet supports Stable-Diffusion-style U-Nets; unsupported blocks: {', '.join(bad)}"
            )
        cfg = unet.config
        if (cfg.class_embed_type or cfg.num_class_embeds or cfg.addition_embed_type or cfg.time_cond_proj_dim
                or cfg.time_embedding_act_fn):
            raise ValueError("VideoUNet expects a U-Net without its own class/addition embeddings")

    # ------------------------------------------------------------------ parameters
    def freeze_spatial(self) -> None:
        """Stage 2 trains only the temporal blocks and the class embedding."""
        self.unet.requires_grad_(False)
        for p in self.trainable_parameters().values():
            p.requires_grad_(True)

    def trainable_parameters(self) -> dict[str, nn.Parameter]:
        """The stage-2 parameters by name: every temporal block and the class embedding."""
        return {n: p for n, p in self.named_parameters() if not n.startswith("unet.")}

    def frozen_modules(self) -> list[nn.Module]:
        return [self.unet]

    @property
    def latent_channels(self) -> int:
        return self.unet.config.in_channels

    @property
    def latent_size(self) -> int:
        return self.config.latent_size or self.unet.config.sample_size

    # ------------------------------------------------------------------ forward

    @staticmethod
    def _spatial_layer(resnet: nn.Module, attn: nn.Module | None, x: torch.Tensor, emb: torch.Tensor,
                       text: torch.Tensor, skip: torch.Tensor | None = None) -> torch.Tensor:
        """One spatial layer: resnet, then cross-attention where the block has it (an up block's concatenates
        its skip connection first)."""
        if skip is not None:
            x = torch.cat([x, skip], dim=1)
        x = resnet(x, emb)
        if attn is not None:
            x = attn(x, encoder_hidden_states=text, return_dict=False)[0]
        return x

    @staticmethod
    def _mid_attention(attn: nn.Module, x: torch.Tensor, text: torch.Tensor) -> torch.Tensor:
        return attn(x, encoder_hidden_states=text, return_dict=False)[0]

    def _output_unit(self, x: torch.Tensor) -> torch.Tensor:
        unet = self.unet
        if unet.conv_norm_out is not None:
            x = unet.conv_act(unet.conv_norm_out(x))
        return unet.conv_out(x)

    def forward(
        self,
        sample: torch.Tensor,
        timestep: torch.Tensor,
        encoder_hidden_states: torch.Tensor,
        class_labels: torch.Tensor,
    ) -> torch.Tensor:
        """Predict the diffusion target for video latents.

        sample `(b, c, f, h, w)`; timestep `(b,)` or scalar; encoder_hidden_states
        `(b, seq, d)` (one prompt per video); class_labels `(b,)` (use `null_class`
        for the unconditional branch). Returns `(b, c, f, h, w)`.
        """
        if sample.ndim != 5:
            raise ValueError(f"VideoUNet expects latents (b, c, f, h, w); got shape {tuple(sample.shape)}")
        b, c, f, h, w = sample.shape
        unet = self.unet
        frames = sample.permute(0, 2, 1, 3, 4).reshape(b * f, c, h, w)
        timestep = per_video_timesteps(timestep, b, sample.device)
        class_labels = checked_class_labels(class_labels, b, self.config.num_classes).to(sample.device)
        text = encoder_hidden_states.repeat_interleave(f, dim=0)

        # one embedding per video (b rows), then shared by its f frames
        emb = unet.time_embedding(unet.get_time_embed(sample=sample, timestep=timestep))
        emb = emb + self.class_embedding(class_labels).to(emb.dtype)
        emb = emb.repeat_interleave(f, dim=0)

        x, skips = self._down(unet.conv_in(frames), emb, text, f)
        x = self._mid(x, emb, text, f)
        # Same upsample-size rule as UNet2DConditionModel for latents not divisible by 2**levels.
        x = self._up(x, skips, emb, text, f, fixed_sizes=any(s % 2**unet.num_upsamplers for s in (h, w)))
        x = self.run_unit(self._output_unit, x)
        return x.reshape(b, f, -1, h, w).permute(0, 2, 1, 3, 4)

    def _down(self, x: torch.Tensor, emb: torch.Tensor, text: torch.Tensor, f: int):
        """The down blocks, each spatial layer followed by its temporal block; returns x and the skips."""
        skips = (x,)
        for block, temporal in zip(self.unet.down_blocks, self.temporal_down):
            attentions = getattr(block, "attentions", [None] * len(block.resnets))
            for resnet, attn, tblock in zip(block.resnets, attentions, temporal):
                x = self.run_unit(partial(self._spatial_layer, resnet, attn), x, emb, text)
                x = self.run_unit(tblock, x, f)
                skips += (x,)
            if block.downsamplers is not None:
                for downsampler in block.downsamplers:
                    x = downsampler(x)
                skips += (x,)
        return x, skips

    def _mid(self, x: torch.Tensor, emb: torch.Tensor, text: torch.Tensor, f: int) -> torch.Tensor:
        mid = self.unet.mid_block
        x = self.run_unit(mid.resnets[0], x, emb)
        for attn, resnet, tblock in zip(mid.attentions, mid.resnets[1:], self.temporal_mid):
            x = self.run_unit(partial(self._mid_attention, attn), x, text)
            x = self.run_unit(tblock, x, f)
            x = self.run_unit(resnet, x, emb)
        return x

    def _up(self, x: torch.Tensor, skips: tuple, emb: torch.Tensor, text: torch.Tensor, f: int,
            fixed_sizes: bool) -> torch.Tensor:
        """The up blocks, taking the skips back in reverse; `fixed_sizes`: upsample to each skip's size."""
        up_blocks = self.unet.up_blocks
        for i, (block, temporal) in enumerate(zip(up_blocks, self.temporal_up)):
            block_skips, skips = skips[-len(block.resnets):], skips[: -len(block.resnets)]
            upsample_size = skips[-1].shape[2:] if (fixed_sizes and i < len(up_blocks) - 1) else None
            attentions = getattr(block, "attentions", [None] * len(block.resnets))
            for resnet, attn, tblock, skip in zip(block.resnets, attentions, temporal, reversed(block_skips)):
                x = self.run_unit(partial(self._spatial_layer, resnet, attn), x, emb, text, skip)
                x = self.run_unit(tblock, x, f)
            if block.upsamplers is not None:
                for upsampler in block.upsamplers:
                    x = self.run_unit(upsampler, x, upsample_size)
        return x


# Per preset: sd15 follows AnimateDiff's motion modules (8 heads, two self-attention
# sub-layers per block); tiny keeps one sub-layer so CPU training stays quick.
TEMPORAL_PRESETS = {
    "tiny": TemporalConfig(heads=4, attention_layers=1),
    "sd15": TemporalConfig(heads=8, attention_layers=2),
}
