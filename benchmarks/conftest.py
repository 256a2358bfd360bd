"""After the benchmark table: speed-ups over the reference and GFLOP/s against the measured matmul peak.

Benchmarks that put `flops` (and, for attention, `backend`) in extra_info are
summarised per group: the reference of the same group is the baseline, and the
`matmul peak` benchmark of the same run is the peak. Everything printed is
computed from this run's minimum times.
"""

from __future__ import annotations


def pytest_terminal_summary(terminalreporter, exitstatus, config):
    session = getattr(config, "_benchmarksession", None)
    benchmarks = [b for b in getattr(session, "benchmarks", []) if b.stats is not None and "flops" in b.extra_info]
    if not benchmarks:
        return
    peak = next((b.extra_info["flops"] / b.stats.min / 1e9 for b in benchmarks if b.extra_info.get("role") == "peak"),
                None)
    write = terminalreporter.write_line
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
