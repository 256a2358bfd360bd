"""`survgen data ...`: create a procedural dataset (suturing, or staple line bleeding), inspect the class
balance of any dataset, cache its latents.

`stats` prints its table (or --json) to stdout; `synth` and `cache` the folder
they made. Messages and progress go to stderr; input errors exit 2 (cli/errors.py).
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Annotated, Optional

import typer
from rich.table import Table

from survgen.cli.common import AsJson, ClipFps, data_app, user_errors
from survgen.console import progress_bar, say, show, text, warnings_shown


TASKS = ("suturing", "slb")


@data_app.command()
@user_errors
def synth(
    out: Annotated[Path, typer.Option("--out", help="Folder to create (must be empty or absent unless --overwrite).")],
    task: Annotated[str, typer.Option("--task", help="suturing: SAR-RARP50's eight actions (the paper's task 1) | slb: staple line bleeding, one label per video (task 2).")] = "suturing",
    num_videos: Annotated[Optional[int], typer.Option("--num-videos", min=1, help="Number of videos.", show_default="suturing 36, slb 48")] = None,
    size: Annotated[int, typer.Option("--size", min=16, help="Frame width and height in pixels.")] = 64,
    seed: Annotated[int, typer.Option("--seed", help="Random seed: the same seed gives the same dataset.")] = 0,
    frames_per_video: Annotated[Optional[int], typer.Option("--frames-per-video", min=16, help="Frames per video (suturing: about this many, at least 30).", show_default="suturing 270, slb 64")] = None,
    rare_share: Annotated[Optional[float], typer.Option("--rare-share", help="Suturing: the share of segments of each rare class (G1, G6, G7); the others keep their proportions. SLB: the share of videos with bleeding.", show_default="suturing 0.04, slb 0.2")] = None,
    overwrite: Annotated[bool, typer.Option("--overwrite", help="Replace a non-empty --out.")] = False,
):
    """Write a procedural dataset in the SAR-RARP50 layout: suturing (eight actions, G1/G6/G7 rare) or slb
    (stapler transections, 20 % of the videos with staple line bleeding, a classes.json with SLB0/SLB1).

    Examples:
      survgen data synth --out data/synth
      survgen data synth --task slb --out data/slb
      survgen data synth --out data/rare --rare-share 0.012   # a few clips per rare class, as SAR-RARP50's G6/G7
    """
    from rich.progress import BarColumn, MofNCompleteColumn, TextColumn, TimeElapsedColumn

    if task not in TASKS:
        raise ValueError(f"unknown --task {task!r}; choose one of {', '.join(TASKS)}")
    if task == "suturing":
        from survgen.data.synth import synthesize_dataset as synthesize

        num_videos, frames_per_video = num_videos or 36, frames_per_video or 270
        options = {"rare_share": rare_share}
        if frames_per_video < 30:
            raise ValueError(f"--frames-per-video {frames_per_video}: the suturing task needs at least 30 "
                             "(one action segment)")
    else:
        from survgen.data.synth_slb import FRAMES_PER_VIDEO, NUM_VIDEOS
        from survgen.data.synth_slb import synthesize_slb as synthesize

        num_videos, frames_per_video = num_videos or NUM_VIDEOS, frames_per_video or FRAMES_PER_VIDEO
        options = {"bleeding_share": rare_share} if rare_share is not None else {}

    began = time.perf_counter()
    with progress_bar(TextColumn("synthesizing videos"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn()) as bar:
        progress = bar.add_task("videos", total=num_videos)
        synthesize(out, num_videos=num_videos, size=size, seed=seed, frames_per_video=frames_per_video,
                   overwrite=overwrite, progress=lambda done, total: bar.update(progress, completed=done), **options)
    say(f"wrote {num_videos} {task} videos of {size}x{size} (seed {seed}) in {time.perf_counter() - began:.1f} s; "
        f"see the class balance with: survgen data stats {out}")
    typer.echo(str(out))


@data_app.command()
@user_errors
def stats(
    data: Annotated[Path, typer.Argument(help="Dataset root (SAR-RARP50 layout, or videos + labels CSV).")],
    plot: Annotated[Optional[Path], typer.Option(
        "--plot", help="Also write a bar chart PNG here (nothing is written without it).")] = None,
    clip_length: Annotated[int, typer.Option("--clip-length", min=1, help="Frames per clip.")] = 16,
    clip_fps: ClipFps = None,
    clip_step: Annotated[int, typer.Option("--clip-step", min=1, help="Frames between clip centres.")] = 6,
    layout: Annotated[str, typer.Option("--layout", help="auto | sar-rarp50 | csv.")] = "auto",
    labels_csv: Annotated[Optional[Path], typer.Option(
        "--labels-csv", help="Labels CSV for the csv layout (default DATA/labels.csv).")] = None,
    as_json: AsJson = False,
):
    """Clips, videos and labelled frames per class; warnings about bad files first.

    Examples:
      survgen data stats data/synth --plot class_balance.png
      survgen data stats my_videos --layout csv --labels-csv my_videos/labels.csv --json
    """
    from survgen.data.index import CLIP_FPS, build_index
    from survgen.data.stats import class_balance_plot, class_statistics
    from survgen.io import is_survgen_png, output_file

    clip_fps = clip_fps or CLIP_FPS
    if plot is not None:
        output_file(plot, option="--plot", suffix=".png", ours=is_survgen_png)
    with warnings_shown():
        index = build_index(data, clip_length=clip_length, clip_fps=clip_fps, clip_step=clip_step,
                            layout=layout, labels_csv=labels_csv)
        rows = class_statistics(index)
        if plot is not None:
            class_balance_plot(index.class_counts(), index.vocabulary, plot,
                               title=f"{clip_length}-frame clips per class: {data}")

    if as_json:
        typer.echo(json.dumps({"root": str(data), "layout": index.layout, "clip_length": clip_length,
                               "clip_fps": clip_fps, "clips": len(index),
                               "classes": [row.__dict__ for row in rows], "warnings": index.warnings,
                               "plot": str(plot) if plot is not None else None}, indent=2))
        return
    table = Table(title=text(f"{data} ({index.layout} layout)"), caption=text(
        f"{len(index)} clips of {clip_length} frames at {clip_fps:g} fps from {len(index.video_ids())} recordings; "
        "orange: under-represented"))
    for column in ("code", "action", "clips", "share", "recordings", "labelled frames"):
        table.add_column(column, justify="left" if column in ("code", "action") else "right")
    for row in rows:
        table.add_row(text(row.code), text(row.name), f"{row.clips:,}", f"{row.share:.1%}", str(row.videos), f"{row.frames:,}",
                      style="dark_orange" if row.rare else None)
    show(table)
    if index.warnings:
        say(f"{len(index.warnings)} warning(s) above: those files or lines were skipped.")
    if plot is not None:
        say(f"plot: {plot}")


@data_app.command()
@user_errors
def cache(
    out: Annotated[Path, typer.Option("--out", help="Cache folder to create (or to finish, rerun with the same options).")],
    data: Annotated[Path, typer.Option("--data", help="Dataset root (SAR-RARP50 layout, or videos + labels CSV).")],
    spatial: Annotated[Optional[Path], typer.Option(
        "--spatial", help="Stage-1 run folder, or a diffusers SD folder: its VAE encodes the frames.")] = None,
    vae: Annotated[Optional[Path], typer.Option(
        "--vae", help="tiny: a `survgen train-vae` run instead, so stage 1 can train from the cache.")] = None,
    image_size: Annotated[Optional[int], typer.Option(
        "--image-size", min=8, help="Frame size to encode at (default: the one the run trained at; a raw SD folder needs it).")] = None,
    clip_fps: ClipFps = None,
    clip_length: Annotated[int, typer.Option("--clip-length", min=1, help="Frames per clip.")] = 16,
    dtype: Annotated[str, typer.Option("--dtype", help="float16 (half the disk, far below the diffusion noise) | float32 (exact).")] = "float16",
    batch_size: Annotated[int, typer.Option("--batch-size", min=1, help="Frames per VAE forward pass.")] = 16,
):
    """Encode every frame the clips need once: the frozen VAE's posterior, for --cache on train-spatial/-temporal.

    Build it with the clip rate, clip length and image size you train with; a
    killed build continues when rerun with the same options.

    Examples:
      survgen data cache --data data/synth --vae runs/vae --out cache/synth
      survgen data cache --data SAR-RARP50/train --spatial runs/spatial --out cache/sar --clip-fps 10
    """
    from rich.progress import (BarColumn, MofNCompleteColumn, TaskProgressColumn, TextColumn, TimeElapsedColumn,
                               TimeRemainingColumn)

    from survgen.data.index import CLIP_FPS, build_index
    from survgen.data.latent_cache import MANIFEST, build_latent_cache
    from survgen.io import output_folder
    from survgen.models.loading import load_vae

    output_folder(out, option="--out", marker=MANIFEST)  # before the VAE loads and the videos are hashed
    began = time.perf_counter()
    with warnings_shown():
        model, run_size = load_vae(spatial=spatial, vae=vae)
        if (image_size := image_size or run_size) is None:
            raise ValueError(f"{spatial}: not a survgen run, so its image size is unknown; pass --image-size "
                             "(the size you will train at, e.g. 256 for sd15)")
        index = build_index(data, clip_length=clip_length, clip_fps=clip_fps or CLIP_FPS)
        with progress_bar(TextColumn("encoding frames"), BarColumn(), MofNCompleteColumn(), TaskProgressColumn(),
                          TimeElapsedColumn(), TextColumn("ETA"), TimeRemainingColumn()) as bar:
            task = bar.add_task("frames", total=None)
            build_latent_cache(index, model, out, image_size=image_size, vae_source=str(spatial or vae), dtype=dtype,
                               batch_size=batch_size,
                               progress=lambda done, total: bar.update(task, completed=done, total=total))
    say(f"latent cache of {len(index.video_ids())} recordings at {image_size} px ({dtype}) in {out}, "
        f"{time.perf_counter() - began:.1f} s; train with --cache {out}")
    typer.echo(str(out))
