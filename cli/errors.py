"""One error style for every command: a message naming the file or option and the fix, exit code 2, no traceback.

Known input errors (the library's own error types, bad files, places that
cannot be written) are the user's to fix and end with exit 2. Anything else is
a bug: one line that says so, exit 1. `survgen --debug ...` (or
SURVGEN_DEBUG=1) shows the traceback instead.
"""

from __future__ import annotations

import functools
import os

import click
import typer

from survgen.console import error

DEBUG_VARIABLE = "SURVGEN_DEBUG"


def _known_errors() -> tuple[type[Exception], ...]:
    from safetensors import SafetensorError

    from survgen.classes import UnknownClassError
    from survgen.data.index import DatasetError
    from survgen.data.video import VideoReadError
    from survgen.kernels import BackendUnavailableError
    from survgen.training.checkpoint import CheckpointError
    from survgen.training.loop import TrainingDivergedError

    # ValueError covers the rest of the library's input errors (run folders, models, outputs, options).
    return (UnknownClassError, DatasetError, VideoReadError, CheckpointError, TrainingDivergedError,
            BackendUnavailableError, SafetensorError, ValueError)


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
    """Turn errors into one message line: exit 2 for the user's to fix, 1 for a bug."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        if os.environ.get(DEBUG_VARIABLE):
            return fn(*args, **kwargs)
        try:
            return fn(*args, **kwargs)
        except (click.exceptions.Exit, click.ClickException, click.Abort):
            raise  # Typer's own: usage errors print their message, exit 2
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
