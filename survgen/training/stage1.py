"""Stage 1: fine-tune the 2D latent diffusion U-Net on single frames paired with class prompts.

One spatial model for all classes. Each frame's prompt is its class's
("action recognition task of cutting the suture"); a fraction of prompts is
replaced by the empty prompt so that classifier-free guidance has an
unconditional branch. The VAE stays frozen; the text encoder is trained only
when asked (the tiny preset's encoder starts from random weights, so it is on
by default there).
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import torch
from torch import nn

from survgen.config import config_to_dict
from survgen.data.datasets import FrameDataset
from survgen.data.index import build_index
from survgen.data.latent_cache import CachedFrameDataset, open_latent_cache
from survgen.diffusion.objective import drop_conditions, noise_for_v_prediction, sample_latents
from survgen.models.loading import load_vae
from survgen.models.spatial import SpatialModel, build_spatial, build_tiny, check_image_size, save_spatial
from survgen.presets import NATIVE_IMAGE_SIZE
from survgen.runs import RunInfo, relative_to_run
from survgen.training.checkpoint import open_training_run, training_run
from survgen.training.configs import SpatialStageConfig
from survgen.training.loop import StepReporter, train
from survgen.training.previews import write_image_samples


class SpatialTrainee(nn.Module):
    """Holds the stage-1 modules so the training loop sees one model."""

    def __init__(self, spatial: SpatialModel):
        super().__init__()
        self.unet = spatial.unet
        self.text_encoder = spatial.text_encoder
        self.vae = spatial.vae


def starting_model(cfg: SpatialStageConfig, vocabulary) -> SpatialModel:
    if cfg.preset == "tiny" and cfg.pretrained is None:
        if cfg.vae is None:
            raise ValueError(
                "the tiny preset needs a trained autoencoder: run `survgen train-vae --data DIR --out RUN_VAE` "
                "first and pass --vae RUN_VAE"
            )
        vae, _ = load_vae(vae=cfg.vae)
        return build_tiny(vocabulary, seed=cfg.train.seed, vae=vae)
    return build_spatial(cfg.preset, pretrained=cfg.pretrained, tokenizer_path=cfg.tokenizer,
                         vocabulary=vocabulary, seed=cfg.train.seed)


def train_spatial(data: str | Path, out: str | Path, cfg: SpatialStageConfig, *, resume: bool = False,
                  progress: StepReporter | None = None):
    """Run stage 1 into the run folder `out`; returns the training result."""
    out = Path(out)
    if cfg.image_size is None:  # stored resolved
        cfg = dataclasses.replace(cfg, image_size=NATIVE_IMAGE_SIZE.get(cfg.preset))
    open_training_run(out, "spatial", resume, config_to_dict(cfg), data=data)
    index = build_index(data, clip_length=cfg.clip_length, clip_fps=cfg.clip_fps)
    vocabulary = index.vocabulary
    spatial = starting_model(cfg, vocabulary)
    check_image_size(cfg.image_size, spatial.image_multiple)
    frames = (CachedFrameDataset(index, open_latent_cache(cfg.cache, spatial.vae, cfg.image_size)) if cfg.cache
              else FrameDataset(index, size=cfg.image_size))
    train_text = cfg.train_text_encoder if cfg.train_text_encoder is not None else cfg.preset == "tiny"

    model = SpatialTrainee(spatial)
    model.requires_grad_(False)
    model.unet.requires_grad_(True)
    model.text_encoder.requires_grad_(train_text)
    trainable = {n: p for n, p in model.named_parameters() if p.requires_grad}

    prompts = vocabulary.prompts() + [""]  # the last one is the null prompt
    null_prompt = len(prompts) - 1
    tokens = spatial.tokenizer(prompts, padding="max_length", max_length=spatial.tokenizer.model_max_length,
                               truncation=True, return_tensors="pt").input_ids

    def loss_fn(model: SpatialTrainee, batch, generator):
        latents = sample_latents(model.vae, batch, generator, spatial.latent_scale)
        noised = noise_for_v_prediction(spatial.noise_scheduler, latents, generator)
        prompt_ids = drop_conditions(batch["class_id"], null_prompt, cfg.prompt_dropout, generator)
        with torch.set_grad_enabled(train_text and torch.is_grad_enabled()):
            text = model.text_encoder(tokens.to(latents.device)[prompt_ids])[0]
        pred = model.unet(noised.noisy, noised.timesteps, text).sample
        return nn.functional.mse_loss(pred.float(), noised.target.float())

    def on_sample(step: int, model: SpatialTrainee):
        write_image_samples(spatial, out / "samples" / f"step-{step:06d}.png", vocabulary,
                            steps=cfg.sample_steps, guidance=cfg.sample_guidance, seed=cfg.train.seed)

    run = RunInfo(stage="spatial", folder=out, options=config_to_dict(cfg), vocabulary=vocabulary,
                  data=relative_to_run(out, data),
                  parent=relative_to_run(out, cfg.pretrained or cfg.vae) if cfg.pretrained or cfg.vae else None)
    with training_run(run, resume):
        return train(run_dir=out, model=model, trainable=trainable,
                     dataset=frames, loss_fn=loss_fn, config=cfg.train,
                     on_sample=on_sample, resume=resume, progress=progress,
                     export=lambda model: save_spatial(spatial, out / "model"))
