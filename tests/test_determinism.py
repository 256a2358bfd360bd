"""Same seed, same options, same machine and thread count: the same bytes (README, "Determinism").

The cause of differing videos, guarded here: libx264's macroblock-tree rate control read
uninitialised memory, so the same frames encoded to different MP4s (up to 23/255 per
decoded pixel). And what may differ, bounded: matrix kernels sum in a shape-dependent
order, so a video sampled in another batch differs by float rounding (generate records
each video's batch, so a lost one is made again in the same batch: tests/test_generation.py).
"""

import hashlib
import math
import os

import numpy as np
import pytest
import torch

from survgen.data.video import read_frames, write_video
from survgen.diffusion.video_sampler import VideoSampler
from survgen.generation.run import GenerationConfig, generate
from survgen.models.loading import load_video_model
from survgen.visualize import to_uint8

G3, G7 = 3, 7


@pytest.fixture(scope="module")
def video_model(temporal_run):
    return load_video_model(temporal_run)


def _scribble_on_the_heap():
    """Leave freed, non-zero memory behind, as a long generation run does; fresh pages are zeros."""
    junk = [os.urandom(n) for n in range(512, 120_000, 1_500)]  # below malloc's mmap threshold: reused
    del junk


def _frames(size: int, kind: str, count: int = 16) -> np.ndarray:
    """Moving test pictures: colour waves, or soft blobs drifting on black."""
    y, x = np.mgrid[0:size, 0:size] / size
    frames = []
    for t in range(count):
        if kind == "waves":
            image = np.stack([np.sin(6 * x + 0.4 * t), np.cos(5 * y - 0.3 * t), np.sin(4 * (x + y) + 0.2 * t)], -1)
            image = 110 * (image + 1)
        else:
            image = np.zeros((size, size, 3))
            for k in range(5):
                cx, cy = (0.2 + 0.15 * k + 0.02 * t) % 1, (0.3 + 0.1 * k + 0.01 * t * k) % 1
                blob = np.exp(-((x - cx) ** 2 + (y - cy) ** 2) / 0.01)[..., None]
                image += 200 * blob * np.array([k % 2, (k + 1) % 2, 0.5])
        frames.append(np.clip(image, 0, 255).astype(np.uint8))
    return np.stack(frames)


# Content and widths at which write_video's libx264 settings (with mbtree) gave 12 and 4 different files
# in 12 encodes: this test fails with them.
@pytest.mark.parametrize("size, kind", [(64, "blobs"), (144, "waves")])
def test_the_same_frames_always_encode_to_the_same_mp4(tmp_path, size, kind):
    frames = _frames(size, kind)
    digests = set()
    for i in range(12):
        _scribble_on_the_heap()
        path = write_video(tmp_path / f"v{i}.mp4", frames, fps=10.0)
        digests.add(hashlib.sha256(path.read_bytes()).hexdigest())
    assert len(digests) == 1


@pytest.mark.parametrize("sampler", ["ddim", "ddpm"])  # ddpm: fresh noise every step, from the video's seed
def test_a_video_is_the_same_bits_in_the_same_batch_and_within_one_level_in_another(video_model, sampler):
    video_unet, spatial, run_info = video_model
    videos = VideoSampler(video_unet, spatial, run_info.vocabulary)
    options = dict(steps=2, num_frames=8, sampler=sampler)
    batch = videos.sample([G7, G3, G7], [5, 6, 7], **options)
    assert torch.equal(videos.sample([G7, G3, G7], [5, 6, 7], **options), batch)
    alone = videos.sample([G7], [7], **options)
    torch.testing.assert_close(alone[0], batch[2], atol=1e-4, rtol=0)
    assert np.abs(to_uint8(alone[0]).astype(int) - to_uint8(batch[2]).astype(int)).max() <= 1


def psnr(a: np.ndarray, b: np.ndarray) -> float:
    """Peak signal-to-noise ratio of two 8-bit videos, in dB (inf when equal)."""
    mse = float(((a - b) ** 2).mean())
    return float("inf") if mse == 0 else 10 * math.log10(255**2 / mse)


def test_two_runs_with_the_same_seed_write_the_same_files(video_model, temporal_run, tmp_path):
    def make(name, batch_size):
        # DDIM: regrouping's rounding, measured below, stays small; DPM-Solver++ with deep-feature reuse carries it
        # further on this barely trained model (1.4 % of pixels moved over 3 levels), which says nothing of bits
        cfg = GenerationConfig(classes=["G7"], n=3, batch_size=batch_size, steps=2, num_frames=8, reject_topk=0,
                               sampler="ddim", cache_interval=1)
        generate(temporal_run, tmp_path / name, cfg, loaded=(video_model, None))
        return tmp_path / name

    once, twice = make("a", 2), make("b", 2)  # blocks [0, 1], [2, 3]: candidate 3 sampled, not kept
    files = sorted(p.relative_to(once) for p in (once / "videos").glob("*.mkv"))
    assert len(files) == 3
    for f in files:
        assert (once / f).read_bytes() == (twice / f).read_bytes(), f
    assert (once / "labels.csv").read_text() == (twice / "labels.csv").read_text()

    regrouped = make("c", 3)  # one batch [0, 1, 2]: another request, the same videos up to rounding
    frames = {(run, f): read_frames(run / f, range(8)).astype(float) for run in (once, regrouped) for f in files}
    for f in files:
        # At most one level apart before encoding (the test above); H.264 at CRF 18 may then code a block another
        # way, moving some pixels several levels. So the bound is on the whole video: PSNR, where two different
        # videos of this model score far lower (the second assert keeps the first meaningful). Measured here:
        # 47.5 and 56.7 dB regrouped (one video identical), 26.9 dB between two candidates.
        assert psnr(frames[once, f], frames[regrouped, f]) > 40, f
    assert psnr(frames[once, files[0]], frames[once, files[1]]) < 30
