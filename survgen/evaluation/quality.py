"""`survgen evaluate quality`: how close generated videos are to real ones, per class and overall.

Frame level (each generated frame against the real frames of its class): FID,
KID, CMMD, and precision / recall / density / coverage. Video level: FVD (the
Fréchet distance between clip features). The sets are compared at the
generated videos' frame size (real frames are resized to it).

The features come from pluggable extractors (`survgen.evaluation.features`):

- offline default for everything: the project's video classifier trained on
  the real data (frame features from still clips, clip features from clips);
- `inception`: Inception-v3 (clean-fid's TorchScript file) for FID, KID and
  density/coverage; `clip`: CLIP ViT-L/14 for CMMD; `i3d`: I3D for FVD.

Every result names the extractor it was computed with, since numbers from
different extractors (or from different sample sizes) are not comparable.
Real frames and clips are subsampled (seeded) to at most `max_frames` /
`max_clips` per class, and with `per_recording` to at most that many per
recording (so a few long recordings do not stand for a class); the sample
sizes are part of the results.

The floor: for each class with two or more real recordings, the same metrics
between two halves of the real recordings (split by recording). It is what a
generator indistinguishable from the real data would score at these sample
sizes, so a generated set's number means something only against it.
"""

from __future__ import annotations

import dataclasses
import random
from dataclasses import asdict, dataclass
from pathlib import Path

import torch

from survgen.console import say
from survgen.data.datasets import to_pixels
from survgen.data.index import CLIP_FPS, VideoIndex, build_index
from survgen.data.video import probe_video, read_frames
from survgen.evaluation import metrics
from survgen.evaluation.features import FeatureExtractor


@dataclass
class QualityConfig:
    max_frames: int = 1000  # per class and set: frames for FID, KID, CMMD, density/coverage
    max_clips: int = 500  # per class and set: clips for FVD
    kid_subsets: int = 100
    nearest_k: int = 5  # density and coverage
    seed: int = 0  # which real frames and clips are drawn
    per_recording: int | None = None  # at most this many frames (and clips) of one recording per class and set
    floor: bool = True  # also compare two halves of the real recordings: the score of a perfect generator
    clip_fps: float | None = CLIP_FPS  # real clips at this rate, as the generated ones were trained on

    def check(self) -> None:
        for name in ("max_frames", "max_clips", "kid_subsets", "nearest_k", "per_recording"):
            if getattr(self, name) is not None and getattr(self, name) < 1:
                raise ValueError(f"--{name.replace('_', '-')} must be at least 1, got {getattr(self, name)}")


@dataclass
class Extractors:
    """Which network gives the features of each metric."""

    frames: FeatureExtractor  # FID, KID, precision/recall/density/coverage
    cmmd: FeatureExtractor
    clips: FeatureExtractor  # FVD

    def names(self) -> dict:
        return {"fid_kid_density_coverage": self.frames.name, "cmmd": self.cmmd.name, "fvd": self.clips.name}


@dataclass
class Features:
    """The features of one class of one set, for each metric (computed from pixels a chunk at a time)."""

    frames: torch.Tensor  # (n, d): FID, KID, density/coverage
    cmmd: torch.Tensor  # (n, d')
    clips: torch.Tensor  # (b, d'')


CHUNK = 64  # frames or clips decoded at once: memory stays small at any frame size


def _draw(items: list, n: int, rng: random.Random) -> list:
    return items if len(items) <= n else sorted(rng.sample(items, n), key=items.index)


def _draw_per_recording(items: list, recording_of, n: int | None, rng: random.Random) -> list:
    """At most `n` items of each recording (all with None), drawn at random, in their order."""
    if n is None:
        return items
    by_recording: dict = {}
    for item in items:
        by_recording.setdefault(recording_of(item), []).append(item)
    kept = {id(i) for group in by_recording.values() for i in _draw(group, n, rng)}
    return [i for i in items if id(i) in kept]


def class_features(index: VideoIndex, class_id: int, size: int, extractors: Extractors, cfg: QualityConfig,
                   rng: random.Random) -> Features | None:
    """Features of up to `max_frames` distinct frames and `max_clips` clips of one class (None: no clip)."""
    clips = [c for c in index.clips if c.class_id == class_id]
    if not clips:
        return None
    frames = list(dict.fromkeys((c.video, f) for c in clips for f in index.frames(c)))
    frames = _draw(_draw_per_recording(frames, lambda vf: vf[0], cfg.per_recording, rng), cfg.max_frames, rng)
    clips = _draw(_draw_per_recording(clips, lambda c: c.video, cfg.per_recording, rng), cfg.max_clips, rng)
    frame_features, cmmd_features, clip_features = [], [], []
    for start in range(0, len(frames), CHUNK):
        chunk = frames[start:start + CHUNK]
        by_video: dict = {}
        for video, f in chunk:  # one read per video and chunk, not one per frame
            by_video.setdefault(video, []).append(f)
        pixels = torch.cat([to_pixels(read_frames(video, fs, size)) for video, fs in by_video.items()])
        frame_features.append(extractors.frames.frame_features(pixels))
        if extractors.cmmd is not extractors.frames:
            cmmd_features.append(extractors.cmmd.frame_features(pixels))
    for start in range(0, len(clips), CHUNK):
        pixels = torch.stack([to_pixels(read_frames(c.video, index.frames(c), size)) for c in clips[start:start + CHUNK]])
        clip_features.append(extractors.clips.clip_features(pixels))
    frame_features = torch.cat(frame_features)
    return Features(frame_features, torch.cat(cmmd_features) if cmmd_features else frame_features,
                    torch.cat(clip_features))


def _metric(result: dict, warnings: list[str], name: str, fn, *args, **kwargs) -> None:
    """Run one metric; a set too small for it gives None and a warning, not a failed evaluation."""
    try:
        result[name] = fn(*args, **kwargs)
    except metrics.MetricInputError as e:
        result[name] = None
        warnings.append(f"{name}: not computed ({e})")


def compare(real: Features, fake: Features, cfg: QualityConfig) -> dict:
    """Every metric between two sets of features, with the sample sizes and the warnings that apply."""
    n_real, n_fake = len(real.frames), len(fake.frames)
    subset = min(metrics.KID_MAX_SUBSET, n_real, n_fake)
    result = {"frames": {"real": n_real, "fake": n_fake}, "clips": {"real": len(real.clips), "fake": len(fake.clips)}}
    warnings = metrics.small_sample_warnings(n_real, n_fake, real.frames.shape[1], kid_subset_size=subset,
                                             k=cfg.nearest_k)
    warnings += ["FVD" + w[len("FID/FVD"):] for w in metrics.small_sample_warnings(len(real.clips), len(fake.clips),
                                                                       real.clips.shape[1]) if w.startswith("FID")]
    _metric(result, warnings, "fid", metrics.frechet_distance, real.frames, fake.frames)
    _metric(result, warnings, "kid", metrics.kernel_distance, real.frames, fake.frames, subsets=cfg.kid_subsets,
            seed=cfg.seed)
    _metric(result, warnings, "cmmd", metrics.cmmd, real.cmmd, fake.cmmd)
    _metric(result, warnings, "prdc", metrics.density_coverage, real.frames, fake.frames, k=cfg.nearest_k)
    _metric(result, warnings, "fvd", metrics.frechet_distance, real.clips, fake.clips)
    result["warnings"] = warnings
    return result


def real_floor(index: VideoIndex, class_id: int, size: int, extractors: Extractors, cfg: QualityConfig,
               rng: random.Random) -> dict | None:
    """The metrics between two halves of a class's real recordings (split at random by recording); None with
    fewer than two recordings."""
    recordings = sorted({c.video_id for c in index.clips if c.class_id == class_id})
    if len(recordings) < 2:
        return None
    rng.shuffle(recordings)
    first = set(recordings[: len(recordings) // 2])
    halves = [dataclasses.replace(index, clips=[c for c in index.clips if (c.video_id in first) == side])
              for side in (True, False)]
    a, b = (class_features(half, class_id, size, extractors, cfg, rng) for half in halves)
    return {"recordings": [len(first), len(recordings) - len(first)], **compare(a, b, cfg)}


def _pooled(features: list[Features]) -> Features:
    return Features(*(torch.cat([getattr(f, name) for f in features]) for name in ("frames", "cmmd", "clips")))


def evaluate_quality(real: str | Path, fake: str | Path, extractors: Extractors, cfg: QualityConfig | None = None,
                     *, progress: bool = True) -> dict:
    """Metrics between the real dataset at `real` and the generated (or any) dataset at `fake`.

    Per class of `fake` (against the real clips of that class) and overall (all
    those classes pooled). Returns a JSON-ready dict.
    """
    cfg = cfg or QualityConfig()
    cfg.check()
    real, fake = Path(real), Path(fake)
    fake_index = build_index(fake, clip_fps=cfg.clip_fps)
    real_index = build_index(real, clip_fps=cfg.clip_fps, vocabulary=fake_index.vocabulary)
    vocabulary = fake_index.vocabulary
    size = probe_video(fake_index.clips[0].video).height
    rng = random.Random(cfg.seed)
    classes = sorted({c.class_id for c in fake_index.clips})
    per_class, real_features, fake_features = {}, [], []
    for class_id in classes:
        code = vocabulary.code(class_id)
        real_class = class_features(real_index, class_id, size, extractors, cfg, rng)
        if real_class is None:
            per_class[code] = {"warnings": [f"{real}: no real clip of {code} to compare with"]}
            continue
        fake_class = class_features(fake_index, class_id, size, extractors, cfg, rng)
        per_class[code] = compare(real_class, fake_class, cfg)
        if cfg.floor:
            per_class[code]["floor"] = real_floor(real_index, class_id, size, extractors, cfg, rng)
        if progress:
            say(f"{code}: {per_class[code]['frames']['real']} real vs {per_class[code]['frames']['fake']} "
                f"generated frames, {per_class[code]['clips']['real']} vs {per_class[code]['clips']['fake']} clips")
        real_features.append(real_class)
        fake_features.append(fake_class)
    if not real_features:
        raise ValueError(f"{real}: holds no clip of the generated classes "
                         f"({', '.join(vocabulary.code(c) for c in classes)}); compare with the dataset they came from")
    overall = compare(_pooled(real_features), _pooled(fake_features), cfg) if len(real_features) > 1 else None
    return {"real": str(real), "fake": str(fake), "frame_size": size,
            "extractors": extractors.names(), "config": asdict(cfg), "vocabulary": vocabulary.to_dict(),
            "per_class": per_class, "overall": overall}
