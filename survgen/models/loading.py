"""Run folders read into models, in one place: the VAE, the stage-1 spatial model, stage-2 video models, classifiers.

A run folder (`survgen/runs.py`) names its stage and the run it builds on; its
`model/` holds what that stage trained. Each `save_*` here writes what the
matching `load_*` reads, so a model's files are defined side by side:

    spatial run      model/                    a diffusers StableDiffusionPipeline folder
    temporal run     model/temporal.safetensors  what stage 2 trained (EMA weights)
                     model/temporal_config.json  the architecture (`arch`) and its config
                     (the spatial model is the parent run's, referenced from run.json, not copied)
    classifier run   model/classifier.safetensors, model/classifier_config.json
"""

from __future__ import annotations

import json
from pathlib import Path

import torch

from survgen.classes import ClassVocabulary
from survgen.config import config_file, config_to_dict, read_config
from survgen.io import atomic_folder, load_safetensors, save_safetensors
from survgen.models.classifier import ClassifierConfig, ResNet3DClassifier, VideoClassifier
from survgen.models.resnet_lstm import ResNetLSTMClassifier
from survgen.models.spatial import SpatialModel, load_spatial
from survgen.models.video_base import VideoModel
from survgen.models.video_models import video_model_config, video_model_from_config
from survgen.models.x3d import X3DClassifier
from survgen.runs import RunFolderError, RunInfo, read_run

TEMPORAL_WEIGHTS = "temporal.safetensors"
TEMPORAL_CONFIG = "temporal_config.json"
CLASSIFIER_WEIGHTS = "classifier.safetensors"
CLASSIFIER_CONFIG = "classifier_config.json"


# ---------------------------------------------------------------- spatial model and VAE
def spatial_model_dir(path: str | Path) -> Path:
    """The diffusers folder behind `path`: a stage-1 run's model/, or `path` itself when it is one."""
    path = Path(path)
    return read_run(path, stage="spatial").model_dir if (path / "run.json").exists() else path


def load_spatial_run(path: str | Path) -> tuple[SpatialModel, RunInfo | None]:
    """A stage-1 run folder's model, or any diffusers SD folder given directly (no run info then)."""
    path = Path(path)
    run = read_run(path, stage="spatial") if (path / "run.json").exists() else None
    return load_spatial(run.model_dir if run else path), run


def load_vae(*, spatial: str | Path | None = None, vae: str | Path | None = None):
    """The frozen VAE the diffusion stages encode with, and the image size its run trained at (None if unknown).

    `spatial`: a stage-1 run folder or a diffusers SD folder (its `vae/`);
    `vae`: a `survgen train-vae` run (the tiny preset's), which stage 1 then
    uses unchanged, so a latent cache made with it serves stage 1 before any
    stage-1 run exists.
    """
    from diffusers import AutoencoderKL

    if (spatial is None) == (vae is None):
        raise ValueError("give exactly one of --spatial RUN1 (a stage-1 run or diffusers SD folder) and "
                         "--vae RUN_VAE (a `survgen train-vae` run)")
    if vae is not None:
        run = read_run(vae, stage="vae")
        return AutoencoderKL.from_pretrained(run.model_dir, local_files_only=True), run.options.get("image_size")
    folder = spatial_model_dir(spatial)
    if not (folder / "vae").is_dir():
        raise ValueError(f"{spatial}: holds no vae/ folder; --spatial takes a stage-1 run folder or a diffusers "
                         "Stable Diffusion folder")
    run = read_run(spatial, stage="spatial") if (Path(spatial) / "run.json").exists() else None
    return (AutoencoderKL.from_pretrained(folder / "vae", local_files_only=True),
            run.options.get("image_size") if run else None)


# ---------------------------------------------------------------- video models
def save_video_model(video_model: VideoModel, folder: Path) -> None:
    """What stage 2 trained (not the frozen spatial U-Net) and the config that rebuilds the model."""
    weights = {n: p.detach() for n, p in video_model.trainable_parameters().items()}
    with atomic_folder(folder) as tmp:
        save_safetensors(weights, tmp / TEMPORAL_WEIGHTS)
        (tmp / TEMPORAL_CONFIG).write_text(json.dumps(video_model_config(video_model), indent=2) + "\n")


def video_model_arch(run_folder: str | Path) -> str:
    """The architecture of a stage-2 run, read from its saved config (nothing loaded)."""
    path = read_run(run_folder, stage="temporal").model_dir / TEMPORAL_CONFIG
    with config_file(path):
        return json.loads(path.read_text()).get("arch", "survgen")


def load_video_model(run_folder: str | Path) -> tuple[VideoModel, SpatialModel, RunInfo]:
    """A stage-2 run's video model, with the spatial model (VAE, text encoder) it was trained on."""
    run = read_run(run_folder, stage="temporal")
    spatial, _ = load_spatial_run(run.parent_path)
    config_path, weights_path = run.model_dir / TEMPORAL_CONFIG, run.model_dir / TEMPORAL_WEIGHTS
    with config_file(config_path):
        video_model = video_model_from_config(json.loads(config_path.read_text()), spatial)
    weights = load_safetensors(weights_path, "train the run again, or resume it from its checkpoints: "
                                             f"survgen train-temporal --out {run.folder} --resume")
    expected = set(video_model.trainable_parameters())  # the frozen U-Net comes from the spatial model
    missing, unexpected = sorted(expected - set(weights)), sorted(set(weights) - expected)
    if missing or unexpected:
        raise ValueError(f"{weights_path}: weights do not match the {video_model.arch} config "
                         f"(missing {missing[:3]}, unexpected {unexpected[:3]})")
    video_model.load_state_dict(weights, strict=False)
    return video_model, spatial, run


# ---------------------------------------------------------------- classifiers
CLASSIFIERS = {"r3d": ResNet3DClassifier, "x3d": X3DClassifier, "resnet-lstm": ResNetLSTMClassifier}  # by `arch`


def build_classifier(config: ClassifierConfig) -> VideoClassifier:
    """A fresh clip classifier of `config.arch`."""
    return CLASSIFIERS[config.arch](config)


def save_classifier(model: VideoClassifier, folder: Path) -> None:
    with atomic_folder(folder) as tmp:
        save_safetensors(model.state_dict(), tmp / CLASSIFIER_WEIGHTS)
        (tmp / CLASSIFIER_CONFIG).write_text(json.dumps(config_to_dict(model.config), indent=2) + "\n")


def load_classifier(run_folder: str | Path, device: str | torch.device = "cpu"
                    ) -> tuple[VideoClassifier, ClassVocabulary, RunInfo]:
    """A `train-classifier` run's model (in eval mode), its class vocabulary and its run info."""
    run = read_run(run_folder, stage="classifier")
    weights, config_path = run.model_dir / CLASSIFIER_WEIGHTS, run.model_dir / CLASSIFIER_CONFIG
    if not weights.exists() or not config_path.exists():
        raise RunFolderError(f"{run.folder}: holds no exported classifier yet ({weights} is missing); "
                             "finish the run with `survgen train-classifier --out RUN --resume`")
    model = build_classifier(read_config(ClassifierConfig, config_path))
    try:
        model.load_state_dict(load_safetensors(weights, "train the classifier again (survgen train-classifier)"))
    except RuntimeError as e:
        raise RunFolderError(f"{weights}: weights do not match {config_path} ({str(e).splitlines()[0]})") from None
    return model.to(device).eval(), run.vocabulary, run
