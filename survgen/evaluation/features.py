"""Feature extractors for the quality metrics: frames or clips in, one feature vector per item out.

The metrics (`survgen.evaluation.metrics`) compare feature matrices, and the
network that makes the features decides what the numbers mean: an FID on the
project's own classifier is not the FID of the literature. So every extractor
has a `name` (the network and the file or run it came from) that goes into
every output next to the numbers.

- `ClassifierFeatures`: the offline default, the project's own video
  classifier (`train-classifier`) trained on the real data. It needs nothing
  outside the project, and measures what that classifier tells apart; its
  numbers compare only with numbers from the same classifier run.
- `InceptionFeatures`: the Inception-v3 TorchScript file clean-fid and
  StyleGAN2-ADA use (`inception-2015-12-05.pt`), for FID and KID as published.
- `ClipEmbeddings`: CLIP image embeddings (ViT-L/14 in the CMMD paper) from a
  local Hugging Face folder, for CMMD.
- `I3DFeatures`: the I3D TorchScript file of StyleGAN-V's FVD
  (`i3d_torchscript.pt`), for FVD as published.

Nothing is ever downloaded: the pretrained networks are read from files the
user gives, and a missing or wrong file is a `FeatureExtractorError` naming the
file and what to pass instead.

Input is in survgen's pixel scale, as `ClipDataset` and the generator give
it: float in [-1, 1], frames `(n, 3, H, W)`, clips `(b, f, 3, H, W)`. Each
extractor converts to what its network was made for (size, value range,
layout); all run in eval mode without gradients, in batches of `batch_size`,
and return float32 features on the CPU.
"""

from __future__ import annotations

import contextlib
import json
import warnings
from dataclasses import replace
from pathlib import Path
from typing import Callable, Iterator

import torch
import torch.nn.functional as F
from torch import nn

from survgen.io import shown_path
from survgen.models.classifier import VideoClassifier
from survgen.models.classify import as_clip
from survgen.models.loading import load_classifier

INCEPTION_SIZE = 299  # Inception-v3's input size
I3D_SIZE = 224  # the FVD reference's I3D input size
I3D_PROBE_FRAMES = 16  # FVD's usual clip length, for the load-time check
CLIP_MODEL_TYPES = ("clip", "clip_vision_model")  # a whole CLIP checkpoint, or its vision half
PIXEL_SLACK = 0.01  # generated pixels may overshoot [-1, 1] by rounding; more means another scale


class FeatureExtractorError(ValueError):
    """A feature network that cannot be loaded or used: a missing or wrong file, or input it cannot take."""


class FeatureExtractor:
    """What the metrics need of a feature network.

    Subclasses set `name`, `feature_dim`, `module` (the network), `device` and
    `batch_size`, and implement `_frames` and/or `_clips` on one batch already
    on `device`; `supports_frames` / `supports_clips` say which.
    """

    name: str
    feature_dim: int
    module: nn.Module
    device: torch.device
    batch_size: int
    supports_frames = False
    supports_clips = False

    def frame_features(self, frames: torch.Tensor) -> torch.Tensor:
        """`(n, 3, H, W)` frames in [-1, 1] → `(n, feature_dim)` features."""
        if not self.supports_frames:
            raise FeatureExtractorError(f"{self.name} gives clip features only (for FVD); for frame features (FID, "
                                        "KID, CMMD) use ClassifierFeatures, InceptionFeatures or ClipEmbeddings")
        return self._run(_pixels(frames, "frames", "(n, 3, H, W)"), self._frames)

    def clip_features(self, clips: torch.Tensor) -> torch.Tensor:
        """`(b, f, 3, H, W)` clips in [-1, 1] → `(b, feature_dim)` features."""
        if not self.supports_clips:
            raise FeatureExtractorError(f"{self.name} gives frame features only; for clip features (FVD) use "
                                        "ClassifierFeatures or I3DFeatures")
        return self._run(_pixels(clips, "clips", "(b, f, 3, H, W)"), self._clips)

    def _frames(self, frames: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def _clips(self, clips: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def _run(self, items: torch.Tensor, batch_fn: Callable[[torch.Tensor], torch.Tensor]) -> torch.Tensor:
        if self.batch_size < 1:
            raise FeatureExtractorError(f"{self.name}: batch_size must be at least 1 (got {self.batch_size})")
        out = []
        with torch.no_grad(), _eval_mode(self.module):
            for start in range(0, len(items), self.batch_size):
                batch = items[start:start + self.batch_size].to(self.device)
                features = batch_fn(batch)
                if tuple(features.shape) != (len(batch), self.feature_dim):
                    raise FeatureExtractorError(f"{self.name}: gave features of shape {tuple(features.shape)} for a "
                                                f"batch of {len(batch)}, expected ({len(batch)}, {self.feature_dim})")
                out.append(features.float().cpu())
        return torch.cat(out) if out else torch.zeros(0, self.feature_dim)


@contextlib.contextmanager
def _eval_mode(module: nn.Module) -> Iterator[None]:
    """Eval mode for the duration, then the mode the caller left it in (the classifier may be mid-training)."""
    was_training = module.training
    module.eval()
    try:
        yield
    finally:
        module.train(was_training)


def _pixels(x: torch.Tensor, what: str, layout: str) -> torch.Tensor:
    """`x` checked to be float pixels in [-1, 1] of the given layout, clamped to [-1, 1]."""
    dims = layout.count(",") + 1
    if not isinstance(x, torch.Tensor) or x.dim() != dims or x.shape[-3] != 3:
        shape = tuple(x.shape) if isinstance(x, torch.Tensor) else type(x).__name__
        raise FeatureExtractorError(f"{what}: expected a tensor of shape {layout}, got {shape}")
    if not x.is_floating_point():
        raise FeatureExtractorError(f"{what}: expected float pixels in [-1, 1], got dtype {x.dtype}; "
                                    "convert uint8 pixels with x.float() / 127.5 - 1")
    if x.numel():
        low, high = x.min().item(), x.max().item()
        if not (-1 - PIXEL_SLACK <= low and high <= 1 + PIXEL_SLACK):  # also catches NaN
            raise FeatureExtractorError(f"{what}: expected pixels in [-1, 1] (survgen's pixel scale), got values in "
                                        f"[{low:.4g}, {high:.4g}]; convert [0, 255] pixels with x / 127.5 - 1")
    return x.clamp(-1, 1)


# ---------------------------------------------------------------- the project's classifier
class ClassifierFeatures(FeatureExtractor):
    """The pooled embedding of survgen's video classifier (`VideoClassifier.features`), for frames and clips.

    Clips come at the clip rate already (real clips from the index, generated
    videos as sampled) and are cut and resized as the classifier reads them
    (`clip_length` frames, resized to `image_size`). A frame is
    embedded as a still clip: the frame repeated `clip_length` times. The network
    only takes clips, and this way a frame's embedding depends on that frame
    alone (not on its neighbours in the video, nor on its batch-mates: the
    network normalises per sample), as frame metrics like FID assume.
    """

    supports_frames = True
    supports_clips = True

    def __init__(self, model: VideoClassifier, name: str, *, batch_size: int = 8):
        self.module = model
        self.name = name
        self.feature_dim = model.feature_dim
        self.batch_size = batch_size

    @property
    def device(self) -> torch.device:
        return next(self.module.parameters()).device  # wherever the caller keeps the model

    @classmethod
    def from_run(cls, run_folder: str | Path, *, device: str | torch.device = "cpu",
                 batch_size: int = 8) -> "ClassifierFeatures":
        """The exported classifier of a `train-classifier` run folder."""
        model, vocabulary, _ = load_classifier(run_folder, device)
        classes = f"{vocabulary.code(0)}-{vocabulary.code(len(vocabulary) - 1)}"
        return cls(model, f"survgen classifier ({classes}, run {shown_path(run_folder)})", batch_size=batch_size)

    def _frames(self, frames: torch.Tensor) -> torch.Tensor:
        # The classifier's own resize, by giving the batch of frames to `as_clip` as one video of that length.
        config = self.module.config
        resized = as_clip(frames, replace(config, clip_length=len(frames)), "frames", fps=None)
        stills = resized[:, None].expand(-1, config.clip_length, -1, -1, -1)
        return self.module.features(stills)

    def _clips(self, clips: torch.Tensor) -> torch.Tensor:
        config = self.module.config
        return self.module.features(torch.stack([as_clip(clip, config, "clips", fps=None) for clip in clips]))


# ---------------------------------------------------------------- TorchScript networks (Inception-v3, I3D)
def _load_torchscript(path: Path, expected: str, device: str | torch.device) -> torch.jit.ScriptModule:
    if not path.exists():
        raise FeatureExtractorError(f"{path}: no such file; pass the path of {expected} (survgen never downloads it)")
    if path.is_dir():
        raise FeatureExtractorError(f"{path}: is a folder; pass the path of the file itself, {expected}")
    try:
        with warnings.catch_warnings():
            # Recent torch marks TorchScript deprecated, but these published networks exist only as TorchScript.
            warnings.filterwarnings("ignore", message=r"`torch.jit.load` is deprecated", category=DeprecationWarning)
            module = torch.jit.load(str(path), map_location=device)
    except (RuntimeError, ValueError, OSError) as e:
        raise FeatureExtractorError(f"{path}: not a TorchScript archive ({_first_line(e)}); "
                                    f"pass {expected}") from None
    return module.eval()


def _first_line(e: Exception) -> str:
    return (str(e).strip().splitlines() or [type(e).__name__])[0]


class _TorchScriptFeatures(FeatureExtractor):
    """A TorchScript network called with keyword options; checked once at load on a blank input, so a file with
    another call convention fails there (naming the file), not midway through an evaluation."""

    expected: str  # what file to pass, for error messages
    call: str  # the call convention, for error messages

    def __init__(self, path: str | Path, name: str, probe_shape: tuple[int, ...], device: str | torch.device,
                 batch_size: int):
        self.path = Path(path)
        self.name = name
        self.device = torch.device(device)
        self.batch_size = batch_size
        self.module = _load_torchscript(self.path, self.expected, self.device)
        with torch.no_grad():
            features = self._call(torch.zeros(probe_shape, device=self.device))
        if not isinstance(features, torch.Tensor) or features.dim() != 2 or features.shape[0] != 1:
            got = tuple(features.shape) if isinstance(features, torch.Tensor) else type(features).__name__
            raise FeatureExtractorError(f"{self.path}: {self.call} on one blank input gave {got}, not a (1, "
                                        f"features) tensor; pass {self.expected}")
        self.feature_dim = features.shape[1]

    def _call(self, x: torch.Tensor) -> torch.Tensor:
        try:
            return self._forward(x)
        except (RuntimeError, TypeError, ValueError) as e:  # TorchScript's errors are long; the first line says it
            raise FeatureExtractorError(f"{self.path}: {self.call} failed on input of shape {tuple(x.shape)} "
                                        f"({_first_line(e)}); pass {self.expected}") from None

    def _forward(self, x: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError


class InceptionFeatures(_TorchScriptFeatures):
    """The 2048-dimensional pool features of Inception-v3, as clean-fid computes them (frames only).

    The file is the TorchScript translation of TensorFlow's
    `inception-2015-12-05` that StyleGAN2-ADA published and clean-fid uses.
    clean-fid's "clean" mode resizes uint8 images to 299×299 with PIL's bicubic
    filter (in float, without rounding back to uint8) and gives the network
    values in [0, 255]; the network subtracts 128 and divides by 128 itself.
    Here: [-1, 1] → [0, 255], then torch's antialiased bicubic resize (which
    follows PIL's filter), then `model(x, return_features=True)`. At 299×299 the
    network's own bilinear resize is the identity, so this equals clean-fid's
    call of its inner layers.
    """

    supports_frames = True
    expected = "the Inception-v3 TorchScript file of clean-fid / StyleGAN2-ADA (inception-2015-12-05.pt)"
    call = "model(x, return_features=True)"

    def __init__(self, path: str | Path, *, device: str | torch.device = "cpu", batch_size: int = 32):
        super().__init__(path, f"Inception-v3 (clean-fid TorchScript, {path})",
                         (1, 3, INCEPTION_SIZE, INCEPTION_SIZE), device, batch_size)

    def _frames(self, frames: torch.Tensor) -> torch.Tensor:
        x = (frames.float() + 1) * 127.5
        if x.shape[-2:] != (INCEPTION_SIZE, INCEPTION_SIZE):
            x = F.interpolate(x, size=(INCEPTION_SIZE, INCEPTION_SIZE), mode="bicubic", antialias=True,
                              align_corners=False)
        return self._call(x)

    def _forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.module(x, return_features=True)


class I3DFeatures(_TorchScriptFeatures):
    """The 400 Kinetics-400 logits of the I3D network of FVD, as StyleGAN-V computes them (clips only).

    The file is StyleGAN-V's TorchScript translation of the TF-Hub I3D used by
    the FVD reference (google-research `frechet_video_distance`), which embeds a
    clip as the "kinetics-i3d-400-logits" layer, before the softmax. That
    reference resizes frames to 224×224 with TensorFlow's `resize_bilinear` and
    scales pixels to [-1, 1]; StyleGAN-V lets the network do both (`rescale=True,
    resize=True` on uint8 input), and checked it against TensorFlow with
    `rescale=False, resize=False` on input already prepared
    (universome/fvd-comparison). Here: frames resized to 224×224 bilinear (torch's
    half-pixel sampling; TensorFlow 1's differs slightly), kept in [-1, 1], laid
    out `(b, 3, f, 224, 224)`, then `model(x, rescale=False, resize=False,
    return_features=True)`. FVD is usually reported on 16-frame clips; compare
    only numbers computed at the same clip length.
    """

    supports_clips = True
    expected = "the I3D TorchScript file of StyleGAN-V's FVD (i3d_torchscript.pt)"
    call = "model(x, rescale=False, resize=False, return_features=True)"

    def __init__(self, path: str | Path, *, device: str | torch.device = "cpu", batch_size: int = 8):
        super().__init__(path, f"I3D Kinetics-400 (StyleGAN-V FVD TorchScript, {path})",
                         (1, 3, I3D_PROBE_FRAMES, I3D_SIZE, I3D_SIZE), device, batch_size)

    def _clips(self, clips: torch.Tensor) -> torch.Tensor:
        b, f = clips.shape[:2]
        x = clips.float().flatten(0, 1)
        if x.shape[-2:] != (I3D_SIZE, I3D_SIZE):
            # No antialiasing, as TensorFlow's resize_bilinear in the FVD reference.
            x = F.interpolate(x, size=(I3D_SIZE, I3D_SIZE), mode="bilinear", align_corners=False)
        return self._call(x.unflatten(0, (b, f)).transpose(1, 2).contiguous())  # (b, 3, f, H, W)

    def _forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.module(x, rescale=False, resize=False, return_features=True)


# ---------------------------------------------------------------- CLIP
class ClipEmbeddings(FeatureExtractor):
    """CLIP image embeddings (`image_embeds` of `CLIPVisionModelWithProjection`), for CMMD (frames only).

    `path` is a local Hugging Face folder holding a CLIP checkpoint (a whole CLIP
    model or its vision half), e.g. a copy of `openai/clip-vit-large-patch14`;
    it is read with `local_files_only=True`, never downloaded. Frames are
    prepared as `CLIPImageProcessor` would, in torch on the float pixels:
    shorter side resized to the processor's size (bicubic, antialiased like
    PIL's), centre crop, then normalised with the processor's mean and std; these
    come from the folder's `preprocessor_config.json`, or without one are
    CLIP's: the model's `image_size` and OpenAI's mean and std. The CMMD
    reference uses ViT-L/14 at 336 px (`openai/clip-vit-large-patch14-336`) and
    resizes whole frames to 336×336, which for square frames is the same. The
    embeddings are not normalised here: `cmmd` does it.
    """

    supports_frames = True

    def __init__(self, path: str | Path, *, device: str | torch.device = "cpu", batch_size: int = 32):
        self.path = Path(path)
        self.device = torch.device(device)
        self.batch_size = batch_size
        self.module = _load_clip(self.path).to(self.device).eval()
        config = self.module.config
        self.feature_dim = config.projection_dim
        self.resize_to, self.crop, mean, std = _clip_preprocessing(self.path, config.image_size)
        self.mean = torch.tensor(mean, device=self.device).view(1, 3, 1, 1)
        self.std = torch.tensor(std, device=self.device).view(1, 3, 1, 1)
        self.name = (f"CLIP ViT/{config.patch_size} image embeddings ({config.image_size}px, "
                     f"{config.projection_dim}-d, {self.path})")

    def preprocess(self, frames: torch.Tensor) -> torch.Tensor:
        """`(n, 3, H, W)` frames in [-1, 1] → the model's `pixel_values`, as `CLIPImageProcessor` makes them."""
        x = (frames.float() + 1) / 2  # the processor's [0, 1] scale (uint8 / 255)
        h, w = x.shape[-2:]
        if isinstance(self.resize_to, int):  # the shorter side to `resize_to`, the longer in proportion (rounded down)
            short, long = min(h, w), max(h, w)
            size = (self.resize_to, self.resize_to * long // short)
            size = size if h <= w else size[::-1]
        else:
            size = self.resize_to
        if (h, w) != size:
            # PIL resizes uint8 images, so its result stays in [0, 255]; bicubic overshoots without the clamp.
            x = F.interpolate(x, size=size, mode="bicubic", antialias=True, align_corners=False).clamp(0, 1)
        top, left = (size[0] - self.crop[0]) // 2, (size[1] - self.crop[1]) // 2
        x = x[..., top:top + self.crop[0], left:left + self.crop[1]]
        return (x - self.mean) / self.std

    def _frames(self, frames: torch.Tensor) -> torch.Tensor:
        return self.module(pixel_values=self.preprocess(frames)).image_embeds


def _load_clip(path: Path) -> nn.Module:
    what = "a local Hugging Face folder of a CLIP model (config.json and weights, e.g. a copy of " \
           "openai/clip-vit-large-patch14)"
    if not path.is_dir():
        raise FeatureExtractorError(f"{path}: {'no such folder' if not path.exists() else 'is a file'}; pass {what}; "
                                    "survgen never downloads it")
    config_path = path / "config.json"
    if not config_path.exists():
        raise FeatureExtractorError(f"{path}: holds no config.json, so it is no Hugging Face model folder; pass {what}")
    try:
        model_type = json.loads(config_path.read_text()).get("model_type")
    except (json.JSONDecodeError, AttributeError) as e:
        raise FeatureExtractorError(f"{config_path}: not a readable model config ({e}); pass {what}") from None
    # Checked here because transformers would load another architecture's folder with random CLIP weights.
    if model_type not in CLIP_MODEL_TYPES:
        raise FeatureExtractorError(f"{path}: holds a {model_type!r} model, not CLIP (model_type "
                                    f"{' or '.join(CLIP_MODEL_TYPES)}); pass {what}")
    from transformers import CLIPVisionModelWithProjection

    with _quiet_transformers():  # a whole CLIP checkpoint lists its unused text tower at length
        try:
            model, info = CLIPVisionModelWithProjection.from_pretrained(path, local_files_only=True,
                                                                        output_loading_info=True)
        except (OSError, ValueError, RuntimeError) as e:
            raise FeatureExtractorError(f"{path}: could not load a CLIP vision model ({_first_line(e)}); "
                                        f"pass {what}") from None
    if info["missing_keys"]:
        missing = sorted(info["missing_keys"])
        raise FeatureExtractorError(f"{path}: the checkpoint lacks {len(missing)} of the CLIP vision model's "
                                    f"weights (e.g. {missing[0]}), which would be random; pass {what}")
    return model


@contextlib.contextmanager
def _quiet_transformers() -> Iterator[None]:
    from transformers.utils import logging

    verbosity = logging.get_verbosity()
    logging.set_verbosity_error()
    try:
        yield
    finally:
        logging.set_verbosity(verbosity)


def _clip_preprocessing(path: Path, image_size: int
                        ) -> tuple[int | tuple[int, int], tuple[int, int], list[float], list[float]]:
    """(resize: shorter side or (H, W), crop (H, W), mean, std) from `preprocessor_config.json`, else CLIP's."""
    from transformers.image_utils import OPENAI_CLIP_MEAN, OPENAI_CLIP_STD

    config_path = path / "preprocessor_config.json"
    if not config_path.exists():
        return image_size, (image_size, image_size), list(OPENAI_CLIP_MEAN), list(OPENAI_CLIP_STD)
    try:
        config = json.loads(config_path.read_text())
        # Sizes are an int in older files, {"shortest_edge": n} or {"height": h, "width": w} in newer ones.
        size = config.get("size", image_size)
        resize = size if isinstance(size, int) else size.get("shortest_edge") or (size["height"], size["width"])
        crop = config.get("crop_size", image_size)
        crop = (crop, crop) if isinstance(crop, int) else (crop["height"], crop["width"])
        mean = [float(m) for m in config.get("image_mean", OPENAI_CLIP_MEAN)]
        std = [float(s) for s in config.get("image_std", OPENAI_CLIP_STD)]
    except (json.JSONDecodeError, KeyError, TypeError, ValueError, AttributeError) as e:
        raise FeatureExtractorError(f"{config_path}: not a readable CLIP image processor config "
                                    f"({type(e).__name__}: {e}); fix or remove it to use CLIP's defaults") from None
    smallest = (resize, resize) if isinstance(resize, int) else resize
    if (len(mean) != 3 or len(std) != 3 or min(std) <= 0 or crop != (image_size, image_size)
            or crop[0] > smallest[0] or crop[1] > smallest[1]):
        raise FeatureExtractorError(f"{config_path}: unusable preprocessing (size {resize}, crop {crop}, mean {mean}, "
                                    f"std {std}): expected 3 means, 3 positive stds and a crop of the model's "
                                    f"{image_size}×{image_size} input within the resized image; fix or remove it "
                                    "to use CLIP's defaults")
    return resize, crop, mean, std
