"""Feature extractors: the classifier's features, and the pretrained networks' input conventions (on stand-ins)."""

from __future__ import annotations

import json

import pytest
import torch
from torch import nn

from survgen.classes import ClassVocabulary
from survgen.evaluation.features import (ClassifierFeatures, ClipEmbeddings, FeatureExtractorError, I3DFeatures,
                                         InceptionFeatures)
from survgen.models.classifier import ClassifierConfig, VideoClassifier
from survgen.models.classify import ClipTooShortError
from survgen.models.loading import build_classifier, save_classifier
from survgen.runs import RunInfo

# The stand-ins are TorchScript, which recent torch marks deprecated; the published networks are TorchScript.
pytestmark = pytest.mark.filterwarnings("ignore:`torch.jit.script` is deprecated:DeprecationWarning")


def _pixels(*shape: int, seed: int = 0) -> torch.Tensor:
    return torch.rand(*shape, generator=torch.Generator().manual_seed(seed)) * 2 - 1


# ---------------------------------------------------------------- the project's classifier
@pytest.fixture(scope="module")
def classifier() -> VideoClassifier:
    torch.manual_seed(0)
    return build_classifier(ClassifierConfig.preset("tiny", num_classes=3, image_size=16, clip_length=4)).eval()


def test_classifier_clip_features_are_the_models_features(classifier):
    features = ClassifierFeatures(classifier, "test classifier", batch_size=2)
    clips = _pixels(3, 4, 3, 16, 16)
    out = features.clip_features(clips)  # two batches
    assert out.shape == (3, classifier.feature_dim) == (3, features.feature_dim) and out.dtype == torch.float32
    with torch.no_grad():
        assert torch.allclose(out, classifier.features(clips), atol=1e-5)


def test_classifier_frame_features_depend_on_the_frame_alone(classifier):
    features = ClassifierFeatures(classifier, "test classifier")
    frames = _pixels(4, 3, 16, 16)
    changed = torch.cat([_pixels(1, 3, 16, 16, seed=1), frames[1:2], _pixels(2, 3, 16, 16, seed=2)])
    out = features.frame_features(torch.cat([frames, changed]))
    assert out.shape == (8, classifier.feature_dim)
    assert torch.allclose(out[5], out[1], atol=1e-5)  # frame 1 among other neighbours
    with torch.no_grad():  # a frame is its own still clip
        assert torch.allclose(out[1], classifier.features(frames[1:2, None].expand(1, 4, 3, 16, 16))[0], atol=1e-5)


def test_classifier_features_resize_and_cut_other_input(classifier):
    features = ClassifierFeatures(classifier, "test classifier")
    assert features.frame_features(_pixels(3, 3, 24, 20)).shape == (3, classifier.feature_dim)
    clips = _pixels(2, 6, 3, 24, 24)
    later = clips.clone()
    later[:, 4:] = 0  # the classifier reads the first clip_length = 4 frames only
    out = features.clip_features(torch.cat([clips, later]))
    assert out.shape == (4, classifier.feature_dim)
    assert torch.allclose(out[:2], out[2:], atol=1e-5)
    with pytest.raises(ClipTooShortError, match="has 3 frame"):
        features.clip_features(_pixels(2, 3, 3, 16, 16))


def test_classifier_features_from_a_run_folder_leave_the_models_mode_alone(classifier, tmp_path):
    run = tmp_path / "classifier"
    run.mkdir()
    RunInfo(stage="classifier", folder=run, options={}, vocabulary=ClassVocabulary(names=("a", "b", "c"))).save()
    save_classifier(classifier, run / "model")
    features = ClassifierFeatures.from_run(run)
    assert features.name == f"survgen classifier (G0-G2, run {run})"
    clips = _pixels(2, 4, 3, 16, 16)
    classifier.train()
    try:
        out = ClassifierFeatures(classifier, "x").clip_features(clips)  # in eval mode: no dropout
        assert classifier.training
    finally:
        classifier.eval()
    assert torch.allclose(features.clip_features(clips), out, atol=1e-5)


def test_pixels_out_of_range_or_of_the_wrong_shape_are_refused(classifier):
    features = ClassifierFeatures(classifier, "test classifier")
    with pytest.raises(FeatureExtractorError, match=r"pixels in \[-1, 1\].*x / 127.5 - 1"):
        features.frame_features((_pixels(2, 3, 16, 16) + 1) * 127.5)
    with pytest.raises(FeatureExtractorError, match="dtype torch.uint8"):
        features.frame_features(torch.zeros(2, 3, 16, 16, dtype=torch.uint8))
    with pytest.raises(FeatureExtractorError, match=r"shape \(b, f, 3, H, W\), got \(2, 3, 16, 16\)"):
        features.clip_features(_pixels(2, 3, 16, 16))
    assert features.frame_features(torch.zeros(0, 3, 16, 16)).shape == (0, classifier.feature_dim)


# ---------------------------------------------------------------- TorchScript stand-ins
class InceptionStandIn(nn.Module):
    """clean-fid's call, `model(x, return_features=True)`; reports what it was given."""

    def forward(self, x: torch.Tensor, return_features: bool = False) -> torch.Tensor:
        n = x.shape[0]
        return torch.cat([
            x.mean(dim=[2, 3]),  # per-channel means: the value range and the channel order
            x.amin(dim=[1, 2, 3])[:, None], x.amax(dim=[1, 2, 3])[:, None],
            torch.full([n, 1], float(x.shape[2])), torch.full([n, 1], float(x.shape[3])),
            torch.full([n, 1], 1.0 if return_features else 0.0),
        ], dim=1)


class I3DStandIn(nn.Module):
    """StyleGAN-V's call, `model(x, rescale=..., resize=..., return_features=...)` on `(b, 3, t, h, w)`."""

    def forward(self, x: torch.Tensor, rescale: bool = False, resize: bool = False,
                return_features: bool = False) -> torch.Tensor:
        n = x.shape[0]
        flags = [1.0 if rescale else 0.0, 1.0 if resize else 0.0, 1.0 if return_features else 0.0]
        return torch.cat([
            x[:, 0, :4].mean(dim=[2, 3]),  # channel 0 over the first 4 frames: the time axis
            x[:, :, 0].mean(dim=[2, 3]),  # frame 0's channels: the channel axis
            torch.tensor([float(s) for s in x.shape[1:]]).expand(n, 4),
            torch.tensor(flags).expand(n, 3),
        ], dim=1)


def _save_script(module: nn.Module, path) -> str:
    torch.jit.script(module).save(str(path))
    return str(path)


def test_inception_gets_299_pixels_in_0_255_with_return_features(tmp_path):
    extractor = InceptionFeatures(_save_script(InceptionStandIn(), tmp_path / "inception.pt"))
    assert extractor.feature_dim == 8 and str(tmp_path / "inception.pt") in extractor.name
    values = torch.tensor([[-0.5, 0.0, 0.5], [-1.0, 0.2, 1.0]])
    frames = values[:, :, None, None].expand(2, 3, 20, 24)  # flat channels survive any resize
    out = extractor.frame_features(frames)
    expected = (values + 1) * 127.5
    assert torch.allclose(out[:, :3], expected, atol=1e-3)
    assert torch.allclose(out[:, 3], expected.amin(1), atol=1e-3) and torch.allclose(out[:, 4], expected.amax(1),
                                                                                       atol=1e-3)
    assert out[:, 5:].tolist() == [[299, 299, 1]] * 2
    already = _pixels(2, 3, 299, 299)  # at 299×299 only the value range changes
    out = extractor.frame_features(already)
    assert torch.allclose(out[:, 3], (already.amin(dim=(1, 2, 3)) + 1) * 127.5)
    assert torch.allclose(out[:, 4], (already.amax(dim=(1, 2, 3)) + 1) * 127.5)
    with pytest.raises(FeatureExtractorError, match="frame features only"):
        extractor.clip_features(_pixels(1, 4, 3, 20, 20))


def test_i3d_gets_b3thw_clips_at_224_in_minus1_1(tmp_path):
    extractor = I3DFeatures(_save_script(I3DStandIn(), tmp_path / "i3d.pt"), batch_size=1)
    assert extractor.feature_dim == 14
    time = torch.tensor([0.0, 0.1, 0.2, 0.3, 0.4])
    channel = torch.tensor([0.0, -0.2, -0.4])
    offset = torch.tensor([0.0, 0.05])
    clips = (offset[:, None, None] + time[None, :, None] + channel[None, None, :])[..., None, None]
    clips = clips.expand(2, 5, 3, 20, 20)  # (b, f, 3, H, W), each frame and channel flat
    out = extractor.clip_features(clips)
    assert torch.allclose(out[:, :4], offset[:, None] + time[None, :4], atol=1e-5)
    assert torch.allclose(out[:, 4:7], offset[:, None] + channel[None], atol=1e-5)
    assert out[:, 7:].tolist() == [[3, 5, 224, 224, 0, 0, 1]] * 2
    with pytest.raises(FeatureExtractorError, match="clip features only"):
        extractor.frame_features(_pixels(1, 3, 20, 20))


def test_torchscript_files_that_are_missing_or_wrong_are_named(tmp_path):
    missing = tmp_path / "inception-2015-12-05.pt"
    with pytest.raises(FeatureExtractorError, match=f"{missing}: no such file.*never downloads"):
        InceptionFeatures(missing)
    junk = tmp_path / "junk.pt"
    junk.write_bytes(b"not a model")
    with pytest.raises(FeatureExtractorError, match=f"{junk}: not a TorchScript archive"):
        I3DFeatures(junk)
    state_dict = tmp_path / "weights.pt"
    torch.save({"w": torch.zeros(2)}, state_dict)
    with pytest.raises(FeatureExtractorError, match=f"{state_dict}: not a TorchScript archive.*i3d_torchscript.pt"):
        I3DFeatures(state_dict)
    # a TorchScript file with another call convention fails at load, not midway through an evaluation
    inception = _save_script(InceptionStandIn(), tmp_path / "inception.pt")
    with pytest.raises(FeatureExtractorError, match=r"inception.pt: model\(x, rescale=False.*failed"):
        I3DFeatures(inception)
    with pytest.raises(FeatureExtractorError, match="is a folder"):
        InceptionFeatures(tmp_path)


# ---------------------------------------------------------------- CLIP
@pytest.fixture(scope="module")
def tiny_clip(tmp_path_factory):
    from transformers import CLIPVisionConfig, CLIPVisionModelWithProjection

    torch.manual_seed(0)
    config = CLIPVisionConfig(hidden_size=32, intermediate_size=37, num_hidden_layers=2, num_attention_heads=4,
                              image_size=32, patch_size=8, projection_dim=16)
    model = CLIPVisionModelWithProjection(config).eval()
    folder = tmp_path_factory.mktemp("clip")
    model.save_pretrained(folder)
    return model, folder


def test_clip_embeddings_are_the_models_on_clip_normalised_pixels(tiny_clip):
    from transformers.image_utils import OPENAI_CLIP_MEAN, OPENAI_CLIP_STD

    model, folder = tiny_clip
    extractor = ClipEmbeddings(folder, batch_size=2)
    assert extractor.feature_dim == 16 and str(folder) in extractor.name
    frames = _pixels(3, 3, 32, 32)  # already the model's size: no preprocessing but the normalisation
    mean, std = torch.tensor(OPENAI_CLIP_MEAN).view(1, 3, 1, 1), torch.tensor(OPENAI_CLIP_STD).view(1, 3, 1, 1)
    with torch.no_grad():
        expected = model(pixel_values=((frames + 1) / 2 - mean) / std).image_embeds
    assert torch.allclose(extractor.frame_features(frames), expected, atol=1e-5)
    with pytest.raises(FeatureExtractorError, match="frame features only"):
        extractor.clip_features(_pixels(1, 4, 3, 32, 32))


def test_clip_preprocessing_follows_the_image_processor(tiny_clip, tmp_path):
    from transformers import CLIPImageProcessor

    model, folder = tiny_clip
    copy = tmp_path / "clip"
    model.save_pretrained(copy)
    mean, std = [0.5, 0.4, 0.3], [0.2, 0.25, 0.3]
    processor = CLIPImageProcessor(size={"shortest_edge": 36}, crop_size={"height": 32, "width": 32},
                                   image_mean=mean, image_std=std)
    processor.save_pretrained(copy)
    extractor = ClipEmbeddings(copy)
    # smooth, non-square uint8 images: the shorter side goes to 36 (40×30 → 48×36), then a 32×32 centre crop
    y, x = torch.meshgrid(torch.linspace(0, 1, 40), torch.linspace(0, 1, 30), indexing="ij")
    images = torch.stack([torch.stack([x, y, (x + y) / 2]) * 255, torch.stack([y, 1 - x, x * y]) * 255])
    images = images.round().to(torch.uint8)  # (2, 3, 40, 30)
    ours = extractor.preprocess(images.float() / 127.5 - 1)
    theirs = processor([image.permute(1, 2, 0).numpy() for image in images], return_tensors="pt")["pixel_values"]
    assert ours.shape == theirs.shape == (2, 3, 32, 32)
    assert (ours - theirs).abs().max() < 0.05  # PIL rounds its resize to uint8: 1/255 / std ≈ 0.02
    with torch.no_grad():
        assert torch.allclose(extractor.frame_features(images.float() / 127.5 - 1),
                              model(pixel_values=ours).image_embeds, atol=1e-5)
    config = json.loads((copy / "preprocessor_config.json").read_text())
    (copy / "preprocessor_config.json").write_text(json.dumps({**config, "crop_size": 24}))
    with pytest.raises(FeatureExtractorError, match="crop of the model's 32×32 input"):
        ClipEmbeddings(copy)


def test_clip_folders_that_are_missing_or_wrong_are_named(tmp_path):
    with pytest.raises(FeatureExtractorError, match=f"{tmp_path / 'nothing'}: no such folder.*never downloads"):
        ClipEmbeddings(tmp_path / "nothing")
    with pytest.raises(FeatureExtractorError, match=f"{tmp_path}: holds no config.json"):
        ClipEmbeddings(tmp_path)
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "bert"}))
    with pytest.raises(FeatureExtractorError, match="holds a 'bert' model, not CLIP"):
        ClipEmbeddings(tmp_path)
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "clip_vision_model"}))
    with pytest.raises(FeatureExtractorError, match="could not load a CLIP vision model"):
        ClipEmbeddings(tmp_path)  # a config without weights
