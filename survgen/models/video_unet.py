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

Two savings at sampling time, each switchable off:
- the prompt's keys and values are projected once per video, not once per frame
  (`survgen.models.per_video_text`; `text_per_video=False` turns it off);
- DeepCache (Ma et al. 2024): the deep branch (everything below the first down
  block's layers and above the last up block's) changes little between
  neighbouring sampling steps, so a `DeepCache` keeps its output, the input of the
  last up block, and a step with `reuse` runs only the outermost level (its
  spatial layers and their temporal blocks) on it.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import partial

import torch
from diffusers import UNet2DConditionModel
from torch import nn

from survgen.models.per_video_text import use_per_video_text
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


class DeepCache:
    """The deep branch's output (the last up block's input) from the last step that computed it."""

    def __init__(self):
        self.feature: torch.Tensor | None = None

    def take(self, rows: int) -> torch.Tensor | None:
        """The cached feature for a batch of `rows` frames: as stored, or the conditional half of one stored
        at a guided step (`[uncond; cond]`) for an unguided step; None when there is none to reuse."""
        if self.feature is None:
            return None
        if self.feature.shape[0] == rows:
            return self.feature
        return self.feature[rows:] if self.feature.shape[0] == 2 * rows else None


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
    sampling_savings = True  # forward takes text_per_video, deep_cache and reuse

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
        use_per_video_text(unet)  # the same as diffusers' processor when the text comes per frame

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
        *,
        text_per_video: bool = True,
        deep_cache: DeepCache | None = None,
        reuse: bool = False,
    ) -> torch.Tensor:
        """Predict the diffusion target for video latents.

        sample `(b, c, f, h, w)`; timestep `(b,)` or scalar; encoder_hidden_states
        `(b, seq, d)` (one prompt per video); class_labels `(b,)` (use `null_class`
        for the unconditional branch). Returns `(b, c, f, h, w)`. `text_per_video=False`
        repeats the text states per frame, the computation before that saving. With a `deep_cache`,
        a full pass stores its deep feature there, and `reuse` runs only the outermost
        level on the stored one (a full pass when there is none for this batch).
        """
        if sample.ndim != 5:
            raise ValueError(f"VideoUNet expects latents (b, c, f, h, w); got shape {tuple(sample.shape)}")
        b, c, f, h, w = sample.shape
        unet = self.unet
        frames = sample.permute(0, 2, 1, 3, 4).reshape(b * f, c, h, w)
        timestep = per_video_timesteps(timestep, b, sample.device)
        class_labels = checked_class_labels(class_labels, b, self.config.num_classes).to(sample.device)
        text = encoder_hidden_states if text_per_video else encoder_hidden_states.repeat_interleave(f, dim=0)

        # one embedding per video (b rows), then shared by its f frames
        emb = unet.time_embedding(unet.get_time_embed(sample=sample, timestep=timestep))
        emb = emb + self.class_embedding(class_labels).to(emb.dtype)
        emb = emb.repeat_interleave(f, dim=0)

        x = unet.conv_in(frames)
        deep = deep_cache.take(x.shape[0]) if deep_cache is not None and reuse else None
        if deep is not None:
            x, skips = self._down(x, emb, text, f, shallow=True)
            x = self._up(deep, skips, emb, text, f, shallow=True)
        else:
            x, skips = self._down(x, emb, text, f)
            x = self._mid(x, emb, text, f)
            # Same upsample-size rule as UNet2DConditionModel for latents not divisible by 2**levels.
            x = self._up(x, skips, emb, text, f, fixed_sizes=any(s % 2**unet.num_upsamplers for s in (h, w)),
                         deep_cache=deep_cache)
        x = self.run_unit(self._output_unit, x)
        return x.reshape(b, f, -1, h, w).permute(0, 2, 1, 3, 4)

    def _down(self, x: torch.Tensor, emb: torch.Tensor, text: torch.Tensor, f: int, shallow: bool = False):
        """The down blocks, each spatial layer followed by its temporal block; returns x and the skips.
        `shallow`: only the first block's layers, not its downsampler (the skips the last up block takes)."""
        skips = (x,)
        for block, temporal in zip(self.unet.down_blocks, self.temporal_down):
            attentions = getattr(block, "attentions", [None] * len(block.resnets))
            for resnet, attn, tblock in zip(block.resnets, attentions, temporal):
                x = self.run_unit(partial(self._spatial_layer, resnet, attn), x, emb, text)
                x = self.run_unit(tblock, x, f)
                skips += (x,)
            if shallow:
                break
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
            fixed_sizes: bool = False, shallow: bool = False, deep_cache: DeepCache | None = None) -> torch.Tensor:
        """The up blocks, taking the skips back in reverse; `fixed_sizes`: upsample to each skip's size.
        `shallow`: only the last block, `x` being its input; `deep_cache` keeps that input."""
        up_blocks = self.unet.up_blocks
        last = len(up_blocks) - 1
        for i, (block, temporal) in enumerate(zip(up_blocks, self.temporal_up)):
            if shallow and i < last:
                continue
            if deep_cache is not None and i == last:
                deep_cache.feature = x
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
