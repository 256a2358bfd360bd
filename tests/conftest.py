"""Shared fixtures: one small procedural dataset per test session."""

from pathlib import Path

import pytest

from survgen.data.synth import synthesize_dataset

# 12 videos of ~160 frames (48 segments, every class at least once): about 2 s to make.
SYNTH_OPTIONS = dict(num_videos=12, frames_per_video=160, size=64, seed=0)


@pytest.fixture(scope="session")
def synth_dataset(tmp_path_factory) -> Path:
    """Root of a small SAR-RARP50-layout procedural dataset (read-only: copy before changing it)."""
    return synthesize_dataset(tmp_path_factory.mktemp("data") / "synth", **SYNTH_OPTIONS)
