"""The ResNet-LSTM video recogniser (`arch` resnet-lstm): the paper's network for task 2, staple line bleeding.

As the paper describes it (Sec. 3.1): "the ResNet extracts visual features
from individual video frames and the LSTM aggregates these features over
time. A linear classifier recognizes the occurrence of SLB based on the final
LSTM state." Here:

* per frame, a 2D ResNet laid out as torchvision's `resnet18` (He et al.,
  2016): a 7×7 stride-2 stem and a 3×3 stride-2 max pool, four stages of
  `BasicBlock2D`s (two 3×3 convolutions and a shortcut; `depths` blocks per
  stage, `widths` channels, the last three stages halving height and width),
  global average pooling → one `widths[-1]` vector per frame;
* a one-layer LSTM over those vectors in frame order, hidden size
  `widths[-1]` (512 for resnet18 widths, the usual ResNet-LSTM size);
* the head, shared with the other recognisers (`VideoClassifier`): dropout
  and a linear layer on the LSTM's state after the last frame.

Why the last state and not the mean over frames: the paper says so, and an
event such as bleeding matters once it has happened; the last state has seen
every frame in order, while a mean over per-step states would weigh the
frames before the event as much as those after it. `features(x)` is that
final state (the clip embedding the evaluation metrics use), `frame_states(x)`
every step's, which depend only on the frames up to their own (the LSTM runs
forward only), so a recogniser could also be read out online.

As the project's 3D networks, it normalises with GroupNorm instead of
BatchNorm (see `survgen.models.classifier`): running statistics are buffers
the training loop neither checkpoints nor averages, and a clip's score must
not depend on its batch-mates. The LSTM's forget-gate bias starts at 1
(Jozefowicz et al., 2015), so the state carries early frames forward from the
first step, and it runs outside autocast, in its weights' precision: its
state is summed over every frame, where bfloat16 would lose the early ones,
and it costs little next to the ResNet.

Input: `(b, f, 3, H, W)` in [-1, 1], as every recogniser here.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from survgen.models.classifier import ClassifierConfig, VideoClassifier, group_norm


class BasicBlock2D(nn.Module):
    """Two 3×3 convolutions and a shortcut; `stride` 2 halves height and width."""

    def __init__(self, in_channels: int, out_channels: int, stride: int = 1):
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, out_channels, 3, stride=stride, padding=1, bias=False)
        self.norm1 = group_norm(out_channels)
        self.conv2 = nn.Conv2d(out_channels, out_channels, 3, padding=1, bias=False)
        self.norm2 = group_norm(out_channels)
        nn.init.zeros_(self.norm2.weight)  # each block starts as its shortcut, as the 3D ResNet's
        self.shortcut = nn.Identity()
        if stride != 1 or in_channels != out_channels:
            self.shortcut = nn.Sequential(nn.Conv2d(in_channels, out_channels, 1, stride=stride, bias=False),
                                          group_norm(out_channels))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = F.relu(self.norm1(self.conv1(x)))
        h = self.norm2(self.conv2(h))
        return F.relu(h + self.shortcut(x))


class FrameResNet(nn.Module):
    """The per-frame 2D ResNet: `(n, 3, H, W)` → `(n, widths[-1])`, globally average-pooled."""

    def __init__(self, widths: tuple[int, ...], depths: tuple[int, ...]):
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, widths[0], 7, stride=2, padding=3, bias=False), group_norm(widths[0]),
                                  nn.ReLU(inplace=True), nn.MaxPool2d(3, stride=2, padding=1))
        stages, channels = [], widths[0]
        for i, (width, depth) in enumerate(zip(widths, depths)):
            stride = 1 if i == 0 else 2
            stages.append(nn.Sequential(*(BasicBlock2D(channels if k == 0 else width, width, stride if k == 0 else 1)
                                          for k in range(depth))))
            channels = width
        self.stages = nn.Sequential(*stages)
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.stages(self.stem(x)).mean(dim=(2, 3))


class ResNetLSTMClassifier(VideoClassifier):
    """Per-frame 2D ResNet, an LSTM over frames, a linear head on the final state (`arch` resnet-lstm)."""

    def __init__(self, config: ClassifierConfig):
        super().__init__(config)
        width = config.widths[-1]
        self.frames = FrameResNet(config.widths, config.depths)
        self.lstm = nn.LSTM(width, width, batch_first=True)
        with torch.no_grad():  # gates are laid out input, forget, cell, output
            for bias in (self.lstm.bias_ih_l0, self.lstm.bias_hh_l0):
                bias.zero_()
                bias[width:2 * width] = 0.5  # the two biases add up: the forget gate starts at 1
        self.head = nn.Linear(width, config.num_classes)

    @property
    def feature_dim(self) -> int:
        return self.config.widths[-1]

    def frame_states(self, x: torch.Tensor) -> torch.Tensor:
        """The LSTM's state after each frame, `(b, f, widths[-1])`; step t has seen frames 0..t only."""
        if x.dim() != 5 or x.shape[2] != 3:
            raise ValueError(f"expected clips of shape (b, f, 3, H, W), got {tuple(x.shape)}")
        b, f = x.shape[:2]
        per_frame = self.frames(x.flatten(0, 1)).unflatten(0, (b, f))
        with torch.autocast(x.device.type, enabled=False):  # the recurrence in the weights' precision
            states, _ = self.lstm(per_frame.to(self.lstm.weight_ih_l0.dtype))
        return states

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """The clip embedding `(b, widths[-1])`: the LSTM's state after the last frame."""
        return self.frame_states(x)[:, -1]
