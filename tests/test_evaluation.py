"""The downstream test and its report: scores against hand-computed values, the arms, and a run end to end."""

import json

import pytest

from survgen.classes import ClassVocabulary
from survgen.evaluation.configs import DownstreamConfig, DownstreamError, rejection_rule
from survgen.evaluation.downstream import mean_std, run_downstream, scores, summarise, time_points
from survgen.generation.run import GenerationConfig, generate
from survgen.training.configs import ClassifierStageConfig

BINARY = ClassVocabulary(names=("no bleeding", "staple line bleeding"))


def test_jaccard_is_per_video_then_averaged_and_f1_pools_all_points():
    vocabulary = ClassVocabulary(names=("a", "b", "c"))
    # video v1: truth a a b b, predicted a b b b -> class a: 1/2, class b: 2/3, class c: absent (skipped)
    # video v2: truth c c a,   predicted c a a   -> class a: 1/2, class b: absent, class c: 1/2
    truth = [0, 0, 1, 1, 2, 2, 0]
    predicted = [0, 1, 1, 1, 2, 0, 0]
    videos = ["v1"] * 4 + ["v2"] * 3
    s = scores(truth, predicted, videos, vocabulary)
    a, b, c = (s["per_class"][k] for k in ("G0", "G1", "G2"))
    assert a["jaccard"] == pytest.approx((1 / 2 + 1 / 2) / 2)
    assert b["jaccard"] == pytest.approx(2 / 3)  # v2 has no b in truth nor prediction: not averaged in
    assert c["jaccard"] == pytest.approx(1 / 2)
    # pooled: a has TP 2, FP 1, FN 1 -> F1 4/6; b TP 2, FP 1, FN 0 -> 4/5; c TP 1, FP 0, FN 1 -> 2/3
    assert (a["f1"], b["f1"], c["f1"]) == pytest.approx((4 / 6, 4 / 5, 2 / 3))
    assert s["balanced_accuracy"] == pytest.approx((2 / 3 + 1 + 1 / 2) / 3)
    assert s["macro_f1"] == pytest.approx((4 / 6 + 4 / 5 + 2 / 3) / 3)
    assert s["accuracy"] == pytest.approx(5 / 7)
    assert s["confusion"][0] == [2, 1, 0] and "f1_positive" not in s


def test_a_class_predicted_where_it_never_occurs_scores_zero_jaccard_in_that_video():
    vocabulary = ClassVocabulary(names=("a", "b"))
    s = scores([0, 0, 1, 0], [1, 0, 1, 0], ["v1", "v1", "v2", "v2"], vocabulary)
    assert s["per_class"]["G1"]["jaccard"] == pytest.approx((0 + 1) / 2)


def test_binary_tasks_report_the_positive_class_f1():
    s = scores([0, 0, 0, 1, 1], [0, 0, 1, 1, 0], ["v"] * 5, BINARY)
    assert s["f1_positive"] == pytest.approx(2 * 1 / (2 * 1 + 1 + 1))
    assert s["balanced_accuracy"] == pytest.approx((2 / 3 + 1 / 2) / 2)


def test_video_level_tasks_are_also_scored_per_video_by_majority_vote():
    # v1, v2 negative; v3, v4 bleeding. Votes: v1 0 (1 of 3 says 1), v2 1 (tie goes to the event),
    # v3 1 (2 of 3), v4 0 (0 of 2).
    truth = [0, 0, 0] + [0, 0] + [1, 1, 1] + [1, 1]
    predicted = [0, 1, 0] + [1, 0] + [1, 0, 1] + [0, 0]
    videos = ["v1"] * 3 + ["v2"] * 2 + ["v3"] * 3 + ["v4"] * 2
    s = scores(truth, predicted, videos, BINARY)
    assert s["video_balanced_accuracy"] == pytest.approx((1 / 2 + 1 / 2) / 2)
    assert s["video_f1_positive"] == pytest.approx(2 * 1 / (2 * 1 + 1 + 1))
    assert s["balanced_accuracy"] == pytest.approx((3 / 5 + 2 / 5) / 2)  # per time point: not the same
    mixed = scores([0, 1], [0, 1], ["v", "v"], BINARY)  # a video with two labels: no per-video reading
    assert "video_balanced_accuracy" not in mixed and mixed["f1_positive"] == 1.0


def test_mean_std_is_the_sample_standard_deviation_over_defined_values():
    assert mean_std([1.0, 2.0, 3.0, None]) == {"mean": 2.0, "std": 1.0, "n": 3}
    assert mean_std([None]) == {"mean": None, "std": None, "n": 0}


def test_test_points_sit_on_the_label_grid_with_clips_inside_the_video(synth_dataset):
    from survgen.data.index import build_index

    index = build_index(synth_dataset)
    warnings = []
    points = time_points(index, 6, warnings)
    assert not warnings and points
    for p in points[:200]:
        n = index.videos[p.video].num_frames
        assert p.time % 6 == 0 and len(p.frames) == 16 and p.frames[0] >= 0 and p.frames[-1] < n
        segment = next(s for s in index.segments if s.video == p.video and s.start <= p.time < s.end)
        assert p.class_id == segment.class_id
        if 8 <= p.time <= n - 8:
            assert p.frames[0] == p.time - 8  # centred where the video allows it


def test_summary_gives_the_change_against_real_only():
    vocabulary = ClassVocabulary(names=("a", "b", "c"))

    def run(arm, seed, j):
        per_class = {"G0": {"jaccard": j, "f1": j}, "G1": {"jaccard": None, "f1": 0.5}, "G2": {"jaccard": 0, "f1": 0}}
        return {"arm": arm, "seed": seed,
                "test": {"accuracy": j, "balanced_accuracy": j, "macro_f1": j, "per_class": per_class}}

    class Arm:
        def __init__(self, name):
            self.name, self.source = name, {}

    summary = summarise([run("real", 0, 0.2), run("real", 1, 0.4), run("plus", 0, 0.5), run("plus", 1, 0.7)],
                        [Arm("real"), Arm("plus")], vocabulary)
    assert summary["plus"]["per_class"]["G0"]["jaccard"]["delta"] == pytest.approx(0.3)
    assert summary["plus"]["per_class"]["G1"]["jaccard"]["delta"] is None
    assert summary["real"]["balanced_accuracy"]["mean"] == pytest.approx(0.3)
    paired = summary["plus"]["paired"]["real"]["per_class"]["G0"]["jaccard"]
    assert paired["mean"] == pytest.approx(0.3) and paired["n"] == 2 and paired["verdict"] == "gain"  # no spread
    assert summary["plus"]["paired"]["real"]["per_class"]["G1"]["jaccard"]["verdict"] == "too few seeds"


# ---------------------------------------------------------------- end to end
@pytest.fixture(scope="module")
def generated(temporal_run, tmp_path_factory):
    """A generation folder for G7: judged by a scripted classifier that rejects every other candidate."""
    from test_generation import ScriptedClassifier

    from survgen.models.loading import load_video_model

    judge = ScriptedClassifier([7, 0, 1], [0, 1, 2])  # G7 in the top-3, then not
    out = tmp_path_factory.mktemp("gen") / "rare"
    cfg = GenerationConfig(classes=["G7"], n=2, batch_size=1, steps=2, keep_rejected=True)
    generate(temporal_run, out, cfg, classifier="scripted",
             loaded=(load_video_model(temporal_run), (judge, ClassVocabulary())))
    return out


def tiny_config(**options) -> DownstreamConfig:
    from tests.conftest import fast_train

    classifier = ClassifierStageConfig(image_size=16, val_fraction=0.0, train=fast_train(steps=2, batch_size=4))
    return DownstreamConfig(**{"seeds": [0, 1], "test_fraction": 0.25, "classifier": classifier,
                               "rejection": ["top-1", "p>=0.99"], **options})


def test_the_runner_trains_every_arm_and_seed_and_writes_a_report(synth_dataset, generated, tmp_path):
    from survgen.evaluation.report import write_downstream_report

    out = tmp_path / "downstream"
    results = run_downstream(synth_dataset, [generated], out, tiny_config())
    names = [a["name"] for a in results["arms"]]
    assert names == ["real", "real + rare (top-1 RS)", "real + rare (no RS, as many as top-1)"]
    # the scripted judge ranks G7 first for candidates 0 and 2 and not at all for 1, at probability ~0.95
    assert [a["synthetic_clips"] for a in results["arms"][1:]] == [{"G7": 2}] * 2
    assert any("no candidate passes p>=0.99" in w for w in results["warnings"])
    # the rule's arm takes the candidates that pass it; the arm without rejection the first candidates
    # (accepted 0, rejected 1), as many as the rule kept
    rs = (out / "runs" / "rare-top-1-rs.csv").read_text().splitlines()[1:]
    assert [row.split(",")[0] for row in rs] == ["videos/G7_00000.mkv", "videos/G7_00002.mkv"]
    no_rs = (out / "runs" / "rare-no-rs-as-many-as-top-1.csv").read_text().splitlines()[1:]
    assert [row.split(",")[0] for row in no_rs] == ["videos/G7_00000.mkv", "rejected/G7_00001.mkv"]
    assert len(results["runs"]) == 6 and set(results["summary"]) == set(names)
    assert results["runs"][0]["train_clips"] + 2 == results["runs"][2]["train_clips"]
    # paired differences by seed: every arm against real, a rule's arm also against its matched arm
    top1 = results["summary"]["real + rare (top-1 RS)"]["paired"]
    assert set(top1) == {"real", "real + rare (no RS, as many as top-1)"}
    assert top1["real"]["balanced_accuracy"]["n"] == 2
    # the test videos are recordings no arm trained on, and the generator's data held them: a warning says so
    assert not set(results["test"]["videos"]) & set(results["train"]["videos"])
    assert any("may have seen the test set" in w for w in results["warnings"])
    for arm in results["arms"]:
        for seed in (0, 1):
            record = json.loads((out / "runs" / arm["slug"] / f"seed-{seed}" / "test.json").read_text())
            assert len(record["predictions"]) == results["test"]["points"]

    report = write_downstream_report(results, out, command="survgen evaluate downstream ...")
    text = report.read_text()
    for picture in ("scores_jaccard.png", "scores_f1.png", "class_balance_real.png",
                    "class_balance_with_synthetic.png", "acceptance_rare.png", "real_vs_generated_rare.png",
                    "generated_rare_G7.gif"):
        assert (out / picture).stat().st_size > 0 and picture in text
    balanced = results["summary"]["real"]["balanced_accuracy"]
    assert f"{balanced['mean']:.3f} ± {balanced['std']:.3f}" in text  # the report shows this run's numbers
    assert "Is the change outside the noise?" in text and "Jaccard G7" in text

    # a second run of the same request retrains nothing; another request into the folder is refused
    again = run_downstream(synth_dataset, [generated], out, tiny_config())
    assert again["runs"] == results["runs"]
    with pytest.raises(DownstreamError, match="other options"):
        run_downstream(synth_dataset, [generated], out, tiny_config(seeds=[5]))


@pytest.fixture(scope="module")
def generated_two(temporal_run, tmp_path_factory):
    """A generation folder for G1 and G7, every candidate accepted (the scripted judge ranks G1, G7, G0)."""
    from test_generation import ScriptedClassifier

    from survgen.models.loading import load_video_model

    out = tmp_path_factory.mktemp("gen") / "rare"
    cfg = GenerationConfig(classes=["G1", "G7"], n=2, batch_size=1, steps=2)
    generate(temporal_run, out, cfg, classifier="scripted",
             loaded=(load_video_model(temporal_run), (ScriptedClassifier([1, 7, 0]), ClassVocabulary())))
    return out


POSITIVE = "real + held-out real (positive control)"
CODEC = "real + held-out real, encoded as generated (codec control)"
NEGATIVE = "real + rare (top-3 RS), labels rotated (negative control)"


def test_the_controls_add_held_out_real_clips_their_re_encoding_and_mislabelled_videos(
        synth_dataset, generated_two, tmp_path):
    from survgen.data.synth import synthesize_dataset
    from survgen.data.video import probe_video, read_frames
    from survgen.evaluation.report import write_downstream_report

    reference = synthesize_dataset(tmp_path / "reference", num_videos=4, frames_per_video=160, seed=3,
                                   rare_share=0.2)
    out = tmp_path / "downstream"
    cfg = tiny_config(rejection=["top-3"], without_rejection=False)
    results = run_downstream(synth_dataset, [generated_two], out, cfg, reference=reference)
    arms = {a["name"]: a for a in results["arms"]}
    assert list(arms) == ["real", POSITIVE, CODEC, NEGATIVE, "real + rare (top-3 RS)"]
    # each control adds as many clips per class as the first synthetic arm
    for name in (POSITIVE, CODEC, NEGATIVE):
        assert arms[name]["synthetic_clips"] == arms["real + rare (top-3 RS)"]["synthetic_clips"] == {"G1": 2, "G7": 2}
    assert arms[POSITIVE]["control"] == "positive" and arms[POSITIVE]["folder"] == str(reference)
    assert arms[NEGATIVE]["labelled_as"] == {"G1": "G7", "G7": "G1"}
    rows = (out / "runs" / "controls" / "negative.csv").read_text().splitlines()[1:]
    assert all(row.split(",")[-1] == ("7" if "/G1_" in row else "1") for row in rows) and len(rows) == 4
    # the codec control holds the positive control's clips, written as generate writes its videos
    codec = sorted((out / "runs" / "controls" / "codec").glob("*.mkv"))
    generated_frames = read_frames(generated_two / "videos" / "G1_00000.mkv", range(16))
    assert len(codec) == 4 and read_frames(codec[0], range(16)).shape == generated_frames.shape
    # generate writes lossless FFV1, so the codec control holds the held-out recordings' own pixels
    real_frames = {frame.tobytes() for video in sorted(reference.rglob("video_left.avi"))
                   for frame in read_frames(video, range(probe_video(video).num_frames))}
    assert all(frame.tobytes() in real_frames for video in codec for frame in read_frames(video, range(16)))
    positive = json.loads((out / "runs" / "control-positive" / "seed-0" / "run.json").read_text())
    assert positive  # the control trained like every arm
    # the verdict: a 2-step recogniser's control gains on no score, so the arms are not judged
    verdict = results["verdict"]
    assert verdict["positive_control"] == POSITIVE and verdict["scores"] == ["Jaccard G1", "Jaccard G7"]
    # (a class no test point and no prediction holds has no Jaccard index, and so no detectable effect)
    assert set(verdict["minimum_detectable_effect"]) <= {"Jaccard G1", "Jaccard G7"}
    assert all(d["effect"] >= 0 and d["seeds"] == 2 for d in verdict["minimum_detectable_effect"].values())
    assert verdict["negative_control"]["arm"] == NEGATIVE and verdict["codec_control"]["against"] == POSITIVE
    if not verdict["judged"]:
        assert "fractions" not in verdict
        text = write_downstream_report(results, out).read_text()
        assert "the experiment cannot judge the generator" in text and "not judged" in text

    with pytest.raises(DownstreamError, match="a video of the real training or test data"):
        run_downstream(synth_dataset, [generated_two], tmp_path / "again", cfg, reference=synth_dataset)


def _runs(gains: dict[str, list[float]]) -> dict[str, dict[int, dict]]:
    """Per arm, per seed, test scores whose G1 Jaccard is real's (0.3 + seed noise) plus the arm's gain."""
    noise = [0.0, 0.02, -0.01, 0.03, -0.02]
    return {arm: {s: {"per_class": {"G1": {"jaccard": 0.3 + noise[s] + g[s]}}} for s in range(5)}
            for arm, g in gains.items()}


def test_the_verdict_judges_only_once_the_positive_control_passes():
    from survgen.evaluation.verdict import judge

    arms = [{"name": "real"}, {"name": "control", "control": "positive"},
            {"name": "wrong", "control": "negative", "labelled_as": {"G1": "G6"}}, {"name": "generator"}]
    control = [0.20, 0.22, 0.18, 0.21, 0.19]
    runs = _runs({"real": [0] * 5, "control": control, "wrong": [-0.1, -0.12, -0.09, -0.11, -0.1],
                  "generator": [0.5 * c for c in control]})
    verdict = judge(runs, arms, ["G1"], binary=False)
    assert verdict["passed"] and verdict["negative_control"]["shows_harm"]
    half = verdict["fractions"]["generator"]["Jaccard G1"]
    # the generator's gain is half the control's seed by seed: the ratio and its whole interval are 0.5
    assert half["ratio"] == pytest.approx(0.5) and half["low"] == pytest.approx(0.5) and half["high"] == pytest.approx(0.5)
    detectable = verdict["minimum_detectable_effect"]["Jaccard G1"]
    assert detectable["seeds"] == 5 and 0 < detectable["effect"] < 0.2 and detectable["seeds_for_control_gain"] >= 2

    noisy = _runs({"real": [0] * 5, "control": [0.3, -0.25, 0.2, -0.3, 0.1], "wrong": [0] * 5,
                   "generator": [0.1] * 5})
    verdict = judge(noisy, arms, ["G1"], binary=False)
    assert verdict["passed"] is False and "fractions" not in verdict
    assert not verdict["negative_control"]["shows_harm"]
    assert judge(noisy, [{"name": "real"}, {"name": "generator"}], ["G1"], binary=False)["passed"] is None


def test_the_verdict_judges_the_scores_where_the_positive_control_gains_and_only_those():
    from survgen.evaluation.report import _noise_section, _verdict_section
    from survgen.evaluation.verdict import judge

    g1, g6 = _runs({"real": [0] * 5, "control": [0.20, 0.22, 0.18, 0.21, 0.19], "generator": [0.1] * 5}), \
        _runs({"real": [0] * 5, "control": [0.3, -0.25, 0.2, -0.3, 0.1], "generator": [0.1] * 5})
    runs = {arm: {s: {"per_class": {"G1": g1[arm][s]["per_class"]["G1"], "G6": g6[arm][s]["per_class"]["G1"]}}
                  for s in range(5)} for arm in g1}
    arms = [{"name": "real"}, {"name": "control", "control": "positive"}, {"name": "generator"}]
    verdict = judge(runs, arms, ["G1", "G6"], binary=False)
    assert verdict["passed"] is False and verdict["judged"] == ["Jaccard G1"]
    assert list(verdict["fractions"]["generator"]) == ["Jaccard G1"]  # no share of a gain the control lacks
    text = "\n".join(_verdict_section({"verdict": verdict}))
    assert "**In part: on Jaccard G1, not on Jaccard G6.**" in text and "cannot judge" not in text
    d = {"mean": 0.1, "low": 0.05, "high": 0.15, "n": 5, "verdict": "gain"}
    paired = {"per_class": {"G1": {"jaccard": d}, "G6": {"jaccard": d}}, "balanced_accuracy": d}
    results = {"verdict": verdict, "summary": {"generator": {"paired": {"real": paired}}},
               "arms": [{"name": "real"}, {"name": "generator", "synthetic_clips": {"G1": 2, "G6": 2}}]}
    rows = [line for line in "\n".join(_noise_section(results, ClassVocabulary())).splitlines()
            if line.startswith("| generator")]
    assert [row.split("|")[3].strip() + ": " + row.split("|")[-2].strip() for row in rows] == [
        "Jaccard G1: gain", "Jaccard G6: not judged", "balanced accuracy: not judged"]


def test_fieller_intervals_and_the_minimum_detectable_effect():
    from scipy import stats

    from survgen.evaluation.paired import minimum_detectable_effect, ratio_of_gains, seeds_needed, t_quantile

    for df in (1, 4, 29, 31, 200):
        assert t_quantile(0.8, df) == pytest.approx(stats.t.ppf(0.8, df), abs=5e-4)
    control = {s: 0.2 + 0.02 * (s % 3) for s in range(6)}
    arm = {s: 0.6 * c + 0.01 * (-1) ** s for s, c in control.items()}
    r = ratio_of_gains(arm, control)
    assert r["low"] < r["ratio"] < r["high"] and r["ratio"] == pytest.approx(sum(arm.values()) / sum(control.values()))
    # a control within noise leaves the ratio's interval unbounded
    assert ratio_of_gains(arm, {0: 0.1, 1: -0.1, 2: 0.05, 3: -0.02})["low"] is None
    assert minimum_detectable_effect(0.1, 5) == pytest.approx((stats.t.ppf(0.975, 4) + stats.t.ppf(0.8, 4)) * 0.1 / 5**0.5, abs=1e-3)
    n = seeds_needed(0.1, 0.08)
    assert minimum_detectable_effect(0.1, n) <= 0.08 < minimum_detectable_effect(0.1, n - 1)
    assert seeds_needed(0.1, -0.01) is None


def test_rejection_rules_read_the_candidates_record():
    record = {"class": "G7", "classifier_topk": [{"class": "G1", "probability": 0.6}, {"class": "G7", "probability": 0.3}],
              "probability_of_class": 0.3}
    assert rejection_rule("top-2")(record) and rejection_rule("top-3")(record) and not rejection_rule("top-1")(record)
    assert rejection_rule("p>=0.3")(record) and not rejection_rule("p>=.5")(record)
    for bad in ("top-0", "top3", "p>0.5", "p>=2"):
        with pytest.raises(ValueError, match="unknown rejection rule"):
            rejection_rule(bad)


def test_paired_intervals_are_students_t_and_say_when_a_change_is_outside_the_noise():
    from scipy import stats

    from survgen.evaluation.paired import paired_difference, t975

    for df in (1, 4, 29, 31, 200):
        assert t975(df) == pytest.approx(stats.t.ppf(0.975, df), abs=5e-4)
    real = {0: 0.50, 1: 0.60, 2: 0.55, 3: 0.40, 4: 0.45}
    gain = paired_difference({s: v + 0.1 + 0.01 * s for s, v in real.items()}, real)
    d = [0.1 + 0.01 * s for s in range(5)]
    low, high = stats.t.interval(0.95, 4, loc=sum(d) / 5, scale=stats.sem(d))
    assert (gain["low"], gain["high"]) == (pytest.approx(low, abs=1e-3), pytest.approx(high, abs=1e-3))
    assert gain["verdict"] == "gain" and gain["n"] == 5
    noisy = paired_difference({0: 0.6, 1: 0.5, 2: 0.6, 3: 0.35, 4: 0.45}, real)
    assert noisy["verdict"] == "within noise" and noisy["low"] < 0 < noisy["high"]
    assert paired_difference({0: 0.7, 1: None}, {0: 0.5, 1: 0.5})["verdict"] == "too few seeds"


def test_bad_requests_are_refused_with_the_fix(synth_dataset, tmp_path):
    with pytest.raises(DownstreamError, match="no manifest.json"):
        run_downstream(synth_dataset, [synth_dataset], tmp_path / "a", tiny_config())
    with pytest.raises(DownstreamError, match="shares video files"):
        run_downstream(synth_dataset, [], tmp_path / "b", tiny_config(), test=synth_dataset)
    with pytest.raises(DownstreamError, match="seeds repeat"):
        run_downstream(synth_dataset, [], tmp_path / "c", tiny_config(seeds=[1, 1]))
    with pytest.raises(DownstreamError, match="unknown rejection rule 'top3'"):
        run_downstream(synth_dataset, [], tmp_path / "d", tiny_config(rejection=["top3"]))


# ---------------------------------------------------------------- quality
def test_quality_of_a_set_against_itself_is_perfect_and_the_extractor_is_named(generated, tmp_path):
    from survgen.evaluation.features import ClassifierFeatures
    from survgen.evaluation.quality import Extractors, QualityConfig, evaluate_quality
    from survgen.evaluation.report import write_quality_report
    from survgen.models.classifier import ClassifierConfig
    from survgen.models.loading import build_classifier

    own = ClassifierFeatures(build_classifier(ClassifierConfig.preset("tiny", image_size=16)), "random tiny classifier")
    extractors = Extractors(frames=own, cmmd=own, clips=own)
    # the generated folder is a dataset too: compared with itself every frame and clip is drawn, so the sets are equal
    results = evaluate_quality(generated, generated, extractors, QualityConfig(kid_subsets=5), progress=False)
    g7 = results["per_class"]["G7"]
    assert g7["frames"] == {"real": 32, "fake": 32} and g7["clips"] == {"real": 2, "fake": 2}
    assert abs(g7["fid"]) < 1e-3 and abs(g7["cmmd"]) < 1e-6 and g7["prdc"]["coverage"] == 1.0
    assert results["extractors"]["fvd"] == "random tiny classifier" and results["overall"] is None
    assert any(w.startswith("FVD") for w in g7["warnings"])  # 2 clips: the report must say the number means little
    report = write_quality_report(results, tmp_path, command="survgen evaluate quality ...").read_text()
    assert "random tiny classifier" in report and "not comparable" in report and f"{g7['fid']:.2f}" in report
    assert (tmp_path / "generated_rare_G7.gif").exists()
    # the floor: two halves of the real recordings (one video each here) compared in the same way
    assert g7["floor"]["recordings"] == [1, 1] and g7["floor"]["frames"] == {"real": 16, "fake": 16}
    assert "G7 floor: real vs real (1 / 1 recordings)" in report
    capped = evaluate_quality(generated, generated, extractors, QualityConfig(kid_subsets=5, per_recording=4,
                                                                             floor=False))
    assert capped["per_class"]["G7"]["frames"] == {"real": 8, "fake": 8} and "floor" not in capped["per_class"]["G7"]
    assert capped["per_class"]["G7"]["clips"] == {"real": 2, "fake": 2}  # one 16-frame clip per video anyway


def test_the_evaluate_commands_write_reports_and_refuse_bad_input(synth_dataset, generated, tmp_path):
    from typer.testing import CliRunner

    from survgen.cli.main import app

    runner = CliRunner()
    result = runner.invoke(app, ["evaluate", "quality", "--real", str(generated), "--fake", str(generated),
                                 "--report", str(tmp_path / "q"), "--max-frames", "16", "--quiet"])
    assert result.exit_code == 0, result.output
    quality = json.loads((tmp_path / "q" / "quality.json").read_text())
    assert "shipped" in quality["extractors"]["cmmd"] or "assets/default/classifier" in quality["extractors"]["cmmd"]
    assert quality["per_class"]["G7"]["frames"]["fake"] == 16
    assert "FID" in result.stdout and "report.md" in result.stderr  # the table is the result
    again = runner.invoke(app, ["evaluate", "quality", "--real", str(generated), "--fake", str(generated),
                                "--report", str(tmp_path / "q"), "--max-frames", "16", "--quiet", "--json"])
    assert again.exit_code == 0, again.output  # a re-run replaces its own report
    assert json.loads(again.stdout)["per_class"] == json.loads((tmp_path / "q" / "quality.json").read_text())["per_class"]

    result = runner.invoke(app, ["evaluate", "downstream", "--real", str(synth_dataset), "--synthetic", str(generated),
                                 "--report", str(tmp_path / "d"), "--seed", "0", "--steps", "1", "--batch-size", "2",
                                 "--image-size", "16", "--test-fraction", "0.25", "--no-without-rs", "--quiet"])
    assert result.exit_code == 0, result.output
    assert (tmp_path / "d" / "report.md").exists() and "real + rare (top-3 RS)" in result.output

    result = runner.invoke(app, ["evaluate", "quality", "--real", str(tmp_path / "nowhere"), "--fake", str(generated),
                                 "--report", str(tmp_path / "q2")])
    assert result.exit_code == 2 and "nowhere: no such folder" in " ".join(result.output.split())  # rich wraps
    result = runner.invoke(app, ["evaluate", "downstream", "--real", str(synth_dataset), "--synthetic", str(generated),
                                 "--report", str(tmp_path / "q")])  # a folder holding something else
    assert result.exit_code == 2 and "has no downstream.json" in " ".join(result.output.split())
