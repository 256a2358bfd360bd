"""X3D (Feichtenhofer, "X3D: Expanding Architectures for Efficient Video Recognition", CVPR 2020) in PyTorch.

The recogniser the paper's downstream test used, written here because no
install-free source exists: a 1×3×3 stem followed by a channel-wise 5×1×1
temporal convolution; four stages of bottleneck blocks (1×1×1 expand by 2.25,
channel-wise 3×3×3 convolution with squeeze-excitation in every other block
and swish, 1×1×1 project, residual), each halving height and width; then a
1×1×1 convolution to the last stage's inner width, global average pooling and
a 2048-wide fully connected layer before the class head. Widths (24, 48, 96,
192) and depths (3, 5, 11, 7) are X3D-XS/S/M's network (those three differ
only in their input: 4×160², 13×160², 16×224²).

As the project's 3D ResNet, it normalises with GroupNorm instead of BatchNorm
(see `survgen.models.classifier`), so a video's score never depends on its batch.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from survgen.models.channelwise import ChannelwiseConv3d
from survgen.models.classifier import ClassifierConfig, VideoClassifier, group_norm

EXPANSION = 2.25  # inner width of a bottleneck / its output width
SE_RATIO = 1 / 16
HEAD_WIDTH = 2048


def _se_width(channels: int) -> int:
    """X3D's squeeze-excitation bottleneck: SE_RATIO of the channels, rounded to a multiple of 8."""
    return max(8, int(channels * SE_RATIO + 4) // 8 * 8)


class SqueezeExcite(nn.Module):
    def __init__(self, channels: int):
        super().__init__()
        self.reduce = nn.Conv3d(channels, _se_width(channels), 1)
        self.expand = nn.Conv3d(_se_width(channels), channels, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        scale = self.expand(F.relu(self.reduce(x.mean(dim=(2, 3, 4), keepdim=True))))
        return x * scale.sigmoid()


class X3DBlock(nn.Module):
    """Bottleneck: 1×1×1 expand, channel-wise 3×3×3 (stride in height and width), SE, swish, 1×1×1 project."""

    def __init__(self, in_channels: int, out_channels: int, stride: int, squeeze_excite: bool):
        super().__init__()
        inner = int(round(out_channels * EXPANSION))
        self.expand = nn.Sequential(nn.Conv3d(in_channels, inner, 1, bias=False), group_norm(inner), nn.ReLU())
        self.channelwise = nn.Sequential(
            ChannelwiseConv3d(inner, 3, stride=(1, stride, stride), padding=1),
            group_norm(inner))
        self.squeeze_excite = SqueezeExcite(inner) if squeeze_excite else nn.Identity()
        self.project = nn.Sequential(nn.Conv3d(inner, out_channels, 1, bias=False), group_norm(out_channels))
        nn.init.zeros_(self.project[1].weight)  # each block starts as its shortcut, as the 3D ResNet's
        self.shortcut = nn.Identity()
        if stride != 1 or in_channels != out_channels:
            self.shortcut = nn.Sequential(nn.Conv3d(in_channels, out_channels, 1, stride=(1, stride, stride),
                                                    bias=False), group_norm(out_channels))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = F.silu(self.squeeze_excite(self.channelwise(self.expand(x))))
        return F.relu(self.project(h) + self.shortcut(x))


class X3DClassifier(VideoClassifier):
    """X3D on `(b, f, 3, H, W)` clips in [-1, 1] → `(b, num_classes)` logits."""

    def __init__(self, config: ClassifierConfig):
        super().__init__(config)
        w = config.widths
        self.stem = nn.Sequential(
            nn.Conv3d(3, w[0], (1, 3, 3), stride=(1, 2, 2), padding=(0, 1, 1), bias=False),
            ChannelwiseConv3d(w[0], (5, 1, 1), padding=(2, 0, 0)),
            group_norm(w[0]), nn.ReLU())
        stages, channels = [], w[0]
        for width, depth in zip(w, config.depths):
            stages.append(nn.Sequential(*(X3DBlock(channels if i == 0 else width, width, 2 if i == 0 else 1,
                                                   squeeze_excite=i % 2 == 0) for i in range(depth))))
            channels = width
        self.stages = nn.Sequential(*stages)
        last_inner = int(round(channels * EXPANSION))
        self.conv5 = nn.Sequential(nn.Conv3d(channels, last_inner, 1, bias=False), group_norm(last_inner), nn.ReLU())
        self.fc1 = nn.Linear(last_inner, HEAD_WIDTH, bias=False)
        self.head = nn.Linear(HEAD_WIDTH, config.num_classes)
        # Channels-last 3D weights make every convolution (and so every activation) channels-last: PyTorch's
        # channel-wise 3D convolution is 2.7x faster that way on the CPU, forward + backward, and a whole X3D-XS
        # training step 3.7x (3.0 -> 0.82 s for 16 clips of 16 frames at 32 px; benchmarks/NOTES.md).
        self.to(memory_format=torch.channels_last_3d)

    @property
    def feature_dim(self) -> int:
        return HEAD_WIDTH

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """The clip embedding `(b, 2048)`: conv5, averaged over frames, height and width, then X3D's fc1."""
        h = self.conv5(self.stages(self.stem(self.channels_first(x))))
        return F.relu(self.fc1(h.mean(dim=(2, 3, 4))))
