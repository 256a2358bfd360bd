"""The bundled procedural dataset: a seeded, class-imbalanced cartoon of robotic suturing.

`synthesize_dataset` writes videos in the SAR-RARP50 layout
(`video_XX/video_left.avi` + `video_XX/action_discrete.txt`, a `frame,class`
line for every 6th frame), so everything downstream reads it through the same
loader as real data. Each video is a run of action segments (30-60 frames) on
one tissue scene: pink tissue with vessels, a sutured incision, two metallic
instruments entering from the frame edges, a curved needle and a thread.

The eight SAR-RARP50 actions differ in what moves, so a 16-frame clip of each
carries the class in its motion, not only in a still frame:

    G0 other                 instruments drift slowly, nothing happens
    G1 picking up the needle grasper descends with open jaws onto a lying needle, closes, lifts it
    G2 positioning the tip   held needle rocks back and forth next to the incision
    G3 pushing through       needle turns about its centre; its tip sinks into the tissue
                             and reappears across the incision
    G4 pulling out           needle slides out of the tissue and is pulled away, the thread taut behind it
    G5 tying a knot          both instruments circle each other, a thread loop wound around one
    G6 cutting the suture    scissors snap open and shut over a thread held up; it splits and the ends part
    G7 returning/dropping    jaws open, the needle tumbles away out of view, the grasper withdraws

The videos play at 10 fps, SAR-RARP50's label rate and the default clip rate
(`CLIP_FPS`), so clips take every frame and 16 frames span 1.6 s, as a clip of
a 60 fps recording does at stride 6.

Segments are dealt so that G1, G6 and G7 are rare (4 % of segments each, or
`rare_share`) and G2-G4 common, as in SAR-RARP50; every class gets at least one
segment. The downstream experiment uses `rare_share` both ways: a real set as
rare as SAR-RARP50's G6 and G7 (a few clips each), and held-out sets rich in
the rare classes for its test and its positive control.

Next to each video the generator knows where its cues are:
`video_left.cue_masks.npz` (`cue_mask_path`) marks, per frame, the pixels of the needle and the moving
thread that nothing in front hides. The autoencoder weights and scores its
reconstruction on them (`survgen train-vae`): they are a few per cent of a
frame, and the thin, coloured strokes the rare classes are about.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from fractions import Fraction
from pathlib import Path
from typing import Callable

import av
import numpy as np
from PIL import Image, ImageDraw, ImageFilter

from survgen.classes import SAR_RARP50_ACTIONS
from survgen.data.index import CLIP_FPS
from survgen.data.video import write_video
from survgen import __version__
from survgen.io import OutputPathError, atomic_folder, atomic_path, check_replaceable, output_folder, write_json_atomic

LABEL_STEP = 6  # SAR-RARP50 labels every 6th frame (10 Hz of 60 fps video)
SEGMENT_LENGTHS = tuple(range(30, 61, LABEL_STEP))  # frames; each holds several 16-frame clips
SEGMENT_SHARE = (0.14, 0.04, 0.22, 0.24, 0.20, 0.08, 0.04, 0.04)  # G0..G7, SAR-RARP50-like imbalance
RARE = (1, 6, 7)  # G1, G6, G7: the classes SurV-Gen generates
SUPERSAMPLE = 2  # draw at 2x and average down: antialiased edges without a blur pass


# ---------------------------------------------------------------- the dataset
DATASET_MARKER = "survgen_dataset.json"  # what `--overwrite` checks before it replaces a folder


def synthesize_dataset(
    out: str | Path,
    num_videos: int = 36,
    size: int = 64,
    seed: int = 0,
    fps: float = CLIP_FPS,
    frames_per_video: int = 270,
    *,
    rare_share: float | None = None,
    overwrite: bool = False,
    progress: Callable[[int, int], None] | None = None,
) -> Path:
    """Write the procedural dataset to `out` (replaced whole, atomically) and return `out`.

    `frames_per_video` is approximate: each video holds about
    `frames_per_video / 45` segments of 30-60 frames. `progress(done, total)`
    is called after each video. `rare_share`: the share of segments of each of
    G1, G6 and G7 (default 0.04), the other classes keeping their proportions.
    Refuses a non-empty `out`; with `overwrite`,
    replaces only a dataset this function wrote (it holds `DATASET_MARKER`).
    """
    out = Path(out)
    if num_videos < 1:
        raise ValueError(f"num_videos must be at least 1, got {num_videos}")
    if size < 16:
        raise ValueError(f"size must be at least 16 pixels, got {size}")
    if overwrite:
        check_replaceable(out, option="--out", marker=DATASET_MARKER, kind="synthetic dataset",
                          written=["video_*", "README.txt", DATASET_MARKER])
    elif output_folder(out, option="--out", marker=DATASET_MARKER):
        raise OutputPathError(f"--out {out}: holds a synthetic dataset already; pass --overwrite to replace it, "
                              "or choose a new --out")
    shares = segment_shares(rare_share)
    rng = np.random.default_rng(seed)
    plan = plan_segments(num_videos, frames_per_video, rng, shares)
    with atomic_folder(out) as tmp:
        for v, segments in enumerate(plan):
            video_rng = np.random.default_rng([seed, v])
            frames, masks, labels = render_video(segments, size, video_rng)
            folder = tmp / f"video_{v + 1:02d}"
            folder.mkdir()
            write_video(folder / "video_left.avi", frames, fps)
            np.savez_compressed(cue_mask_path(folder / "video_left.avi"), masks=masks)
            (folder / "action_discrete.txt").write_text("".join(f"{f},{c}\n" for f, c in labels))
            if progress is not None:
                progress(v + 1, len(plan))
        (tmp / "README.txt").write_text(_readme(num_videos, size, seed, fps, plan))
        write_json_atomic(tmp / DATASET_MARKER, {"kind": "synthetic dataset", "survgen_version": __version__,
                                                 "num_videos": num_videos, "size": size, "seed": seed, "fps": fps,
                                                 "segment_share": list(shares)})
    return out


def segment_shares(rare_share: float | None = None) -> tuple[float, ...]:
    """`SEGMENT_SHARE` with each rare class at `rare_share` and the others scaled to fill the rest."""
    if rare_share is None:
        return SEGMENT_SHARE
    if not 0 < rare_share < 1 / len(RARE):
        raise ValueError(f"rare_share must be in (0, {1 / len(RARE):.3f}): the share of each of G1, G6 and G7, "
                         f"got {rare_share}")
    common = 1 - sum(SEGMENT_SHARE[c] for c in RARE)
    scale = (1 - len(RARE) * rare_share) / common
    return tuple(rare_share if c in RARE else share * scale for c, share in enumerate(SEGMENT_SHARE))


def plan_segments(num_videos: int, frames_per_video: int, rng: np.random.Generator,
                  shares: tuple[float, ...] = SEGMENT_SHARE) -> list[list[tuple[int, int]]]:
    """Per video, its segments as `(class_id, num_frames)`: class counts follow `shares`.

    Counts are allotted by largest remainder (at least one segment per class),
    then shuffled across videos with no class twice in a row within a video,
    so the imbalance is exact rather than left to chance.
    """
    per_video = max(1, round(frames_per_video / np.mean(SEGMENT_LENGTHS)))
    total = num_videos * per_video
    num_classes = len(shares)
    if total < num_classes:
        raise ValueError(
            f"{num_videos} videos of about {frames_per_video} frames hold {total} segments, fewer than the "
            f"{num_classes} classes; raise num_videos or frames_per_video"
        )
    counts = np.ones(num_classes, dtype=int)
    share = np.asarray(shares) * (total - num_classes)
    counts += np.floor(share).astype(int)
    for c in np.argsort(-(share - np.floor(share)), kind="stable")[: total - counts.sum()]:
        counts[c] += 1
    classes = rng.permutation(np.repeat(np.arange(num_classes), counts))
    # Repair "same class twice in a row" inside a video by swapping with a random other slot.
    for _ in range(20):
        clashes = [i for i in range(1, total) if i % per_video and classes[i] == classes[i - 1]]
        if not clashes:
            break
        for i in clashes:
            j = int(rng.integers(total))
            classes[i], classes[j] = classes[j], classes[i]
    lengths = rng.choice(SEGMENT_LENGTHS, size=total)
    return [
        [(int(classes[v * per_video + k]), int(lengths[v * per_video + k])) for k in range(per_video)]
        for v in range(num_videos)
    ]


def _readme(num_videos: int, size: int, seed: int, fps: float, plan) -> str:
    counts = np.bincount([c for video in plan for c, _ in video], minlength=len(SAR_RARP50_ACTIONS))
    lines = [
        "survgen procedural suturing dataset (synthetic, for tests and the tiny preset).",
        f"Made by `survgen data synth` / survgen.data.synth.synthesize_dataset(seed={seed}).",
        f"{num_videos} videos of {size}x{size} pixels at {fps:g} fps, SAR-RARP50 layout:",
        "  video_XX/video_left.avi       MJPEG, constant frame rate",
        "  video_XX/action_discrete.txt  'frame,class' for every 6th frame; a label holds until the next one",
        "  video_XX/video_left.cue_masks.npz  per frame, the needle's and the thread's pixels (bool, frames x H x W)",
        "No classes.json: the eight SAR-RARP50 actions (G0-G7) apply.",
        "Segments per class: " + ", ".join(f"G{c} {n}" for c, n in enumerate(counts)),
        "Cartoon renderings, not real surgery: do not use them to judge a model on real data.",
    ]
    return "\n".join(lines) + "\n"


# ---------------------------------------------------------------- one video
def cue_mask_path(video: str | Path) -> Path:
    """Where the cue masks of `video` lie: beside it, `video_left.avi` → `video_left.cue_masks.npz`."""
    video = Path(video)
    return video.with_name(video.stem + ".cue_masks.npz")


def render_video(segments: list[tuple[int, int]], size: int, rng: np.random.Generator):
    """Frames uint8 `(n, size, size, 3)`, their cue masks bool `(n, size, size)` and
    `[(frame, class_id)]` labels every `LABEL_STEP` frames."""
    scene = Scene(size, rng, sum(n for _, n in segments))
    frames, masks, labels, t0 = [], [], [], 0
    for class_id, length in segments:
        params = SegmentParams.random(rng)
        for t in range(length):
            pose = ACTIONS[class_id](scene, params, t, length)
            frame, mask = scene.render(pose, t0 + t, rng)
            frames.append(frame)
            masks.append(mask)
        labels += [(f, class_id) for f in range(t0, t0 + length, LABEL_STEP)]
        t0 += length
    return np.stack(frames), np.stack(masks), labels


def _unit(angle: float) -> np.ndarray:
    return np.array([math.cos(angle), math.sin(angle)])


def _ease(x: float) -> float:
    """Smooth 0→1 over x in [0, 1] (zero speed at both ends)."""
    x = min(max(x, 0.0), 1.0)
    return x * x * (3 - 2 * x)


def _smooth_noise(rng: np.random.Generator, n: int, cells: int) -> np.ndarray:
    """An n×n field of smooth noise in [0, 1]: a cells×cells random grid upsampled bicubically."""
    grid = rng.random((cells, cells)).astype(np.float32)
    field_ = np.asarray(Image.fromarray(grid).resize((n, n), Image.BICUBIC))
    return np.clip(field_, 0.0, 1.0)


def _blurred(mask: Image.Image, radius: float) -> np.ndarray:
    """A greyscale mask, Gaussian-blurred, as float (H, W, 1) in [0, 1]."""
    return np.asarray(mask.filter(ImageFilter.GaussianBlur(radius)), np.float32)[..., None] / 255


@dataclass
class _Stroke:
    """A polyline (or a dot) to paint, and the shadow it casts from `height` pixels above the tissue."""

    points: np.ndarray  # (k, 2) canvas pixels
    color: tuple[int, int, int]
    width: int
    shadow: int = 0  # darkness of its shadow, 0 (none) .. 255
    height: float = 0.0
    dot: bool = False
    cue: bool = False  # part of the needle or the thread (`cue_masks.npz`)

    def paint(self, draw: ImageDraw.ImageDraw, fill, offset: float = 0.0) -> None:
        pts = [(float(x) + offset, float(y) + offset) for x, y in self.points]
        if self.dot:
            (x, y), r = pts[0], self.width / 2
            draw.ellipse([x - r, y - r, x + r, y + r], fill=fill)
        else:
            draw.line(pts, fill=fill, width=self.width, joint="curve")


@dataclass
class Pose:
    """Where everything is in one frame, in canvas pixels."""

    left_tip: np.ndarray
    right_tip: np.ndarray
    left_jaw: float = 0.15  # opening angle of the jaws, radians
    right_jaw: float = 0.15
    right_tool: str = "grasper"  # or "scissors"
    # needle: centre, radius, angle of the tail; the arc runs tail (s=0) → tip (s=1) over half a turn
    needle_center: np.ndarray | None = None
    needle_radius: float = 0.0
    needle_angle: float = 0.0
    needle_visible: list[tuple[float, float]] = field(default_factory=lambda: [(0.0, 1.0)])
    threads: list[np.ndarray] = field(default_factory=list)

    def needle_point(self, s: float) -> np.ndarray:
        return self.needle_center + self.needle_radius * _unit(self.needle_angle + math.pi * s)


@dataclass
class SegmentParams:
    """The random choices of one action segment (where along the incision, how fast, ...)."""

    along: float
    period: float
    phase: float
    sign: float
    angle: float
    drift: np.ndarray

    @classmethod
    def random(cls, rng: np.random.Generator) -> "SegmentParams":
        return cls(
            along=float(rng.uniform(-0.12, 0.12)),
            period=float(rng.uniform(14, 22)),
            phase=float(rng.uniform(0, 2 * math.pi)),
            sign=float(rng.choice([-1.0, 1.0])),
            angle=float(rng.uniform(-0.4, 0.4)),
            drift=rng.normal(size=2),
        )


class Scene:
    """One video's fixed look: tissue, incision, stitches, instrument entry points, colours."""

    def __init__(self, size: int, rng: np.random.Generator, num_frames: int):
        self.size = size
        self.S = S = size * SUPERSAMPLE
        self.margin = m = 3 * SUPERSAMPLE  # room for camera jitter
        self.wound_angle = float(rng.uniform(-0.5, 0.5))
        self.wound_dir = _unit(self.wound_angle)
        self.wound_normal = _unit(self.wound_angle + math.pi / 2)  # points down-ish in the image
        self.wound_center = np.array([S * rng.uniform(0.42, 0.58), S * rng.uniform(0.38, 0.52)])
        self.left_entry = np.array([-0.15 * S, S * rng.uniform(0.75, 1.05)])
        self.right_entry = np.array([1.15 * S, S * rng.uniform(0.15, 0.85)])
        self.left_rest = self.at(-0.2, 0.2) + rng.normal(0, 0.02 * S, 2)
        self.right_rest = self.at(0.2, -0.12) + rng.normal(0, 0.02 * S, 2)
        self.needle_radius = 0.12 * S
        self.thread_color = tuple(int(c) for c in rng.choice([(95, 60, 190), (60, 90, 200), (40, 140, 90)]))
        self.thread_anchor = self.at(rng.uniform(-0.5, -0.35), 0.0)  # the previous stitch
        self.background = self._tissue(rng, S + 2 * m)
        # Camera jitter: a slow, small random walk (the endoscope breathes), tied back to its start.
        walk = np.cumsum(rng.normal(0, 0.35, (num_frames, 2)), axis=0)
        walk -= np.linspace(0, 1, num_frames)[:, None] * walk[-1]
        self.jitter = np.clip(np.round(walk), -m, m).astype(int)
        yy, xx = np.mgrid[0:size, 0:size].astype(np.float32)
        r2 = ((xx - size / 2 + 0.5) ** 2 + (yy - size / 2 + 0.5) ** 2) / (size / 2) ** 2
        self.vignette = (1.0 - 0.38 * np.clip(r2 - 0.25, 0, None) ** 1.2)[..., None].astype(np.float32)

    def at(self, along: float, across: float) -> np.ndarray:
        """A point `along` the incision and `across` it (positive: below), in units of the frame size."""
        return self.wound_center + self.S * (along * self.wound_dir + across * self.wound_normal)

    # ---- the still background
    def _tissue(self, rng: np.random.Generator, n: int) -> np.ndarray:
        S, m = self.S, self.margin
        coarse = 0.65 * _smooth_noise(rng, n, 5) + 0.35 * _smooth_noise(rng, n, 13)
        fine = _smooth_noise(rng, n, 31)
        dark, pink = np.array([135, 38, 48], np.float32), np.array([226, 118, 112], np.float32)
        t = np.clip(0.25 + 0.9 * (coarse - 0.5) + 0.3 * (fine - 0.5) + 0.45, 0, 1)[..., None]
        img = dark + (pink - dark) * t
        fat = np.clip((_smooth_noise(rng, n, 9) - 0.7) * 6, 0, 1)[..., None] * (0.6 + 0.4 * fine[..., None])
        img = img * (1 - 0.55 * fat) + np.array([240, 205, 150], np.float32) * 0.55 * fat

        # Vessels: wandering dark lines, blurred.
        vessels = Image.new("L", (n, n), 0)
        draw = ImageDraw.Draw(vessels)
        for _ in range(int(rng.integers(4, 8))):
            p, heading = rng.uniform(0, n, 2), rng.uniform(0, 2 * math.pi)
            width = int(rng.integers(1, 3)) * SUPERSAMPLE
            points = [tuple(p)]
            for _ in range(int(rng.integers(6, 14))):
                heading += rng.normal(0, 0.5)
                p = p + rng.uniform(0.04, 0.09) * S * _unit(heading)
                points.append(tuple(p))
            draw.line(points, fill=int(rng.integers(150, 255)), width=width, joint="curve")
        v = _blurred(vessels, 0.8 * SUPERSAMPLE)
        img = img * (1 - 0.55 * v) + np.array([105, 18, 45], np.float32) * 0.55 * v

        # The incision: a dark gap between swollen, brighter lips, with earlier stitches across it.
        offset = np.array([m, m], np.float64)
        lips, gap = Image.new("L", (n, n), 0), Image.new("L", (n, n), 0)
        along = np.linspace(-0.8, 0.8, 25)
        wiggle = 0.012 * np.sin(9 * along + 1.3)
        for side in (-1, 1):
            edge = [tuple(self.at(a, w + side * 0.04) + offset) for a, w in zip(along, wiggle)]
            ImageDraw.Draw(lips).line(edge, fill=255, width=max(2, int(0.045 * S)), joint="curve")
        middle = [tuple(self.at(a, w) + offset) for a, w in zip(along, wiggle)]
        ImageDraw.Draw(gap).line(middle, fill=255, width=max(2, int(0.045 * S)), joint="curve")
        lips_a, gap_a = _blurred(lips, 1.2 * SUPERSAMPLE), _blurred(gap, 0.7 * SUPERSAMPLE)
        img = img * (1 - 0.75 * lips_a) + np.array([250, 178, 165], np.float32) * 0.75 * lips_a
        img = img * (1 - 0.95 * gap_a) + np.array([88, 6, 18], np.float32) * 0.95 * gap_a

        stitches = Image.new("RGB", (n, n), 0)
        mask = Image.new("L", (n, n), 0)
        for a in np.arange(-0.75, -0.3, 0.1) + rng.uniform(-0.02, 0.02):
            seg = [tuple(self.at(a - 0.02, -0.045) + offset), tuple(self.at(a + 0.02, 0.045) + offset)]
            ImageDraw.Draw(stitches).line(seg, fill=self.thread_color, width=SUPERSAMPLE)
            ImageDraw.Draw(mask).line(seg, fill=255, width=SUPERSAMPLE)
        sm = np.asarray(mask, np.float32)[..., None] / 255
        img = img * (1 - sm) + np.asarray(stitches, np.float32) * sm

        # Light from one side, and wet specular glints fixed on the tissue.
        yy, xx = np.mgrid[0:n, 0:n].astype(np.float32) / n
        light_dir = _unit(rng.uniform(0, 2 * math.pi))
        img *= (0.85 + 0.3 * (0.5 + (xx - 0.5) * light_dir[0] + (yy - 0.5) * light_dir[1]))[..., None]
        glint = np.clip((_smooth_noise(rng, n, 36) * coarse - 0.56) * 10, 0, 1)
        glint = _blurred(Image.fromarray((glint * 255).astype(np.uint8)), SUPERSAMPLE) * 0.8
        img = img * (1 - glint) + 255 * glint
        return img.astype(np.float32)

    # ---- one frame
    def render(self, pose: Pose, frame_index: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
        """One uint8 frame: shadows on the tissue first, then thread, shafts, needle and jaws on top;
        and its cue mask: the needle's and thread's pixels, at least half covered, that nothing hides."""
        S, m = self.S, self.margin
        dx, dy = self.jitter[frame_index]
        shift = np.array([-dx, -dy], np.float64)  # the scene moves opposite to the camera
        strokes = self._strokes(pose, shift)
        shadow = Image.new("L", (S, S), 0)
        shade = ImageDraw.Draw(shadow)
        for stroke in strokes:
            if stroke.shadow:
                stroke.paint(shade, stroke.shadow, offset=stroke.height)
        canvas = self.background[m + dy : m + dy + S, m + dx : m + dx + S]
        canvas = canvas * (1 - 0.5 * _blurred(shadow, SUPERSAMPLE))
        image = Image.fromarray(np.clip(canvas, 0, 255).astype(np.uint8))
        cues = Image.new("L", (S, S), 0)
        draw, draw_cues = ImageDraw.Draw(image), ImageDraw.Draw(cues)
        for stroke in strokes:
            stroke.paint(draw, stroke.color)
            stroke.paint(draw_cues, 255 if stroke.cue else 0)
        small = np.asarray(image.reduce(SUPERSAMPLE), np.float32)
        small = small * self.vignette + rng.normal(0, 1.5, small.shape).astype(np.float32)
        mask = np.asarray(cues.reduce(SUPERSAMPLE)) >= 128
        return np.clip(small + 0.5, 0, 255).astype(np.uint8), mask

    def _strokes(self, pose: Pose, shift: np.ndarray) -> list[_Stroke]:
        """Everything drawn over the tissue, back to front: threads, shafts, needle (held in the jaws,
        so nearer the camera than the shafts), jaws."""
        S = self.S
        strokes = [_Stroke(thread + shift, self.thread_color, max(1, round(0.02 * S)), shadow=110,
                           height=2 * SUPERSAMPLE, cue=True)
                   for thread in pose.threads]
        tools = [(self.left_entry, pose.left_tip, pose.left_jaw, "grasper"),
                 (self.right_entry, pose.right_tip, pose.right_jaw, pose.right_tool)]
        jaws = []
        for entry, tip, jaw, tool in tools:
            entry, tip = entry + shift, tip + shift
            direction = (tip - entry) / (np.linalg.norm(tip - entry) + 1e-6)
            normal = np.array([-direction[1], direction[0]])
            jaw_length = (0.15 if tool == "scissors" else 0.09) * S
            wrist = tip - direction * jaw_length
            width = round(0.085 * S)
            strokes += [
                _Stroke(np.stack([entry, wrist]), (62, 64, 72), width, shadow=255, height=4 * SUPERSAMPLE),
                _Stroke(np.stack([entry, wrist]) + normal * width * 0.18, (150, 156, 168), max(1, round(width * 0.3))),
                _Stroke(np.stack([entry, wrist]) + normal * width * 0.28, (236, 240, 246), max(1, SUPERSAMPLE // 2)),
                _Stroke(wrist[None], (38, 38, 44), round(width * 1.1), dot=True),
            ]
            heading = math.atan2(direction[1], direction[0])
            color = (205, 200, 176) if tool == "scissors" else (172, 175, 184)
            jaw_width = max(2, round((0.028 if tool == "scissors" else 0.04) * S))
            for side in (-1, 1):
                end = wrist + jaw_length * _unit(heading + side * jaw / 2)
                jaws.append(_Stroke(np.stack([wrist, end]), color, jaw_width, shadow=200, height=4 * SUPERSAMPLE))
        if pose.needle_center is not None:
            width = max(2, round(0.035 * S))
            for s0, s1 in pose.needle_visible:
                if s1 - s0 < 0.02:
                    continue
                arc = np.stack([pose.needle_point(s) for s in np.linspace(s0, s1, max(3, int(20 * (s1 - s0))))]) + shift
                glint = arc[len(arc) // 3 : len(arc) // 3 + max(2, len(arc) // 4)]
                strokes += [_Stroke(arc, (40, 40, 48), width + SUPERSAMPLE, shadow=200, height=3 * SUPERSAMPLE, cue=True),
                            _Stroke(arc, (214, 218, 228), width, cue=True),
                            _Stroke(glint, (250, 250, 255), max(1, width // 2), cue=True)]
        return strokes + jaws


# ---------------------------------------------------------------- the eight actions
def _sway(scene: Scene, params: SegmentParams, t: int, amplitude: float = 0.008, period: float = 70.0) -> np.ndarray:
    """A slow idle drift of an instrument tip (surgeon's hand at rest)."""
    a = 2 * math.pi * t / period + params.phase
    return scene.S * amplitude * np.array([math.sin(a) + 0.3 * params.drift[0], math.cos(0.8 * a) + 0.3 * params.drift[1]])


def _held_needle(scene: Scene, grip: np.ndarray, angle: float, s_grip: float = 0.12) -> tuple[np.ndarray, float]:
    """Centre and tail angle of a needle held at arc position `s_grip` by jaws at `grip`."""
    return grip - scene.needle_radius * _unit(angle + math.pi * s_grip), angle


def _sagging(a: np.ndarray, b: np.ndarray, sag: float, n: int = 12) -> np.ndarray:
    """A thread from a to b hanging down by `sag` pixels in the middle."""
    s = np.linspace(0, 1, n)[:, None]
    return a + (b - a) * s + np.array([0.0, sag]) * 4 * s * (1 - s)


def action_other(scene: Scene, p: SegmentParams, t: int, T: int) -> Pose:
    """G0: nothing happens; both instruments hover and drift slowly."""
    right = scene.right_rest + _sway(scene, p, t)
    center, angle = _held_needle(scene, right, p.angle + 2.4)
    pose = Pose(scene.left_rest + _sway(scene, p, t + 17, period=90), right, 0.25, 0.12,
                needle_center=center, needle_radius=scene.needle_radius, needle_angle=angle)
    pose.threads = [_sagging(pose.needle_point(0.0), scene.thread_anchor, 0.08 * scene.S)]
    return pose


def action_pick_up(scene: Scene, p: SegmentParams, t: int, T: int) -> Pose:
    """G1: the grasper descends with open jaws onto a needle lying on the tissue, closes and lifts it."""
    S, x = scene.S, t / (T - 1)
    lying_angle = p.angle + 0.6
    center0 = scene.at(p.along + 0.12, 0.2)
    grip0 = center0 + scene.needle_radius * _unit(lying_angle + math.pi * 0.35)  # where the jaws will close
    start = grip0 + S * np.array([0.22, -0.2])
    lift = S * np.array([-0.08, -0.22])
    lifted = _ease((x - 0.6) / 0.4)
    radius = scene.needle_radius * (1 + 0.25 * lifted)  # lifted towards the camera
    angle = lying_angle + 0.5 * lifted
    center = center0 + lift * lifted  # the needle lies still until gripped
    grip_on_needle = center + radius * _unit(angle + math.pi * 0.35)
    if x < 0.45:
        grip, jaw = start + (grip0 - start) * _ease(x / 0.45), 1.0
    else:
        grip, jaw = grip_on_needle, max(0.1, 1.0 - 0.9 * (x - 0.45) / 0.15)
    pose = Pose(scene.left_rest + _sway(scene, p, t), grip, 0.3, jaw,
                needle_center=center, needle_radius=radius, needle_angle=angle)
    pose.threads = [_sagging(pose.needle_point(0.0), scene.thread_anchor, 0.05 * S)]
    return pose


def action_position(scene: Scene, p: SegmentParams, t: int, T: int) -> Pose:
    """G2: the held needle rocks back and forth, its tip searching the entry point at the incision."""
    S = scene.S
    wave = math.sin(2 * math.pi * t / p.period + p.phase)
    grip = scene.at(p.along + 0.12, 0.1) + S * 0.035 * math.sin(2 * math.pi * t / (1.7 * p.period)) * scene.wound_normal
    angle = scene.wound_angle + math.pi * 0.85 + 0.5 * wave
    center, angle = _held_needle(scene, grip, angle)
    pose = Pose(scene.at(p.along - 0.15, -0.16) + _sway(scene, p, t), grip, 0.5, 0.12,
                needle_center=center, needle_radius=scene.needle_radius, needle_angle=angle)
    pose.threads = [_sagging(pose.needle_point(0.0), scene.thread_anchor, 0.1 * S)]
    return pose


def _through_tissue(scene: Scene, p: SegmentParams) -> tuple[np.ndarray, float, float]:
    """Centre of the stitch arc, angle where the needle enters the tissue, and the angle hidden below it."""
    center = scene.at(p.along, 0.0)
    entry = scene.wound_angle + math.pi / 2 - 0.65  # just below the incision
    return center, entry, 1.3


def _visible_outside(angle: float, entry: float, hidden: float) -> list[tuple[float, float]]:
    """Arc positions s in [0, 1] of a needle with tail angle `angle` that are not under the tissue."""
    lo = ((entry - angle) % (2 * math.pi)) / math.pi
    hi = lo + hidden / math.pi
    pieces = [(0.0, min(lo, 1.0))] if lo > 0 else []
    if hi < 1.0:
        pieces.append((hi, 1.0))
    if lo > 1.0 and hi > 2.0:  # the hidden span wraps past the tail
        pieces = [(hi - 2.0, 1.0)]
    return pieces


def action_push(scene: Scene, p: SegmentParams, t: int, T: int) -> Pose:
    """G3: the needle turns about its centre; the tip sinks into the tissue and comes out across the incision."""
    center, entry, hidden = _through_tissue(scene, p)
    x = t / (T - 1)
    angle = entry - math.pi + 0.15 + 2.6 * x  # tail angle; tip = tail + pi
    pose = Pose(scene.at(p.along - 0.3, -0.1) + _sway(scene, p, t), np.zeros(2), 0.55, 0.1,
                needle_center=center, needle_radius=scene.needle_radius, needle_angle=angle,
                needle_visible=_visible_outside(angle, entry, hidden))
    pose.right_tip = pose.needle_point(0.06) + scene.S * 0.02 * _unit(angle - 0.5)
    pose.threads = [_sagging(pose.needle_point(0.0), scene.thread_anchor, 0.06 * scene.S)]
    return pose


def action_pull(scene: Scene, p: SegmentParams, t: int, T: int) -> Pose:
    """G4: the tail slides out of the tissue and the needle is pulled away, dragging the thread taut."""
    S = scene.S
    center0, entry, hidden = _through_tissue(scene, p)
    exit_point = center0 + scene.needle_radius * _unit(entry + hidden)
    x = t / (T - 1)
    emerged = _ease(x / 0.35)
    angle = entry + hidden - 0.9 + 0.9 * emerged
    pull = _unit(scene.wound_angle - math.pi / 2 + 0.3 + 0.3 * p.sign) * 0.42 * S * _ease(x)
    center = center0 + pull
    tail_shown = 0.3 * (1 - emerged)
    pose = Pose(np.zeros(2), scene.right_rest + _sway(scene, p, t), 0.1, 0.4,
                needle_center=center, needle_radius=scene.needle_radius, needle_angle=angle,
                needle_visible=[(tail_shown, 1.0)])
    pose.left_tip = pose.needle_point(0.8)
    tail = pose.needle_point(tail_shown)
    pose.threads = [np.stack([exit_point, tail]), _sagging(center0 + scene.needle_radius * _unit(entry),
                                                           scene.thread_anchor, 0.03 * S)]
    return pose


def action_tie_knot(scene: Scene, p: SegmentParams, t: int, T: int) -> Pose:
    """G5: the two instruments circle each other, winding a loop of thread around one of them."""
    S = scene.S
    knot = scene.at(p.along, -0.12)
    phase = 2 * math.pi * t / p.period * p.sign + p.phase
    left = knot + 0.1 * S * _unit(phase) + np.array([-0.05 * S, 0])
    right = knot + 0.1 * S * _unit(phase + math.pi) + np.array([0.05 * S, 0])
    loop = right + 0.035 * S * np.stack([_unit(phase * 2 + a) for a in np.linspace(0, 2 * math.pi, 14)])
    stitch = scene.at(p.along, 0.0)
    pose = Pose(left, right, 0.1, 0.2)
    pose.threads = [np.stack([stitch, right]), loop, _sagging(stitch, left, 0.04 * S)]
    lying = scene.at(p.along + 0.25, 0.25)  # the needle waits on the tissue
    pose.needle_center, pose.needle_radius, pose.needle_angle = lying, scene.needle_radius, p.angle
    return pose


def action_cut(scene: Scene, p: SegmentParams, t: int, T: int) -> Pose:
    """G6: scissors snap over a thread held up by the grasper; it splits and the cut ends part."""
    S = scene.S
    stitch = scene.at(p.along, 0.0)
    holder = scene.at(p.along - 0.12, -0.3) + S * np.array([0.0, -0.04]) * _ease(t / (T - 1))
    middle = (stitch + holder) / 2
    snap_period = 0.55 * p.period
    opening = 0.5 * (1 + math.cos(2 * math.pi * t / snap_period))  # starts open
    cut_at = snap_period / 2  # the first time the blades close
    across = _unit(math.atan2(*(holder - stitch)[::-1]) + math.pi / 2)
    scissors_tip = middle + (0.05 + 0.03 * opening) * S * across  # the blades close onto the thread
    pose = Pose(holder, scissors_tip, 0.1, 0.1 + 1.1 * opening, right_tool="scissors")
    if t < cut_at:
        pose.threads = [np.stack([stitch, holder])]
    else:
        apart = _ease((t - cut_at) / (0.5 * (T - cut_at)))
        low_end = middle + (stitch - middle) * 0.6 * apart + np.array([0.0, 0.05 * S * apart])
        high_end = middle + (holder - middle) * 0.6 * apart - np.array([0.0, 0.03 * S * apart])
        pose.threads = [np.stack([stitch, (stitch + low_end) / 2 + [0, 0.02 * S * apart], low_end]),
                        np.stack([holder, high_end])]
    return pose


def action_drop(scene: Scene, p: SegmentParams, t: int, T: int) -> Pose:
    """G7: the jaws open, the needle tumbles away out of view and the grasper withdraws."""
    S = scene.S
    x = t / (T - 1)
    grip0 = scene.at(p.along + 0.1, 0.05)
    jaw = 0.12 + 0.85 * _ease(x / 0.2)
    right = grip0 + (scene.right_entry - grip0) * 0.22 * _ease(x)
    fall = _unit(math.pi / 2 + 0.5 * p.sign) * S * 0.75 * x**1.6
    center0, angle0 = _held_needle(scene, grip0, p.angle + 2.4)
    radius = scene.needle_radius * (1 - 0.2 * x)  # falling away from the camera
    pose = Pose(scene.left_rest + _sway(scene, p, t), right, 0.3, jaw,
                needle_center=center0 + fall, needle_radius=radius, needle_angle=angle0 + 2.2 * p.sign * x**1.3)
    pose.threads = [_sagging(pose.needle_point(0.0), scene.thread_anchor, 0.05 * S)]
    return pose


ACTIONS: tuple[Callable[[Scene, SegmentParams, int, int], Pose], ...] = (
    action_other, action_pick_up, action_position, action_push,
    action_pull, action_tie_knot, action_cut, action_drop,
)


# ---------------------------------------------------------------- recordings at camera size
RECORDING_CODECS = ("h264", "mjpeg")
RECORDING_SEGMENT = 40 * LABEL_STEP  # frames per action


def write_recording_fixture(folder: str | Path, *, width: int = 1920, height: int = 1080, fps: float = 60,
                            num_frames: int = 120, codec: str = "h264", gop: int = 60, seed: int = 0) -> Path:
    """Write one SAR-RARP50-style recording, `folder/video_left.avi` + `folder/action_discrete.txt`; return the video.

    For tests and benchmarks of the data path at a camera's frame size: the
    procedural scene is rendered at 128×128, stretched (bilinear) to
    `width`×`height`, and given a light per-frame grain, so the encoder has
    residuals to code as with a real sensor. `codec` "h264": libx264 preset
    veryfast, crf 23, yuv420p, a keyframe every `gop` frames (closed GOPs, no
    scene-cut keyframes), B-frames as the preset sets them; "mjpeg": every
    frame a keyframe. Labels: one class per 240-frame segment (4 s at 60 fps,
    long enough for a stride-6 clip; G0, G1, ... in turn), a `frame,class`
    line every 6th frame.
    """
    if codec not in RECORDING_CODECS:
        raise ValueError(f"codec must be one of {', '.join(RECORDING_CODECS)}, got {codec!r}")
    if codec == "h264" and (width % 2 or height % 2):
        raise ValueError(f"H.264 (yuv420p) needs even width and height, got {width}x{height}")
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    lengths = [RECORDING_SEGMENT] * (num_frames // RECORDING_SEGMENT) + [num_frames % RECORDING_SEGMENT]
    segments = [(k % len(SEGMENT_SHARE), n) for k, n in enumerate(lengths) if n]
    frames, _, labels = render_video(segments, 128, rng)
    path = folder / "video_left.avi"
    with atomic_path(path) as tmp, av.open(str(tmp), mode="w", format="avi") as container:
        if codec == "h264":
            options = {"preset": "veryfast", "crf": "23", "g": str(gop), "keyint_min": str(gop), "sc_threshold": "0"}
            stream = container.add_stream("libx264", rate=Fraction(fps).limit_denominator(1001), options=options)
            stream.pix_fmt = "yuv420p"
        else:
            stream = container.add_stream("mjpeg", rate=Fraction(fps).limit_denominator(1001))
            stream.pix_fmt = "yuvj420p"
        stream.width, stream.height = width, height
        for small in frames:
            big = np.asarray(Image.fromarray(small).resize((width, height), Image.BILINEAR), np.int16)
            grain = rng.integers(-3, 4, size=(height, width, 1), dtype=np.int16)
            frame = np.clip(big + grain, 0, 255).astype(np.uint8)
            container.mux(stream.encode(av.VideoFrame.from_ndarray(frame, format="rgb24")))
        container.mux(stream.encode())
    (folder / "action_discrete.txt").write_text("".join(f"{f},{c}\n" for f, c in labels))
    return path
