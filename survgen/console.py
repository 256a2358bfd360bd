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


def progress_bar(*columns, transient: bool = True, enabled: bool = True):
    """A live progress bar on stderr, drawn only on a terminal: a log file gets no half-drawn bars."""
    from rich.progress import Progress

    return Progress(*columns, console=stderr, transient=transient, disable=not (enabled and stderr.is_terminal))
