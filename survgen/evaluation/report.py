"""The evaluation report a person reads: `report.md` plus the PNGs and GIFs it shows.

Every number in a report comes from the results dict of the run that writes it
(`run_downstream`, `evaluate_quality`); the report names the command, the
inputs and the checkpoints (with their hashes from the generation manifest)
that produced them. Pictures:

    class_balance_real.png, class_balance_with_synthetic.png   clips per class before and after
    scores_jaccard.png, scores_f1.png                          per-class scores of the arms, ± std over seeds
    acceptance_SET.png                                         acceptance rate of rejection sampling per class
    real_vs_generated_SET.png                                  real and generated frames, a row pair per class
    generated_SET_GK.gif                                       a few generated clips of class K side by side

(SET: the name of the generation folder.) Paths are shown as the user gave them (`shown_path`).
"""

from __future__ import annotations

import datetime as _dt
import json
import os
import platform
from pathlib import Path

import numpy as np
import torch

from survgen import __version__
from survgen.classes import ClassVocabulary
from survgen.data.datasets import to_pixels
from survgen.data.index import build_index
from survgen.data.stats import class_balance_plot
from survgen.evaluation.configs import BINARY_HEADLINE
from survgen.data.video import read_frames, write_video
from survgen.io import PNG_SOFTWARE, atomic_path, shown_path, write_text_atomic
from survgen.presets import CLASSIFIER_ARCH_NAMES, CLASSIFIER_PRESETS, savings_in_words
from survgen.visualize import grid, save_png, to_uint8

REPORT = "report.md"
EXAMPLES_PER_CLASS = 8  # frames per row of the real-vs-generated grid
GIF_CLIPS = 4  # clips side by side in a class's GIF strip
ARM_COLOURS = ("#7f7f7f", "#1b9e77", "#d95f02", "#7570b3", "#e7298a", "#66a61e", "#e6ab02", "#a6761d", "#1f78b4",
               "#b2df8a")


# ---------------------------------------------------------------- formatting
def number(value: float | None, digits: int = 3) -> str:
    return "–" if value is None else f"{value:.{digits}f}"


def mean_std_text(entry: dict, digits: int = 3) -> str:
    if entry["mean"] is None:
        return "–"
    return f"{entry['mean']:.{digits}f} ± {entry['std']:.{digits}f}" if entry["n"] > 1 else f"{entry['mean']:.{digits}f}"


def signed(value: float | None, digits: int = 3) -> str:
    return "–" if value is None else f"{value:+.{digits}f}"


def markdown_table(header: list[str], rows: list[list[str]], align: str | None = None) -> str:
    align = align or "l" + "r" * (len(header) - 1)
    rule = ["---:" if a == "r" else "---" for a in align]
    lines = ["| " + " | ".join(header) + " |", "| " + " | ".join(rule) + " |"]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    return "\n".join(lines)


def provenance(command: str | None, seconds: float | None, resumable: bool = False) -> str:
    """Who made this report, when, where and how."""
    now = _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")
    lines = [f"- made by: `{command}`" if command else "- made from Python (no command line)",
             f"- date: {now}; survgen {__version__}",
             f"- machine: {platform.machine()}, {os.cpu_count()} CPU cores, {platform.system()} "
             f"{platform.release()}, Python {platform.python_version()}"]
    if seconds is not None:
        resumed = " in this session (runs finished by an earlier session of a resumed job are not counted)"
        lines.append(f"- time: {seconds / 60:.1f} min{resumed if resumable else ''}")
    return "\n".join(lines)


# ---------------------------------------------------------------- plots
def _figure(width: float, height: float):
    # The object-oriented Agg canvas draws without pyplot, so no global matplotlib backend is touched.
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    figure = Figure(figsize=(width, height), dpi=120, layout="constrained")
    FigureCanvasAgg(figure)
    return figure


def _save(figure, path: Path) -> Path:
    with atomic_path(path) as tmp:
        figure.savefig(tmp, format="png", metadata={"Software": PNG_SOFTWARE})
    return path


def score_bars(summary: dict, metric: str, labels: dict[str, str], path: Path, title: str) -> Path:
    """Grouped bars: one group per class (`labels`: code -> tick label), one bar per arm, ± one std over seeds."""
    arms, codes = list(summary), list(labels)
    figure = _figure(max(6.0, 0.3 * len(codes) * len(arms) + 1.5), 4.4)
    ax = figure.add_subplot()
    width = 0.8 / len(arms)
    for a, arm in enumerate(arms):
        entries = [summary[arm]["per_class"][c][metric] for c in codes]
        x = [i + (a - (len(arms) - 1) / 2) * width for i in range(len(codes))]
        ax.bar(x, [e["mean"] or 0.0 for e in entries], width, yerr=[e["std"] or 0.0 for e in entries],
               capsize=2, label=f"{arm} ({summary[arm]['seeds']} seeds)", color=ARM_COLOURS[a % len(ARM_COLOURS)])
    ax.set_xticks(range(len(codes)), [labels[c] for c in codes], fontsize=8)
    ax.set_ylim(0, 1.05)
    ax.set_ylabel(metric)
    ax.set_title(title)
    ax.spines[["top", "right"]].set_visible(False)
    ax.legend(fontsize=7, frameon=False, loc="upper center", bbox_to_anchor=(0.5, -0.14), ncol=min(3, len(arms)))
    return _save(figure, path)


def acceptance_plot(per_class: dict, path: Path, title: str) -> Path:
    """Bars of accepted / candidates per class, from a generation manifest's summary."""
    codes = list(per_class)
    rates = [per_class[c]["acceptance_rate"] or 0.0 for c in codes]
    figure = _figure(max(4.0, 1.0 * len(codes) + 2), 3.6)
    ax = figure.add_subplot()
    bars = ax.bar(range(len(codes)), rates, color="#1b9e77")
    for bar, code in zip(bars, codes):
        entry = per_class[code]
        ax.text(bar.get_x() + bar.get_width() / 2, bar.get_height() + 0.02,
                f"{entry['accepted']}/{entry['candidates']}", ha="center", va="bottom", fontsize=8)
    ax.set_xticks(range(len(codes)), codes)
    ax.set_ylim(0, 1.15)
    ax.set_ylabel("accepted / candidates")
    ax.set_title(title)
    ax.spines[["top", "right"]].set_visible(False)
    return _save(figure, path)


# ---------------------------------------------------------------- pictures of the data
def _middle_frames(index, clips, size: int) -> np.ndarray:
    """The middle frame of each clip, `(n, size, size, 3)` uint8."""
    frames = []
    for clip in clips:
        frames_of_clip = index.frames(clip)
        frames.append(to_pixels(read_frames(clip.video, [frames_of_clip[len(frames_of_clip) // 2]], size))[0])
    return to_uint8(torch.stack(frames))


def _spread(items: list, n: int) -> list:
    """Up to `n` items spread evenly over the list (so not all from one video)."""
    if len(items) <= n:
        return items
    return [items[round(i * (len(items) - 1) / (n - 1))] for i in range(n)] if n > 1 else items[:1]


def accepted_videos(folder: Path) -> list[dict]:
    """The accepted candidates of a `survgen generate` folder, in candidate order, with files on disk."""
    manifest = json.loads((folder / "manifest.json").read_text())
    return [v for v in manifest["videos"] if v["accepted"] and v["file"]]


def real_vs_generated(real: Path, synthetic: Path, codes: list[str], path: Path) -> Path | None:
    """For each class: a row of real frames and a row of generated ones, at the generated videos' size."""
    videos = accepted_videos(synthetic)
    real_index = build_index(real)
    vocabulary = real_index.vocabulary
    rows, labels = [], []
    for code in codes:
        class_id = vocabulary.resolve(code)
        mine = [v for v in videos if v["class_id"] == class_id]
        if not mine:
            continue
        generated = []
        for v in _spread(mine, EXAMPLES_PER_CLASS):
            frames = read_frames(synthetic / v["file"], [v["frames"] // 2])
            generated.append(frames[0])
        generated = np.stack(generated)
        size = generated.shape[1]
        clips = _spread([c for c in real_index.clips if c.class_id == class_id], EXAMPLES_PER_CLASS)
        if clips:
            rows.append(_middle_frames(real_index, clips, size))
            labels.append(f"real {code}")
        rows.append(generated)
        labels.append(f"generated {code}")
    if not rows:
        return None
    return save_png(grid(rows, labels), path)


def gif_strip(synthetic: Path, code: str, vocabulary: ClassVocabulary, path: Path, fps: float = 8.0) -> Path | None:
    """A looping GIF of a few accepted videos of one class side by side."""
    class_id = vocabulary.resolve(code)
    mine = [v for v in accepted_videos(synthetic) if v["class_id"] == class_id][:GIF_CLIPS]
    if not mine:
        return None
    clips = [read_frames(synthetic / v["file"], range(v["frames"])) for v in mine]
    length = min(len(c) for c in clips)
    pad = np.full((length, clips[0].shape[1], 2, 3), 255, dtype=np.uint8)
    strip = np.concatenate([part for c in clips for part in (c[:length], pad)][:-1], axis=2)
    return write_video(path, strip, fps=fps)


# ---------------------------------------------------------------- sections shared by both reports
def synthetic_section(real: Path, synthetic: Path, folder: Path, heading: str = "##") -> str:
    """Acceptance per class, real vs generated frames and GIF strips of one generation folder."""
    manifest = json.loads((synthetic / "manifest.json").read_text())
    vocabulary = ClassVocabulary.for_folder(synthetic)
    per_class = manifest["summary"]["per_class"]
    config = manifest["request"]["config"]
    slug = synthetic.name
    topk = config["reject_topk"]
    lines = [f"{heading} Synthetic videos: `{synthetic}`", "",
             f"- generator: `{shown_path(manifest['model']['run'])}` (temporal weights sha256 "
             f"`{manifest['model']['temporal_sha256'][:16]}…`, spatial U-Net sha256 "
             f"`{(manifest['model'].get('spatial_unet_sha256') or '–')[:16]}…`)",
             f"- rejection classifier: `{shown_path(manifest['request']['classifier'])}`, keep a video iff its class is in the "
             f"top-{topk}" if topk else "- no rejection sampling (`--reject-topk 0`)",
             f"- sampler {config['sampler']}, {config['steps']} steps{savings_in_words(config)}, guidance "
             f"{config['guidance']}, {config['num_frames']} frames, seed {config['seed']}", ""]
    rows = [[code, vocabulary.name(vocabulary.resolve(code)), str(e["candidates"]), str(e["accepted"]),
             number(e["acceptance_rate"], 2)] for code, e in per_class.items()]
    lines += [markdown_table(["class", "action", "candidates", "accepted", "acceptance rate"], rows, "llrrr"), ""]
    if topk:
        acceptance_plot(per_class, folder / f"acceptance_{slug}.png", f"Rejection sampling (top-{topk}): {slug}")
        lines += [f"![acceptance per class](acceptance_{slug}.png)", ""]
    codes = list(per_class)
    if real_vs_generated(real, synthetic, codes, folder / f"real_vs_generated_{slug}.png"):
        lines += ["Real frames (middle frame of clips spread over the real data) and generated frames "
                  "(middle frame of accepted videos):", "", f"![real vs generated](real_vs_generated_{slug}.png)", ""]
    gifs = [(code, gif_strip(synthetic, code, vocabulary, folder / f"generated_{slug}_{code}.gif", config["fps"]))
            for code in codes]
    gifs = [(code, p) for code, p in gifs if p]
    if gifs:
        lines += ["Accepted videos, the first few of each class:", ""]
        lines += [f"{code}: ![generated {code}]({p.name})" for code, p in gifs] + [""]
    return "\n".join(lines)


# ---------------------------------------------------------------- the downstream report

def write_downstream_report(results: dict, folder: str | Path, *, command: str | None = None) -> Path:
    """`folder/report.md` and its pictures from `run_downstream`'s results."""
    folder = Path(folder)
    vocabulary = ClassVocabulary.from_dict(results["vocabulary"])
    lines = ["# Downstream test: does synthetic data help the recogniser?", "",
             provenance(command, results.get("seconds_this_session"), resumable=True), ""]
    lines += _setup_section(results)
    lines += _verdict_section(results)
    lines += _results_section(results, vocabulary, folder)
    lines += _noise_section(results, vocabulary)
    lines += _class_balance_section(results, vocabulary, folder)
    real = Path(results["request"]["real"])
    for synthetic in results["request"]["synthetic"]:
        lines += [synthetic_section(real, Path(synthetic), folder), ""]
    if results.get("warnings"):
        lines += ["## Warnings", ""] + [f"- {w}" for w in results["warnings"]] + [""]
    lines += ["## Files", "", "- `downstream.json`: every number above, per run and summarised",
              "- `runs/ARM/seed-S/`: each classifier run; `test.json` there holds its per-time-point predictions", ""]
    path = folder / REPORT
    write_text_atomic(path, "\n".join(lines))
    return path


def _setup_section(results: dict) -> list[str]:
    """The real and test data, the recogniser and its budget, the seeds, and what each arm adds."""
    request, arms = results["request"], results["arms"]
    config = request["config"]
    clf = config["classifier"]
    test = f"`{request['test']}`" if request["test"] else "held out from the real data, split by recording"
    size = f", {clf['image_size']} px" if clf["image_size"] else ""
    lines = ["## Set-up", "",
             f"- real training data: `{request['real']}` ({len(results['train']['videos'])} recordings)",
             f"- test data: {test} ({len(results['test']['videos'])} recordings, {results['test']['points']} "
             f"labelled time points, one every {config['test_step']} frames)",
             f"- recogniser: preset `{clf['preset']}`{size} ({_recogniser(clf['preset'])}; the "
             f"rejection classifier is a 3D ResNet), {clf['clip_length']}-frame "
             f"clips; {clf['train']['steps']} steps × batch {clf['train']['batch_size']}, lr {clf['train']['lr']}, "
             f"class balance `{clf['balance']}`; the same budget for every arm",
             f"- seeds: {', '.join(map(str, config['seeds']))} (mean ± sample standard deviation over them)", ""]
    real_name = arms[0]["name"]
    rows = [[a["name"], ", ".join(f"{c} +{n}" for c, n in a.get("synthetic_clips", {}).items()) or "–",
             a.get("rejection") or _no_rule(a, real_name)] for a in arms]
    return lines + [markdown_table(["arm", "synthetic clips added", "rejection rule"], rows, "lll"), ""]


def _no_rule(arm: dict, real_name: str) -> str:
    if arm["name"] == real_name:
        return "–"
    return "– (real clips)" if arm.get("control") in ("positive", "codec") else "none (first candidates)"


def _verdict_section(results: dict) -> list[str]:
    """Whether the positive control passed, and so whether the arms are judged; the other controls; the minimum
    detectable effect per score."""
    verdict = results.get("verdict", {})
    lines = ["## Can this experiment judge the generator?", ""]
    if verdict.get("positive_control") is None:
        lines += ["**It has not shown that it can.** No positive control was run (`--reference-real DIR`: real "
                  "held-out clips where the synthetic ones go), so the differences below are not verdicts on the "
                  "generator.", ""]
    else:
        lines += _positive_control_lines(verdict) + _other_controls_lines(verdict)
    detectable = verdict.get("minimum_detectable_effect", {})
    if detectable:
        rows = [[score, number(d["sd"]), str(d["seeds"]), number(d["effect"]),
                 str(d.get("seeds_for_control_gain") or "–")] for score, d in detectable.items()]
        lines += ["Minimum detectable effect: the smallest true gain these seeds show outside the noise in 80 % of "
                  "experiments, (t(0.975) + t(0.8)) · sd / √seeds, with sd the spread of the paired gains against "
                  "real (pooled over the arms, the negative control left out).", "",
                  markdown_table(["score", "sd of paired gains", "seeds", "minimum detectable effect",
                                  "seeds for a gain the size of the positive control's"], rows, "lrrrr"), ""]
    return lines


def _positive_control_lines(verdict: dict) -> list[str]:
    """Whether the positive control gained on every score, on some (the ones the arms are judged on) or on none;
    and each arm's fraction of its gain where it did."""
    gains = ", ".join(f"{score} {interval_text(d)}" for score, d in verdict["control_gain"].items())
    judged = verdict.get("judged", [])
    if not judged:
        return [f"**No: the experiment cannot judge the generator.** The positive control "
                f"(`{verdict['positive_control']}`) does not gain outside the noise on any score: {gains}. The "
                "verdicts on the other arms are left out; the minimum detectable effect below says how many seeds "
                "would be needed.", ""]
    if verdict["passed"]:
        lines = [f"**Yes.** The positive control (`{verdict['positive_control']}`) gains outside the noise on "
                 f"every score it is judged on: {gains}.", ""]
    else:
        blind = ", ".join(s for s in verdict["scores"] if s not in judged)
        lines = [f"**In part: on {' and '.join(judged)}, not on {blind}.** The positive control "
                 f"(`{verdict['positive_control']}`) gains outside the noise there only: {gains}. The generator "
                 f"is judged on {' and '.join(judged)}; on {blind} its differences are no verdicts.", ""]
    return lines + ["What each arm recovers of the positive control's gain (mean gain over the control's; "
                    "Fieller's 95 % interval):", "",
                    markdown_table(["arm"] + judged, [[arm] + [fraction_text(f) for f in row.values()]
                                                      for arm, row in verdict.get("fractions", {}).items()]), ""]


def _other_controls_lines(verdict: dict) -> list[str]:
    lines = []
    if negative := verdict.get("negative_control"):
        harm = ", ".join(f"{score} {interval_text(d)}" for score, d in negative["harm"].items())
        hurt = [score for score, d in negative["harm"].items() if d["verdict"] == "loss"]
        if negative["shows_harm"]:
            said = "shows the harm it must"
        elif hurt:
            said = f"shows harm on {', '.join(hurt)} only"
        else:
            said = "does **not** show harm outside the noise"
        lines += [f"The negative control (`{negative['arm']}`) {said}: {harm}.", ""]
    if codec := verdict.get("codec_control"):
        cost = ", ".join(f"{score} {interval_text(d)}" for score, d in codec["difference"].items())
        lines += [f"The codec control (`{codec['arm']}`), against the positive control: {cost} (what writing the "
                  "same real clips as the generated videos are written changes).", ""]
    return lines


def fraction_text(f: dict) -> str:
    """A share of the control's gain as `60 % [35, 85]` (an unbounded interval as `[–, –]`)."""
    if f["ratio"] is None:
        return "–"
    bounds = "–, –" if f["low"] is None else f"{100 * f['low']:.0f}, {100 * f['high']:.0f}"
    return f"{100 * f['ratio']:.0f} % [{bounds}]"


def _recogniser(preset: str) -> str:
    """The network behind a classifier preset, in words (a preset this version lacks is named as it is)."""
    arch = CLASSIFIER_PRESETS.get(preset, {}).get("arch")
    return CLASSIFIER_ARCH_NAMES.get(arch, f"preset {preset}")


def headline_name(key: str, vocabulary: ClassVocabulary) -> str:
    """`f1_positive` → "F1 SLB1", `video_balanced_accuracy` → "balanced accuracy per video", ..."""
    name = key.removeprefix("video_")
    name = f"F1 {vocabulary.code(1)}" if name == "f1_positive" else name.replace("_", " ")
    return name + " per video" if key.startswith("video_") else name


def _results_section(results: dict, vocabulary: ClassVocabulary, folder: Path) -> list[str]:
    """The headline scores of each arm (mean ± std over seeds), then Jaccard and F1 per class with plots."""
    summary = results["summary"]
    first = next(iter(summary.values()))
    headline = ["balanced_accuracy", "macro_f1", "accuracy"] + [k for k in BINARY_HEADLINE if k in first]
    rows = [[arm] + [mean_std_text(summary[arm][k]) for k in headline] for arm in summary]
    header = [headline_name(k, vocabulary) for k in headline]
    lines = ["## Results on the test videos", "", markdown_table(["arm"] + header, rows), ""]
    if "video_balanced_accuracy" in first:
        lines += ["Per video: each test video's majority prediction over its time points against its one label "
                  "(the paper's task 2 is judged per video).", ""]
    for metric, title in (("jaccard", "Jaccard index per class (video-wise, as in the paper)"),
                          ("f1", "F1 per class (all test time points)")):
        lines += _per_class_scores(results, vocabulary, metric, title, folder)
    return lines


def _per_class_scores(results: dict, vocabulary: ClassVocabulary, metric: str, title: str, folder: Path) -> list[str]:
    """One metric per class for every arm, with its change against real, as a table and as `scores_METRIC.png`."""
    summary, points = results["summary"], results["test"]["points_per_class"]
    codes = [vocabulary.code(c) for c in range(len(vocabulary))]
    rare = synthetic_classes(results["arms"], codes)
    arms = list(summary)
    header = ["class", "test points"] + arms + [f"Δ {arm}" for arm in arms[1:]]
    rows = []
    for code in codes:
        entries = [summary[arm]["per_class"][code][metric] for arm in arms]
        mark = " (rare)" if code in rare else ""
        rows.append([f"{code}{mark}", str(points[code])]
                    + [mean_std_text(e) for e in entries] + [signed(e["delta"]) for e in entries[1:]])
    ticks = {code: code + ("*" if code in rare else "") + ("" if points[code] else "\n(not in test)")
             for code in codes}
    score_bars(summary, metric, ticks, folder / f"scores_{metric}.png", title + "; * synthetic videos added")
    return [f"### {title}", "", markdown_table(header, rows), "",
            f"Δ: change of the mean against `{results['arms'][0]['name']}`. "
            + ("Classes with synthetic videos: " + ", ".join(rare) + "." if rare else ""), "",
            f"![{metric} per class](scores_{metric}.png)", ""]


def interval_text(d: dict) -> str:
    """A paired difference as `+0.050 [-0.010, +0.110]`."""
    if d["low"] is None:
        return signed(d["mean"])
    return f"{signed(d['mean'])} [{signed(d['low'])}, {signed(d['high'])}]"


def _noise_section(results: dict, vocabulary: ClassVocabulary) -> list[str]:
    """Each arm against real, and each rule's arm against its matched arm without rejection sampling: the paired
    difference over seeds with its 95 % interval, for every rare class's Jaccard, the balanced accuracy and, in a
    two-class task, the event class's F1."""
    summary = results["summary"]
    rare = synthetic_classes(results["arms"], [vocabulary.code(c) for c in range(len(vocabulary))])
    verdict = results.get("verdict", {})
    controls = {a["name"] for a in results["arms"] if a.get("control")}
    rows = []
    for arm, entry in summary.items():
        for other, paired in entry.get("paired", {}).items():
            cells = [(f"Jaccard {code}", paired["per_class"][code]["jaccard"]) for code in rare]
            cells.append(("balanced accuracy", paired["balanced_accuracy"]))
            # a two-class task: the event's F1, and both per video, are headlines too
            cells += [(headline_name(k, vocabulary), paired[k]) for k in BINARY_HEADLINE if k in paired]
            rows += [[arm, other, what, interval_text(d), str(d["n"]),
                      d["verdict"] if arm in controls or judged_on(verdict, what) else "not judged"]
                     for what, d in cells]
    if not rows:
        return []
    return ["## Is the change outside the noise?", "",
            markdown_table(["arm", "against", "score", "mean difference [95 % interval]", "seeds", "verdict"],
                           rows, "lllrrl"), "",
            "Differences are paired by seed (the seed fixes the recogniser's initial weights and data order); the "
            "interval is Student's t over the seeds. `gain` or `loss`: the interval excludes zero; `within noise`: "
            "it does not, and these seeds cannot tell the arms apart. `not judged`: the positive control did not "
            "gain on that score (or was not run), so a synthetic arm's difference there is no verdict.", ""]


def judged_on(verdict: dict, score: str) -> bool:
    """Is a synthetic arm's difference on `score` a verdict: the positive control passed, or gained on it?"""
    return verdict.get("passed") is True or score in verdict.get("judged", [])


def synthetic_classes(arms: list[dict], codes: list[str]) -> list[str]:
    """The classes some arm adds synthetic clips of (the rare classes), in class order."""
    return sorted({code for arm in arms for code in arm.get("synthetic_clips", {})}, key=codes.index)


def _class_balance_section(results: dict, vocabulary: ClassVocabulary, folder: Path) -> list[str]:
    """Training clips per class of the real arm and, with synthetic clips added, of the first arm that adds them."""
    arms = results["arms"]
    lines = ["## Class balance", ""]
    train_clips = {vocabulary.resolve(c): n for c, n in results["train"]["clips"].items()}
    class_balance_plot(train_clips, vocabulary, folder / "class_balance_real.png", "Training clips: real only")
    lines += ["![real](class_balance_real.png)", ""]
    with_synthetic = next((a for a in arms if a.get("rejection_sampling")), arms[1] if len(arms) > 1 else None)
    if with_synthetic is not None:
        added = {c: n + with_synthetic.get("synthetic_clips", {}).get(vocabulary.code(c), 0)
                 for c, n in train_clips.items()}
        class_balance_plot(added, vocabulary, folder / "class_balance_with_synthetic.png",
                           f"Training clips: {with_synthetic['name']}")
        lines += ["![with synthetic](class_balance_with_synthetic.png)", ""]
    return lines


# ---------------------------------------------------------------- the quality report
def _quality_row(label: str, r: dict) -> list[str]:
    kid = r.get("kid")
    prdc = r.get("prdc") or {}
    return [label, f"{r['frames']['real']} / {r['frames']['fake']}", f"{r['clips']['real']} / {r['clips']['fake']}",
            number(r.get("fid"), 2), f"{kid['mean']:.4f} ± {kid['std']:.4f}" if kid else "–", number(r.get("cmmd"), 3),
            *(number(prdc.get(k), 3) for k in ("precision", "recall", "density", "coverage")), number(r.get("fvd"), 2)]


def write_quality_report(results: dict, folder: str | Path, *, command: str | None = None,
                         seconds: float | None = None) -> Path:
    """`folder/report.md` (and the pictures of the generated set) from `evaluate_quality`'s results."""
    folder = Path(folder)
    extractors = results["extractors"]
    lines = ["# Quality of generated videos", "", provenance(command, seconds), "",
             f"- real: `{results['real']}`", f"- generated: `{results['fake']}`",
             f"- compared at {results['frame_size']}×{results['frame_size']} px (real frames resized to the "
             "generated size); real frames and clips drawn at random (seed "
             f"{results['config']['seed']}), at most {results['config']['max_frames']} frames and "
             f"{results['config']['max_clips']} clips per class", "",
             "Feature extractors (numbers computed with different extractors, or at different sample sizes, are "
             "**not comparable**):", "",
             f"- FID, KID, precision/recall/density/coverage: {extractors['fid_kid_density_coverage']}",
             f"- CMMD (σ = 10, ×1000): {extractors['cmmd']}", f"- FVD: {extractors['fvd']}", ""]
    header = ["class", "frames real / gen", "clips real / gen", "FID ↓", "KID ↓", "CMMD ↓", "precision ↑",
              "recall ↑", "density ↑", "coverage ↑", "FVD ↓"]
    rows = []
    for code, r in results["per_class"].items():
        if "frames" in r:
            rows.append(_quality_row(code, r))
            if r.get("floor"):
                rows.append(_quality_row(f"{code} floor: real vs real ({' / '.join(map(str, r['floor']['recordings']))} "
                                         "recordings)", r["floor"]))
    if results.get("overall"):
        rows.append(_quality_row("all", results["overall"]))
    per_recording = results["config"].get("per_recording")
    lines += [markdown_table(header, rows), "",
              "A class's *floor* compares two halves of its real recordings: what a generator indistinguishable "
              "from the real data would score at these sample sizes (its 'gen' column is the second half). "
              + (f"At most {per_recording} frames and clips per recording and class. " if per_recording else ""), ""]
    warnings = [(code, w) for code, r in results["per_class"].items() for w in r.get("warnings", [])]
    warnings += [("all", w) for w in (results.get("overall") or {}).get("warnings", [])]
    if warnings:
        lines += ["## Warnings", ""] + [f"- {code}: {w}" for code, w in warnings] + [""]
    fake = Path(results["fake"])
    if (fake / "manifest.json").exists():
        lines += [synthetic_section(Path(results["real"]), fake, folder), ""]
    lines += ["`quality.json` holds every number above.", ""]
    path = folder / REPORT
    write_text_atomic(path, "\n".join(lines))
    return path
