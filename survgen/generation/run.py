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

A re-run also checks what is on disk: every video the manifest names (and its GIF with
--gif) must exist, decode and have its frame count; a missing or damaged one is made
again in its recorded batch, judged again and written atomically
(`survgen.generation.candidates`), and labels.csv is rewritten from the files that exist.

Deterministic: the batches are a function of the request and of how many videos are
accepted so far, a video a function of its seed and batch, and the MP4 encoder a
function of the frames (`survgen.data.video.write_video`), so the same request on the
same setup (`sampling_environment`) writes the same bytes, and a video made again
equals the one it replaces.
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
from typing import Callable

import torch
import torch.nn.functional as F

from survgen.classes import ClassVocabulary
from survgen.console import say, warn
from survgen.data.index import CLIP_FPS
from survgen.diffusion.video_sampler import VideoSampler, check_sampling_options
from survgen.generation.candidates import Candidates, video_files, video_problem
from survgen.io import OutputPathError, output_folder, shown_path, write_json_atomic, write_text_atomic
from survgen.models.loading import TEMPORAL_WEIGHTS, load_classifier, load_video_model, spatial_model_dir
from survgen.visualize import grid, save_png

MANIFEST = "manifest.json"
CONTACT_SHEET_ROWS = 4  # accepted and rejected videos each
LISTED = 5  # files named in a message before "and N more"


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


def file_sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


@dataclass
class ClassReport:
    """What `generate` tells its caller's progress display: a class at its start and after every batch."""

    code: str
    wanted: int
    accepted: int
    candidates: int
    videos_per_s: float | None = None  # candidates made per second this session


ClassReporter = Callable[[ClassReport], None]


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


def _listing(items: list[str]) -> str:
    more = len(items) - LISTED
    return ", ".join(items[:LISTED]) + (f" and {more} more" if more > 0 else "")


def model_fingerprint(model_run: Path, spatial_dir: Path, arch: str) -> dict:
    """Hashes of the weights a video came from, for the manifest."""
    temporal = model_run / "model" / TEMPORAL_WEIGHTS
    unet = spatial_dir / "unet" / "diffusion_pytorch_model.safetensors"
    return {"run": shown_path(model_run), "arch": arch, "temporal_sha256": file_sha256(temporal),
            "spatial_unet_sha256": file_sha256(unet) if unet.exists() and arch == "survgen" else None}


def _request(cfg: GenerationConfig, model: Path, classifier: Path | None) -> dict:
    return {"config": dataclasses.asdict(cfg), "model": shown_path(model),  # no machine's absolute paths
            "classifier": shown_path(classifier) if classifier else None}


def _check_output(out: Path) -> bool:
    """Refuse, before any work, an --out that is a file, a folder of something else, or not writable;
    True when it holds a generation (a manifest) to continue."""
    try:
        return output_folder(out, option="--out", marker=MANIFEST)
    except OutputPathError as e:
        raise GenerationError(str(e)) from None


def _open_output(out: Path, request: dict) -> dict | None:
    """The manifest to continue, or None for a new folder; refuse a folder holding something else."""
    manifest_path = out / MANIFEST
    if _check_output(out):
        try:
            manifest = json.loads(manifest_path.read_text())
            if not isinstance(manifest, dict) or not isinstance(manifest.get("videos"), list):
                raise ValueError("not a generation manifest")
        except (ValueError, UnicodeDecodeError) as e:
            raise GenerationError(f"{manifest_path}: unreadable ({e}); it was edited or damaged: restore it, or "
                                  "choose a new --out") from None
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
    out.mkdir(parents=True, exist_ok=True)
    return None


def _write_dataset_files(out: Path, videos: list[dict], vocabulary: ClassVocabulary, num_frames: int) -> None:
    """labels.csv: every accepted video whose file is there (a lost one is regenerated before this is written)."""
    rows = io.StringIO()
    writer = csv.writer(rows)
    writer.writerow(["video", "start_frame", "end_frame", "class"])
    for v in videos:
        if v["accepted"] and v.get("file") and (out / v["file"]).is_file():
            writer.writerow([v["file"], 0, num_frames, v["class_id"]])
    write_text_atomic(out / "labels.csv", rows.getvalue())
    vocabulary.save(out)


def sampling_environment(device: torch.device) -> dict:
    """What a video's bits depend on besides the request: device, torch, CPU threads, attention backend."""
    from survgen.kernels import BackendUnavailableError, select_backend

    device = torch.device(device)
    try:
        attention = select_backend(torch.empty(1, 1, 1, 1, device=device)).name
    except BackendUnavailableError:
        attention = None
    return {"device": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
            "torch": torch.__version__, "cpu_threads": torch.get_num_threads(), "attention_backend": attention}


def warn_unseen_classes(model: Path, run, class_ids: list[int]) -> list[str]:
    """Warn when a requested class is not one the stage-2 run trained on (its run.json "classes"); returns them."""
    vocabulary = run.vocabulary
    trained = run.extra.get("classes")
    if not isinstance(trained, list) or not trained:
        return []  # a run that does not say: nothing to compare
    trained_ids = set()
    for code in trained:
        try:
            trained_ids.add(vocabulary.resolve(code))
        except (KeyError, ValueError):
            pass
    unseen = [vocabulary.code(c) for c in dict.fromkeys(class_ids) if c not in trained_ids]
    if unseen:
        these = "that class" if len(unseen) == 1 else "those classes"
        warn(f"{model}: trained on {', '.join(map(str, trained))} only; its class embedding for "
             f"{', '.join(unseen)} never saw a clip of {these}, so their videos come from an untrained embedding; train a stage-2 "
             f"run on it (survgen train-temporal --data DIR --spatial RUN "
             f"{' '.join('--class ' + c for c in unseen)} --out RUN) and pass --model RUN")
    return unseen


def generate(model: str | Path, out: str | Path, cfg: GenerationConfig, *, classifier: str | Path | None = None,
             progress: ClassReporter | None = None, loaded=None) -> dict:
    """Generate until `cfg.n` videos per class are accepted (or the candidate cap is hit); returns the manifest.

    A folder with a manifest of the same request is continued: videos it lists that are missing or damaged on
    disk are made again first. `loaded` may pass in already-loaded `(video_model, spatial, run)` and
    `(classifier, vocabulary)` to skip loading.
    """
    cfg.check()
    model, out = Path(model), Path(out)
    if cfg.reject_topk > 0 and classifier is None:
        raise GenerationError("rejection sampling needs --classifier RUN (a `survgen train-classifier` run); "
                              "or pass --reject-topk 0 to keep every video")
    _check_output(out)  # a file, a foreign folder or an unwritable place is refused before the models load
    (video_model, spatial, run), judge, cfg = _load(model, classifier, cfg, loaded)
    vocabulary = run.vocabulary
    class_ids = [vocabulary.resolve(c) for c in cfg.classes]
    warn_unseen_classes(model, run, class_ids)

    request = _request(cfg, model, classifier)
    manifest = _open_output(out, request)
    environment = sampling_environment(next(video_model.parameters()).device)
    if manifest is None:
        fingerprint = model_fingerprint(model, spatial_model_dir(run.parent_path), video_model.arch)
        manifest = {"request": request, "model": fingerprint, "environment": environment, "videos": [],
                    "summary": {}}
    videos: list[dict] = manifest["videos"]
    candidates = Candidates(out, cfg, VideoSampler(video_model, spatial, vocabulary), judge, vocabulary)

    def save():
        _write_dataset_files(out, videos, vocabulary, cfg.num_frames)
        manifest["summary"] = summarise(videos, class_ids, vocabulary, cfg)
        write_json_atomic(out / MANIFEST, manifest)

    if videos:
        if manifest.get("environment") not in (None, environment):
            _warn_other_setup(out, manifest["environment"], environment)
        repair(candidates, videos, save)
    sheet = _generate_classes(candidates, videos, class_ids, save, progress)
    _write_contact_sheet(out, sheet)  # the dataset files and the manifest are current after every batch
    return manifest


def _load(model: Path, classifier: Path | None, cfg: GenerationConfig, loaded):
    """The video model (on the GPU when there is one), the judge (None without a classifier), and `cfg` with
    its frame rate resolved; checks the request against both."""
    video_model, spatial, run = loaded[0] if loaded else load_video_model(model)
    if not loaded and torch.cuda.is_available():  # loaders give CPU models; sample where it is fast
        video_model.to("cuda")
        spatial.vae.to("cuda")
        spatial.text_encoder.to("cuda")
    if cfg.fps is None:
        cfg = dataclasses.replace(cfg, fps=run.options.get("clip_fps") or CLIP_FPS)
    if classifier is None:
        return (video_model, spatial, run), None, cfg
    if loaded and loaded[1] is not None:
        classifier_model, classifier_vocab = loaded[1]
    else:
        classifier_model, classifier_vocab, _ = load_classifier(classifier)
        classifier_model.to(next(video_model.parameters()).device)
    judge = Judge(classifier_model, classifier_vocab, run.vocabulary, str(classifier), cfg.fps)
    if cfg.num_frames < judge.span:
        raise GenerationError(f"{classifier}: the classifier reads {judge.span}-frame clips; "
                              f"generate at least that many (--frames {judge.span})")
    if cfg.reject_topk > len(run.vocabulary):
        raise GenerationError(f"--reject-topk {cfg.reject_topk} is more than the {len(run.vocabulary)} classes")
    return (video_model, spatial, run), judge, cfg


def _generate_classes(candidates: Candidates, videos: list[dict], class_ids: list[int], save,
                      progress: ClassReporter | None) -> dict:
    """Make candidates, a batch at a time, until each class has n accepted or hits the cap; the contact sheet's
    rows (frames, label) of this session's first few accepted and rejected videos."""
    cfg, vocabulary = candidates.cfg, candidates.vocabulary
    sheet = {"accepted": [], "rejected": []}
    started, made_this_session = time.perf_counter(), 0
    for class_id in class_ids:
        code = vocabulary.code(class_id)
        mine = [v for v in videos if v["class_id"] == class_id]
        report = ClassReport(code, wanted=cfg.n, accepted=sum(v["accepted"] for v in mine), candidates=len(mine))
        if progress:
            progress(report)
        while report.accepted < cfg.n and report.candidates < cfg.candidate_cap:
            # never more candidates than could still be needed: exactly n are kept, no surplus
            count = min(cfg.batch_size, cfg.n - report.accepted, cfg.candidate_cap - report.candidates)
            for record, frames in candidates.make(class_id, list(range(report.candidates, report.candidates + count))):
                videos.append(record)
                _add_to_sheet(sheet, record, frames, code)
                report.accepted += record["accepted"]
            report.candidates += count
            made_this_session += count
            save()
            report.videos_per_s = made_this_session / (time.perf_counter() - started)
            if progress:
                progress(report)
        if report.accepted < cfg.n:
            warn(f"{code}: only {report.accepted} of {cfg.n} videos accepted after {report.candidates} candidates "
                 "(the cap); raise --max-candidates, lower --reject-topk, or train the model longer")
    return sheet


def _add_to_sheet(sheet: dict, record: dict, frames: torch.Tensor, code: str) -> None:
    kind = "accepted" if record["accepted"] else "rejected"
    if len(sheet[kind]) < CONTACT_SHEET_ROWS:
        top1 = record.get("classifier_topk", [{}])[0].get("class", "-")
        label = f"{code}_{record['candidate']:05d} {'kept' if record['accepted'] else 'rejected'}"
        sheet[kind].append((frames, f"{label} (top-1 {top1})"))


def repair(candidates: Candidates, videos: list[dict], save) -> None:
    """Make again, in their recorded batches, the listed videos that are missing or damaged on disk, and
    rewrite labels.csv and the manifest (`save`) from what exists."""
    cfg, out = candidates.cfg, candidates.out
    damaged, reasons = [], []
    for record in videos:
        problems = [f"{f} ({why})" for f in video_files(record, cfg.gif)
                    if (why := video_problem(out / f, record.get("frames", cfg.num_frames), cfg.fps))]
        if problems:
            damaged.append(record)
            reasons += problems
    if damaged:
        listed = sum(len(video_files(r, cfg.gif)) for r in videos)
        say(f"{out}: {len(reasons)} of the {listed} video files listed in {MANIFEST} are missing or damaged: "
            f"{_listing(reasons)}; making {len(damaged)} video(s) again from their recorded seeds")
    batches: dict[tuple[int, int], list[dict]] = {}
    for record in videos:  # a record from before batches were recorded is made again on its own
        batches.setdefault((record["class_id"], record.get("batch", record["candidate"])), []).append(record)
    changed = []
    for batch in batches.values():
        if any(r is d for r in batch for d in damaged):
            changed += candidates.remake(batch, damaged)
            save()
    if damaged:
        say(f"{out}: regenerated {len(damaged)} video(s) from their seeds")
    if changed:
        now = [f"{r['class']}_{r['candidate']:05d} ({'accepted' if r['accepted'] else 'rejected'})" for r in changed]
        warn(f"{out}: {len(changed)} regenerated video(s) got another verdict from the classifier than recorded: "
             f"{_listing(now)}; the manifest now says so, and candidates are made until each class has --n "
             f"{cfg.n} accepted")
    save()


def _warn_other_setup(out: Path, recorded: dict, environment: dict) -> None:
    differs = ", ".join(f"{k} {recorded.get(k)} -> {v}" for k, v in environment.items() if recorded.get(k) != v)
    warn(f"{out}: this folder was started on another setup ({differs}); videos made again here may differ from "
         "lost ones made there by float rounding; re-run on that setup to get them back bit for bit")


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
