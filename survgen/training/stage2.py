"""Stage 2: learn a class's motion with temporal blocks on top of the frozen spatial model.

The stage-1 U-Net, VAE and text encoder are frozen (and checked to stay
unchanged); the temporal blocks and the class embedding are the only trained
parameters, on 16-frame clips of the chosen class(es). Prompts and class
labels are dropped independently with a small probability so that guidance
has an unconditional branch.

Output: `RUN/model/temporal.safetensors` (the temporal blocks and class
embedding, EMA weights) and `RUN/model/temporal_config.json`; the spatial model
is referenced from `run.json`, not copied.
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field
from pathlib import Path

import torch
from safetensors.torch import load_file
from torch import nn

from survgen.data.datasets import ClipDataset
from survgen.data.index import build_index
from survgen.diffusion.objective import drop_conditions, noise_for_v_prediction
from survgen.io import atomic_folder
from survgen.models.spatial import SpatialModel
from survgen.config import config_to_dict
from survgen.models.video_unet import TEMPORAL_PRESETS, TemporalConfig, VideoUNet
from survgen.runs import RunInfo, begin_run, read_run
from survgen.training.checkpoint import save_safetensors_atomic
from survgen.training.loop import TrainConfig, train
from survgen.training.previews import write_video_samples
from survgen.training.stage1 import load_spatial_run

TEMPORAL_WEIGHTS = "temporal.safetensors"
TEMPORAL_CONFIG = "temporal_config.json"


class SpatialWeightsChangedError(RuntimeError):
    """Stage 2 must leave every spatial weight untouched."""


@dataclass
class TemporalStageConfig:
    classes: list[str] = field(default_factory=lambda: ["G7"])
    clip_length: int = 16
    frame_stride: int = 1
    image_size: int | None = None  # None: the spatial model's native size
    prompt_dropout: float = 0.1
    class_dropout: float = 0.1
    gradient_checkpointing: bool = False
    sample_steps: int = 25
    sample_guidance: float = 3.0
    heads: int | None = None  # None: the spatial preset's default (TEMPORAL_PRESETS)
    attention_layers: int | None = None
    train: TrainConfig = field(default_factory=TrainConfig)


class TemporalTrainee(nn.Module):
    """The video U-Net plus the frozen VAE and text encoder, as one module for the loop."""

    def __init__(self, video_unet: VideoUNet, spatial: SpatialModel):
        super().__init__()
        self.video_unet = video_unet
        self.vae = spatial.vae.requires_grad_(False)
        self.text_encoder = spatial.text_encoder.requires_grad_(False)


def spatial_fingerprint(model: VideoUNet, spatial: SpatialModel) -> torch.Tensor:
    """A cheap per-tensor checksum of every frozen weight, to prove stage 2 did not change them."""
    tensors = list(model.unet.parameters()) + list(spatial.vae.parameters()) + list(spatial.text_encoder.parameters())
    return torch.stack([t.detach().double().sum() for t in tensors] + [t.detach().double().square().sum() for t in tensors])


def train_temporal(data: str | Path, spatial_path: str | Path, out: str | Path, cfg: TemporalStageConfig, *,
                   resume: bool = False, progress: bool = True):
    """Run stage 2 for `cfg.classes` into the run folder `out`."""
    out = Path(out)
    begin_run(out, "temporal", resume)
    spatial, spatial_run = load_spatial_run(spatial_path)
    index = build_index(data, clip_length=cfg.clip_length, frame_stride=cfg.frame_stride,
                        vocabulary=spatial_run.vocabulary if spatial_run else None)
    vocabulary = index.vocabulary
    class_ids = [vocabulary.resolve(c) for c in cfg.classes]
    clips = index.for_classes(class_ids)
    if len(clips) == 0:
        raise ValueError(f"{data}: no {cfg.clip_length}-frame clips of class(es) {', '.join(cfg.classes)}")
    preset = spatial_run.options.get("preset", "sd15") if spatial_run else "sd15"
    temporal = dataclasses.replace(
        TEMPORAL_PRESETS[preset],
        num_classes=len(vocabulary),
        **{k: v for k, v in (("heads", cfg.heads), ("attention_layers", cfg.attention_layers)) if v is not None},
    )
    image_size = cfg.image_size or spatial.unet.config.sample_size * spatial.vae_downsample

    torch.manual_seed(cfg.train.seed)  # the temporal blocks' initial weights are part of the run's seed
    video_unet = VideoUNet(spatial.unet, temporal)
    video_unet.enable_gradient_checkpointing(cfg.gradient_checkpointing)
    model = TemporalTrainee(video_unet, spatial)
    trainable = {f"video_unet.{n}": p for n, p in video_unet.temporal_parameters().items()}
    frozen_before = spatial_fingerprint(video_unet, spatial)

    prompts = spatial.encode_prompts(vocabulary.prompts() + [""])  # frozen encoder: encode once
    null_prompt = len(prompts) - 1

    def loss_fn(model: TemporalTrainee, batch, generator):
        pixels = batch["pixels"]  # (b, f, 3, H, W)
        b, f = pixels.shape[:2]
        with torch.no_grad():
            latents = model.vae.encode(pixels.flatten(0, 1)).latent_dist.sample(generator=generator)
            latents = (latents * spatial.latent_scale).unflatten(0, (b, f)).transpose(1, 2)  # (b, c, f, h, w)
        noised = noise_for_v_prediction(spatial.noise_scheduler, latents, generator)
        labels = batch["class_id"]
        prompt_ids = drop_conditions(labels, null_prompt, cfg.prompt_dropout, generator)
        class_labels = drop_conditions(labels, video_unet.null_class, cfg.class_dropout, generator)
        pred = model.video_unet(noised.noisy, noised.timesteps, prompts.to(pixels.device)[prompt_ids], class_labels)
        return nn.functional.mse_loss(pred.float(), noised.target.float())

    def on_sample(step: int, model: TemporalTrainee):
        write_video_samples(model.video_unet, spatial, out / "samples" / f"step-{step:06d}", vocabulary,
                            class_ids, num_frames=cfg.clip_length, steps=cfg.sample_steps,
                            guidance=cfg.sample_guidance, seed=cfg.train.seed)

    def export(model: TemporalTrainee):
        save_temporal(model.video_unet, out / "model")

    run = RunInfo(stage="temporal", folder=out, options=config_to_dict(cfg), vocabulary=vocabulary,
                  data=str(Path(data).resolve()), parent=str(Path(spatial_path).resolve()),
                  extra={"classes": [vocabulary.code(i) for i in class_ids], "status": "training"})
    out.mkdir(parents=True, exist_ok=True)
    run.save()
    result = train(run_dir=out, model=model, trainable=trainable,
                   dataset=ClipDataset(clips, size=image_size), loss_fn=loss_fn, config=cfg.train,
                   on_sample=on_sample, resume=resume, progress=progress, export=export)
    if not torch.equal(frozen_before, spatial_fingerprint(video_unet, spatial)):
        raise SpatialWeightsChangedError("stage 2 changed a frozen spatial weight; this is a bug, please report it")
    run.extra["status"] = "done"
    run.save()
    return result


def save_temporal(video_unet: VideoUNet, folder: Path) -> None:
    with atomic_folder(folder) as tmp:
        save_safetensors_atomic(video_unet.temporal_state_dict(), tmp / TEMPORAL_WEIGHTS)
        (tmp / TEMPORAL_CONFIG).write_text(json.dumps(video_unet.config.to_dict(), indent=2) + "\n")


def load_video_model(run_folder: str | Path) -> tuple[VideoUNet, SpatialModel, RunInfo]:
    """A stage-2 run's video U-Net on top of the spatial model it was trained on."""
    run = read_run(run_folder, stage="temporal")
    spatial, _ = load_spatial_run(run.parent_path)
    config = TemporalConfig.from_dict(json.loads((run.model_dir / TEMPORAL_CONFIG).read_text()))
    video_unet = VideoUNet(spatial.unet, config)
    missing, unexpected = video_unet.load_state_dict(load_file(run.model_dir / TEMPORAL_WEIGHTS), strict=False)
    missing = [k for k in missing if not k.startswith("unet.")]
    if missing or unexpected:
        raise ValueError(f"{run.model_dir / TEMPORAL_WEIGHTS}: weights do not match the temporal config "
                         f"(missing {missing[:3]}, unexpected {unexpected[:3]})")
    return video_unet, spatial, run
