"""The paper's task 2 in miniature: the staple line bleeding (SLB) dataset and the ResNet-LSTM recogniser.

All tiny (32 px frames, short videos, a few training steps), so the file runs in well under a minute on a CPU.
"""

import json

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from survgen.classes import ClassVocabulary
from survgen.cli.main import app
from survgen.config import read_config
from survgen.data.index import build_index
from survgen.data.synth import DATASET_MARKER
from survgen.data.synth_slb import BLEEDING, SLB_CLASSES, plan_bleeding, synthesize_slb
from survgen.io import OutputPathError, load_safetensors
from survgen.models.classifier import ClassifierConfig
from survgen.models.loading import (CLASSIFIER_CONFIG, CLASSIFIER_WEIGHTS, build_classifier, load_classifier,
                                    save_classifier)
from survgen.models.resnet_lstm import ResNetLSTMClassifier
from tests.conftest import dataset_contents

TINY = dict(num_videos=10, frames_per_video=30, size=32)  # two of the ten bleed
runner = CliRunner()


@pytest.fixture(scope="module")
def slb_dataset(tmp_path_factory):
    return synthesize_slb(tmp_path_factory.mktemp("slb") / "data", seed=3, **TINY)


def _class_of(labels: str) -> int:
    classes = {int(line.split(",")[1]) for line in labels.splitlines()}
    assert len(classes) == 1, labels  # a video-level label: the same class on every line
    return classes.pop()


# ---------------------------------------------------------------- the dataset
def test_same_seed_gives_the_same_dataset_and_another_seed_a_different_one(tmp_path):
    options = dict(num_videos=3, frames_per_video=16, size=32)
    a = dataset_contents(synthesize_slb(tmp_path / "a", seed=5, **options))
    b = dataset_contents(synthesize_slb(tmp_path / "b", seed=5, **options))
    c = dataset_contents(synthesize_slb(tmp_path / "c", seed=6, **options))
    assert a.keys() == b.keys() == c.keys() and len(a) == 3
    for name in a:
        assert a[name][0] == b[name][0]
        np.testing.assert_array_equal(a[name][1], b[name][1])
    assert any(not np.array_equal(a[n][1], c[n][1]) for n in a)


def test_two_classes_with_bleeding_rare_and_readable_by_the_index(slb_dataset):
    assert ClassVocabulary.for_folder(slb_dataset) == SLB_CLASSES
    assert SLB_CLASSES.code(BLEEDING) == "SLB1"
    assert SLB_CLASSES.prompt(BLEEDING) == "a complication of staple line bleeding"  # the paper's prompt
    assert (slb_dataset / DATASET_MARKER).is_file()
    assert "staple line bleeding" in (slb_dataset / "README.txt").read_text()
    videos = dataset_contents(slb_dataset)
    classes = [_class_of(labels) for labels, _ in videos.values()]
    assert classes.count(BLEEDING) == 2 and classes.count(0) == 8
    for labels, frames in videos.values():
        assert frames.shape == (30, 32, 32, 3)
        assert [int(line.split(",")[0]) for line in labels.splitlines()] == [0, 6, 12, 18, 24]

    index = build_index(slb_dataset, clip_length=8, clip_fps=10)
    assert index.vocabulary == SLB_CLASSES and not index.warnings
    counts = index.class_counts()
    assert 0 < counts[BLEEDING] < counts[0]
    assert index.for_classes(["SLB1"]).video_ids() == [v for v, c in zip(videos, classes) if c == BLEEDING]


def test_the_bleeding_share_is_exact_with_both_classes_present():
    rng = np.random.default_rng(0)
    assert plan_bleeding(48, 0.2, rng).sum() == 10  # round(9.6)
    assert plan_bleeding(2, 0.2, rng).tolist().count(True) == 1  # at least one of each class
    assert plan_bleeding(3, 0.9, rng).sum() == 2


def test_the_cli_sets_the_bleeding_share(tmp_path):
    result = runner.invoke(app, ["data", "synth", "--task", "slb", "--out", str(tmp_path / "d"), "--num-videos", "10",
                                 "--frames-per-video", "16", "--size", "16", "--rare-share", "0.4"])
    assert result.exit_code == 0, result.output
    classes = [_class_of(labels) for labels, _ in dataset_contents(tmp_path / "d").values()]
    assert classes.count(BLEEDING) == 4 and len(classes) == 10


def _red_share(frame: np.ndarray) -> float:
    """Share of a frame's pixels that are the saturated red of fresh blood."""
    rgb = frame.astype(np.int16)
    return float(((rgb[..., 0] - rgb[..., 1:].max(-1) > 70) & (rgb[..., 0] > 90)).mean())


def test_bleeding_videos_show_red_blood_spreading_and_the_others_do_not(slb_dataset):
    """Fresh red blood comes and spreads in every bleeding video; in the others red stays still and scarce."""
    growth = {True: [], False: []}
    for labels, frames in dataset_contents(slb_dataset).values():
        growth[_class_of(labels) == BLEEDING].append(_red_share(frames[-1]) - _red_share(frames[0]))
    assert min(growth[True]) > 0.01, growth
    assert max(np.abs(growth[False])) < 0.003, growth


def test_refuses_a_non_empty_folder_unless_it_is_a_dataset_and_overwrite_is_given(slb_dataset, tmp_path):
    with pytest.raises(OutputPathError, match="--overwrite"):
        synthesize_slb(slb_dataset, **TINY)
    (tmp_path / "notes.txt").write_text("mine")
    with pytest.raises(OutputPathError, match="did not make it"):
        synthesize_slb(tmp_path, **TINY)
    with pytest.raises(ValueError, match="--num-videos must be at least 2"):
        synthesize_slb(tmp_path / "new", num_videos=1)


# ---------------------------------------------------------------- the recogniser
SMALL = dict(arch="resnet-lstm", widths=(8, 8, 16, 16), num_classes=2, image_size=32, clip_length=6)


@pytest.fixture()
def model():
    torch.manual_seed(0)
    return build_classifier(ClassifierConfig(**SMALL)).eval()


def test_shapes_features_and_presets(model):
    assert isinstance(model, ResNetLSTMClassifier)
    clips = torch.rand(2, 6, 3, 32, 32) * 2 - 1
    assert model(clips).shape == (2, 2)
    assert model.features(clips).shape == (2, model.feature_dim) == (2, 16)
    assert model(torch.zeros(1, 1, 3, 24, 40)).shape == (1, 2)  # one frame, a non-square frame
    with torch.autocast("cpu", dtype=torch.bfloat16):  # mixed precision: the LSTM keeps its weights' precision
        assert model.features(clips).dtype == torch.float32 and model(clips).shape == (2, 2)
    with pytest.raises(ValueError, match=r"\(b, f, 3, H, W\)"):
        model(torch.zeros(2, 3, 6, 32, 32))
    paper = ClassifierConfig.preset("resnet18-lstm", num_classes=2)
    assert (paper.arch, paper.widths, paper.image_size) == ("resnet-lstm", (64, 128, 256, 512), 112)
    # torchvision's resnet18 without its fc (11,176,512; GroupNorm has BatchNorm's affine parameters),
    # a 512-unit LSTM (4 gates × (2·512·512 + 2·512)) and a 2-class head
    assert sum(p.numel() for p in build_classifier(paper).parameters()) == 11_176_512 + 2_101_248 + 2 * 513
    assert ClassifierConfig.preset("resnet-lstm").arch == "resnet-lstm"


def test_the_order_of_frames_matters_and_states_are_causal(model):
    clips = torch.rand(2, 6, 3, 32, 32) * 2 - 1
    with torch.no_grad():
        logits = model(clips)
        assert not torch.allclose(logits, model(clips.flip(1)), atol=1e-6)  # a bag of frames would not notice
        changed = clips.clone()
        changed[:, 4:] = torch.rand(2, 2, 3, 32, 32) * 2 - 1
        before, after = model.frame_states(clips), model.frame_states(changed)
        features = model.features(clips)
    assert torch.allclose(before[:, :4], after[:, :4], atol=1e-6)  # step t sees frames 0..t only
    assert not torch.allclose(before[:, -1], after[:, -1], atol=1e-3)
    assert torch.allclose(features, before[:, -1], atol=1e-6)  # the head reads the final state


def test_gradients_reach_the_frame_resnet_the_lstm_and_the_head(model):
    model.train()
    clips = torch.rand(3, 6, 3, 32, 32) * 2 - 1
    torch.nn.functional.cross_entropy(model(clips), torch.tensor([0, 1, 1])).backward()
    assert all(p.grad is not None for p in model.parameters())
    for part in (model.frames.stem[0].weight, model.lstm.weight_ih_l0, model.lstm.weight_hh_l0, model.head.weight):
        assert part.grad.abs().sum() > 0


def test_config_and_weights_round_trip(model, tmp_path):
    save_classifier(model, tmp_path / "model")
    config = read_config(ClassifierConfig, tmp_path / "model" / CLASSIFIER_CONFIG)
    assert config == model.config
    assert json.loads((tmp_path / "model" / CLASSIFIER_CONFIG).read_text())["arch"] == "resnet-lstm"
    again = build_classifier(config).eval()
    again.load_state_dict(load_safetensors(tmp_path / "model" / CLASSIFIER_WEIGHTS, "rebuild it"))
    clips = torch.rand(1, 6, 3, 32, 32) * 2 - 1
    with torch.no_grad():
        assert torch.equal(model(clips), again(clips))


# ---------------------------------------------------------------- the commands
def test_synth_slb_then_train_a_resnet_lstm_from_the_command_line(tmp_path):
    data, run = tmp_path / "slb", tmp_path / "classifier"
    args = ["data", "synth", "--task", "slb", "--out", data, "--num-videos", 5, "--frames-per-video", 24, "--size", 32]
    result = runner.invoke(app, [str(a) for a in args])
    assert result.exit_code == 0, result.output
    assert result.stdout.strip() == str(data) and ClassVocabulary.for_folder(data) == SLB_CLASSES
    assert sum(_class_of(labels) for labels, _ in dataset_contents(data).values()) == 1  # round(0.2 × 5)

    wrong = runner.invoke(app, ["data", "synth", "--task", "bleeding", "--out", str(tmp_path / "x")])
    assert wrong.exit_code == 2 and "--task" in wrong.stderr and "slb" in wrong.stderr

    args = ["train-classifier", "--data", data, "--out", run, "--preset", "resnet-lstm", "--steps", 2,
            "--batch-size", 2, "--image-size", 32, "--clip-length", 8, "--val-fraction", 0, "--workers", 0, "--quiet"]
    result = runner.invoke(app, [str(a) for a in args])
    assert result.exit_code == 0, result.output
    model, vocabulary, info = load_classifier(run)
    assert isinstance(model, ResNetLSTMClassifier) and vocabulary == SLB_CLASSES
    assert info.extra["model"]["arch"] == "resnet-lstm" and model.config.widths == (16, 32, 64, 128)
    with torch.no_grad():
        assert model(torch.zeros(1, 8, 3, 32, 32)).shape == (1, 2)
