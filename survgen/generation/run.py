"""`survgen generate`: sample candidates until `n` videos per class are accepted by the classifier.

Rejection sampling (the paper's last step): a video made for class l is kept iff l
is among the video classifier's top-k classes for it. The classifier was trained on
real clips only, so it judges whether the motion and look of a generated video are
recognisably those of the class it was made for.

The output folder is a dataset in the project's CSV layout, ready to be merged with
the real one (`survgen data stats OUT` reads it):

    OUT/manifest.json       the request, model hashes, and one record per candidate
    OUT/labels.csv          video,start_frame,end_frame,class for every accepted video
    OUT/classes.json        the class vocabulary
    OUT/videos/             accepted videos (MP4; GIF too with --gif)
    OUT/rejected/           rejected videos, only with --keep-rejected
    OUT/contact_sheet.png   frames of some accepted and rejected videos

Resumable: candidate i of class l always has the same seed, the manifest is rewritten
(atomically) after every batch, and a re-run of the same request continues after the
last recorded candidate, so a killed run loses at most the batch in flight.
"""

from __future__ import annotations

import csv
import dataclasses
import hashlib
import io
import json
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch
import torch.nn.functional as F

from survgen.classes import ClassVocabulary
from survgen.data.index import CLIP_FPS
from survgen.generation.sampler import VideoSampler, check_sampling_options
from survgen.io import write_json_atomic, write_text_atomic
from survgen.visualize import grid, save_png, to_uint8

MANIFEST = "manifest.json"
CONTACT_SHEET_ROWS = 4  # accepted and rejected videos each


class GenerationError(ValueError):
    """A generation request that cannot be run as given."""


@dataclass
class GenerationConfig:
    classes: list[str] = field(default_factory=lambda: ["G7"])  # codes, ids or names
    n: int = 8  # accepted videos per class
    reject_topk: int = 3  # keep a video iff its class is in the classifier's top-k; 0 keeps every video
    max_candidates: int | None = None  # per class; None: 20 × n
    batch_size: int = 4
    sampler: str = "ddim"
    steps: int = 25
    guidance: float = 3.0
    num_frames: int = 16
    fps: float | None = None  # None: the clip rate the model was trained at
    seed: int = 0
    gif: bool = False
    keep_rejected: bool = False

    def check(self) -> None:
        problems = []
        if self.n < 1:
            problems.append(f"--n must be at least 1, got {self.n}")
        if self.reject_topk < 0:
            problems.append(f"--reject-topk must be 0 (no rejection) or more, got {self.reject_topk}")
        if self.max_candidates is not None and self.max_candidates < self.n:
            problems.append(f"--max-candidates ({self.max_candidates}) must be at least --n ({self.n})")
        if self.batch_size < 1:
            problems.append(f"--batch-size must be at least 1, got {self.batch_size}")
        if self.num_frames < 1:
            problems.append(f"--frames must be at least 1, got {self.num_frames}")
        if self.fps is not None and not self.fps > 0:
            problems.append(f"--fps must be positive, got {self.fps}")
        if not self.classes:
            problems.append("give at least one --class")
        try:
            check_sampling_options(self.sampler, self.steps, self.guidance)
        except ValueError as e:
            problems.append(str(e))
        if problems:
            raise GenerationError("; ".join(problems))

    @property
    def candidate_cap(self) -> int:
        return self.max_candidates if self.max_candidates is not None else 20 * self.n


def candidate_seed(seed: int, class_id: int, candidate: int) -> int:
    """The seed of candidate `candidate` of class `class_id`: fixed, so a resumed run continues the sequence."""
    digest = hashlib.sha256(f"survgen-generate:{seed}:{class_id}:{candidate}".encode()).digest()
    return int.from_bytes(digest[:8], "little") % 2**63


def accepted(probabilities: torch.Tensor, class_id: int, topk: int) -> bool:
    """The rejection rule: is `class_id` among the `topk` most probable classes?"""
    if topk <= 0:
        return True
    return class_id in probabilities.topk(min(topk, probabilities.numel())).indices.tolist()


def file_sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


class Judge:
    """The video classifier as the rejection model: class probabilities for generated videos."""

    def __init__(self, classifier, vocabulary: ClassVocabulary, generator_vocabulary: ClassVocabulary, where: str,
                 fps: float):
        if tuple(vocabulary.names) != tuple(generator_vocabulary.names):
            raise GenerationError(
                f"{where}: the classifier was trained on classes {list(vocabulary.names)}, but the generator "
                f"makes {list(generator_vocabulary.names)}; train a classifier on the generator's dataset"
            )
        self.classifier = classifier.eval()
        self.size = classifier.config.image_size
        self.clip_length = classifier.config.clip_length
        self.stride = classifier.config.stride_for(fps)  # generated frames come at `fps`
        self.span = (self.clip_length - 1) * self.stride + 1  # frames one clip covers

    @torch.no_grad()
    def probabilities(self, videos: torch.Tensor) -> torch.Tensor:
        """`videos` (b, f, 3, H, W) in [-1, 1] -> (b, classes), resized to what the classifier was trained on."""
        b, f = videos.shape[:2]
        x = videos.to(next(self.classifier.parameters()).device).float()
        if x.shape[-1] != self.size or x.shape[-2] != self.size:
            x = F.interpolate(x.flatten(0, 1), size=(self.size, self.size), mode="bilinear", antialias=True,
                              align_corners=False).unflatten(0, (b, f))
        return self.classifier(x[:, : self.span : self.stride]).float().softmax(-1).cpu()


def model_fingerprint(model_run: Path, spatial_dir: Path, arch: str) -> dict:
    """Hashes of the weights a video came from, for the manifest."""
    temporal = model_run / "model" / "temporal.safetensors"
    unet = spatial_dir / "unet" / "diffusion_pytorch_model.safetensors"
    return {"run": str(model_run), "arch": arch, "temporal_sha256": file_sha256(temporal),
            "spatial_unet_sha256": file_sha256(unet) if unet.exists() and arch == "survgen" else None}


def _request(cfg: GenerationConfig, model: Path, classifier: Path | None) -> dict:
    return {"config": dataclasses.asdict(cfg), "model": str(Path(model).resolve()),
            "classifier": str(Path(classifier).resolve()) if classifier else None}


def _open_output(out: Path, request: dict) -> dict | None:
    """The manifest to continue, or None for a new folder; refuse a folder holding something else."""
    manifest_path = out / MANIFEST
    if manifest_path.exists():
        manifest = json.loads(manifest_path.read_text())
        if manifest.get("request") != request:
            old = manifest.get("request", {})
            changed = sorted(k for k in set(old.get("config", {})) | set(request["config"])
                             if old.get("config", {}).get(k) != request["config"].get(k))
            changed += [k for k in ("model", "classifier") if old.get(k) != request[k]]
            raise GenerationError(
                f"{out}: holds a generation made with other options (differs in: {', '.join(changed)}); "
                "re-run the same command to continue it, or choose a new --out"
            )
        return manifest
    if out.exists() and any(out.iterdir()):
        raise GenerationError(f"{out}: folder is not empty and holds no {MANIFEST}; choose a new --out")
    try:
        out.mkdir(parents=True, exist_ok=True)
        probe = out / ".write-test"
        probe.write_text("")
        probe.unlink()
    except OSError as e:
        raise GenerationError(f"{out}: cannot write there ({e.strerror}); choose another --out") from None
    return None


def _write_dataset_files(out: Path, videos: list[dict], vocabulary: ClassVocabulary, num_frames: int) -> None:
    rows = io.StringIO()
    writer = csv.writer(rows)
    writer.writerow(["video", "start_frame", "end_frame", "class"])
    for v in videos:
        if v["accepted"]:
            writer.writerow([v["file"], 0, num_frames, v["class_id"]])
    write_text_atomic(out / "labels.csv", rows.getvalue())
    vocabulary.save(out)


def generate(model: str | Path, out: str | Path, cfg: GenerationConfig, *, classifier: str | Path | None = None,
             progress: bool = True, loaded=None) -> dict:
    """Generate until `cfg.n` videos per class are accepted (or the candidate cap is hit); returns the manifest.

    `loaded` may pass in already-loaded `(video_model, spatial, run)` and `(classifier, vocabulary)` to skip loading.
    """
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    from survgen.data.video import write_video
    from survgen.models.video_models import arch_of
    from survgen.training.stage1 import spatial_model_dir
    from survgen.training.stage2 import load_video_model

    cfg.check()
    model, out = Path(model), Path(out)
    if cfg.reject_topk > 0 and classifier is None:
        raise GenerationError("rejection sampling needs --classifier RUN (a `survgen train-classifier` run); "
                              "or pass --reject-topk 0 to keep every video")
    video_model, spatial, run = loaded[0] if loaded else load_video_model(model)
    if not loaded and torch.cuda.is_available():  # loaders give CPU models; sample where it is fast
        video_model.to("cuda")
        spatial.vae.to("cuda")
        spatial.text_encoder.to("cuda")
    vocabulary = run.vocabulary
    class_ids = [vocabulary.resolve(c) for c in cfg.classes]
    if cfg.fps is None:
        cfg = dataclasses.replace(cfg, fps=run.options.get("clip_fps") or CLIP_FPS)
    judge = None
    if classifier is not None:
        if loaded and loaded[1] is not None:
            classifier_model, classifier_vocab = loaded[1]
        else:
            from survgen.training.classifier import load_classifier

            classifier_model, classifier_vocab, _ = load_classifier(classifier)
            classifier_model.to(next(video_model.parameters()).device)
        judge = Judge(classifier_model, classifier_vocab, vocabulary, str(classifier), cfg.fps)
        if cfg.num_frames < judge.span:
            raise GenerationError(f"{classifier}: the classifier reads {judge.span}-frame clips; "
                                  f"generate at least that many (--frames {judge.span})")
        if cfg.reject_topk > len(vocabulary):
            raise GenerationError(f"--reject-topk {cfg.reject_topk} is more than the {len(vocabulary)} classes")

    request = _request(cfg, model, classifier)
    manifest = _open_output(out, request)
    if manifest is None:
        fingerprint = model_fingerprint(model, spatial_model_dir(run.parent_path), arch_of(video_model))
        manifest = {"request": request, "model": fingerprint, "videos": [], "summary": {}}
    videos: list[dict] = manifest["videos"]
    sampler = VideoSampler(video_model, spatial, vocabulary)
    console = Console(stderr=True)
    sheet = {"accepted": [], "rejected": []}  # (frames, label) of this session's first few videos

    def save_manifest():
        manifest["summary"] = summarise(videos, class_ids, vocabulary, cfg)
        write_json_atomic(out / MANIFEST, manifest)

    started = time.perf_counter()
    made_this_session = 0
    columns = (TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(),
               TextColumn("accepted · {task.fields[candidates]} candidates · {task.fields[rate]} kept · "
                          "{task.fields[speed]} videos/s"), TimeElapsedColumn())
    with Progress(*columns, console=console, disable=not progress) as bar:
        for class_id in class_ids:
            code = vocabulary.code(class_id)
            mine = [v for v in videos if v["class_id"] == class_id]
            n_accepted, n_candidates = sum(v["accepted"] for v in mine), len(mine)
            task = bar.add_task(code, total=cfg.n, completed=n_accepted, candidates=n_candidates, rate="-",
                                speed="-")
            while n_accepted < cfg.n and n_candidates < cfg.candidate_cap:
                # never more candidates than could still be needed: exactly n are kept, no surplus
                count = min(cfg.batch_size, cfg.n - n_accepted, cfg.candidate_cap - n_candidates)
                indices = list(range(n_candidates, n_candidates + count))
                seeds = [candidate_seed(cfg.seed, class_id, i) for i in indices]
                clips = sampler.sample([class_id] * count, seeds, num_frames=cfg.num_frames, steps=cfg.steps,
                                       guidance=cfg.guidance, sampler=cfg.sampler)
                probs = judge.probabilities(clips) if judge is not None else None
                frames = to_uint8(clips)  # (b, f, H, W, 3)
                for j, (i, seed) in enumerate(zip(indices, seeds)):
                    keep = accepted(probs[j], class_id, cfg.reject_topk) if probs is not None else True
                    record = {"candidate": i, "class": code, "class_id": class_id,
                              "class_name": vocabulary.name(class_id), "prompt": vocabulary.prompt(class_id),
                              "seed": seed, "sampler": cfg.sampler, "steps": cfg.steps, "guidance": cfg.guidance,
                              "frames": cfg.num_frames, "accepted": keep, "file": None}
                    if probs is not None:
                        top = probs[j].topk(min(max(cfg.reject_topk, 3), probs.shape[1]))
                        record["classifier_topk"] = [{"class": vocabulary.code(int(c)), "probability": round(float(p), 4)}
                                                     for p, c in zip(top.values, top.indices)]
                        record["probability_of_class"] = round(float(probs[j, class_id]), 4)
                    name = f"{code}_{i:05d}"
                    folder = "videos" if keep else ("rejected" if cfg.keep_rejected else None)
                    if folder is not None:
                        record["file"] = f"{folder}/{name}.mp4"
                        write_video(out / record["file"], frames[j], fps=cfg.fps)
                        if cfg.gif:
                            write_video(out / folder / f"{name}.gif", frames[j], fps=cfg.fps)
                    videos.append(record)
                    kind = "accepted" if keep else "rejected"
                    if len(sheet[kind]) < CONTACT_SHEET_ROWS:
                        top1 = record.get("classifier_topk", [{}])[0].get("class", "-")
                        sheet[kind].append((frames[j], f"{name} {'kept' if keep else 'rejected'} (top-1 {top1})"))
                    n_accepted += keep
                n_candidates += count
                made_this_session += count
                _write_dataset_files(out, videos, vocabulary, cfg.num_frames)
                save_manifest()
                speed = made_this_session / (time.perf_counter() - started)
                bar.update(task, completed=n_accepted, candidates=n_candidates,
                           rate=f"{n_accepted / n_candidates:.0%}", speed=f"{speed:.2f}")
            if n_accepted < cfg.n:
                console.print(f"[yellow]warning:[/] {code}: only {n_accepted} of {cfg.n} videos accepted after "
                              f"{n_candidates} candidates (the cap); raise --max-candidates, lower --reject-topk, "
                              "or train the model longer", highlight=False)

    _write_contact_sheet(out, sheet)  # the dataset files and the manifest are current after every batch
    return manifest


def summarise(videos: list[dict], class_ids: list[int], vocabulary: ClassVocabulary, cfg: GenerationConfig) -> dict:
    per_class = {}
    for class_id in class_ids:
        mine = [v for v in videos if v["class_id"] == class_id]
        kept = sum(v["accepted"] for v in mine)
        per_class[vocabulary.code(class_id)] = {
            "accepted": kept, "candidates": len(mine),
            "acceptance_rate": round(kept / len(mine), 4) if mine else None,
            "complete": kept >= cfg.n,
        }
    return {"per_class": per_class, "complete": all(c["complete"] for c in per_class.values())}


def _write_contact_sheet(out: Path, sheet: dict) -> None:
    rows = sheet["accepted"] + sheet["rejected"]
    if not rows:
        return
    step = max(1, rows[0][0].shape[0] // 8)  # at most 8 frames per video
    save_png(grid([frames[::step] for frames, _ in rows], [label for _, label in rows]), out / "contact_sheet.png")
