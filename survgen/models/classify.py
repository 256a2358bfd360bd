"""The video classifier at work: the top-k classes of video files or tensors, each judged by its first clip.

A video is read at the classifier's clip rate (`ClassifierConfig.stride_for`
its frame rate) and resized to its frame size, as the training clips were.
"""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

import torch
import torch.nn.functional as F

from survgen.classes import ClassVocabulary
from survgen.data.datasets import to_pixels
from survgen.data.video import probe_video, read_frames
from survgen.models.classifier import ClassifierConfig, VideoClassifier


class ClipTooShortError(ValueError):
    """A video with fewer frames than one classifier clip."""


def read_clip(path: str | Path, config: ClassifierConfig) -> torch.Tensor:
    """The first clip of a video file as the classifier sees it: `(clip_length, 3, size, size)` in [-1, 1]."""
    info = probe_video(path)
    stride = config.stride_for(info.fps)
    span = (config.clip_length - 1) * stride + 1
    if info.num_frames < span:
        raise ClipTooShortError(_too_short(str(path), info.num_frames, config, stride))
    return to_pixels(read_frames(path, range(0, span, stride), config.image_size))


def _too_short(what: str, frames: int, config: ClassifierConfig, stride: int) -> str:
    span = (config.clip_length - 1) * stride + 1
    needs = (f"{config.clip_length} frames, {stride} apart ({span} frames)" if stride > 1
             else f"{config.clip_length} frames")
    return f"{what}: has {frames} frame(s), but the classifier reads {needs}; give a video at least that long"


def as_clip(video: torch.Tensor, config: ClassifierConfig, what: str, fps: float | None) -> torch.Tensor:
    """A `(f, 3, H, W)` tensor in [-1, 1] at `fps`, cut and resized to the classifier's clip."""
    if video.dim() != 4 or video.shape[1] != 3:
        raise ValueError(f"{what}: expected a video tensor of shape (frames, 3, H, W), got {tuple(video.shape)}")
    stride = config.stride_for(fps)
    span = (config.clip_length - 1) * stride + 1
    if video.shape[0] < span:
        raise ClipTooShortError(_too_short(what, video.shape[0], config, stride))
    clip = video[:span:stride].float()
    if clip.shape[-2:] != (config.image_size, config.image_size):
        clip = F.interpolate(clip, size=(config.image_size, config.image_size), mode="bilinear", antialias=True,
                             align_corners=False)
    return clip


@torch.no_grad()
def classify_videos(model: VideoClassifier, videos: Sequence[str | Path | torch.Tensor], topk: int = 3, *,
                    vocabulary: ClassVocabulary | None = None, batch_size: int = 8,
                    tensor_fps: float | None = None) -> list[dict]:
    """Top-k classes of each video (a file, or a `(f, 3, H, W)` tensor in [-1, 1] at `tensor_fps`) from its first clip.

    Returns, per video in order: `{"video": path or "tensor i", "topk": [{"class_id", "probability"
    (, "code", "name" given a vocabulary)}, ...]}`, most probable first. Every video is read (and
    checked) before any is classified, so a bad file fails fast, with its name in the error.
    """
    if topk < 1:
        raise ValueError(f"topk must be at least 1 (got {topk})")
    config = model.config
    names, clips = [], []
    for i, video in enumerate(videos):
        if isinstance(video, torch.Tensor):
            names.append(f"tensor {i}")
            clips.append(as_clip(video, config, names[-1], tensor_fps))
        else:
            names.append(str(video))
            clips.append(read_clip(video, config))
    model.eval()
    device = next(model.parameters()).device
    results = []
    for start in range(0, len(clips), batch_size):
        batch = torch.stack(clips[start:start + batch_size]).to(device)
        probabilities = model(batch).float().softmax(-1).cpu()
        top = probabilities.topk(min(topk, probabilities.shape[-1]), dim=-1)
        for name, p, c in zip(names[start:], top.values.tolist(), top.indices.tolist()):
            ranked = []
            for class_id, probability in zip(c, p):
                entry = {"class_id": class_id, "probability": round(probability, 4)}
                if vocabulary is not None:
                    entry.update(code=vocabulary.code(class_id), name=vocabulary.name(class_id))
                ranked.append(entry)
            results.append({"video": name, "topk": ranked})
    return results
