"""survgen.kernels.triton_attention on a CPU-only machine: Triton's interpreter against the float64 reference.

TRITON_INTERPRET=1 has to be set before the module defining the @triton.jit
kernels is imported, and must not leak into the rest of the suite. So the
checks run in child processes, this file run as a script: once with
TRITON_INTERPRET=1, where the kernels execute (in numpy), and once without it,
where they are traced as torch.compile sees them and compiled for sm_80/sm_90
GPUs without running. Each test below asserts one check's verdict from its
child and prints the child's output when it failed.
"""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
import time
import traceback

import pytest
import torch

# (batch, frames, channels, heads, height, width, qkv_bias): f in {1, 3, 16, 24} (pads to 1, 4, 16, 32 rows
# per sequence), c not a power of two (24, 40, 7), head_dim 12, 10, 1, 24, 8, 5 (padded to 16 or 32), h·w odd.
# Small: the interpreter runs every program instance in Python.
CASES = [
    (1, 1, 24, 2, 3, 5, True),
    (3, 3, 40, 4, 1, 3, False),
    (1, 16, 7, 7, 3, 5, True),
    (1, 24, 24, 1, 1, 3, False),
    (1, 16, 40, 5, 1, 3, False),
    (3, 3, 7, 7, 3, 5, True),
    (1, 24, 40, 8, 1, 5, True),
]
EPS = 1e-5
RESULT_MARKER = "TRITON-CHECKS:"


def case_id(case) -> str:
    b, f, c, heads, h, w, bias = case
    return f"b{b}-f{f}-c{c}-heads{heads}-{h}x{w}-{'bias' if bias else 'nobias'}"


def make_inputs(case, seed=0):
    """float64 x, the op's weights (qkv_bias None when the case has none) and a grad_out."""
    b, f, c, heads, h, w, bias = case
    g = torch.Generator().manual_seed(seed)

    def rand(*shape, scale=1.0):
        return torch.randn(*shape, generator=g, dtype=torch.float64) * scale

    # Scales that make attention far from uniform and every term matter.
    x = rand(b * f, c, h, w)
    weights = [1 + rand(c, scale=0.2), rand(c, scale=0.2), rand(3 * c, c, scale=0.6),
               rand(3 * c, scale=0.3) if bias else None, rand(c, c, scale=0.3), rand(c, scale=0.3)]
    return x, weights, rand(b * f, c, h, w)


def output_and_grads(fn, case, dtype):
    """fn's output and the gradients of x and every weight for the case's grad_out, all as float64."""
    _, f, _, heads, *_ = case
    x, weights, grad_out = make_inputs(case)
    x = x.to(dtype).requires_grad_()
    weights = [None if t is None else t.to(dtype).requires_grad_() for t in weights]
    out = fn(x, f, *weights, heads, EPS)
    grads = torch.autograd.grad(out, [x, *(t for t in weights if t is not None)], grad_out.to(dtype))
    return [out.detach().double(), *(g.double() for g in grads)]


def max_error(a, b) -> float:
    return (a - b).abs().max().item()


def assert_as_accurate_as_float32(name, got, ref64, float32_error):
    """As flash-attention's tests: `got` may be at most twice as far from the float64 result as a float32
    computation of it is (`float32_error`), plus twice float32's rounding error at the result's magnitude
    (the `+ 0.3 - 0.3` trick), a floor for entries where the float32 computation happens to be exact."""
    rounding = max_error(ref64.float() + 0.3 - 0.3, ref64.float())
    error = max_error(got, ref64)
    bound = 2 * float32_error + 2 * rounding
    assert error <= bound, f"{name}: max error {error:.3g} vs float64, bound {bound:.3g}"


# ---------------------------------------------------------------- checks run in the children
# Gradients get twice the forward's factor: through a peaked softmax they amplify a 1-ulp difference in the
# LayerNorm output about 100-fold, so two correct float32 computations (torch's layer_norm, the kernel's) differ
# by more than either's distance to float64 suggests. Each backward kernel alone is held to the forward's
# factor on exactly rounded inputs (`check_backward_kernels`).
GRADIENT_FACTOR = 2


def check_case(case):
    """Forward and backward (the fused Triton backward) through `temporal_attention(..., backend="triton")`, in
    float32, against float64, bounded by the float32 reference's own error."""
    from survgen.kernels.attention import temporal_attention
    from survgen.kernels.reference import temporal_attention_reference

    got = output_and_grads(lambda *a: temporal_attention(*a, backend="triton"), case, torch.float32)
    ref32 = output_and_grads(temporal_attention_reference, case, torch.float32)
    ref64 = output_and_grads(temporal_attention_reference, case, torch.float64)
    names = ["out", "grad x", "grad norm_weight", "grad norm_bias", "grad qkv_weight",
             *(["grad qkv_bias"] if case[-1] else []), "grad out_weight", "grad out_bias"]
    assert len(got) == len(names)
    for i, (name, mine, float32, float64) in enumerate(zip(names, got, ref32, ref64)):
        factor = 1 if i == 0 else GRADIENT_FACTOR
        assert_as_accurate_as_float32(name, mine, float64, factor * max_error(float32, float64))


def token_rows(t, f):
    """(b·f, c, h, w) -> token rows (b·h·w·f, c), as the Triton launchers order them."""
    bf, c, h, w = t.shape
    return t.reshape(bf // f, f, c, h, w).permute(0, 3, 4, 1, 2).reshape(-1, c).contiguous()


def check_backward_kernels(case):
    """The attention and LayerNorm backward kernels on float32-rounded float64 inputs: each at most about twice
    as far from float64 as autograd's float32 computation of the same piece."""
    import math

    from survgen.kernels import triton_attention as kernels
    from survgen.kernels.reference import sinusoidal_frame_encoding

    b, f, c, heads, h, w, _ = case
    x, (norm_weight, norm_bias, *_), grad_out = make_inputs(case)
    g = torch.Generator().manual_seed(1)
    qkv, d_attended = torch.randn(b * h * w * f, 3 * c, generator=g, dtype=torch.float64), token_rows(grad_out, f)

    def attention(qkv):
        q, k, v = qkv.reshape(-1, f, 3, heads, c // heads).permute(2, 0, 3, 1, 4).unbind(0)
        attended = ((q @ k.transpose(-1, -2)) / math.sqrt(c // heads)).softmax(-1) @ v
        return attended.transpose(1, 2).reshape(-1, c)

    def norm_and_residual(x, norm_weight, norm_bias):
        hidden = token_rows(x, f).reshape(-1, f, c) + sinusoidal_frame_encoding(f, c, dtype=x.dtype)
        return torch.nn.functional.layer_norm(hidden, (c,), norm_weight, norm_bias, EPS).reshape(-1, c)

    def grads(fn, inputs, grad):
        inputs = [t.detach().requires_grad_() for t in inputs]
        return torch.autograd.grad(fn(*inputs), inputs, grad)

    d_normed = torch.randn(b * h * w * f, c, generator=g, dtype=torch.float64)
    pieces = {
        "attention backward": (kernels._frame_attention_backward(qkv.float(), d_attended.float(), f, heads),
                               grads(attention, [qkv.float()], d_attended.float())[0],
                               grads(attention, [qkv], d_attended)[0]),
    }
    mine = kernels._norm_backward(x.float(), d_normed.float(), grad_out.float(), f, norm_weight.float(), EPS)
    ref32 = grads(norm_and_residual, [x.float(), norm_weight.float(), norm_bias.float()], d_normed.float())
    ref64 = grads(norm_and_residual, [x, norm_weight, norm_bias], d_normed)
    for name, got, r32, r64, residual in zip(("grad x", "grad norm_weight", "grad norm_bias"), mine, ref32, ref64,
                                             (grad_out, 0, 0)):
        pieces[f"LayerNorm backward: {name}"] = (got, r32 + (residual.float() if name == "grad x" else 0),
                                                  r64 + residual)
    for name, (got, r32, r64) in pieces.items():
        assert_as_accurate_as_float32(name, got.double(), r64, max_error(r32.double(), r64))


def check_automatic_choice_skips_triton():
    """Even with TRITON_INTERPRET=1 set, automatic choice never runs the (slow) interpreter on CPU tensors."""
    from survgen.kernels.backends import select_backend

    assert os.environ.get("TRITON_INTERPRET") == "1"
    for dtype in (torch.float32, torch.float64):
        chosen = select_backend(torch.zeros(2, 8, 3, 3, dtype=dtype)).name
        assert chosen != "triton", f"automatic choice picked triton for a CPU {dtype} tensor"


def check_named_backend_runs_the_op():
    """backend="triton" and use_backend("triton") run on CPU under the interpreter, through the registered op;
    a channels_last x gives the same result."""
    import survgen.kernels.triton_attention  # noqa: F401  (registers torch.ops.survgen.temporal_attention_triton)
    from survgen.kernels.backends import select_backend, use_backend
    from survgen.kernels.attention import temporal_attention

    case = CASES[1]
    _, f, _, heads, *_ = case
    x, weights, _ = make_inputs(case)
    x, weights = x.float(), [None if t is None else t.float() for t in weights]
    assert select_backend(x, "triton").name == "triton"
    direct = torch.ops.survgen.temporal_attention_triton(x, f, *weights, heads, EPS)
    assert torch.equal(temporal_attention(x, f, *weights, heads, EPS, backend="triton"), direct)
    with use_backend("triton"):
        assert torch.equal(temporal_attention(x, f, *weights, heads, EPS), direct)
    channels_last = x.to(memory_format=torch.channels_last)
    assert torch.equal(temporal_attention(channels_last, f, *weights, heads, EPS, backend="triton"), direct)


def check_layouts_are_read_in_place():
    """A channels_last x is read and written in its own layout (the output and grad x stay channels_last), with
    the same values and gradients as NCHW; any other strided x (a channel slice) too, through a copy."""
    from survgen.kernels.attention import temporal_attention

    case = (2, 3, 8, 2, 3, 5, True)
    _, f, _, heads, *_ = case
    x, weights, grad_out = make_inputs(case)
    weights = [t.float() for t in weights]

    def run(x, grad_out):
        x = x.detach().requires_grad_()
        out = temporal_attention(x, f, *weights, heads, EPS, backend="triton")
        (grad_x,) = torch.autograd.grad(out, [x], grad_out)
        return out, grad_x

    out, grad_x = run(x.float(), grad_out.float())
    last = torch.channels_last
    out_cl, grad_x_cl = run(x.float().to(memory_format=last), grad_out.float().to(memory_format=last))
    assert out_cl.is_contiguous(memory_format=last) and grad_x_cl.is_contiguous(memory_format=last)
    assert torch.equal(out_cl, out) and torch.equal(grad_x_cl, grad_x)
    wide = torch.cat([x.float(), x.float()], dim=1)[:, ::2]  # every other channel: neither layout
    assert not wide.is_contiguous() and torch.equal(run(wide, grad_out.float())[0], run(wide.contiguous(),
                                                                                        grad_out.float())[0])


def check_opcheck():
    """torch.library.opcheck: schema, autograd registration and the fake kernel.

    Not the aot_dispatch tests: under AOTDispatcher triton_op runs its body on fake
    tensors, where wrap_triton would trace the kernels, but the interpreter's kernels
    cannot be traced (no JIT metadata) and cannot run on data-less tensors. The
    traced path is checked without the interpreter by `check_traceable`.
    """
    import survgen.kernels.triton_attention  # noqa: F401  (registers the op)

    case = (1, 3, 8, 2, 1, 3, True)
    _, f, _, heads, *_ = case
    x, weights, _ = make_inputs(case)
    tensors = [x.float().requires_grad_(), *(t.float().requires_grad_() for t in weights)]
    args = (tensors[0], f, *tensors[1:], heads, EPS)
    for test in ("test_schema", "test_autograd_registration", "test_faketensor"):
        torch.library.opcheck(torch.ops.survgen.temporal_attention_triton.default, args, test_utils=test)


def check_traceable():
    """What torch.compile sees: tracing the ops functionally gives their kernels and GEMMs, not one node each.

    Forward: three kernels and two GEMMs. Backward: the forward's recompute (two kernels, one GEMM), the
    gradient's transpose to token rows, attention's and LayerNorm's backward kernels, and four GEMMs.
    Run without the interpreter: JIT kernels are traced (never launched, so no GPU is needed) on
    symbolic shapes, through the FunctionalTensorMode path that triton_op decomposes under.
    """
    from torch._subclasses.functional_tensor import dispatch_functionalize
    from torch.fx.experimental.proxy_tensor import make_fx

    from survgen.kernels.triton_attention import temporal_attention_triton, temporal_attention_triton_backward

    assert os.environ.get("TRITON_INTERPRET") is None
    case = CASES[0]
    _, f, _, heads, *_ = case
    x, weights, grad_out = make_inputs(case)

    def forward(x, *weights):
        return temporal_attention_triton(x, f, *weights, heads, EPS)

    def backward(grad_out, x, *weights):
        return temporal_attention_triton_backward(grad_out, x, f, *weights, heads, EPS)

    inputs = (x.float(), *(t.float() for t in weights))
    for fn, args, expected in ((forward, inputs, (3, 2)), (backward, (grad_out.float(), *inputs), (5, 5))):
        graph = make_fx(dispatch_functionalize(fn), tracing_mode="symbolic")(*args)
        targets = [str(node.target) for node in graph.graph.nodes if node.op == "call_function"]
        kernels = [t for t in targets if "triton_kernel_wrapper" in t]
        gemms = [t for t in targets if t in ("aten.addmm.default", "aten.mm.default")]
        assert (len(kernels), len(gemms)) == expected, f"{fn.__name__}: traced graph calls {targets}"


def record_launches(case, dtype, device="meta"):
    """The launches (kernel, grid, args, kwargs) the forward's and the backward's launchers make for `case`,
    none of them run.

    torch.library.wrap_triton, which the launchers call for every kernel, is swapped for a recorder; on meta
    tensors the torch ops in between cost nothing either, so shapes can be as large as real ones.
    """
    from survgen.kernels import triton_attention

    b, f, c, heads, h, w, bias = case
    launches = []

    class Recorder:
        def __init__(self, kernel):
            self.kernel = kernel

        def __getitem__(self, grid):
            return lambda *args, **kwargs: launches.append((self.kernel, grid, args, kwargs))

    x = torch.empty(b * f, c, h, w, dtype=dtype, device=device)
    weights = [torch.empty(shape, dtype=dtype, device=device) if shape else None
               for shape in ((c,), (c,), (3 * c, c), (3 * c,) if bias else None, (c, c), (c,))]
    original, torch.library.wrap_triton = torch.library.wrap_triton, Recorder
    try:
        triton_attention._launch(x, f, *weights, heads, EPS)
        triton_attention._launch_backward(torch.empty_like(x), x, f, *weights, heads, EPS)
    finally:
        torch.library.wrap_triton = original
    return launches


def check_grid_within_cuda_limits():
    """For a 256x256 latent (131,072 sequences), forward and backward put big axes on grid axis 0: axes 1-2 stay within 65,535."""
    launches = record_launches((2, 16, 320, 8, 256, 256, True), torch.bfloat16)
    assert len(launches) == 3 + 5
    for kernel, grid, _, _ in launches:
        assert grid[0] < 2**31 and all(size <= 65_535 for size in grid[1:]), f"{kernel}: grid {grid}"
    assert max(grid[0] for _, grid, _, _ in launches) > 65_535, "the shape should need more than 65,535 programs"


def check_compiles_for_gpus():
    """The kernels, with the launch parameters the op picks, compile to cubin for sm_80 and sm_90 (no GPU needed:
    Triton's bundled ptxas). Catches what the interpreter does not model: tl.dot's minimum sizes and dtype rules,
    layouts, anything the GPU compiler rejects. fp32 (IEEE dots) and bf16, head_dim 40 and 160."""
    import triton
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource

    triton_types = {torch.float32: "fp32", torch.bfloat16: "bf16", torch.float16: "fp16"}
    launches = [*record_launches((2, 16, 320, 8, 8, 8, True), torch.float32),
                *record_launches((1, 24, 1280, 8, 4, 4, False), torch.bfloat16)]
    for kernel, _, args, kwargs in launches:
        values = {**dict(zip(kernel.arg_names, args)), **kwargs}
        signature, constexprs = {}, {}
        for param in kernel.params:
            value = values.pop(param.name)
            if param.is_constexpr:
                signature[param.name], constexprs[param.name] = "constexpr", value
            elif isinstance(value, torch.Tensor):
                signature[param.name] = "*" + triton_types[value.dtype]
            else:
                signature[param.name] = "fp32" if isinstance(value, float) else "i32"
        for capability in (80, 90):
            # What is left in `values` are launch options (num_warps).
            triton.compile(ASTSource(kernel, signature, constexprs), target=GPUTarget("cuda", capability, 32),
                           options=values)


CHECKS = {
    **{f"forward-backward[{case_id(case)}]": ("interpreter", check_case, (case,)) for case in CASES},
    **{f"backward-kernels[{case_id(case)}]": ("interpreter", check_backward_kernels, (case,)) for case in CASES},
    "automatic-choice-skips-triton": ("interpreter", check_automatic_choice_skips_triton, ()),
    "named-backend-runs-the-op": ("interpreter", check_named_backend_runs_the_op, ()),
    "layouts-are-read-in-place": ("interpreter", check_layouts_are_read_in_place, ()),
    "opcheck": ("interpreter", check_opcheck, ()),
    "traceable": ("compiled", check_traceable, ()),
    "grid-within-cuda-limits": ("compiled", check_grid_within_cuda_limits, ()),
    "compiles-for-sm80-sm90": ("compiled", check_compiles_for_gpus, ()),
}


def run_checks(mode: str) -> None:
    """Child process: run this mode's checks, print one line `RESULT_MARKER {name: null | traceback}`."""
    results = {}
    for name, (check_mode, check, args) in CHECKS.items():
        if check_mode != mode:
            continue
        start = time.perf_counter()
        try:
            check(*args)
            results[name] = None
        except Exception:
            results[name] = traceback.format_exc()
        verdict = "ok" if results[name] is None else "FAILED"
        print(f"{name}: {verdict} ({time.perf_counter() - start:.1f} s)", flush=True)
    print(RESULT_MARKER, json.dumps(results), flush=True)


# ---------------------------------------------------------------- the tests (parent process)
@pytest.fixture(scope="module")
def child_results():
    """mode -> (the child's combined output, its per-check results); each child runs once, when first needed."""
    runs = {}

    def results(mode):
        if mode not in runs:
            env = {k: v for k, v in os.environ.items() if k not in ("TRITON_INTERPRET", "SURVGEN_ATTENTION")}
            if mode == "interpreter":
                env["TRITON_INTERPRET"] = "1"
            proc = subprocess.run([sys.executable, __file__, mode], env=env, capture_output=True, text=True,
                                  timeout=600)
            output = f"--- child ({mode}) exit {proc.returncode}\n{proc.stdout}\n--- stderr\n{proc.stderr}"
            lines = [line for line in proc.stdout.splitlines() if line.startswith(RESULT_MARKER)]
            runs[mode] = (output, json.loads(lines[-1][len(RESULT_MARKER):]) if lines else {})
        return runs[mode]

    return results


@pytest.mark.skipif(importlib.util.find_spec("triton") is None, reason="triton is not installed")
@pytest.mark.parametrize("name", list(CHECKS))
def test_triton_attention(child_results, name):
    mode = CHECKS[name][0]
    output, results = child_results(mode)
    if name not in results:
        pytest.fail(f"the {mode} child did not report {name!r}:\n{output}")
    if results[name] is not None:
        pytest.fail(f"{name}:\n{results[name]}\n{output}")


if __name__ == "__main__":
    run_checks(sys.argv[1])
