"""Train the video classifier of rejection sampling on the real clips (its inference: `survgen.models.classify`).

The dataset is split by recording, never by clip (`VideoIndex.split_by_video`):
neighbouring clips of one video overlap and look alike, so a clip-level split
would let validation accuracy measure memory rather than recognition. The rare
classes are as important as the common ones here (rejection sampling runs
precisely for them), so the default loss weights each class by the inverse of
its share of training clips; `balance="sampler"` instead repeats the clips of
rare classes until every class has as many as the commonest. Training runs
through the shared loop (`survgen.training.loop.train`), so checkpoints,
`--resume` and the progress bar are those of the diffusion stages; validation
runs in its sample callback.

Run folder, besides the loop's files:

    RUN/model/classifier.safetensors     weights
    RUN/model/classifier_config.json     `ClassifierConfig`: architecture and expected input
    RUN/validation.jsonl                 one line per validation: accuracy, per class, confusion
    RUN/run.json                         also: split, clips per class, class weights, last validation
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader, Subset

from survgen.classes import ClassVocabulary
from survgen.config import config_to_dict
from survgen.console import say
from survgen.data.datasets import ClipDataset
from survgen.data.index import VideoIndex, build_index
from survgen.io import atomic_path
from survgen.models.classifier import ClassifierConfig, VideoClassifier
from survgen.models.loading import build_classifier, save_classifier
from survgen.runs import RunInfo, relative_to_run
from survgen.training.checkpoint import open_training_run, training_run
from survgen.training.configs import ClassifierStageConfig
from survgen.training.loop import StepReporter, TrainResult, loader_workers, train

VALIDATION_LOG = "validation.jsonl"


def classifier_config(cfg: ClassifierStageConfig, num_classes: int) -> ClassifierConfig:
    """The network a stage config asks for: its preset, with the clip and frame size it trains on."""
    size = {"image_size": cfg.image_size} if cfg.image_size else {}
    return ClassifierConfig.preset(cfg.preset, num_classes=num_classes, clip_length=cfg.clip_length,
                                   clip_fps=cfg.clip_fps, dropout=cfg.dropout, **size)


# ---------------------------------------------------------------- augmentation
def augment_clips(pixels: torch.Tensor, generator: torch.Generator, *, crop_scale: tuple[float, float] = (0.8, 1.0),
                  brightness: float = 0.1, contrast: float = 0.2) -> torch.Tensor:
    """Light, per-clip augmentation of `(b, f, 3, H, W)` clips in [-1, 1], all random numbers from `generator`.

    Each clip gets one draw, applied to all its frames alike so that the motion
    (which carries the class) is untouched: a horizontal flip with probability
    1/2, a square crop of `crop_scale` of the area at a random place resized
    back to H×W, contrast × U(1 ± `contrast`) about the clip's mean and
    brightness + U(± `brightness`) (in the [-1, 1] pixel scale).
    """
    b, f = pixels.shape[:2]
    u = torch.rand(b, 6, generator=generator, device=generator.device).to(pixels.device, torch.float32)
    flip = torch.where(u[:, 0] < 0.5, -1.0, 1.0)
    side = (crop_scale[0] + (crop_scale[1] - crop_scale[0]) * u[:, 1]).sqrt()  # crop side / frame side
    shift = (1 - side)[:, None] * (2 * u[:, 2:4] - 1)  # crop centre, in grid units ([-1, 1] spans the frame)
    theta = torch.zeros(b, 2, 3, device=pixels.device)
    theta[:, 0, 0], theta[:, 1, 1] = side * flip, side  # a negative x scale mirrors the crop
    theta[:, :, 2] = shift
    frames = pixels.flatten(0, 1)
    grid = F.affine_grid(theta.repeat_interleave(f, 0), list(frames.shape), align_corners=False)
    out = F.grid_sample(frames.float(), grid, mode="bilinear", padding_mode="border", align_corners=False)
    out = out.unflatten(0, (b, f))
    gain = (1 + contrast * (2 * u[:, 4] - 1)).view(b, 1, 1, 1, 1)
    offset = (brightness * (2 * u[:, 5] - 1)).view(b, 1, 1, 1, 1)
    mean = out.mean(dim=(1, 2, 3, 4), keepdim=True)
    return ((out - mean) * gain + mean + offset).clamp(-1, 1).to(pixels.dtype)


# ---------------------------------------------------------------- class balance
def class_weights(counts: dict[int, int]) -> torch.Tensor:
    """Inverse-frequency weights, mean 1 over the classes that have clips (0 for those that have none)."""
    present = {c: n for c, n in counts.items() if n > 0}
    total = sum(present.values())
    weights = torch.zeros(len(counts))
    for c, n in present.items():
        weights[c] = total / (len(present) * n)
    return weights


def balanced_order(index: VideoIndex) -> list[int]:
    """Clip positions with every class's clips repeated (cyclically) up to the commonest class's count.

    A fixed list rather than a random sampler: the training loop shuffles it per
    epoch from its seed, which keeps the data order a pure function of the step.
    """
    by_class: dict[int, list[int]] = {}
    for i, clip in enumerate(index.clips):
        by_class.setdefault(clip.class_id, []).append(i)
    most = max(len(v) for v in by_class.values())
    return [positions[k % len(positions)] for _, positions in sorted(by_class.items()) for k in range(most)]


# ---------------------------------------------------------------- validation
@torch.no_grad()
def validate(model: VideoClassifier, dataset: ClipDataset, vocabulary: ClassVocabulary, *, batch_size: int = 16,
             num_workers: int = 0) -> dict:
    """Clip-level accuracy of `model` on `dataset`: overall, balanced (mean of per-class), per class, confusion."""
    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    k = len(vocabulary)
    confusion = torch.zeros(k, k, dtype=torch.long)  # rows: true class, columns: predicted
    loss_sum = 0.0
    for batch in DataLoader(dataset, batch_size=batch_size, shuffle=False, num_workers=num_workers):
        logits = model(batch["pixels"].to(device)).float().cpu()
        loss_sum += F.cross_entropy(logits, batch["class_id"], reduction="sum").item()
        confusion += torch.bincount(batch["class_id"] * k + logits.argmax(-1), minlength=k * k).view(k, k)
    model.train(was_training)
    per_class_total = confusion.sum(1)
    per_class = {vocabulary.code(c): (round(confusion[c, c].item() / n, 4) if n else None)
                 for c, n in enumerate(per_class_total.tolist())}
    scored = [a for a in per_class.values() if a is not None]
    total = int(per_class_total.sum())
    return {
        "clips": total,
        "loss": round(loss_sum / total, 4),
        "accuracy": round(confusion.diag().sum().item() / total, 4),
        "balanced_accuracy": round(sum(scored) / len(scored), 4),
        "per_class": per_class,
        "clips_per_class": {vocabulary.code(c): n for c, n in enumerate(per_class_total.tolist())},
        "confusion": confusion.tolist(),
    }


def read_validation(run_folder: str | Path) -> list[dict]:
    """The records of `RUN/validation.jsonl`, oldest first."""
    path = Path(run_folder) / VALIDATION_LOG
    records = []
    for line in path.read_text().splitlines() if path.exists() else []:
        try:
            records.append(json.loads(line))
        except json.JSONDecodeError:  # a line torn by a kill
            continue
    return records


def _append_validation(run_folder: Path, record: dict) -> None:
    """Add one record, dropping any for this step or later: after a resume those came from the killed run."""
    kept = [r for r in read_validation(run_folder) if r["step"] < record["step"]]
    with atomic_path(run_folder / VALIDATION_LOG) as tmp:
        tmp.write_text("".join(json.dumps(r) + "\n" for r in kept + [record]))


def _summary(record: dict) -> str:
    per_class = "  ".join(f"{c} {'-' if a is None else f'{a:.2f}'}" for c, a in record["per_class"].items())
    return (f"validation step {record['step']}: accuracy {record['accuracy']:.3f}, balanced "
            f"{record['balanced_accuracy']:.3f}, loss {record['loss']:.3f} ({record['clips']} clips) | {per_class}")


# ---------------------------------------------------------------- training
def classification_loss(augment: bool, weights: torch.Tensor | None):
    """The loss function of the training loop: cross-entropy, class-weighted when `weights` are given."""

    def loss_fn(model: VideoClassifier, batch, generator):
        pixels = augment_clips(batch["pixels"], generator) if augment else batch["pixels"]
        logits = model(pixels, generator=generator).float()
        weight = weights.to(logits.device) if weights is not None else None
        return F.cross_entropy(logits, batch["class_id"], weight=weight)

    return loss_fn


def _split_record(vocabulary: ClassVocabulary, train_index: VideoIndex, val_index: VideoIndex,
                  weights: torch.Tensor | None) -> dict:
    """What run.json records of the data: the recordings of each side, clips per class, the class weights."""

    def codes(per_class_id: dict) -> dict:
        return {vocabulary.code(c): v for c, v in per_class_id.items()}

    return {"split": {"train": train_index.video_ids(), "validation": val_index.video_ids()},
            "clips": {"train": codes(train_index.class_counts()), "validation": codes(val_index.class_counts())},
            "class_weights": (codes({c: round(float(w), 4) for c, w in enumerate(weights)})
                              if weights is not None else None)}


def train_classifier(data: str | Path, out: str | Path, cfg: ClassifierStageConfig, *, resume: bool = False,
                     progress: StepReporter | None = None, index: VideoIndex | None = None) -> TrainResult:
    """Train a video classifier on the clips of the dataset at `data` into the run folder `out`.

    `index`, when given, holds the clips to train on instead of those of `data`
    (the downstream test trains on real plus synthetic clips); `data` then only
    names the real dataset in run.json.
    """
    out = Path(out)
    open_training_run(out, "classifier", resume, config_to_dict(cfg), data=data)
    if index is None:
        index = build_index(data, clip_length=cfg.clip_length, clip_fps=cfg.clip_fps)
    vocabulary = index.vocabulary
    train_index, val_index = index.split_by_video(cfg.val_fraction, seed=cfg.split_seed)
    model_config = classifier_config(cfg, len(vocabulary))
    if progress and len(val_index) == 0 and cfg.val_fraction > 0:
        say(f"{data}: no recording held out for validation (val_fraction {cfg.val_fraction}, "
                      f"{len(index.video_ids())} recording(s)); validation accuracy will not be measured")

    # The initial weights are part of the run's seed; the caller's global RNG is left as it was.
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(cfg.train.seed)
        model = build_classifier(model_config)
    train_set = ClipDataset(train_index, size=model_config.image_size)
    dataset = Subset(train_set, balanced_order(train_index)) if cfg.balance == "sampler" else train_set
    weights = class_weights(train_index.class_counts()) if cfg.balance == "loss" else None

    loss_fn = classification_loss(cfg.augment, weights)
    val_set = ClipDataset(val_index, size=model_config.image_size) if len(val_index) else None

    def on_sample(step: int, model: VideoClassifier):
        record = {"step": step, **validate(model, val_set, vocabulary, batch_size=2 * cfg.train.batch_size,
                                           num_workers=loader_workers(cfg.train.num_workers))}
        _append_validation(out, record)
        if progress:
            say(_summary(record))

    def export(model: VideoClassifier):
        save_classifier(model, out / "model")

    run = RunInfo(stage="classifier", folder=out, options=config_to_dict(cfg), vocabulary=vocabulary,
                  data=relative_to_run(out, data),
                  extra={"model": config_to_dict(model_config), **_split_record(vocabulary, train_index, val_index, weights)})
    with training_run(run, resume):
        result = train(run_dir=out, model=model, trainable=dict(model.named_parameters()), dataset=dataset,
                       loss_fn=loss_fn, config=cfg.train, on_sample=on_sample if val_set is not None else None,
                       export=export, resume=resume, progress=progress)
        history = read_validation(out)
        run.extra["validation"] = {k: v for k, v in history[-1].items() if k != "confusion"} if history else None
    result.extra["validation"] = history[-1] if history else None
    return result
