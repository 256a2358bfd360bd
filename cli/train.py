"""The training commands: `train-vae`, `train-spatial`, `train-temporal`, `train-classifier`.

Every option's default is its stage config's (`survgen/training/configs.py`),
so `--help` shows the value a run gets. On `--resume` the run's stored options
are the base instead and only the flags given change them. A training command
prints its run folder on stdout.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer
from rich.table import Table

from survgen.cli.common import (AttentionBackend, ClipFps, DataDir, OutDir, Quiet, Resume, Workers, app,
                                attention_backend, data_dir, open_run, print_result, stage_config, training_progress,
                                user_errors)
from survgen.console import say, stderr, text
from survgen.training.configs import (AutoencoderStageConfig, ClassifierStageConfig, SpatialStageConfig,
                                      TemporalStageConfig)

VAE, SPATIAL, TEMPORAL, CLASSIFIER = (AutoencoderStageConfig(), SpatialStageConfig(), TemporalStageConfig(),
                                      ClassifierStageConfig())

# The training loop's options (TrainConfig); each command gives its stage's default.
Steps = Annotated[int, typer.Option("--steps", min=1, help="Optimizer steps in total.")]
BatchSize = Annotated[int, typer.Option("--batch-size", min=1, help="Samples per step and process.")]
LearningRate = Annotated[float, typer.Option("--lr", min=0.0, help="AdamW learning rate.")]
GradAccum = Annotated[int, typer.Option("--grad-accum", min=1, help="Gradient accumulation steps.")]
MixedPrecision = Annotated[str, typer.Option("--mixed-precision", help="auto | no | fp16 | bf16 (auto: bf16 on a GPU that supports it).")]
EmaDecay = Annotated[float, typer.Option("--ema-decay", min=0.0, max=1.0, help="EMA decay (0 disables).")]
CheckpointEvery = Annotated[int, typer.Option("--checkpoint-every", min=1, help="Steps between checkpoints.")]
SampleEvery = Annotated[int, typer.Option("--sample-every", min=1, help="Steps between sample grids.")]
SampleSteps = Annotated[int, typer.Option("--sample-steps", min=1, help="Sampler steps for those samples.")]
Seed = Annotated[int, typer.Option("--seed", help="Random seed (data order, noise, init).")]
LatentCache = Annotated[Optional[str], typer.Option("--cache", help="A `survgen data cache` folder made with this model's VAE, image size and clip rate: read the frames' VAE posteriors instead of decoding and encoding videos.")]
WORKERS = {"workers": "train.num_workers"}


@app.command("train-vae")
@user_errors
def train_vae(
    ctx: typer.Context,
    out: OutDir,
    data: DataDir = None,
    resume: Resume = False,
    image_size: Annotated[int, typer.Option(min=8, help="Frame size the VAE is trained at.")] = VAE.image_size,
    latent_channels: Annotated[int, typer.Option(min=1, help="Channels of the latents (SD's VAE: 4); stage 1's U-Net takes as many.")] = VAE.latent_channels,
    cue_weight: Annotated[float, typer.Option(min=0.0, help="Weight of an L1 term on the needle and thread pixels, where the data marks them (`survgen data synth` does; real recordings do not).")] = VAE.cue_weight,
    score_frames: Annotated[int, typer.Option(min=1, help="Frames per class whose reconstruction is scored at each sample step.")] = VAE.score_frames,
    clip_fps: ClipFps = VAE.clip_fps, workers: Workers = None,
    steps: Steps = VAE.train.steps, batch_size: BatchSize = VAE.train.batch_size, lr: LearningRate = VAE.train.lr,
    grad_accum: GradAccum = VAE.train.grad_accum, mixed_precision: MixedPrecision = VAE.train.mixed_precision,
    checkpoint_every: CheckpointEvery = VAE.train.checkpoint_every, sample_every: SampleEvery = VAE.train.sample_every,
    seed: Seed = VAE.train.seed, quiet: Quiet = False,
):
    """Stage 0 (tiny preset only): train the small autoencoder on the dataset's frames.

    Its reconstruction PSNR, over all pixels and over the needle and thread
    pixels, per class, lands in OUT/reconstruction.json at every sample step.

    Example: survgen train-vae --data data/synth --out runs/vae
    """
    stored = open_run(out, "vae", resume)
    cfg, data = stage_config(ctx, AutoencoderStageConfig, stored, WORKERS), data_dir(data, stored)
    from survgen.training.autoencoder import describe_reconstruction, train_autoencoder  # torch: once checked

    with training_progress(not quiet) as progress:
        result = train_autoencoder(data, out, cfg, resume=resume, progress=progress)
    say(describe_reconstruction(out))
    print_result(result, out)


@app.command("train-spatial")
@user_errors
def train_spatial(
    ctx: typer.Context,
    out: OutDir,
    data: DataDir = None,
    resume: Resume = False,
    preset: Annotated[str, typer.Option(help="tiny (CPU, from config) | sd15 (local SD 1.5 weights).")] = SPATIAL.preset,
    pretrained: Annotated[Optional[str], typer.Option(help="Local SD 1.5 diffusers folder or .safetensors file.")] = None,
    tokenizer: Annotated[Optional[str], typer.Option(help="Local CLIP tokenizer folder (single-file checkpoints).")] = None,
    vae: Annotated[Optional[str], typer.Option(help="tiny: the run folder of `survgen train-vae`.")] = None,
    image_size: Annotated[Optional[int], typer.Option(min=8, help="Frame size to train at.", show_default="the preset's: sd15 256 as in the paper, tiny 64")] = None,
    clip_fps: ClipFps = SPATIAL.clip_fps, workers: Workers = None, cache: LatentCache = None,
    train_text_encoder: Annotated[Optional[bool], typer.Option(
        "--train-text-encoder/--freeze-text-encoder", help="Fine-tune the text encoder too.",
        show_default="tiny: train (its encoder starts random), sd15: freeze")] = None,
    steps: Steps = SPATIAL.train.steps, batch_size: BatchSize = SPATIAL.train.batch_size,
    lr: LearningRate = SPATIAL.train.lr, grad_accum: GradAccum = SPATIAL.train.grad_accum,
    mixed_precision: MixedPrecision = SPATIAL.train.mixed_precision, ema_decay: EmaDecay = SPATIAL.train.ema_decay,
    checkpoint_every: CheckpointEvery = SPATIAL.train.checkpoint_every,
    sample_every: SampleEvery = SPATIAL.train.sample_every, sample_steps: SampleSteps = SPATIAL.sample_steps,
    seed: Seed = SPATIAL.train.seed, quiet: Quiet = False,
):
    """Stage 1: fine-tune the 2D latent diffusion U-Net on frames paired with class prompts.

    Examples:
      survgen train-spatial --data data/synth --vae runs/vae --out runs/spatial
      survgen train-spatial --data SAR-RARP50/train --preset sd15 --pretrained ~/models/sd15 --out runs/spatial
    """
    stored = open_run(out, "spatial", resume)
    cfg, data = stage_config(ctx, SpatialStageConfig, stored, WORKERS), data_dir(data, stored)
    from survgen.training.stage1 import train_spatial as run_stage

    with training_progress(not quiet) as progress:
        result = run_stage(data, out, cfg, resume=resume, progress=progress)
    print_result(result, out)


@app.command("train-temporal")
@user_errors
def train_temporal(
    ctx: typer.Context,
    out: OutDir,
    data: DataDir = None,
    spatial: Annotated[Optional[Path], typer.Option(help="Stage-1 run folder (or a diffusers SD folder); stored in the run, so not needed with --resume.")] = None,
    classes: Annotated[list[str], typer.Option("--class", help="Class to learn, by code (G7), id or name; repeatable.")] = TEMPORAL.classes,
    resume: Resume = False,
    arch: Annotated[str, typer.Option(help="survgen (temporal blocks on the frozen spatial model) | lvdm | endora (baselines, trained whole).")] = TEMPORAL.arch,
    image_size: Annotated[Optional[int], typer.Option(min=8, help="Frame size to train at.", show_default="the one stage 1 trained at")] = None,
    clip_fps: ClipFps = TEMPORAL.clip_fps, workers: Workers = None, cache: LatentCache = None,
    attention_layers: Annotated[Optional[int], typer.Option(min=1, help="survgen: self-attention sub-layers per temporal block.", show_default="the preset's: tiny 1, sd15 2")] = None,
    prior_dino: Annotated[Optional[str], typer.Option(help="endora: local DINO ViT folder; adds Endora's prior loss.")] = None,
    prior_weight: Annotated[float, typer.Option(min=0.0, help="endora: weight α of the prior loss (Endora's).")] = TEMPORAL.prior_weight,
    gradient_checkpointing: Annotated[bool, typer.Option(
        "--gradient-checkpointing/--no-gradient-checkpointing",
        help="Recompute each spatial layer and temporal block in backward instead of keeping its activations.")] = TEMPORAL.gradient_checkpointing,
    attention: AttentionBackend = None,
    steps: Steps = TEMPORAL.train.steps, batch_size: BatchSize = TEMPORAL.train.batch_size,
    lr: LearningRate = TEMPORAL.train.lr, grad_accum: GradAccum = TEMPORAL.train.grad_accum,
    mixed_precision: MixedPrecision = TEMPORAL.train.mixed_precision, ema_decay: EmaDecay = TEMPORAL.train.ema_decay,
    checkpoint_every: CheckpointEvery = TEMPORAL.train.checkpoint_every,
    sample_every: SampleEvery = TEMPORAL.train.sample_every, sample_steps: SampleSteps = TEMPORAL.sample_steps,
    seed: Seed = TEMPORAL.train.seed, quiet: Quiet = False,
):
    """Stage 2: freeze the spatial model, train temporal blocks + class embedding on clips of a class.

    With --arch lvdm or endora, train the paper's baselines instead: a whole video model in the same latent space.

    Examples:
      survgen train-temporal --data data/synth --spatial runs/spatial --class G7 --out runs/temporal-G7
      survgen train-temporal --data data/synth --spatial runs/spatial --class G7 --arch endora --out runs/endora-G7
    """
    stored = open_run(out, "temporal", resume)
    cfg, data = stage_config(ctx, TemporalStageConfig, stored, WORKERS), data_dir(data, stored)
    spatial = spatial or (stored.parent_path if stored else None)
    if spatial is None:
        raise ValueError("--spatial is required: the run folder of `survgen train-spatial`")
    from survgen.training.stage2 import train_temporal as run_stage

    with attention_backend(attention), training_progress(not quiet) as progress:
        result = run_stage(data, spatial, out, cfg, resume=resume, progress=progress)
    print_result(result, out)


@app.command("train-classifier")
@user_errors
def train_classifier(
    ctx: typer.Context,
    out: OutDir,
    data: DataDir = None,
    resume: Resume = False,
    preset: Annotated[str, typer.Option(help="tiny (CPU-sized 3D ResNet) | r3d18 (ResNet3D-18 widths, 112 px) | x3d-xs (X3D-XS, 160 px) | resnet-lstm (CPU-sized ResNet-LSTM) | resnet18-lstm (resnet18 widths, 112 px).")] = CLASSIFIER.preset,
    image_size: Annotated[Optional[int], typer.Option(min=8, help="Frame size the classifier sees.", show_default="the preset's: tiny 64, r3d18 112, x3d-xs 160, resnet-lstm 64, resnet18-lstm 112")] = None,
    clip_length: Annotated[int, typer.Option(min=1, help="Frames per clip.")] = CLASSIFIER.clip_length,
    clip_fps: ClipFps = CLASSIFIER.clip_fps, workers: Workers = None,
    val_fraction: Annotated[float, typer.Option(min=0.0, max=0.95, help="Share of recordings held out for validation (split by video, never by clip).")] = CLASSIFIER.val_fraction,
    balance: Annotated[str, typer.Option(help="loss: inverse-frequency class weights | sampler: oversample rare classes | none.")] = CLASSIFIER.balance,
    augment: Annotated[bool, typer.Option("--augment/--no-augment", help="Flip, resized crop and brightness/contrast jitter per clip.")] = CLASSIFIER.augment,
    val_every: Annotated[int, typer.Option("--val-every", min=1, help="Steps between validations.")] = CLASSIFIER.train.sample_every,
    steps: Steps = CLASSIFIER.train.steps, batch_size: BatchSize = CLASSIFIER.train.batch_size,
    lr: LearningRate = CLASSIFIER.train.lr, grad_accum: GradAccum = CLASSIFIER.train.grad_accum,
    mixed_precision: MixedPrecision = CLASSIFIER.train.mixed_precision,
    checkpoint_every: CheckpointEvery = CLASSIFIER.train.checkpoint_every, seed: Seed = CLASSIFIER.train.seed,
    quiet: Quiet = False,
):
    """Train the video classifier (3D ResNet) that rejection sampling uses, on the real clips.

    Example: survgen train-classifier --data data/synth --out runs/classifier --steps 600 --batch-size 16
    """
    stored = open_run(out, "classifier", resume)
    cfg = stage_config(ctx, ClassifierStageConfig, stored, {**WORKERS, "val_every": "train.sample_every"})
    data = data_dir(data, stored)
    from survgen.training.classifier import train_classifier as run_stage

    with training_progress(not quiet) as progress:
        result = run_stage(data, out, cfg, resume=resume, progress=progress)
    if result.extra.get("validation"):
        stderr.print(_validation_table(result.extra["validation"]))  # the command's result is its folder, on stdout
    print_result(result, out)


def _validation_table(validation: dict) -> Table:
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
    return table
