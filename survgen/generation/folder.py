"""A generation folder's files: the manifest, the dataset files, and the parts many processes leave.

The output folder is a dataset in the project's CSV layout, ready to be merged with
the real one (`survgen data stats OUT` reads it):

    OUT/manifest.json       the request, model hashes, and one record per candidate
    OUT/labels.csv          video,start_frame,end_frame,class for every accepted video
    OUT/classes.json        the class vocabulary
    OUT/videos/             accepted videos (--format: FFV1 .mkv, lossless, by default; GIF too with --gif)
    OUT/rejected/           rejected videos, only with --keep-rejected
    OUT/contact_sheet.png   frames of some accepted and rejected videos
    OUT/preview.mp4         those videos playing, for people (H.264)
    OUT/parts/              while many processes run: each one's records (see below)

Many processes (`survgen.generation.run`): each writes its videos and its part,
OUT/parts/rank-R-of-W.json (its records of this run), after its block; rank 0 then
writes the merged manifest. The next run, with any number of processes, merges the
parts into the manifest and removes them, as rank 0 does at the end. The manifest
does not say how many processes made it: nothing in it depends on that.
"""

from __future__ import annotations

import contextlib
import csv
import dataclasses
import hashlib
import io
import json
from pathlib import Path
from typing import Callable

from survgen.classes import ClassVocabulary
from survgen.console import warn
from survgen.generation.distributed import World
from survgen.io import OutputPathError, output_folder, shown_path, write_json_atomic, write_text_atomic
from survgen.models.loading import TEMPORAL_WEIGHTS

MANIFEST = "manifest.json"
# What a request that does not name an option did (the computation before the option was added), and what to
# add to the command to continue such a folder.
OPTIONS_BEFORE_THEY_EXISTED = {"guidance_interval": (None, "no --guidance-interval"),
                               "cache_interval": (1, "--cache-interval 1"),
                               "text_per_video": (False, "--per-frame-text"),
                               "video_format": ("mp4", "--format mp4")}
PARTS = "parts"  # each process's records while many run
PART_FILES = ("rank-*-of-*.json", ".rank-*-of-*.json.*.tmp")  # and what a killed atomic write left


class GenerationError(ValueError):
    """A generation request that cannot be run as given."""


def generation_request(cfg, model: Path, classifier: Path | None) -> dict:
    """What the folder records as asked for, and a re-run must ask for again: `cfg` (the GenerationConfig) and
    the model and classifier runs."""
    return {"config": dataclasses.asdict(cfg), "model": shown_path(model),  # no machine's absolute paths
            "classifier": shown_path(classifier) if classifier else None}


def model_fingerprint(model_run: Path, spatial_dir: Path, arch: str) -> dict:
    """Hashes of the weights a video came from, for the manifest."""
    temporal = model_run / "model" / TEMPORAL_WEIGHTS
    unet = spatial_dir / "unet" / "diffusion_pytorch_model.safetensors"
    return {"run": shown_path(model_run), "arch": arch, "temporal_sha256": file_sha256(temporal),
            "spatial_unet_sha256": file_sha256(unet) if unet.exists() and arch == "survgen" else None}


def file_sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def check_output(out: Path) -> bool:
    """Refuse, before any work, an --out that is a file, a folder of something else, or not writable;
    True when it holds a generation (a manifest) to continue."""
    try:
        return output_folder(out, option="--out", marker=MANIFEST)
    except OutputPathError as e:
        raise GenerationError(str(e)) from None


def open_manifest(out: Path, request: dict, environment: dict, fingerprint: Callable[[], dict]) -> dict:
    """The manifest to continue, with the parts of a many-process run merged in, or a new one."""
    manifest = open_output(out, request)
    if manifest is None:
        return {"request": request, "model": fingerprint(), "environment": environment, "videos": [], "summary": {}}
    if manifest["videos"] and manifest.get("environment") not in (None, environment):
        _warn_other_setup(out, manifest["environment"], environment)
    _merge_parts(out, manifest["videos"])
    return manifest


def recorded_batch_size(out: Path) -> int | None:
    """The batch size a generation folder's manifest records (None: no manifest, or one that does not say);
    an unreadable manifest is left for `open_output` to report."""
    try:
        size = json.loads((out / MANIFEST).read_text())["request"]["config"]["batch_size"]
    except (OSError, ValueError, KeyError, TypeError, UnicodeDecodeError):
        return None
    return size if isinstance(size, int) and size >= 1 else None


def open_output(out: Path, request: dict) -> dict | None:
    """The manifest to continue, or None for a new folder; refuse a folder holding something else."""
    manifest_path = out / MANIFEST
    if check_output(out):
        try:
            manifest = json.loads(manifest_path.read_text())
            if not isinstance(manifest, dict) or not isinstance(manifest.get("videos"), list):
                raise ValueError("not a generation manifest")
        except (ValueError, UnicodeDecodeError) as e:
            raise GenerationError(f"{manifest_path}: unreadable ({e}); it was edited or damaged: restore it, or "
                                  "choose a new --out") from None
        old = manifest.get("request", {})
        lacked = set(OPTIONS_BEFORE_THEY_EXISTED) - set(old.get("config", {}))
        if isinstance(old.get("config"), dict):  # a folder from before an option existed was made without it
            before = {k: value for k, (value, _) in OPTIONS_BEFORE_THEY_EXISTED.items()}
            old = {**old, "config": {**before, **old["config"]}}
        if old != request:
            changed = sorted(k for k in set(old.get("config", {})) | set(request["config"])
                             if old.get("config", {}).get(k) != request["config"].get(k))
            flags = [OPTIONS_BEFORE_THEY_EXISTED[k][1] for k in changed if k in lacked]
            changed += [k for k in ("model", "classifier") if old.get(k) != request[k]]
            hint = f" (it was made before those options existed: add {', '.join(flags)})" if flags else ""
            raise GenerationError(
                f"{out}: holds a generation made with other options (differs in: {', '.join(changed)}){hint}; "
                "re-run the command that made it to continue it, or choose a new --out"
            )
        return manifest
    out.mkdir(parents=True, exist_ok=True)
    return None


def _warn_other_setup(out: Path, recorded: dict, environment: dict) -> None:
    differs = ", ".join(f"{k} {recorded.get(k)} -> {v}" for k, v in environment.items() if recorded.get(k) != v)
    warn(f"{out}: this folder was started on another setup ({differs}); videos made again here may differ from "
         "lost ones made there by float rounding; re-run on that setup to get them back bit for bit")


def _merge_parts(out: Path, videos: list[dict]) -> None:
    """Add to `videos` the records in the parts an earlier many-process run left; a part's record replaces the
    manifest's one of the same candidate (it was made again later)."""
    merged = {record_key(v): v for v in videos}
    for path in sorted((out / PARTS).glob(PART_FILES[0])):
        try:
            merged.update((record_key(r), r) for r in json.loads(path.read_text())["videos"])
        except (ValueError, KeyError, TypeError, UnicodeDecodeError) as e:
            raise GenerationError(f"{path}: unreadable ({e}); it was edited or damaged: delete it (the videos it "
                                  "lists are made again) and re-run") from None
    videos[:] = merged.values()


class Part:
    """This process's part of the manifest while many run: the records it made or remade in this run, rewritten
    (atomically) to OUT/parts/rank-R-of-W.json after each of its batches, so that a killed process loses at
    most its batch in flight, also when rank 0, which writes the merged manifest, dies first. One process has
    no part: its manifest is rewritten after every batch."""

    def __init__(self, out: Path, world: World):
        self.path = out / PARTS / f"rank-{world.rank}-of-{world.size}.json" if world.size > 1 else None
        self.records: dict[tuple[int, int], dict] = {}

    def add(self, records: list[dict]) -> None:
        if self.path is None:
            return
        self.records.update((record_key(r), r) for r in records)
        write_json_atomic(self.path, {"videos": list(self.records.values())})


def record_key(record: dict) -> tuple[int, int]:
    """A candidate's identity in the manifest: its class and number."""
    return record["class_id"], record["candidate"]


def remove_parts(out: Path) -> None:
    folder = out / PARTS
    for pattern in PART_FILES:
        for path in folder.glob(pattern):
            path.unlink()
    with contextlib.suppress(OSError):  # absent, or holding something else
        folder.rmdir()


def write_dataset_files(out: Path, videos: list[dict], vocabulary: ClassVocabulary, num_frames: int) -> None:
    """labels.csv: every accepted video whose file is there (a lost one is regenerated before this is written)."""
    rows = io.StringIO()
    writer = csv.writer(rows)
    writer.writerow(["video", "start_frame", "end_frame", "class"])
    for v in videos:
        if v["accepted"] and v.get("file") and (out / v["file"]).is_file():
            writer.writerow([v["file"], 0, num_frames, v["class_id"]])
    write_text_atomic(out / "labels.csv", rows.getvalue())
    vocabulary.save(out)


def summarise(videos: list[dict], class_ids: list[int], vocabulary: ClassVocabulary, n: int) -> dict:
    """The manifest's summary: each class's accepted videos and candidates, and whether it has its `n`."""
    per_class = {}
    for class_id in class_ids:
        mine = [v for v in videos if v["class_id"] == class_id]
        kept = sum(v["accepted"] for v in mine)
        per_class[vocabulary.code(class_id)] = {
            "accepted": kept, "candidates": len(mine),
            "acceptance_rate": round(kept / len(mine), 4) if mine else None,
            "complete": kept >= n,
        }
    return {"per_class": per_class, "complete": all(c["complete"] for c in per_class.values())}
