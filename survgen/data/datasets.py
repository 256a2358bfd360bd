"""torch Datasets over a `VideoIndex`: 16-frame clips for stage 2 and the classifier, frames for stage 1.

Pixels come out as float32 in [-1, 1], channels first. Frames are decoded,
already at the training size, through `read_frames`, which keeps a few open
files per process (so DataLoader workers, forked or spawned, each open their
own); the datasets themselves hold only the index, so they pickle cheaply to
workers.
"""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import Dataset

from survgen.data.index import DatasetError, VideoIndex
from survgen.data.synth import cue_mask_path
from survgen.data.video import probe_video, read_frames


def to_pixels(frames: np.ndarray) -> torch.Tensor:
    """uint8 `(n, H, W, 3)` → float32 `(n, 3, H, W)` in [-1, 1].

    Resizing happens in the decoder (`read_frames(..., size=)`), so no
    full-resolution float tensor is ever made.
    """
    pixels = torch.from_numpy(np.ascontiguousarray(frames.transpose(0, 3, 1, 2))).float()
    return pixels.div_(127.5).sub_(1.0)


def _check_size(index: VideoIndex, size: int | None, videos: list[Path]) -> None:
    if size is not None:
        if int(size) != size or size < 1:
            raise ValueError(f"size must be a positive whole number of pixels, got {size}")
        return
    shapes = {}
    for video in videos:
        info = index.videos.get(video) or probe_video(video)
        shapes.setdefault((info.height, info.width), video)
    if len(shapes) > 1:
        listed = "; ".join(f"{w}x{h} in {p}" for (h, w), p in list(shapes.items())[:3])
        raise DatasetError(f"{index.root}: videos differ in frame size ({listed}); pass size=N to resize all frames to N×N")


class ClipDataset(Dataset):
    """Item `i`: `{"pixels": float32 (clip_length, 3, H, W) in [-1, 1], "class_id": int}`."""

    def __init__(self, index: VideoIndex, size: int | None = None):
        if len(index) == 0:
            raise DatasetError(f"{index.root}: the index holds no clips")
        self.index = index
        self.size = size
        _check_size(index, size, sorted({c.video for c in index.clips}))

    def __len__(self) -> int:
        return len(self.index.clips)

    def __getitem__(self, i: int) -> dict:
        clip = self.index.clips[i]
        frames = read_frames(clip.video, self.index.frames(clip), self.size)
        return {"pixels": to_pixels(frames), "class_id": clip.class_id}


@lru_cache(maxsize=64)  # the bundled dataset's 36 videos' masks: about 40 MB
def _cue_masks(video: Path) -> np.ndarray | None:
    path = cue_mask_path(video)
    if not path.is_file():
        return None
    try:
        with np.load(path) as stored:
            return stored["masks"]
    except (OSError, KeyError, ValueError) as e:
        raise DatasetError(f"{path}: cannot read its cue masks ({e}); delete the file to train without them, "
                           "or rewrite the dataset with `survgen data synth`") from e


def cue_mask(video: Path, frame: int, shape: tuple[int, int]) -> torch.Tensor:
    """Float32 `(1, *shape)`: 1 on frame `frame`'s needle and thread pixels (`cue_mask_path`), else 0.

    All zeros for a video without masks (real recordings have none). Masks
    are resized by area and kept where at least half covered.
    """
    masks = _cue_masks(Path(video))
    if masks is None:
        return torch.zeros(1, *shape)
    if frame >= len(masks):
        raise DatasetError(f"{cue_mask_path(video)}: holds {len(masks)} frames' masks, but {video} has frame {frame}; "
                           "the masks belong to another version of the video: rewrite the dataset")
    mask = torch.from_numpy(masks[frame]).float()[None]
    if tuple(mask.shape[-2:]) != tuple(shape):
        mask = (F.interpolate(mask[None], size=tuple(shape), mode="area")[0] >= 0.5).float()
    return mask


class FrameDataset(Dataset):
    """Single frames for stage 1: every frame that some clip of the index covers, each once.

    Item `i`: `{"pixels": float32 (3, H, W) in [-1, 1], "class_id": int}`, and with
    `cue_masks` also `"cue_mask"`: float32 (1, H, W) (`cue_mask`).
    Taking the clips' frames (rather than only the labelled ones) means the
    image model sees every frame the video model will later be trained on,
    and only frames inside one labelled action, so each has one class prompt.
    """

    def __init__(self, index: VideoIndex, size: int | None = None, *, cue_masks: bool = False):
        if len(index) == 0:
            raise DatasetError(f"{index.root}: the index holds no clips")
        self.index = index
        self.size = size
        self.cue_masks = cue_masks
        self.videos = sorted({c.video for c in index.clips}, key=str)
        number = {video: k for k, video in enumerate(self.videos)}
        frames: dict[tuple[int, int], int] = {}
        for clip in index.clips:
            for f in index.frames(clip):
                frames[(number[clip.video], f)] = clip.class_id
        keys = sorted(frames)
        # Three flat arrays instead of a list of tuples: cheap to pickle to DataLoader workers.
        self.video_numbers = np.array([v for v, _ in keys], dtype=np.int32)
        self.frame_numbers = np.array([f for _, f in keys], dtype=np.int64)
        self.class_ids = np.array([frames[k] for k in keys], dtype=np.int64)
        _check_size(index, size, self.videos)

    def __len__(self) -> int:
        return len(self.frame_numbers)

    def __getitem__(self, i: int) -> dict:
        video, number = self.videos[int(self.video_numbers[i])], int(self.frame_numbers[i])
        pixels = to_pixels(read_frames(video, [number], self.size))[0]
        item = {"pixels": pixels, "class_id": int(self.class_ids[i])}
        if self.cue_masks:
            item["cue_mask"] = cue_mask(video, number, pixels.shape[-2:])
        return item
