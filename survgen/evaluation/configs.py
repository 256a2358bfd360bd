"""The downstream experiment's options and their defaults, light enough for the command line's `--help`."""

from __future__ import annotations

import re
from dataclasses import dataclass, field

from survgen.training.configs import ClassifierStageConfig, TrainConfig


# Two-class scores besides balanced accuracy: the event's F1 over time points, and both per video (where each
# test video has one label, as in staple line bleeding).
BINARY_HEADLINE = ("f1_positive", "video_balanced_accuracy", "video_f1_positive")


class DownstreamError(ValueError):
    """A downstream request that cannot be run as given."""


@dataclass
class DownstreamConfig:
    seeds: list[int] = field(default_factory=lambda: [0, 1, 2, 3, 4])
    rejection: list[str] = field(default_factory=lambda: ["top-3", "top-1", "p>=0.5"])  # one arm (b) each
    without_rejection: bool = True  # add a matched arm (c) for each rule, where the rejected videos were kept
    # The controls besides the positive one (which needs --reference-real): the first synthetic arm with its rare
    # classes' labels rotated, and the positive control's clips encoded as the generated videos are.
    negative_control: bool = True
    codec_control: bool = True
    test_fraction: float = 0.2  # share of real recordings held out when no separate test folder is given
    split_seed: int = 0
    test_step: int = 6  # frames between scored time points (SAR-RARP50's label interval)
    # Decoded frames kept for all runs when they fit (the bundled experiment's: 49 MiB at 32 px); beyond it
    # every run decodes its own, in DataLoader workers.
    frame_cache_bytes: int = 4 * 2**30
    # The recogniser: X3D (not the rejection classifier's network), trained for a fixed budget with no
    # validation split (the test videos are the held-out set; the last weights are scored).
    classifier: ClassifierStageConfig = field(default_factory=lambda: ClassifierStageConfig(
        preset="x3d-xs", val_fraction=0.0, train=TrainConfig(steps=300, batch_size=16, lr=3e-3, weight_decay=0.05, ema_decay=0.0,
                                            checkpoint_every=100, sample_every=10**9, log_every=10)))

    def check(self) -> None:
        problems = []
        if not self.seeds:
            problems.append("give at least one seed")
        if len(set(self.seeds)) != len(self.seeds):
            problems.append(f"seeds repeat ({self.seeds})")
        if not 0 < self.test_fraction < 1:
            problems.append(f"--test-fraction must be in (0, 1), got {self.test_fraction}")
        if self.test_step < 1:
            problems.append(f"--test-step must be at least 1, got {self.test_step}")
        for rule in self.rejection:
            try:
                rejection_rule(rule)
            except ValueError as e:
                problems.append(str(e))
        if self.classifier.val_fraction != 0:
            problems.append("the downstream classifier trains on all its training videos (val_fraction 0): "
                            "the test videos are the held-out set")
        if problems:
            raise DownstreamError("; ".join(problems))


def rejection_rule(rule: str):
    """`top-K` (the class among the classifier's K most probable) or `p>=X` (its probability at least X), as a
    test of one candidate's manifest record."""
    if m := re.fullmatch(r"top-([1-9][0-9]*)", rule):
        k = int(m.group(1))
        return lambda r: r["class"] in [t["class"] for t in r.get("classifier_topk", [])[:k]]
    if m := re.fullmatch(r"p>=(0?\.[0-9]+|1(\.0*)?)", rule):
        threshold = float(m.group(1))
        return lambda r: r.get("probability_of_class", -1.0) >= threshold
    raise ValueError(f"unknown rejection rule {rule!r}: use top-K (e.g. top-3) or p>=X (e.g. p>=0.5)")
