"""The clip classifiers: their config, what they share (`VideoClassifier`), and the 3D ResNet.

The 3D ResNet (`arch` r3d) is the classifier of rejection sampling. X3D
(`survgen.models.x3d`), the downstream test's default recogniser, and the
ResNet-LSTM (`survgen.models.resnet_lstm`), the paper's task-2 recogniser,
share the config and the base class. The 3D ResNet is laid out as torchvision's `r3d_18` (Tran et al., "A Closer Look at
Spatiotemporal Convolutions", 2018): a 3×7×7 stem that halves the frame size,
four stages of two `BasicBlock3D`s (3×3×3 convolutions with a residual
shortcut), the last three stages halving frames, height and width, then global
average pooling, dropout and a linear head. Written here because torchvision
is not part of the CPU install.

One departure from r3d_18: GroupNorm instead of BatchNorm. BatchNorm's
running statistics are buffers, which the training loop neither checkpoints
nor averages, so a resumed run would not match an uninterrupted one; and the
classifier judges generated videos one small batch at a time, where batch
statistics would make a video's score depend on its batch-mates.

Input: `(b, f, 3, H, W)` in [-1, 1], the layout of `ClipDataset` and of the
generator's output. `features(x)` is the pooled embedding (the evaluation
metrics use it), `forward(x)` the class logits.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from survgen.data.index import clip_stride
from survgen.presets import CLASSIFIER_ARCHS, CLASSIFIER_PRESETS


@dataclass
class ClassifierConfig:
    """How a classifier is built and what input it expects. Saved next to its weights."""

    num_classes: int = 8
    # r3d: the 3D ResNet below | x3d: X3D (survgen.models.x3d) | resnet-lstm: ResNet-LSTM (survgen.models.resnet_lstm)
    arch: str = "r3d"
    widths: tuple[int, int, int, int] = (16, 32, 64, 128)
    depths: tuple[int, int, int, int] = (2, 2, 2, 2)  # blocks per stage
    image_size: int = 64  # frames are resized to image_size × image_size
    clip_length: int = 16  # frames per clip ...
    clip_fps: float | None = None  # ... at this rate (a video's stride: round(its fps / clip_fps)); None: every frame
    dropout: float = 0.3

    def __post_init__(self):
        self.widths = tuple(int(w) for w in self.widths)  # JSON gives a list back
        self.depths = tuple(int(d) for d in self.depths)
        problems = []
        if self.arch not in CLASSIFIER_ARCHS:
            problems.append(f"arch must be one of {', '.join(CLASSIFIER_ARCHS)} (got {self.arch!r})")
        if len(self.widths) != 4 or min(self.widths) < 1:
            problems.append(f"widths must be four positive channel counts (got {self.widths})")
        if len(self.depths) != 4 or min(self.depths) < 1:
            problems.append(f"depths must be four positive block counts (got {self.depths})")
        if self.clip_fps is not None and not self.clip_fps > 0:
            problems.append(f"clip_fps must be a positive frame rate (got {self.clip_fps})")
        for name in ("num_classes", "image_size", "clip_length"):
            if getattr(self, name) < 1:
                problems.append(f"{name} must be at least 1 (got {getattr(self, name)})")
        if not 0 <= self.dropout < 1:
            problems.append(f"dropout must be in [0, 1) (got {self.dropout})")
        if problems:
            raise ValueError("invalid classifier config: " + "; ".join(problems))

    def stride_for(self, fps: float | None) -> int:
        """The stride that brings frames at `fps` to the clip rate (1 when either is unknown)."""
        return clip_stride(fps, self.clip_fps) if fps and self.clip_fps else 1

    @classmethod
    def preset(cls, name: str, **overrides) -> "ClassifierConfig":
        if name not in CLASSIFIER_PRESETS:
            raise ValueError(f"unknown classifier preset {name!r}; use one of {', '.join(CLASSIFIER_PRESETS)}")
        return cls(**{**CLASSIFIER_PRESETS[name], **overrides})


def group_norm(channels: int) -> nn.GroupNorm:
    """GroupNorm with up to 32 groups of at least 4 channels (a single group for tiny widths)."""
    groups = next((g for g in (32, 16, 8, 4, 2) if channels % g == 0 and channels // g >= 4), 1)
    return nn.GroupNorm(groups, channels)


class BasicBlock3D(nn.Module):
    """Two 3×3×3 convolutions and a shortcut; `stride` 2 halves frames, height and width."""

    def __init__(self, in_channels: int, out_channels: int, stride: int = 1):
        super().__init__()
        self.conv1 = nn.Conv3d(in_channels, out_channels, 3, stride=stride, padding=1, bias=False)
        self.norm1 = group_norm(out_channels)
        self.conv2 = nn.Conv3d(out_channels, out_channels, 3, padding=1, bias=False)
        self.norm2 = group_norm(out_channels)
        # The last norm starts at zero, so every block starts as the identity (Goyal et al., 2017):
        # a deep residual stack then trains stably from the first step.
        nn.init.zeros_(self.norm2.weight)
        self.shortcut = nn.Identity()
        if stride != 1 or in_channels != out_channels:
            self.shortcut = nn.Sequential(nn.Conv3d(in_channels, out_channels, 1, stride=stride, bias=False),
                                          group_norm(out_channels))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = F.relu(self.norm1(self.conv1(x)))
        h = self.norm2(self.conv2(h))
        return F.relu(h + self.shortcut(x))


class VideoClassifier(nn.Module):
    """What every clip classifier shares: `(b, f, 3, H, W)` in [-1, 1] → `(b, num_classes)` logits through its
    pooled embedding (`features`), dropout and a linear `head`."""

    head: nn.Linear

    def __init__(self, config: ClassifierConfig):
        super().__init__()
        self.config = config

    @property
    def feature_dim(self) -> int:
        raise NotImplementedError

    def features(self, x: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    @staticmethod
    def channels_first(x: torch.Tensor) -> torch.Tensor:
        """`(b, f, 3, H, W)` clips as Conv3d takes them, `(b, 3, f, H, W)`."""
        if x.dim() != 5 or x.shape[2] != 3:
            raise ValueError(f"expected clips of shape (b, f, 3, H, W), got {tuple(x.shape)}")
        return x.transpose(1, 2)

    def forward(self, x: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        """Class logits. In training, dropout draws its mask from `generator` when one is given,
        so that a training step's randomness all comes from the loop's per-step generator."""
        h = self.features(x)
        p = self.config.dropout
        if self.training and p > 0:
            if generator is None:
                h = F.dropout(h, p, training=True)
            else:
                keep = torch.rand(h.shape, generator=generator, device=generator.device) >= p
                h = h * keep.to(h.device, h.dtype) / (1 - p)
        return self.head(h)


class ResNet3DClassifier(VideoClassifier):
    """ResNet3D-18-style clip classifier (`arch` r3d)."""

    def __init__(self, config: ClassifierConfig):
        super().__init__(config)
        w = config.widths
        self.stem = nn.Sequential(
            nn.Conv3d(3, w[0], (3, 7, 7), stride=(1, 2, 2), padding=(1, 3, 3), bias=False),
            group_norm(w[0]),
            nn.ReLU(inplace=True),
        )
        stages, channels = [], w[0]
        for i, (width, depth) in enumerate(zip(w, config.depths)):
            stride = 1 if i == 0 else 2
            stages.append(nn.Sequential(*(BasicBlock3D(channels if k == 0 else width, width, stride if k == 0 else 1)
                                          for k in range(depth))))
            channels = width
        self.stages = nn.Sequential(*stages)
        self.head = nn.Linear(channels, config.num_classes)
        for m in self.modules():
            if isinstance(m, nn.Conv3d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")

    @property
    def feature_dim(self) -> int:
        return self.config.widths[-1]

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """The pooled clip embedding `(b, widths[-1])`: averaged over frames, height and width."""
        return self.stages(self.stem(self.channels_first(x))).mean(dim=(2, 3, 4))
