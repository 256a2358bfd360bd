"""Stage 1's spatial model: VAE + text encoder + tokenizer + 2D U-Net, built or loaded offline.

Two presets:
- `tiny` builds every component from config (a 64×64 VAE with 4× downsampling, a
  2-layer CLIP text encoder, a 2-level U-Net) so the whole method trains on a
  laptop CPU. Its tokenizer is a CLIP byte-level BPE tokenizer whose vocabulary
  is the 256 byte symbols plus merges for the words of the class prompts, built
  here in code: it tokenizes any text (unknown words fall back to bytes), needs
  no download, and is saved with the model like SD's.
- `sd15` loads Stable Diffusion 1.5 from a local diffusers folder, or from a
  single `.safetensors` checkpoint plus a local tokenizer folder.

A trained spatial model is saved as a diffusers folder (`vae/`, `text_encoder/`,
`tokenizer/`, `unet/`, `scheduler/`, `model_index.json`), so
`StableDiffusionPipeline.from_pretrained(folder)` loads it too.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path

import torch
from diffusers import AutoencoderKL, DDPMScheduler, UNet2DConditionModel
from safetensors import SafetensorError
from transformers import CLIPTextConfig, CLIPTextModel, CLIPTokenizer
from transformers.convert_slow_tokenizer import bytes_to_unicode

from survgen.classes import ClassVocabulary
from survgen.io import atomic_folder
from survgen.presets import PRESETS


class ModelLoadError(ValueError):
    """A model folder or checkpoint that cannot be loaded, with what to do about it."""


@dataclass
class SpatialModel:
    """The stage-1 components. `noise_scheduler` holds the training noise schedule (v-prediction)."""

    vae: AutoencoderKL
    text_encoder: CLIPTextModel
    tokenizer: CLIPTokenizer
    unet: UNet2DConditionModel
    noise_scheduler: DDPMScheduler

    @property
    def latent_scale(self) -> float:
        return float(self.vae.config.scaling_factor)

    @property
    def vae_downsample(self) -> int:
        return 2 ** (len(self.vae.config.block_out_channels) - 1)

    @property
    def image_multiple(self) -> int:
        """Frame sizes must be multiples of this: the VAE's downsampling times the U-Net's."""
        return self.vae_downsample * 2 ** (len(self.unet.config.down_block_types) - 1)

    def modules(self) -> dict[str, torch.nn.Module]:
        return {"vae": self.vae, "text_encoder": self.text_encoder, "unet": self.unet}

    def to(self, device) -> "SpatialModel":
        for m in self.modules().values():
            m.to(device)
        return self

    @torch.no_grad()
    def encode_prompts(self, prompts: list[str]) -> torch.Tensor:
        """Text-encoder hidden states `(n, seq, d)` for a list of prompts (no gradient)."""
        return self.text_hidden_states(prompts)

    def text_hidden_states(self, prompts: list[str]) -> torch.Tensor:
        ids = self.tokenizer(
            prompts,
            padding="max_length",
            max_length=self.tokenizer.model_max_length,
            truncation=True,
            return_tensors="pt",
        ).input_ids.to(self.text_encoder.device)
        return self.text_encoder(ids)[0]

    @torch.no_grad()
    def decode_latents(self, latents: torch.Tensor, chunk: int = 16) -> torch.Tensor:
        """Images in [-1, 1] from scaled latents, decoded in chunks to bound memory."""
        out = [self.vae.decode(part / self.latent_scale).sample for part in latents.split(chunk)]
        return torch.cat(out).clamp(-1, 1)


# --------------------------------------------------------------------------- noise schedule
def v_prediction_scheduler(num_train_timesteps: int = 1000) -> DDPMScheduler:
    """SD's scaled-linear schedule with velocity targets (the paper trains with v-prediction)."""
    return DDPMScheduler(
        num_train_timesteps=num_train_timesteps,
        beta_schedule="scaled_linear",
        beta_start=0.00085,
        beta_end=0.012,
        prediction_type="v_prediction",
        clip_sample=False,
        steps_offset=1,  # as SD 1.5 ships it: inference timesteps end at t=1, not t=0
    )


# --------------------------------------------------------------------------- tiny preset
TINY_IMAGE_SIZE = 64


def tiny_tokenizer(vocabulary: ClassVocabulary, max_length: int = 32) -> CLIPTokenizer:
    """A CLIP byte-level BPE tokenizer with merges for the words of the class prompts.

    Byte symbols (with and without the end-of-word marker) make any text
    tokenizable; one merge chain per prompt word makes each known word a single
    token, so the tiny text encoder sees words, not letters.
    """
    byte_symbols = list(bytes_to_unicode().values())
    vocab: dict[str, int] = {}
    for token in byte_symbols + [s + "</w>" for s in byte_symbols]:
        vocab.setdefault(token, len(vocab))
    merges: list[tuple[str, str]] = []
    words = sorted({w for p in vocabulary.prompts() + [""] for w in re.findall(r"[a-z]+", p.lower())})
    symbol_of = bytes_to_unicode()
    for word in words:
        symbols = [symbol_of[b] for b in word.encode()]
        symbols[-1] += "</w>"
        merged = symbols[0]
        for nxt in symbols[1:]:
            merge = (merged, nxt)
            if merge not in merges:
                merges.append(merge)
            merged += nxt
            vocab.setdefault(merged, len(vocab))
    for special in ("<|startoftext|>", "<|endoftext|>"):
        vocab.setdefault(special, len(vocab))
    return CLIPTokenizer(vocab=vocab, merges=merges, model_max_length=max_length)


TINY_VAE_WIDTHS = (32, 64, 64)  # three blocks: latents are a quarter of the frame size
TINY_LATENT_CHANNELS = 4


def tiny_vae(widths: tuple[int, ...] = TINY_VAE_WIDTHS, latent_channels: int = TINY_LATENT_CHANNELS) -> AutoencoderKL:
    """The tiny preset's autoencoder, untrained (`survgen train-vae` trains it)."""
    return AutoencoderKL(
        in_channels=3,
        out_channels=3,
        down_block_types=("DownEncoderBlock2D",) * len(widths),
        up_block_types=("UpDecoderBlock2D",) * len(widths),
        block_out_channels=tuple(widths),
        layers_per_block=1,
        latent_channels=latent_channels,
        norm_num_groups=16,
        sample_size=TINY_IMAGE_SIZE,
        scaling_factor=1.0,  # set from data by `survgen train-vae` (1 / std of the latents)
    )


def build_tiny(vocabulary: ClassVocabulary | None = None, seed: int = 0, vae: AutoencoderKL | None = None) -> SpatialModel:
    """The `tiny` preset, randomly initialised (seeded) from config, around `vae` (a trained one, or
    a fresh `tiny_vae()`): the U-Net takes the VAE's latent channels."""
    vocabulary = vocabulary or ClassVocabulary()
    torch.manual_seed(seed)
    tokenizer = tiny_tokenizer(vocabulary)
    text_encoder = CLIPTextModel(
        CLIPTextConfig(
            vocab_size=len(tokenizer),
            hidden_size=64,
            intermediate_size=128,
            num_hidden_layers=2,
            num_attention_heads=4,
            max_position_embeddings=tokenizer.model_max_length,
            bos_token_id=tokenizer.bos_token_id,
            eos_token_id=tokenizer.eos_token_id,
            pad_token_id=tokenizer.pad_token_id,
        )
    )
    vae = vae if vae is not None else tiny_vae()
    latent_channels = vae.config.latent_channels
    unet = UNet2DConditionModel(
        sample_size=TINY_IMAGE_SIZE // 2 ** (len(vae.config.block_out_channels) - 1),
        in_channels=latent_channels,
        out_channels=latent_channels,
        down_block_types=("CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D"),
        up_block_types=("UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D"),
        block_out_channels=(32, 64, 96),
        layers_per_block=1,
        norm_num_groups=32,
        cross_attention_dim=64,
        attention_head_dim=8,
    )
    return SpatialModel(vae, text_encoder, tokenizer, unet, v_prediction_scheduler())


# --------------------------------------------------------------------------- sd15 preset
SD15_UNET_CONFIG = dict(
    sample_size=64,
    in_channels=4,
    out_channels=4,
    down_block_types=("CrossAttnDownBlock2D",) * 3 + ("DownBlock2D",),
    up_block_types=("UpBlock2D",) + ("CrossAttnUpBlock2D",) * 3,
    block_out_channels=(320, 640, 1280, 1280),
    layers_per_block=2,
    cross_attention_dim=768,
    attention_head_dim=8,
)
SD15_VAE_CONFIG = dict(
    down_block_types=("DownEncoderBlock2D",) * 4,
    up_block_types=("UpDecoderBlock2D",) * 4,
    block_out_channels=(128, 256, 512, 512),
    layers_per_block=2,
    latent_channels=4,
    scaling_factor=0.18215,
)
# CLIP ViT-L/14's text tower, as SD 1.5 ships it
SD15_TEXT_CONFIG = dict(
    hidden_size=768,
    intermediate_size=3072,
    num_attention_heads=12,
    num_hidden_layers=12,
    max_position_embeddings=77,
    projection_dim=768,
    hidden_act="quick_gelu",
)


def _check_folder(path: Path, parts: tuple[str, ...]) -> None:
    missing = [p for p in parts if not (path / p).exists()]
    if missing:
        raise ModelLoadError(
            f"{path}: not a Stable-Diffusion-style model folder (missing {', '.join(missing)}). "
            "Give a diffusers folder with vae/, text_encoder/, tokenizer/ and unet/ (e.g. a local copy of "
            "Stable Diffusion 1.5, or the --out folder of `survgen train-spatial`), or a single "
            ".safetensors checkpoint with --tokenizer."
        )


def check_image_size(size: int, multiple: int) -> None:
    """Refuse, before any training, a frame size the autoencoder and U-Net cannot halve down evenly."""
    if size < multiple or size % multiple:
        near = max(multiple, round(size / multiple) * multiple)
        raise ValueError(f"--image-size {size}: must be a multiple of {multiple} (the model's downsampling), "
                         f"e.g. {near}")


def load_spatial(path: str | Path, tokenizer_path: str | Path | None = None) -> SpatialModel:
    """Load a spatial model from a local diffusers folder or a single `.safetensors` file.

    The noise schedule is always v-prediction (what this method trains with), keeping the
    checkpoint's betas when it has a scheduler config.
    """
    path = Path(path)
    if not path.exists():
        raise ModelLoadError(f"{path}: no such file or folder")
    if path.is_file():
        return _load_single_file(path, tokenizer_path)
    _check_folder(path, ("vae", "text_encoder", "tokenizer", "unet"))
    common = dict(local_files_only=True)
    try:
        vae = AutoencoderKL.from_pretrained(path / "vae", **common)
        text_encoder = CLIPTextModel.from_pretrained(path / "text_encoder", **common)
        tokenizer = CLIPTokenizer.from_pretrained(path / "tokenizer", **common)
        unet = UNet2DConditionModel.from_pretrained(path / "unet", **common)
    except (OSError, ValueError, KeyError, SafetensorError) as e:
        raise ModelLoadError(f"{path}: could not load the model folder ({e}); a file in it is missing or damaged") from None
    scheduler = v_prediction_scheduler()
    if (path / "scheduler" / "scheduler_config.json").exists():
        cfg = json.loads((path / "scheduler" / "scheduler_config.json").read_text())
        keep = {k: cfg[k] for k in ("num_train_timesteps", "beta_start", "beta_end", "beta_schedule") if k in cfg}
        scheduler = DDPMScheduler.from_config({**scheduler.config, **keep, "prediction_type": "v_prediction"})
    return SpatialModel(vae, text_encoder, tokenizer, unet, scheduler)


def check_v_prediction(folder: str | Path) -> None:
    """Refuse a diffusers folder whose U-Net was not trained for v-prediction (SD 1.5 predicts epsilon).

    Stage 1 fine-tunes such a U-Net to v-prediction; stage 2 and sampling assume
    it, so a raw SD 1.5 folder used directly would be sampled with the wrong target.
    """
    config = Path(folder) / "scheduler" / "scheduler_config.json"
    declared = json.loads(config.read_text()).get("prediction_type", "epsilon") if config.exists() else "epsilon"
    if declared != "v_prediction":
        raise ModelLoadError(
            f"{folder}: its U-Net predicts {declared} ({config.name if config.exists() else 'no scheduler config'}), "
            "and stage 2 needs a v-prediction model; fine-tune it first with `survgen train-spatial --preset sd15 "
            f"--pretrained {folder} --data DIR --out RUN1` and pass --spatial RUN1"
        )


def _load_single_file(path: Path, tokenizer_path: str | Path | None) -> SpatialModel:
    """An original-format SD 1.5 checkpoint, converted with diffusers' single-file loaders.

    The component configs are SD 1.5's own, written here, so nothing is fetched; the
    checkpoint carries no tokenizer vocabulary, so a local CLIP tokenizer folder is needed.
    """
    if path.suffix not in (".safetensors", ".ckpt"):
        raise ModelLoadError(f"{path}: expected a .safetensors checkpoint or a diffusers folder")
    if tokenizer_path is None:
        raise ModelLoadError(
            f"{path}: a single-file checkpoint has no tokenizer vocabulary; pass --tokenizer PATH "
            "(a local CLIP tokenizer folder with vocab.json and merges.txt, e.g. the tokenizer/ "
            "folder of any Stable Diffusion 1.x copy)"
        )
    from diffusers.loaders.single_file_utils import (convert_ldm_clip_checkpoint, convert_ldm_unet_checkpoint,
                                                     convert_ldm_vae_checkpoint, load_single_file_checkpoint)

    checkpoint = load_single_file_checkpoint(str(path), local_files_only=True)
    unet = UNet2DConditionModel(**SD15_UNET_CONFIG)
    unet.load_state_dict(convert_ldm_unet_checkpoint(checkpoint, unet.config))
    vae = AutoencoderKL(**SD15_VAE_CONFIG, sample_size=512)
    vae.load_state_dict(convert_ldm_vae_checkpoint(checkpoint, vae.config))
    text_encoder = CLIPTextModel(CLIPTextConfig(**SD15_TEXT_CONFIG))
    text_state = convert_ldm_clip_checkpoint(checkpoint)
    text_state.pop("text_model.embeddings.position_ids", None)  # a buffer in older transformers, gone in newer
    missing, unexpected = text_encoder.load_state_dict(text_state, strict=False)
    if missing or unexpected:
        raise ModelLoadError(f"{path}: the text encoder weights are not CLIP ViT-L/14's (missing {missing[:3]}, "
                             f"unexpected {unexpected[:3]}); is this a Stable Diffusion 1.x checkpoint?")
    tokenizer = CLIPTokenizer.from_pretrained(tokenizer_path, local_files_only=True)
    return SpatialModel(vae, text_encoder, tokenizer, unet, v_prediction_scheduler())


def build_spatial(preset: str, *, pretrained: str | Path | None = None, tokenizer_path=None,
                  vocabulary: ClassVocabulary | None = None, seed: int = 0) -> SpatialModel:
    """The model stage 1 starts from: `tiny` from config, `sd15` from a local path."""
    if preset == "tiny":
        if pretrained is not None:
            return load_spatial(pretrained, tokenizer_path)
        return build_tiny(vocabulary, seed=seed)
    if preset == "sd15":
        if pretrained is None:
            raise ModelLoadError(
                "the sd15 preset needs local Stable Diffusion 1.5 weights: pass --pretrained PATH "
                "(a diffusers folder or a .safetensors checkpoint); nothing is downloaded"
            )
        return load_spatial(pretrained, tokenizer_path)
    raise ModelLoadError(f"unknown preset {preset!r}; choose one of {', '.join(PRESETS)}")


# --------------------------------------------------------------------------- saving
MODEL_INDEX = {
    "_class_name": "StableDiffusionPipeline",
    "feature_extractor": [None, None],
    "requires_safety_checker": False,
    "safety_checker": [None, None],
    "scheduler": ["diffusers", "DDPMScheduler"],
    "text_encoder": ["transformers", "CLIPTextModel"],
    "tokenizer": ["transformers", "CLIPTokenizer"],
    "unet": ["diffusers", "UNet2DConditionModel"],
    "vae": ["diffusers", "AutoencoderKL"],
}


def save_spatial(model: SpatialModel, folder: str | Path) -> Path:
    """Write a diffusers-loadable folder atomically (built under a temp name, then renamed)."""
    with atomic_folder(folder) as tmp:
        model.vae.save_pretrained(tmp / "vae", safe_serialization=True)
        model.text_encoder.save_pretrained(tmp / "text_encoder", safe_serialization=True)
        model.tokenizer.save_pretrained(tmp / "tokenizer")
        model.unet.save_pretrained(tmp / "unet", safe_serialization=True)
        model.noise_scheduler.save_pretrained(tmp / "scheduler")
        (tmp / "model_index.json").write_text(json.dumps(MODEL_INDEX, indent=2) + "\n")
    return Path(folder)
