"""Video files in and out: probe, decode frames (PyAV, or decord if chosen), write AVI / MP4 / GIF.

Decoding backend: PyAV by default; `SURVGEN_VIDEO_BACKEND=decord` (or
`survgen --video-backend decord`) selects decord, imported only then. decord
is kept for comparison, not recommended: it can crash (or, with its readers
closed at exit, hang) when the interpreter exits, returns other frames than
asked for from H.264 with B-frames in AVI (SAR-RARP50's container), and
refuses some small frame sizes (benchmarks/NOTES.md). On MP4 and MJPEG AVI the
two backends give the same frames (tests/test_video_backends.py).

Every file is probed once with PyAV: its packets are demuxed (not decoded) and
counted, which always ends at the end of the file. A damaged packet means a
truncated or corrupt file and raises `VideoReadError`; otherwise that count is
the frame count used everywhere, and `read_frames` refuses any index past it
(decord, given a header that over-reports, would otherwise spin forever in
native code). The probe also notes where the keyframes are, so that a read
seeks to the keyframe at or before its first frame and decodes forward from
there.
"""

from __future__ import annotations

import logging
import os
import re
from collections import OrderedDict
from contextlib import contextmanager
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path
from typing import Iterable

import av
import numpy as np

from survgen.io import atomic_path

log = logging.getLogger("survgen.data")

VIDEO_SUFFIXES = (".avi", ".mp4", ".mov", ".mkv", ".webm", ".m4v", ".mpg", ".mpeg")
WRITABLE_SUFFIXES = (".mkv", ".avi", ".mp4", ".gif")
VIDEO_BACKENDS = ("pyav", "decord")
BACKEND_VARIABLE = "SURVGEN_VIDEO_BACKEND"
MUXERS = {"mkv": "matroska"}  # FFmpeg's names where they are not the suffix


class VideoReadError(Exception):
    """A video file that cannot be read (missing, corrupt, truncated) or a frame it does not have."""


@dataclass(frozen=True)
class VideoInfo:
    num_frames: int
    fps: float
    height: int
    width: int


def video_backend() -> str:
    """The decoder `read_frames` uses: `$SURVGEN_VIDEO_BACKEND`, `pyav` when unset."""
    name = os.environ.get(BACKEND_VARIABLE, "").strip().lower() or "pyav"
    if name not in VIDEO_BACKENDS:
        raise ValueError(f"{BACKEND_VARIABLE}={name!r} is not a video backend; use one of {', '.join(VIDEO_BACKENDS)}")
    return name


# ---------------------------------------------------------------- probing
@dataclass(frozen=True)
class _Keyframes:
    """Keyframes in presentation order: their frame numbers, and each one's pts (the seek target)."""

    numbers: np.ndarray
    pts: np.ndarray
    number_of_pts: dict[int, int]


_PROBES: dict[tuple[str, int, int], tuple[VideoInfo, _Keyframes | None]] = {}


def probe_video(path: str | Path) -> VideoInfo:
    """Frame count, frame rate and frame size of a video, verified by demuxing the whole file.

    Raises `VideoReadError` naming the file when it is missing, not a video,
    truncated or damaged. Results are cached per process (keyed by path, size
    and modification time), so probing a file again is free.
    """
    return _probe(Path(path))[0]


def _probe(path: Path) -> tuple[VideoInfo, _Keyframes | None]:
    try:
        key = _file_key(path)
    except OSError as e:
        raise VideoReadError(f"{path}: cannot open ({e.strerror or e})") from None
    if key not in _PROBES:
        _PROBES[key] = _probe_uncached(path)
    return _PROBES[key]


def _probe_uncached(path: Path) -> tuple[VideoInfo, _Keyframes | None]:
    try:
        with av.open(str(path)) as container:
            if not container.streams.video:
                raise VideoReadError(f"{path}: holds no video stream")
            stream = container.streams.video[0]
            declared = stream.frames
            height, width = stream.codec_context.height, stream.codec_context.width
            rate = stream.average_rate or stream.guessed_rate
            pts, keyframe = [], []
            for packet in container.demux(stream):
                if packet.size == 0:  # the demuxer's end-of-stream marker, not a frame
                    continue
                if packet.is_corrupt:
                    raise VideoReadError(
                        f"{path}: truncated or damaged (frame {len(pts)} is incomplete; the container "
                        f"declares {declared or 'an unknown number of'} frames); re-encode or re-copy the file"
                    )
                pts.append(packet.pts)
                keyframe.append(packet.is_keyframe)
    except VideoReadError:
        raise
    except (av.error.FFmpegError, OSError, ValueError) as e:
        reason = getattr(e, "strerror", None) or str(e)
        raise VideoReadError(f"{path}: not a readable video ({reason}); check the file or re-encode it") from None
    if not pts or not height or not width:
        raise VideoReadError(f"{path}: holds no decodable video frames")
    if not rate:
        raise VideoReadError(f"{path}: declares no frame rate; re-encode it with one (e.g. ffmpeg -i IN -r 60 OUT)")
    info = VideoInfo(num_frames=len(pts), fps=float(rate), height=height, width=width)
    return info, _keyframes(pts, keyframe)


def _keyframes(pts: list[int | None], keyframe: list[bool]) -> _Keyframes | None:
    """A keyframe's frame number is the rank of its pts among all packets' pts: packets come in
    decoding order, frames in presentation order. Without a pts on every packet, or with
    repeated ones, there is no such table and reads decode from the start."""
    if None in pts or len(set(pts)) != len(pts):
        return None
    order = np.argsort(np.asarray(pts, dtype=np.int64), kind="stable")
    rank = np.empty(len(pts), dtype=np.int64)
    rank[order] = np.arange(len(pts))
    at = sorted((int(rank[i]), pts[i]) for i, key in enumerate(keyframe) if key)
    if not at:
        return None
    return _Keyframes(numbers=np.array([n for n, _ in at]), pts=np.array([p for _, p in at]),
                      number_of_pts={p: n for n, p in at})


# ---------------------------------------------------------------- reading
def read_frames(path: str | Path, indices: Iterable[int], size: int | None = None) -> np.ndarray:
    """Decode the frames at `indices` (any order, repeats allowed) as uint8 `(n, H, W, 3)` RGB.

    With `size`, FFmpeg's scaler makes `(n, size, size, 3)` frames straight
    from the decoded picture (bilinear; its filter widens with the shrink
    factor, so shrinking does not alias); a non-square
    frame is stretched to the square rather than cropped, so instruments at
    the frame's edges stay in view. Raises `VideoReadError` for an unreadable
    file or an index outside `0 .. num_frames-1` of the verified frame count.
    """
    path = Path(path)
    indices = [int(i) for i in indices]
    if not indices:
        raise ValueError(f"{path}: read_frames needs at least one frame index")
    if size is not None and (int(size) != size or size < 1):
        raise ValueError(f"{path}: size must be a positive whole number of pixels, got {size}")
    info, keyframes = _probe(path)
    bad = [i for i in indices if not 0 <= i < info.num_frames]
    if bad:
        raise VideoReadError(
            f"{path}: frame {bad[0]} does not exist (the video has {info.num_frames} readable frames, 0..{info.num_frames - 1})"
        )
    unique = sorted(set(indices))
    cache = _FRAME_CACHE
    key = (_file_key(path), size) if cache else None  # no extra stat per read without a cache
    frames = cache.take(key, unique) if cache else {}
    missing = [i for i in unique if i not in frames]
    if missing:
        decoded = _decode(path, missing, info, keyframes, size)
        frames.update(zip(missing, decoded))
        if cache:
            cache.keep(key, dict(zip(missing, decoded)))
    return np.stack([frames[i] for i in indices])


def _decode(path: Path, unique: list[int], info: VideoInfo, keyframes: _Keyframes | None,
            size: int | None) -> np.ndarray:
    if video_backend() == "decord":
        batch = _decode_decord(path, unique, info, size)
    else:
        batch = _decode_pyav(path, unique, keyframes, size)
    height, width = (size, size) if size else (info.height, info.width)
    if batch.shape != (len(unique), height, width, 3):
        raise VideoReadError(f"{path}: got frames of shape {batch.shape[1:]} for a "
                             f"{info.width}x{info.height} video; the file is damaged")
    return batch


def _file_key(path: Path) -> tuple[str, int, int]:
    """A file's identity for the per-process caches: a file replaced since is a new key."""
    stat = path.stat()
    return str(path.resolve()), stat.st_size, stat.st_mtime_ns


# ---------------------------------------------------------------- decoded frames kept in memory
class _FrameCache:
    """Decoded frames by (file, size) and frame number, up to `max_bytes`; the least recently read video's
    frames are dropped first. Frames are copies, so a caller's array never aliases the cache."""

    def __init__(self, max_bytes: int):
        self.max_bytes = max_bytes
        self.bytes = 0
        self.videos: OrderedDict[tuple, dict[int, np.ndarray]] = OrderedDict()

    def take(self, key: tuple, unique: list[int]) -> dict[int, np.ndarray]:
        held = self.videos.get(key)
        if held is None:
            return {}
        self.videos.move_to_end(key)
        return {i: held[i] for i in unique if i in held}

    def keep(self, key: tuple, frames: dict[int, np.ndarray]) -> None:
        held = self.videos.setdefault(key, {})
        self.videos.move_to_end(key)
        for i, frame in frames.items():
            if i not in held:
                held[i] = frame.copy()
                self.bytes += frame.nbytes
        while self.bytes > self.max_bytes and self.videos:
            self.bytes -= sum(f.nbytes for f in self.videos.popitem(last=False)[1].values())


_FRAME_CACHE: _FrameCache | None = None


@contextmanager
def frame_cache(max_bytes: int):
    """Within the block, `read_frames` keeps decoded frames in this process, up to `max_bytes`, so that frames
    read again (the same clips over many training runs) are decoded once. Forked DataLoader workers inherit
    what the cache held when they started, but what they add is lost with them."""
    global _FRAME_CACHE
    before, _FRAME_CACHE = _FRAME_CACHE, _FrameCache(max_bytes)
    try:
        yield _FRAME_CACHE
    finally:
        _FRAME_CACHE = before


# ---------------------------------------------------------------- PyAV
# Open containers, per process, keyed like the probes (a file replaced since
# is opened afresh). A few suffice because a clip reads one video at a time;
# keeping them open saves re-reading the header and index per read.
# A process forked from one that holds containers (a DataLoader worker) must
# not use them (their file offsets are shared with the parent), so after a fork
# the inherited ones are parked, never used or closed, and the child opens its own.
_MAX_OPEN = 4
_CONTAINERS: OrderedDict[tuple[str, int, int], av.container.InputContainer] = OrderedDict()
_INHERITED: list = []


def _park_inherited() -> None:
    _INHERITED.extend(_CONTAINERS.values())
    _CONTAINERS.clear()
    _INHERITED.extend(_DECORD_READERS.values())
    _DECORD_READERS.clear()


os.register_at_fork(after_in_child=_park_inherited)


def _container(path: Path) -> av.container.InputContainer:
    key = _file_key(path)
    if key in _CONTAINERS:
        _CONTAINERS.move_to_end(key)
        return _CONTAINERS[key]
    container = av.open(key[0])
    # One decoding thread: DataLoader workers already decode in parallel.
    container.streams.video[0].thread_count = 1
    _CONTAINERS[key] = container
    while len(_CONTAINERS) > _MAX_OPEN:
        _CONTAINERS.popitem(last=False)[1].close()
    return container


def _decode_pyav(path: Path, unique: list[int], keyframes: _Keyframes | None, size: int | None) -> np.ndarray:
    """Per run of wanted frames: seek to the keyframe at or before its first frame, decode forward, convert
    only the wanted frames."""
    try:
        frames = _decode_runs(_container(path), unique, keyframes, size) if keyframes else None
        if frames is None:
            _log_once(path, "frame numbers cannot be told from its timestamps; decoding from the start (slower)")
            frames = _decode_from_start(path, unique, size)
    except (av.error.FFmpegError, OSError, ValueError) as e:
        _CONTAINERS.clear()  # the failing one among them is not reused
        raise VideoReadError(f"{path}: decoding failed ({e}); check the file or re-encode it") from None
    missing = [i for i in unique if i not in frames]
    if missing:
        raise VideoReadError(f"{path}: frame {missing[0]} could not be decoded; the file is damaged")
    return np.stack([frames[i] for i in unique])


def _decode_runs(container, unique: list[int], keyframes: _Keyframes, size: int | None) -> dict | None:
    """The wanted frames by number (None where frame numbers cannot be trusted; see `_decode_from_keyframe`).

    A new run starts where a keyframe lies between two wanted frames: seeking
    to it skips decoding the frames in between. In an intra-only stream
    (MJPEG) every frame is a keyframe, so a stride-6 clip decodes its 16
    frames, not the 91 they span."""
    runs = [[unique[0]]]
    for previous, number in zip(unique, unique[1:]):
        k = int(np.searchsorted(keyframes.numbers, number, side="right")) - 1
        if k >= 0 and keyframes.numbers[k] > previous + 1:  # a seek that skips no frame only costs a flush
            runs.append([number])
        else:
            runs[-1].append(number)
    frames = {}
    for run in runs:
        decoded = _decode_from_keyframe(container, run, keyframes, size)
        if decoded is None:
            return None
        frames.update(decoded)
    return frames


def _decode_from_keyframe(container, unique: list[int], keyframes: _Keyframes, size: int | None) -> dict | None:
    """The wanted frames by number, or None when the first frame after the seek is not a known
    keyframe at or before the first wanted one (then frame numbers cannot be trusted).

    Frames after the keyframe are numbered by counting: a decoder gives every
    frame, in presentation order, even where the container's pts are not
    presentation times (H.264 with B-frames in AVI)."""
    stream = container.streams.video[0]
    k = int(np.searchsorted(keyframes.numbers, unique[0], side="right")) - 1
    container.seek(int(keyframes.pts[max(k, 0)]), backward=True, any_frame=False, stream=stream)
    wanted, frames, number = set(unique), {}, None
    for frame in container.decode(stream):
        if number is None:
            number = keyframes.number_of_pts.get(frame.pts) if frame.key_frame else None
            if number is None or number > unique[0]:
                return None
        else:
            number += 1  # a decoder gives frames in presentation order
        if number in wanted:
            frames[number] = _rgb(frame, size)
        if number >= unique[-1]:
            break
    return frames


def _decode_from_start(path: Path, unique: list[int], size: int | None) -> dict:
    wanted, frames = set(unique), {}
    with av.open(str(path)) as container:
        for number, frame in enumerate(container.decode(video=0)):
            if number in wanted:
                frames[number] = _rgb(frame, size)
            if number >= unique[-1]:
                break
    return frames


# One scaling thread: PyAV 17 made libswscale's slice threads the default (threads=0, one per core). A
# DataLoader worker forked while the parent's scaler held them hangs for ever in pthread_cond_destroy when its
# own scaler frees them (seen in the suite, issue 30); the frames here are small, and the workers are the
# parallelism. Older PyAV has no such threads and no `threads` argument.
_SCALER = {"threads": 1} if int(av.__version__.split(".")[0]) >= 17 else {}


def _rgb(frame: av.VideoFrame, size: int | None) -> np.ndarray:
    if size is None:
        return frame.to_ndarray(format="rgb24", **_SCALER)
    # BILINEAR rather than AREA: faster at large shrink factors, and antialiased all the same.
    return frame.to_ndarray(width=size, height=size, format="rgb24", interpolation="BILINEAR", **_SCALER)


_LOGGED: set[str] = set()


def _log_once(path: Path, message: str) -> None:
    if str(path) not in _LOGGED:
        _LOGGED.add(str(path))
        log.warning("%s: %s", path, message)


# ---------------------------------------------------------------- decord
# Readers per (file, size), parked after a fork like PyAV's containers (see
# above): decord's destructor joins decoder threads that exist only in the
# parent and would abort the child.
_DECORD_READERS: OrderedDict[tuple[str, int | None], object] = OrderedDict()


def _decode_decord(path: Path, unique: list[int], info: VideoInfo, size: int | None) -> np.ndarray:
    import decord

    reader = _decord_reader(path, size)
    if unique[-1] >= len(reader):  # never ask decord for a frame it does not count (dmlc/decord#373)
        raise VideoReadError(f"{path}: frame {unique[-1]} does not exist for decord (it counts {len(reader)} "
                             f"of the {info.num_frames} frames); use the pyav video backend")
    try:
        return reader.get_batch(unique).asnumpy()
    except (decord.DECORDError, RuntimeError) as e:
        raise VideoReadError(f"{path}: decord cannot decode it ({_decord_reason(e)}); use the pyav video backend") from None


def _decord_reader(path: Path, size: int | None):
    import decord

    key = (str(path.resolve()), size)
    if key in _DECORD_READERS:
        _DECORD_READERS.move_to_end(key)
        return _DECORD_READERS[key]
    # decord's bundled FFmpeg prints decoder chatter ("overread 8") for files we reject with a clear error.
    decord.logging.set_level(decord.logging.QUIET)
    scale = {"width": size, "height": size} if size else {}
    try:
        reader = decord.VideoReader(key[0], ctx=decord.cpu(0), num_threads=1, **scale)
    except (decord.DECORDError, RuntimeError) as e:
        raise VideoReadError(f"{path}: decord cannot open it ({_decord_reason(e)}); use the pyav video backend") from None
    _DECORD_READERS[key] = reader
    while len(_DECORD_READERS) > _MAX_OPEN:
        _DECORD_READERS.popitem(last=False)
    return reader


def _decord_reason(error: Exception) -> str:
    """decord's message without its '[time] source.cc:line:' prefix and stack trace."""
    lines = str(error).strip().splitlines()
    return re.sub(r"^\[[\d:]+\]\s+\S+:\d+:\s*", "", lines[0]) if lines else type(error).__name__


# ---------------------------------------------------------------- encoding
def write_video(path: str | Path, frames: np.ndarray, fps: float) -> Path:
    """Write uint8 RGB frames `(n, H, W, 3)` atomically; the suffix picks the format.

    `.mkv`: FFV1 in Matroska, lossless RGB: decoded, the frames are the ones
    given, bit for bit. `.avi`: MJPEG at a constant frame rate, full-resolution
    chroma (yuvj444p), so tiny frames keep their colours (the bundled dataset's
    format). `.mp4`: H.264 yuv420p (MPEG-4 Part 2 where FFmpeg lacks libx264); needs
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
    if container_format == "mkv":
        codec, pix_fmt, options = "ffv1", "bgr0", {}  # FFV1 takes RGB as bgr0: lossless, no colour conversion
    elif container_format == "avi":
        codec, pix_fmt, options = "mjpeg", "yuvj444p", {}
    elif "libx264" in av.codecs_available:
        # Without macroblock-tree rate control, which makes libx264 encode the same frames differently from
        # one run to the next at most frame widths (benchmarks/NOTES.md).
        codec, pix_fmt, options = "libx264", "yuv420p", {"crf": "18", "preset": "medium", "x264-params": "no-mbtree=1"}
    else:
        codec, pix_fmt, options = "mpeg4", "yuv420p", {}
    # The temp file's name ends in .tmp, so the container format is named explicitly.
    with av.open(str(tmp), mode="w", format=MUXERS.get(container_format, container_format)) as container:
        if container_format == "mkv":  # else Matroska writes a random segment id: same frames, other bytes
            container.flags |= av.container.Flags.bitexact.value
        stream = container.add_stream(codec, rate=rate, options=options)
        stream.width, stream.height = frames.shape[2], frames.shape[1]
        stream.pix_fmt = pix_fmt
        if codec == "mjpeg":
            stream.codec_context.qmin, stream.codec_context.qmax = 1, 3  # near-lossless: the data are tiny
        elif codec == "mpeg4":
            stream.codec_context.bit_rate = 8 * frames[0].size * int(round(fps))
        else:
            stream.codec_context.thread_count = 1  # the same bytes whatever the core count
        for frame in frames:
            container.mux(stream.encode(av.VideoFrame.from_ndarray(frame, format="rgb24")))
        container.mux(stream.encode())


def _write_gif(tmp: Path, frames: np.ndarray, fps: float) -> None:
    from PIL import Image

    images = [Image.fromarray(frame) for frame in frames]
    images[0].save(tmp, format="GIF", save_all=True, append_images=images[1:],
                   duration=max(10, round(1000 / fps)), loop=0, disposal=1)
