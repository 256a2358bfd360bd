"""The latent cache: a step from it equals encoding on the fly; refusals; a killed build resumes; the CLI."""

import json
import os
import shutil

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from survgen.cli.main import app
from survgen.data.index import CLIP_FPS, build_index
from survgen.data.latent_cache import (LatentCache, LatentCacheError, build_latent_cache, frames_per_video,
                                       open_latent_cache)
from survgen.models.loading import load_vae
from survgen.runs import read_run
from tests.conftest import fast_train


@pytest.fixture(scope="module")
def data(synth_dataset, tmp_path_factory):
    """The session dataset's recordings that hold G7 clips: enough for both stages, and quick to encode."""
    keep = set(build_index(synth_dataset).for_classes(["G7"]).video_ids())
    root = tmp_path_factory.mktemp("data") / "g7"
    shutil.copytree(synth_dataset, root, ignore=lambda folder, names: [
        n for n in names if folder == str(synth_dataset) and n.startswith("video_") and n not in keep])
    return root


@pytest.fixture(scope="module")
def index(data):
    return build_index(data, clip_fps=CLIP_FPS)  # as both stages index it


@pytest.fixture(scope="module")
def exact_cache(index, vae_run, tmp_path_factory):
    """A float32 cache of every clip frame, encoded with the stage-0 VAE (which stage 1 keeps frozen)."""
    vae, _ = load_vae(vae=vae_run)
    return build_latent_cache(index, vae, tmp_path_factory.mktemp("cache") / "exact", image_size=64,
                              vae_source=str(vae_run), dtype="float32")


def test_a_stage1_step_from_the_cache_equals_encoding_on_the_fly(data, vae_run, exact_cache, tmp_path):
    """Equal to float32 round-off: the CPU convolutions give last-bit differences for a batch of one frame
    (the cache encodes a shard's last frame alone when a batch of 16 leaves one over)."""
    from survgen.training.configs import SpatialStageConfig
    from survgen.training.stage1 import train_spatial

    def run(name, cache):
        cfg = SpatialStageConfig(vae=str(vae_run), cache=cache, sample_steps=1,
                                 train=fast_train(steps=2, batch_size=4))
        return train_spatial(data, tmp_path / name, cfg)

    on_the_fly, cached = run("pixels", None), run("cached", str(exact_cache))
    torch.testing.assert_close(cached.losses, on_the_fly.losses, rtol=1e-6, atol=0)


def test_a_stage2_step_from_the_cache_equals_encoding_on_the_fly(data, spatial_run, exact_cache, tmp_path):
    """The cache was built with the stage-0 run's VAE, which the stage-1 run kept frozen (same VAE hash)."""
    from survgen.training.configs import TemporalStageConfig
    from survgen.training.stage2 import train_temporal

    def run(name, cache):
        cfg = TemporalStageConfig(classes=["G7"], cache=cache, sample_steps=1,
                                  train=fast_train(steps=2, batch_size=2))
        return train_temporal(data, spatial_run[0], tmp_path / name, cfg)

    on_the_fly, cached = run("pixels", None), run("cached", str(exact_cache))
    torch.testing.assert_close(cached.losses, on_the_fly.losses, rtol=1e-6, atol=0)


def test_cached_items_hold_the_posterior_of_the_same_frames(index, exact_cache, vae_run):
    from survgen.data.datasets import ClipDataset
    from survgen.data.latent_cache import CachedClipDataset

    vae, _ = load_vae(vae=vae_run)
    cached = CachedClipDataset(index, open_latent_cache(exact_cache, vae, 64))[5]
    with torch.no_grad():
        posterior = vae.encode(ClipDataset(index, size=64)[5]["pixels"]).latent_dist
    assert cached["latent_mean"].shape == (16, 4, 16, 16) and cached["class_id"] == index.clips[5].class_id
    torch.testing.assert_close(cached["latent_mean"], posterior.mean, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(cached["latent_std"], posterior.std, rtol=1e-5, atol=1e-6)


def test_a_cache_is_refused_for_another_vae_or_image_size(exact_cache, vae_run):
    vae, _ = load_vae(vae=vae_run)
    with pytest.raises(LatentCacheError, match="built at 64 px, but this training runs at 32 px.*--image-size 64"):
        open_latent_cache(exact_cache, vae, 32)
    with torch.no_grad():
        next(vae.parameters()).add_(1e-3)
    with pytest.raises(LatentCacheError, match=f"another VAE \\({vae_run}.*survgen data cache"):
        open_latent_cache(exact_cache, vae, 64)


def test_a_cache_is_refused_for_other_clips_another_dataset_or_a_changed_video(data, vae_run, tmp_path):
    from survgen.data.video import probe_video, read_frames, write_video

    data = shutil.copytree(data, tmp_path / "data")
    first, second = build_index(data).video_ids()
    index = build_index(data, clip_fps=CLIP_FPS).for_video_ids([first])
    vae, _ = load_vae(vae=vae_run)
    cache = open_latent_cache(build_latent_cache(index, vae, tmp_path / "cache", image_size=64,
                                                 vae_source=str(vae_run)), vae, 64)

    with pytest.raises(LatentCacheError, match="lacks .* frame.*clip rate 10 fps.*clip rate 5 fps.*--clip-fps"):
        cache.attach(build_index(data, clip_fps=5).for_video_ids([first]))
    with pytest.raises(LatentCacheError, match=f"holds no latents of .*{second}.*built for {data}"):
        cache.attach(build_index(data))

    video = data / first / "video_left.avi"
    os.utime(video, ns=(1, 1))  # touched, same content: the content hash decides
    cache.attach(index)
    frames = read_frames(video, range(probe_video(video).num_frames))
    write_video(video, np.ascontiguousarray(frames[:, ::-1]), fps=10)  # mirrored: same size, other content
    with pytest.raises(LatentCacheError, match=f"{first}/video_left.avi changed since the cache was built"):
        cache.attach(build_index(data).for_video_ids([first]))


class Killed(Exception):
    pass


def test_a_killed_build_continues_where_it_stopped(index, vae_run, exact_cache, tmp_path):
    part = index.for_video_ids(index.video_ids()[:2])
    vae, _ = load_vae(vae=vae_run)
    out = tmp_path / "cache"
    options = dict(image_size=64, vae_source=str(vae_run), dtype="float32", frames_per_shard=32)

    def kill_after_40_frames(done, total):
        if done >= 40:
            raise Killed

    with pytest.raises(Killed):
        build_latent_cache(part, vae, out, progress=kill_after_40_frames, **options)
    written = sorted(p.name for p in (out / "shards").iterdir())
    assert len(written) == 1 and not written[0].startswith(".")  # shard 1 of 32 frames; shard 2 absent, no temp file
    with pytest.raises(LatentCacheError, match="not finished; rerun"):
        LatentCache(out)
    with pytest.raises(LatentCacheError, match="started with other dtype"):
        build_latent_cache(part, vae, out, **{**options, "dtype": "float16"})

    calls = []
    build_latent_cache(part, vae, out, progress=lambda done, total: calls.append((done, total)), **options)
    assert calls[0] == (32, sum(len(f) for f in frames_per_video(part).values()))
    resumed, whole = LatentCache(out), LatentCache(exact_cache)
    resumed.attach(part), whole.attach(part)
    for video, frames in frames_per_video(part).items():
        for got, want in zip(resumed.posterior(video, frames), whole.posterior(video, frames)):
            assert torch.equal(got, want)


def invoke(*args):
    return CliRunner().invoke(app, [str(a) for a in args], catch_exceptions=False)


def test_cli_builds_a_cache_that_train_spatial_uses_and_resumes_with(data, vae_run, tmp_path):
    cache = tmp_path / "cache"
    result = invoke("data", "cache", "--data", data, "--vae", vae_run, "--out", cache)
    assert result.exit_code == 0, result.output
    assert result.stdout.strip() == str(cache)
    manifest = json.loads((cache / "manifest.json").read_text())
    assert manifest["complete"] and manifest["image_size"] == 64 and manifest["dtype"] == "float16"
    assert manifest["data"] == str(data) and len(manifest["videos"]) == 2

    run = tmp_path / "spatial"
    common = ("--out", run, "--workers", 0, "--sample-every", 1000, "--sample-steps", 1, "--quiet")
    result = invoke("train-spatial", "--data", data, "--vae", vae_run, "--cache", cache, "--steps", 1,
                    "--batch-size", 4, *common)
    assert result.exit_code == 0, result.output
    assert read_run(run).options["cache"] == str(cache)
    result = invoke("train-spatial", "--resume", "--steps", 2, *common)
    assert result.exit_code == 0, result.output
    assert json.loads((run / "metrics.jsonl").read_text().splitlines()[-1])["step"] == 2
    assert read_run(run).options["cache"] == str(cache)

    refused = invoke("train-spatial", "--data", data, "--vae", vae_run, "--cache", cache,
                     "--image-size", 32, "--out", tmp_path / "other", "--quiet")
    assert refused.exit_code == 2 and "built at 64 px, but this training runs at 32 px" in " ".join(refused.output.split())
