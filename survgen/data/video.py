"""Video files in and out: probe, decode frames with decord, write AVI / MP4 / GIF.

decord decodes fast but trusts the frame count the container declares. When a
file over-reports it (a truncated recording, a header written from duration ×
fps), asking decord for a frame past the real end can spin forever in native
code while holding the GIL, where no Python timeout can stop it
(dmlc/decord#373). So every file is probed once with PyAV first: its packets
are demuxed (not decoded) and counted, which always ends at the end of the file.
A damaged packet means a truncated or corrupt file and raises
`VideoReadError`; otherwise the frame count used everywhere is the smallest of
PyAV's count and decord's, and `read_frames` refuses any index past it, so
decord is never asked for a frame that is not there. Where decord fails on a
frame it has (decord 0.6 refuses some frame sizes), the frames are decoded with
PyAV instead, with one logged warning per file.
"""

from __future__ import annotations

import logging
import os
import re
from collections import OrderedDict
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path
from typing import Iterable

import av
import decord
import numpy as np

from survgen.io import atomic_path

log = logging.getLogger("survgen.data")

# decord's bundled FFmpeg prints decoder chatter ("overread 8") for files we
# already reject with a clear error; keep stderr for our own messages.
decord.logging.set_level(decord.logging.QUIET)

VIDEO_SUFFIXES = (".avi", ".mp4", ".mov", ".mkv", ".webm", ".m4v", ".mpg", ".mpeg")
WRITABLE_SUFFIXES = (".avi", ".mp4", ".gif")


class VideoReadError(Exception):
    """A video file that cannot be read (missing, corrupt, truncated) or a frame it does not have."""


@dataclass(frozen=True)
class VideoInfo:
    num_frames: int
    fps: float
    height: int
    width: int


# ---------------------------------------------------------------- probing
_PROBES: dict[tuple[str, int, int], VideoInfo] = {}


def probe_video(path: str | Path) -> VideoInfo:
    """Frame count, frame rate and frame size of a video, verified by demuxing the whole file.

    Raises `VideoReadError` naming the file when it is missing, not a video,
    truncated or damaged. Results are cached per process (keyed by path, size
    and modification time), so probing a file again is free.
    """
    path = Path(path)
    try:
        stat = path.stat()
    except OSError as e:
        raise VideoReadError(f"{path}: cannot open ({e.strerror or e})") from None
    key = (str(path.resolve()), stat.st_size, stat.st_mtime_ns)
    if key not in _PROBES:
        _PROBES[key] = _probe_uncached(path)
    return _PROBES[key]


def _probe_uncached(path: Path) -> VideoInfo:
    try:
        with av.open(str(path)) as container:
            if not container.streams.video:
                raise VideoReadError(f"{path}: holds no video stream")
            stream = container.streams.video[0]
            declared = stream.frames
            height, width = stream.codec_context.height, stream.codec_context.width
            rate = stream.average_rate or stream.guessed_rate
            packets = 0
            for packet in container.demux(stream):
                if packet.size == 0:  # the demuxer's end-of-stream marker, not a frame
                    continue
                if packet.is_corrupt:
                    raise VideoReadError(
                        f"{path}: truncated or damaged (frame {packets} is incomplete; the container "
                        f"declares {declared or 'an unknown number of'} frames); re-encode or re-copy the file"
                    )
                packets += 1
    except VideoReadError:
        raise
    except (av.error.FFmpegError, OSError, ValueError) as e:
        reason = getattr(e, "strerror", None) or str(e)
        raise VideoReadError(f"{path}: not a readable video ({reason}); check the file or re-encode it") from None
    if packets == 0 or not height or not width:
        raise VideoReadError(f"{path}: holds no decodable video frames")
    reader = _reader(path)
    num_frames = min(packets, len(reader))
    fps = float(rate) if rate else float(reader.get_avg_fps())
    return VideoInfo(num_frames=num_frames, fps=fps, height=height, width=width)


# ---------------------------------------------------------------- decoding
# Open decord readers, per process. A few suffice because a clip reads one
# video at a time, and each open reader holds decoder buffers. A process forked
# from one that holds readers (a DataLoader worker) must neither use nor free
# them: decord's destructor joins decoder threads that exist only in the parent
# and aborts the child. So after a fork the inherited readers are parked, never
# freed, and the child opens its own.
_MAX_OPEN_READERS = 4
_READERS: OrderedDict[str, decord.VideoReader] = OrderedDict()
_INHERITED_READERS: list[decord.VideoReader] = []


def _park_inherited_readers() -> None:
    _INHERITED_READERS.extend(_READERS.values())
    _READERS.clear()


os.register_at_fork(after_in_child=_park_inherited_readers)


def _reader(path: Path) -> decord.VideoReader:
    key = str(path.resolve())
    if key in _READERS:
        _READERS.move_to_end(key)
        return _READERS[key]
    try:
        # One decoding thread: DataLoader workers already run in parallel.
        reader = decord.VideoReader(key, ctx=decord.cpu(0), num_threads=1)
    except (decord.DECORDError, RuntimeError) as e:
        raise VideoReadError(f"{path}: decord cannot open it ({_decord_reason(e)}); re-encode the file") from None
    _READERS[key] = reader
    while len(_READERS) > _MAX_OPEN_READERS:
        _READERS.popitem(last=False)
    return reader


def _decord_reason(error: Exception) -> str:
    """decord's message without its '[time] source.cc:line:' prefix and stack trace."""
    lines = str(error).strip().splitlines()
    return re.sub(r"^\[[\d:]+\]\s+\S+:\d+:\s*", "", lines[0]) if lines else type(error).__name__


def read_frames(path: str | Path, indices: Iterable[int]) -> np.ndarray:
    """Decode the frames at `indices` (any order, repeats allowed) as uint8 `(n, H, W, 3)` RGB.

    Raises `VideoReadError` for an unreadable file or an index outside
    `0 .. num_frames-1` of the verified frame count.
    """
    path = Path(path)
    indices = [int(i) for i in indices]
    if not indices:
        raise ValueError(f"{path}: read_frames needs at least one frame index")
    info = probe_video(path)
    bad = [i for i in indices if not 0 <= i < info.num_frames]
    if bad:
        raise VideoReadError(
            f"{path}: frame {bad[0]} does not exist (the video has {info.num_frames} readable frames, 0..{info.num_frames - 1})"
        )
    # decord reads a sorted, duplicate-free batch by forward decoding; map back afterwards.
    unique = sorted(set(indices))
    try:
        batch = _reader(path).get_batch(unique).asnumpy()
    except (decord.DECORDError, RuntimeError) as e:
        batch = _read_with_pyav(path, unique, info, reason=_decord_reason(e))
    if batch.shape != (len(unique), info.height, info.width, 3):
        raise VideoReadError(f"{path}: got frames of shape {batch.shape[1:]} for a "
                             f"{info.width}x{info.height} video; the file is damaged")
    position = {frame: i for i, frame in enumerate(unique)}
    return np.ascontiguousarray(batch[[position[i] for i in indices]])


_PYAV_FALLBACK_LOGGED: set[str] = set()


def _read_with_pyav(path: Path, unique: list[int], info: VideoInfo, reason: str) -> np.ndarray:
    """Decode from the start with PyAV: slower, but it works where decord refuses a file
    (decord 0.6 fails on some frame sizes, e.g. 48x32, with 'The size must exactly match')."""
    if str(path) not in _PYAV_FALLBACK_LOGGED:
        _PYAV_FALLBACK_LOGGED.add(str(path))
        log.warning("%s: decord cannot decode it (%s); decoding with PyAV instead (slower)", path, reason)
    wanted, frames = set(unique), {}
    try:
        with av.open(str(path)) as container:
            for number, frame in enumerate(container.decode(video=0)):
                if number in wanted:
                    frames[number] = frame.to_ndarray(format="rgb24")
                if number >= unique[-1]:
                    break
    except (av.error.FFmpegError, OSError, ValueError) as e:
        raise VideoReadError(f"{path}: decoding failed with decord ({reason}) and PyAV ({e})") from None
    missing = [i for i in unique if i not in frames]
    if missing:
        raise VideoReadError(f"{path}: frame {missing[0]} could not be decoded (decord: {reason})")
    return np.stack([frames[i] for i in unique])


# ---------------------------------------------------------------- encoding
def write_video(path: str | Path, frames: np.ndarray, fps: float) -> Path:
    """Write uint8 RGB frames `(n, H, W, 3)` atomically; the suffix picks the format.

    `.avi`: MJPEG at a constant frame rate, full-resolution chroma (yuvj444p),
    so tiny frames keep their colours (the bundled dataset's format).
    `.mp4`: H.264 yuv420p (MPEG-4 Part 2 where FFmpeg lacks libx264); needs
    even width and height. `.gif`: looping animation (PIL; it stores a run of
    identical frames as one longer frame, so only the timing survives).
    """
    path = Path(path)
    suffix = path.suffix.lower()
    if suffix not in WRITABLE_SUFFIXES:
        raise ValueError(f"{path}: cannot write {suffix or 'a file without suffix'}; use one of {', '.join(WRITABLE_SUFFIXES)}")
    frames = np.asarray(frames)
    if frames.dtype != np.uint8 or frames.ndim != 4 or frames.shape[-1] != 3 or frames.shape[0] == 0:
        raise ValueError(f"{path}: frames must be uint8 of shape (n, H, W, 3) with n >= 1, got {frames.dtype} {frames.shape}")
    if not fps > 0:
        raise ValueError(f"{path}: fps must be positive, got {fps}")
    height, width = frames.shape[1:3]
    if suffix == ".mp4" and (height % 2 or width % 2):
        raise ValueError(f"{path}: H.264 (yuv420p) needs even width and height, got {width}x{height}; write .avi or .gif instead")
    with atomic_path(path) as tmp:
        if suffix == ".gif":
            _write_gif(tmp, frames, fps)
        else:
            _write_with_pyav(tmp, frames, fps, container_format=suffix[1:])
    return path


def _write_with_pyav(tmp: Path, frames: np.ndarray, fps: float, container_format: str) -> None:
    rate = Fraction(fps).limit_denominator(1001)
    if container_format == "avi":
        codec, pix_fmt, options = "mjpeg", "yuvj444p", {}
    elif "libx264" in av.codecs_available:
        codec, pix_fmt, options = "libx264", "yuv420p", {"crf": "18", "preset": "medium"}
    else:
        codec, pix_fmt, options = "mpeg4", "yuv420p", {}
    # The temp file's name ends in .tmp, so the container format is named explicitly.
    with av.open(str(tmp), mode="w", format=container_format) as container:
        stream = container.add_stream(codec, rate=rate, options=options)
        stream.width, stream.height = frames.shape[2], frames.shape[1]
        stream.pix_fmt = pix_fmt
        if codec == "mjpeg":
            stream.codec_context.qmin, stream.codec_context.qmax = 1, 3  # near-lossless: the data are tiny
        elif codec == "mpeg4":
            stream.codec_context.bit_rate = 8 * frames[0].size * int(round(fps))
        for frame in frames:
            container.mux(stream.encode(av.VideoFrame.from_ndarray(frame, format="rgb24")))
        container.mux(stream.encode())


def _write_gif(tmp: Path, frames: np.ndarray, fps: float) -> None:
    from PIL import Image

    images = [Image.fromarray(frame) for frame in frames]
    images[0].save(tmp, format="GIF", save_all=True, append_images=images[1:],
                   duration=max(10, round(1000 / fps)), loop=0, disposal=1)
