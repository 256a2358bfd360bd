"""The `survgen` command line: thin Typer commands that parse options and call library functions.

Results (a reporting command's table or --json, the folder a command made) go
to stdout; messages and progress to stderr, printed as text (survgen.console).
Input errors end with exit code 2 and one line naming the file or option and
the fix (`common.user_errors`). survgen.cli is a folder without `__init__.py`
(see survgen.kernels.attention for why).

    main.py       `main`, the `survgen` entry point: imports every command module below
    common.py     the app and its sub-apps, global options, shared option types, error handling
    info.py       survgen info
    data.py       survgen data synth | stats | cache
    train.py      survgen train-vae | train-spatial | train-temporal | train-classifier
    generate.py   survgen generate
    classify.py   survgen classify
    evaluate.py   survgen evaluate quality | downstream
"""

from __future__ import annotations

import os

from survgen.cli import classify, data, evaluate, generate, info, train
from survgen.cli.common import app
from survgen.console import warnings_shown

COMMAND_MODULES = (info, data, train, generate, classify, evaluate)  # importing each registers its commands on app


def main() -> None:
    os.environ.setdefault("HF_HUB_OFFLINE", "1")  # every model is loaded from a local path
    with warnings_shown():
        app()
