"""The fused CPU kernel of survgen._C against the pure-PyTorch reference: forward and backward, awkward sizes.

Tolerances, as flash-attention's tests set them: float64 runs must agree with
the float64 reference to ~1e-10 (only summation order differs); a float32 run
may be at most twice as far from the float64 truth as the float32 reference
itself is (plus a floor for results that are exactly representable).
"""

from __future__ import annotations

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


def test_a_cpp_exception_from_the_compiled_kernel_is_a_kernel_failure_not_bad_input():
    """pybind11 turns std::length_error into ValueError, which the CLI would report as the user's bad input."""

    def throws(*args):
        raise ValueError("vector::reserve")

    with pytest.raises(RuntimeError, match=r"survgen\._C\.temporal_attention_forward_cpu failed .*vector::reserve"):
        ops.native_kernel(throws, "temporal_attention_forward_cpu")(torch.zeros(1))
    assert ops.native_kernel(lambda *args: args, "any")(1, 2) == (1, 2)
