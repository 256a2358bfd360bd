"""survgen.kernels: the temporal-attention reference against an explicit formula, its contract, the backend chooser
and the torch.library op."""

from __future__ import annotations

import math

import pytest
import torch

from survgen.kernels.backends import (BACKEND_NAMES, BackendUnavailableError, backend_report, select_backend, set_backend,
                                      use_backend)
from survgen.kernels.reference import sinusoidal_frame_encoding, temporal_attention_reference
from survgen.kernels.attention import temporal_attention
from survgen.kernels import ops


@pytest.fixture(autouse=True)
def _automatic_backend(monkeypatch):
    """Each test starts with no backend named anywhere."""
    monkeypatch.delenv("SURVGEN_ATTENTION", raising=False)
    monkeypatch.delenv("TRITON_INTERPRET", raising=False)
    set_backend(None)
    yield
    set_backend(None)


def make_inputs(b, f, c, heads, h, w, *, dtype=torch.float64, qkv_bias=True, seed=0):
    """x and weights with scales that make attention far from uniform and every term matter."""
    g = torch.Generator().manual_seed(seed)

    def rand(*shape, scale=1.0):
        return (torch.randn(*shape, generator=g, dtype=torch.float64) * scale).to(dtype)

    x = rand(b * f, c, h, w)
    weights = dict(
        norm_weight=1 + rand(c, scale=0.2),
        norm_bias=rand(c, scale=0.2),
        qkv_weight=rand(3 * c, c, scale=0.6),
        qkv_bias=rand(3 * c, scale=0.3) if qkv_bias else None,
        out_weight=rand(c, c, scale=0.3),
        out_bias=rand(c, scale=0.3),
    )
    return x, weights


def call(fn, x, f, weights, heads, eps=1e-5, **kw):
    w = weights
    return fn(x, f, w["norm_weight"], w["norm_bias"], w["qkv_weight"], w["qkv_bias"], w["out_weight"],
              w["out_bias"], heads, eps, **kw)


def explicit_temporal_attention(x, f, norm_weight, norm_bias, qkv_weight, qkv_bias, out_weight, out_bias, heads,
                                eps=1e-5):
    """The contract written out independently: per video, per spatial position, per head, with scalar PE."""
    bf, c, h, w = x.shape
    d = c // heads
    pe = torch.tensor(
        [[(math.sin if j % 2 == 0 else math.cos)(p / 10000 ** ((j - j % 2) / c)) for j in range(c)] for p in range(f)],
        dtype=x.dtype,
    )
    videos = []
    for video in range(bf // f):
        columns = []
        for i in range(h):
            row = []
            for j in range(w):
                seq = x[video * f:(video + 1) * f, :, i, j]  # (f, c): this position's frames
                hid = seq + pe
                mean = hid.mean(-1, keepdim=True)
                var = ((hid - mean) ** 2).mean(-1, keepdim=True)
                n = (hid - mean) / torch.sqrt(var + eps) * norm_weight + norm_bias
                head_outputs = []
                for head in range(heads):
                    q, k, v = (
                        n @ qkv_weight[part * c + head * d: part * c + (head + 1) * d].T
                        + (0 if qkv_bias is None else qkv_bias[part * c + head * d: part * c + (head + 1) * d])
                        for part in range(3)  # q, k, v rows of qkv_weight, in that order
                    )
                    logits = q @ k.T / math.sqrt(d)
                    probs = torch.exp(logits - logits.max(-1, keepdim=True).values)
                    head_outputs.append(probs / probs.sum(-1, keepdim=True) @ v)
                row.append(seq + torch.cat(head_outputs, dim=-1) @ out_weight.T + out_bias)
            columns.append(torch.stack(row, dim=-1))  # (f, c, w)
        videos.append(torch.stack(columns, dim=-2))  # (f, c, h, w)
    return torch.cat(videos, dim=0)


SHAPES = [  # (b, f, c, heads, h, w): awkward on purpose
    (1, 1, 24, 3, 3, 5),
    (3, 3, 40, 5, 3, 5),
    (1, 16, 24, 3, 3, 5),
    (3, 24, 40, 5, 1, 3),
    (2, 3, 7, 7, 1, 1),  # odd channels, head_dim 1
]


# ---------------------------------------------------------------- reference == explicit formula
@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: "b{}f{}c{}h{}_{}x{}".format(*s))
@pytest.mark.parametrize("qkv_bias", [True, False], ids=["qkv_bias", "no_qkv_bias"])
def test_reference_matches_explicit_formula_forward_and_backward(shape, qkv_bias):
    b, f, c, heads, h, w = shape
    x, weights = make_inputs(b, f, c, heads, h, w, qkv_bias=qkv_bias)
    leaves = [x] + [t for t in weights.values() if t is not None]
    for t in leaves:
        t.requires_grad_(True)
    grad_out = torch.randn(b * f, c, h, w, dtype=torch.float64, generator=torch.Generator().manual_seed(1))

    got = call(temporal_attention, x, f, weights, heads)
    want = call(explicit_temporal_attention, x, f, weights, heads)
    torch.testing.assert_close(got, want, rtol=1e-10, atol=1e-10)
    got_grads = torch.autograd.grad(got, leaves, grad_out)
    want_grads = torch.autograd.grad(want, leaves, grad_out)
    for got_g, want_g in zip(got_grads, want_grads):
        torch.testing.assert_close(got_g, want_g, rtol=1e-9, atol=1e-10)
    # Every weight influences the result (a gradient that is all zero would hide a dropped term).
    assert all(g.abs().sum() > 0 for g in got_grads[1:])


def test_float32_error_is_within_twice_the_formula_own_float32_error():
    x, weights = make_inputs(3, 16, 40, 5, 3, 5)
    exact = call(explicit_temporal_attention, x, 16, weights, 5)
    x32 = x.float()
    w32 = {k: v.float() for k, v in weights.items()}
    ref32 = call(temporal_attention, x32, 16, w32, 5)
    formula32 = call(explicit_temporal_attention, x32, 16, w32, 5)
    assert ref32.dtype == torch.float32
    ref_error = (ref32.double() - exact).abs().max()
    formula_error = (formula32.double() - exact).abs().max()
    assert ref_error <= 2 * formula_error + 1e-6


def test_gradcheck_float64():
    x, weights = make_inputs(2, 3, 6, 2, 1, 2)
    names = [k for k, v in weights.items() if v is not None]

    def fn(x, *ws):
        return call(temporal_attention, x, 3, dict(zip(names, ws)), 2)

    inputs = [x.requires_grad_()] + [weights[k].requires_grad_() for k in names]
    assert torch.autograd.gradcheck(fn, inputs)


# ---------------------------------------------------------------- properties of the contract
def test_zero_output_projection_is_exactly_identity():
    x, weights = make_inputs(3, 16, 24, 3, 3, 5, dtype=torch.float32)
    weights["out_weight"] = torch.zeros_like(weights["out_weight"])
    weights["out_bias"] = torch.zeros_like(weights["out_bias"])
    assert torch.equal(call(temporal_attention, x, 16, weights, 3), x)


def test_frame_position_encoding_matters():
    x, weights = make_inputs(1, 5, 24, 3, 3, 5)
    perm = torch.tensor([3, 0, 4, 1, 2])
    out = call(temporal_attention, x, 5, weights, 3)
    out_of_permuted = call(temporal_attention, x[perm], 5, weights, 3)
    # Without a position encoding, self-attention is permutation-equivariant over frames: this would be equal.
    assert not torch.allclose(out_of_permuted, out[perm], atol=1e-3)


def test_videos_and_positions_never_attend_to_each_other():
    f = 4
    x, weights = make_inputs(3, f, 24, 3, 3, 5)
    out = call(temporal_attention, x, f, weights, 3)
    perturbed = x.clone()
    perturbed[:f] += torch.randn_like(perturbed[:f])  # video 0 only
    perturbed[f:2 * f, :, 1, 2] += 1.0  # one spatial position of video 1
    out2 = call(temporal_attention, perturbed, f, weights, 3)
    assert not torch.allclose(out2[:f], out[:f])
    torch.testing.assert_close(out2[2 * f:], out[2 * f:], rtol=0, atol=1e-12)  # video 2 untouched
    changed = (out2[f:2 * f] - out[f:2 * f]).abs().amax(dim=(0, 1))  # (h, w) of video 1
    assert changed[1, 2] > 1e-3
    changed[1, 2] = 0
    assert changed.max() < 1e-12


def test_sinusoidal_frame_encoding_values_and_odd_channels():
    pe = sinusoidal_frame_encoding(16, 7, dtype=torch.float64)
    assert pe.shape == (16, 7) and pe.dtype == torch.float64
    torch.testing.assert_close(pe[0], torch.tensor([0.0, 1.0, 0.0, 1.0, 0.0, 1.0, 0.0], dtype=torch.float64))
    assert pe[5, 6].item() == pytest.approx(math.sin(5 / 10000 ** (6 / 7)))
    assert pe[5, 3].item() == pytest.approx(math.cos(5 / 10000 ** (2 / 7)))
    assert torch.equal(sinusoidal_frame_encoding(4, 8, dtype=torch.float32)[:, :], sinusoidal_frame_encoding(4, 8)[:4])
    with pytest.raises(ValueError, match="num_frames and channels must be >= 1"):
        sinusoidal_frame_encoding(0, 8)


# ---------------------------------------------------------------- bad arguments
def _bad(**changes):
    x, weights = make_inputs(2, 3, 24, 3, 3, 5, dtype=torch.float32)
    args = dict(x=x, num_frames=3, heads=3, **weights)
    args.update(changes)
    return args


@pytest.mark.parametrize(
    "changes, message",
    [
        (dict(x=torch.zeros(7, 24, 3, 5)), r"x.shape\[0\]=7 is not divisible by num_frames=3"),
        (dict(x=torch.zeros(6, 24, 15)), "x must be a 4-D tensor"),
        (dict(x=torch.zeros(6, 24, 3, 5, dtype=torch.int64)), "floating-point"),
        (dict(num_frames=0), "num_frames must be a positive int"),
        (dict(heads=5), r"heads=5 must divide the 24 channels; choose one of \[1, 2, 3, 4, 6, 8, 12, 24\]"),
        (dict(norm_bias=torch.zeros(23)), r"norm_bias must have shape \(24,\)"),
        (dict(qkv_weight=torch.zeros(24, 24)), r"qkv_weight must have shape \(72, 24\)"),
        (dict(qkv_bias=torch.zeros(24)), r"qkv_bias must have shape \(72,\)"),
        (dict(out_weight=torch.zeros(24, 72)), r"out_weight must have shape \(24, 24\)"),
        (dict(out_bias=torch.zeros(1, 24)), r"out_bias must have shape \(24,\)"),
        (dict(out_bias=torch.zeros(24, device="meta")), "out_bias is on meta but x is on cpu"),
    ],
)
def test_bad_arguments_raise_value_errors_naming_the_expectation(changes, message):
    args = _bad(**changes)
    with pytest.raises(ValueError, match=message):
        temporal_attention(**args)


# ---------------------------------------------------------------- backend choice
def _x():
    return torch.zeros(6, 24, 3, 5)


def test_automatic_choice_on_cpu_is_the_fused_kernel_and_report_lists_every_backend():
    report = backend_report(_x())  # a CPU tensor, also on a machine with a GPU
    assert list(report) == list(BACKEND_NAMES) == ["triton", "cuda", "cpu", "reference"]
    assert report["reference"] == [] and report["cpu"] == []  # CI builds survgen._C with its CPU kernel
    assert select_backend(_x()).name == "cpu"
    # Calls that record gradients: the reference, measured faster than the fused kernel's recompute on the CPU.
    assert select_backend(_x(), training=True).name == "reference"
    x, weights = make_inputs(2, 3, 24, 3, 3, 5, dtype=torch.float32)
    weights["out_weight"].requires_grad_(True)
    with torch.no_grad():
        inference = call(temporal_attention, x, 3, weights, 3)
    training = call(temporal_attention, x, 3, weights, 3)
    assert inference.grad_fn is None and training.grad_fn is not None
    assert "survgen_temporal_attention" not in type(training.grad_fn).__name__  # autograd through the reference
    named = call(temporal_attention, x, 3, weights, 3, backend="cpu")
    assert "survgen_temporal_attention" in type(named.grad_fn).__name__  # the fused op's registered autograd
    # Dtypes the CPU kernel does not compute fall back to the reference.
    assert "input is torch.bfloat16, the cpu kernel computes in float32 or float64" in backend_report(
        _x().bfloat16())["cpu"]
    assert select_backend(_x().bfloat16()).name == "reference"
    assert report["cuda"]


@pytest.mark.parametrize("name", ["cuda", "triton"])
def test_requesting_an_unavailable_backend_lists_every_backend_and_why(name):
    with pytest.raises(BackendUnavailableError) as info:
        select_backend(_x(), name)
    message = str(info.value)
    assert f"attention backend '{name}' (named by backend= argument) cannot run" in message
    for backend in BACKEND_NAMES:
        assert f"\n  {backend}: " in message
    assert "\n  reference: available" in message and "\n  cpu: available" in message
    assert info.value.requested == name
    assert set(info.value.reasons) == set(BACKEND_NAMES) and info.value.reasons[name]


def test_unknown_backend_name_is_a_value_error():
    with pytest.raises(ValueError, match="unknown attention backend 'fast'; choose one of triton, cuda, cpu, reference"):
        select_backend(_x(), "fast")
    with pytest.raises(ValueError, match="set_backend"):
        set_backend("fast")


def test_environment_variable_names_the_backend(monkeypatch):
    x, weights = make_inputs(2, 3, 24, 3, 3, 5, dtype=torch.float32)
    monkeypatch.setenv("SURVGEN_ATTENTION", "cuda")
    with pytest.raises(BackendUnavailableError, match="SURVGEN_ATTENTION=cuda"):
        call(temporal_attention, x, 3, weights, 3)
    monkeypatch.setenv("SURVGEN_ATTENTION", "reference")
    assert select_backend(x).name == "reference"
    monkeypatch.setenv("SURVGEN_ATTENTION", "bogus")
    with pytest.raises(ValueError, match="environment variable SURVGEN_ATTENTION: unknown attention backend 'bogus'"):
        select_backend(x)


def test_context_manager_and_set_backend_with_precedence(monkeypatch):
    x = _x()
    with use_backend("cuda"):
        with pytest.raises(BackendUnavailableError, match=r"set_backend\(\)/use_backend\(\)"):
            select_backend(x)
        assert select_backend(x, "reference").name == "reference"  # the argument beats the context
        with use_backend("reference"):
            assert select_backend(x).name == "reference"
        with pytest.raises(BackendUnavailableError):
            select_backend(x)  # the outer choice is restored
    assert select_backend(x).name == "cpu"

    monkeypatch.setenv("SURVGEN_ATTENTION", "cuda")
    set_backend("reference")  # code beats the environment
    assert select_backend(x).name == "reference"
    set_backend(None)
    with pytest.raises(BackendUnavailableError):
        select_backend(x)


def test_triton_interpreter_runs_only_when_named(monkeypatch):
    assert "input is on cpu and TRITON_INTERPRET is not set" in backend_report(_x())["triton"]
    monkeypatch.setenv("TRITON_INTERPRET", "1")
    assert backend_report(_x())["triton"] == [
        "input is on cpu: the Triton interpreter runs only when named (backend='triton')"
    ]
    assert select_backend(_x()).name == "cpu"  # never the (slow) interpreter by automatic choice


# ---------------------------------------------------------------- the torch.library op
@pytest.mark.parametrize("qkv_bias", [True, False], ids=["qkv_bias", "no_qkv_bias"])
def test_opcheck(qkv_bias):
    x, weights = make_inputs(2, 3, 6, 2, 1, 3, qkv_bias=qkv_bias)
    for t in [x, *weights.values()]:
        if t is not None:
            t.requires_grad_(True)
    w = weights
    args = (x, 3, w["norm_weight"], w["norm_bias"], w["qkv_weight"], w["qkv_bias"], w["out_weight"], w["out_bias"],
            2, 1e-5)
    torch.library.opcheck(torch.ops.survgen.temporal_attention.default, args)


def test_recomputed_reference_backward_equals_autograd_through_the_reference():
    x, weights = make_inputs(2, 4, 12, 3, 3, 5)
    leaves = [x] + [t for t in weights.values() if t is not None]
    for t in leaves:
        t.requires_grad_(True)
    want = call(temporal_attention_reference, x, 4, weights, 3)
    grad_out = torch.randn_like(want)
    w = weights
    got_grads = ops.reference_backward(grad_out, x.detach(), 4, w["norm_weight"], w["norm_bias"], w["qkv_weight"],
                                       w["qkv_bias"], w["out_weight"], w["out_bias"], 3, 1e-5)
    for got_g, want_g in zip(got_grads, torch.autograd.grad(want, leaves, grad_out), strict=True):
        torch.testing.assert_close(got_g, want_g, rtol=0, atol=0)
