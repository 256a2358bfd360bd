"""The interface every video model (`--arch survgen | lvdm | endora`) keeps, and the parts they share.

Stage 2 trains a video model, the sampler calls it and `survgen/models/loading.py`
saves and loads it through this interface only; which class is behind it is
written in its saved config as `arch`.
"""

from __future__ import annotations

from functools import partial
from typing import Any, Callable, Protocol

import torch
from torch import nn
from torch.utils.checkpoint import checkpoint

CheckpointFn = Callable[..., torch.Tensor]  # (unit, *args) -> the unit's output
non_reentrant_checkpoint: CheckpointFn = partial(checkpoint, use_reentrant=False)


class VideoModel(Protocol):
    """An `nn.Module` that predicts v for video latents.

    Called as `model(sample, timestep, encoder_hidden_states, class_labels)`:
    latents `(b, c, f, h, w)`, one timestep or one per video, the prompt's
    text-encoder states `(b, seq, d)` and a class label per video (`null_class`:
    none, for guidance's unconditional branch); returns `(b, c, f, h, w)`.
    """

    arch: str
    config: Any  # a dataclass, saved next to the weights
    null_class: int

    @property
    def latent_channels(self) -> int: ...

    @property
    def latent_size(self) -> int: ...  # latent frames are latent_size × latent_size

    def __call__(self, sample: torch.Tensor, timestep: torch.Tensor, encoder_hidden_states: torch.Tensor,
                 class_labels: torch.Tensor) -> torch.Tensor: ...

    def trainable_parameters(self) -> dict[str, nn.Parameter]: ...  # what stage 2 trains and saves

    def frozen_modules(self) -> list[nn.Module]: ...  # what it holds but stage 2 must leave unchanged

    def enable_gradient_checkpointing(self, enabled: bool = True) -> None: ...


class CheckpointedUnits:
    """Gradient checkpointing unit by unit: a unit keeps only its inputs in the forward pass and is
    recomputed in backward. `checkpoint_fn(unit, *args)` runs a unit; the default is torch's non-reentrant
    checkpoint (`survgen.training.memory` passes its own to count what a unit keeps)."""

    gradient_checkpointing = False
    checkpoint_fn: CheckpointFn = non_reentrant_checkpoint

    def enable_gradient_checkpointing(self, enabled: bool = True, checkpoint_fn: CheckpointFn | None = None) -> None:
        self.gradient_checkpointing = enabled
        self.checkpoint_fn = checkpoint_fn or non_reentrant_checkpoint

    def run_unit(self, unit: Callable[..., torch.Tensor], *args) -> torch.Tensor:
        if self.gradient_checkpointing and torch.is_grad_enabled():
            return self.checkpoint_fn(unit, *args)
        return unit(*args)


def per_video_timesteps(timestep, batch: int, device) -> torch.Tensor:
    """`(batch,)` timesteps from one timestep or one per video."""
    timestep = torch.as_tensor(timestep, device=device).reshape(-1)
    if timestep.numel() not in (1, batch):
        raise ValueError(f"{timestep.numel()} timesteps for {batch} videos; pass one or one per video")
    return timestep.expand(batch)


def checked_class_labels(class_labels, batch: int, num_classes: int) -> torch.Tensor:
    """`(batch,)` class labels in 0..num_classes (num_classes: no class)."""
    class_labels = torch.as_tensor(class_labels).reshape(-1)
    if class_labels.numel() != batch:
        raise ValueError(f"{class_labels.numel()} class labels for {batch} videos; pass one per video")
    values_known = class_labels.device.type != "meta"  # meta tensors (FLOP counting) carry shapes only
    if values_known and (class_labels.min() < 0 or class_labels.max() > num_classes):
        raise ValueError(f"class labels must be in 0..{num_classes} ({num_classes} = no class)")
    return class_labels
