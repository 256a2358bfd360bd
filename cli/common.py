"""What every command shares: the app and its sub-apps, the global options, option types, error handling.

Command modules (`train`, `generate`, `classify`, `info`, `data`, `evaluate`)
register their commands on `app` (or `data_app`, `evaluate_app`) by
decoration; `main.py` imports them all. Commands import torch
and the models inside their body, so `survgen --help` and refused input stay fast.
"""

from __future__ import annotations

import contextlib
import functools
import os
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Annotated, Optional

import click
import typer

from survgen.console import error, libraries_quiet, progress_bar, say, stderr

DEBUG_VARIABLE = "SURVGEN_DEBUG"

app = typer.Typer(
    name="survgen",
    help="SurV-Gen: generate surgical videos of under-represented classes to rebalance datasets.",
    no_args_is_help=True,
    rich_markup_mode="rich",
    pretty_exceptions_enable=False,
)
data_app = typer.Typer(no_args_is_help=True, rich_markup_mode="rich",
                       help="Create and inspect datasets (synth, stats), cache their latents (cache).")
evaluate_app = typer.Typer(no_args_is_help=True, rich_markup_mode="rich",
                           help="Measure generated videos: quality metrics, and the downstream test the method exists for.")
app.add_typer(data_app, name="data")
app.add_typer(evaluate_app, name="evaluate")


# --debug of the invocation running now: global_options, which runs first in every invocation, sets it.
_debug = False


@app.callback()
def global_options(
    ctx: typer.Context,
    video_backend: Annotated[Optional[str], typer.Option(
        "--video-backend", help="Video decoder for every command: pyav | decord (or $SURVGEN_VIDEO_BACKEND; "
                                "`survgen info` shows the one in use).", show_default="pyav")] = None,
    debug: Annotated[bool, typer.Option("--debug", help="Show the Python traceback of an error, and the libraries' own "
                                        "progress bars, log lines and warnings (or $SURVGEN_DEBUG=1).")] = False,
):
    """SurV-Gen: generate surgical videos of under-represented classes to rebalance datasets."""
    from survgen.data.video import BACKEND_VARIABLE, VIDEO_BACKENDS

    global _debug
    _debug = debug  # not in os.environ: a later invocation in the same process (CliRunner) would inherit it
    ctx.with_resource(libraries_quiet(not (debug or os.environ.get(DEBUG_VARIABLE))))  # for this command, then as before
    if video_backend is not None:
        if video_backend not in VIDEO_BACKENDS:
            raise typer.BadParameter(f"{video_backend!r}; use one of {', '.join(VIDEO_BACKENDS)}",
                                     param_hint="--video-backend")
        # An environment variable, so DataLoader workers (forked or spawned) decode with the same backend.
        os.environ[BACKEND_VARIABLE] = video_backend


# ---------------------------------------------------------------- option types shared by several commands
DataDir = Annotated[Optional[Path], typer.Option("--data", help="Dataset root (SAR-RARP50 layout, or videos + labels CSV); stored in the run, so not needed with --resume.")]
OutDir = Annotated[Path, typer.Option("--out", help="Run folder to create (or to continue with --resume).")]
Resume = Annotated[bool, typer.Option("--resume", help="Continue the run in --out from its latest checkpoint; the flags given change only what may change.")]
Quiet = Annotated[bool, typer.Option("--quiet", help="No progress bar.")]
AsJson = Annotated[bool, typer.Option("--json", help="Print the results as JSON to stdout instead of a table.")]
ClipFps = Annotated[Optional[float], typer.Option("--clip-fps", min=0.001, help="Clip rate: each video's frames are taken round(its fps / clip fps) apart (10: SAR-RARP50's label rate, stride 6 at 60 fps).")]
Workers = Annotated[Optional[int], typer.Option("--workers", min=0, help="Data-loading processes; 0 loads in the training process.", show_default="min(8, CPU cores - 1)")]
AttentionBackend = Annotated[Optional[str], typer.Option(
    "--attention", show_default="the fastest that can run, or $SURVGEN_ATTENTION",
    help="Temporal-attention backend: reference | cpu | cuda | triton; `survgen info` lists each and why it can or "
         "cannot run here.")]


# ---------------------------------------------------------------- errors
# The library's own input errors that are not ValueErrors (ValueError covers the rest: run folders, models,
# outputs, options), by module, so that telling an error apart never imports torch.
KNOWN_ERRORS = {"survgen.classes": "UnknownClassError", "survgen.data.index": "DatasetError",
                "survgen.data.video": "VideoReadError", "survgen.kernels.backends": "BackendUnavailableError",
                "survgen.training.checkpoint": "CheckpointError", "survgen.training.loop": "TrainingDivergedError",
                "safetensors": "SafetensorError"}


def _known_errors() -> tuple[type[Exception], ...]:
    """The known error types among the modules loaded: an error's own module is always among them."""
    loaded = [getattr(sys.modules[m], name) for m, name in KNOWN_ERRORS.items() if m in sys.modules]
    return (ValueError, *loaded)


def describe_os_error(e: OSError) -> str:
    """`path: what went wrong` for a file-system error, with the way out."""
    where = e.filename if e.filename is not None else "a file"
    reason = (e.strerror or str(e)).lower()
    fixes = {IsADirectoryError: "a folder is where a file is expected; give a file name",
             NotADirectoryError: "a file is where a folder is expected; give a folder",
             PermissionError: "choose a location you can write to (or read, for an input)",
             FileNotFoundError: "check the path"}
    fix = next((text for kind, text in fixes.items() if isinstance(e, kind)), "check the path and free space")
    return f"{where}: {reason}; {fix}"


def user_errors(fn):
    """One error style for every command: the user's to fix end with one line naming the file or option and
    the fix, exit 2; anything else is a bug, one line that says so, exit 1. `--debug` shows the traceback."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        if _debug or os.environ.get(DEBUG_VARIABLE):
            return fn(*args, **kwargs)
        try:
            return fn(*args, **kwargs)
        except (typer.Exit, typer.Abort, typer.BadParameter, click.exceptions.Exit, click.ClickException, click.Abort):
            raise  # Typer's own (and click's, which older Typer versions use): usage errors print their message, exit 2
        except _known_errors() as e:
            error(str(e))
        except OSError as e:
            error(describe_os_error(e))
        except Exception as e:  # noqa: BLE001 - the last line of defence: never a traceback
            error(f"{type(e).__name__}: {e}. This is a survgen bug: run the command again with `survgen --debug ...` "
                  "for the traceback and report it")
            raise typer.Exit(1) from None
        raise typer.Exit(2)

    return wrapper


# ---------------------------------------------------------------- runs
def open_run(out: Path, stage: str, resume: bool):
    """The stored run on --resume, None for a new one; a wrong --out is refused here, before torch loads."""
    from survgen.runs import begin_run

    return begin_run(out, stage, resume)


def stage_config(ctx: typer.Context, cls, stored, fields: dict[str, str] | None = None):
    """The stage config of a training command: the run's stored options on --resume (so no flag needs
    repeating), the defaults otherwise; then every flag the user gave.

    A flag sets the config field of its name, `train.NAME` for the training loop's options, or the field
    `fields` maps it to; flags that are not config fields (--out, --data, ...) are left out.
    """
    from survgen.config import config_from_dict, config_to_dict
    from survgen.training.configs import TrainConfig

    options = config_to_dict(_stored_config(cls, stored) if stored else cls())
    loop_fields = set(TrainConfig.__dataclass_fields__)
    for name, value in ctx.params.items():
        source = ctx.get_parameter_source(name)  # an enum of Typer's own click, matched by name
        if source is None or source.name in ("DEFAULT", "DEFAULT_MAP"):
            continue
        field = (fields or {}).get(name) or (f"train.{name}" if name in loop_fields else name)
        owner, _, key = field.rpartition(".")
        target = options[owner] if owner else options
        if key in target:
            target[key] = value
    return config_from_dict(cls, options)


def _stored_config(cls, stored):
    from survgen.config import config_from_dict

    try:
        return config_from_dict(cls, stored.options)
    except ValueError as e:
        raise ValueError(f"{stored.folder / 'run.json'}: {e}; it was edited, or written by another survgen version, "
                         "and this one cannot resume it: start a new run with another --out") from None


def data_dir(given: Path | None, stored) -> Path:
    """--data as given (a resume checks it is the run's own), else the run's."""
    if given is None and stored is not None and stored.data:
        return stored.data_path
    if given is None:
        raise ValueError("--data is required: the dataset root (e.g. one made by `survgen data synth --out DIR`)")
    return given


@contextlib.contextmanager
def training_progress(enabled: bool) -> Iterator:
    """A training loop's progress on stderr, as the `progress` reporter it calls after every step: a live bar on a
    terminal; in a log file, where a bar cannot redraw, a plain line every 5 % of the steps. None when disabled."""
    from rich.progress import BarColumn, MofNCompleteColumn, TextColumn, TimeElapsedColumn, TimeRemainingColumn

    if not enabled:
        yield None
        return
    tasks = {}
    with progress_bar(TextColumn("{task.description}", style="bold", markup=False), BarColumn(),
                      MofNCompleteColumn(), TextColumn("loss {task.fields[loss]}"),
                      TextColumn("{task.fields[rate]} it/s"), TimeElapsedColumn(), TextColumn("ETA"),
                      TimeRemainingColumn(), transient=False) as bar:

        def report(r) -> None:
            if r.run not in tasks:  # a resumed run starts part-way
                tasks[r.run] = bar.add_task(r.run, total=r.total, completed=r.step - 1, loss="-", rate="-")
            bar.update(tasks[r.run], completed=r.step, loss=f"{r.loss:.4f}", rate=f"{r.rate:.2f}")
            if not stderr.is_terminal and (r.step % max(1, r.total // 20) == 0 or r.step == r.total):
                eta = (r.total - r.step) / r.rate if r.rate > 0 else float("nan")
                say(f"{r.run}: step {r.step}/{r.total}  loss {r.loss:.4f}  {r.rate:.2f} it/s  ETA {eta:.0f} s")

        yield report


def print_result(result, out: Path) -> None:
    last = result.losses[-1] if result.losses else float("nan")
    say(f"done: step {result.step}, last loss {last:.4f}; run folder {out}")
    typer.echo(str(out))


@contextlib.contextmanager
def attention_backend(name: str | None) -> Iterator[None]:
    """Run temporal attention on `name` inside the block, failing at once if it cannot run here."""
    import torch

    from survgen.kernels.backends import select_backend, use_backend

    if name is not None:
        # The models run on the GPU when there is one: check there, before any model is loaded.
        select_backend(torch.empty(1, 1, 1, 1, device="cuda" if torch.cuda.is_available() else "cpu"), name,
                       named_by="--attention")
    with use_backend(name) if name is not None else contextlib.nullcontext():
        yield
