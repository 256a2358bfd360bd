"""What the compiled core survgen._C of this install provides, read once at import.

`CORE` is the extension module (None when it failed to import, with the
reason in `IMPORT_ERROR`); `KERNELS` the fused kernels it was built with, as
"op:device" strings; `WITH_CUDA` whether it includes the CUDA sources.
Plain constants, so `torch.compile` can trace the backend choice. Importing
survgen._C also defines the ops survgen::temporal_attention(_backward) and
registers its kernels with the dispatcher (csrc/extension.cpp).
"""

from __future__ import annotations

try:
    from survgen import _C as CORE
except ImportError as error:
    CORE = None
    IMPORT_ERROR: str | None = str(error)
    KERNELS: frozenset[str] = frozenset()
    WITH_CUDA = False
else:
    IMPORT_ERROR = None
    KERNELS = frozenset(CORE.kernels())
    WITH_CUDA = bool(CORE.compiled_with_cuda())


def has_kernel(op: str, device: str) -> bool:
    """True when survgen._C registered a fused `op` kernel for `device` ("cpu" or "cuda")."""
    return f"{op}:{device}" in KERNELS
