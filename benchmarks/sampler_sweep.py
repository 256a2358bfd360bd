"""Sampler × steps × step savings, scored against DDIM 25 on the bundled data (issue 17's sweep).

For each setting, the shipped default generates N candidates of each rare class with
no rejection but with the shipped classifier's scores recorded (the same candidate
seeds in every setting, so the settings are compared on the same starting noise),
then the script measures:

- seconds per video on this machine (sampling, decoding, judging, writing; one process);
- the classifier's top-1 acceptance per class and pooled;
- FID, KID and FVD on the classifier's features against the real training data, with
  the real-vs-real floor (two halves of the real recordings) at the same settings.

A setting is "within the real-vs-real spread" when its FID and FVD are no worse than DDIM
25's by more than the floor's (what two halves of the real data differ by), class by class. Results go to
benchmarks/results/sampler_sweep.json, a plot to benchmarks/results/sampler_sweep.png; the
table to paste into benchmarks/RESULTS.md is printed. Resumable: a setting whose folder is
complete is read back, not made again.

    python benchmarks/sampler_sweep.py [--n 16] [--out /tmp/sweep] [--threads 1]
"""

import argparse
import json
import platform
import time
from pathlib import Path

import torch

SETTINGS = [  # name, generate options; the first is the reference (the old default)
    ("ddim 25", dict(sampler="ddim", steps=25)),
    ("dpm++ 10", dict(sampler="dpm++", steps=10)),
    ("dpm++ 8", dict(sampler="dpm++", steps=8)),
    ("dpm++ 6", dict(sampler="dpm++", steps=6)),
    ("unipc 10", dict(sampler="unipc", steps=10)),
    ("unipc 8", dict(sampler="unipc", steps=8)),
    ("dpm++ 8, cache 2", dict(sampler="dpm++", steps=8, cache_interval=2)),
    ("dpm++ 8, guidance t<=700", dict(sampler="dpm++", steps=8, guidance_interval=[0, 700])),
    ("dpm++ 8, cache 3", dict(sampler="dpm++", steps=8, cache_interval=3)),
    ("dpm++ 8, cache 4", dict(sampler="dpm++", steps=8, cache_interval=4)),
    ("dpm++ 6, cache 2", dict(sampler="dpm++", steps=6, cache_interval=2)),
    ("dpm++ 6, cache 3", dict(sampler="dpm++", steps=6, cache_interval=3)),
]
CLASSES = ["G1", "G6", "G7"]


def folder_name(name: str) -> str:
    return name.replace("+", "p").replace(",", "").replace(" ", "-").replace("<=", "le").replace(">=", "ge")


def run_setting(name, options, args, model, classifier):
    from survgen.generation.run import GenerationConfig, generate

    cfg = GenerationConfig(classes=CLASSES, n=args.n, reject_topk=0, batch_size=4, **{"cache_interval": 1, **options})
    out = args.out / folder_name(name)
    timing = out / "seconds.json"
    started = time.perf_counter()
    manifest = generate(model, out, cfg, classifier=classifier)
    if not timing.exists():  # only a run that made every video says how long they took
        timing.write_text(json.dumps({"seconds": time.perf_counter() - started}))
    seconds = json.loads(timing.read_text())["seconds"]
    videos = manifest["videos"]
    top1 = {c: sum(v["classifier_topk"][0]["class"] == c for v in videos if v["class"] == c) / args.n
            for c in CLASSES}
    return out, {"options": options, "seconds_per_video": seconds / len(videos),
                 "top1_acceptance": top1, "top1_pooled": sum(top1.values()) / len(top1)}


def quality(fake, real, classifier):
    from survgen.evaluation.features import ClassifierFeatures
    from survgen.evaluation.quality import Extractors, QualityConfig, evaluate_quality

    own = ClassifierFeatures.from_run(classifier)
    result = evaluate_quality(real, fake, Extractors(frames=own, cmmd=own, clips=own),
                              QualityConfig(per_recording=100), progress=False)
    pick = ("fid", "kid", "fvd")
    floor = {c: {m: r["floor"][m] for m in pick} for c, r in result["per_class"].items() if r.get("floor")}
    return {"per_class": {c: {m: r[m] for m in pick} for c, r in result["per_class"].items()},
            "overall": {m: result["overall"][m] for m in pick}, "floor": floor}


def within_spread(row, reference, floor):
    """FID and FVD of every class are no worse than the reference's by more than the real-vs-real floor."""
    return all(row["quality"]["per_class"][c][m] - reference["quality"]["per_class"][c][m] <= floor[c][m]
               for c in floor for m in ("fid", "fvd"))


def plot(rows, path):
    """Acceptance and FVD against the counted cost, one marker per setting (a legend, not labels: they overlap)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(12, 4.5))
    markers = "osD^v<>pPX*hH"
    for k, (name, row) in enumerate(rows.items()):
        x = row["sd15_tflop_per_video"]
        style = dict(marker=markers[k % len(markers)], linestyle="", label=name)
        axes[0].plot(x, row["top1_pooled"], **style)
        axes[1].plot(x, row["quality"]["overall"]["fvd"], **style)
    axes[0].set(xlabel="TFLOP per video at sd15 (counted)", ylabel="top-1 acceptance, G1/G6/G7 pooled", xscale="log")
    axes[1].set(xlabel="TFLOP per video at sd15 (counted)", ylabel="FVD (classifier features), pooled", xscale="log")
    axes[1].legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.02, 1))
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--n", type=int, default=16, help="candidates per class and setting")
    parser.add_argument("--out", type=Path, default=Path("/tmp/sweep"))
    parser.add_argument("--threads", type=int, default=torch.get_num_threads())
    parser.add_argument("--only", nargs="*", help="names of settings to run (default: all)")
    parser.add_argument("--results", type=Path, default=Path(__file__).parent / "results" / "sampler_sweep.json")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    from survgen.data.synth import synthesize_dataset
    from survgen.generation.default import default_runs

    model, classifier = default_runs()
    real = args.out / "real"
    if not (real / "survgen_dataset.json").exists():
        synthesize_dataset(real)  # the shipped model's training set: `survgen data synth` defaults
    results_path = args.results
    rows = json.loads(results_path.read_text())["settings"] if results_path.exists() else {}
    for name, options in SETTINGS:
        if (args.only and name not in args.only) or name in rows:  # rows: the settings measured already
            continue
        out, row = run_setting(name, options, args, model, classifier)
        row["quality"] = quality(out, real, classifier)
        rows[name] = row
        print(name, json.dumps(row), flush=True)
        save(rows, args, results_path)


def save(rows, args, path):
    from survgen.diffusion.cost import sampling_flops

    reference = rows.get(SETTINGS[0][0])
    for row in rows.values():
        if "sd15_tflop_per_video" not in row:
            row["sd15_tflop_per_video"] = sampling_flops("survgen", "sd15", **row["options"])["flops_per_video"] / 1e12
        if reference:
            row["within_real_spread"] = within_spread(row, reference, reference["quality"]["floor"])
            row["speedup_vs_ddim25"] = reference["seconds_per_video"] / row["seconds_per_video"]
    path.write_text(json.dumps({
        "command": f"python benchmarks/sampler_sweep.py --n {args.n} --threads {args.threads}",
        "machine": f"{platform.processor() or platform.machine()}, {torch.get_num_threads()} threads, no GPU",
        "torch": torch.__version__, "n_per_class": args.n, "classes": CLASSES, "settings": rows}, indent=2))
    plot(rows, path.with_suffix(".png"))
    print(table(rows))


def cheapest_acceptable(rows) -> str:
    """The setting the rule picks: the fewest counted sd15 FLOPs among those within the real-vs-real spread
    whose pooled top-1 acceptance is at least DDIM 25's."""
    reference = rows[SETTINGS[0][0]]
    fit = [n for n, r in rows.items() if r["within_real_spread"] and r["top1_pooled"] >= reference["top1_pooled"]]
    return min(fit, key=lambda n: rows[n]["sd15_tflop_per_video"])


def table(rows) -> str:
    """The Markdown table for benchmarks/RESULTS.md."""
    lines = ["| setting | sd15 TFLOP/video (counted) | s/video (this CPU) | top-1 G1 / G6 / G7 | FID G1 / G6 / G7 "
             "| FVD G1 / G6 / G7 | within real-vs-real spread |", "|---|---:|---:|---|---|---|---|"]
    for name, row in rows.items():
        q = row["quality"]["per_class"]
        lines.append(f"| {name} | {row['sd15_tflop_per_video']:.1f} | {row['seconds_per_video']:.2f} | "
                     + " / ".join(f"{row['top1_acceptance'][c]:.0%}" for c in CLASSES) + " | "
                     + " / ".join(f"{q[c]['fid']:.2f}" for c in CLASSES) + " | "
                     + " / ".join(f"{q[c]['fvd']:.2f}" for c in CLASSES) + " | "
                     + ("yes" if row.get("within_real_spread") else "no") + " |")
    floor = next(iter(rows.values()))["quality"]["floor"]
    lines.append("| real vs real (floor) | | | | " + " / ".join(f"{floor[c]['fid']:.2f}" for c in CLASSES) + " | "
                 + " / ".join(f"{floor[c]['fvd']:.2f}" for c in CLASSES) + " | |")
    return "\n".join(lines)


if __name__ == "__main__":
    main()
