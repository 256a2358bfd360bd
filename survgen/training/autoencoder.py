"""Stage 0 for the tiny preset: train its small VAE on frames of the dataset.

Stable Diffusion ships a trained autoencoder; the tiny preset has none, so it
learns one here: L1 reconstruction plus a small KL term (the SD autoencoder's
recipe without the perceptual and adversarial losses, which need pretrained
networks). The exported VAE's `scaling_factor` is 1/std of its latents on the
training frames, as SD chose 0.18215, so latents enter diffusion at unit scale.
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from survgen.config import config_to_dict
from survgen.data.datasets import FrameDataset
from survgen.data.index import build_index
from survgen.io import atomic_folder
from survgen.models.spatial import build_tiny, check_image_size
from survgen.runs import RunInfo, relative_to_run
from survgen.training.checkpoint import open_training_run, training_run
from survgen.training.configs import AutoencoderStageConfig
from survgen.training.loop import StepReporter, train
from survgen.visualize import grid, save_png, to_uint8


@torch.no_grad()
def latent_scale(vae, frames: torch.Tensor) -> float:
    """1 / std of the latent means over a batch of frames."""
    return float(1.0 / vae.encode(frames).latent_dist.mean.std())


def train_autoencoder(data: str | Path, out: str | Path, cfg: AutoencoderStageConfig, *,
                      resume: bool = False, progress: StepReporter | None = None):
    out = Path(out)
    open_training_run(out, "vae", resume, config_to_dict(cfg), data=data)
    index = build_index(data, clip_length=cfg.clip_length, clip_fps=cfg.clip_fps)
    dataset = FrameDataset(index, size=cfg.image_size)
    vae = build_tiny(index.vocabulary, seed=cfg.train.seed).vae
    check_image_size(cfg.image_size, 2 ** (len(vae.config.block_out_channels) - 1))
    preview = torch.stack([dataset[i]["pixels"] for i in torch.linspace(0, len(dataset) - 1, 8).long().tolist()])

    def loss_fn(model, batch, generator):
        pixels = batch["pixels"]
        dist = model.encode(pixels).latent_dist
        recon = model.decode(dist.sample(generator=generator)).sample
        return nn.functional.l1_loss(recon, pixels) + cfg.kl_weight * dist.kl().mean()

    def on_sample(step, model):
        with torch.no_grad():
            recon = model.decode(model.encode(preview).latent_dist.mode()).sample
        save_png(grid([to_uint8(preview), to_uint8(recon)], ["real", "recon"]),
                 out / "samples" / f"step-{step:06d}.png")

    def export(model):
        model.register_to_config(scaling_factor=latent_scale(model, preview))
        with atomic_folder(out / "model") as tmp:
            model.save_pretrained(tmp, safe_serialization=True)

    run = RunInfo(stage="vae", folder=out, options=config_to_dict(cfg), vocabulary=index.vocabulary,
                  data=relative_to_run(out, data))
    with training_run(run, resume):
        return train(run_dir=out, model=vae, trainable=dict(vae.named_parameters()), dataset=dataset,
                     loss_fn=loss_fn, config=cfg.train, on_sample=on_sample, resume=resume,
                     progress=progress, export=export)
