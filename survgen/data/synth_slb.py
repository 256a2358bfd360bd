"""The bundled staple line bleeding (SLB) dataset: the paper's task 2 as a seeded cartoon.

Task 2 of the paper: say, per video, whether staple line bleeding occurs
during the pancreas stapler transection of a distal pancreatectomy (39 videos,
10 with bleeding; a ResNet-LSTM recogniser; balanced accuracy and F1).
`synthesize_slb` writes a procedural stand-in in the SAR-RARP50 layout
(`video_XX/video_left.avi` + `video_XX/action_discrete.txt`) plus a
`classes.json` with the task's two classes, so every command reads it as it
reads the suturing dataset (`survgen.data.synth`), whose drawing helpers it
shares (supersample at 2x and reduce, smooth noise, blurred masks, strokes
with shadows).

Each video (64 frames at 10 fps by default, 64x64) shows a transected
pancreas: pale lobulated parenchyma across the frame, cut along a line that
is closed by two staggered rows of small metallic staples on each edge; the
stapler, its jaws released, opens and withdraws along the line, and a
grasper holds the specimen side. The camera breathes (a small random walk).
Many videos of either class carry still smears of blood on the staple rows
(as every transection does) and some an old dark clot away from the line, so
"any red" is not the answer: bleeding is blood that comes and spreads.

In `bleeding_share` of the videos (20 % by default; exactly, rounded, at
least one and never all) staple line bleeding occurs: from a point on the
staple line bright red blood wells up within the first fifth of the video,
spreads in pulses into a pool and trickles away along a random downhill
direction, covering the staples, darker where it is thick, with moving
glints. The label is the
video's, as in the paper: every labelled frame (every 6th) of a bleeding
video is class 1, even the first few before the blood appears.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np
from PIL import Image, ImageDraw

from survgen import __version__
from survgen.classes import ClassVocabulary
from survgen.data.index import CLIP_FPS
from survgen.data.synth import (DATASET_MARKER, LABEL_STEP, SUPERSAMPLE, _blurred, _ease, _smooth_noise, _Stroke,
                                _unit)
from survgen.data.video import write_video
from survgen.io import OutputPathError, atomic_folder, check_replaceable, output_folder, write_json_atomic

# The task's classes. The bleeding class's name is the paper's prompt for it ("a complication of staple line
# bleeding", Sec. 3.1), used whole as the prompt ("{name}"); codes SLB0 (none) and SLB1 (bleeding).
SLB_CLASSES = ClassVocabulary(names=("no staple line bleeding", "a complication of staple line bleeding"),
                              prompt_template="{name}", code_prefix="SLB")
NO_BLEEDING, BLEEDING = 0, 1
BLEEDING_SHARE = 0.2  # rare; the paper's in-house set has 10 of 39 (26 %)
FRAMES_PER_VIDEO = 64  # 6.4 s at 10 fps: four 16-frame clips end to end
NUM_VIDEOS = 48

# colours (RGB)
BLOOD_FRESH, BLOOD_DARK = np.array([205, 24, 30], np.float32), np.array([122, 8, 16], np.float32)
CLOT = np.array([92, 30, 32], np.float32)  # old, dark: not the bright red of fresh blood
STAIN = np.array([176, 28, 34], np.float32)  # as red as fresh blood: only its stillness and size tell
STAINED, CLOTTED = 0.6, 0.35  # shares of videos (of either class) with still smears on the line / an old clot
RELOADS = ((118, 92, 165), (196, 168, 112), (46, 46, 52))  # stapler cartridge colours (purple, tan, black)


# ---------------------------------------------------------------- the dataset
def synthesize_slb(
    out: str | Path,
    num_videos: int = NUM_VIDEOS,
    size: int = 64,
    seed: int = 0,
    fps: float = CLIP_FPS,
    frames_per_video: int = FRAMES_PER_VIDEO,
    bleeding_share: float = BLEEDING_SHARE,
    *,
    overwrite: bool = False,
    progress: Callable[[int, int], None] | None = None,
) -> Path:
    """Write the SLB dataset to `out` (replaced whole, atomically) and return `out`.

    `progress(done, total)` is called after each video. Refuses a non-empty
    `out`; with `overwrite`, replaces only a dataset `survgen data synth` wrote
    (it holds `DATASET_MARKER`).
    """
    out = Path(out)
    _check_request(num_videos, size, frames_per_video, bleeding_share)
    if overwrite:
        check_replaceable(out, option="--out", marker=DATASET_MARKER, kind="synthetic dataset",
                          written=["video_*", "README.txt", "classes.json", DATASET_MARKER])
    elif output_folder(out, option="--out", marker=DATASET_MARKER):
        raise OutputPathError(f"--out {out}: holds a synthetic dataset already; pass --overwrite to replace it, "
                              "or choose a new --out")
    bleeds = plan_bleeding(num_videos, bleeding_share, np.random.default_rng(seed))
    with atomic_folder(out) as tmp:
        for v, bleeding in enumerate(bleeds):
            frames = render_slb_video(size, frames_per_video, bool(bleeding), np.random.default_rng([seed, v]))
            class_id = BLEEDING if bleeding else NO_BLEEDING
            folder = tmp / f"video_{v + 1:02d}"
            folder.mkdir()
            write_video(folder / "video_left.avi", frames, fps)
            (folder / "action_discrete.txt").write_text(
                "".join(f"{f},{class_id}\n" for f in range(0, frames_per_video, LABEL_STEP)))
            if progress is not None:
                progress(v + 1, num_videos)
        SLB_CLASSES.save(tmp)
        (tmp / "README.txt").write_text(_readme(num_videos, size, seed, fps, frames_per_video, bleeds))
        write_json_atomic(tmp / DATASET_MARKER, {
            "kind": "synthetic dataset", "task": "slb", "survgen_version": __version__, "num_videos": num_videos,
            "size": size, "seed": seed, "fps": fps, "frames_per_video": frames_per_video,
            "bleeding_videos": int(bleeds.sum())})
    return out


def _check_request(num_videos: int, size: int, frames_per_video: int, bleeding_share: float) -> None:
    problems = []
    if num_videos < 2:
        problems.append(f"--num-videos must be at least 2 (one of each class), got {num_videos}")
    if size < 16:
        problems.append(f"--size must be at least 16 pixels, got {size}")
    if frames_per_video < 16:
        problems.append(f"--frames-per-video must be at least 16 (one clip), got {frames_per_video}")
    if not 0 < bleeding_share < 1:
        problems.append(f"bleeding_share must be in (0, 1), got {bleeding_share}")
    if problems:
        raise ValueError("; ".join(problems))


def plan_bleeding(num_videos: int, share: float, rng: np.random.Generator) -> np.ndarray:
    """Which videos bleed (bool per video): `round(share · num_videos)` of them, at least one and at least one
    not, at places drawn by `rng`, so the imbalance is exact rather than left to chance."""
    count = min(max(1, round(share * num_videos)), num_videos - 1)
    bleeds = np.zeros(num_videos, bool)
    bleeds[rng.permutation(num_videos)[:count]] = True
    return bleeds


def _readme(num_videos: int, size: int, seed: int, fps: float, frames: int, bleeds: np.ndarray) -> str:
    names = ", ".join(f"{SLB_CLASSES.code(c)} {SLB_CLASSES.name(c)!r}" for c in range(len(SLB_CLASSES)))
    lines = [
        "survgen procedural staple line bleeding dataset (synthetic; the paper's task 2 in miniature).",
        f"Made by `survgen data synth --task slb` / survgen.data.synth_slb.synthesize_slb(seed={seed}).",
        f"{num_videos} videos of {frames} frames, {size}x{size} pixels at {fps:g} fps, SAR-RARP50 layout:",
        "  video_XX/video_left.avi       MJPEG, constant frame rate",
        "  video_XX/action_discrete.txt  'frame,class' for every 6th frame: the video's class on every line",
        f"classes.json: {names} (each name is its text prompt).",
        f"Videos with bleeding: {int(bleeds.sum())} of {num_videos} ("
        + ", ".join(f"video_{v + 1:02d}" for v in np.flatnonzero(bleeds)) + ").",
        "Cartoon renderings, not real surgery: do not use them to judge a model on real data.",
    ]
    return "\n".join(lines) + "\n"


# ---------------------------------------------------------------- one video
def render_slb_video(size: int, num_frames: int, bleeding: bool, rng: np.random.Generator) -> np.ndarray:
    """Frames uint8 `(num_frames, size, size, 3)` of one transection, with a bleeding event if `bleeding`."""
    scene = TransectionScene(size, num_frames, bleeding, rng)
    return np.stack([scene.render(t, rng) for t in range(num_frames)])


@dataclass
class Bleed:
    """Where and when blood comes out of the staple line, and how far it spreads."""

    source: np.ndarray  # canvas pixels, on the staple line
    downhill: np.ndarray  # unit vector the trickle runs along
    onset: int  # first frame with blood
    reach: float  # final pool radius, canvas pixels
    pace: float  # frames to cover most of the reach
    pulse: float  # frames between spurts

    def radius(self, t: int) -> float:
        """The blood front's level at frame t: a visible drop at onset, then spurts slowing into a pool."""
        if t < self.onset:
            return 0.0
        x = t - self.onset
        grown = 1 - math.exp(-x / self.pace)
        spurt = 0.05 * max(0.0, math.sin(2 * math.pi * x / self.pulse))
        return self.reach * (0.12 + 0.88 * grown + spurt)


class TransectionScene:
    """One video's fixed look (tissue, cut, staples, clot, bleeding) and its instruments' motion."""

    def __init__(self, size: int, num_frames: int, bleeding: bool, rng: np.random.Generator):
        self.size = size
        self.S = S = size * SUPERSAMPLE
        self.margin = m = 3 * SUPERSAMPLE  # room for camera jitter
        self.n = n = S + 2 * m
        self.num_frames = num_frames
        self.line_dir = _unit(math.pi / 2 + rng.uniform(-0.6, 0.6))  # the staple line runs roughly up-down
        self.across = np.array([-self.line_dir[1], self.line_dir[0]])  # along the pancreas
        self.side = float(rng.choice([-1.0, 1.0]))  # the remnant lies on this side of the cut, the specimen opposite
        self.center = S * np.array([rng.uniform(0.42, 0.58), rng.uniform(0.42, 0.58)])
        self.half_length = S * rng.uniform(0.26, 0.32)  # half the staple line = half the pancreas' width
        self.gap = S * rng.uniform(0.03, 0.045)  # half the cut's width
        self.reload = RELOADS[int(rng.integers(len(RELOADS)))]
        self.background = self._tissue(rng)
        self.bleed = self._bleed(rng) if bleeding else None
        self.blood_field = self._blood_field(rng) if bleeding else None
        self.blood_glint = _smooth_noise(rng, n, 20) if bleeding else None
        self._instrument_motion(rng)
        walk = np.cumsum(rng.normal(0, 0.35, (num_frames, 2)), axis=0)
        walk -= np.linspace(0, 1, num_frames)[:, None] * walk[-1]  # the endoscope breathes and comes back
        self.jitter = np.clip(np.round(walk), -m, m).astype(int)
        yy, xx = np.mgrid[0:size, 0:size].astype(np.float32)
        r2 = ((xx - size / 2 + 0.5) ** 2 + (yy - size / 2 + 0.5) ** 2) / (size / 2) ** 2
        self.vignette = (1.0 - 0.38 * np.clip(r2 - 0.25, 0, None) ** 1.2)[..., None].astype(np.float32)

    def at(self, along: float, across: float) -> np.ndarray:
        """A point `along` the staple line and `across` it (towards the specimen), in frame sizes, in
        crop pixels (add the margin for the background canvas)."""
        return self.center + self.S * (along * self.line_dir - self.side * across * self.across)

    # ---- the still background
    def _coordinates(self) -> tuple[np.ndarray, np.ndarray]:
        """Every canvas pixel's offset from the line's centre, along the line and across it (specimen side > 0)."""
        yy, xx = np.mgrid[0:self.n, 0:self.n].astype(np.float32) - self.margin
        dx, dy = xx - self.center[0], yy - self.center[1]
        along = dx * self.line_dir[0] + dy * self.line_dir[1]
        across = -self.side * (dx * self.across[0] + dy * self.across[1])
        return along, across

    def _tissue(self, rng: np.random.Generator) -> np.ndarray:
        S, n = self.S, self.n
        along, across = self._coordinates()
        coarse = 0.65 * _smooth_noise(rng, n, 5) + 0.35 * _smooth_noise(rng, n, 12)
        fine = _smooth_noise(rng, n, 30)
        # Surroundings: muted retroperitoneum, splotched with yellow fat.
        deep, light = np.array([92, 52, 50], np.float32), np.array([168, 108, 96], np.float32)
        img = deep + (light - deep) * np.clip(0.3 + 0.9 * (coarse - 0.5) + 0.4, 0, 1)[..., None]
        fat = np.clip((_smooth_noise(rng, n, 8) - 0.62) * 5, 0, 1)[..., None]
        img = img * (1 - 0.7 * fat) + np.array([236, 206, 128], np.float32) * 0.7 * fat
        # The pancreas: a band across the line, pale and lobulated (dark seams where the fine noise is 0.5).
        wobble = S * 0.035 * (_smooth_noise(rng, n, 4) - 0.5)
        band = np.clip((self.half_length + wobble - np.abs(along)) / (0.02 * S), 0, 1)[..., None]
        parenchyma = np.array([226, 190, 150], np.float32) * (0.9 + 0.2 * coarse[..., None])
        seams = np.clip(1 - np.abs(fine - 0.5) * 14, 0, 1)[..., None]
        parenchyma = parenchyma * (1 - 0.25 * seams)
        img = img * (1 - band) + parenchyma * band
        # The cut: a dark gap along the line through the band, its stapled edges pressed pale and grey.
        inside = np.abs(along) < self.half_length + S * 0.01
        gap = (np.clip((self.gap - np.abs(across)) / (0.012 * S), 0, 1) * inside * band[..., 0])[..., None]
        pressed = (np.clip(1 - np.abs(np.abs(across) - self.gap - 0.03 * S) / (0.03 * S), 0, 1)
                   * inside * band[..., 0])[..., None]
        img = img * (1 - 0.5 * pressed) + np.array([214, 196, 178], np.float32) * 0.5 * pressed
        img = img * (1 - 0.9 * gap) + np.array([72, 34, 34], np.float32) * 0.9 * gap
        img = self._staples(img)
        if rng.random() < STAINED:  # in either class: the transection's own still smears of blood
            img = self._stains(img, rng, along, across)
        if rng.random() < CLOTTED:  # in either class: an old clot somewhere away from the line
            img = self._clot(img, rng, along, across)
        # Light from one side, and wet glints fixed on the tissue.
        yy, xx = np.mgrid[0:n, 0:n].astype(np.float32) / n
        light = _unit(rng.uniform(0, 2 * math.pi))
        img *= (0.85 + 0.3 * (0.5 + (xx - 0.5) * light[0] + (yy - 0.5) * light[1]))[..., None]
        glint = np.clip((_smooth_noise(rng, n, 36) * coarse - 0.56) * 10, 0, 1)
        glint = _blurred(Image.fromarray((glint * 255).astype(np.uint8)), SUPERSAMPLE) * 0.7
        return (img * (1 - glint) + 255 * glint).astype(np.float32)

    def _staples(self, img: np.ndarray) -> np.ndarray:
        """Two staggered rows of short silver staples along each edge of the cut, each with a dark underside."""
        S, m = self.S, self.margin
        shiny, mask = Image.new("RGB", (self.n, self.n), 0), Image.new("L", (self.n, self.n), 0)
        draw_shiny, draw_mask = ImageDraw.Draw(shiny), ImageDraw.Draw(mask)
        step, length = 0.05 * S, 0.032 * S
        for edge in (-1, 1):
            for row, offset in enumerate((0.016, 0.042)):
                across = edge * (self.gap / S + offset)
                first = -self.half_length + step * (0.5 + 0.5 * row)
                for a in np.arange(first, self.half_length - 0.5 * step, step):
                    mid = self.at(a / S, across) + m
                    ends = [mid - 0.5 * length * self.line_dir, mid + 0.5 * length * self.line_dir]
                    under = [tuple(p + 0.5 * SUPERSAMPLE) for p in ends]
                    ends = [tuple(p) for p in ends]
                    draw_shiny.line(under, fill=(70, 62, 66), width=SUPERSAMPLE)
                    draw_mask.line(under, fill=255, width=SUPERSAMPLE)
                    draw_shiny.line(ends, fill=(232, 234, 240), width=max(1, SUPERSAMPLE - 1))
                    draw_mask.line(ends, fill=255, width=max(1, SUPERSAMPLE - 1))
        a = np.asarray(mask, np.float32)[..., None] / 255
        return img * (1 - a) + np.asarray(shiny, np.float32) * a

    def _stains(self, img: np.ndarray, rng: np.random.Generator, along: np.ndarray, across: np.ndarray) -> np.ndarray:
        """One to three thin smears of blood along the staple rows, still (they never spread)."""
        S, cover = self.S, np.zeros(along.shape, np.float32)
        for _ in range(int(rng.integers(1, 4))):
            spot = np.array([rng.uniform(-0.8, 0.8) * self.half_length,
                             rng.choice([-1, 1]) * (self.gap + rng.uniform(0.01, 0.05) * S)])
            dist = np.hypot((along - spot[0]) / rng.uniform(1.5, 3.0), across - spot[1])
            cover = np.maximum(cover, np.clip((rng.uniform(0.012, 0.03) * S - dist) / SUPERSAMPLE, 0, 1))
        return img * (1 - 0.85 * cover[..., None]) + STAIN * 0.85 * cover[..., None]

    def _clot(self, img: np.ndarray, rng: np.random.Generator, along: np.ndarray, across: np.ndarray) -> np.ndarray:
        S = self.S
        spot = np.array([rng.uniform(-0.35, 0.35), rng.choice([-1, 1]) * rng.uniform(0.2, 0.35)]) * S
        dist = np.hypot(along - spot[0], across - spot[1]) * (1 + 0.4 * (_smooth_noise(rng, self.n, 10) - 0.5))
        a = np.clip((rng.uniform(0.025, 0.04) * S - dist) / SUPERSAMPLE, 0, 1)[..., None]
        return img * (1 - 0.9 * a) + CLOT * 0.9 * a

    # ---- the bleeding
    def _bleed(self, rng: np.random.Generator) -> Bleed:
        S = self.S
        along = rng.uniform(-0.7, 0.7) * self.half_length / S
        source = self.at(along, -(self.gap / S + 0.02)) + self.margin  # on the remnant's staple rows
        return Bleed(source=source, downhill=_unit(math.pi / 2 + rng.uniform(-0.8, 0.8)),
                     onset=int(rng.integers(0, max(1, self.num_frames // 5) + 1)),
                     reach=S * rng.uniform(0.05, 0.14), pace=self.num_frames * rng.uniform(0.15, 0.3),
                     pulse=float(rng.uniform(5, 9)))

    def _blood_field(self, rng: np.random.Generator) -> np.ndarray:
        """Per canvas pixel, the front level at which blood reaches it: a ragged pool round the source and a
        narrow trickle downhill, which runs about twice as far."""
        bleed = self.bleed
        yy, xx = np.mgrid[0:self.n, 0:self.n].astype(np.float32)
        qx, qy = xx - bleed.source[0], yy - bleed.source[1]
        down = qx * bleed.downhill[0] + qy * bleed.downhill[1]
        aside = np.abs(qx * bleed.downhill[1] - qy * bleed.downhill[0])
        trickle = np.where(down > 0, 0.45 * down + 2.2 * aside, np.inf)
        field_ = np.minimum(np.hypot(qx, qy), trickle)
        ragged = 1 + 0.6 * (_smooth_noise(rng, self.n, 9) - 0.5)
        return field_ * ragged + 0.03 * self.S * (_smooth_noise(rng, self.n, 17) - 0.5)

    def _with_blood(self, canvas: np.ndarray, t: int, window: tuple[slice, slice]) -> np.ndarray:
        r = self.bleed.radius(t)
        if r <= 0:
            return canvas
        depth = r - self.blood_field[window]
        cover = np.clip(depth / (0.8 * SUPERSAMPLE), 0, 1)[..., None]
        thick = np.clip(depth / (0.07 * self.S), 0, 1)[..., None]
        color = BLOOD_FRESH * (1 - thick) + BLOOD_DARK * thick
        flow = np.roll(self.blood_glint, (int(0.6 * t * SUPERSAMPLE), 0), axis=(0, 1))[window]  # glints run downhill
        glint = (np.clip((flow - 0.78) * 8, 0, 1) * thick[..., 0])[..., None] * 0.6
        color = color * (1 - glint) + 255 * glint
        return canvas * (1 - cover) + color * cover

    # ---- the instruments
    def _instrument_motion(self, rng: np.random.Generator) -> None:
        """The stapler's withdrawal (when, how fast) and the grasper's hold, drawn once per video."""
        T = self.num_frames
        self.withdraw_start = rng.uniform(0, 0.5) * T
        self.withdraw_frames = rng.uniform(0.4, 1.0) * T
        self.stapler_offset = rng.uniform(0.16, 0.22)  # the released jaws lie beside the line, specimen side
        self.stapler_entry = self.at(-1.1, self.stapler_offset + 0.05)
        self.grasper_entry = self.at(rng.uniform(-0.2, 0.6), 1.2)
        self.grasper_hold = self.at(rng.uniform(-0.15, 0.15), 0.3)
        self.sway_phase, self.sway_period = rng.uniform(0, 2 * math.pi), rng.uniform(25, 45)

    def _strokes(self, t: int, shift: np.ndarray) -> list[_Stroke]:
        """Shafts, then jaws, of the stapler (opening and withdrawing along the line) and the grasper."""
        S = self.S
        out = _ease((t - self.withdraw_start) / self.withdraw_frames)
        tip = self.at(0.25 - 0.9 * out, self.stapler_offset)
        opening = 0.12 + 0.35 * math.sin(math.pi * min(1.0, out * 1.5))
        sway = math.sin(2 * math.pi * t / self.sway_period + self.sway_phase)
        grip = self.grasper_hold + S * 0.025 * sway * self.line_dir + S * 0.015 * (1 + sway) * self.side * self.across
        strokes, jaws = [], []
        for entry, tip_, jaw_length, width, colors, angle in (
                (self.stapler_entry, tip, 0.34 * S, round(0.12 * S), ((178, 182, 190), self.reload), opening),
                (self.grasper_entry, grip, 0.09 * S, round(0.075 * S), ((172, 175, 184),) * 2, 0.2)):
            entry, tip_ = entry + shift, tip_ + shift
            direction = (tip_ - entry) / (np.linalg.norm(tip_ - entry) + 1e-6)
            normal = np.array([-direction[1], direction[0]])
            wrist = tip_ - direction * jaw_length
            strokes += [
                _Stroke(np.stack([entry, wrist]), (58, 60, 68), width, shadow=255, height=4 * SUPERSAMPLE),
                _Stroke(np.stack([entry, wrist]) + normal * width * 0.2, (146, 152, 164), max(1, round(width * 0.3))),
                _Stroke(wrist[None], (36, 36, 42), round(width * 1.05), dot=True),
            ]
            heading = math.atan2(direction[1], direction[0])
            jaw_width = max(2, round(width * 0.5))
            for side, color in zip((-1, 1), colors):
                end = wrist + jaw_length * _unit(heading + side * angle / 2)
                jaws.append(_Stroke(np.stack([wrist, end]), color, jaw_width, shadow=200, height=3 * SUPERSAMPLE))
        return strokes + jaws

    # ---- one frame
    def render(self, t: int, rng: np.random.Generator) -> np.ndarray:
        """One uint8 frame: tissue (and blood) in the camera's window, instrument shadows, instruments."""
        S, m = self.S, self.margin
        dx, dy = self.jitter[t]
        window = (slice(m + dy, m + dy + S), slice(m + dx, m + dx + S))
        canvas = self.background[window]
        if self.bleed is not None:
            canvas = self._with_blood(canvas, t, window)
        strokes = self._strokes(t, np.array([-dx, -dy], np.float64))  # the scene moves opposite to the camera
        shadow = Image.new("L", (S, S), 0)
        shade = ImageDraw.Draw(shadow)
        for stroke in strokes:
            if stroke.shadow:
                stroke.paint(shade, stroke.shadow, offset=stroke.height)
        canvas = canvas * (1 - 0.5 * _blurred(shadow, SUPERSAMPLE))
        image = Image.fromarray(np.clip(canvas, 0, 255).astype(np.uint8))
        draw = ImageDraw.Draw(image)
        for stroke in strokes:
            stroke.paint(draw, stroke.color)
        small = np.asarray(image.reduce(SUPERSAMPLE), np.float32)
        small = small * self.vignette + rng.normal(0, 1.5, small.shape).astype(np.float32)
        return np.clip(small + 0.5, 0, 255).astype(np.uint8)
