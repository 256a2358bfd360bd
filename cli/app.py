"""The `survgen` command line: thin Typer commands that parse options and call library functions.

Results (a reporting command's table or --json, the folder a command made) go
to stdout; messages and progress to stderr, printed as text (survgen.console).
Input errors end with exit code 2 and one line naming the file or option and
the fix (cli/errors.py).
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Annotated, Optional

import typer
from rich.table import Table

from survgen import __version__
from survgen.cli.errors import DEBUG_VARIABLE, user_errors
from survgen.cli.options import AttentionBackend, ClipFps, Workers, attention_backend
from survgen.console import say, show, text, warnings_shown

app = typer.Typer(
    name="survgen",
    help="SurV-Gen: generate surgical videos of under-represented classes to rebalance datasets.",
    no_args_is_help=True,
    rich_markup_mode="rich",
    pretty_exceptions_enable=False,
)


@app.callback()
def _global_options(
    video_backend: Annotated[Optional[str], typer.Option(
        "--video-backend", help="Video decoder for every command: pyav (default) | decord (or $SURVGEN_VIDEO_BACKEND; "
                                "`survgen info` shows the one in use).")] = None,
    debug: Annotated[bool, typer.Option("--debug", help="Show the Python traceback of an error (or $SURVGEN_DEBUG=1).")] = False,
):
    """SurV-Gen: generate surgical videos of under-represented classes to rebalance datasets."""
    from survgen.data.video import BACKEND_VARIABLE, VIDEO_BACKENDS

    if debug:
        os.environ[DEBUG_VARIABLE] = "1"

    if video_backend is not None:
        if video_backend not in VIDEO_BACKENDS:
            raise typer.BadParameter(f"{video_backend!r}; use one of {', '.join(VIDEO_BACKENDS)}",
                                     param_hint="--video-backend")
        # An environment variable, so DataLoader workers (forked or spawned) decode with the same backend.
        os.environ[BACKEND_VARIABLE] = video_backend

# ---------------------------------------------------------------- shared option types
DataDir = Annotated[Optional[Path], typer.Option("--data", help="Dataset root (SAR-RARP50 layout, or videos + labels CSV); stored in the run, so not needed with --resume.")]
OutDir = Annotated[Path, typer.Option("--out", help="Run folder to create (or to continue with --resume).")]
Resume = Annotated[bool, typer.Option("--resume", help="Continue the run in --out from its latest checkpoint.")]
Steps = Annotated[Optional[int], typer.Option("--steps", min=1, help="Optimizer steps in total.")]
BatchSize = Annotated[Optional[int], typer.Option("--batch-size", min=1, help="Samples per step and process.")]
LearningRate = Annotated[Optional[float], typer.Option("--lr", min=0.0, help="AdamW learning rate.")]
GradAccum = Annotated[Optional[int], typer.Option("--grad-accum", min=1, help="Gradient accumulation steps.")]
MixedPrecision = Annotated[Optional[str], typer.Option("--mixed-precision", help="auto | no | fp16 | bf16 (auto: bf16 on a GPU that supports it).")]
EmaDecay = Annotated[Optional[float], typer.Option("--ema-decay", min=0.0, max=1.0, help="EMA decay (0 disables).")]
CheckpointEvery = Annotated[Optional[int], typer.Option("--checkpoint-every", min=1, help="Steps between checkpoints.")]
SampleEvery = Annotated[Optional[int], typer.Option("--sample-every", min=1, help="Steps between sample grids.")]
SampleSteps = Annotated[Optional[int], typer.Option("--sample-steps", min=1, help="Sampler steps for those samples.")]
Seed = Annotated[Optional[int], typer.Option("--seed", help="Random seed (data order, noise, init).")]
Quiet = Annotated[bool, typer.Option("--quiet", help="No progress bar.")]
LatentCacheDir = Annotated[Optional[str], typer.Option("--cache", help="A `survgen data cache` folder made with this model's VAE, image size and clip rate: read the frames' VAE posteriors instead of decoding and encoding videos.")]


def _train_overrides(steps, batch_size, lr, grad_accum, mixed_precision, ema_decay, checkpoint_every,
                     sample_every, seed, workers=None) -> dict:
    return dict(train_steps=steps, train_batch_size=batch_size, train_lr=lr, train_grad_accum=grad_accum,
                train_mixed_precision=mixed_precision, train_ema_decay=ema_decay,
                train_checkpoint_every=checkpoint_every, train_sample_every=sample_every, train_seed=seed,
                train_num_workers=workers)


def _stage_config(cls, stored, overrides: dict):
    """The run's stored options on --resume (so no flag needs repeating), defaults otherwise; then the given flags."""
    from survgen.config import config_from_dict, with_overrides

    try:
        base = config_from_dict(cls, stored.options) if stored else cls()
    except ValueError as e:
        raise ValueError(f"{stored.folder / 'run.json'}: {e}; it was edited, or written by another survgen version, "
                         "and this one cannot resume it: start a new run with another --out") from None
    return with_overrides(base, **overrides)


def _open_run(out: Path, stage: str, resume: bool):
    """The stored run on --resume, None for a new one; a wrong --out is refused here, before torch loads."""
    from survgen.runs import begin_run

    return begin_run(out, stage, resume)


def _data_dir(given: Path | None, stored) -> Path:
    """--data as given (a resume checks it is the run's own), else the run's."""
    if given is None and stored is not None and stored.data:
        return stored.data_path
    if given is None:
        raise ValueError("--data is required: the dataset root (e.g. one made by `survgen data synth --out DIR`)")
    return given


def _print_result(result, out: Path) -> None:
    last = result.losses[-1] if result.losses else float("nan")
    say(f"done: step {result.step}, last loss {last:.4f}; run folder {out}")
    typer.echo(str(out))


# ---------------------------------------------------------------- info
@app.command()
@user_errors
def info(
    preset: Annotated[Optional[str], typer.Option(help="Also report parameter counts of this preset (tiny | sd15).")] = None,
    arch: Annotated[Optional[str], typer.Option(help="With --preset: video model of those counts: survgen (default) | lvdm | endora.")] = None,
    memory: Annotated[bool, typer.Option("--memory", help="Also count each training stage's memory at --preset (bytes on the meta device).")] = False,
    batch_size: Annotated[Optional[int], typer.Option("--batch-size", min=1, help="--memory: frames (stage 1) or clips (stage 2) per step (default 1).")] = None,
    image_size: Annotated[Optional[int], typer.Option(min=8, help="--memory: frame size (default: the preset's, sd15 256, tiny 64).")] = None,
    mixed_precision: Annotated[Optional[str], typer.Option("--mixed-precision", help="--memory: bf16 (default) | fp16 | no.")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON to stdout.")] = False,
):
    """Versions, device, kernel backends (and why not), parameter counts and sampling FLOPs of a preset.

    Examples:
      survgen info --arch endora --preset sd15
      survgen info --preset sd15 --memory --batch-size 2
    """
    if arch is not None and not preset:
        raise ValueError(f"--arch {arch} picks the model whose parameters --preset counts: add --preset tiny or sd15")
    unused = [flag for flag, value in (("--batch-size", batch_size), ("--image-size", image_size),
                                       ("--mixed-precision", mixed_precision)) if value is not None]
    if unused and not memory:
        raise ValueError(f"{', '.join(unused)} only shape the --memory count: add --memory --preset tiny|sd15")
    import diffusers
    import torch
    import transformers

    from survgen.data.video import video_backend

    from survgen.kernels import BackendUnavailableError, backend_report, select_backend

    probe = torch.empty(1, 1, 1, 1, device="cuda" if torch.cuda.is_available() else "cpu")
    attention = {}
    for use, training in (("inference", False), ("training", True)):
        try:
            attention[use] = select_backend(probe, training=training).name
        except BackendUnavailableError as e:  # $SURVGEN_ATTENTION names one that cannot run here
            attention[use] = str(e).splitlines()[0]
    report = {
        "survgen": __version__,
        "torch": torch.__version__,
        "diffusers": diffusers.__version__,
        "transformers": transformers.__version__,
        "device": torch.cuda.get_device_name(0) if torch.cuda.is_available() else "cpu (no CUDA device)",
        "attention_backend": attention,
        "attention_backends": {name: (reasons or "available") for name, reasons in backend_report().items()},
        "video_backend": video_backend(),
    }
    if preset:
        from survgen.models.counts import preset_parameter_counts, sampling_flops

        arch = arch or "survgen"
        report["parameters"] = {"arch": arch, "preset": preset, **preset_parameter_counts(preset, arch)}
        cost = sampling_flops(arch, preset)
        report["sampling_cost"] = {  # counted on the meta device: a cost model, not a timing
            "published_sampling": f"{cost['sampler']} {cost['steps']} steps with guidance at {cost['image_size']} px, "
                                  f"{cost['frames']} frames",
            "tflop_per_step": round(cost["flops_per_step"] / 1e12, 3),
            "tflop_per_video": round(cost["flops_per_video"] / 1e12, 2)}
    if memory:
        if not preset:
            raise ValueError("--memory counts a preset's training memory: add --preset tiny or --preset sd15")
        from survgen.models.memory import training_memory

        report["memory"] = training_memory(preset, batch_size=batch_size or 1, image_size=image_size,
                                           mixed_precision=mixed_precision or "bf16")
    if as_json:
        typer.echo(json.dumps(report, indent=2))
        return
    counted = report.pop("memory", None)
    table = Table(title="survgen info", show_header=False)
    for key, value in report.items():
        if isinstance(value, dict):
            for sub, v in value.items():
                shown = f"{v:,}" if isinstance(v, int) else ("; ".join(v) if isinstance(v, list) else str(v))
                table.add_row(text(f"{key}.{sub}"), text(shown))
        else:
            table.add_row(text(key), text(value))
    show(table)
    if counted:
        show(_memory_table(counted))
        show(text("\n".join(f"  - {a}" for a in counted["assumptions"])))


def _memory_table(memory: dict) -> Table:
    from survgen.models.memory import GiB

    table = Table(title=f"training memory in GiB, counted: {memory['preset']}, batch {memory['batch_size']}, "
                        f"{memory['image_size']} px, {memory['mixed_precision']}")
    stages = {"stage 1: frames": memory["spatial"], f"stage 2: {memory['temporal']['frames']}-frame clips": memory["temporal"]}
    table.add_column("")
    for name in stages:
        table.add_column(name, justify="right")
    rows = [("frozen weights", "frozen_weights"), ("trainable weights", "trainable_weights"),
            ("gradients", "gradients"), ("AdamW moments", "optimizer_state"), ("EMA", "ema"),
            ("AdamW step temporaries", "adamw_step_temporaries")]
    for label, key in rows:
        table.add_row(label, *(f"{s[key] / GiB:.2f}" for s in stages.values()))
    for checkpointing, label in (("no_checkpointing", ""), ("checkpointing", ", checkpointed")):
        table.add_row(f"saved activations{label}",
                      *(f"{s['saved_activations'][checkpointing] / GiB:.2f}" for s in stages.values()))
        table.add_row(f"[bold]total{label}", *(f"[bold]{s['total'][checkpointing] / GiB:.2f}" for s in stages.values()))
    return table


# ---------------------------------------------------------------- training
@app.command("train-vae")
@user_errors
def train_vae(
    out: OutDir,
    data: DataDir = None,
    resume: Resume = False,
    image_size: Annotated[Optional[int], typer.Option(min=8, help="Frame size the VAE is trained at (default: 64).")] = None,
    clip_fps: ClipFps = None, workers: Workers = None,
    steps: Steps = None, batch_size: BatchSize = None, lr: LearningRate = None, grad_accum: GradAccum = None,
    mixed_precision: MixedPrecision = None, checkpoint_every: CheckpointEvery = None,
    sample_every: SampleEvery = None, seed: Seed = None, quiet: Quiet = False,
):
    """Stage 0 (tiny preset only): train the small autoencoder on the dataset's frames.

    Example: survgen train-vae --data data/synth --out runs/vae
    """
    stored = _open_run(out, "vae", resume)
    from survgen.training.autoencoder import AutoencoderStageConfig, train_autoencoder

    overrides = dict(image_size=image_size, clip_fps=clip_fps,
                     **_train_overrides(steps, batch_size, lr, grad_accum, mixed_precision, None, checkpoint_every,
                                        sample_every, seed, workers))
    cfg = _stage_config(AutoencoderStageConfig, stored, overrides)
    data = _data_dir(data, stored)
    _print_result(train_autoencoder(data, out, cfg, resume=resume, progress=not quiet), out)


@app.command("train-spatial")
@user_errors
def train_spatial(
    out: OutDir,
    data: DataDir = None,
    resume: Resume = False,
    preset: Annotated[Optional[str], typer.Option(help="tiny (CPU, from config) | sd15 (local SD 1.5 weights).")] = None,
    pretrained: Annotated[Optional[str], typer.Option(help="Local SD 1.5 diffusers folder or .safetensors file.")] = None,
    tokenizer: Annotated[Optional[str], typer.Option(help="Local CLIP tokenizer folder (single-file checkpoints).")] = None,
    vae: Annotated[Optional[str], typer.Option(help="tiny: the run folder of `survgen train-vae`.")] = None,
    image_size: Annotated[Optional[int], typer.Option(min=8, help="Frame size to train at (default: the preset's: sd15 256 as in the paper, tiny 64).")] = None,
    clip_fps: ClipFps = None, workers: Workers = None, cache: LatentCacheDir = None,
    train_text_encoder: Annotated[Optional[bool], typer.Option("--train-text-encoder/--freeze-text-encoder",
                                                               help="Fine-tune the text encoder too (default: tiny yes, sd15 no).")] = None,
    steps: Steps = None, batch_size: BatchSize = None, lr: LearningRate = None, grad_accum: GradAccum = None,
    mixed_precision: MixedPrecision = None, ema_decay: EmaDecay = None, checkpoint_every: CheckpointEvery = None,
    sample_every: SampleEvery = None, sample_steps: SampleSteps = None, seed: Seed = None, quiet: Quiet = False,
):
    """Stage 1: fine-tune the 2D latent diffusion U-Net on frames paired with class prompts.

    Examples:
      survgen train-spatial --data data/synth --vae runs/vae --out runs/spatial
      survgen train-spatial --data SAR-RARP50/train --preset sd15 --pretrained ~/models/sd15 --out runs/spatial
    """
    stored = _open_run(out, "spatial", resume)
    from survgen.training.stage1 import SpatialStageConfig, train_spatial as run_stage

    overrides = dict(preset=preset, pretrained=pretrained, tokenizer=tokenizer, vae=vae, image_size=image_size,
                     clip_fps=clip_fps, cache=cache, train_text_encoder=train_text_encoder, sample_steps=sample_steps,
                     **_train_overrides(steps, batch_size, lr, grad_accum, mixed_precision, ema_decay,
                                        checkpoint_every, sample_every, seed, workers))
    cfg = _stage_config(SpatialStageConfig, stored, overrides)
    data = _data_dir(data, stored)
    _print_result(run_stage(data, out, cfg, resume=resume, progress=not quiet), out)


@app.command("train-temporal")
@user_errors
def train_temporal(
    out: OutDir,
    data: DataDir = None,
    spatial: Annotated[Optional[Path], typer.Option(help="Stage-1 run folder (or a diffusers SD folder).")] = None,
    classes: Annotated[Optional[list[str]], typer.Option("--class", help="Class to learn, by code (G7), id or name; repeatable.")] = None,
    resume: Resume = False,
    arch: Annotated[Optional[str], typer.Option(help="survgen (temporal blocks on the frozen spatial model) | lvdm | endora (baselines, trained whole).")] = None,
    image_size: Annotated[Optional[int], typer.Option(min=8, help="Frame size to train at (default: the one stage 1 trained at).")] = None,
    clip_fps: ClipFps = None, workers: Workers = None, cache: LatentCacheDir = None,
    attention_layers: Annotated[Optional[int], typer.Option(help="survgen: self-attention sub-layers per temporal block.")] = None,
    prior_dino: Annotated[Optional[str], typer.Option(help="endora: local DINO ViT folder; adds Endora's prior loss.")] = None,
    prior_weight: Annotated[Optional[float], typer.Option(help="endora: weight α of the prior loss (Endora: 0.5).")] = None,
    gradient_checkpointing: Annotated[Optional[bool], typer.Option("--gradient-checkpointing/--no-gradient-checkpointing")] = None,
    attention: AttentionBackend = None,
    steps: Steps = None, batch_size: BatchSize = None, lr: LearningRate = None, grad_accum: GradAccum = None,
    mixed_precision: MixedPrecision = None, ema_decay: EmaDecay = None, checkpoint_every: CheckpointEvery = None,
    sample_every: SampleEvery = None, sample_steps: SampleSteps = None, seed: Seed = None, quiet: Quiet = False,
):
    """Stage 2: freeze the spatial model, train temporal blocks + class embedding on clips of a class.

    With --arch lvdm or endora, train the paper's baselines instead: a whole video model in the same latent space.

    Examples:
      survgen train-temporal --data data/synth --spatial runs/spatial --class G7 --out runs/temporal-G7
      survgen train-temporal --data data/synth --spatial runs/spatial --class G7 --arch endora --out runs/endora-G7
    """
    stored = _open_run(out, "temporal", resume)
    from survgen.training.stage2 import TemporalStageConfig, train_temporal as run_stage

    overrides = dict(arch=arch, classes=classes or None, image_size=image_size, clip_fps=clip_fps, cache=cache,
                     attention_layers=attention_layers,
                     prior_dino=prior_dino, prior_weight=prior_weight,
                     gradient_checkpointing=gradient_checkpointing, sample_steps=sample_steps,
                     **_train_overrides(steps, batch_size, lr, grad_accum, mixed_precision, ema_decay,
                                        checkpoint_every, sample_every, seed, workers))
    cfg = _stage_config(TemporalStageConfig, stored, overrides)
    data = _data_dir(data, stored)
    spatial = spatial or (stored.parent_path if stored else None)
    if spatial is None:
        raise ValueError("--spatial is required: the run folder of `survgen train-spatial`")
    with attention_backend(attention):
        result = run_stage(data, spatial, out, cfg, resume=resume, progress=not quiet)
    _print_result(result, out)


def _mount_subcommands() -> None:
    from survgen.cli.data import app as data_app

    app.add_typer(data_app, name="data", help="Create and inspect datasets (synth, stats), cache their latents (cache).")

    from survgen.cli.generate import generate_command

    app.command("generate")(user_errors(generate_command))

    from survgen.cli.classifier import classify_command, train_classifier_command

    app.command("train-classifier")(user_errors(train_classifier_command))
    app.command("classify")(user_errors(classify_command))

    from survgen.cli.evaluate import app as evaluate_app

    app.add_typer(evaluate_app, name="evaluate", help="Measure generated videos: quality metrics and the downstream test.")


_mount_subcommands()


def main() -> None:
    # Library progress bars from transformers/diffusers loaders would interleave with ours.
    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
    os.environ.setdefault("DIFFUSERS_VERBOSITY", "error")
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")  # also silences diffusers/transformers loaders
    with warnings_shown():
        app()


if __name__ == "__main__":
    main()
