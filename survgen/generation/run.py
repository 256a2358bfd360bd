"""`survgen generate`: sample candidates until `n` videos per class are accepted by the classifier.

Rejection sampling (the paper's last step): a video made for class l is kept iff l
is among the video classifier's top-k classes for it. The classifier was trained on
real clips only, so it judges whether the motion and look of a generated video are
recognisably those of the class it was made for.

The output folder is a dataset in the project's CSV layout; `survgen.generation.folder`
says what it holds.

Batches: candidates are sampled in fixed blocks of --batch-size (by default the largest that fits,
`survgen.generation.batch_size`, recorded in the manifest) by candidate number,
[k·B, (k+1)·B) cut at --max-candidates (`survgen.generation.candidates.batch_plan`). A
class ends at its n-th accepted candidate; the later ones of that block are surplus:
sampled and judged with it, never recorded or written. So a class ends with exactly n
accepted, and which videos share a batch depends on candidate numbers alone.

Resumable: candidate i of class l always has the same seed, the manifest is rewritten
(atomically) after every batch, and a re-run of the same request makes the blocks the
manifest lacks, so a killed run loses at most the batch in flight. It first makes again
the listed videos that are missing or damaged on disk (`survgen.generation.repair`).

Many processes (`torchrun` or `accelerate launch`, `survgen.generation.distributed`):
rank r makes the r-th of each round of W blocks; after a round the processes exchange
the new records, keep the candidates up to the class's end (a block made ahead past it
is dropped unwritten) and go on together, each writing its videos and its part of the
manifest (`survgen.generation.folder`). The blocks being the same, the folder is the
one a single process makes: same manifest, labels.csv and video bytes, given the same
setup in every process (`sampling_environment`: torchrun gives each process
OMP_NUM_THREADS=1 unless it is set, and the thread count moves bits).

Deterministic: the batches are a function of the request, a video a function of its
seed and batch, and every encoder a function of the frames
(`survgen.data.video.write_video`), so the same request on the same setup
(`sampling_environment`) writes the same bytes, and a video made again equals the one
it replaces.
"""

from __future__ import annotations

import dataclasses
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np
import torch
import torch.nn.functional as F

from survgen.classes import ClassVocabulary
from survgen.console import warn
from survgen.data.index import CLIP_FPS
from survgen.data.video import write_video
from survgen.diffusion.video_sampler import VideoSampler, check_sampling_options
from survgen.generation.batch_size import automatic_batch_size
from survgen.generation.candidates import Candidates, batch_plan, class_end, video_files
from survgen.generation.distributed import World, joined
from survgen.generation.folder import (MANIFEST, GenerationError, Part, check_output, generation_request,
                                       model_fingerprint, open_manifest, record_key, recorded_batch_size,
                                       remove_parts, summarise, write_dataset_files)
from survgen.generation.repair import repair
from survgen.io import write_json_atomic
from survgen.models.loading import load_classifier, load_video_model, spatial_model_dir
from survgen.presets import DEFAULT_SAMPLING
from survgen.visualize import grid, save_png, video_grid

CONTACT_SHEET_ROWS = 4  # accepted and rejected videos each
# The dataset's formats (`write_video`'s suffixes): FFV1 lossless RGB, MJPEG 4:4:4, H.264 4:2:0. A recogniser
# trained on real and generated clips can key on any signature the real clips lack, such as H.264's halved
# chroma (benchmarks/NOTES.md), so the default, mkv, loses nothing.
VIDEO_FORMATS = ("mkv", "avi", "mp4")


@dataclass
class GenerationConfig:
    classes: list[str] = field(default_factory=lambda: ["G7"])  # codes, ids or names
    n: int = 8  # accepted videos per class
    reject_topk: int = 3  # keep a video iff its class is in the classifier's top-k; 0 keeps every video
    max_candidates: int | None = None  # per class; None: 20 × n
    batch_size: int | None = None  # None: the largest that fits (`batch_size.automatic_batch_size`), recorded
    sampler: str = DEFAULT_SAMPLING["sampler"]
    steps: int = DEFAULT_SAMPLING["steps"]
    guidance: float = 3.0
    # [lo, hi]: guide only where lo <= t <= hi; None: every step
    guidance_interval: list[int] | None = DEFAULT_SAMPLING["guidance_interval"]
    # deep features every N steps, reused between; None: DEFAULT_SAMPLING's for a model that has the cache, else 1
    cache_interval: int | None = None
    text_per_video: bool = True  # the prompt's keys and values once per video, not per frame
    num_frames: int = 16
    fps: float | None = None  # None: the clip rate the model was trained at
    seed: int = 0
    video_format: str = "mkv"  # a suffix of VIDEO_FORMATS: how the dataset's videos are written
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
        if self.batch_size is not None and self.batch_size < 1:
            problems.append(f"--batch-size must be at least 1, got {self.batch_size}")
        if self.num_frames < 1:
            problems.append(f"--frames must be at least 1, got {self.num_frames}")
        if self.fps is not None and not self.fps > 0:
            problems.append(f"--fps must be positive, got {self.fps}")
        if not self.classes:
            problems.append("give at least one --class")
        if self.video_format not in VIDEO_FORMATS:
            problems.append(f"--format must be one of {', '.join(VIDEO_FORMATS)}, got {self.video_format!r}")
        try:
            check_sampling_options(self.sampler, self.steps, self.guidance, self.guidance_interval,
                                   1 if self.cache_interval is None else self.cache_interval)
        except ValueError as e:
            problems.append(str(e))
        if problems:
            raise GenerationError("; ".join(problems))

    @property
    def candidate_cap(self) -> int:
        return self.max_candidates if self.max_candidates is not None else 20 * self.n


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


def sampling_environment(device: torch.device) -> dict:
    """What a video's bits depend on besides the request: device, torch, CPU threads, attention backend."""
    from survgen.kernels.backends import BackendUnavailableError, select_backend

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

    Started by torchrun or accelerate launch, the processes share the work (see the module docstring); each
    returns the merged manifest, and only rank 0 writes it and calls `progress`.
    """
    cfg.check()
    model, out = Path(model), Path(out)
    if cfg.reject_topk > 0 and classifier is None:
        raise GenerationError("rejection sampling needs --classifier RUN (a `survgen train-classifier` run); "
                              "or pass --reject-topk 0 to keep every video")
    with joined() as world:
        return _generate(world, model, out, cfg, classifier, progress if world.main else None, loaded)


def _generate(world: World, model: Path, out: Path, cfg: GenerationConfig, classifier: Path | None,
              progress: ClassReporter | None, loaded) -> dict:
    """`generate` as one of `world`'s processes."""
    if world.main:  # rank 0 alone looks at and writes the folder's shared files; the others wait for it
        check_output(out)  # a file, a foreign folder or an unwritable place is refused before the models load
    (video_model, spatial, run), judge, cfg = _load(model, classifier, cfg, loaded)
    vocabulary = run.vocabulary
    class_ids = [vocabulary.resolve(c) for c in cfg.classes]
    device = next(video_model.parameters()).device
    environment = sampling_environment(device)
    _check_same_setup(world, environment)
    sampler = VideoSampler(video_model, spatial, vocabulary)
    if cfg.batch_size is None:
        probe = Candidates(out, cfg, sampler, judge, vocabulary)
        cfg = dataclasses.replace(cfg, batch_size=_batch_size(world, out, cfg, device, probe, class_ids[0]))
    if world.main:
        warn_unseen_classes(model, run, class_ids)

    def fingerprint() -> dict:  # hashes the weights: only for a new folder
        return model_fingerprint(model, spatial_model_dir(run.parent_path), video_model.arch)

    manifest = world.share(open_manifest(out, generation_request(cfg, model, classifier), environment, fingerprint)
                           if world.main else None)
    videos: list[dict] = manifest["videos"]
    candidates = Candidates(out, cfg, sampler, judge, vocabulary)
    part = Part(out, world)

    def save():
        """Order the records as one process makes them (by class, then candidate) and summarise them; rank 0
        writes the manifest and the dataset files."""
        videos.sort(key=lambda v: (class_ids.index(v["class_id"]), v["candidate"]))
        manifest["summary"] = summarise(videos, class_ids, vocabulary, cfg.n)
        if world.main:
            write_dataset_files(out, videos, vocabulary, cfg.num_frames)
            write_json_atomic(out / MANIFEST, manifest)

    save()  # first, so that a part is never in a folder without a manifest (which would be refused)
    if world.main:
        remove_parts(out)  # merged into the manifest just written
    world.barrier()  # before any process writes a part of this run
    if videos:
        repair(candidates, videos, save, world, part)
    rows = _generate_classes(candidates, videos, class_ids, save, progress, world, part)
    sheet = _contact_sheet(world.gather(rows), videos)  # waits until every process is done
    if world.main:
        _write_contact_sheet(out, sheet, cfg.fps)  # the dataset files and the manifest are current after every round
        remove_parts(out)
    return manifest


def _batch_size(world: World, out: Path, cfg: GenerationConfig, device: torch.device, probe: Candidates,
                class_id: int) -> int:
    """The batch size the folder recorded, else the smallest of the processes' automatic choices (`probe`
    samples and judges one video of `class_id` for the measurement)."""
    recorded = world.share(recorded_batch_size(out) if world.main else None)
    if recorded is not None:
        return recorded
    mine = automatic_batch_size(device, lambda: probe.sample(class_id, [cfg.seed]), cfg.n)
    return min(world.gather(mine))


def _check_same_setup(world: World, environment: dict) -> None:
    setups = world.gather(environment)
    if world.main and any(setup != environment for setup in setups):
        others = "; ".join(f"rank {rank}: {setup}" for rank, setup in enumerate(setups) if setup != environment)
        warn(f"the processes run on different setups (rank 0: {environment}; {others}); their videos may differ "
             "by float rounding from those one process makes")


def default_cache_interval(video_model) -> int:
    """The default deep-feature reuse for a model: DEFAULT_SAMPLING's where the model has the cache (survgen's
    video U-Net), none for the baselines."""
    return DEFAULT_SAMPLING["cache_interval"] if getattr(video_model, "sampling_savings", False) else 1


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
    if cfg.cache_interval is None:
        cfg = dataclasses.replace(cfg, cache_interval=default_cache_interval(video_model))
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
                      progress: ClassReporter | None, world: World, part: Part) -> dict:
    """Make candidates, a round of batches at a time (one batch per process), until each class has n accepted or
    hits the cap; returns this process's contact sheet rows (`_add_to_sheet`)."""
    cfg, vocabulary = candidates.cfg, candidates.vocabulary
    sheet = {"accepted": [], "rejected": []}
    started, made_this_session = time.perf_counter(), 0
    for class_id in class_ids:
        report = _class_report(videos, class_id, vocabulary.code(class_id), cfg.n)
        if progress:
            progress(report)
        while class_end(_records(videos, class_id), cfg.n, cfg.candidate_cap) is None:
            made_this_session += _round(candidates, videos, class_id, world, part, sheet)
            save()
            report = _class_report(videos, class_id, report.code, cfg.n,
                                   videos_per_s=made_this_session / (time.perf_counter() - started))
            if progress:
                progress(report)
        if world.main and report.accepted < cfg.n:
            warn(f"{report.code}: only {report.accepted} of {cfg.n} videos accepted after {report.candidates} "
                 "candidates (the cap); raise --max-candidates, lower --reject-topk, or train the model longer")
    return sheet


def _records(videos: list[dict], class_id: int) -> list[dict]:
    return [v for v in videos if v["class_id"] == class_id]


def _class_report(videos: list[dict], class_id: int, code: str, n: int, videos_per_s: float | None = None):
    mine = _records(videos, class_id)
    return ClassReport(code, wanted=n, accepted=sum(v["accepted"] for v in mine), candidates=len(mine),
                       videos_per_s=videos_per_s)


def _round(candidates: Candidates, videos: list[dict], class_id: int, world: World, part: Part,
           sheet: dict) -> int:
    """One batch per process: the next ones the class lacks. Every process learns every verdict, so all keep the
    same candidates, those up to the class's end; each writes its own. Returns how many were kept."""
    cfg = candidates.cfg
    recorded = {v["candidate"] for v in _records(videos, class_id)}
    batches = batch_plan(recorded, cfg.batch_size, cfg.candidate_cap)[: world.size]
    made = candidates.make(class_id, list(batches[world.rank])) if world.rank < len(batches) else []
    new = [record for records in world.gather([r for r, _ in made]) for record in records]
    videos.extend(new)
    dropped = {record_key(r) for r in _drop_after_end(videos, class_id, cfg, candidates.out if world.main else None)}
    kept = [(record, frames) for record, frames in made if record_key(record) not in dropped]
    for record, frames in kept:
        candidates.write(record, frames)
        _add_to_sheet(sheet, record, frames)
    part.add([record for record, _ in kept])
    world.barrier()  # every process's videos and part are written before rank 0's manifest names them
    return sum(record_key(r) not in dropped for r in new)


def _drop_after_end(videos: list[dict], class_id: int, cfg: GenerationConfig, out: Path | None) -> list[dict]:
    """Drop the records of a class after the candidate it ends at (the surplus of its last batch, batches made
    ahead by other processes) and, given `out`, the files of any that were written; returns the dropped ones."""
    end = class_end(_records(videos, class_id), cfg.n, cfg.candidate_cap)
    if end is None:
        return []
    dropped = [v for v in videos if v["class_id"] == class_id and v["candidate"] > end]
    videos[:] = [v for v in videos if not (v["class_id"] == class_id and v["candidate"] > end)]
    if out is not None:
        for record in dropped:
            for relative in video_files(record, cfg.gif):
                (out / relative).unlink(missing_ok=True)
    return dropped


def _add_to_sheet(sheet: dict, record: dict, frames: np.ndarray) -> None:
    kind = "accepted" if record["accepted"] else "rejected"
    if len(sheet[kind]) < CONTACT_SHEET_ROWS:
        top1 = record.get("classifier_topk", [{}])[0].get("class", "-")
        label = f"{record['class']}_{record['candidate']:05d} {'kept' if record['accepted'] else 'rejected'}"
        sheet[kind].append((record_key(record), frames, f"{label} (top-1 {top1})"))


def _contact_sheet(sheets: list[dict], videos: list[dict]) -> dict:
    """The first few accepted and rejected videos this run made, in manifest order, from every process's rows."""
    order = {record_key(v): i for i, v in enumerate(videos)}
    return {kind: sorted((row for sheet in sheets for row in sheet[kind] if row[0] in order),
                         key=lambda row: order[row[0]])[:CONTACT_SHEET_ROWS]
            for kind in ("accepted", "rejected")}


def _write_contact_sheet(out: Path, sheet: dict, fps: float) -> None:
    """contact_sheet.png (a few frames of each row) and preview.mp4 (the rows playing), for people."""
    rows = sheet["accepted"] + sheet["rejected"]
    if not rows:
        return
    step = max(1, rows[0][1].shape[0] // 8)  # at most 8 frames per video
    labels = [label for _, _, label in rows]
    save_png(grid([frames[::step] for _, frames, _ in rows], labels), out / "contact_sheet.png")
    write_video(out / "preview.mp4", video_grid([frames for _, frames, _ in rows], labels), fps=fps)
