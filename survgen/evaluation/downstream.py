"""The downstream test: does adding generated videos make a recogniser better on the rare classes?

The paper's experiment (Sec. 3.1.1, Tab. 2), on the user's data. A video
classifier is trained on

    (a) the real training videos only,
    (b) real + the synthetic videos that pass a rejection rule: the classifier's
        top-3 (the paper's task 1), its top-1 (task 2), or a probability
        threshold (`p>=0.5`), each taken from the same candidates,
    (c) for each rule, real + as many synthetic videos per class, taken in
        candidate order whether accepted or not (the ablation without rejection
        sampling, matched in size),

each over the same seeds and with the same budget (steps × batch size), and
scored on real test videos that none of the arms, nor the generator, trained
on. The test set is a separate dataset folder, or a share of the real
recordings split off by video (never by clip: neighbouring clips of one video
overlap and look alike).

The recogniser is X3D by default (as in the paper), not the 3D ResNet that
judged the candidates, so the judge and the test are different networks. Each
arm is compared with real only, and each rule's arm with its matched arm (c),
seed by seed: the mean difference and its 95 % interval say whether a change
is outside the noise of training (`survgen.evaluation.paired`).

Controls (`survgen.evaluation.arms`, `survgen.evaluation.verdict`) say whether
the experiment can see a gain at all: real held-out clips where synthetic ones
would go (positive), the same clips encoded as generated (codec), synthetic
clips with the wrong labels (negative). The generator is judged, as a fraction
of the positive control's gain, only when that gain is outside the noise.

Rules stricter than the generation's own, and arms (c), need the rejected
candidates on disk (`survgen generate --keep-rejected`); a folder generated
with `--reject-topk 0` is itself an arm without rejection sampling.

Scoring follows the paper: the action at time t is the class of the clip
centred on t, at every labelled time (SAR-RARP50 labels every 6th frame;
clips near a video's ends are shifted inside it). Per class, the Jaccard index
is computed per test video and averaged over the videos where the class
occurs in the labels or the predictions ("video-wise"); F1 pools all time
points. Balanced accuracy is the mean recall and macro F1 the mean F1 over the
classes present in the test labels. For two-class tasks (e.g. staple line
bleeding) balanced accuracy and the positive class's F1 are the headline.

The runs share one decoding: every frame any arm trains on or the test reads
is decoded once, in this process, and kept for all runs when they fit in
`DownstreamConfig.frame_cache_bytes` (the bundled experiment's 35 runs read
16,708 frames, 49 MiB at 32 px).

Output folder (resumable: a finished run is never retrained, a killed one
continues from its checkpoint):

    OUT/downstream.json            request, test set, per-run scores, summary over seeds, verdict
    OUT/runs/controls/             the codec control's videos and the controls' labels
    OUT/runs/ARM/seed-S/           each arm's classifier run (`survgen train-classifier` layout)
    OUT/runs/ARM/seed-S/test.json  its predictions and scores on the test videos
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import time
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass, replace
from pathlib import Path

import torch

from survgen.classes import ClassVocabulary
from survgen.config import config_to_dict
from survgen.console import say, warn
from survgen.data.datasets import to_pixels
from survgen.data.index import DatasetError, VideoIndex, build_index
from survgen.data.video import frame_cache, read_frames
from survgen.evaluation.arms import MANIFEST, Arm, combine, control_arms, synthetic_arms
from survgen.evaluation.configs import BINARY_HEADLINE, DownstreamConfig, DownstreamError
from survgen.evaluation.paired import paired_difference
from survgen.evaluation.verdict import judge
from survgen.io import output_folder, write_json_atomic
from survgen.models.loading import load_classifier
from survgen.training.classifier import classifier_config, train_classifier
from survgen.training.configs import ClassifierStageConfig
from survgen.training.loop import StepReporter

RESULTS = "downstream.json"
TEST_RESULTS = "test.json"


# ---------------------------------------------------------------- test points
@dataclass(frozen=True)
class TimePoint:
    """A labelled time of a test video and the clip centred on it."""

    video: Path
    video_id: str
    time: int
    frames: range
    class_id: int


def time_points(index: VideoIndex, step: int, warnings: list[str]) -> list[TimePoint]:
    """Every `step`-th frame (0, step, 2·step, …) that carries a label, with the clip centred on it."""
    points = []
    for segment in sorted(index.segments, key=lambda s: (str(s.video), s.start)):
        stride = index.stride_of(segment.video)
        span = (index.clip_length - 1) * stride + 1
        before = (index.clip_length // 2) * stride
        n = index.videos[segment.video].num_frames
        if n < span:
            warnings.append(f"{segment.video}: {n} frames, shorter than one {span}-frame clip; not scored")
            continue
        for t in range(-(-segment.start // step) * step, min(segment.end, n), step):
            start = min(max(t - before, 0), n - span)  # shifted inside the video near its ends
            points.append(TimePoint(segment.video, segment.video_id, t,
                                    range(start, start + span, stride), segment.class_id))
    return points


@torch.no_grad()
def predict(model, points: list[TimePoint], batch_size: int = 32) -> list[int]:
    """The classifier's top-1 class for each point's clip; frames of a batch are decoded once."""
    model.eval()
    device = next(model.parameters()).device
    size = model.config.image_size
    predictions = []
    for start in range(0, len(points), batch_size):
        batch = points[start:start + batch_size]
        clips = []
        for video in dict.fromkeys(p.video for p in batch):
            mine = [p for p in batch if p.video == video]
            needed = sorted({f for p in mine for f in p.frames})
            pixels = to_pixels(read_frames(video, needed, size))
            row = {f: i for i, f in enumerate(needed)}
            clips += [pixels[[row[f] for f in p.frames]] for p in mine]
        logits = model(torch.stack(clips).to(device)).float()
        predictions += logits.argmax(-1).tolist()
    return predictions


# ---------------------------------------------------------------- scores
def video_votes(truth: list[int], predicted: list[int], videos: list[str]) -> tuple[list, list, list] | None:
    """Each video's label and its majority prediction (ties to class 1, the event), when every video has one
    label (a video-level task such as staple line bleeding); None otherwise."""
    labels, votes = {}, {}
    for t, p, video in zip(truth, predicted, videos):
        labels.setdefault(video, set()).add(t)
        votes.setdefault(video, []).append(p)
    if any(len(v) > 1 for v in labels.values()):
        return None
    names = list(labels)
    return ([labels[v].pop() for v in names], [int(2 * sum(votes[v]) >= len(votes[v])) for v in names], names)


def scores(truth: list[int], predicted: list[int], videos: list[str], vocabulary: ClassVocabulary, *,
           by_video: bool = True) -> dict:
    """Per-class video-wise Jaccard and pooled F1, balanced accuracy, macro F1 and accuracy; for two classes also
    the positive class's F1, and with one label per video the same two scores per video (majority vote)."""
    k = len(vocabulary)
    t, p = torch.tensor(truth), torch.tensor(predicted)
    confusion = torch.bincount(t * k + p, minlength=k * k).view(k, k)  # rows: truth, columns: prediction
    tp = confusion.diag()
    support, called = confusion.sum(1), confusion.sum(0)
    per_class, recalls, f1s = {}, [], []
    for c in range(k):
        jaccards = []
        for video in dict.fromkeys(videos):
            mask = torch.tensor([v == video for v in videos])
            is_c, said_c = t[mask] == c, p[mask] == c
            union = int((is_c | said_c).sum())
            if union:
                jaccards.append(int((is_c & said_c).sum()) / union)
        denominator = int(support[c] + called[c])
        f1 = 2 * int(tp[c]) / denominator if denominator else None
        per_class[vocabulary.code(c)] = {
            "jaccard": sum(jaccards) / len(jaccards) if jaccards else None,
            "f1": f1,
            "recall": int(tp[c]) / int(support[c]) if support[c] else None,
            "support": int(support[c]),
            "videos": len({v for v, y in zip(videos, truth) if y == c}),
        }
        if support[c]:
            recalls.append(int(tp[c]) / int(support[c]))
            f1s.append(f1)
    result = {
        "points": len(truth),
        "accuracy": int(tp.sum()) / len(truth),
        "balanced_accuracy": sum(recalls) / len(recalls),
        "macro_f1": sum(f1s) / len(f1s),
        "per_class": per_class,
        "confusion": confusion.tolist(),
    }
    if k == 2:  # a binary event (present / absent): the positive class's F1 is the headline
        result["f1_positive"] = per_class[vocabulary.code(1)]["f1"]
        votes = video_votes(truth, predicted, videos) if by_video else None
        if votes is not None:  # the paper's task 2 is judged per video
            per_video = scores(*votes, vocabulary, by_video=False)
            result["video_balanced_accuracy"] = per_video["balanced_accuracy"]
            result["video_f1_positive"] = per_video["f1_positive"]
    return result


def mean_std(values: list[float | None]) -> dict:
    """Mean and sample standard deviation of the defined values (None where a seed had no score)."""
    v = [x for x in values if x is not None]
    if not v:
        return {"mean": None, "std": None, "n": 0}
    mean = sum(v) / len(v)
    std = math.sqrt(sum((x - mean) ** 2 for x in v) / (len(v) - 1)) if len(v) > 1 else 0.0
    return {"mean": mean, "std": std, "n": len(v)}


def summarise(runs: list[dict], arms: list[Arm], vocabulary: ClassVocabulary) -> dict:
    """Per arm: every score as mean ± std over seeds, each class's change of the mean against real only, and the
    paired differences (95 % intervals over seeds) against real and, for a rule's arm, against its matched arm."""
    codes = [vocabulary.code(c) for c in range(len(vocabulary))]
    headline = ("accuracy", "balanced_accuracy", "macro_f1") + (BINARY_HEADLINE if len(vocabulary) == 2 else ())
    by_arm = {arm.name: {r["seed"]: r["test"] for r in runs if r["arm"] == arm.name} for arm in arms}
    summary = {}
    for arm in arms:
        mine = list(by_arm[arm.name].values())
        entry = {key: mean_std([m.get(key) for m in mine]) for key in headline}
        entry["per_class"] = {code: {metric: mean_std([m["per_class"][code][metric] for m in mine])
                                     for metric in ("jaccard", "f1")} for code in codes}
        entry["seeds"] = len(mine)
        against = [arms[0].name] + [arm.source[k] for k in ("matched_without_rs", "compare_with") if k in arm.source]
        entry["paired"] = {other: _paired(by_arm[arm.name], by_arm[other], headline, codes)
                           for other in dict.fromkeys(against) if other != arm.name}
        summary[arm.name] = entry
    baseline = summary[arms[0].name]
    for entry in summary.values():  # the change of the mean against arm (a), class by class
        for code, metrics in entry["per_class"].items():
            for metric, value in metrics.items():
                base = baseline["per_class"][code][metric]["mean"]
                value["delta"] = (value["mean"] - base) if value["mean"] is not None and base is not None else None
    return summary


def _paired(arm: dict[int, dict], other: dict[int, dict], headline: tuple[str, ...], codes: list[str]) -> dict:
    """`arm − other` seed by seed, for the headline scores and each class's Jaccard and F1."""
    def values(runs: dict[int, dict], pick) -> dict[int, float | None]:
        return {seed: pick(test) for seed, test in runs.items()}

    paired = {key: paired_difference(values(arm, lambda t: t.get(key)), values(other, lambda t: t.get(key)))
              for key in headline}
    paired["per_class"] = {
        code: {metric: paired_difference(values(arm, lambda t: t["per_class"][code][metric]),
                                         values(other, lambda t: t["per_class"][code][metric]))
               for metric in ("jaccard", "f1")} for code in codes}
    return paired


def verdict(runs: list[dict], arms: list[dict], vocabulary: ClassVocabulary) -> dict:
    """The controls' verdicts and each arm's fraction of the positive control's gain (`survgen.evaluation.verdict`)."""
    rare = [vocabulary.code(c) for c in range(len(vocabulary))
            if any(vocabulary.code(c) in a.get("synthetic_clips", {}) for a in arms if not a.get("control"))]
    by_arm = {a["name"]: {r["seed"]: r["test"] for r in runs if r["arm"] == a["name"]} for a in arms}
    return judge(by_arm, arms, rare, binary=len(vocabulary) == 2)


# ---------------------------------------------------------------- the experiment
def _request(real: Path, test: Path | None, synthetic: list[Path], reference: Path | None,
             cfg: DownstreamConfig) -> dict:
    request = {"real": str(real), "test": str(test) if test else None,  # as given: no machine's absolute paths
               "synthetic": [str(s) for s in synthetic], "reference_real": str(reference) if reference else None,
               "config": config_to_dict(cfg)}
    return json.loads(json.dumps(request))  # as it reads back from downstream.json (tuples become lists)


def _open(out: Path, request: dict) -> None:
    path = out / RESULTS
    if output_folder(out, option="--report", marker=RESULTS):
        old = json.loads(path.read_text()).get("request")
        if old != request:
            changed = sorted(k for k in set(old or {}) | set(request) if (old or {}).get(k) != request.get(k))
            raise DownstreamError(f"{out}: holds a downstream test with other options (differs in: "
                                  f"{', '.join(changed)}); re-run the same command to continue it, or choose a new --report")


def generator_saw_test(synthetic: Path, test_videos: list[Path]) -> str | None:
    """A warning when the generator behind `synthetic` was trained on a folder holding a test video, else None."""
    from survgen.runs import read_run

    try:
        manifest = json.loads((synthetic / MANIFEST).read_text())
        run = read_run(manifest["request"]["model"])
    except (OSError, ValueError, KeyError):
        return None
    if not run.data:
        return None
    data = run.data_path
    leaked = [v for v in test_videos if v.resolve().is_relative_to(data.resolve())]
    if leaked:  # paths as given (resolved only to compare): the warning is kept in downstream.json and report.md
        return (f"{synthetic}: its generator ({run.folder}) was trained on {os.path.normpath(data)}, which holds "
                f"test video(s) such as {leaked[0]}: the synthetic arms may have seen the test set")
    return None


def run_downstream(real: str | Path, synthetic: list[str | Path], out: str | Path, cfg: DownstreamConfig, *,
                   test: str | Path | None = None, reference: str | Path | None = None,
                   progress: StepReporter | None = None) -> dict:
    """Train and score every arm over every seed; returns (and writes to OUT/downstream.json) the results.

    `reference`: a folder of real recordings held out from `real` and `test`, the positive control's source.
    """
    cfg.check()
    real, out = Path(real), Path(out)
    synthetic = [Path(s) for s in synthetic]
    test = Path(test) if test is not None else None
    reference = Path(reference) if reference is not None else None
    request = _request(real, test, synthetic, reference, cfg)
    _open(out, request)
    train_index, test_index = training_and_test_sets(real, test, cfg)
    vocabulary = train_index.vocabulary
    warnings = [w for w in (generator_saw_test(s, list(test_index.videos)) for s in synthetic) if w]
    generated = [arm for folder in synthetic for arm in synthetic_arms(folder, vocabulary, cfg, out / "runs", warnings)]
    controls = control_arms(reference, generated[0] if generated else None, cfg, vocabulary,
                            set(train_index.videos) | set(test_index.videos), out / "runs", warnings)
    arms = [Arm(name="real", slug="real"), *controls, *generated]
    points = time_points(test_index, cfg.test_step, warnings)
    if not points:
        raise DatasetError(f"{test or real}: no labelled time point in the test videos to score")
    results = _results_without_runs(request, vocabulary, train_index, test_index, points, arms, warnings)
    for w in warnings:
        warn(w)
    out.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    indexes = {arm.slug: combine(train_index, arm.synthetic) for arm in arms}
    clf, cache = decoded_once(cfg, [*indexes.values()], points, len(vocabulary), progress)
    # Seed by seed, every arm: a job stopped part-way has paired results for the seeds it finished.
    with cache:
        for seed in cfg.seeds:
            for arm in arms:
                record = train_and_score(real, out / "runs" / arm.slug / f"seed-{seed}", arm, seed,
                                         indexes[arm.slug], points, vocabulary, clf, progress)
                results["runs"].append({k: v for k, v in record.items() if k != "predictions"})
                results["summary"] = summarise(results["runs"], arms, vocabulary)
                results["verdict"] = verdict(results["runs"], results["arms"], vocabulary)
                write_json_atomic(out / RESULTS, results)  # after every run, so a killed job keeps what it finished
    results["seconds_this_session"] = round(time.perf_counter() - started, 1)
    write_json_atomic(out / RESULTS, results)
    return results


def decoded_once(cfg: DownstreamConfig, indexes: list[VideoIndex], points: list[TimePoint], num_classes: int,
                 progress: StepReporter | None) -> tuple[ClassifierStageConfig, AbstractContextManager]:
    """The recogniser's options and a frame cache for all runs: when every frame any arm trains on or the test
    reads fits in `cfg.frame_cache_bytes`, each is decoded once for the whole experiment, in this process
    (so the runs load without DataLoader workers, which would not keep what they decode)."""
    clf = cfg.classifier
    size = classifier_config(clf, num_classes).image_size
    frames = {(p.video, f) for p in points for f in p.frames}
    for index in indexes:
        frames.update((clip.video, f) for clip in index.clips for f in index.frames(clip))
    needed = len(frames) * size * size * 3
    if needed > cfg.frame_cache_bytes:
        if progress:
            say(f"{len(frames):,} frames at {size}x{size} need {needed / 2**30:.1f} GiB, more than the "
                f"{cfg.frame_cache_bytes / 2**30:.1f} GiB frame cache: each run decodes its own")
        return clf, nullcontext()
    if progress:
        say(f"{len(frames):,} frames at {size}x{size} ({needed / 2**20:.0f} MiB): decoded once for all runs")
    return replace(clf, train=replace(clf.train, num_workers=0)), frame_cache(needed)


def training_and_test_sets(real: Path, test: Path | None, cfg: DownstreamConfig) -> tuple[VideoIndex, VideoIndex]:
    """The real training recordings and the test recordings: the `test` folder, or a share of `real` split off
    by recording."""
    clf = cfg.classifier
    real_index = build_index(real, clip_length=clf.clip_length, clip_fps=clf.clip_fps)
    if test is None:
        train_index, test_index = real_index.split_by_video(cfg.test_fraction, seed=cfg.split_seed)
        if len(test_index) == 0:
            raise DownstreamError(f"{real}: too few recordings ({len(real_index.video_ids())}) to hold out a test "
                                  "set; give a separate one with --test DIR")
        return train_index, test_index
    test_index = build_index(test, clip_length=clf.clip_length, clip_fps=clf.clip_fps,
                             vocabulary=real_index.vocabulary)
    shared = set(real_index.videos) & set(test_index.videos)
    if shared:
        raise DownstreamError(f"{test}: shares video files with {real} (e.g. {sorted(shared)[0]}); the test "
                              "videos must be recordings no arm trains on")
    return real_index, test_index


def _results_without_runs(request: dict, vocabulary: ClassVocabulary, train_index: VideoIndex,
                          test_index: VideoIndex, points: list[TimePoint], arms: list[Arm],
                          warnings: list[str]) -> dict:
    """downstream.json before any run: the request, the training and test sets, and the arms."""
    truth = [p.class_id for p in points]
    test_videos = [p.video_id for p in points]
    codes = {c: vocabulary.code(c) for c in range(len(vocabulary))}
    return {
        "request": request,
        "vocabulary": vocabulary.to_dict(),
        "train": {"videos": train_index.video_ids(),
                  "clips": {vocabulary.code(c): n for c, n in train_index.class_counts().items()}},
        "test": {"videos": test_index.video_ids(), "points": len(points),
                 "points_per_class": {code: truth.count(c) for c, code in codes.items()},
                 "videos_per_class": {code: len({v for v, y in zip(test_videos, truth) if y == c})
                                      for c, code in codes.items()}},
        "arms": [{"name": a.name, "slug": a.slug, **a.source,
                  "synthetic_clips": {vocabulary.code(c): n for c, n in a.synthetic_counts().items() if n}}
                 for a in arms],
        "runs": [], "warnings": warnings,
    }


def train_and_score(real: Path, folder: Path, arm: Arm, seed: int, index: VideoIndex, points: list[TimePoint],
                    vocabulary: ClassVocabulary, clf: ClassifierStageConfig, progress: StepReporter | None) -> dict:
    """One arm and seed: train its classifier in `folder`, score it on the test points, and keep the record in
    `folder/test.json`; a finished run's record is read back, never retrained."""
    done = folder / TEST_RESULTS
    if done.exists():
        return json.loads(done.read_text())
    if progress:
        say(f"{arm.name}, seed {seed}: training on {len(index)} clips "
            f"({clf.train.steps} steps × {clf.train.batch_size})")
    run_cfg = dataclasses.replace(clf, train=dataclasses.replace(clf.train, seed=seed))
    train_classifier(real, folder, run_cfg, resume=(folder / "run.json").exists(), progress=progress, index=index)
    model, _, _ = load_classifier(folder)
    predicted = predict(model, points)
    truth = [p.class_id for p in points]
    record = {"arm": arm.name, "seed": seed, "train_clips": len(index),
              "test": scores(truth, predicted, [p.video_id for p in points], vocabulary),
              "predictions": [{"video": str(p.video), "time": p.time, "truth": p.class_id, "predicted": y}
                              for p, y in zip(points, predicted)]}
    write_json_atomic(done, record)
    return record
