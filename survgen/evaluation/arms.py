"""The arms of the downstream test: what each one adds to the real training clips.

Besides the synthetic arms of `survgen generate` folders (one per rejection
rule, each with its matched arm without rejection sampling), three controls
tell whether the experiment can see a gain at all and what it is keyed on:

- positive control: real clips of the rare classes from recordings no other
  arm, nor the test, holds (`--reference-real DIR`), as many per class as the
  first synthetic arm adds: the best a generator could give at that count. The
  experiment judges a generator only when this arm's gain is outside the noise.
- codec control: the same real clips, written as `generate` writes its videos
  (its size, frame rate and format): what the encoding alone changes.
- negative control: the first synthetic arm's videos with the rare classes'
  labels rotated (G1's videos labelled G6, G6's G7, G7's G1): the harm the
  experiment must show.
"""

from __future__ import annotations

import csv
import io
import json
import math
import re
from dataclasses import dataclass, field, replace
from pathlib import Path

from survgen.classes import ClassVocabulary
from survgen.data.index import CSV_COLUMNS, ClipRecord, VideoIndex, build_index
from survgen.data.video import read_frames, write_video
from survgen.evaluation.configs import DownstreamConfig, DownstreamError, rejection_rule
from survgen.io import write_text_atomic

MANIFEST = "manifest.json"
CONTROLS = "controls"  # under the report's runs/: the codec control's videos and every control's labels


# ---------------------------------------------------------------- synthetic arms
@dataclass
class Arm:
    """One training set: the real training clips plus (maybe) synthetic ones."""

    name: str  # as printed in tables, e.g. "real + rare (top-3 RS)"
    slug: str  # its folder under OUT/runs
    synthetic: VideoIndex | None = None
    source: dict = field(default_factory=dict)  # folder, rejection rule, videos per class, control
    rows: list[tuple[str, int]] = field(default_factory=list)  # the added videos `(file, class_id)` in `folder`
    folder: Path | None = None
    generation: dict = field(default_factory=dict)  # the generation request's config (frames, fps) of `folder`

    def synthetic_counts(self) -> dict[int, int]:
        return self.synthetic.class_counts() if self.synthetic is not None else {}


def _slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9]+", "-", text).strip("-").lower() or "synthetic"


def _synthetic_index(folder: Path, rows: list[tuple[str, int]], vocabulary: ClassVocabulary, cfg,
                     labels_csv: Path) -> VideoIndex:
    """The clips of generated videos `(file, class_id)`, labelled by `labels_csv`: each video is one segment."""
    index = build_index(folder, clip_length=cfg.clip_length, clip_fps=cfg.clip_fps, layout="csv",
                        labels_csv=labels_csv, vocabulary=vocabulary)
    wanted = {f for f, _ in rows}
    # video ids are made unique to the folder, so synthetic videos never share a "recording" with real ones
    clips = [replace(c, video_id=f"{folder.name}/{c.video_id}") for c in index.clips
             if c.video.relative_to(folder).as_posix() in wanted]
    return replace(index, clips=clips)


def _labels_csv(rows: list[tuple[str, int]], frames: int, path: Path) -> Path:
    """A labels CSV for generated videos `(file, class_id)`, each one segment (rewritten from the manifest)."""
    text = io.StringIO()
    writer = csv.writer(text)
    writer.writerow(CSV_COLUMNS)
    writer.writerows((file, 0, frames, class_id) for file, class_id in rows)
    write_text_atomic(path, text.getvalue())
    return path


def synthetic_arms(folder: str | Path, vocabulary: ClassVocabulary, cfg: DownstreamConfig, work: Path,
                   warnings: list[str]) -> list[Arm]:
    """The arms a `survgen generate` output folder gives: one per rejection rule, each followed by its matched
    arm without rejection sampling; a rule whose videos are not all on disk is skipped with a warning."""
    folder = Path(folder)
    manifest = _generation_manifest(folder, vocabulary)
    records, config = manifest["videos"], manifest["request"]["config"]
    if not config["reject_topk"]:
        kept = [(r["file"], r["class_id"]) for r in records if r["file"] is not None]
        return [_arm(folder, f"{folder.name} (no RS)", kept, vocabulary, cfg, work, rule=None,
                     generation=config)]
    arms = []
    for rule in cfg.rejection:
        passed = rejection_rule(rule)
        chosen = [r for r in records if passed(r)]
        if any(r["file"] is None for r in chosen):
            warnings.append(f"{folder}: {rule} rejection needs videos the generation rejected, which were not kept "
                            "(survgen generate --keep-rejected); its arms are left out")
            continue
        if not chosen:
            warnings.append(f"{folder}: no candidate passes {rule}; its arms are left out")
            continue
        arms.append(_arm(folder, f"{folder.name} ({rule} RS)", [(r["file"], r["class_id"]) for r in chosen],
                         vocabulary, cfg, work, rule=rule, generation=config))
        if cfg.without_rejection and (first := _first_candidates(records, chosen)) is not None:
            matched = _arm(folder, f"{folder.name} (no RS, as many as {rule})", first, vocabulary, cfg, work,
                           rule=None, generation=config)
            arms[-1].source["matched_without_rs"] = matched.name
            arms.append(matched)
    return arms


def _generation_manifest(folder: Path, vocabulary: ClassVocabulary) -> dict:
    if not (folder / MANIFEST).exists():
        raise DownstreamError(f"{folder}: no {MANIFEST}; give the output folder of `survgen generate`")
    stored = ClassVocabulary.for_folder(folder)
    if tuple(stored.names) != tuple(vocabulary.names):
        raise DownstreamError(f"{folder}: generated for classes {list(stored.names)}, but the real data has "
                              f"{list(vocabulary.names)}; generate with a model trained on this dataset")
    manifest = json.loads((folder / MANIFEST).read_text())
    if not any(r["accepted"] for r in manifest["videos"]):
        raise DownstreamError(f"{folder}: holds no accepted video yet; finish `survgen generate` first")
    return manifest


def _first_candidates(records: list[dict], chosen: list[dict]) -> list[tuple[str, int]] | None:
    """As many videos per class as `chosen` holds, the first candidates whatever the classifier said; None when
    one of them was not kept on disk."""
    first = []
    for class_id in sorted({r["class_id"] for r in chosen}):
        n = sum(1 for r in chosen if r["class_id"] == class_id)
        candidates = sorted((r for r in records if r["class_id"] == class_id), key=lambda r: r["candidate"])[:n]
        if any(r["file"] is None for r in candidates):
            return None
        first += [(r["file"], class_id) for r in candidates]
    return first


def _arm(folder: Path, label: str, rows: list[tuple[str, int]], vocabulary: ClassVocabulary,
         cfg: DownstreamConfig, work: Path, *, rule: str | None, generation: dict) -> Arm:
    """Real + the generated videos `rows`, labelled through a CSV written into `work`."""
    csv_path = _labels_csv(rows, generation["num_frames"], work / f"{_slug(label)}.csv")
    per_class = {vocabulary.code(c): sum(1 for _, k in rows if k == c) for c in sorted({k for _, k in rows})}
    source = {"folder": str(folder), "rejection": rule, "rejection_sampling": rule is not None, "videos": per_class}
    if rule is None:
        source["chosen"] = "the first candidates of each class, accepted or not"
    return Arm(name=f"real + {label}", slug=_slug(label),
               synthetic=_synthetic_index(folder, rows, vocabulary, cfg.classifier, csv_path),
               source=source, rows=rows, folder=folder, generation=generation)


def combine(real: VideoIndex, synthetic: VideoIndex | None) -> VideoIndex:
    """The real clips followed by the synthetic ones, as one index to train on."""
    if synthetic is None:
        return real
    return replace(real, clips=real.clips + synthetic.clips, segments=real.segments + synthetic.segments,
                   videos={**real.videos, **synthetic.videos}, warnings=real.warnings + synthetic.warnings)


# ---------------------------------------------------------------- controls
GOLDEN = (math.sqrt(5) - 1) / 2


def spread(items: list, n: int) -> list:
    """`n` of `items`, spread over the list rather than bunched: in the order of frac(i·φ) (a low-discrepancy
    sequence), so neighbouring, overlapping clips are taken last."""
    order = sorted(range(len(items)), key=lambda i: (i * GOLDEN) % 1)
    return [items[i] for i in sorted(order[:n])]


def reference_clips(reference: Path, counts: dict[int, int], cfg: DownstreamConfig, vocabulary: ClassVocabulary,
                    other_videos: set[Path], warnings: list[str]) -> VideoIndex:
    """`counts[c]` clips of each class `c` from the recordings in `reference`, dealt round-robin over the
    recordings and spread within each; refuses a recording another set holds."""
    clf = cfg.classifier
    index = build_index(reference, clip_length=clf.clip_length, clip_fps=clf.clip_fps, vocabulary=vocabulary)
    resolved = {v.resolve() for v in other_videos}
    if shared := [v for v in index.videos if v.resolve() in resolved]:
        raise DownstreamError(f"--reference-real {reference}: holds {shared[0]}, a video of the real training or "
                              "test data; the positive control needs recordings no other arm nor the test holds")
    chosen: list[ClipRecord] = []
    for class_id, n in counts.items():
        by_video: dict[str, list[ClipRecord]] = {}
        for clip in index.clips:
            if clip.class_id == class_id:
                by_video.setdefault(clip.video_id, []).append(clip)
        available = sum(map(len, by_video.values()))
        if available < n:
            warnings.append(f"--reference-real {reference}: {available} clips of {vocabulary.code(class_id)}, "
                            f"fewer than the {n} the synthetic arm adds; the positive control adds them all")
        per_video = {vid: spread(clips, len(clips)) for vid, clips in sorted(by_video.items())}
        dealt = [clip for rank in range(max(map(len, per_video.values()), default=0))
                 for clips in per_video.values() if rank < len(clips) for clip in [clips[rank]]]
        chosen += dealt[:n]
    # the recordings are made unique to the folder, so a held-out `video_01` never shares one with a real one
    clips = [replace(c, video_id=f"{reference.name}/{c.video_id}") for c in chosen]
    return replace(index, clips=clips, segments=[])


def control_arms(reference: Path | None, first: Arm | None, cfg: DownstreamConfig, vocabulary: ClassVocabulary,
                 other_videos: set[Path], work: Path, warnings: list[str]) -> list[Arm]:
    """The positive and codec controls (with `reference`) and the negative control (with a first synthetic arm
    of two or more rare classes), each with as many clips per class as `first` adds."""
    arms = []
    if reference is not None:
        if first is None:
            raise DownstreamError("--reference-real needs a --synthetic folder: the positive control adds as many "
                                  "real clips per class as its first arm adds synthetic ones")
        counts = {c: n for c, n in first.synthetic_counts().items() if n}
        clips = reference_clips(reference, counts, cfg, vocabulary, other_videos, warnings)
        arms.append(Arm(name="real + held-out real (positive control)", slug="control-positive", synthetic=clips,
                        source={"folder": str(reference), "control": "positive",
                                "videos": _per_class(clips, vocabulary), "as_many_as": first.name}))
        if cfg.codec_control:
            arms.append(codec_control(clips, first, cfg, vocabulary, work / CONTROLS / "codec", arms[-1].name))
    if cfg.negative_control and first is not None:
        rare = sorted({k for _, k in first.rows})
        if len(rare) < 2:
            warnings.append(f"{first.name}: one rare class only, so no labels to rotate; no negative control")
        else:
            rotated = {c: rare[(i + 1) % len(rare)] for i, c in enumerate(rare)}
            rows = [(file, rotated[k]) for file, k in first.rows]
            label = f"{first.name.removeprefix('real + ')}, labels rotated (negative control)"
            csv_path = _labels_csv(rows, first.generation["num_frames"], work / CONTROLS / "negative.csv")
            arms.append(Arm(name=f"real + {label}", slug="control-negative", rows=rows, folder=first.folder,
                            synthetic=_synthetic_index(first.folder, rows, vocabulary, cfg.classifier, csv_path),
                            source={**{k: first.source[k] for k in ("folder", "rejection")}, "control": "negative",
                                    "labelled_as": {vocabulary.code(a): vocabulary.code(b)
                                                    for a, b in rotated.items()}}))
    return arms


def codec_control(clips: VideoIndex, first: Arm, cfg: DownstreamConfig, vocabulary: ClassVocabulary, folder: Path,
                  positive: str) -> Arm:
    """The positive control's clips, decoded and written as the first synthetic arm's videos were (their size,
    frame rate and container), into `folder`; a video already written is kept (the experiment resumes)."""
    sample = first.folder / first.rows[0][0]
    size = read_frames(sample, [0]).shape[1]
    rows = []
    for i, clip in enumerate(clips.clips):
        name = f"{vocabulary.code(clip.class_id)}_{i:05d}{sample.suffix}"
        if not (folder / name).exists():
            write_video(folder / name, read_frames(clip.video, clips.frames(clip), size), fps=first.generation["fps"])
        rows.append((name, clip.class_id))
    csv_path = _labels_csv(rows, clips.clip_length, folder.parent / "codec.csv")
    index = _synthetic_index(folder, rows, vocabulary, cfg.classifier, csv_path)
    return Arm(name="real + held-out real, encoded as generated (codec control)", slug="control-codec",
               synthetic=index, rows=rows, folder=folder,
               source={"folder": str(clips.root), "control": "codec", "videos": _per_class(index, vocabulary),
                       "encoded_as": str(first.folder), "compare_with": positive})


def _per_class(index: VideoIndex, vocabulary: ClassVocabulary) -> dict[str, int]:
    return {vocabulary.code(c): n for c, n in index.class_counts().items() if n}

