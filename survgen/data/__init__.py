"""Data: video I/O, the procedural dataset, the clip index, torch Datasets and class-balance statistics.

    from survgen.data import build_index, ClipDataset
    index = build_index("data/synth")            # SAR-RARP50 layout or videos + labels.csv
    train, val = index.split_by_video(0.2)       # by recording, never by clip
    clips = ClipDataset(train.for_classes(["G7"]), size=64)

The torch Datasets are imported on first use, so the command line and the
index do not pay for importing torch.
"""

from survgen.data.index import ClipRecord, DatasetError, Segment, VideoIndex, build_index
from survgen.data.stats import ClassStats, class_balance_plot, class_statistics
from survgen.data.synth import synthesize_dataset
from survgen.data.video import VideoInfo, VideoReadError, probe_video, read_frames, write_video

__all__ = [
    "ClipRecord", "DatasetError", "Segment", "VideoIndex", "build_index",
    "ClassStats", "class_balance_plot", "class_statistics",
    "synthesize_dataset",
    "VideoInfo", "VideoReadError", "probe_video", "read_frames", "write_video",
    "ClipDataset", "FrameDataset",
]


def __getattr__(name: str):
    if name in ("ClipDataset", "FrameDataset"):
        from survgen.data import datasets

        return getattr(datasets, name)
    raise AttributeError(f"module 'survgen.data' has no attribute {name!r}")
