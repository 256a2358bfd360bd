"""Temporal attention on a CUDA GPU: every backend that can run CUDA tensors against the float64 reference.

Run with `pytest -m gpu tests/test_kernels_gpu.py` (benchmarks/gpu_check.sh does, on a bare GPU machine); skipped
where there is no CUDA device. A backend that cannot run here (survgen._C built without CUDA, triton missing) is
skipped with backend_report's reasons. Checks: forward and backward at the sd15 paper shapes and at an odd frame
count, in float32 and bfloat16; channels_last and strided inputs; more than 65,535 sequences; bit-identical reruns;
autocast. The bound is test_kernels_triton's: at most about twice as far from float64 as the reference computed in
the same low precision. benchmarks/gpu_check.py reuses these helpers for its accuracy table.
"""

from __future__ import annotations

import functools

import pytest
import torch

from survgen.kernels.backends import backend_report
from survgen.kernels.attention import temporal_attention
from survgen.kernels.reference import temporal_attention_reference
from test_kernels_triton import EPS, GRADIENT_FACTOR, case_id, make_inputs, max_error

pytestmark = [pytest.mark.gpu, pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device")]

GPU_BACKENDS = ("triton", "cuda", "reference")
# (batch, frames, channels, heads, height, width, qkv_bias), as test_kernels_triton's CASES.
# The sd15 levels of benchmarks/test_bench_kernels.py's LEVELS: 256 px with guidance, no Q/K/V bias as in the model.
PAPER_CASES = [(2, 16, channels, 8, size, size, False) for channels, size in ((320, 32), (640, 16), (1280, 8),
                                                                              (1280, 4))]
# An odd frame count (pads to 8 rows per sequence), head_dim 12, odd h·w, with a Q/K/V bias.
ODD_FRAMES_CASE = (2, 7, 96, 8, 5, 7, True)
# 264² positions of one video: 69,696 sequences, more than CUDA's 65,535 limit on grid axes 1 and 2.
MANY_SEQUENCES_CASE = (1, 16, 64, 8, 264, 264, False)
# make_inputs' scales are for c = 24: logits of std ≈ 9 and a projection ≈ 4× the residual. Both projections are
# scaled by √(24/c) to keep that balance at every width (at c = 1280 the logits would have std ≈ 460: one-hot).
SCALE_WIDTH = 24


@functools.lru_cache(maxsize=1)
def _float64_inputs(case, device):
    x, weights, grad_out = make_inputs(case)
    scale = (SCALE_WIDTH / case[2]) ** 0.5
    weights[2], weights[4] = weights[2] * scale, weights[4] * scale
    return tuple(None if t is None else t.to(device) for t in (x, *weights, grad_out))


def device_inputs(case, dtype, device, weight_dtype=None):
    """Fresh x, weights and grad_out of `case` on `device`: x and grad_out in `dtype`, weights in `weight_dtype`
    (default: `dtype`). The same values for every dtype and device (make_inputs' seed)."""
    x, *weights, grad_out = _float64_inputs(case, device)
    weights = [None if t is None else t.to(weight_dtype or dtype, copy=True) for t in weights]
    return x.to(dtype, copy=True), weights, grad_out.to(dtype, copy=True)


def tensor_names(case, backward=True) -> list[str]:
    """What `run_case` returns, in order."""
    if not backward:
        return ["out"]
    return ["out", "grad x", "grad norm_weight", "grad norm_bias", "grad qkv_weight",
            *(["grad qkv_bias"] if case[-1] else []), "grad out_weight", "grad out_bias"]


def run_case(fn, case, dtype, device, *, weight_dtype=None, autocast=None, backward=True) -> list[torch.Tensor]:
    """fn's output and (with `backward`) the gradients of x and every weight for the case's grad_out, as float64;
    fn runs under torch.autocast(device, autocast) when `autocast` is a dtype."""
    _, f, _, heads, *_ = case
    x, weights, grad_out = device_inputs(case, dtype, device, weight_dtype)
    leaves = [t.requires_grad_(backward) for t in (x, *weights) if t is not None]
    with torch.autocast(device, dtype=autocast, enabled=autocast is not None):
        out = fn(x, f, *weights, heads, EPS)
    if not backward:
        return [out.double()]
    grads = torch.autograd.grad(out, leaves, grad_out.to(out.dtype))
    return [out.detach().double(), *(g.double() for g in grads)]


# The float64 result and the low-precision reference of the case being checked are shared by every backend:
# a test module's parametrisations are ordered case by case (the case parameter is the innermost decorator).
@functools.lru_cache(maxsize=4)
def reference_run(case, dtype, device, weight_dtype=None, autocast=None, backward=True) -> list[torch.Tensor]:
    """`run_case` of the pure-PyTorch reference."""
    return run_case(temporal_attention_reference, case, dtype, device, weight_dtype=weight_dtype, autocast=autocast,
                    backward=backward)


def errors_and_bounds(backend, case, dtype, device, *, weight_dtype=None, autocast=None,
                      backward=True) -> dict[str, tuple[float, float]]:
    """Tensor name -> (max error vs float64, bound) for `backend` on `case`.

    As test_kernels_triton's `assert_as_accurate_as_float32`, with the precision that the computation rounds to
    (autocast's dtype, else `dtype`) in place of float32: the bound is twice the reference's error in that same
    setting (GRADIENT_FACTOR times more for gradients) plus twice that precision's rounding error at the result's
    magnitude. A non-finite result has an infinite or nan error and fails `error <= bound`.
    """
    setting = dict(weight_dtype=weight_dtype, autocast=autocast, backward=backward)
    got = run_case(functools.partial(temporal_attention, backend=backend), case, dtype, device, **setting)
    low = reference_run(case, dtype, device, **setting)
    exact = reference_run(case, torch.float64, device, backward=backward)
    precision = autocast or dtype
    results = {}
    for i, (name, mine, reference, float64) in enumerate(zip(tensor_names(case, backward), got, low, exact)):
        factor = 1 if i == 0 else GRADIENT_FACTOR
        rounding = max_error(float64.to(precision) + 0.3 - 0.3, float64.to(precision))
        results[name] = (max_error(mine, float64), 2 * factor * max_error(reference, float64) + 2 * rounding)
    return results


def assert_within_bounds(results, label):
    failures = [f"{name}: max error {error:.3g} vs float64, bound {bound:.3g}"
                for name, (error, bound) in results.items() if not error <= bound]
    assert not failures, f"{label}: " + "; ".join(failures)


def require(backend, dtype):
    """Skip the test, with backend_report's reasons, when `backend` cannot run CUDA tensors of `dtype` here."""
    reasons = backend_report(torch.empty(1, 1, 1, 1, device="cuda", dtype=dtype))[backend]
    if reasons:
        pytest.skip(f"backend {backend!r} cannot run CUDA {dtype} tensors here: {'; '.join(reasons)}")


# ---------------------------------------------------------------- the tests
@pytest.mark.parametrize("backend", GPU_BACKENDS)
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["fp32", "bf16"])
@pytest.mark.parametrize("case", [*PAPER_CASES, ODD_FRAMES_CASE], ids=case_id)
def test_matches_float64(case, dtype, backend):
    require(backend, dtype)
    assert_within_bounds(errors_and_bounds(backend, case, dtype, "cuda"), f"{backend} {dtype}")


LAYOUTS = {
    "channels-last": lambda x: x.contiguous(memory_format=torch.channels_last),
    "channel-slice": lambda x: torch.cat([x, x], dim=1)[:, : x.shape[1]],
    "every-other-image": lambda x: torch.stack([x, x], dim=1).flatten(0, 1)[::2],
}


@pytest.mark.parametrize("layout", list(LAYOUTS))
@pytest.mark.parametrize("backend", GPU_BACKENDS)
def test_layout_gives_the_same_result(backend, layout):
    """The same values laid out channels_last or as a strided view: the same output and gradients, bit for bit."""
    require(backend, torch.float32)
    op = functools.partial(temporal_attention, backend=backend)

    def relaid(x, *args):
        strided = LAYOUTS[layout](x)
        assert not strided.is_contiguous() and torch.equal(strided, x)
        return op(strided, *args)

    expected = run_case(op, ODD_FRAMES_CASE, torch.float32, "cuda")
    got = run_case(relaid, ODD_FRAMES_CASE, torch.float32, "cuda")
    for name, mine, contiguous in zip(tensor_names(ODD_FRAMES_CASE), got, expected):
        assert torch.equal(mine, contiguous), f"{layout}: {name} differs by up to {max_error(mine, contiguous):.3g}"


@pytest.mark.parametrize("backend", GPU_BACKENDS)
def test_more_than_65535_sequences(backend):
    require(backend, torch.float32)
    assert_within_bounds(errors_and_bounds(backend, MANY_SEQUENCES_CASE, torch.float32, "cuda"), backend)


@pytest.mark.parametrize("backend", GPU_BACKENDS)
def test_deterministic(backend):
    """Two runs of forward + backward at the top paper level in bf16 (training's precision) are bit-identical."""
    require(backend, torch.bfloat16)
    op = functools.partial(temporal_attention, backend=backend)
    first, second = (run_case(op, PAPER_CASES[0], torch.bfloat16, "cuda") for _ in range(2))
    for name, a, b in zip(tensor_names(PAPER_CASES[0]), first, second):
        assert torch.equal(a, b), f"{name} differs between two runs by up to {max_error(a, b):.3g}"


# activations -> (x's dtype, the weights' dtype): fp32 everything as autocast meets it in a plain model, and bf16
# activations with fp32 weights as in the video U-Net, whose frozen spatial layers hand bf16 to the temporal blocks.
AUTOCAST_INPUTS = {"fp32-activations": (torch.float32, torch.float32),
                   "bf16-activations": (torch.bfloat16, torch.float32)}


@pytest.mark.parametrize("activations", list(AUTOCAST_INPUTS))
@pytest.mark.parametrize("backend", GPU_BACKENDS)
def test_autocast(backend, activations):
    """Under torch.autocast("cuda", torch.bfloat16) the output is finite and bounded by the reference's error under
    the same autocast."""
    dtype, weight_dtype = AUTOCAST_INPUTS[activations]
    require(backend, dtype)
    results = errors_and_bounds(backend, PAPER_CASES[0], dtype, "cuda", weight_dtype=weight_dtype,
                                autocast=torch.bfloat16, backward=False)
    assert_within_bounds(results, f"{backend} under autocast, {activations}")
