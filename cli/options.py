"""Options shared by several commands that are not plain values: the temporal-attention backend."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Annotated, Optional

import typer

AttentionBackend = Annotated[Optional[str], typer.Option(
    "--attention",
    help="Temporal-attention backend: reference | cpu | cuda | triton. Default: the fastest that can run "
         "(or $SURVGEN_ATTENTION); `survgen info` lists each and why it can or cannot run here.",
)]


@contextlib.contextmanager
def attention_backend(name: str | None) -> Iterator[None]:
    """Run temporal attention on `name` inside the block, failing at once if it cannot run here."""
    import torch

    from survgen.kernels import select_backend, use_backend

    if name is not None:
        # The models run on the GPU when there is one: check there, before any model is loaded.
        select_backend(torch.empty(1, 1, 1, 1, device="cuda" if torch.cuda.is_available() else "cpu"), name,
                       named_by="--attention")
    with use_backend(name) if name is not None else contextlib.nullcontext():
        yield
