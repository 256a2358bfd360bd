"""Stage 0 for the tiny preset: train its small VAE on frames of the dataset.

Stable Diffusion ships a trained autoencoder; the tiny preset has none, so it
learns one here: L1 reconstruction plus a small KL term (the SD autoencoder's
recipe without the perceptual and adversarial losses, which need pretrained
networks). Where the data marks the needle and thread (`cue_masks`, the
bundled dataset), their pixels get an L1 term of their own: they are a few
per cent of a frame, so the plain L1 barely notices a VAE that drops them, and
they are what the rare classes are about.

Its reconstructions are scored at every sample step, per class, over all
pixels and over the cue pixels (PSNR, `reconstruction.json`). The exported
VAE's `scaling_factor` is 1/std of its latents on the training frames, as SD
chose 0.18215, so latents enter diffusion at unit scale.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import torch
from torch import nn

from survgen.config import config_to_dict
from survgen.data.datasets import FrameDataset
from survgen.data.index import build_index
from survgen.io import atomic_folder, write_json_atomic
from survgen.models.spatial import check_image_size, tiny_vae
from survgen.runs import RunInfo, relative_to_run
from survgen.training.checkpoint import open_training_run, training_run
from survgen.training.configs import AutoencoderStageConfig
from survgen.training.loop import StepReporter, train
from survgen.visualize import grid, save_png, to_uint8

RECONSTRUCTION = "reconstruction.json"  # the run's PSNR at each sample step


@torch.no_grad()
def latent_scale(vae, frames: torch.Tensor) -> float:
    """1 / std of the latent means over a batch of frames."""
    return float(1.0 / vae.encode(frames).latent_dist.mean.std())


def cue_l1(recon: torch.Tensor, pixels: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Mean absolute error over the masked pixels (`mask` (b, 1, H, W)); 0 where nothing is masked."""
    return ((recon - pixels).abs() * mask).sum() / (mask.sum() * pixels.shape[1]).clamp(min=1)


def psnr(squared_error: float, count: float) -> float | None:
    """PSNR in dB of pixels in [-1, 1] (peak-to-peak 2, as 255 for 8-bit); None over no pixels."""
    if count == 0:
        return None
    mse = squared_error / count
    return math.inf if mse == 0 else 10 * math.log10(4 / mse)


def evaluation_frames(frames: FrameDataset, per_class: int) -> list[int]:
    """Up to `per_class` frames of each class, evenly spread over its frames."""
    chosen = []
    for class_id in sorted(set(frames.class_ids.tolist())):
        items = (frames.class_ids == class_id).nonzero()[0]
        chosen += items[torch.linspace(0, len(items) - 1, min(per_class, len(items))).round().long().numpy()].tolist()
    return sorted(set(chosen))


@torch.no_grad()
def reconstruction_psnr(vae, frames: FrameDataset, items: list[int], batch_size: int = 32) -> dict:
    """PSNR of `vae`'s reconstructions (its latent mean, decoded) over all pixels and over the
    cue pixels, pooled over `items` and per class (by code)."""
    vocabulary = frames.index.vocabulary
    sums: dict[str, list[float]] = {}  # code → [squared error, pixels, cue squared error, cue pixels, frames]
    for start in range(0, len(items), batch_size):
        batch = [frames[i] for i in items[start:start + batch_size]]
        pixels = torch.stack([b["pixels"] for b in batch])
        mask = torch.stack([b["cue_mask"] for b in batch])
        error = (vae.decode(vae.encode(pixels).latent_dist.mode()).sample.clamp(-1, 1) - pixels).square()
        for b, e, m in zip(batch, error, mask):
            row = sums.setdefault(vocabulary.code(b["class_id"]), [0.0] * 5)
            for k, value in enumerate((e.sum(), e.numel(), (e * m).sum(), m.sum() * e.shape[0], 1)):
                row[k] += float(value)

    def scored(row):
        return {"frames": int(row[4]), "psnr_db": psnr(row[0], row[1]), "cue_psnr_db": psnr(row[2], row[3])}

    pooled = [sum(column) for column in zip(*sums.values())]
    return {**scored(pooled), "per_class": {code: scored(row) for code, row in sorted(sums.items())}}


def record_reconstruction(out: Path, step: int, scores: dict) -> None:
    """Add step `step`'s scores to `out/reconstruction.json` (a resumed run replaces its own step)."""
    path = out / RECONSTRUCTION
    history = [r for r in (json.loads(path.read_text()) if path.exists() else []) if r["step"] != step]
    write_json_atomic(path, sorted(history + [{"step": step, **scores}], key=lambda r: r["step"]))


def describe_reconstruction(out: Path) -> str:
    """One line on the run's last reconstruction scores."""
    path = out / RECONSTRUCTION
    if not path.exists():
        return f"no reconstruction scores yet ({path} is written at each sample step)"
    last = json.loads(path.read_text())[-1]

    def db(value):
        return "n/a" if value is None else f"{value:.1f} dB"

    cues = ", ".join(f"{code} {db(s['cue_psnr_db'])}" for code, s in last["per_class"].items())
    return (f"reconstruction at step {last['step']} ({last['frames']} frames): PSNR {db(last['psnr_db'])}; "
            f"needle and thread pixels {db(last['cue_psnr_db'])} ({cues})")


def train_autoencoder(data: str | Path, out: str | Path, cfg: AutoencoderStageConfig, *,
                      resume: bool = False, progress: StepReporter | None = None):
    out = Path(out)
    open_training_run(out, "vae", resume, config_to_dict(cfg), data=data)
    index = build_index(data, clip_length=cfg.clip_length, clip_fps=cfg.clip_fps)
    dataset = FrameDataset(index, size=cfg.image_size, cue_masks=True)
    torch.manual_seed(cfg.train.seed)
    vae = tiny_vae(cfg.widths, cfg.latent_channels)
    check_image_size(cfg.image_size, 2 ** (len(vae.config.block_out_channels) - 1))
    preview = torch.stack([dataset[i]["pixels"] for i in torch.linspace(0, len(dataset) - 1, 8).long().tolist()])
    scored_items = evaluation_frames(dataset, per_class=cfg.score_frames)

    def loss_fn(model, batch, generator):
        pixels = batch["pixels"]
        dist = model.encode(pixels).latent_dist
        recon = model.decode(dist.sample(generator=generator)).sample
        return (nn.functional.l1_loss(recon, pixels) + cfg.cue_weight * cue_l1(recon, pixels, batch["cue_mask"])
                + cfg.kl_weight * dist.kl().mean())

    def on_sample(step, model):
        with torch.no_grad():
            recon = model.decode(model.encode(preview).latent_dist.mode()).sample
        save_png(grid([to_uint8(preview), to_uint8(recon)], ["real", "recon"]),
                 out / "samples" / f"step-{step:06d}.png")
        record_reconstruction(out, step, reconstruction_psnr(model, dataset, scored_items))

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
