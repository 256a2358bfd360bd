"""`survgen classify`: the top-k classes of video files by a trained classifier (a table, or --json, on stdout)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer
from rich.table import Table

from survgen.cli.common import AsJson, app, user_errors
from survgen.console import show, text


@app.command()
@user_errors
def classify(
    videos: Annotated[list[Path], typer.Argument(help="Video files; each is judged by its first clip.", show_default=False)],
    model: Annotated[Path, typer.Option("--model", help="Classifier run folder (`survgen train-classifier`).")],
    topk: Annotated[int, typer.Option("--topk", min=1, help="Classes to list per video.")] = 3,
    as_json: AsJson = False,
):
    """Print the top-k classes of each video with their probabilities.

    Example: survgen classify --model runs/classifier data/synth/video_01/video_left.avi --topk 3
    """
    from survgen.models.classify import classify_videos
    from survgen.models.loading import load_classifier

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
