"""The video classifier of rejection sampling: the network, its training stage and the two commands.

Every run here is tiny (32 px, 8-frame clips, a few dozen steps) so the file stays fast on a CPU.
"""

import json

import numpy as np
import pytest
import torch
from safetensors.torch import load_file
from typer.testing import CliRunner

from survgen.classes import ClassVocabulary
from survgen.cli.main import app
from survgen.config import config_from_dict, config_to_dict
from survgen.data.index import build_index
from survgen.data.video import write_video
from survgen.models.classifier import ClassifierConfig
from survgen.models.classify import ClipTooShortError, classify_videos
from survgen.models.loading import build_classifier, load_classifier
from survgen.runs import RunFolderError, RunInfo, read_run
from survgen.training.classifier import augment_clips, balanced_order, class_weights, read_validation, train_classifier
from survgen.training.configs import ClassifierStageConfig
from tests.conftest import fast_train

SMALL = dict(image_size=32, clip_length=8)
runner = CliRunner()


def invoke(*args):
    return runner.invoke(app, [str(a) for a in args], catch_exceptions=False)


def small_config(**train) -> ClassifierStageConfig:
    return ClassifierStageConfig(**SMALL, train=fast_train(**{"batch_size": 8, **train}))


# ---------------------------------------------------------------- the network
def test_logits_and_features_have_the_documented_shapes():
    model = build_classifier(ClassifierConfig(num_classes=5, **SMALL)).eval()
    clips = torch.rand(2, 8, 3, 32, 32) * 2 - 1
    assert model(clips).shape == (2, 5)
    assert model.features(clips).shape == (2, model.feature_dim) == (2, 128)
    # awkward inputs: one frame, three frames, a non-square frame
    for shape in ((1, 1, 3, 32, 32), (3, 3, 3, 24, 40)):
        assert model(torch.zeros(shape)).shape == (shape[0], 5)
    with pytest.raises(ValueError, match=r"\(b, f, 3, H, W\)"):
        model(torch.zeros(2, 3, 8, 32, 32))


def test_presets_and_config_round_trip():
    config = ClassifierConfig.preset("r3d18", num_classes=8)
    assert config.widths == (64, 128, 256, 512) and config.image_size == 112
    assert config_from_dict(ClassifierConfig, json.loads(json.dumps(config_to_dict(config)))) == config
    # torchvision's r3d_18 (400 classes: 33,371,472 parameters) with an 8-class head; GroupNorm has
    # BatchNorm's affine parameter count
    assert sum(p.numel() for p in build_classifier(config).parameters()) == 33_371_472 - 400 * 513 + 8 * 513
    with pytest.raises(ValueError, match="unknown classifier preset"):
        ClassifierConfig.preset("r3d50")


def test_x3d_has_the_papers_size_and_takes_awkward_clips():
    config = ClassifierConfig.preset("x3d-xs", num_classes=400)
    assert (config.arch, config.depths, config.image_size) == ("x3d", (3, 5, 11, 7), 160)
    # X3D-XS/S/M: 3.8M parameters with the 400-class Kinetics head (Feichtenhofer 2020, Table 4)
    assert 3.7e6 < sum(p.numel() for p in build_classifier(config).parameters()) < 3.85e6
    model = build_classifier(ClassifierConfig.preset("x3d-xs", num_classes=3, image_size=40)).eval()
    for shape in ((1, 1, 3, 40, 40), (2, 5, 3, 36, 44)):
        clips = torch.rand(shape) * 2 - 1
        assert model(clips).shape == (shape[0], 3) and model.features(clips).shape == (shape[0], 2048)
    with pytest.raises(ValueError, match=r"\(b, f, 3, H, W\)"):
        model(torch.zeros(2, 3, 8, 32, 32))
    with pytest.raises(ValueError, match="arch must be one of r3d, x3d"):
        ClassifierConfig(arch="x4d")


@pytest.mark.parametrize("shape, kernel, stride, padding", [
    ((2, 5, 3, 7, 6), 3, (1, 2, 2), 1),  # X3D's strided block, odd sizes the stride does not divide
    ((3, 4, 6, 5, 5), 3, 1, 1),
    ((2, 6, 7, 3, 4), (5, 1, 1), 1, (2, 0, 0)),  # X3D's temporal stem
    ((1, 3, 5, 9, 8), (3, 2, 3), (2, 3, 1), (0, 1, 2)),
])
@pytest.mark.parametrize("channels_last", [False, True])
def test_channelwise_convolution_matches_conv3d_forward_and_backward(shape, kernel, stride, padding, channels_last):
    from survgen.models.channelwise import ChannelwiseConv3d

    torch.manual_seed(0)
    fast = ChannelwiseConv3d(shape[1], kernel, stride=stride, padding=padding).double()
    reference = torch.nn.Conv3d(shape[1], shape[1], kernel, stride=stride, padding=padding, groups=shape[1],
                                bias=False).double()
    reference.load_state_dict(fast.state_dict())
    x = torch.randn(shape, dtype=torch.float64)
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last_3d)
    outs, grads = [], []
    for conv in (fast, reference):
        leaf = x.clone().requires_grad_(True)
        out = conv(leaf)
        g = torch.randn_like(out, generator=torch.Generator().manual_seed(1))
        outs.append(out)
        grads.append(torch.autograd.grad(out, [leaf, conv.weight], g))
    torch.testing.assert_close(outs[0], outs[1], rtol=1e-12, atol=1e-12)
    for one, two in zip(*grads, strict=True):
        assert one.shape == two.shape
        torch.testing.assert_close(one, two, rtol=1e-10, atol=1e-10)


def test_x3d_learns_and_its_run_loads_back_as_x3d(synth_dataset, tmp_path):
    from survgen.models.x3d import X3DClassifier

    cfg = ClassifierStageConfig(preset="x3d-xs", image_size=32, clip_length=4, val_fraction=0.0, augment=False,
                                train=fast_train(steps=12, batch_size=8, lr=3e-3))
    result = train_classifier(synth_dataset, tmp_path / "x3d", cfg)
    first, last = sum(result.losses[:3]) / 3, sum(result.losses[-3:]) / 3
    assert last < first, result.losses
    model, _, run = load_classifier(tmp_path / "x3d")
    assert isinstance(model, X3DClassifier) and run.extra["model"]["arch"] == "x3d"


def test_training_dropout_draws_from_the_given_generator():
    model = build_classifier(ClassifierConfig(num_classes=4, dropout=0.5, **SMALL)).train()
    clips = torch.rand(2, 8, 3, 32, 32) * 2 - 1
    a = model(clips, generator=torch.Generator().manual_seed(1))
    assert torch.equal(a, model(clips, generator=torch.Generator().manual_seed(1)))
    assert not torch.equal(a, model(clips, generator=torch.Generator().manual_seed(2)))


# ---------------------------------------------------------------- augmentation and balance
def test_augmentation_is_deterministic_given_the_generator_and_changes_the_clip():
    clips = torch.rand(4, 8, 3, 32, 32) * 2 - 1
    a = augment_clips(clips, torch.Generator().manual_seed(0))
    b = augment_clips(clips, torch.Generator().manual_seed(0))
    c = augment_clips(clips, torch.Generator().manual_seed(1))
    assert a.shape == clips.shape and torch.equal(a, b) and not torch.equal(a, c)
    assert a.min() >= -1 and a.max() <= 1
    changed = (a - clips).abs().flatten(1).amax(1)
    assert (changed > 0.05).all()  # every clip of the batch is changed, not only some


def test_augmentation_treats_all_frames_of_a_clip_alike():
    still = (torch.rand(1, 1, 3, 32, 32) * 2 - 1).expand(2, 6, 3, 32, 32)  # clips whose frames are all equal
    out = augment_clips(still, torch.Generator().manual_seed(3))
    assert torch.allclose(out, out[:, :1].expand_as(out))  # the motion (none here) is left as it was


def test_class_weights_are_inverse_frequency_with_mean_one_over_the_classes_present():
    weights = class_weights({0: 10, 1: 30, 2: 0, 3: 20})
    assert torch.allclose(weights, torch.tensor([2.0, 2 / 3, 0.0, 1.0]))  # 60 clips / (3 classes × n)


def test_the_balancing_sampler_gives_every_class_as_many_clips_as_the_commonest(synth_dataset):
    index = build_index(synth_dataset, clip_length=8)
    order = balanced_order(index)
    counts = np.bincount([index.clips[i].class_id for i in order])
    present = [n for n in index.class_counts().values() if n]
    assert set(counts[counts > 0]) == {max(present)} and len(order) == len(present) * max(present)


# ---------------------------------------------------------------- training
@pytest.fixture(scope="module")
def classifier_run(synth_dataset, tmp_path_factory):
    out = tmp_path_factory.mktemp("classifier") / "run"
    result = train_classifier(synth_dataset, out, small_config(steps=40, lr=3e-3, sample_every=20))
    return out, result


def test_training_lowers_the_loss_and_records_validation_accuracy(classifier_run):
    out, result = classifier_run
    losses = result.losses
    assert len(losses) == 40
    assert np.mean(losses[-10:]) < np.mean(losses[:10])
    history = read_validation(out)
    assert [r["step"] for r in history] == [20, 40]
    run = read_run(out, stage="classifier")
    last = run.extra["validation"]
    assert last["step"] == 40 and 0 <= last["accuracy"] <= 1 and 0 <= last["balanced_accuracy"] <= 1
    assert set(last["per_class"]) == {run.vocabulary.code(i) for i in range(len(run.vocabulary))}
    assert sum(last["clips_per_class"].values()) == last["clips"] == sum(map(sum, history[-1]["confusion"]))
    assert (out / "model" / "classifier.safetensors").exists()


def test_the_split_is_by_video_and_validation_covers_exactly_the_held_out_clips(synth_dataset, classifier_run):
    out, _ = classifier_run
    run = read_run(out, stage="classifier")
    train_ids, val_ids = set(run.extra["split"]["train"]), set(run.extra["split"]["validation"])
    index = build_index(synth_dataset, clip_length=8)
    assert train_ids and val_ids and not train_ids & val_ids
    assert train_ids | val_ids == set(index.video_ids())
    held_out = [c for c in index.clips if c.video_id in val_ids]
    assert read_validation(out)[-1]["clips"] == len(held_out)
    assert sum(run.extra["clips"]["train"].values()) == len(index) - len(held_out)


def test_a_loaded_classifier_gives_the_exported_weights(classifier_run):
    out, _ = classifier_run
    model, vocabulary, run = load_classifier(out)
    assert not model.training and vocabulary == run.vocabulary
    assert model.config.image_size == 32 and model.config.clip_length == 8
    saved = load_file(out / "model" / "classifier.safetensors")
    assert all(torch.equal(saved[k], v) for k, v in model.state_dict().items())


def test_resume_equals_uninterrupted(synth_dataset, tmp_path):
    def cfg(steps):  # augmentation, dropout and the balancing sampler all in play
        return ClassifierStageConfig(**SMALL, balance="sampler",
                                     train=fast_train(steps=steps, batch_size=4, checkpoint_every=2))

    whole = train_classifier(synth_dataset, tmp_path / "whole", cfg(4))
    train_classifier(synth_dataset, tmp_path / "parts", cfg(2))
    resumed = train_classifier(synth_dataset, tmp_path / "parts", cfg(4), resume=True)
    assert resumed.losses == whole.losses
    a = load_file(tmp_path / "whole" / "model" / "classifier.safetensors")
    b = load_file(tmp_path / "parts" / "model" / "classifier.safetensors")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert [r["step"] for r in read_validation(tmp_path / "parts")] == [2, 4]


# ---------------------------------------------------------------- classifying
def test_classify_videos_ranks_classes_for_files_and_tensors(synth_dataset, classifier_run):
    model, vocabulary, _ = load_classifier(classifier_run[0])
    video = synth_dataset / "video_01" / "video_left.avi"
    tensor = torch.rand(10, 3, 64, 48) * 2 - 1  # longer and larger than a clip: cut and resized
    results = classify_videos(model, [video, tensor], topk=3, vocabulary=vocabulary)
    assert [r["video"] for r in results] == [str(video), "tensor 1"]
    for r in results:
        p = [e["probability"] for e in r["topk"]]
        assert len(p) == 3 and p == sorted(p, reverse=True) and sum(p) <= 1.0001
        assert all(e["code"] == vocabulary.code(e["class_id"]) for e in r["topk"])
    with pytest.raises(ClipTooShortError, match="tensor 0: has 5 frame"):
        classify_videos(model, [tensor[:5]])


@pytest.fixture(scope="module")
def cli_classifier(synth_dataset, tmp_path_factory):
    out = tmp_path_factory.mktemp("cli-classifier") / "run"
    result = invoke("train-classifier", "--data", synth_dataset, "--out", out, "--image-size", 32,
                    "--clip-length", 8, "--steps", 2, "--batch-size", 4, "--balance", "sampler", "--quiet")
    assert result.exit_code == 0, result.output
    return out, result


def test_train_classifier_command_writes_a_run_and_a_validation_table(cli_classifier):
    out, result = cli_classifier
    assert result.stdout.strip().endswith(str(out))
    assert "validation at step 2" in result.stderr and "mean of classes" in result.stderr
    run = read_run(out, stage="classifier")
    assert run.options["balance"] == "sampler" and run.options["train"]["steps"] == 2
    assert run.extra["model"]["image_size"] == 32


def test_classify_command_prints_top_k_as_json_and_as_a_table(synth_dataset, cli_classifier):
    out, _ = cli_classifier
    videos = [synth_dataset / "video_01" / "video_left.avi", synth_dataset / "video_02" / "video_left.avi"]
    result = invoke("classify", "--model", out, *videos, "--topk", 2, "--json")
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)
    assert [r["video"] for r in report] == [str(v) for v in videos]
    assert all(len(r["topk"]) == 2 and {"code", "name", "probability"} <= set(r["topk"][0]) for r in report)
    table = invoke("classify", "--model", out, videos[0])
    assert table.exit_code == 0 and "probability" in table.stdout and table.stderr == ""  # results on stdout


def test_classify_names_the_file_that_is_too_short_or_the_run_of_another_stage(cli_classifier, tmp_path):
    out, _ = cli_classifier
    short = write_video(tmp_path / "short.avi", np.zeros((5, 32, 32, 3), np.uint8), fps=30)
    result = invoke("classify", "--model", out, short)
    assert result.exit_code == 2
    message = result.stderr.replace("\n", "")  # Rich wraps long lines
    assert f"{short}: has 5 frame(s), but the classifier reads 8 frames" in message
    assert "Traceback" not in result.output

    other = tmp_path / "vae-run"
    other.mkdir()
    RunInfo(stage="vae", folder=other, options={}, vocabulary=ClassVocabulary()).save()
    result = invoke("classify", "--model", other, short)
    assert result.exit_code == 2
    message = result.stderr.replace("\n", "")
    assert str(other) in message and "'classifier' run is needed" in message
    with pytest.raises(RunFolderError, match="no survgen run folder|not a survgen run folder"):
        load_classifier(tmp_path)


def test_the_classifier_reads_any_video_at_its_clip_rate(tmp_path):
    """A 60 fps and a 30 fps video of the same scene give the same clip: every 6th and every 3rd frame."""
    from survgen.models.classify import read_clip

    frames60 = np.stack([np.full((16, 16, 3), 2 * i, np.uint8) for i in range(96)])  # brightness = frame time
    slow = write_video(tmp_path / "slow.avi", frames60[::2], fps=30)
    fast = write_video(tmp_path / "fast.avi", frames60, fps=60)
    config = ClassifierConfig(image_size=16, clip_length=16, clip_fps=10)
    assert (config.stride_for(60), config.stride_for(30), config.stride_for(None)) == (6, 3, 1)
    clip_fast, clip_slow = read_clip(fast, config), read_clip(slow, config)
    assert clip_fast.shape == (16, 3, 16, 16)
    torch.testing.assert_close(clip_fast, clip_slow, atol=0.05, rtol=0)  # MJPEG rounding only
    expected = torch.tensor([2 * 6 * k for k in range(16)], dtype=torch.float32) / 127.5 - 1
    torch.testing.assert_close(clip_fast[:, 0, 8, 8], expected, atol=0.05, rtol=0)
    with pytest.raises(ClipTooShortError, match="16 frames, 6 apart"):
        read_clip(write_video(tmp_path / "short.avi", frames60[:60], fps=60), config)


def test_a_model_config_with_an_unknown_key_is_refused_naming_the_key_and_the_file(classifier_run, tmp_path):
    import shutil

    run = tmp_path / "classifier"
    shutil.copytree(classifier_run[0], run)
    config_path = run / "model" / "classifier_config.json"
    config = json.loads(config_path.read_text())
    config_path.write_text(json.dumps({**config, "widht": 3}))
    with pytest.raises(ValueError, match=r"classifier_config.json: unknown ClassifierConfig options: widht"):
        load_classifier(run)
    config_path.write_text(json.dumps({**config, "image_size": "64"}))
    with pytest.raises(ValueError, match=r"classifier_config.json: option image_size must be int"):
        load_classifier(run)
