"""Stage 2: learn a class's motion, by default with temporal blocks on the frozen spatial model.

`--arch survgen` (the method): the stage-1 U-Net, VAE and text encoder are
frozen (and checked to stay unchanged); the temporal blocks and the class
embedding are the only trained parameters, on 16-frame clips of the chosen
class(es). `--arch lvdm | endora` (the paper's baselines): the whole video
model is trained from its config on the same clips, in the same latent space
(the stage-1 VAE and text encoder stay frozen); Endora's DINO prior loss is
added when a local DINO folder is given. Prompt and class label are dropped
together with a small probability, so that guidance's unconditional branch
(which drops both) is trained as often as that probability says.

Output: `RUN/model/temporal.safetensors` (what stage 2 trained: the temporal
blocks and class embedding, or a baseline's whole model; EMA weights) and
`RUN/model/temporal_config.json` (the architecture and its config); the
spatial model is referenced from `run.json`, not copied.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import torch
from torch import nn

from survgen.config import config_to_dict
from survgen.data.datasets import ClipDataset
from survgen.data.index import build_index
from survgen.data.latent_cache import CachedClipDataset, open_latent_cache
from survgen.diffusion.objective import dropped_conditions, noise_for_v_prediction, sample_latents
from survgen.models.dino_prior import DinoPrior
from survgen.models.loading import load_spatial_run, save_video_model
from survgen.models.spatial import SpatialModel, check_image_size, check_v_prediction
from survgen.models.video_base import VideoModel
from survgen.models.video_models import build_video_model
from survgen.models.video_unet import TEMPORAL_PRESETS
from survgen.runs import RunInfo, relative_to_run
from survgen.training.checkpoint import open_training_run, training_run
from survgen.training.configs import TemporalStageConfig
from survgen.training.loop import StepReporter, resolve_mixed_precision, train
from survgen.training.previews import write_video_samples


class SpatialWeightsChangedError(RuntimeError):
    """Stage 2 must leave every frozen weight untouched."""


class TemporalTrainee(nn.Module):
    """The video model plus the frozen VAE and text encoder (and Endora's prior), as one module for the loop."""

    def __init__(self, video_model: VideoModel, spatial: SpatialModel, prior: DinoPrior | None = None):
        super().__init__()
        self.video_model = video_model
        self.vae = spatial.vae.requires_grad_(False)
        self.text_encoder = spatial.text_encoder.requires_grad_(False)
        self.prior = prior

    def frozen_modules(self) -> list[nn.Module]:
        return self.video_model.frozen_modules() + [self.vae, self.text_encoder] + ([self.prior.dino] if self.prior else [])

    def store_frozen_in(self, dtype: torch.dtype) -> None:
        """Store the frozen U-Net and VAE in `dtype` (the text encoder runs once, before training, in full precision)."""
        for module in self.video_model.frozen_modules() + [self.vae]:
            module.to(dtype)

    def trainable_parameters(self) -> dict[str, nn.Parameter]:
        params = {f"video_model.{n}": p for n, p in self.video_model.trainable_parameters().items()}
        if self.prior is not None:
            params.update({f"prior.{n}": p for n, p in self.prior.trainable_parameters().items()})
        return params


def frozen_weight_dtype(mixed_precision: str) -> torch.dtype:
    """The dtype of the frozen U-Net and VAE: under mixed precision they only run inside autocast, whose
    matmuls read them in the compute dtype anyway, so fp32 copies would only take memory (3.2 GiB at sd15)."""
    return {"bf16": torch.bfloat16, "fp16": torch.float16}.get(resolve_mixed_precision(mixed_precision), torch.float32)


def frozen_fingerprint(trainee: TemporalTrainee) -> torch.Tensor:
    """A cheap per-tensor checksum of every frozen weight, to prove stage 2 did not change them."""
    tensors = [p for m in trainee.frozen_modules() for p in m.parameters()]
    return torch.stack([t.detach().double().sum() for t in tensors] + [t.detach().double().square().sum() for t in tensors])


def frame_size(cfg: TemporalStageConfig, spatial: SpatialModel, spatial_run: RunInfo | None) -> int:
    """The frame size to train at: as asked, else the one stage 1 trained at (SD 1.5's U-Net config says
    512 px even when fine-tuned at 256, so a run's own record comes first)."""
    size = cfg.image_size if cfg.image_size is not None else (
        (spatial_run.options.get("image_size") if spatial_run else None)
        or spatial.unet.config.sample_size * spatial.vae_downsample)
    check_image_size(size, spatial.image_multiple)
    return size


def fresh_video_model(cfg: TemporalStageConfig, spatial: SpatialModel, spatial_run: RunInfo | None,
                      num_classes: int, image_size: int) -> VideoModel:
    """The untrained video model of `cfg.arch` at the spatial model's preset; its initial weights come from the
    run's seed."""
    preset = spatial_run.options.get("preset", "sd15") if spatial_run else "sd15"
    sized = {k: v for k, v in (("heads", cfg.heads), ("attention_layers", cfg.attention_layers)) if v is not None}
    torch.manual_seed(cfg.train.seed)
    video_model = build_video_model(cfg.arch, spatial, preset=preset, num_classes=num_classes,
                                    latent_size=image_size // spatial.vae_downsample,
                                    temporal=dataclasses.replace(TEMPORAL_PRESETS[preset], **sized))
    video_model.enable_gradient_checkpointing(cfg.gradient_checkpointing)
    return video_model


def train_temporal(data: str | Path, spatial_path: str | Path, out: str | Path, cfg: TemporalStageConfig, *,
                   resume: bool = False, progress: StepReporter | None = None):
    """Run stage 2 for `cfg.classes` into the run folder `out`."""
    out = Path(out)
    open_training_run(out, "temporal", resume, config_to_dict(cfg), data=data, parent=spatial_path)
    if not (Path(spatial_path) / "run.json").exists():
        check_v_prediction(spatial_path)
    spatial, spatial_run = load_spatial_run(spatial_path)
    index = build_index(data, clip_length=cfg.clip_length, clip_fps=cfg.clip_fps,
                        vocabulary=spatial_run.vocabulary if spatial_run else None)
    vocabulary = index.vocabulary
    class_ids = [vocabulary.resolve(c) for c in cfg.classes]
    clips = index.for_classes(class_ids)
    if len(clips) == 0:
        raise ValueError(f"{data}: no {cfg.clip_length}-frame clips of class(es) {', '.join(cfg.classes)}")
    image_size = frame_size(cfg, spatial, spatial_run)
    dataset = (CachedClipDataset(clips, open_latent_cache(cfg.cache, spatial.vae, image_size)) if cfg.cache
               else ClipDataset(clips, size=image_size))
    video_model = fresh_video_model(cfg, spatial, spatial_run, len(vocabulary), image_size)
    prior = DinoPrior.from_folder(cfg.prior_dino, video_model) if cfg.prior_dino else None
    model = TemporalTrainee(video_model, spatial, prior)
    model.store_frozen_in(frozen_weight_dtype(cfg.train.mixed_precision))
    frozen_before = frozen_fingerprint(model)

    prompts = spatial.encode_prompts(vocabulary.prompts() + [""])  # frozen encoder: encode once

    def loss_fn(model: TemporalTrainee, batch, generator):
        return stage2_loss(model, spatial, prompts, batch, cfg, generator)

    def on_sample(step: int, model: TemporalTrainee):
        write_video_samples(model.video_model, spatial, out / "samples" / f"step-{step:06d}", vocabulary,
                            class_ids, num_frames=cfg.clip_length, steps=cfg.sample_steps,
                            guidance=cfg.sample_guidance, seed=cfg.train.seed)

    def export(model: TemporalTrainee):
        save_video_model(model.video_model, out / "model")

    run = RunInfo(stage="temporal", folder=out, options=config_to_dict(cfg), vocabulary=vocabulary,
                  data=relative_to_run(out, data), parent=relative_to_run(out, spatial_path),
                  extra={"classes": [vocabulary.code(i) for i in class_ids], "arch": cfg.arch})
    with training_run(run, resume):
        result = train(run_dir=out, model=model, trainable=model.trainable_parameters(),
                       dataset=dataset, loss_fn=loss_fn, config=cfg.train,
                       on_sample=on_sample, resume=resume, progress=progress, export=export)
        if not torch.equal(frozen_before, frozen_fingerprint(model)):
            raise SpatialWeightsChangedError("stage 2 changed a frozen weight; this is a bug, please report it")
    return result


def stage2_loss(model: TemporalTrainee, spatial: SpatialModel, prompts: torch.Tensor, batch: dict,
                cfg: TemporalStageConfig, generator: torch.Generator) -> torch.Tensor:
    """The v-prediction loss of a batch of clips (plus Endora's prior loss).

    The batch holds `class_id` and either `pixels` (b, f, 3, H, W) or a latent
    cache's `latent_mean` and `latent_std` (b, f, c, h, w). `prompts` holds the
    encoded prompt of every class and, last, the empty prompt.
    """
    class_ids = batch["class_id"]
    latents = sample_latents(model.vae, batch, generator, spatial.latent_scale).transpose(1, 2)  # (b, c, f, h, w)
    noised = noise_for_v_prediction(spatial.noise_scheduler, latents, generator)
    dropped = dropped_conditions(class_ids, cfg.condition_dropout, generator)
    prompt_ids = torch.where(dropped, len(prompts) - 1, class_ids)
    class_labels = torch.where(dropped, model.video_model.null_class, class_ids)
    text = prompts.to(latents.device)[prompt_ids]
    if model.prior is None:
        pred = model.video_model(noised.noisy, noised.timesteps, text, class_labels)
        return nn.functional.mse_loss(pred.float(), noised.target.float())
    pred, features = model.video_model(noised.noisy, noised.timesteps, text, class_labels,
                                       features_of=model.prior.block_indices)
    prior_loss = model.prior.loss(features, batch["pixels"].flatten(0, 1))
    return nn.functional.mse_loss(pred.float(), noised.target.float()) + cfg.prior_weight * prior_loss
