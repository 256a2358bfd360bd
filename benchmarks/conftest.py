"""Benchmark modes, markers and the tables printed after pytest-benchmark's own.

Modes:
- `pytest benchmarks --benchmark-only`: the measurement. Paper-scale
  architectures (`gpu_only`) run only where CUDA is present and are skipped
  with that reason otherwise.
- `pytest benchmarks --benchmark-disable` (CI): the smoke run. Every benchmark
  body runs once, at the smallest settings (`quick`), and `paper_scale` ones
  are skipped, so the files cannot rot without taking minutes.

After the run: per kernel group, each backend's speed-up over the reference and
GFLOP/s against the matmul peak of the same run; per architecture group, each
architecture's seconds per video or steps per second, memory, and its time as a
multiple of survgen's in the same group. Everything printed comes from this
run's minimum times. `--benchmark-json` files also get the command line and the
GPU's name, for `benchmarks/report.py`.
"""

from __future__ import annotations

import shlex

import pytest
import torch

from report import architecture_rows  # benchmarks/report.py: the same rows go into RESULTS.md


def pytest_configure(config):
    config.addinivalue_line("markers", "paper_scale: a paper-scale model (minutes on a CPU); skipped in the smoke run")
    config.addinivalue_line("markers", "gpu_only: measured only where CUDA is present")


def is_quick(config) -> bool:
    return bool(config.getoption("benchmark_disable", default=False))


@pytest.fixture
def quick(request) -> bool:
    """True in the smoke run (`--benchmark-disable`): use the smallest settings."""
    return is_quick(request.config)


def pytest_collection_modifyitems(config, items):
    smoke = pytest.mark.skip(reason="smoke run (--benchmark-disable): paper-scale models are measured with "
                                    "--benchmark-only")
    no_gpu = pytest.mark.skip(reason="paper presets are measured on a GPU; no CUDA device here")
    for item in items:
        if "gpu_only" in item.keywords and not torch.cuda.is_available():
            item.add_marker(no_gpu)
        elif "paper_scale" in item.keywords and is_quick(config):
            item.add_marker(smoke)


def pytest_benchmark_update_json(config, benchmarks, output_json):
    output_json["command"] = shlex.join(["python", "-m", "pytest", *config.invocation_params.args])
    output_json["gpu"] = torch.cuda.get_device_name(0) if torch.cuda.is_available() else None
    output_json["torch"] = torch.__version__


def pytest_terminal_summary(terminalreporter, exitstatus, config):
    session = getattr(config, "_benchmarksession", None)
    done = [b for b in getattr(session, "benchmarks", []) if b.stats is not None]
    write = terminalreporter.write_line
    _kernel_table(write, [b for b in done if "flops" in b.extra_info])
    _architecture_table(write, [b for b in done if "arch" in b.extra_info])


def _kernel_table(write, benchmarks) -> None:
    if not benchmarks:
        return
    peak = next((b.extra_info["flops"] / b.stats.min / 1e9 for b in benchmarks if b.extra_info.get("role") == "peak"),
                None)
    write("")
    write(f"matmul peak measured in this run: {peak:.0f} GFLOP/s" if peak else "no matmul peak in this run")
    write(f"{'group':<48} {'backend':<10} {'min ms':>9} {'vs reference':>13} {'GFLOP/s':>8} {'of peak':>8}")
    groups: dict[str, list] = {}
    for b in benchmarks:
        if "backend" in b.extra_info:
            groups.setdefault(b.group, []).append(b)
    for group, members in groups.items():
        reference = next((b for b in members if b.extra_info["backend"] == "reference"), None)
        for b in sorted(members, key=lambda b: b.extra_info["backend"]):
            rate = b.extra_info["flops"] / b.stats.min / 1e9
            ratio = f"{reference.stats.min / b.stats.min:.2f}x" if reference else "-"
            share = f"{rate / peak:.0%}" if peak else "-"
            write(f"{group:<48} {b.extra_info['backend']:<10} {b.stats.min * 1e3:>9.1f} {ratio:>13} {rate:>8.0f} "
                  f"{share:>8}")


def _architecture_table(write, benchmarks) -> None:
    if not benchmarks:
        return
    rows = architecture_rows([{"group": b.group, "extra_info": b.extra_info, "stats": {"min": b.stats.min}}
                              for b in benchmarks])
    write("")
    write(f"{'group':<72} {'model':<40} {'measure':>30} {'memory MB':>10} {'vs baseline (time or FLOPs)':>27}")
    for r in rows:
        memory = f"{r['memory_mb']:.0f}" if r["memory_mb"] is not None else "-"
        ratio = f"{r['vs_baseline']:.2f}x" if r["vs_baseline"] is not None else "-"
        write(f"{r['group'][:72]:<72} {r['name']:<40} {r.get('measure', '-'):>30} {memory:>10} {ratio:>27}")
    if any(r["memory_metric"] for r in rows):
        write("memory: " + "; ".join(sorted({r["memory_metric"] for r in rows if r["memory_metric"]})))
