"""Which implementation runs temporal attention, and why each of the others cannot.

Each backend (xformers-style) says why it cannot run an input
(`not_supported_reasons(x, named) -> list[str]`, empty when it can). The chooser
takes the first backend with no reasons in `BACKENDS` order (fused kernels
before the reference); when a named backend cannot run, it raises
`BackendUnavailableError` listing every backend and its reasons, so a user
sees at once what to install, build or move. Adding a backend is adding one
`Backend` entry to `BACKENDS`.

A backend is named, strongest first, by the `backend=` argument of
`temporal_attention`, by `set_backend(name)` / `use_backend(name)`, or by the
environment variable `SURVGEN_ATTENTION`; otherwise it is chosen automatically.
"""

from __future__ import annotations

import contextlib
import importlib.util
import os
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import torch

from . import compiled, ops
from .reference import temporal_attention_reference

ENV_VAR = "SURVGEN_ATTENTION"


class BackendUnavailableError(RuntimeError):
    """A named backend cannot run the input (or none can); `reasons` maps every backend to why not."""

    def __init__(self, message: str, requested: str | None, reasons: dict[str, list[str]]):
        super().__init__(message)
        self.requested = requested
        self.reasons = reasons


@dataclass(frozen=True)
class Backend:
    """One implementation of `temporal_attention` and the test of whether it can run an input."""

    name: str
    # (x, named) -> reasons; `named` is True when the user asked for this backend by name.
    not_supported_reasons: Callable[[torch.Tensor, bool], list[str]]
    # Same signature as `temporal_attention_reference`.
    forward: Callable[..., torch.Tensor]
    # Why the automatic choice skips this backend for calls that record gradients (empty: it takes it);
    # it can always be named for them.
    not_for_training: str = ""


# ---------------------------------------------------------------- what this install has
_TRITON_INSTALLED = importlib.util.find_spec("triton") is not None


def _compiled_kernel_reasons(device: str) -> list[str]:
    if compiled.IMPORT_ERROR is not None:
        return [f"survgen._C is not importable ({compiled.IMPORT_ERROR}); "
                "reinstall with `pip install --no-build-isolation -e .`"]
    if device == "cuda" and not compiled.WITH_CUDA:
        return ["survgen._C was built without CUDA"]
    if not compiled.has_kernel("temporal_attention", device):
        return [f"survgen._C was built without a temporal_attention {device.upper()} kernel"]
    return []


def _cuda_runtime_reasons() -> list[str]:
    if torch.version.cuda is None:
        return [f"torch {torch.__version__} was built without CUDA"]
    if not torch.cuda.is_available():
        return ["no CUDA device"]
    return []


# ---------------------------------------------------------------- the backends
def _reference_reasons(x: torch.Tensor, named: bool) -> list[str]:
    return [] if x.is_floating_point() else [f"input dtype {x.dtype} is not floating point"]


def _cpu_reasons(x: torch.Tensor, named: bool) -> list[str]:
    reasons = _compiled_kernel_reasons("cpu")
    if x.device.type != "cpu":
        reasons.append(f"input is on {x.device.type}, the cpu backend needs a CPU tensor")
    if x.dtype not in (torch.float32, torch.float64):
        reasons.append(f"input is {x.dtype}, the cpu kernel computes in float32 or float64")
    return reasons


def _cuda_reasons(x: torch.Tensor, named: bool) -> list[str]:
    reasons = _cuda_runtime_reasons() + _compiled_kernel_reasons("cuda")
    if x.device.type != "cuda":
        reasons.append(f"input is on {x.device.type}, the cuda backend needs a CUDA tensor")
    return reasons


def _triton_reasons(x: torch.Tensor, named: bool) -> list[str]:
    reasons = [] if _TRITON_INSTALLED else ["triton is not installed (pip install triton)"]
    if x.device.type == "cpu":
        # Triton's interpreter runs kernels on the CPU for tests, far slower than any
        # other backend: only when asked for by name, and with TRITON_INTERPRET=1 set
        # before the first triton kernel is imported.
        if os.environ.get("TRITON_INTERPRET") != "1":
            reasons.append("input is on cpu and TRITON_INTERPRET is not set")
        elif not named:
            reasons.append("input is on cpu: the Triton interpreter runs only when named (backend='triton')")
    elif x.device.type != "cuda":
        reasons.append(f"input is on {x.device.type}, triton needs a CUDA tensor (or CPU with TRITON_INTERPRET=1)")
    return reasons


def _dispatched_op(*args) -> torch.Tensor:
    """The torch.library op: the dispatcher runs survgen._C's kernel for the input's device."""
    return ops.temporal_attention_op(*args)


def _triton_op(*args) -> torch.Tensor:
    # Imported on first use: triton reads TRITON_INTERPRET when its kernels are defined.
    from .triton_attention import temporal_attention_triton

    return temporal_attention_triton(*args)


# Preference order: the first backend that can run an input is chosen. On a GPU, Triton first: its
# projections are tensor-core GEMMs (cuBLAS) around fused prologue/epilogue kernels, and it has a fused
# backward; the CUDA C++ kernel computes scores with scalar loops and has no backward of its own, so it is
# the fallback where triton is not installed, and never chosen for training (benchmarks/NOTES.md).
BACKENDS: tuple[Backend, ...] = (
    Backend("triton", _triton_reasons, _triton_op),
    Backend("cuda", _cuda_reasons, _dispatched_op,
            not_for_training="no fused CUDA backward: its backward recomputes through the reference, slower than "
                             "autograd through the reference"),
    # On the CPU, forward + backward through the fused kernel recomputes the forward
    # (a third more matmul work than autograd through the reference, which keeps its
    # activations) and is mostly slower for training (benchmarks/NOTES.md).
    Backend("cpu", _cpu_reasons, _dispatched_op,
            not_for_training="its backward recomputes the forward and measured 0.76-0.86x autograd through the "
                             "reference on a 2-core CPU"),
    Backend("reference", _reference_reasons, temporal_attention_reference),
)
BACKEND_NAMES: tuple[str, ...] = tuple(b.name for b in BACKENDS)
_BY_NAME = {b.name: b for b in BACKENDS}


# ---------------------------------------------------------------- naming a backend
_selected: str | None = None


def _check_name(name: str, source: str) -> str:
    if name not in _BY_NAME:
        raise ValueError(f"{source}: unknown attention backend {name!r}; choose one of {', '.join(BACKEND_NAMES)}")
    return name


def set_backend(name: str | None) -> None:
    """Run temporal attention on backend `name` from now on (None: choose automatically again)."""
    global _selected
    _selected = None if name is None else _check_name(name, "set_backend")


@contextlib.contextmanager
def use_backend(name: str | None) -> Iterator[None]:
    """Within the `with` block, run temporal attention on backend `name` (None: choose automatically)."""
    global _selected
    previous = _selected
    _selected = None if name is None else _check_name(name, "use_backend")
    try:
        yield
    finally:
        _selected = previous


def _requested(requested: str | None, named_by: str) -> tuple[str | None, str]:
    """The named backend, if any, and who named it (for the error message)."""
    if requested is not None:
        return _check_name(requested, named_by), named_by
    if _selected is not None:
        return _selected, "set_backend()/use_backend()"
    env = os.environ.get(ENV_VAR, "").strip()
    if env:
        return _check_name(env, f"environment variable {ENV_VAR}"), f"{ENV_VAR}={env}"
    return None, "automatic choice"


# ---------------------------------------------------------------- choosing
def backend_report(x: torch.Tensor | None = None) -> dict[str, list[str]]:
    """Every backend (preference order) -> why it cannot run `x` (empty: it can).

    Without `x`, for a float32 activation on this machine's default device
    (CUDA when present, else CPU): what `survgen info` shows.
    """
    if x is None:
        x = torch.empty(1, 1, 1, 1, device="cuda" if torch.cuda.is_available() else "cpu")
    return {b.name: b.not_supported_reasons(x, False) for b in BACKENDS}


def _describe(x: torch.Tensor) -> str:
    return f"{x.dtype} on {x.device}, shape {tuple(x.shape)}"


def select_backend(x: torch.Tensor, requested: str | None = None, *, training: bool = False,
                   named_by: str = "backend= argument") -> Backend:
    """The backend that will run temporal attention on `x`.

    `requested` (else set_backend/use_backend, else $SURVGEN_ATTENTION) names
    one; otherwise the first in `BACKENDS` order that can run `x` (for a call
    that records gradients, `training`, the first without a
    `not_for_training` reason). Raises
    `BackendUnavailableError`, listing every backend's reasons, when the named
    one cannot run `x` or none can; `named_by` says in it who named `requested`
    (a command-line flag, say).
    """
    name, source = _requested(requested, named_by)
    if name is not None:
        if not _BY_NAME[name].not_supported_reasons(x, True):
            return _BY_NAME[name]
        headline = f"attention backend {name!r} (named by {source}) cannot run this input ({_describe(x)})"
    else:
        for backend in BACKENDS:
            if not (training and backend.not_for_training) and not backend.not_supported_reasons(x, False):
                return backend
        headline = f"no attention backend can run this input ({_describe(x)})"
    report = {b.name: b.not_supported_reasons(x, b.name == name) for b in BACKENDS}
    lines = [f"  {b}: {'; '.join(r) if r else 'available'}" for b, r in report.items()]
    raise BackendUnavailableError("\n".join([headline + ". Every backend:", *lines]), name, report)


def describe_choice(x: torch.Tensor, training: bool) -> str:
    """The backend `select_backend` takes for `x` (for training or inference), and which faster ones it passed over
    for training and why: what `survgen info` prints."""
    chosen = select_backend(x, training=training)
    passed_over = [f"{b.name}: {b.not_for_training}" for b in BACKENDS[:BACKENDS.index(chosen)]
                   if training and b.not_for_training and not b.not_supported_reasons(x, False)]
    return chosen.name + (f" (not {'; '.join(passed_over)})" if passed_over else "")
