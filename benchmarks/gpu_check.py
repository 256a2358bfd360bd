"""survgen's GPU check: what benchmarks/gpu_check.sh runs once survgen._C is built.

In order, each step a list of checks:
1. the GPU tests, `pytest -m gpu tests/test_kernels_gpu.py`, as one check;
2. each temporal-attention backend expected on the device can run there;
3. each against the float64 reference at every level, in every accuracy dtype: max error against the bound of
   tests/test_kernels_gpu.py (about twice the reference's own error in that dtype);
4. timings, median of several runs: the eager reference, each fused backend and the level's GEMM floor (the Q/K/V
   and output projections' GEMMs alone), forward and forward + backward, with the speed-up over the reference and
   the multiple of the floor, all from this run;
5. the video U-Net: one guided sampling step (2 videos: the conditional and unconditional branch) and one training
   step (1 video, AdamW), frozen spatial layers stored in the U-Net dtype and run under autocast, as stage 2 trains.

gpu_check.json and gpu_check.md (device, versions, command, every check and timing) go to $OUT when set, else
benchmarks/results/gpu/. The last line printed is `gpu_check: N checks, M failed`; the exit status is 1 when M > 0.

SURVGEN_GPU_CHECK_DRY=1 runs the same steps on the CPU (`Plan`: Triton's interpreter, the cpu kernel and the
reference, float32, small shapes, the tiny U-Net) in under a minute and writes to $OUT or a temporary folder: CI
runs it so that this script cannot rot between the rare runs on a GPU.
"""

from __future__ import annotations

import datetime
import functools
import json
import math
import os
import platform
import shlex
import statistics
import subprocess
import sys
import tempfile
import time
import traceback
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
import torch.nn.functional as F

from survgen.kernels.backends import BACKENDS, describe_choice
from survgen.kernels import compiled
from survgen.kernels.attention import temporal_attention
from test_bench_kernels import LEVELS, forward_flops  # this script's folder

REPO = Path(__file__).resolve().parents[1]
# The accuracy checks are the GPU tests' own (tests/test_kernels_gpu.py).
sys.path.insert(0, str(REPO / "tests"))
from test_kernels_gpu import device_inputs, errors_and_bounds  # noqa: E402
from test_kernels_triton import EPS  # noqa: E402

DRY_ENV = "SURVGEN_GPU_CHECK_DRY"
GEMM_FLOOR = "GEMM floor"
DIRECTIONS = ("forward", "forward+backward")


# ---------------------------------------------------------------- what one run does
@dataclass(frozen=True)
class Plan:
    """Devices, backends, shapes, dtypes and repeats of one run: the real one on a GPU or the dry one on the CPU.
    Every step reads them from here, so that the dry run goes through the same code."""

    dry: bool
    device: str
    backends: tuple[str, ...]  # expected to run here; the reference first, the timings' baseline
    levels: tuple[tuple, ...]  # (name, videos, frames, channels, height, width, heads), as test_bench_kernels.LEVELS
    accuracy_dtypes: tuple[torch.dtype, ...]
    timing_dtype: torch.dtype
    warmup: int
    repeats: int
    unet_preset: str
    latent_size: int
    unet_dtype: torch.dtype  # the frozen U-Net's storage and autocast's dtype (float32: no autocast)
    unet_repeats: int
    tests_timeout_s: int


def make_plan(dry: bool) -> Plan:
    """The sd15 paper levels in fp32 and bf16 on the GPU; or Triton's interpreter (fp32 only) and the CPU kernel at
    shapes the interpreter runs in seconds."""
    if dry:
        return Plan(dry=True, device="cpu", backends=("reference", "triton", "cpu"),
                    levels=(("dry-32@4x4", 2, 4, 32, 4, 4, 4), ("dry-f7-48@3x5", 1, 7, 48, 3, 5, 4)),
                    accuracy_dtypes=(torch.float32,), timing_dtype=torch.float32, warmup=1, repeats=1,
                    unet_preset="tiny", latent_size=8, unet_dtype=torch.float32, unet_repeats=1, tests_timeout_s=120)
    return Plan(dry=False, device="cuda", backends=("reference", "triton", "cuda"),
                levels=tuple(level for level in LEVELS if level[0].startswith("sd15")),
                accuracy_dtypes=(torch.float32, torch.bfloat16), timing_dtype=torch.bfloat16, warmup=3, repeats=10,
                unet_preset="sd15", latent_size=32, unet_dtype=torch.bfloat16, unet_repeats=3, tests_timeout_s=300)


def case_of(level) -> tuple:
    """A LEVELS entry as a tests/test_kernels_gpu.py case (no Q/K/V bias, as in the model)."""
    _, videos, frames, channels, height, width, heads = level
    return (videos, frames, channels, heads, height, width, False)


def dtype_name(dtype: torch.dtype) -> str:
    """float32, bfloat16, ..."""
    return str(dtype).removeprefix("torch.")


def to_json(value, indent: int | None = None) -> str:
    """JSON with torch dtypes by name (the plan holds some)."""

    def by_name(dtype):
        if not isinstance(dtype, torch.dtype):
            raise TypeError(f"{type(dtype).__name__} is not JSON serializable")
        return dtype_name(dtype)

    return json.dumps(value, indent=indent, default=by_name)


# ---------------------------------------------------------------- the report
@dataclass
class Check:
    """One check's outcome; `data` holds its numbers (and an exception's traceback)."""

    group: str
    name: str
    ok: bool
    detail: str
    data: dict = field(default_factory=dict)
    seconds: float = 0.0


class Report:
    """The checks run so far, each printed as it finishes."""

    def __init__(self):
        self.checks: list[Check] = []

    def run(self, group: str, name: str, check) -> Check:
        """Run `check() -> (ok, detail, data)` as one check; an exception fails it, with its reason."""
        start = time.perf_counter()
        try:
            ok, detail, data = check()
        except Exception as error:  # a check that cannot run has failed; the others still run
            reason = " ".join(f"{type(error).__name__}: {error}".split())  # on one line, for the tables
            ok, detail, data = False, reason, {"traceback": traceback.format_exc()}
        result = Check(group, name, ok, detail, data, round(time.perf_counter() - start, 2))
        self.checks.append(result)
        line = f"{'ok' if ok else 'FAILED':<6} {group}: {name}" + (f": {detail}" if detail else "")
        print(f"{line} ({result.seconds:.1f} s)", flush=True)
        return result

    @property
    def failed(self) -> int:
        """How many checks failed."""
        return sum(not c.ok for c in self.checks)


# ---------------------------------------------------------------- 1. the GPU tests
def gpu_tests(plan: Plan):
    """`pytest -m gpu tests/test_kernels_gpu.py` in a child process; passes when pytest does (all skipped in a dry
    run, where there is no CUDA device)."""
    command = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-m", "gpu", "tests/test_kernels_gpu.py"]
    proc = subprocess.run(command, cwd=REPO, capture_output=True, text=True, timeout=plan.tests_timeout_s)
    lines = proc.stdout.strip().splitlines()
    summary = lines[-1] if lines else f"pytest exited {proc.returncode} with no output"
    return proc.returncode == 0, summary, {"command": shlex.join(["python", *command[1:]]),
                                           "output_tail": (proc.stdout + proc.stderr)[-6000:]}


# ---------------------------------------------------------------- 2. the backends
def backend_check(backend: str, plan: Plan):
    """Whether `backend`, named, can run the plan's activations (every accuracy dtype) on its device."""
    by_name = {b.name: b for b in BACKENDS}
    reasons = []
    for dtype in plan.accuracy_dtypes:
        probe = torch.empty(1, 1, 1, 1, device=plan.device, dtype=dtype)
        reasons += [f"{dtype_name(dtype)}: {r}" for r in by_name[backend].not_supported_reasons(probe, True)]
    runs = f"runs {plan.device} {', '.join(dtype_name(d) for d in plan.accuracy_dtypes)}"
    return not reasons, "; ".join(reasons) or runs, {"reasons": reasons}


# ---------------------------------------------------------------- 3. accuracy
def fraction_of_bound(error: float, bound: float) -> float:
    """error / bound, infinite when over the bound (or nan)."""
    if error <= bound:
        return error / bound if bound > 0 else 0.0
    return math.inf


def accuracy_check(backend: str, level, dtype: torch.dtype, plan: Plan):
    """Output and gradients of `backend` against float64 at `level`, each within the GPU tests' bound."""
    results = errors_and_bounds(backend, case_of(level), dtype, plan.device)
    worst = max(results, key=lambda name: fraction_of_bound(*results[name]))
    error, bound = results[worst]
    detail = (f"out {results['out'][0]:.3g} (bound {results['out'][1]:.3g}); "
              f"worst {worst} {error:.3g} (bound {bound:.3g})")
    data = {"level": level[0], "dtype": dtype_name(dtype), "backend": backend, "worst": worst,
            "worst_fraction_of_bound": fraction_of_bound(error, bound),
            "errors": {name: {"max_error": e, "bound": b} for name, (e, b) in results.items()}}
    return all(e <= b for e, b in results.values()), detail, data


# ---------------------------------------------------------------- 4. timings
def median_ms(run, device: str, warmup: int, repeats: int) -> float:
    """Median milliseconds of `run()` after `warmup` calls: CUDA events on a GPU, the wall clock on the CPU."""
    for _ in range(warmup):
        run()
    times = []
    for _ in range(repeats):
        if device == "cuda":
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            run()
            end.record()
            end.synchronize()
            times.append(start.elapsed_time(end))
        else:
            start_s = time.perf_counter()
            run()
            times.append((time.perf_counter() - start_s) * 1e3)
    return statistics.median(times)


def attention_step(backend: str, case, direction: str, plan: Plan):
    """One call of the op on `backend` (with the gradients of x and every weight for forward+backward)."""
    _, f, _, heads, *_ = case
    x, weights, grad_out = device_inputs(case, plan.timing_dtype, plan.device)
    backward = direction == "forward+backward"
    leaves = [t.requires_grad_(backward) for t in (x, *weights) if t is not None]

    def run():
        out = temporal_attention(x, f, *weights, heads, EPS, backend=backend)
        if backward:
            torch.autograd.grad(out, leaves, grad_out)

    return run


def gemm_floor_step(case, direction: str, plan: Plan):
    """The GEMMs any implementation of the level runs: Q/K/V and output projections forward, and for backward the
    gradients of their inputs and weights (four more). The fused backward also recomputes the Q/K/V one."""
    b, f, c, _, h, w, _ = case
    tokens = b * f * h * w

    def rand(*shape):
        return torch.randn(*shape, device=plan.device, dtype=plan.timing_dtype)

    normed, attended, grad_tokens, d_qkv = rand(tokens, c), rand(tokens, c), rand(tokens, c), rand(tokens, 3 * c)
    qkv_weight, out_weight = rand(3 * c, c), rand(c, c)

    def run():
        torch.mm(normed, qkv_weight.t())
        torch.mm(attended, out_weight.t())
        if direction == "forward+backward":
            torch.mm(grad_tokens.t(), attended)
            torch.mm(grad_tokens, out_weight)
            torch.mm(d_qkv.t(), normed)
            torch.mm(d_qkv, qkv_weight)

    return run


def ratio(numerator: float | None, denominator: float | None) -> float | None:
    """numerator / denominator, None when either is missing (its timing failed)."""
    return numerator / denominator if numerator and denominator else None


def timing_check(what: str, level, direction: str, plan: Plan, times: dict):
    """Median time of `what` (a backend or the GEMM floor) at `level`, recorded in `times`; against the eager
    reference and the floor timed before it at the same level and direction."""
    case = case_of(level)
    run = gemm_floor_step(case, direction, plan) if what == GEMM_FLOOR else attention_step(what, case, direction, plan)
    ms = times[what] = median_ms(run, plan.device, plan.warmup, plan.repeats)
    # Backward: twice the forward's products (gradients of inputs and of weights), as test_bench_kernels counts.
    flops = forward_flops(*level[1:6]) * (1 if direction == "forward" else 3)
    data = {"level": level[0], "direction": direction, "backend": what, "dtype": dtype_name(plan.timing_dtype),
            "ms": ms, "speedup_vs_reference": ratio(times.get("reference"), ms),
            "x_gemm_floor": ratio(ms, times.get(GEMM_FLOOR)), "tflops": flops / ms / 1e9}
    return True, "", data


# ---------------------------------------------------------------- 5. the video U-Net
@functools.cache
def video_unet(preset: str, device: str, frozen_dtype: torch.dtype):
    """The `preset` video U-Net with random weights (as benchmarks/test_bench_video_unet.py's fixtures), its frozen
    spatial U-Net stored in `frozen_dtype` as stage 2 stores it under mixed precision; built once for both checks."""
    from survgen.models.video_unet import TEMPORAL_PRESETS, VideoUNet

    torch.manual_seed(0)
    with torch.device(device):  # initialised where it runs: sd15's 860M spatial weights take seconds on a CPU
        if preset == "tiny":
            from survgen.models.spatial import build_tiny

            unet = build_tiny(seed=0).unet
        else:
            from diffusers import UNet2DConditionModel

            from survgen.models.spatial import SD15_UNET_CONFIG

            unet = UNet2DConditionModel(**SD15_UNET_CONFIG)
        model = VideoUNet(unet, TEMPORAL_PRESETS[preset])
    model.unet.to(frozen_dtype)
    return model


def unet_inputs(model, plan: Plan) -> list[torch.Tensor]:
    """test_bench_video_unet's inputs: latents, timesteps, text and class labels of 2 videos x 16 frames."""
    from test_bench_video_unet import _video_inputs

    return [v.to(plan.device) for v in _video_inputs(model, plan.latent_size)]


def autocast(plan: Plan):
    """Autocast to the plan's U-Net dtype (off for float32)."""
    return torch.autocast(plan.device, dtype=plan.unet_dtype, enabled=plan.unet_dtype != torch.float32)


def memory_data(plan: Plan) -> dict:
    """Peak GPU memory since the last reset, on a GPU."""
    return {"peak_memory_gb": torch.cuda.max_memory_allocated() / 2**30} if plan.device == "cuda" else {}


def unet_forward_check(plan: Plan):
    """One guided sampling step: the forward of 2 videos (conditional and unconditional), finite."""
    model = video_unet(plan.unet_preset, plan.device, plan.unet_dtype).eval()
    inputs = unet_inputs(model, plan)
    finite_outputs = []

    def run():
        with torch.no_grad(), autocast(plan):
            finite_outputs.append(torch.isfinite(model(*inputs)).all())

    if plan.device == "cuda":
        torch.cuda.reset_peak_memory_stats()
    ms = median_ms(run, plan.device, 1, plan.unet_repeats)
    finite = bool(torch.stack(finite_outputs).all())
    backend = describe_choice(torch.empty(1, 1, 1, 1, device=plan.device), training=False)
    return finite, "" if finite else "non-finite output", {"ms": ms, "attention": backend, **memory_data(plan)}


def unet_training_check(plan: Plan):
    """One training step of 1 video: forward under autocast, MSE against a random target (stage 2's loss, without
    the noising), backward, AdamW; the loss finite."""
    model = video_unet(plan.unet_preset, plan.device, plan.unet_dtype).train()
    latents, timesteps, text, labels = [v[:1] for v in unet_inputs(model, plan)]
    target = torch.randn_like(latents)
    optimizer = torch.optim.AdamW(list(model.trainable_parameters().values()), lr=1e-5)
    losses = []

    def run():
        with autocast(plan):
            prediction = model(latents, timesteps, text, labels)
        loss = F.mse_loss(prediction.float(), target)
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        losses.append(loss.detach())

    if plan.device == "cuda":
        torch.cuda.reset_peak_memory_stats()
    ms = median_ms(run, plan.device, 1, plan.unet_repeats)
    finite = bool(torch.isfinite(torch.stack(losses)).all())
    backend = describe_choice(torch.empty(1, 1, 1, 1, device=plan.device), training=True)
    return finite, "" if finite else "non-finite loss", {"ms": ms, "attention": backend, **memory_data(plan)}


# ---------------------------------------------------------------- the run
def run_checks(plan: Plan, report: Report) -> None:
    """Every step in order; the later ones only for what the earlier ones found able to run."""
    if not plan.dry and not torch.cuda.is_available():
        report.run("device", "CUDA device", lambda: (
            False, f"none (torch {torch.__version__}, CUDA {torch.version.cuda}); on a CPU set {DRY_ENV}=1", {}))
        return
    report.run("tests", "pytest -m gpu tests/test_kernels_gpu.py", lambda: gpu_tests(plan))
    backends = [b for b in plan.backends if report.run("backends", b, lambda: backend_check(b, plan)).ok]
    for level in plan.levels:
        for dtype in plan.accuracy_dtypes:
            for backend in backends:
                report.run("accuracy", f"{level[0]} {dtype_name(dtype)} {backend}",
                           lambda: accuracy_check(backend, level, dtype, plan))
    for level in plan.levels:
        for direction in DIRECTIONS:
            times = {}
            for what in (GEMM_FLOOR, *backends):
                report.run("timing", f"{level[0]} {direction} {what}",
                           lambda: timing_check(what, level, direction, plan, times))
    size = f"{plan.latent_size}x{plan.latent_size} latents, {dtype_name(plan.unet_dtype)}"
    report.run("video-unet", f"{plan.unet_preset} forward, 2 videos x 16 frames at {size}",
               lambda: unet_forward_check(plan))
    report.run("video-unet", f"{plan.unet_preset} training step, 1 video x 16 frames at {size}",
               lambda: unet_training_check(plan))


def environment(plan: Plan) -> dict:
    """Device, versions and command of this run."""
    try:
        import triton

        triton_version = triton.__version__
    except ImportError:
        triton_version = None
    device = torch.cuda.get_device_name() if plan.device == "cuda" and torch.cuda.is_available() else (
        f"CPU ({platform.processor() or platform.machine()}, {os.cpu_count()} cores)")
    variables = (DRY_ENV, "TORCH_CUDA_ARCH_LIST", "TRITON_INTERPRET", "PYTHONPATH")
    return {
        "device": device,
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "command": shlex.join(["python", *sys.argv]),
        "environment": {k: os.environ[k] for k in variables if k in os.environ},
        "python": platform.python_version(),
        "torch": torch.__version__,
        "cuda": torch.version.cuda,
        "triton": triton_version,
        "survgen._C": sorted(compiled.KERNELS) if compiled.IMPORT_ERROR is None else compiled.IMPORT_ERROR,
        "plan": asdict(plan),
    }


# ---------------------------------------------------------------- writing it down
# group -> (section title, data columns after the check's name and result)
SECTIONS = {
    "device": ("Device", []),
    "tests": ("GPU tests", []),
    "backends": ("Backends", []),
    "accuracy": ("Accuracy against float64 (bound: tests/test_kernels_gpu.py)", ["worst_fraction_of_bound"]),
    "timing": ("Timings (median ms; speed-up over the eager reference and multiple of the GEMM floor, this run)",
               ["ms", "speedup_vs_reference", "x_gemm_floor", "tflops"]),
    "video-unet": ("Video U-Net (median ms)", ["ms", "peak_memory_gb", "attention"]),
}


def cell(value) -> str:
    """A markdown table cell: floats to 3 significant digits, None empty."""
    if isinstance(value, float):
        return f"{value:.3g}"
    return "" if value is None else str(value).replace("|", "\\|")


def markdown(env: dict, checks: list[Check], failed: int) -> str:
    """gpu_check.md: the environment, then one table per group of checks."""
    lines = ["# survgen GPU check" + (" (dry run on the CPU)" if env["plan"]["dry"] else ""), ""]
    lines += [f"- {key}: `{value}`" for key, value in env.items() if key != "plan"]
    lines += [f"- plan: `{to_json(env['plan'])}`", "", f"**{len(checks)} checks, {failed} failed**"]
    for group, (title, columns) in SECTIONS.items():
        rows = [c for c in checks if c.group == group]
        if not rows:
            continue
        header = ["check", "result", *columns, "detail"]
        lines += ["", f"## {title}", "", "| " + " | ".join(header) + " |", "|---" * len(header) + "|"]
        for c in rows:
            cells = [cell(c.name), "pass" if c.ok else "**FAIL**", *(cell(c.data.get(k)) for k in columns),
                     cell(c.detail)]
            lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def output_folder(plan: Plan) -> Path:
    """$OUT when set; else benchmarks/results/gpu/, or for a dry run (its numbers are no results) a temporary folder."""
    if os.environ.get("OUT"):
        folder = Path(os.environ["OUT"])
    elif plan.dry:
        folder = Path(tempfile.mkdtemp(prefix="survgen-gpu-check-"))
    else:
        folder = REPO / "benchmarks" / "results" / "gpu"
    folder.mkdir(parents=True, exist_ok=True)
    return folder


def main() -> int:
    """Run the plan's checks, write the report, print the summary line; the exit status."""
    plan = make_plan(os.environ.get(DRY_ENV) == "1")
    # Triton reads TRITON_INTERPRET when survgen.kernels.triton_attention defines its kernels (at the first triton
    # call, after this): the interpreter in a dry run, never on a GPU.
    if plan.dry:
        os.environ["TRITON_INTERPRET"] = "1"
    else:
        os.environ.pop("TRITON_INTERPRET", None)
    report = Report()
    run_checks(plan, report)
    env = environment(plan)
    folder = output_folder(plan)
    summary = {"checks": len(report.checks), "failed": report.failed}
    (folder / "gpu_check.json").write_text(
        to_json({**env, "summary": summary, "checks": [asdict(c) for c in report.checks]}, indent=1) + "\n")
    (folder / "gpu_check.md").write_text(markdown(env, report.checks, report.failed))
    print(f"wrote {folder / 'gpu_check.json'} and gpu_check.md")
    print(f"gpu_check: {summary['checks']} checks, {summary['failed']} failed")
    return 1 if report.failed else 0


if __name__ == "__main__":
    sys.exit(main())
