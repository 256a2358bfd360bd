"""`survgen evaluate quality` and `survgen evaluate downstream`: measure generated videos, write a report.

The results go to
stdout (a table, or with --json the results as written to the report folder);
progress and the report's path to stderr.
"""

from __future__ import annotations

import json
import shlex
import sys
import time
from pathlib import Path
from typing import Annotated, Optional

import typer
from rich.table import Table

from survgen.cli.common import AsJson, Quiet, evaluate_app, training_progress, user_errors
from survgen.evaluation.configs import DownstreamConfig

DOWNSTREAM = DownstreamConfig()  # the defaults --help shows
from survgen.console import say, show, text

Report = Annotated[Path, typer.Option("--report", help="Folder for report.md, its plots and the results (JSON); "
                                                         "re-run the same command to continue it.")]


def _command_line() -> str:
    return shlex.join(["survgen", *sys.argv[1:]])


# ---------------------------------------------------------------- quality
@evaluate_app.command("quality")
@user_errors
def quality_command(
    real: Annotated[Path, typer.Option("--real", help="Real dataset (SAR-RARP50 layout, or videos + labels CSV).")],
    fake: Annotated[Path, typer.Option("--fake", help="Generated videos: a `survgen generate` folder (or any dataset).")],
    report: Report,
    classifier: Annotated[Optional[Path], typer.Option("--classifier", help="Classifier run whose features the metrics use by default (train it on the real data); default: the shipped one.")] = None,
    inception_weights: Annotated[Optional[Path], typer.Option("--inception-weights", help="Inception-v3 TorchScript file as clean-fid uses it (inception-2015-12-05.pt): for FID, KID, density/coverage.")] = None,
    clip_weights: Annotated[Optional[Path], typer.Option("--clip-weights", help="Local Hugging Face folder of CLIP ViT-L/14: for CMMD.")] = None,
    i3d_weights: Annotated[Optional[Path], typer.Option("--i3d-weights", help="I3D TorchScript file (i3d_torchscript.pt, as StyleGAN-V's FVD): for FVD.")] = None,
    max_frames: Annotated[int, typer.Option("--max-frames", min=1, help="Frames per class and set, at most.")] = 1000,
    max_clips: Annotated[int, typer.Option("--max-clips", min=1, help="Clips per class and set, at most (FVD).")] = 500,
    per_recording: Annotated[Optional[int], typer.Option("--per-recording", min=1, help="Frames and clips per recording and class, at most, so that a few long recordings do not stand for a class.", show_default="no cap")] = None,
    floor: Annotated[bool, typer.Option("--floor/--no-floor", help="Also score two halves of the real recordings against each other: what a perfect generator would get.")] = True,
    seed: Annotated[int, typer.Option("--seed", help="Which real frames and clips are drawn.")] = 0,
    quiet: Quiet = False, as_json: AsJson = False,
):
    """FID, KID, CMMD, density/coverage (frames) and FVD (clips) of generated vs real videos, per class, with the
    real-vs-real floor of each.

    No weights are ever downloaded: without --inception-weights / --clip-weights / --i3d-weights the
    features come from the survgen classifier, and every output says so.

    Example: survgen evaluate quality --real data/synth --fake generated/G7 --report reports/quality-G7
    """
    from survgen.evaluation.features import ClassifierFeatures, ClipEmbeddings, I3DFeatures, InceptionFeatures
    from survgen.evaluation.quality import Extractors, QualityConfig, evaluate_quality
    from survgen.evaluation.report import write_quality_report
    from survgen.io import output_folder, write_json_atomic

    output_folder(report, option="--report", marker="quality.json")  # a re-run replaces its own report
    if classifier is None:
        from survgen.generation.default import default_runs

        classifier = default_runs()[1]
    started = time.perf_counter()
    own = ClassifierFeatures.from_run(classifier)
    extractors = Extractors(frames=InceptionFeatures(inception_weights) if inception_weights else own,
                            cmmd=ClipEmbeddings(clip_weights) if clip_weights else own,
                            clips=I3DFeatures(i3d_weights) if i3d_weights else own)
    cfg = QualityConfig(max_frames=max_frames, max_clips=max_clips, seed=seed, per_recording=per_recording,
                        floor=floor)
    results = evaluate_quality(real, fake, extractors, cfg, progress=not quiet)
    seconds = time.perf_counter() - started
    results["command"] = _command_line()
    write_json_atomic(report / "quality.json", results)
    write_quality_report(results, report, command=results["command"], seconds=seconds)

    say(f"report: {report / 'report.md'}")
    if as_json:
        typer.echo(json.dumps(results, indent=2))
        return
    rows = _quality_rows(results)
    show(_quality_table(rows, title=f"quality of {fake} vs {real}"))
    for name, extractor in results["extractors"].items():
        show(text(f"{name}: features of {extractor}"))
    warned = sum(len(r.get("warnings", [])) for _, r in rows)
    if warned:
        say(f"{warned} warning(s) about small sample sizes: see {report / 'report.md'}", "warning")


def _quality_rows(results: dict) -> list[tuple[str, dict]]:
    """(label, metrics): each class, then its real-vs-real floor; all classes pooled last."""
    rows = []
    for code, r in results["per_class"].items():
        if "frames" in r:
            rows.append((code, r))
            if r.get("floor"):
                rows.append((f"{code} floor", r["floor"]))
    return rows + ([("all", results["overall"])] if results["overall"] else [])


def _quality_table(rows: list[tuple[str, dict]], title: str) -> Table:
    def fmt(value, digits=2):
        return "-" if value is None else f"{value:.{digits}f}"

    table = Table(title=text(title))
    for column in ("class", "frames real/gen", "FID", "KID", "CMMD", "density", "coverage", "FVD"):
        table.add_column(column, justify="right")
    for code, r in rows:
        prdc = r["prdc"] or {}
        table.add_row(text(code), f"{r['frames']['real']}/{r['frames']['fake']}", fmt(r["fid"]),
                      fmt(r["kid"]["mean"], 4) if r["kid"] else "-", fmt(r["cmmd"], 3),
                      fmt(prdc.get("density"), 3), fmt(prdc.get("coverage"), 3), fmt(r["fvd"]))
    return table


# ---------------------------------------------------------------- downstream
@evaluate_app.command("downstream")
@user_errors
def downstream_command(
    real: Annotated[Path, typer.Option("--real", help="Real training data (SAR-RARP50 layout, or videos + labels CSV).")],
    synthetic: Annotated[list[Path], typer.Option("--synthetic", help="A `survgen generate` folder; repeatable. Generated with --keep-rejected, it also gives the arms without rejection sampling and the rules stricter than its own.")],
    report: Report,
    test: Annotated[Optional[Path], typer.Option("--test", help="Real test data (recordings no arm, nor the generator, trained on); default: --test-fraction of the --real recordings.")] = None,
    reference_real: Annotated[Optional[Path], typer.Option("--reference-real", help="Real recordings in neither --real nor --test: the positive control adds as many of their rare-class clips as the first synthetic arm adds videos. The generator is judged only if that gain is outside the noise.")] = None,
    negative_control: Annotated[bool, typer.Option("--negative-control/--no-negative-control", help="Add the first synthetic arm with its rare classes' labels rotated: the harm the experiment must show.")] = DOWNSTREAM.negative_control,
    codec_control: Annotated[bool, typer.Option("--codec-control/--no-codec-control", help="With --reference-real: add its clips encoded as the generated videos are (what the encoding alone changes).")] = DOWNSTREAM.codec_control,
    test_fraction: Annotated[float, typer.Option("--test-fraction", help="Share of --real recordings held out for testing when no --test is given (split by video).")] = 0.2,
    seeds: Annotated[list[int], typer.Option("--seed", help="Training seed; repeatable; the paired intervals need at least 2.")] = DOWNSTREAM.seeds,
    rejection: Annotated[list[str], typer.Option("--rejection", help="Rejection rule of an arm: top-K (class in the classifier's K most probable) or p>=X (its probability at least X); repeatable.")] = DOWNSTREAM.rejection,
    without_rs: Annotated[bool, typer.Option("--without-rs/--no-without-rs", help="For each rule, also train the arm of as many first candidates, accepted or not (needs the rejected videos kept).")] = DOWNSTREAM.without_rejection,
    preset: Annotated[str, typer.Option("--preset", help="Recogniser: x3d-xs (X3D, as in the paper's task 1; not the rejection classifier's network) | tiny | r3d18 (3D ResNets) | resnet-lstm | resnet18-lstm (ResNet-LSTM, the paper's task 2).")] = DOWNSTREAM.classifier.preset,
    image_size: Annotated[Optional[int], typer.Option("--image-size", min=8, help="Frame size the recogniser sees (default: the preset's).")] = None,
    clip_length: Annotated[int, typer.Option("--clip-length", min=1, help="Frames per clip the recogniser sees (X3D-XS as published: 4).")] = DOWNSTREAM.classifier.clip_length,
    clip_fps: Annotated[float, typer.Option("--clip-fps", min=0.01, help="Clip frame rate: each video's frame stride is round(fps / clip-fps) (X3D-XS as published: 2.5, i.e. every 12th frame at 30 fps).")] = DOWNSTREAM.classifier.clip_fps,
    steps: Annotated[int, typer.Option("--steps", min=1, help="Training steps, the same for every arm.")] = 300,
    batch_size: Annotated[int, typer.Option("--batch-size", min=1, help="Clips per step, the same for every arm.")] = 16,
    lr: Annotated[float, typer.Option("--lr", min=0.0, help="AdamW learning rate.")] = 3e-3,
    balance: Annotated[str, typer.Option("--balance", help="loss: inverse-frequency class weights | sampler | none.")] = "loss",
    quiet: Quiet = False, as_json: AsJson = False,
):
    """The paper's experiment: train a recogniser on real, real + synthetic (per rejection rule, and matched
    without it), over several seeds, score each class on real test videos, and say which changes are outside
    the noise (paired 95 % intervals).

    Example: survgen evaluate downstream --real data/train --test data/test --synthetic generated/rare --report reports/downstream
    """
    import dataclasses

    from survgen.evaluation.downstream import run_downstream
    from survgen.evaluation.report import write_downstream_report

    base = DOWNSTREAM  # run_downstream refuses a --report folder holding something else
    classifier = dataclasses.replace(
        base.classifier, preset=preset, image_size=image_size, clip_length=clip_length, clip_fps=clip_fps,
        balance=balance,
        train=dataclasses.replace(base.classifier.train, steps=steps, batch_size=batch_size, lr=lr,
                                  checkpoint_every=max(1, min(100, steps))))
    cfg = dataclasses.replace(base, seeds=list(seeds), rejection=list(rejection), without_rejection=without_rs,
                              negative_control=negative_control, codec_control=codec_control,
                              test_fraction=test_fraction, classifier=classifier)
    with training_progress(not quiet) as progress:
        results = run_downstream(real, synthetic, report, cfg, test=test, reference=reference_real,
                                 progress=progress)
    write_downstream_report(results, report, command=_command_line())
    say(f"report: {report / 'report.md'}")
    if as_json:
        typer.echo(json.dumps(results, indent=2))
        return

    show(_downstream_table(results, len(cfg.seeds)))
    verdict = results["verdict"]
    if verdict["passed"] is False and verdict.get("judged"):
        say(f"the positive control gained on {', '.join(verdict['judged'])} only: the generator is judged there "
            "(each arm's share of the control's gain is in the report), not on the other scores")
        return
    say({None: "no positive control (--reference-real DIR): the experiment has not shown it can see a gain",
         True: "the positive control passed: each arm's share of its gain is in the report",
         False: "the positive control did not pass: this experiment cannot judge the generator"}[verdict["passed"]])


def _downstream_table(results: dict, seeds: int) -> Table:
    """Each arm's headline scores and rare-class Jaccard, with the paired difference against real."""
    from survgen.classes import ClassVocabulary
    from survgen.evaluation.configs import BINARY_HEADLINE
    from survgen.evaluation.report import headline_name, judged_on, mean_std_text, signed

    summary, real = results["summary"], results["arms"][0]["name"]
    rare = sorted({c for arm in results["arms"] for c in arm.get("synthetic_clips", {})})
    table = Table(title=text(f"test videos: {results['test']['points']} time points ({seeds} seeds); "
                             "(Δ against real, paired: gain/loss outside the 95 % interval, ~ within noise, "
                             "? not judged: the positive control did not gain on it)"))
    binary = [k for k in BINARY_HEADLINE if k in summary[real]]  # a two-class task: the event's F1 (per video)
    vocabulary = ClassVocabulary.from_dict(results["vocabulary"])
    table.add_column("arm")
    for column in (["balanced acc.", "macro F1"] + [headline_name(k, vocabulary) for k in binary]
                   + [f"Jaccard {c}" for c in rare]):
        table.add_column(column, justify="right")
    controls = {a["name"] for a in results["arms"] if a.get("control")}
    for name, entry in summary.items():
        cells = [mean_std_text(entry[k]) for k in ["balanced_accuracy", "macro_f1"] + binary]
        for code in rare:
            cell = mean_std_text(entry["per_class"][code]["jaccard"])
            if name != real:
                d = entry["paired"][real]["per_class"][code]["jaccard"]
                shown = name in controls or judged_on(results["verdict"], f"Jaccard {code}")  # waits for the control
                said = dict(gain="gain", loss="loss").get(d["verdict"], "~") if shown else "?"
                cell += f" ({signed(d['mean'])} {said})"
            cells.append(cell)
        table.add_row(text(name), *cells)
    return table
