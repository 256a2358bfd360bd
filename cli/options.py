"""Options shared by command modules: the temporal-attention backend, the clip rate, data-loading workers."""

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

ClipFps = Annotated[Optional[float], typer.Option("--clip-fps", min=0.001, help="Clip rate: each video's frames are taken round(its fps / clip fps) apart (default: 10, SAR-RARP50's label rate: stride 6 at 60 fps).")]
Workers = Annotated[Optional[int], typer.Option("--workers", min=0, help="Data-loading processes; 0 loads in the training process (default: min(8, CPU cores - 1)).")]


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
