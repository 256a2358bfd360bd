"""Endora's prior loss: align the spatial blocks with a frozen DINO ViT (Endora, Sec. 2.3).

For each of DINO's layers 2, 5, 8 and 11 (of 12) the ViT's patch tokens of every
frame, on a grid twice as fine as Endora's token grid, go through a learned
3×3 convolution with stride 2 to Endora's grid and width; the loss is
1 − Pearson correlation between that map and the output of the Endora spatial
block at the same relative depth, averaged over layers and frames. Endora adds
it to the diffusion loss with α = 0.5.

Endora's text says "attention maps" but the quantity it convolves to match
"the dimension of diffusion attention maps" is a spatial map; we use DINO's
token maps (its "multi-scale representation", the layers' outputs), which is
what a stride-2 convolution can take to Endora's token grid.

The DINO weights come from a local Hugging Face folder (a ViT or DINOv2
model, e.g. a copy of facebook/dino-vits16); nothing is downloaded. Without
it the baseline is "Endora-style without the prior".
"""

from __future__ import annotations

from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from survgen.models.baselines import EndoraVideoTransformer, prior_block_indices

DINO_LAYERS = (2, 5, 8, 11)
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
DINO_TYPES = ("vit", "dinov2")


class DinoPriorError(ValueError):
    """A DINO folder that cannot serve as Endora's prior, with what to do about it."""


def load_dino(path: str | Path) -> nn.Module:
    """A DINO ViT from a local Hugging Face folder (config.json + weights)."""
    from transformers import AutoConfig, AutoModel

    path = Path(path)
    if not (path / "config.json").is_file():
        raise DinoPriorError(f"{path}: no config.json; give a local Hugging Face DINO folder "
                             "(e.g. a copy of facebook/dino-vits16)")
    config = AutoConfig.from_pretrained(path, local_files_only=True)
    if config.model_type not in DINO_TYPES:
        raise DinoPriorError(f"{path}: a {config.model_type!r} model, not a DINO ViT ({' or '.join(DINO_TYPES)})")
    return AutoModel.from_pretrained(path, local_files_only=True).eval().requires_grad_(False)


def pearson(a: torch.Tensor, b: torch.Tensor, eps: float = 1e-8) -> torch.Tensor:
    """Pearson correlation of each sample's values, `(n, ...)` × `(n, ...)` -> `(n,)`."""
    a = a.flatten(1).float()
    b = b.flatten(1).float()
    a = a - a.mean(1, keepdim=True)
    b = b - b.mean(1, keepdim=True)
    return (a * b).sum(1) / (a.norm(dim=1) * b.norm(dim=1) + eps)


class DinoPrior(nn.Module):
    """The frozen DINO and the trained stride-2 projections, for one Endora model."""

    def __init__(self, dino: nn.Module, endora: EndoraVideoTransformer, layers: tuple[int, ...] = DINO_LAYERS):
        super().__init__()
        if not isinstance(endora, EndoraVideoTransformer):
            raise DinoPriorError("the DINO prior is Endora's; use it with --arch endora")
        depth = dino.config.num_hidden_layers
        if max(layers) >= depth:
            raise DinoPriorError(f"the DINO model has {depth} layers; the prior reads layers {list(layers)}")
        self.dino = dino
        self.layers = tuple(layers)
        self.block_indices = tuple(prior_block_indices(endora.num_spatial_blocks, self.layers, depth))
        self.grid = endora.token_grid
        self.patch_size = dino.config.patch_size
        self.projections = nn.ModuleList(
            nn.Conv2d(dino.config.hidden_size, endora.hidden_size, kernel_size=3, stride=2, padding=1)
            for _ in self.layers)
        self.register_buffer("mean", torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(IMAGENET_STD).view(1, 3, 1, 1), persistent=False)

    @classmethod
    def from_folder(cls, path: str | Path, endora) -> "DinoPrior":
        return cls(load_dino(path), endora)

    def trainable_parameters(self) -> dict[str, nn.Parameter]:
        return {f"projections.{n}": p for n, p in self.projections.named_parameters()}

    @torch.no_grad()
    def dino_maps(self, frames: torch.Tensor) -> list[torch.Tensor]:
        """DINO's token maps `(n, d, 2g, 2g)` at each prior layer, for frames `(n, 3, H, W)` in [-1, 1]."""
        side = 2 * self.grid
        x = F.interpolate(frames.float(), size=(side * self.patch_size,) * 2, mode="bilinear", antialias=True,
                          align_corners=False)
        x = ((x + 1) / 2 - self.mean) / self.std
        extra = {"interpolate_pos_encoding": True} if self.dino.config.model_type == "vit" else {}
        hidden = self.dino(pixel_values=x.to(next(self.dino.parameters()).dtype), output_hidden_states=True,
                           **extra).hidden_states
        maps = []
        for layer in self.layers:
            tokens = hidden[layer + 1][:, -side * side:]  # the patch tokens (after CLS)
            maps.append(tokens.transpose(1, 2).reshape(len(x), -1, side, side))
        return maps

    def loss(self, block_features: list[torch.Tensor], frames: torch.Tensor) -> torch.Tensor:
        """1 − mean Pearson correlation; `block_features` are the spatial blocks' outputs `(n, g·g, hidden)`."""
        correlations = []
        for projection, feature, dino_map in zip(self.projections, block_features, self.dino_maps(frames)):
            target = projection(dino_map.to(feature.dtype)).flatten(2).transpose(1, 2)  # (n, g·g, hidden)
            correlations.append(pearson(feature, target))
        return 1 - torch.stack(correlations).mean()
