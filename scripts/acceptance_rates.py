"""Acceptance rates of the shipped default generator under its classifier (README table).

For each class, generate N candidates with no rejection but with the classifier's
scores recorded, then count how many would pass top-1 and top-3 rejection. Chance
levels are 1/8 and 3/8. Writes benchmarks/results/acceptance_default.json, or
acceptance_default-<sampler>-<steps>[-cache<N>][-guidance<G>].json (dpm++ written dpmpp)
for another sampling than generate's default.

    python scripts/acceptance_rates.py [--n 24] [--classes G1 G6 G7] [--out /tmp/acceptance]
                                       [--sampler ddim --steps 25 --cache-interval 1] [--guidance 5]
                                       [--model RUN2 --classifier RUN_CLS --save NAME.json]

`--model`/`--classifier` score runs that are not (yet) the shipped default,
e.g. `scripts/train_default.sh`'s before it exports them; `--save` names the
results file then.
"""

import argparse
import json
import math
import platform
import time
from pathlib import Path

import torch

from survgen.generation.default import default_runs
from survgen.generation.run import GenerationConfig, generate
from survgen.presets import DEFAULT_SAMPLING

parser = argparse.ArgumentParser()
parser.add_argument("--n", type=int, default=24)
parser.add_argument("--classes", nargs="+", default=["G1", "G6", "G7"])
parser.add_argument("--out", type=Path, default=Path("/tmp/acceptance"))
parser.add_argument("--sampler", default=GenerationConfig.sampler)
parser.add_argument("--steps", type=int, default=GenerationConfig.steps)
parser.add_argument("--cache-interval", type=int, default=DEFAULT_SAMPLING["cache_interval"])
parser.add_argument("--guidance", type=float, default=GenerationConfig.guidance)
parser.add_argument("--model", type=Path, help="a stage-2 run (default: the shipped default's)")
parser.add_argument("--classifier", type=Path, help="a classifier run (default: the shipped default's)")
parser.add_argument("--save", help="results file name under benchmarks/results/")
args = parser.parse_args()


def wilson_interval(hits: int, n: int, z: float = 1.96) -> list[float]:
    """95 % interval of a rate from n candidates (Wilson's score interval: honest at small n and near 0 or 1)."""
    rate, spread = hits / n, z * z / n
    centre = (rate + spread / 2) / (1 + spread)
    half = z * math.sqrt(rate * (1 - rate) / n + spread / (4 * n)) / (1 + spread)
    return [round(centre - half, 3), round(centre + half, 3)]


model, classifier = default_runs()
model, classifier = args.model or model, args.classifier or classifier
results = {}
for code in args.classes:
    started = time.perf_counter()
    cfg = GenerationConfig(classes=[code], n=args.n, reject_topk=0, batch_size=4, sampler=args.sampler,
                           steps=args.steps, cache_interval=args.cache_interval, guidance=args.guidance)
    manifest = generate(model, args.out / code, cfg, classifier=classifier)
    videos = manifest["videos"]
    ranks = [[t["class"] for t in v["classifier_topk"]] for v in videos]
    top1, top3 = sum(r[0] == code for r in ranks), sum(code in r[:3] for r in ranks)
    results[code] = {
        "candidates": len(videos),
        "top1_acceptance": top1 / len(videos),
        "top1_acceptance_95_interval": wilson_interval(top1, len(videos)),
        "top3_acceptance": top3 / len(videos),
        "top3_acceptance_95_interval": wilson_interval(top3, len(videos)),
        "mean_probability_of_class": sum(v["probability_of_class"] for v in videos) / len(videos),
        "seconds": round(time.perf_counter() - started, 1),
    }
    print(code, results[code], flush=True)

report = {
    "command": "python scripts/acceptance_rates.py " + " ".join(  # the scratch --out as OUT: no machine path
        f"--{k.replace('_', '-')} {'OUT' if k == 'out' else ' '.join(v) if isinstance(v, list) else v}"
        for k, v in vars(args).items() if v is not None),
    "device": f"CPU ({platform.processor() or platform.machine()}, {torch.get_num_threads()} threads)",
    "sampler": f"{args.sampler}, {args.steps} steps, deep features every {args.cache_interval}, "
               f"guidance {args.guidance:g}",
    "chance": {"top1": 1 / 8, "top3": 3 / 8},
    "per_class": results,
}
sampling = (args.sampler, args.steps, args.cache_interval)
default = sampling == (DEFAULT_SAMPLING["sampler"], DEFAULT_SAMPLING["steps"], DEFAULT_SAMPLING["cache_interval"])
cache = f"-cache{args.cache_interval}" if args.cache_interval > 1 else ""
guidance = f"-guidance{args.guidance:g}" if args.guidance != GenerationConfig.guidance else ""
name = args.save or ("acceptance_default.json" if default and not guidance
                     else f"acceptance_default-{args.sampler.replace('+', 'p')}-{args.steps}{cache}{guidance}.json")
path = Path(__file__).resolve().parent.parent / "benchmarks" / "results" / name
path.write_text(json.dumps(report, indent=2) + "\n")
print(path)
