"""The terminal: every message is plain text, never Rich markup.

Paths, class names and error messages come from users and files: `[v2]` in a
folder name or `[/path]` in a decoder's message would be read as markup, and
lost or end the command with a MarkupError. So everything printed goes
through here: messages are escaped whole, and table cells and titles are
`Text` objects, which Rich never parses.

Messages and progress go to stderr; results (a table, JSON, a path) to stdout,
so `survgen data stats DIR > stats.txt` keeps the table.
"""

from __future__ import annotations

import logging
import os
import sys
import warnings
from contextlib import contextmanager

from rich.console import Console
from rich.markup import escape
from rich.text import Text

stderr = Console(stderr=True, highlight=False)
stdout = Console(highlight=False)

_PREFIX = {"error": "[bold red]error:[/] ", "warning": "[yellow]warning:[/] ", "note": ""}


def text(value) -> Text:
    """A table cell or title that prints exactly as given."""
    return value if isinstance(value, Text) else Text(str(value))


def say(message: str, kind: str = "note") -> None:
    """One message line on stderr (kind: note | warning | error), printed as given."""
    stderr.print(_PREFIX[kind] + escape(str(message)), soft_wrap=True)


def warn(message: str) -> None:
    say(message, "warning")


def error(message: str) -> None:
    say(message, "error")


def show(renderable) -> None:
    """A result for the user (a table) on stdout."""
    stdout.print(renderable)


class _WarningHandler(logging.Handler):
    """Shows the library's logged warnings (skipped files, odd frame rates) as they happen."""

    def emit(self, record: logging.LogRecord) -> None:
        warn(record.getMessage())


@contextmanager
def warnings_shown(logger_name: str = "survgen"):
    logger = logging.getLogger(logger_name)
    handler = _WarningHandler(logging.WARNING)
    logger.addHandler(handler)
    propagate, logger.propagate = logger.propagate, False  # printed here, not again by the root logger
    try:
        yield
    finally:
        logger.removeHandler(handler)
        logger.propagate = propagate


# What keeps third-party libraries' progress bars and log lines off our stderr, for libraries a command imports: each
# library reads them at its import (tqdm reads TQDM_DISABLE then), and worker processes inherit them.
QUIET_LIBRARIES = {"TRANSFORMERS_VERBOSITY": "error", "DIFFUSERS_VERBOSITY": "error",
                   "TRANSFORMERS_NO_ADVISORY_WARNINGS": "1", "TQDM_DISABLE": "1"}


def _set_library_output(shown: bool) -> None:
    """The same switches in libraries imported before the command (a notebook, the test zygote)."""
    for name in ("transformers", "diffusers"):
        if name in sys.modules:
            library_logging = sys.modules[name].utils.logging
            library_logging.set_verbosity_warning() if shown else library_logging.set_verbosity_error()
            with warnings.catch_warnings():  # huggingface_hub warns when $HF_HUB_DISABLE_PROGRESS_BARS overrides it
                warnings.simplefilter("ignore")
                library_logging.enable_progress_bar() if shown else library_logging.disable_progress_bar()


@contextmanager
def libraries_quiet(quiet: bool = True):
    """One command's stderr holds survgen's lines only: third-party progress bars, log lines and warnings (numpy's and
    diffusers' deprecations, transformers' weight-loading bar) are off, unless `quiet` is False (--debug). A library
    first imported by a quiet command keeps its bars off for the rest of that process: it read the variables then."""
    saved = {name: os.environ.get(name) for name in QUIET_LIBRARIES}
    if quiet:
        os.environ.update(QUIET_LIBRARIES)
    _set_library_output(shown=not quiet)
    with warnings.catch_warnings():
        if quiet:
            warnings.filterwarnings("ignore")
            warnings.filterwarnings("default", module=r"survgen(\.|$)")  # our own would still show
        try:
            yield
        finally:
            for name, value in saved.items():
                os.environ.pop(name, None) if value is None else os.environ.__setitem__(name, value)


def progress_bar(*columns, transient: bool = True, enabled: bool = True):
    """A live progress bar on stderr, drawn only on a terminal: a log file gets no half-drawn bars."""
    from rich.progress import Progress

    return Progress(*columns, console=stderr, transient=transient, disable=not (enabled and stderr.is_terminal))
