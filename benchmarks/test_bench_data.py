"""The data path on real-size recordings: `pytest benchmarks/test_bench_data.py --benchmark-only`.

Decoding: clips/s at 256 px through `ClipDataset` in one process (what one
DataLoader worker does), at stride 1 (16 consecutive frames) and stride 6
(16 frames kept of the 91 decoded between first and last), next to bare
decoding of the same clips in the same run (PyAV seek to the keyframe,
decode forward, decoder-side resize to 256×256: no probe cache, open-file
cache, index or tensor conversion). Each round reads the same 8 clips
(seeded random choice from the index); pytest-benchmark's table gives each
group's two rows side by side, and `extra_info` holds clips/s.

The recording is written by the benchmark itself with
`survgen.data.synth.write_recording_fixture`: 1920×1080, 60 fps, 360 frames
(6 s, two labelled actions), H.264 in AVI (SAR-RARP50's layout), libx264 preset veryfast, crf 23,
yuv420p, a keyframe every 60 frames (1 s GOP, closed, no scene-cut
keyframes), B-frames as the preset sets them; about 2 Mbit/s; and the same
scene as MJPEG in AVI (every frame a keyframe). The smoke run
(`--benchmark-disable`) uses a 320×180, 120-frame one with a 30-frame GOP.
"""

from __future__ import annotations

import random

import av
import numpy as np
import pytest

from conftest import is_quick  # benchmarks/conftest.py
from survgen.data.datasets import ClipDataset
from survgen.data.index import build_index
from survgen.data.synth import write_recording_fixture

SIZE = 256
CLIPS_PER_ROUND = 8


# ---------------------------------------------------------------- decoding
@pytest.fixture(scope="module", params=["h264", "mjpeg"])
def recording(request, tmp_path_factory):
    """(dataset root, GOP) of one recording in the SAR-RARP50 layout; MJPEG is intra-only (GOP 1)."""
    root = tmp_path_factory.mktemp("recording")
    if is_quick(request.config):
        gop, shape = 30, dict(width=320, height=180, num_frames=120)
    else:
        gop, shape = 60, dict(width=1920, height=1080, num_frames=360)
    write_recording_fixture(root / "video_01", fps=60, codec=request.param, gop=gop, **shape)
    return root, (gop if request.param == "h264" else 1)


def _clips(root, stride: int, count: int):
    """The same seeded choice of clips (video, frame numbers) for the dataset and the bare decoder."""
    index = build_index(root, frame_stride=stride)
    chosen = random.Random(0).sample(range(len(index)), min(count, len(index)))
    return index, chosen, [(index.clips[i].video, list(index.frames(index.clips[i]))) for i in chosen]


def bare_decode(container, frames: list[int], gop: int, size: int) -> np.ndarray:
    """PyAV alone: seek to the keyframe at or before a wanted frame (every `gop` frames; AVI time base = one
    frame) whenever one lies past the frame after the previous wanted one, decode forward, resize only the wanted frames."""
    stream = container.streams.video[0]
    out, number = [], None
    for wanted in frames:
        keyframe = wanted // gop * gop
        if number is None or keyframe > number + 1:
            container.seek(keyframe, backward=True, any_frame=False, stream=stream)
            decoded, number = container.decode(stream), keyframe - 1
        while number < wanted:
            frame, number = next(decoded), number + 1
        out.append(frame.to_ndarray(width=size, height=size, format="rgb24", interpolation="BILINEAR"))
    return np.stack(out)


def _codec(gop: int) -> str:
    return "MJPEG" if gop == 1 else f"H.264 GOP {gop}"


@pytest.mark.parametrize("stride", [1, 6])
def test_clip_dataset(benchmark, recording, quick, stride):
    root, gop = recording
    index, chosen, _ = _clips(root, stride, 1 if quick else CLIPS_PER_ROUND)
    dataset = ClipDataset(index, size=SIZE)
    benchmark.group = f"decode 16-frame clips at {SIZE} px, {_codec(gop)}, stride {stride}"
    benchmark.extra_info.update(stride=stride, clips_per_round=len(chosen))
    pixels = benchmark.pedantic(lambda: [dataset[i]["pixels"] for i in chosen], rounds=1 if quick else 3,
                                warmup_rounds=0 if quick else 1)
    assert pixels[0].shape == (16, 3, SIZE, SIZE)
    if benchmark.stats is not None:
        benchmark.extra_info["clips_per_s"] = round(len(chosen) / benchmark.stats.stats.min, 2)


@pytest.mark.parametrize("stride", [1, 6])
def test_bare_decoding(benchmark, recording, quick, stride):
    root, gop = recording
    _, _, clips = _clips(root, stride, 1 if quick else CLIPS_PER_ROUND)
    benchmark.group = f"decode 16-frame clips at {SIZE} px, {_codec(gop)}, stride {stride}"
    benchmark.extra_info.update(stride=stride, clips_per_round=len(clips))
    with av.open(str(clips[0][0])) as container:
        container.streams.video[0].thread_count = 1
        frames = benchmark.pedantic(lambda: [bare_decode(container, f, gop, SIZE) for _, f in clips],
                                    rounds=1 if quick else 3, warmup_rounds=0 if quick else 1)
    assert frames[0].shape == (16, SIZE, SIZE, 3)
    if benchmark.stats is not None:
        benchmark.extra_info["clips_per_s"] = round(len(clips) / benchmark.stats.stats.min, 2)


# ---------------------------------------------------------------- latent cache
def _cached_clips(folder, quick: bool):
    """`CachedClipDataset` over a float16 cache at sd15's latent shape: 4×32×32 per frame (256 px there).

    A one-block stand-in VAE maps 32 px frames of the procedural dataset to
    32×32 latents of SD's 4 channels: what is timed, reading and sampling
    posteriors, depends on the latent shape only, not on the weights or the
    frame size that made them.
    """
    from diffusers import AutoencoderKL

    from survgen.data.index import CLIP_FPS
    from survgen.data.latent_cache import CachedClipDataset, LatentCache, build_latent_cache
    from survgen.data.synth import synthesize_dataset

    data = synthesize_dataset(folder / "data", num_videos=3 if quick else 6, frames_per_video=120 if quick else 270,
                              size=64, seed=0)
    index = build_index(data, clip_fps=CLIP_FPS)
    vae = AutoencoderKL(block_out_channels=(4,), latent_channels=4, norm_num_groups=2)
    cache = build_latent_cache(index, vae, folder / "cache", image_size=32, vae_source="stand-in VAE")
    return CachedClipDataset(index, LatentCache(cache))


def test_latent_cache_clips_per_second(benchmark, quick, tmp_path):
    """One clip per round, so the OPS column reads clips/s (aim: ≥ 500 in one process)."""
    import itertools

    import torch

    from survgen.diffusion.objective import sample_latents

    dataset = _cached_clips(tmp_path, quick)
    order = itertools.cycle(torch.randperm(len(dataset), generator=torch.Generator().manual_seed(0)).tolist())
    generator = torch.Generator().manual_seed(0)
    benchmark.group = "latent cache: 16-frame clips of 4x32x32 latents, float16, posterior -> sample, one thread"
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # as in a DataLoader worker, which PyTorch runs on one thread
    try:
        latents = benchmark(lambda: sample_latents(None, dataset[next(order)], generator, scale=0.18215))
    finally:
        torch.set_num_threads(threads)
    assert latents.shape == (16, 4, 32, 32)
    if benchmark.stats is not None:  # from the mean: single-clip rounds, so the minimum would flatter
        benchmark.extra_info["clips_per_s"] = round(1 / benchmark.stats.stats.mean)
