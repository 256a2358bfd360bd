"""`survgen train-classifier` and `survgen classify`: the video classifier of rejection sampling.

Plain functions, registered on the app (with `user_errors`) by `cli/app.py`'s
`_mount_subcommands`; import `survgen.cli.app`, not this module, to get them.
`classify` prints its table (or --json) to stdout; `train-classifier` its run folder.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Optional

import typer
from rich.table import Table

from survgen.cli.app import (BatchSize, CheckpointEvery, DataDir, GradAccum, LearningRate, MixedPrecision, OutDir,
                             Quiet, Resume, Seed, Steps, _data_dir, _open_run, _print_result, _stage_config,
                             _train_overrides)
from survgen.cli.options import ClipFps, Workers
from survgen.console import show, stderr, text


def train_classifier_command(
    out: OutDir,
    data: DataDir = None,
    resume: Resume = False,
    preset: Annotated[Optional[str], typer.Option(help="tiny (CPU-sized) | r3d18 (ResNet3D-18 widths, 112 px).")] = None,
    image_size: Annotated[Optional[int], typer.Option(min=8, help="Frame size the classifier sees (default: the preset's).")] = None,
    clip_length: Annotated[Optional[int], typer.Option(min=1, help="Frames per clip.")] = None,
    clip_fps: ClipFps = None, workers: Workers = None,
    val_fraction: Annotated[Optional[float], typer.Option(min=0.0, max=0.95, help="Share of recordings held out for validation (split by video, never by clip).")] = None,
    balance: Annotated[Optional[str], typer.Option(help="loss: inverse-frequency class weights | sampler: oversample rare classes | none.")] = None,
    augment: Annotated[Optional[bool], typer.Option("--augment/--no-augment", help="Flip, resized crop and brightness/contrast jitter per clip.")] = None,
    val_every: Annotated[Optional[int], typer.Option("--val-every", min=1, help="Steps between validations.")] = None,
    steps: Steps = None, batch_size: BatchSize = None, lr: LearningRate = None, grad_accum: GradAccum = None,
    mixed_precision: MixedPrecision = None, checkpoint_every: CheckpointEvery = None, seed: Seed = None,
    quiet: Quiet = False,
):
    """Train the video classifier (3D ResNet) that rejection sampling uses, on the real clips.

    Example: survgen train-classifier --data data/synth --out runs/classifier --steps 600 --batch-size 16
    """
    stored = _open_run(out, "classifier", resume)
    from survgen.training.classifier import ClassifierStageConfig, train_classifier

    overrides = dict(preset=preset, image_size=image_size, clip_length=clip_length, clip_fps=clip_fps,
                     val_fraction=val_fraction, balance=balance, augment=augment,
                     **_train_overrides(steps, batch_size, lr, grad_accum, mixed_precision, None,
                                        checkpoint_every, val_every, seed, workers))
    cfg = _stage_config(ClassifierStageConfig, stored, overrides)
    data = _data_dir(data, stored)
    result = train_classifier(data, out, cfg, resume=resume, progress=not quiet)
    validation = result.extra.get("validation")
    if validation:
        table = Table(title=text(f"validation at step {validation['step']} ({validation['clips']} clips of "
                                 "held-out recordings)"))
        for column in ("class", "clips", "accuracy"):
            table.add_column(column, justify="right")
        per_class = list(validation["per_class"].items())
        for k, (code, accuracy) in enumerate(per_class):
            table.add_row(text(code), str(validation["clips_per_class"][code]),
                          "-" if accuracy is None else f"{accuracy:.1%}", end_section=k == len(per_class) - 1)
        table.add_row("all", str(validation["clips"]), f"{validation['accuracy']:.1%}")
        table.add_row("mean of classes", "", f"{validation['balanced_accuracy']:.1%}")
        stderr.print(table)  # a training command's result is its run folder, on stdout
    _print_result(result, out)


def classify_command(
    videos: Annotated[list[Path], typer.Argument(help="Video files; each is judged by its first clip.", show_default=False)],
    model: Annotated[Path, typer.Option("--model", help="Classifier run folder (`survgen train-classifier`).")],
    topk: Annotated[int, typer.Option("--topk", min=1, help="Classes to list per video.")] = 3,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON to stdout.")] = False,
):
    """Print the top-k classes of each video with their probabilities.

    Example: survgen classify --model runs/classifier data/synth/video_01/video_left.avi --topk 3
    """
    from survgen.training.classifier import classify_videos, load_classifier

    classifier, vocabulary, _ = load_classifier(model)
    results = classify_videos(classifier, videos, topk, vocabulary=vocabulary)
    if as_json:
        typer.echo(json.dumps(results, indent=2))
        return
    table = Table(title=text(f"top-{topk} classes ({model})"))
    table.add_column("video", overflow="fold")  # the whole path, wrapped, rather than cut short
    for column, justify in (("rank", "right"), ("class", "left"), ("name", "left"), ("probability", "right")):
        table.add_column(column, justify=justify)
    for result in results:
        for rank, entry in enumerate(result["topk"], start=1):
            table.add_row(text(result["video"] if rank == 1 else ""), str(rank), text(entry["code"]),
                          text(entry["name"]), f"{entry['probability']:.3f}", end_section=rank == len(result["topk"]))
    show(table)
