"""PyAV against decord and the previous decoding path, on one 1080p H.264 recording: a script, not a test.

    python benchmarks/decode_backends.py pyav|decord|previous [FOLDER]

clips/s at 256 px over 8 seeded clips per stride (1 and 6), in one process:
`pyav` and `decord` through `ClipDataset` with that backend; `previous`: the
path before decoding at the training size (decord full-resolution
`get_batch`, then a float antialiased resize in torch). The recording is the
one `benchmarks/test_bench_data.py` measures, written to FOLDER (default
/tmp/survgen-decode-bench) on first use. Leaves with `os._exit`: decord can
crash the interpreter's teardown (survgen/data/video.py).
"""

from __future__ import annotations

import os
import random
import sys
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from survgen.data.index import build_index
from survgen.data.synth import write_recording_fixture


def previous_path(index):
    import decord

    readers = {}

    def clip(i):
        record = index.clips[i]
        reader = readers.setdefault(record.video, decord.VideoReader(str(record.video), ctx=decord.cpu(0),
                                                                     num_threads=1))
        frames = reader.get_batch(list(index.frames(record))).asnumpy()
        pixels = torch.from_numpy(np.ascontiguousarray(frames.transpose(0, 3, 1, 2))).float()
        return F.interpolate(pixels, size=(256, 256), mode="bilinear", antialias=True).div_(127.5).sub_(1)

    return clip


def main(mode: str, root: Path) -> None:
    if not (root / "video_01" / "video_left.avi").exists():
        write_recording_fixture(root / "video_01", width=1920, height=1080, fps=60, num_frames=360, gop=60)
    if mode in ("pyav", "decord"):
        os.environ["SURVGEN_VIDEO_BACKEND"] = mode
    for stride in (1, 6):
        index = build_index(root, frame_stride=stride)
        chosen = random.Random(0).sample(range(len(index)), min(8, len(index)))
        if mode == "previous":
            clip = previous_path(index)
        else:
            from survgen.data.datasets import ClipDataset

            dataset = ClipDataset(index, size=256)
            clip = lambda i: dataset[i]["pixels"]  # noqa: E731
        clip(chosen[0])  # open and probe outside the timing
        start = time.perf_counter()
        for i in chosen:
            clip(i)
        seconds = (time.perf_counter() - start) / len(chosen)
        print(f"{mode} stride {stride}: {1 / seconds:.2f} clips/s ({seconds * 1e3:.0f} ms/clip)", flush=True)


if __name__ == "__main__":
    main(sys.argv[1], Path(sys.argv[2] if len(sys.argv) > 2 else "/tmp/survgen-decode-bench"))
    os._exit(0)
