"""The dataset index: which frames of which video form a clip of which class.

A dataset is a list of `ClipRecord`s (video path, frame range, class id),
built once from one of two layouts:

* **SAR-RARP50**: `root/video_*/video_left.avi` + `root/video_*/action_discrete.txt`,
  lines `frame,class` (SAR-RARP50 labels every 6th frame); a label holds until
  the next labelled frame, the last one for one more label interval (at most
  to the end of the video). `video_xx_1` and `video_xx_2`, the two halves of
  one recording in SAR-RARP50, share the video id `video_xx`.
* **CSV**: a folder of videos and a CSV (default `root/labels.csv`) with the
  header `video,start_frame,end_frame,class`: `video` relative to `root`,
  frames `start_frame` (inclusive) to `end_frame` (exclusive) show `class`,
  given as an id (`7`), a code (`G7`) or a name (`returning/dropping the needle`).

A clip is `clip_length` frames, a stride apart, centred on a frame of
the grid 0, `clip_step`, 2·`clip_step`, … (SAR-RARP50's labelled frames for
the default step of 6; in the CSV layout the grid starts at each segment's
first clip, so a segment exactly one clip long gives that clip), kept only when the whole clip lies inside one labelled
segment, so it shows one action. Its frames are `range(start, end, stride)`.

The stride comes from the clip rate: with `clip_fps` each video's stride is
`round(its fps / clip_fps)`, so a clip spans the same time in 30 and 60 fps
recordings (SAR-RARP50: 60 fps, labels at 10 Hz, so `clip_fps=10` gives
stride 6 and 16 frames span 1.6 s). Without it, every video uses
`frame_stride`.

Bad input never stops the rest of the dataset from loading: an unreadable or
truncated video, labels past the end of a video, an unknown class, a segment
too short for a clip, each becomes one message naming the file, which is
appended to `VideoIndex.warnings` and logged with `logging` (logger
`survgen.data`). Only a dataset that yields no clip at all raises `DatasetError`.
"""

from __future__ import annotations

import csv
import logging
import random
import re
from collections import defaultdict
from dataclasses import dataclass, field, replace
from pathlib import Path

from survgen.classes import CLASSES_FILE, ClassVocabulary, UnknownClassError
from survgen.data.video import VIDEO_SUFFIXES, VideoInfo, VideoReadError, probe_video

log = logging.getLogger("survgen.data")

LAYOUTS = ("auto", "sar-rarp50", "csv")
SAR_RARP50_VIDEO = "video_left.avi"
SAR_RARP50_LABELS = "action_discrete.txt"
DEFAULT_LABELS_CSV = "labels.csv"
CSV_COLUMNS = ("video", "start_frame", "end_frame", "class")
CLIP_FPS = 10.0  # the default clip rate: SAR-RARP50's label rate, which its recognisers work at


class DatasetError(ValueError):
    """A dataset folder that yields no usable clip, or options that cannot make one."""


@dataclass(frozen=True)
class ClipRecord:
    video: Path
    video_id: str  # the recording: `video_xx_1` and `video_xx_2` share `video_xx`
    start: int
    end: int  # exclusive
    class_id: int
    stride: int = 1


@dataclass(frozen=True)
class Segment:
    """A labelled frame range `[start, end)` of one video showing one class."""

    video: Path
    video_id: str
    start: int
    end: int
    class_id: int

    def __len__(self) -> int:
        return self.end - self.start


@dataclass
class VideoIndex:
    root: Path
    vocabulary: ClassVocabulary
    clips: list[ClipRecord]
    frame_stride: int = 1
    clip_length: int = 16
    warnings: list[str] = field(default_factory=list)
    segments: list[Segment] = field(default_factory=list)
    videos: dict[Path, VideoInfo] = field(default_factory=dict)
    layout: str = "sar-rarp50"
    clip_fps: float | None = None

    def __len__(self) -> int:
        return len(self.clips)

    def frames(self, clip: ClipRecord) -> range:
        """The frame indices of a clip: exactly `clip_length` of them."""
        return range(clip.start, clip.end, clip.stride)

    def stride_of(self, video: Path) -> int:
        """The frame stride of `video`'s clips: from the clip rate, or `frame_stride` without one."""
        return clip_stride(self.videos[video].fps, self.clip_fps) if self.clip_fps else self.frame_stride

    def class_counts(self) -> dict[int, int]:
        """Clips per class id, every class of the vocabulary present (zeros included)."""
        counts = dict.fromkeys(range(len(self.vocabulary)), 0)
        for clip in self.clips:
            counts[clip.class_id] += 1
        return counts

    def video_ids(self) -> list[str]:
        return sorted({clip.video_id for clip in self.clips}, key=_natural_key)

    def for_classes(self, ids) -> "VideoIndex":
        """The clips (and segments) of the given classes (ids, codes or names)."""
        wanted = {self.vocabulary.resolve(i) for i in ids}
        return replace(self, clips=[c for c in self.clips if c.class_id in wanted],
                       segments=[s for s in self.segments if s.class_id in wanted], warnings=list(self.warnings))

    def for_video_ids(self, video_ids) -> "VideoIndex":
        """The clips, segments and videos of the given recordings."""
        keep = set(video_ids)
        id_of = {s.video: s.video_id for s in self.segments}
        return replace(self, clips=[c for c in self.clips if c.video_id in keep],
                       segments=[s for s in self.segments if s.video_id in keep],
                       videos={p: i for p, i in self.videos.items() if id_of.get(p) in keep},
                       warnings=list(self.warnings))

    def split_by_video(self, val_fraction: float = 0.2, seed: int = 0) -> tuple["VideoIndex", "VideoIndex"]:
        """Split by recording (`video_id`), never by clip, so no video is in both parts.

        About `val_fraction` of the recordings go to validation, chosen in a
        seeded shuffle, skipping a recording when it holds the last training
        clips of a class (while other recordings can still fill the quota).
        """
        if not 0.0 <= val_fraction < 1.0:
            raise ValueError(f"val_fraction must be in [0, 1), got {val_fraction}")
        ids = self.video_ids()
        n_val = round(val_fraction * len(ids))
        if val_fraction > 0 and len(ids) >= 2:
            n_val = min(max(n_val, 1), len(ids) - 1)
        order = list(ids)
        random.Random(seed).shuffle(order)
        clips_of = defaultdict(lambda: defaultdict(int))  # video_id -> class -> clips
        for clip in self.clips:
            clips_of[clip.video_id][clip.class_id] += 1
        in_train = self.class_counts()
        val: list[str] = []
        for vid in order:
            if len(val) == n_val:
                break
            if all(in_train[c] > n for c, n in clips_of[vid].items()):
                val.append(vid)
                for c, n in clips_of[vid].items():
                    in_train[c] -= n
        for vid in order:  # quota not met without emptying a class from train: fill anyway
            if len(val) == n_val:
                break
            if vid not in val:
                val.append(vid)
        val_set = set(val)
        train_ids = [v for v in ids if v not in val_set]
        return self.for_video_ids(train_ids), self.for_video_ids(val)


def video_id(name: str) -> str:
    """The recording a video belongs to: SAR-RARP50's `video_41_1` / `video_41_2` -> `video_41`."""
    match = re.fullmatch(r"(video_\d+)_\d+", name)
    return match.group(1) if match else name


def clip_stride(video_fps: float, clip_fps: float) -> int:
    """Frames between a clip's frames so that they come at about `clip_fps` (at least 1)."""
    return max(1, round(video_fps / clip_fps))


def _natural_key(text: str):
    return [int(part) if part.isdigit() else part for part in re.split(r"(\d+)", str(text))]


# ---------------------------------------------------------------- building
class _Warnings(list):
    """Collects warnings for the index and logs each one as it arrives."""

    def add(self, message: str) -> None:
        self.append(message)
        log.warning(message)


def build_index(
    root: str | Path,
    *,
    clip_length: int = 16,
    clip_fps: float | None = None,
    frame_stride: int = 1,
    clip_step: int = 6,
    layout: str = "auto",
    labels_csv: str | Path | None = None,
    vocabulary: ClassVocabulary | None = None,
) -> VideoIndex:
    """Index the clips of the dataset at `root` (see the module docstring for layouts and rules)."""
    root = Path(root)
    for name, value in (("clip_length", clip_length), ("frame_stride", frame_stride), ("clip_step", clip_step)):
        if int(value) != value or value < 1:
            raise DatasetError(f"{name} must be a positive whole number, got {value}")
    if clip_fps is not None and not clip_fps > 0:
        raise DatasetError(f"clip_fps must be a positive frame rate, got {clip_fps}")
    if layout not in LAYOUTS:
        raise DatasetError(f"unknown layout {layout!r}; use one of {', '.join(LAYOUTS)}")
    if not root.is_dir():
        raise DatasetError(f"{root}: {'is a file' if root.exists() else 'no such folder'}; give the dataset root "
                           "folder (e.g. one made by `survgen data synth --out DIR`)")
    vocabulary = _vocabulary(root, vocabulary)
    if layout == "auto":
        layout = _detect_layout(root, labels_csv)
    warnings = _Warnings()
    if layout == "sar-rarp50":
        videos, segments = _read_sar_rarp50(root, vocabulary, warnings)
        where = f"{root}/video_*/{{{SAR_RARP50_VIDEO},{SAR_RARP50_LABELS}}}"
    else:
        csv_path = Path(labels_csv) if labels_csv is not None else root / DEFAULT_LABELS_CSV
        videos, segments = _read_csv_layout(root, csv_path, vocabulary, warnings)
        where = f"{csv_path} (videos under {root})"

    strides = {video: _stride(video, info, clip_fps, frame_stride, warnings) for video, info in videos.items()}
    clips = _clips(videos, segments, clip_length, strides, clip_step, vocabulary, warnings,
                   grid_from_segment_start=layout == "csv")
    if not clips:
        detail = ""
        if warnings:
            more = f" | … {len(warnings) - 3} more" if len(warnings) > 3 else ""
            detail = f"; problems: {' | '.join(warnings[:3])}{more}"
        rate = f"clip rate {clip_fps:g} fps" if clip_fps else f"frame stride {frame_stride}"
        raise DatasetError(
            f"{root}: no {clip_length}-frame clips ({rate}) found in the {layout} layout, looked at {where}{detail}"
        )
    return VideoIndex(root=root, vocabulary=vocabulary, clips=clips, frame_stride=frame_stride,
                      clip_length=clip_length, warnings=list(warnings), segments=segments,
                      videos=videos, layout=layout, clip_fps=clip_fps)


def _stride(video: Path, info: VideoInfo, clip_fps: float | None, frame_stride: int, warnings: _Warnings) -> int:
    if clip_fps is None:
        return frame_stride
    stride = clip_stride(info.fps, clip_fps)
    actual = info.fps / stride
    if abs(actual - clip_fps) > 0.05 * clip_fps:
        warnings.add(f"{video}: at {info.fps:g} fps a clip rate of {clip_fps:g} fps is not a whole stride; "
                     f"its clips take every {stride}. frame ({actual:.3g} fps)")
    return stride


def _detect_layout(root: Path, labels_csv) -> str:
    if labels_csv is not None:
        return "csv"
    for folder in root.glob("video_*"):
        if folder.is_dir() and ((folder / SAR_RARP50_LABELS).exists() or (folder / SAR_RARP50_VIDEO).exists()):
            return "sar-rarp50"
    if (root / DEFAULT_LABELS_CSV).exists():
        return "csv"
    raise DatasetError(
        f"{root}: found no dataset. Expected the SAR-RARP50 layout (video_*/{SAR_RARP50_VIDEO} + "
        f"video_*/{SAR_RARP50_LABELS}) or videos with a {DEFAULT_LABELS_CSV} "
        f"(header: {','.join(CSV_COLUMNS)}; or pass labels_csv / --labels-csv)"
    )


def _probe(path: Path, warnings: _Warnings) -> VideoInfo | None:
    try:
        return probe_video(path)
    except VideoReadError as e:
        warnings.add(f"{e}; video skipped")
        return None


def _vocabulary(root: Path, given: ClassVocabulary | None) -> ClassVocabulary:
    """The dataset's own classes.json, or `given` (a model's) when it has none or the same class list."""
    own = ClassVocabulary.for_folder(root) if (root / CLASSES_FILE).exists() else None
    if given is not None and own is not None and own.names != given.names:
        raise DatasetError(f"{root / CLASSES_FILE}: lists the classes {list(own.names)}, but they are read here as "
                           f"{list(given.names)} (the model's); class ids would mean other actions: use a dataset "
                           "labelled with the model's classes")
    return given or own or ClassVocabulary()


def _read_sar_rarp50(root: Path, vocabulary: ClassVocabulary, warnings: _Warnings):
    videos: dict[Path, VideoInfo] = {}
    segments: list[Segment] = []
    folders = sorted((f for f in root.glob("video_*") if f.is_dir()), key=lambda f: _natural_key(f.name))
    for folder in folders:
        video, labels = folder / SAR_RARP50_VIDEO, folder / SAR_RARP50_LABELS
        if not video.exists():
            warnings.add(f"{folder}: no {SAR_RARP50_VIDEO}; folder skipped")
            continue
        if not labels.exists():
            warnings.add(f"{folder}: no {SAR_RARP50_LABELS}; folder skipped")
            continue
        info = _probe(video, warnings)
        if info is None:
            continue
        videos[video] = info
        points = _read_frame_labels(labels, vocabulary, warnings)
        late = [f for f, _ in points if f >= info.num_frames]
        if late:
            warnings.add(
                f"{labels}: {len(late)} label(s) at frames {late[0]}..{late[-1]} lie past the end of "
                f"{video.name} ({info.num_frames} frames); those labels dropped"
            )
            points = [(f, c) for f, c in points if f < info.num_frames]
        segments += _segments_from_points(video, video_id(folder.name), points, info.num_frames)
    return videos, segments


def _read_frame_labels(path: Path, vocabulary: ClassVocabulary, warnings: _Warnings) -> list[tuple[int, int | None]]:
    """`(frame, class_id)` per line; `None` marks a line whose class is unknown (a gap in the labels)."""
    points: list[tuple[int, int | None]] = []
    try:
        text = path.read_text()
    except (OSError, UnicodeDecodeError) as e:
        warnings.add(f"{path}: cannot read ({e}); folder skipped")
        return points
    for number, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        fields = [f.strip() for f in line.split(",")]
        if len(fields) != 2 or not fields[0].lstrip("-").isdigit():
            if not (number == 1 and not fields[0].isdigit()):  # tolerate a header line
                warnings.add(f"{path}:{number}: expected 'frame,class', got {line.strip()!r}; line skipped")
            continue
        frame = int(fields[0])
        if frame < 0 or (points and frame <= points[-1][0]):
            warnings.add(f"{path}:{number}: frame {frame} is negative or not after the previous line's; line skipped")
            continue
        try:
            points.append((frame, _resolve(vocabulary, fields[1])))
        except UnknownClassError as e:
            warnings.add(f"{path}:{number}: {e}; line skipped")
            points.append((frame, None))
    return points


def _resolve(vocabulary: ClassVocabulary, token: str) -> int:
    """A class from a label file: a number is an id (`7`, `07`), anything else a code or a name."""
    return vocabulary.resolve(int(token) if token.isdigit() else token)


def _segments_from_points(video: Path, vid: str, points: list[tuple[int, int | None]], num_frames: int) -> list[Segment]:
    """Runs of one class from per-frame labels; each label holds until the next labelled frame."""
    if not points:
        return []
    gaps = sorted(b[0] - a[0] for a, b in zip(points, points[1:]))
    last_holds = gaps[len(gaps) // 2] if gaps else num_frames
    bounds = [f for f, _ in points[1:]] + [min(num_frames, points[-1][0] + last_holds)]
    segments: list[Segment] = []
    for (start, class_id), end in zip(points, bounds):
        if class_id is None:
            continue
        if segments and segments[-1].class_id == class_id and segments[-1].end == start:
            segments[-1] = replace(segments[-1], end=end)
        else:
            segments.append(Segment(video, vid, start, end, class_id))
    return segments


def _read_csv_layout(root: Path, csv_path: Path, vocabulary: ClassVocabulary, warnings: _Warnings):
    wanted = _csv_rows_by_video(root, csv_path, _read_csv_rows(csv_path), vocabulary, warnings)
    videos: dict[Path, VideoInfo] = {}
    segments: list[Segment] = []
    for video in sorted(wanted, key=lambda p: _natural_key(str(p))):
        if video.suffix.lower() not in VIDEO_SUFFIXES:
            warnings.add(f"{csv_path}: {video} does not look like a video ({', '.join(VIDEO_SUFFIXES)}); trying anyway")
        info = _probe(video, warnings)
        if info is None:
            continue
        videos[video] = info
        try:
            rel = video.relative_to(root)
        except ValueError:
            rel = video
        vid = str(rel.with_name(video_id(rel.stem)))
        segments += _csv_segments(csv_path, video, vid, info, wanted[video], warnings)
    return videos, segments


def _read_csv_rows(csv_path: Path) -> list[tuple[int, dict[str, str]]]:
    """`(line number, {column: stripped value})` per row; raises `DatasetError` for a missing or unreadable CSV."""
    if not csv_path.is_file():
        raise DatasetError(f"{csv_path}: no such labels CSV; expected one with the header {','.join(CSV_COLUMNS)}")
    try:
        with csv_path.open(newline="") as f:
            reader = csv.DictReader(f)
            header = [h.strip() for h in (reader.fieldnames or [])]
            missing = [c for c in CSV_COLUMNS if c not in header]
            if missing:
                raise DatasetError(
                    f"{csv_path}: header {','.join(header) or '(empty)'} lacks {', '.join(missing)}; "
                    f"the first line must be {','.join(CSV_COLUMNS)}"
                )
            return [(reader.line_num, {k.strip(): (v or "").strip() for k, v in row.items() if k}) for row in reader]
    except (OSError, UnicodeDecodeError, csv.Error) as e:
        raise DatasetError(f"{csv_path}: cannot read ({e})") from None


def _csv_rows_by_video(root: Path, csv_path: Path, rows: list[tuple[int, dict[str, str]]],
                       vocabulary: ClassVocabulary, warnings: _Warnings) -> dict[Path, list[tuple[int, int, int, int]]]:
    """The valid rows as `(line, start, end, class_id)` per video path; each invalid row becomes a warning."""
    wanted: dict[Path, list[tuple[int, int, int, int]]] = defaultdict(list)
    for line, row in rows:
        try:
            start, end = int(row["start_frame"]), int(row["end_frame"])
        except ValueError:
            warnings.add(f"{csv_path}:{line}: start_frame/end_frame must be whole numbers, got "
                         f"{row['start_frame']!r}/{row['end_frame']!r}; row skipped")
            continue
        if not 0 <= start < end:
            warnings.add(f"{csv_path}:{line}: needs 0 <= start_frame < end_frame (end is exclusive), got {start},{end}; row skipped")
            continue
        try:
            class_id = _resolve(vocabulary, row["class"])
        except UnknownClassError as e:
            warnings.add(f"{csv_path}:{line}: {e}; row skipped")
            continue
        video = Path(row["video"])
        wanted[video if video.is_absolute() else root / video].append((line, start, end, class_id))
    return wanted


def _csv_segments(csv_path: Path, video: Path, vid: str, info: VideoInfo, rows: list[tuple[int, int, int, int]],
                  warnings: _Warnings) -> list[Segment]:
    """One video's segments from its rows, in frame order: rows past its end dropped or cut, overlaps skipped."""
    segments: list[Segment] = []
    taken_until = -1
    for line, start, end, class_id in sorted(rows, key=lambda r: r[1]):
        if start >= info.num_frames:
            warnings.add(f"{csv_path}:{line}: start_frame {start} lies past the end of {video.name} "
                         f"({info.num_frames} frames); row dropped")
            continue
        if end > info.num_frames:
            warnings.add(f"{csv_path}:{line}: end_frame {end} lies past the end of {video.name} "
                         f"({info.num_frames} frames); cut to {info.num_frames}")
            end = info.num_frames
        if start < taken_until:
            warnings.add(f"{csv_path}:{line}: frames {start}-{end} overlap an earlier row of {video.name}; row skipped")
            continue
        segments.append(Segment(video, vid, start, end, class_id))
        taken_until = end
    return segments


def _clips(videos: dict[Path, VideoInfo], segments: list[Segment], clip_length: int, strides: dict[Path, int],
           clip_step: int, vocabulary: ClassVocabulary, warnings: _Warnings, *,
           grid_from_segment_start: bool) -> list[ClipRecord]:
    clips: list[ClipRecord] = []
    by_video: dict[Path, list[Segment]] = defaultdict(list)
    for segment in segments:
        by_video[segment.video].append(segment)
    for video, info in videos.items():
        stride = strides[video]
        span = (clip_length - 1) * stride + 1  # frames from a clip's first to its last, inclusive
        before = (clip_length // 2) * stride  # frames from a clip's start to its centre
        made, short = 0, []
        for segment in by_video.get(video, []):
            if grid_from_segment_start:  # CSV segments are arbitrary: the first clip starts with the segment
                first_centre = segment.start + before
            else:  # SAR-RARP50: centres on the labelled frames 0, 6, 12, ...
                first_centre = -(-(segment.start + before) // clip_step) * clip_step
            centre, n = first_centre, 0
            while centre - before + span <= min(segment.end, info.num_frames):
                start = centre - before
                clips.append(ClipRecord(video, segment.video_id, start, start + span, segment.class_id, stride))
                centre += clip_step
                n += 1
            made += n
            if n == 0:
                short.append(segment)
        if not by_video.get(video):
            warnings.add(f"{video}: no labelled frames; video skipped")
        elif made == 0:
            warnings.add(f"{video}: no labelled segment is long enough for one {clip_length}-frame clip "
                         f"(stride {stride}: {span} frames; the video has {info.num_frames}); video gives no clips")
        elif short:
            listed = ", ".join(f"{vocabulary.code(s.class_id)} at frames {s.start}-{s.end}" for s in short[:3])
            more = f" and {len(short) - 3} more" if len(short) > 3 else ""
            warnings.add(f"{video}: {len(short)} labelled segment(s) too short for a {span}-frame clip "
                         f"({listed}{more}); they give no clips")
    return clips
