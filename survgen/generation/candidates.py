"""Candidate videos of one generation folder: sampled a batch at a time, judged, written, checked on disk.

A candidate's record (one entry of the manifest's `videos`) holds its seed and its
batch (the first candidate number and the size of the batch it was sampled in). A
video is a function of its seed and, by float rounding, of its batch-mates (see
`survgen.diffusion.video_sampler`), so a lost or damaged video is made again by sampling
its whole batch again: bit for bit the video it replaces, on the same setup.

Batches are fixed blocks of candidate numbers (`batch_plan`), so a video's batch-mates
do not depend on how many videos were accepted before it or on how many processes
share the work; a class ends at its n-th accepted candidate (`class_end`), and the
candidates after it in that batch are surplus: sampled, never recorded or written.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from survgen.classes import ClassVocabulary
from survgen.data.video import write_video
from survgen.diffusion.video_sampler import VideoSampler
from survgen.visualize import to_uint8


def candidate_seed(seed: int, class_id: int, candidate: int) -> int:
    """The seed of candidate `candidate` of class `class_id`: fixed, so a resumed run continues the sequence."""
    digest = hashlib.sha256(f"survgen-generate:{seed}:{class_id}:{candidate}".encode()).digest()
    return int.from_bytes(digest[:8], "little") % 2**63


def accepted(probabilities: torch.Tensor, class_id: int, topk: int) -> bool:
    """The rejection rule: is `class_id` among the `topk` most probable classes?"""
    if topk <= 0:
        return True
    return class_id in probabilities.topk(min(topk, probabilities.numel())).indices.tolist()


def batch_plan(recorded: set[int], batch_size: int, cap: int) -> list[range]:
    """The batches a class still needs, in candidate order, given its recorded candidate numbers: the blocks
    [k·B, (k+1)·B) cut at the cap, less what is recorded. A block recorded in part (by a manifest from before
    fixed blocks, or a class reopened when a remade video lost its verdict) goes on with the rest of it."""
    batches: list[range] = []
    for c in range(cap):
        if c in recorded:
            continue
        if batches and batches[-1].stop == c and c % batch_size:  # the next one of the same block
            batches[-1] = range(batches[-1].start, c + 1)
        else:
            batches.append(range(c, c + 1))
    return batches


def class_end(records: list[dict], n: int, cap: int) -> int | None:
    """The last candidate a class keeps: its n-th accepted one in candidate order, or the cap's last one when
    fewer are accepted; None while a candidate before that is not made yet."""
    verdicts = {r["candidate"]: r["accepted"] for r in records}
    kept = 0
    for c in range(cap):
        if c not in verdicts:
            return None
        kept += verdicts[c]
        if kept == n:
            return c
    return cap - 1


def video_files(record: dict, gif: bool) -> list[str]:
    """The files a candidate's record stands for: its video, and its GIF with --gif (none for an unkept one)."""
    if not record.get("file"):
        return []
    return [record["file"]] + ([str(Path(record["file"]).with_suffix(".gif"))] if gif else [])


def video_problem(path: Path, num_frames: int, fps: float) -> str | None:
    """Why the generated video `path` is not whole (missing, empty, undecodable, wrong frame count), or None."""
    from survgen.data.video import VideoReadError, probe_video, read_frames

    if not path.is_file():
        return "missing"
    if path.stat().st_size == 0:
        return "empty (0 bytes)"
    try:
        found = probe_video(path).num_frames
        read_frames(path, range(found))
    except VideoReadError as e:
        return str(e).removeprefix(f"{path}: ").split("; ")[0]
    if path.suffix.lower() == ".gif":
        return _gif_problem(path, num_frames, fps)
    return f"{found} frames, not {num_frames}" if found != num_frames else None


def _gif_problem(path: Path, num_frames: int, fps: float) -> str | None:
    """A GIF stores a run of identical frames as one longer frame (`write_video`: max(10, round(1000 / fps)) ms
    each), so its length is counted in time: a truncated one plays shorter."""
    from PIL import Image, ImageSequence

    frame_ms = max(10, round(1000 / fps))
    try:
        with Image.open(path) as image:
            total = 0
            for frame in ImageSequence.Iterator(image):
                frame.load()
                total += frame.info.get("duration", 0)
    except (OSError, ValueError, SyntaxError) as e:
        return f"not a readable GIF ({e})"
    found = round(total / frame_ms)
    return f"{found} frames long, not {num_frames}" if found != num_frames else None


@dataclass
class Candidates:
    """Makes the candidates of a generation folder: samples a batch, judges it (when there is a judge, an object
    with `probabilities(videos)`), writes the kept videos. `cfg` is the request's GenerationConfig."""

    out: Path
    cfg: object
    sampler: VideoSampler
    judge: object | None
    vocabulary: ClassVocabulary

    def make(self, class_id: int, indices: list[int]) -> list[tuple[dict, np.ndarray]]:
        """New candidates `indices` of a class, sampled as one batch and judged: each one's record (its file
        named; `write` writes it, once the candidate is known to be kept) and uint8 frames."""
        cfg, code = self.cfg, self.vocabulary.code(class_id)
        seeds = [candidate_seed(cfg.seed, class_id, i) for i in indices]
        frames, probs = self.sample(class_id, seeds)
        made = []
        for j, (i, seed) in enumerate(zip(indices, seeds)):
            record = {"candidate": i, "batch": indices[0], "batch_size": len(indices), "class": code,
                      "class_id": class_id, "class_name": self.vocabulary.name(class_id),
                      "prompt": self.vocabulary.prompt(class_id), "seed": seed, "sampler": cfg.sampler,
                      "steps": cfg.steps, "guidance": cfg.guidance, "frames": cfg.num_frames, "accepted": True,
                      "file": None}
            self._judge(record, probs[j] if probs is not None else None)
            self._name(record)
            made.append((record, frames[j]))
        return made

    def write(self, record: dict, frames: np.ndarray) -> None:
        """Write the record's video (and its GIF with --gif), atomically; nothing for an unkept rejected one."""
        for relative in video_files(record, self.cfg.gif):
            write_video(self.out / relative, frames, fps=self.cfg.fps)

    def remake(self, batch: list[dict], damaged: list[dict]) -> list[dict]:
        """Sample `batch` (the records of one batch) again and rewrite the files of those in `damaged`, judged
        again; returns the records whose verdict changed."""
        members, seeds = self._sampled_with(batch)
        frames, probs = self.sample(batch[0]["class_id"], seeds)
        changed = []
        for record in batch:
            if not any(record is d for d in damaged):
                continue
            j = members.index(record["candidate"])
            before, old_files = record["accepted"], video_files(record, self.cfg.gif)
            self._judge(record, probs[j] if probs is not None else None)
            self._name(record)
            self.write(record, frames[j])
            for stale in set(old_files) - set(video_files(record, self.cfg.gif)):
                (self.out / stale).unlink(missing_ok=True)  # the damaged copy under the old verdict's folder
            if record["accepted"] != before:
                changed.append(record)
        return changed

    def _sampled_with(self, batch: list[dict]) -> tuple[list[int], list[int]]:
        """The candidate numbers and seeds a recorded batch was sampled with: the whole block, surplus candidates
        included, when its records give its size; else (a manifest from before fixed blocks, whose batches held
        recorded candidates only) the records' own."""
        first = batch[0]
        if "batch_size" not in first:
            return [r["candidate"] for r in batch], [r["seed"] for r in batch]
        members = list(range(first["batch"], first["batch"] + first["batch_size"]))
        return members, [candidate_seed(self.cfg.seed, first["class_id"], c) for c in members]

    def sample(self, class_id: int, seeds: list[int]) -> tuple[np.ndarray, torch.Tensor | None]:
        """Videos of `class_id` for `seeds`, sampled as one batch, as uint8 frames; and the judge's
        probabilities for them (None without a judge)."""
        cfg = self.cfg
        clips = self.sampler.sample([class_id] * len(seeds), seeds, num_frames=cfg.num_frames, steps=cfg.steps,
                                    guidance=cfg.guidance, sampler=cfg.sampler,
                                    guidance_interval=cfg.guidance_interval, cache_interval=cfg.cache_interval,
                                    text_per_video=cfg.text_per_video)
        probs = self.judge.probabilities(clips) if self.judge is not None else None
        return to_uint8(clips), probs  # (b, f, H, W, 3)

    def _judge(self, record: dict, probs: torch.Tensor | None) -> None:
        """The record's verdict and the classifier's view, from one video's class probabilities."""
        record["accepted"] = accepted(probs, record["class_id"], self.cfg.reject_topk) if probs is not None else True
        if probs is not None:
            top = probs.topk(min(max(self.cfg.reject_topk, 3), probs.numel()))
            record["classifier_topk"] = [{"class": self.vocabulary.code(int(c)), "probability": round(float(p), 4)}
                                         for p, c in zip(top.values, top.indices)]
            record["probability_of_class"] = round(float(probs[record["class_id"]]), 4)

    def _name(self, record: dict) -> None:
        """The record's file, by its verdict: under videos/, rejected/ (--keep-rejected) or none."""
        name = f"{record['class']}_{record['candidate']:05d}"
        folder = "videos" if record["accepted"] else ("rejected" if self.cfg.keep_rejected else None)
        record["file"] = f"{folder}/{name}.{self.cfg.video_format}" if folder is not None else None
