"""Generation with rejection sampling: the rule, determinism, the output folder, resume, and bad requests."""

import csv
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from survgen.classes import ClassVocabulary
from survgen.data.index import build_index
from survgen.diffusion.video_sampler import VideoSampler
from survgen.data.video import probe_video, read_frames
from survgen.generation.candidates import Candidates, accepted, candidate_seed
from survgen.generation.batch_size import automatic_batch_size, batch_for_memory
from survgen.generation.run import GenerationConfig, GenerationError, generate
from survgen.models.classifier import ClassifierConfig
from survgen.models.loading import load_video_model

G0, G3, G7 = 0, 3, 7


class ScriptedClassifier(nn.Module):
    """A stand-in judge with known outputs: call k (batch k) ranks `rankings[k % len]` (most probable first)."""

    def __init__(self, *rankings, stop_at_call=None, clip_length=16):
        super().__init__()
        self.config = ClassifierConfig(image_size=32, clip_length=clip_length)
        self.rankings, self.stop_at_call, self.calls, self.shapes = rankings, stop_at_call, 0, []
        self.anchor = nn.Parameter(torch.zeros(()), requires_grad=False)  # gives the judge a device

    def forward(self, x):
        if self.calls == self.stop_at_call:
            raise KeyboardInterrupt  # stands in for a kill in the middle of a run
        self.shapes.append(tuple(x.shape))
        logits = torch.zeros(8)
        for rank, c in enumerate(self.rankings[self.calls % len(self.rankings)]):
            logits[c] = 10.0 - 3 * rank
        self.calls += 1
        return logits.expand(len(x), -1)


@pytest.fixture(scope="module")
def video_model(temporal_run):
    return load_video_model(temporal_run)


def run(video_model, temporal_run, out, judge=None, **options):
    cfg = GenerationConfig(**{"classes": ["G7"], "n": 3, "batch_size": 2, "steps": 2, **options})
    loaded = (video_model, (judge, ClassVocabulary()) if judge is not None else None)
    return generate(temporal_run, out, cfg, classifier="scripted" if judge is not None else None, loaded=loaded)


def test_a_video_is_kept_iff_its_class_is_in_the_top_k():
    p = torch.tensor([0.05, 0.5, 0.1, 0.35])
    assert accepted(p, 1, 1) and not accepted(p, 3, 1)
    assert accepted(p, 3, 2) and not accepted(p, 2, 2)
    assert accepted(p, 2, 3) and not accepted(p, 0, 3)
    assert accepted(p, 0, 0)  # top-k 0: no rejection


def test_each_video_depends_only_on_its_seed(video_model):
    video_unet, spatial, run_info = video_model
    sampler = VideoSampler(video_unet, spatial, run_info.vocabulary)
    pair = sampler.sample([G7, G7], [11, 12], steps=2, num_frames=8)
    alone = sampler.sample([G7], [12], steps=2, num_frames=8)
    again = sampler.sample([G7], [12], steps=2, num_frames=8)
    assert pair.shape == (2, 8, 3, 64, 64) and pair.min() >= -1 and pair.max() <= 1
    assert torch.equal(alone, again)
    torch.testing.assert_close(pair[1], alone[0], atol=1e-4, rtol=0)  # batch-mates: float rounding only
    assert (pair[0] - pair[1]).abs().mean() > 1e-3
    dpm = sampler.sample([G7], [12], steps=2, num_frames=8, sampler="dpm++")
    assert not torch.equal(dpm, alone)


def test_rejection_keeps_only_recognised_videos_and_writes_a_mergeable_dataset(video_model, temporal_run, tmp_path):
    judge = ScriptedClassifier([G7, G3], *[[G3, G7]] * 8)  # only the first of 9 candidates is recognised
    out = tmp_path / "gen"
    manifest = run(video_model, temporal_run, out, judge, reject_topk=1, batch_size=1, max_candidates=9,
                   keep_rejected=True)
    kept = [v for v in manifest["videos"] if v["accepted"]]
    assert len(kept) == 1 and len(manifest["videos"]) == 9  # then the cap stops it
    summary = manifest["summary"]["per_class"]["G7"]
    assert summary == {"accepted": 1, "candidates": 9, "acceptance_rate": round(1 / 9, 4),
                       "complete": False}
    assert judge.shapes[0] == (1, 16, 3, 32, 32)  # resized to the classifier's input size
    first = manifest["videos"][0]
    for key in ("file", "class", "class_name", "prompt", "seed", "sampler", "steps", "guidance",
                "classifier_topk", "probability_of_class", "accepted"):
        assert key in first, key
    assert first["prompt"] == "action recognition task of returning/dropping the needle"
    assert first["seed"] == candidate_seed(0, G7, 0)
    assert manifest["model"]["temporal_sha256"] and len(manifest["model"]["temporal_sha256"]) == 64
    assert (out / kept[0]["file"]).exists() and kept[0]["file"].startswith("videos/")
    assert len(list((out / "rejected").glob("*.mkv"))) == 8
    assert (out / "contact_sheet.png").exists()
    # the kept videos form a dataset in the CSV layout that the loader reads like real data
    rows = list(csv.DictReader((out / "labels.csv").open()))
    assert [r["video"] for r in rows] == [kept[0]["file"]]
    index = build_index(out, clip_length=16)
    assert index.class_counts()[G7] == 1 and sum(index.class_counts().values()) == 1


def test_no_rejection_keeps_every_video(video_model, temporal_run, tmp_path):
    manifest = run(video_model, temporal_run, tmp_path / "gen", reject_topk=0, n=2, gif=True)
    assert [v["accepted"] for v in manifest["videos"]] == [True, True]
    assert len(list((tmp_path / "gen" / "videos").glob("*.gif"))) == 2


def test_the_dataset_format_is_lossless_by_default_and_a_preview_plays_for_people(video_model, temporal_run,
                                                                                 tmp_path):
    video_unet, spatial, run_info = video_model
    manifest = run(video_model, temporal_run, tmp_path / "gen", reject_topk=0, n=2, num_frames=8)
    first = manifest["videos"][0]
    assert first["file"] == "videos/G7_00000.mkv"
    cfg = GenerationConfig(**manifest["request"]["config"])
    candidates = Candidates(tmp_path, cfg, VideoSampler(video_unet, spatial, run_info.vocabulary), None,
                            run_info.vocabulary)
    sampled, _ = candidates.sample(G7, [v["seed"] for v in manifest["videos"]])  # the batch as generate made it
    np.testing.assert_array_equal(read_frames(tmp_path / "gen" / first["file"], range(8)), sampled[0])  # FFV1
    preview = probe_video(tmp_path / "gen" / "preview.mp4")
    assert preview.num_frames == 8 and preview.height > 2 * 64  # the two videos, one under the other
    players = run(video_model, temporal_run, tmp_path / "mp4", reject_topk=0, n=1, num_frames=8, video_format="mp4")
    assert players["videos"][0]["file"] == "videos/G7_00000.mp4"
    with pytest.raises(GenerationError, match="--format must be one of mkv, avi, mp4, got 'webm'"):
        run(video_model, temporal_run, tmp_path / "webm", video_format="webm")


def test_an_interrupted_run_resumes_to_exactly_n_videos_with_no_seed_twice(video_model, temporal_run, tmp_path):
    out = tmp_path / "gen"
    alternate = ([G7, G3], [G3, G0])  # every other batch is recognised
    with pytest.raises(KeyboardInterrupt):  # killed while judging the third batch
        run(video_model, temporal_run, out, ScriptedClassifier(*alternate, stop_at_call=2), n=4, reject_topk=1)
    before = json.loads((out / "manifest.json").read_text())["videos"]
    assert len(before) == 4  # two finished batches of two survive the kill
    manifest = run(video_model, temporal_run, out, ScriptedClassifier(*alternate), n=4, reject_topk=1)
    videos = manifest["videos"]
    assert videos[: len(before)] == before  # nothing recorded is regenerated or changed
    assert sum(v["accepted"] for v in videos) == 4
    seeds = [v["seed"] for v in videos]
    assert len(set(seeds)) == len(seeds)
    assert [v["candidate"] for v in videos] == list(range(len(videos)))
    assert len(list((out / "videos").glob("*.mkv"))) == 4


def test_bad_requests_are_refused_before_any_work(video_model, temporal_run, tmp_path):
    judge = ScriptedClassifier([G7])
    with pytest.raises(GenerationError, match="--n must be at least 1"):
        run(video_model, temporal_run, tmp_path / "a", judge, n=0)
    with pytest.raises(GenerationError, match="--guidance must be between"):
        run(video_model, temporal_run, tmp_path / "a", judge, guidance=-1)
    with pytest.raises(GenerationError, match="--steps must be between"):
        run(video_model, temporal_run, tmp_path / "a", judge, steps=0)
    with pytest.raises(GenerationError, match="needs --classifier"):
        run(video_model, temporal_run, tmp_path / "a", None, reject_topk=3)
    assert judge.calls == 0 and not (tmp_path / "a").exists()

    run(video_model, temporal_run, tmp_path / "b", judge, n=1)
    with pytest.raises(GenerationError, match=r"other options \(differs in: n\)"):
        run(video_model, temporal_run, tmp_path / "b", judge, n=2)
    (tmp_path / "c").mkdir()
    (tmp_path / "c" / "notes.txt").write_text("mine")
    with pytest.raises(GenerationError, match="not empty"):
        run(video_model, temporal_run, tmp_path / "c", judge)
    (tmp_path / "d").write_text("a file")
    with pytest.raises(GenerationError, match="--out .*d: is a file"):
        run(video_model, temporal_run, tmp_path / "d", judge)
    assert (tmp_path / "c" / "notes.txt").read_text() == "mine" and (tmp_path / "d").read_text() == "a file"


def labels(out):
    return [row["video"] for row in csv.DictReader((out / "labels.csv").open())]


def test_a_rerun_remakes_lost_and_damaged_videos_bit_for_bit(video_model, temporal_run, tmp_path, capsys):

    out = tmp_path / "gen"
    options = dict(reject_topk=0, n=3, num_frames=8, gif=True)
    first = run(video_model, temporal_run, out, **options)
    files = [v["file"] for v in first["videos"]]
    originals = {f: (out / f).read_bytes() for f in files}
    frames = {f: read_frames(out / f, range(8)) for f in files}
    (out / files[0]).unlink()  # deleted
    (out / files[1]).write_bytes(b"")  # emptied
    gif = (out / files[2]).with_suffix(".gif")
    gif_bytes = gif.read_bytes()
    gif.write_bytes(gif_bytes[: len(gif_bytes) // 3])  # cut short
    capsys.readouterr()

    again = run(video_model, temporal_run, out, **options)
    err = capsys.readouterr().err
    assert "3 of the 6 video files listed in manifest.json are missing or damaged" in err
    assert f"{files[0]} (missing)" in err and f"{files[1]} (empty (0 bytes))" in err
    assert f"{Path(files[2]).with_suffix('.gif')} (not a readable GIF" in err
    assert "regenerated 3 video(s) from their seeds" in err
    assert again["videos"] == first["videos"]  # same verdicts, same files: nothing new was needed
    for f in files:
        assert probe_video(out / f).num_frames == 8
        np.testing.assert_array_equal(read_frames(out / f, range(8)), frames[f])
        assert (out / f).read_bytes() == originals[f]  # the same bytes, not only the same frames
    assert gif.read_bytes() == gif_bytes
    assert labels(out) == files and sorted((out / "videos").glob("*.mkv")) == sorted(out / f for f in files)

    capsys.readouterr()
    run(video_model, temporal_run, out, **options)  # all whole now: nothing redone, nothing said
    assert "regenerat" not in capsys.readouterr().err


def test_a_remade_video_the_classifier_now_rejects_is_replaced_by_a_new_candidate(video_model, temporal_run,
                                                                                  tmp_path, capsys):
    out = tmp_path / "gen"
    options = dict(reject_topk=1, n=2, num_frames=8)
    first = run(video_model, temporal_run, out, ScriptedClassifier([G7, G3], clip_length=8), **options)
    files = [v["file"] for v in first["videos"]]
    assert [v["accepted"] for v in first["videos"]] == [True, True]
    (out / files[0]).write_bytes(b"")
    capsys.readouterr()

    # this time the remade batch is not recognised (only video 0 of it is rewritten), the next batch is
    again = run(video_model, temporal_run, out, ScriptedClassifier([G3, G0], [G7, G3], clip_length=8), **options)
    err = capsys.readouterr().err
    assert "regenerated 1 video(s)" in err and "another verdict" in err and "G7_00000 (rejected)" in err
    videos = again["videos"]
    assert [(v["candidate"], v["accepted"]) for v in videos] == [(0, False), (1, True), (2, True)]
    assert videos[0]["file"] is None and videos[0]["classifier_topk"][0]["class"] == "G3"
    assert not (out / files[0]).exists()  # the damaged copy of a video no longer kept is gone
    assert labels(out) == [files[1], videos[2]["file"]]
    assert sorted(p.name for p in (out / "videos").iterdir()) == ["G7_00001.mkv", "G7_00002.mkv"]
    assert again["summary"]["per_class"]["G7"]["accepted"] == 2


def test_a_class_the_model_never_trained_on_is_warned_about(video_model, temporal_run, tmp_path, capsys):
    from survgen.generation.run import warn_unseen_classes

    run(video_model, temporal_run, tmp_path / "gen", classes=["G3"], reject_topk=0, n=1, num_frames=4, steps=1)
    err = " ".join(capsys.readouterr().err.split())
    assert "warning:" in err and "trained on G7 only" in err and "class embedding for G3 never saw a clip" in err
    assert "survgen train-temporal" in err and "--class G3" in err
    assert warn_unseen_classes(temporal_run, video_model[2], [G7]) == []  # a trained class: no warning
    assert capsys.readouterr().err == ""


def test_a_classifier_of_other_classes_is_refused(video_model, temporal_run, tmp_path):
    other = (ScriptedClassifier([0]), ClassVocabulary(names=["idle", "cut"]))
    with pytest.raises(GenerationError, match="trained on classes"):
        generate(temporal_run, tmp_path / "g", GenerationConfig(), classifier="x",
                 loaded=(video_model, other))


def test_the_cli_generates_from_a_run_folder_and_a_rerun_continues_it(temporal_run, tmp_path):
    from typer.testing import CliRunner

    from survgen.cli.main import app

    def cli(out, *extra):
        return CliRunner().invoke(app, ["generate", "--model", str(temporal_run), "--class", "G7", "--reject-topk",
                                        "0", "--steps", "2", "--frames", "8", "--out", str(out), "--quiet", *extra])

    out = tmp_path / "gen"
    result = cli(out, "--n", "2")
    assert result.exit_code == 0, result.output
    assert result.stdout.strip().endswith(str(out))
    first = json.loads((out / "manifest.json").read_text())
    assert cli(out, "--n", "2").exit_code == 0  # already complete: nothing new
    assert json.loads((out / "manifest.json").read_text())["videos"] == first["videos"]
    result = cli(out, "--n", "3")
    assert result.exit_code == 2 and "differs in: n" in result.output
    result = cli(tmp_path / "other", "--n", "0")
    assert result.exit_code == 2 and "--n must be at least 1" in result.output


def test_an_exported_default_generates_with_its_own_classifier(synth_dataset, temporal_run, tmp_path):
    from survgen.generation.default import export_default
    from survgen.training.classifier import train_classifier
    from survgen.training.configs import ClassifierStageConfig
    from tests.conftest import fast_train

    classifier_run = tmp_path / "classifier"
    train_classifier(synth_dataset, classifier_run,
                     ClassifierStageConfig(image_size=32, clip_length=8, train=fast_train(steps=2, batch_size=4)))
    shipped = export_default(temporal_run, classifier_run, dest=tmp_path / "default")
    assert json.loads((shipped / "temporal" / "run.json").read_text())["parent"] == "../spatial"
    # the copy stands alone: generation needs neither the original runs nor the training data
    manifest = generate(shipped / "temporal", tmp_path / "gen", GenerationConfig(n=1, steps=2, reject_topk=8),
                        classifier=shipped / "classifier")
    assert manifest["summary"]["complete"] and manifest["videos"][0]["classifier_topk"]


def test_the_shipped_default_generates_with_no_model_argument(tmp_path):
    from typer.testing import CliRunner

    from survgen.cli.main import app

    out = tmp_path / "gen"
    result = CliRunner().invoke(app, ["generate", "--class", "G7", "--n", "1", "--steps", "3", "--max-candidates", "2",
                                      "--out", str(out), "--quiet"])
    assert result.exit_code == 0, result.output
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["request"]["model"].endswith("assets/default/temporal")
    assert manifest["request"]["classifier"].endswith("assets/default/classifier")
    assert all(len(v["classifier_topk"]) == 3 for v in manifest["videos"])


def test_the_automatic_batch_fits_the_memory_share_and_the_cpu_cores(monkeypatch):
    gib = 1 << 30
    assert batch_for_memory(10 * gib, gib, cap=64) == 8  # 85 % of 10 GiB holds 8 videos of 1 GiB
    assert batch_for_memory(10 * gib, gib, cap=5) == 5
    assert batch_for_memory(gib, 3 * gib, cap=64) == 1  # one video always, even when it does not fit
    monkeypatch.setattr(torch, "get_num_threads", lambda: 3)
    assert automatic_batch_size(torch.device("cpu"), sample_one=None, n=100) == 6  # 2 videos per core
    assert automatic_batch_size(torch.device("cpu"), sample_one=None, n=4) == 4  # never more than --n


def test_an_automatic_batch_size_is_recorded_and_a_rerun_takes_it(video_model, temporal_run, tmp_path, monkeypatch):
    out = tmp_path / "gen"
    monkeypatch.setattr(torch, "get_num_threads", lambda: 1)
    first = run(video_model, temporal_run, out, batch_size=None, n=3, reject_topk=0)
    assert first["request"]["config"]["batch_size"] == 2  # 2 videos per core, 1 core
    assert [v["batch_size"] for v in first["videos"]] == [2, 2, 2]  # the last block's second video is surplus
    monkeypatch.setattr(torch, "get_num_threads", lambda: 2)  # auto would now be 3: the folder says 2
    more = run(video_model, temporal_run, out, batch_size=None, n=3, reject_topk=0)
    assert more["request"]["config"]["batch_size"] == 2 and more["videos"] == first["videos"]
