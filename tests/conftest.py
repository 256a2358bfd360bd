"""Shared fixtures: one small procedural dataset per test session.

Imports of the video stack happen inside the fixtures: the kernel tests need none of it, and a GPU
image without PyAV still collects and runs them.
"""

from pathlib import Path

import pytest

# 12 videos of ~160 frames (48 segments, every class at least once): about 2 s to make.
SYNTH_OPTIONS = dict(num_videos=12, frames_per_video=160, size=64, seed=0)


@pytest.fixture(scope="session")
def synth_dataset(tmp_path_factory) -> Path:
    """Root of a small SAR-RARP50-layout procedural dataset (read-only: copy before changing it)."""
    from survgen.data.synth import synthesize_dataset

    return synthesize_dataset(tmp_path_factory.mktemp("data") / "synth", **SYNTH_OPTIONS)


def dataset_contents(root: Path) -> dict:
    """Per video folder of a SAR-RARP50-layout dataset: its label lines and its decoded frames."""
    from survgen.data.video import probe_video, read_frames

    out = {}
    for folder in sorted(root.glob("video_*")):
        video = folder / "video_left.avi"
        out[folder.name] = ((folder / "action_discrete.txt").read_text(),
                            read_frames(video, range(probe_video(video).num_frames)))
    return out


def fast_train(**kw):
    """Training options for tests: small batches, no EMA, no checkpoints or samples unless asked."""
    from survgen.training.configs import TrainConfig

    base = dict(batch_size=4, lr=1e-3, checkpoint_every=1000, sample_every=1000, log_every=1, ema_decay=0.0,
                num_workers=0)
    return TrainConfig(**{**base, **kw})


@pytest.fixture(scope="session")
def vae_run(synth_dataset, tmp_path_factory):
    from survgen.training.autoencoder import train_autoencoder
    from survgen.training.configs import AutoencoderStageConfig

    out = tmp_path_factory.mktemp("runs") / "vae"
    train_autoencoder(synth_dataset, out, AutoencoderStageConfig(score_frames=2, train=fast_train(steps=6, batch_size=8)))
    return out


@pytest.fixture(scope="session")
def spatial_run(synth_dataset, vae_run, tmp_path_factory):
    """A stage-1 run (30 steps) and its training result."""
    from survgen.training.configs import SpatialStageConfig
    from survgen.training.stage1 import train_spatial

    out = tmp_path_factory.mktemp("runs") / "spatial"
    cfg = SpatialStageConfig(vae=str(vae_run), sample_steps=2,
                             train=fast_train(steps=30, batch_size=8, sample_every=30))
    result = train_spatial(synth_dataset, out, cfg)
    return out, result


@pytest.fixture(scope="session")
def temporal_run(synth_dataset, spatial_run, tmp_path_factory):
    """A stage-2 run for G7 (a few steps: enough to generate from, not to look good)."""
    from survgen.training.configs import TemporalStageConfig
    from survgen.training.stage2 import train_temporal

    out = tmp_path_factory.mktemp("runs") / "temporal-G7"
    cfg = TemporalStageConfig(classes=["G7"], sample_steps=2, train=fast_train(steps=2, batch_size=2))
    train_temporal(synth_dataset, spatial_run[0], out, cfg)
    return out


def torchrun(args: list[str], env: dict, processes: int = 2) -> str:
    """Run `python -m torch.distributed.run --standalone --nproc_per_node N ARGS...`; its stdout, after asserting
    it succeeded. It gets its own process group, so a hang kills the workers too and leaves nothing running."""
    import os
    import signal
    import subprocess
    import sys

    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", str(processes), *args]
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            start_new_session=True)
    try:
        stdout, stderr = proc.communicate(timeout=300)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        raise
    assert proc.returncode == 0, stderr[-3000:]
    return stdout
