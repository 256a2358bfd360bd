"""Turn pytest-benchmark JSON files into Markdown: `python benchmarks/report.py RUN.json... --out benchmarks/RESULTS.md`.

Each file becomes a section with the machine, the date, the commit and the
command that produced it (recorded by benchmarks/conftest.py), then its
tables: the architecture comparison (seconds per video, steps per second,
accepted videos per minute, memory, time as a multiple of survgen's; and the
paper-scale cost in counted FLOPs, as a multiple of survgen's), the
issue's end-to-end aims checked against the measured ratios, the kernels'
speed-ups over the reference, and every other benchmark's times. Every number
is read from the files; nothing is typed in.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

# Paper Table 1 (their GPU, 256×256, 16 frames): seconds per video.
PAPER_SECONDS = {"lvdm": 43.3, "endora": 15.3, "survgen": 6.55}
# The aim: survgen at least this many times faster end to end, with its fast sampler and fused kernels.
AIMS = {"endora": 4.0, "lvdm": 10.0}
END_TO_END = ("inference, end to end", "cost at paper scale")


def architecture_rows(benchmarks) -> list[dict]:
    """One row per architecture benchmark: its measure, memory and time relative to its group's baseline."""
    rows = []
    groups: dict[str, list] = {}
    for b in benchmarks:
        groups.setdefault(b["group"], []).append(b)
    for group, members in groups.items():
        baseline = next((b for b in members if b["extra_info"].get("role") == "baseline"), None)

        def cost(b):  # counted FLOPs where the benchmark counted them, else its minimum time
            return b["extra_info"].get("tflop_per_video") or b["stats"]["min"]

        for b in members:
            info, seconds = b["extra_info"], b["stats"]["min"]
            row = {"group": group, "name": info.get("label", info["arch"]), "arch": info["arch"], "seconds": seconds,
                   "memory_mb": info.get("memory_mb"), "memory_metric": info.get("memory_metric"),
                   "vs_baseline": cost(b) / cost(baseline) if baseline else None}
            if "videos" in info:
                row["measure"] = f"{seconds / info['videos']:.3g} s/video"
            if "steps" in info and "videos" not in info:
                row["measure"] = f"{info['steps'] / seconds:.3g} steps/s"
            if "accepted" in info:
                row["measure"] = f"{info['accepted'] / seconds * 60:.3g} accepted videos/min"
            if "tflop_per_video" in info:
                row["measure"] = f"{info['tflop_per_video']:.0f} TFLOP/video"
            if "sd15_tflop_per_video" in info:
                row["measure"] += f"; {info['sd15_tflop_per_video']:.1f} TFLOP/video at sd15, counted"
            rows.append(row)
    return rows


def _machine(data: dict) -> str:
    m = data.get("machine_info", {})
    cpu = m.get("cpu", {})
    parts = [cpu.get("brand_raw") or m.get("processor") or "unknown CPU"]
    if cpu.get("count"):
        parts.append(f"{cpu['count']} cores")
    parts.append(f"GPU: {data['gpu']}" if data.get("gpu") else "no GPU")
    return ", ".join(parts)


def _aims(rows: list[dict]) -> list[str]:
    lines = []
    for group in dict.fromkeys(r["group"] for r in rows if r["group"].startswith(END_TO_END)):
        members = [r for r in rows if r["group"] == group]
        for ours in (r for r in members if r["arch"] == "survgen"):
            for arch, aim in AIMS.items():
                for theirs in (r for r in members if r["arch"] == arch):
                    speedup = theirs["vs_baseline"] / ours["vs_baseline"]
                    verdict = "met" if speedup >= aim else "not met"
                    lines.append(f"| {group} | {ours['name']} vs {theirs['name']} | ≥ {aim:g}× | {speedup:.2f}× | "
                                 f"{verdict} |")
    if not lines:
        return []
    paper = ", ".join(f"{a} {s} s" for a, s in PAPER_SECONDS.items())
    return ["", "Aims (survgen's end-to-end speed-up over each baseline, from the ratios above). "
            f"Paper Table 1 for reference, seconds per video on their GPU: {paper} "
            f"(SurV-Gen {PAPER_SECONDS['endora'] / PAPER_SECONDS['survgen']:.1f}× Endora, "
            f"{PAPER_SECONDS['lvdm'] / PAPER_SECONDS['survgen']:.1f}× LVDM).", "",
            "| group | comparison | aim | measured | |", "|---|---|---:|---:|---|", *lines]


def sweep_section(path: Path, data: dict) -> list[str]:
    """The sampler sweep (`benchmarks/sampler_sweep.py`): its table, plot and the setting its rule picks."""
    from sampler_sweep import cheapest_acceptable, table

    rows = data["settings"]
    return [f"## {path.name}", "", f"- machine: {data['machine']}", f"- command: `{data['command']}`",
            f"- torch: {data['torch']}; {data['n_per_class']} candidates per class ({', '.join(data['classes'])}) "
            "and setting, the same seeds in every setting"] + ([f"- note: {data['note']}"] if "note" in data else []) + [
            "", table(rows), "",
            f"![sampler sweep]({path.with_suffix('.png').relative_to(path.parent.parent)})", "",
            f"The rule (fewest counted sd15 FLOPs within the real-vs-real spread, pooled top-1 acceptance at least "
            f"DDIM 25's) picks **{cheapest_acceptable(rows)}**.", ""]


def section(path: Path) -> list[str]:
    data = json.loads(path.read_text())
    if "settings" in data:
        return sweep_section(path, data)
    commit = data.get("commit_info", {})
    lines = [f"## {path.name}", "",
             f"- machine: {_machine(data)}",
             f"- date: {data.get('datetime', 'not recorded')}",
             f"- commit: {commit.get('id', 'not recorded')}{' (with uncommitted changes)' if commit.get('dirty') else ''}",
             f"- command: `{data['command']}`" if data.get("command") else "- command: not recorded in this file "
             "(see benchmarks/results/README.md)",
             f"- torch: {data.get('torch', 'not recorded')}; times are the minimum over rounds", ""]
    benchmarks = data.get("benchmarks", [])
    arch = [b for b in benchmarks if "arch" in b["extra_info"]]
    kernels = [b for b in benchmarks if "backend" in b["extra_info"]]
    other = [b for b in benchmarks if b not in arch and b not in kernels]
    if arch:
        rows = architecture_rows(arch)
        lines += ["| group | model | measure | memory (MB) | time (or FLOPs) vs the group's baseline |", "|---|---|---:|---:|---:|"]
        for r in rows:
            memory = f"{r['memory_mb']:.0f}" if r["memory_mb"] is not None else ""
            ratio = f"{r['vs_baseline']:.2f}×" if r["vs_baseline"] is not None else ""
            lines.append(f"| {r['group']} | {r['name']} | {r.get('measure', '')} | {memory} | {ratio} |")
        lines += ["", "Each group's baseline is its 1.00× row (survgen; in files from before the sampler sweep, for "
                  "`generate`, survgen keeping every video; after it, for `generate` and the step savings, the "
                  "reference sampling: DDIM 25 with no saving); a ratio above 1 means more time (or FLOPs) than it."]
        metrics = sorted({r["memory_metric"] for r in rows if r["memory_metric"]})
        if metrics:
            lines += ["", "Memory: " + "; ".join(metrics) + "."]
        lines += _aims(rows)
        lines.append("")
    if kernels:
        lines += ["| group | backend | min (ms) | speed-up over the reference |", "|---|---|---:|---:|"]
        for group in dict.fromkeys(b["group"] for b in kernels):
            members = [b for b in kernels if b["group"] == group]
            reference = next((b for b in members if b["extra_info"]["backend"] == "reference"), None)
            for b in members:
                ratio = f"{reference['stats']['min'] / b['stats']['min']:.2f}×" if reference else ""
                lines.append(f"| {group} | {b['extra_info']['backend']} | {b['stats']['min'] * 1e3:.1f} | {ratio} |")
        lines.append("")
    if other:
        lines += ["| group | benchmark | min (ms) | mean (ms) | rounds |", "|---|---|---:|---:|---:|"]
        for b in other:
            s = b["stats"]
            lines.append(f"| {b['group'] or ''} | {b['name']} | {s['min'] * 1e3:.1f} | {s['mean'] * 1e3:.1f} | "
                         f"{s['rounds']} |")
        lines.append("")
    return lines


def write_report(paths: list[Path], out: Path) -> Path:
    lines = ["# Benchmark results", "",
             "Written by `python benchmarks/report.py " + " ".join(str(p) for p in paths) + f" --out {out}` "
             "from pytest-benchmark JSON files (`pytest benchmarks --benchmark-only --benchmark-json FILE`). "
             "Compare ratios within one file only: every file is one run on one machine.", ""]
    for path in paths:
        lines += section(path)
    out.write_text("\n".join(lines))
    return out


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("json", nargs="+", type=Path, help="pytest-benchmark JSON files")
    parser.add_argument("--out", type=Path, default=Path("benchmarks/RESULTS.md"))
    args = parser.parse_args(argv)
    print(write_report(args.json, args.out))


if __name__ == "__main__":
    main()
