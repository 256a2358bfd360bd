"""The fused CPU kernel of survgen._C against the pure-PyTorch reference: forward and backward, awkward sizes.

Tolerances, as flash-attention's tests set them: float64 runs must agree with
the float64 reference to ~1e-10 (only summation order differs); a float32 run
may be at most twice as far from the float64 truth as the float32 reference
itself is (plus a floor for results that are exactly representable).
"""

from __future__ import annotations

import subprocess
import sys

import pytest
import torch

from survgen.kernels import compiled
from survgen.kernels.attention import temporal_attention
from survgen.kernels.reference import temporal_attention_reference
from survgen.kernels import ops

from test_kernels import call, make_inputs

SHAPES = [  # (b, f, c, heads, h, w)
    (1, 1, 24, 3, 3, 5),     # one frame: attention is the identity on v
    (3, 3, 40, 5, 3, 5),     # h·w = 15: one tile padded from 15 to 16 positions
    (1, 16, 24, 3, 3, 5),
    (3, 24, 40, 5, 1, 3),    # f not a power of two, 3 positions in a 16-wide tile
    (2, 3, 7, 7, 1, 1),      # odd channels, head_dim 1, a single position
    (2, 16, 48, 6, 9, 9),    # 81 positions: several tiles per video, the last one partial
    (1, 32, 20, 4, 1, 17),   # f = 32, 17 positions
]
IDS = ["b{}f{}c{}h{}_{}x{}".format(*s) for s in SHAPES]


def leaves_of(x, weights):
    leaves = [x] + [t for t in weights.values() if t is not None]
    for t in leaves:
        t.requires_grad_(True)
    return leaves


def test_the_cpu_kernel_is_built():
    assert compiled.has_kernel("temporal_attention", "cpu") and compiled.has_kernel("temporal_attention_backward", "cpu")


@pytest.mark.parametrize("shape", SHAPES, ids=IDS)
@pytest.mark.parametrize("qkv_bias", [True, False], ids=["qkv_bias", "no_qkv_bias"])
def test_float64_forward_and_backward_match_the_reference(shape, qkv_bias):
    b, f, c, heads, h, w = shape
    x, weights = make_inputs(b, f, c, heads, h, w, qkv_bias=qkv_bias)
    leaves = leaves_of(x, weights)
    got = call(temporal_attention, x, f, weights, heads, backend="cpu")
    want = call(temporal_attention_reference, x, f, weights, heads)
    torch.testing.assert_close(got, want, rtol=1e-10, atol=1e-10)
    grad_out = torch.randn(want.shape, dtype=want.dtype, generator=torch.Generator().manual_seed(7))
    names = ["x", *[k for k, v in weights.items() if v is not None]]
    for name, got_g, want_g in zip(names, torch.autograd.grad(got, leaves, grad_out),
                                   torch.autograd.grad(want, leaves, grad_out), strict=True):
        torch.testing.assert_close(got_g, want_g, rtol=1e-9, atol=1e-9, msg=lambda m: f"grad of {name}: {m}")


@pytest.mark.parametrize("shape", [(0, 3, 8, 2, 3, 5), (2, 3, 8, 2, 0, 5), (2, 3, 8, 2, 4, 0)],
                         ids=["no_videos", "height_0", "width_0"])
def test_empty_inputs_give_empty_outputs_and_zero_weight_gradients(shape):
    """h·w = 0 once divided by a zero tile width: a SIGFPE instead of an empty result."""
    b, f, c, heads, h, w = shape
    x, weights = make_inputs(b, f, c, heads, h, w)
    leaves = leaves_of(x, weights)
    got = call(temporal_attention, x, f, weights, heads, backend="cpu")
    assert got.shape == x.shape
    for name, grad in zip(["x", *weights], torch.autograd.grad(got.sum(), leaves), strict=True):
        assert torch.all(grad == 0), f"grad of {name} is not zero"


@pytest.mark.parametrize("shape", SHAPES, ids=IDS)
def test_float32_error_is_at_most_twice_the_reference_float32_error(shape):
    b, f, c, heads, h, w = shape
    x, weights = make_inputs(b, f, c, heads, h, w)
    x64_leaves = leaves_of(x, weights)
    truth = call(temporal_attention_reference, x, f, weights, heads)
    grad_out = torch.randn(truth.shape, dtype=torch.float64, generator=torch.Generator().manual_seed(3))
    true_grads = torch.autograd.grad(truth, x64_leaves, grad_out)

    x32 = x.detach().float()
    w32 = {k: None if v is None else v.detach().float() for k, v in weights.items()}
    results = {}
    for backend in ("cpu", "reference"):
        leaves = leaves_of(x32.clone(), {k: None if v is None else v.clone() for k, v in w32.items()})
        xs, ws = leaves[0], dict(zip([k for k, v in w32.items() if v is not None], leaves[1:]))
        ws.setdefault("qkv_bias", None)
        out = call(temporal_attention, xs, f, ws, heads, backend=backend)
        results[backend] = [out, *torch.autograd.grad(out, leaves, grad_out.float())]
    for got, ref, exact in zip(results["cpu"], results["reference"], [truth, *true_grads], strict=True):
        assert got.dtype == torch.float32
        got_error = (got.double() - exact).abs().max().item()
        ref_error = (ref.double() - exact).abs().max().item()
        assert got_error <= 2 * ref_error + 1e-6, (got_error, ref_error)


@pytest.mark.parametrize("qkv_bias", [True, False], ids=["qkv_bias", "no_qkv_bias"])
def test_gradcheck_float64(qkv_bias):
    x, weights = make_inputs(2, 3, 6, 2, 1, 3, qkv_bias=qkv_bias)
    names = [k for k, v in weights.items() if v is not None]

    def fn(x, *ws):
        return call(temporal_attention, x, 3, {"qkv_bias": None, **dict(zip(names, ws))}, 2, backend="cpu")

    assert torch.autograd.gradcheck(fn, leaves_of(x, weights))


def test_opcheck_runs_the_compiled_kernels():
    x, weights = make_inputs(2, 3, 6, 2, 3, 3)
    w = weights
    args = (x, 3, w["norm_weight"], w["norm_bias"], w["qkv_weight"], w["qkv_bias"], w["out_weight"], w["out_bias"],
            2, 1e-5)
    torch.library.opcheck(torch.ops.survgen.temporal_attention.default, args)
    grad_out = torch.randn_like(x)
    torch.library.opcheck(torch.ops.survgen.temporal_attention_backward.default, (grad_out, *args))
    # The op's CPU kernel is survgen._C's, not the reference: their float64 results differ in the last bits.
    fused = ops.temporal_attention_op(*args)
    assert not torch.equal(fused, temporal_attention_reference(*args))
    torch.testing.assert_close(fused, temporal_attention_reference(*args), rtol=1e-12, atol=1e-12)


def test_channels_last_input_and_repeatability():
    x, weights = make_inputs(2, 16, 24, 3, 5, 7, dtype=torch.float32)
    first = call(temporal_attention, x, 16, weights, 3, backend="cpu")
    again = call(temporal_attention, x, 16, weights, 3, backend="cpu")
    assert torch.equal(first, again)
    channels_last = call(temporal_attention, x.to(memory_format=torch.channels_last), 16, weights, 3, backend="cpu")
    assert torch.equal(channels_last, first)


def test_weight_gradients_do_not_depend_on_the_thread_count():
    x, weights = make_inputs(2, 16, 24, 3, 9, 9)
    grads = []
    threads = torch.get_num_threads()
    try:
        for n in (1, 2):
            torch.set_num_threads(n)
            leaves = leaves_of(x.detach().clone(), {k: None if v is None else v.detach().clone()
                                                    for k, v in weights.items()})
            ws = dict(zip([k for k, v in weights.items() if v is not None], leaves[1:]))
            out = call(temporal_attention, leaves[0], 16, ws, 3, backend="cpu")
            grads.append(torch.autograd.grad(out, leaves, torch.ones_like(out)))
    finally:
        torch.set_num_threads(threads)
    for one, two in zip(*grads, strict=True):
        torch.testing.assert_close(one, two, rtol=1e-12, atol=1e-12)


def test_weights_in_another_dtype_are_cast_to_x_and_get_gradients_in_their_own():
    """As under autocast, where x arrives in a low precision and the weights stay fp32."""
    x, weights = make_inputs(2, 3, 24, 3, 3, 5)
    w32 = {k: None if v is None else v.float().requires_grad_(True) for k, v in weights.items()}
    out = call(temporal_attention, x, 3, w32, 3, backend="cpu")
    assert out.dtype == torch.float64
    grads = torch.autograd.grad(out.sum(), [v for v in w32.values() if v is not None])
    assert all(g.dtype == torch.float32 for g in grads)
    want = call(temporal_attention_reference, x, 3, {k: None if v is None else v.double() for k, v in w32.items()}, 3)
    torch.testing.assert_close(out, want, rtol=1e-10, atol=1e-10)


def test_the_dispatcher_calls_the_kernels_of_survgen_c_and_python_defines_the_same_schemas():
    """Registered in C++ (TORCH_LIBRARY_IMPL), the kernels run without Python in between; ops.SCHEMAS, the schemas
    used where survgen._C is missing, must be the ones survgen._C defines."""
    for name, schema in ops.SCHEMAS.items():
        op = getattr(torch.ops.survgen, name).default
        assert str(op._schema) == f"survgen::{name}{schema}"
        assert "CPU: registered at" in torch._C._dispatch_dump(f"survgen::{name}")
        assert "csrc/extension.cpp" in torch._C._dispatch_dump(f"survgen::{name}").split("CPU: registered at")[1]


def test_an_error_inside_the_compiled_kernel_is_a_runtime_error_not_bad_input():
    """ValueError is what the CLI reports as the user's bad input; a failing kernel is RuntimeError (the C++ side
    turns every other C++ exception into one too, csrc/extension.cpp's KernelFailure)."""
    x, weights = make_inputs(2, 3, 6, 2, 3, 3)
    w = weights
    args = (x.to(torch.int32), 3, w["norm_weight"], w["norm_bias"], w["qkv_weight"], w["qkv_bias"], w["out_weight"],
            w["out_bias"], 2, 1e-5)
    with pytest.raises(RuntimeError, match="cpu kernel.*must be float32 or float64"):
        ops.temporal_attention_op(*args)


def test_without_survgen_c_python_defines_the_ops_and_the_reference_runs_them():
    code = """
import sys
sys.modules["survgen._C"] = None  # an import of it fails, as where it was never built
import torch
from survgen.kernels import compiled, ops
from survgen.kernels.reference import temporal_attention_reference
assert compiled.CORE is None and not compiled.KERNELS
torch.set_default_dtype(torch.float64)
x, w = torch.randn(6, 4, 2, 3, requires_grad=True), torch.eye(4)
args = (x, 3, torch.ones(4), torch.zeros(4), torch.cat([w, w, w]), None, w, torch.zeros(4), 2, 1e-5)
assert torch.equal(ops.temporal_attention_op(*args), temporal_attention_reference(*args))
torch.library.opcheck(ops.temporal_attention_op, args)
print("reference")
"""
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert result.returncode == 0 and result.stdout.strip() == "reference", result.stderr[-3000:]
