"""`survgen generate`: the user's main job; prints the folder it made on stdout, a summary table on stderr."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from pathlib import Path
from typing import Annotated, Optional

import typer
from rich.table import Table

from survgen.cli.common import AttentionBackend, Quiet, app, attention_backend, user_errors
from survgen.console import progress_bar, say, stderr, text
from survgen.presets import DEFAULT_SAMPLING


@app.command()
@user_errors
def generate(
    out: Annotated[Optional[Path], typer.Option("--out", help="Output folder (re-run the same command to continue it); default generated/<classes>.")] = None,
    model: Annotated[Optional[Path], typer.Option("--model", help="Stage-2 run folder (`survgen train-temporal`); default: the shipped tiny model.")] = None,
    arch: Annotated[Optional[str], typer.Option("--arch", help="survgen | lvdm | endora: the --model run's architecture, checked (default: whatever it is). Only survgen has a shipped model.")] = None,
    classifier: Annotated[Optional[Path], typer.Option("--classifier", help="Classifier run folder (`survgen train-classifier`); default: the shipped one with the shipped model.")] = None,
    classes: Annotated[Optional[list[str]], typer.Option("--class", help="Class to generate, by code (G7), id or name; repeatable.")] = None,
    n: Annotated[int, typer.Option("--n", help="Accepted videos per class.")] = 8,
    reject_topk: Annotated[int, typer.Option("--reject-topk", help="Keep a video iff its class is in the classifier's top-k; 0 keeps all.")] = 3,
    max_candidates: Annotated[Optional[int], typer.Option("--max-candidates", help="Cap on candidates per class (default 20 × n).")] = None,
    batch_size: Annotated[Optional[int], typer.Option(
        "--batch-size", show_default="auto: the largest that fits the GPU's memory, or 2 per CPU core; at most --n",
        help="Videos per forward pass; part of the request (videos depend on it by float rounding), so a re-run "
             "of a folder takes the one it recorded.")] = None,
    sampler: Annotated[str, typer.Option("--sampler", help="ddim | dpm++ (DPM-Solver++ 2M) | unipc | ddpm (ancestral; Endora's).")] = DEFAULT_SAMPLING["sampler"],
    steps: Annotated[int, typer.Option("--steps", help="Sampler steps.")] = DEFAULT_SAMPLING["steps"],
    guidance: Annotated[float, typer.Option("--guidance", help="Classifier-free guidance scale (1 = none).")] = 3.0,
    guidance_interval: Annotated[Optional[str], typer.Option("--guidance-interval", help="LO,HI: guide only the steps at timesteps LO <= t <= HI (of 0-999; the rest run the conditional branch alone, half the cost); default: every step.")] = None,
    cache_interval: Annotated[Optional[int], typer.Option("--cache-interval", help=f"Compute the U-Net's deep features every N steps and reuse them in between (DeepCache); 1 = every step. Default: {DEFAULT_SAMPLING['cache_interval']} for survgen models, 1 for the baselines (they have no such cache).")] = None,
    text_per_video: Annotated[bool, typer.Option("--per-video-text/--per-frame-text", help="Project the prompt's keys and values once per video (the same result up to float rounding) or once per frame (as before).")] = True,
    frames: Annotated[int, typer.Option("--frames", help="Frames per video.")] = 16,
    fps: Annotated[Optional[float], typer.Option("--fps", help="Frame rate of the written videos (default: the clip rate the model trained at).")] = None,
    seed: Annotated[int, typer.Option("--seed", help="Seed; each video's own seed is in the manifest.")] = 0,
    video_format: Annotated[str, typer.Option("--format", help="The dataset's videos: mkv (FFV1, lossless: no codec artefact for a recogniser to key on) | avi (MJPEG 4:4:4, the bundled data's format) | mp4 (H.264 4:2:0, for players). preview.mp4 plays a few of them either way.")] = "mkv",
    gif: Annotated[bool, typer.Option("--gif", help="Also write a GIF of every kept video.")] = False,
    keep_rejected: Annotated[bool, typer.Option("--keep-rejected", help="Write rejected videos under rejected/.")] = False,
    attention: AttentionBackend = None,
    quiet: Quiet = False,
):
    """Generate videos of rare classes, keeping those the classifier recognises (rejection sampling).

    Example: survgen generate --model runs/temporal-G7 --classifier runs/classifier --class G7 --n 500 --reject-topk 3 --out gen/G7
    """
    from survgen.generation.default import default_runs
    from survgen.generation.distributed import launched_rank
    from survgen.generation.folder import MANIFEST
    from survgen.generation.run import GenerationConfig, generate
    from survgen.io import output_folder
    from survgen.models.loading import video_model_arch
    from survgen.presets import check_arch

    if arch is not None:
        check_arch(arch)
    if model is None:  # the shipped tiny model, judged by the shipped classifier unless another is given
        if arch not in (None, "survgen"):
            raise ValueError(f"no {arch} model ships with survgen; train one with `survgen train-temporal --arch {arch} "
                             "--data DIR --spatial RUN --class G7 --out RUN` and pass --model RUN")
        model, shipped_classifier = default_runs()
        classifier = classifier or shipped_classifier
    elif arch is not None and (found := video_model_arch(model)) != arch:
        raise ValueError(f"{model}: a {found} model, not {arch}; drop --arch or pass a {arch} run")
    out = out or Path("generated") / "-".join(classes or ["G7"]).replace("/", "_").replace(" ", "_")
    main = launched_rank() == 0  # under torchrun or accelerate launch, rank 0 checks and prints; the others are quiet
    if main:
        output_folder(out, option="--out", marker=MANIFEST)  # before any model loads
    cfg = GenerationConfig(classes=classes or ["G7"], n=n, reject_topk=reject_topk, max_candidates=max_candidates,
                           batch_size=batch_size, sampler=sampler, steps=steps, guidance=guidance,
                           guidance_interval=parse_interval(guidance_interval), cache_interval=cache_interval,
                           text_per_video=text_per_video, num_frames=frames, fps=fps, seed=seed, video_format=video_format, gif=gif,
                           keep_rejected=keep_rejected)
    with attention_backend(attention), generation_progress(not quiet and main) as progress:
        manifest = generate(model, out, cfg, classifier=classifier if reject_topk > 0 or classifier else None,
                            progress=progress)
    if not main:
        return
    table = Table(title=text(f"generated into {out}"))
    for column in ("class", "accepted", "candidates", "acceptance"):
        table.add_column(column, justify="right")
    for code, s in manifest["summary"]["per_class"].items():
        rate = f"{s['acceptance_rate']:.0%}" if s["acceptance_rate"] is not None else "-"
        table.add_row(text(code), str(s["accepted"]), str(s["candidates"]), rate)
    stderr.print(table)  # generate's result is its folder, on stdout
    typer.echo(str(out))


def parse_interval(given: str | None) -> list[int] | None:
    """`--guidance-interval LO,HI` as [LO, HI]."""
    if given is None:
        return None
    try:
        lo, hi = (int(part) for part in given.split(","))
    except ValueError:
        raise ValueError(f"--guidance-interval {given!r}: give two timesteps as LO,HI, e.g. 0,700") from None
    return [lo, hi]


@contextlib.contextmanager
def generation_progress(enabled: bool) -> Iterator:
    """A bar per class on stderr (accepted of wanted, candidates, acceptance, speed), as the reporter
    `generate` calls at each class's start and after every batch; in a log file, a plain line per tenth of a
    class's videos accepted. None when disabled."""
    from rich.progress import BarColumn, MofNCompleteColumn, TextColumn, TimeElapsedColumn

    if not enabled:
        yield None
        return
    tasks, said = {}, {}
    with progress_bar(TextColumn("{task.description}", style="bold", markup=False), BarColumn(), MofNCompleteColumn(),
                      TextColumn("accepted · {task.fields[candidates]} candidates · {task.fields[rate]} kept · "
                                 "{task.fields[speed]} videos/s"), TimeElapsedColumn(), transient=False) as bar:

        def report(r) -> None:
            if r.code not in tasks:
                tasks[r.code] = bar.add_task(r.code, total=r.wanted, candidates=0, rate="-", speed="-")
            bar.update(tasks[r.code], completed=r.accepted, candidates=r.candidates,
                       rate=f"{r.accepted / r.candidates:.0%}" if r.candidates else "-",
                       speed=f"{r.videos_per_s:.2f}" if r.videos_per_s else "-")
            if not stderr.is_terminal and r.accepted - said.setdefault(r.code, 0) >= max(1, r.wanted // 10):
                said[r.code] = r.accepted
                say(f"{r.code}: {r.accepted}/{r.wanted} accepted of {r.candidates} candidates")

        yield report
