"""Training memory of each stage, counted on the meta device: weights, gradients, AdamW, EMA, saved activations.

What one training step of `survgen.training.loop.train` holds on the accelerator,
per stage, at a preset's full size and without allocating it:

- frozen weights: stage 1's VAE (and text encoder unless it is trained), stage 2's
  U-Net, VAE and text encoder; stored in the mixed-precision dtype in stage 2
  (`stage2.frozen_weight_dtype`: only autocast's matmuls ever read them), in fp32
  in stage 1 (the loop does not cast them);
- trainable weights, their gradients, AdamW's two moments and the EMA copy: all
  fp32 (accelerate's mixed precision is autocast: master weights stay fp32, and
  diffusers' `EMAModel` clones them);
- saved activations: the bytes autograd saves for backward during one forward of
  the training loss (the v-prediction MSE of the model on noisy latents; the VAE
  encodes under `no_grad` and keeps nothing), counted by `SavedActivations`.

Saved activations with checkpointing are counted honestly as a peak: what stays
saved between forward and backward (the tensors saved outside checkpointed units
plus every unit's inputs, which torch's non-reentrant checkpoint keeps) plus the
largest unit's own saved tensors, which its recomputation holds during backward.
Every storage counts once, however many views of it are saved, and weights saved
by an op count as weights, not activations.

The meta device has no autocast, so activations are counted in a model run wholly
in the compute dtype: autocast keeps a few more tensors in fp32 (GroupNorm and
LayerNorm outputs) inside a unit. Spatial attention is counted as a fused kernel
(`aten._scaled_dot_product_efficient_attention`: q, k, v, output, log-sum-exp) as
on a GPU and on the CPU; the meta device would otherwise take SDPA's math path and
save every attention matrix. Temporal attention is counted through the pure-PyTorch
reference (the training path on the CPU; the CUDA kernel keeps only its input, so
this is an upper bound there). AdamW's foreach step briefly needs one fp32 temporary
per trainable weight, after backward has freed the activations: the total counts the
larger of the two. Not counted: other transient tensors (activation gradients during
backward, the VAE's no-grad encoding), the CUDA context and allocator fragmentation.
"""

from __future__ import annotations

from typing import Callable

import torch
import torch.nn.functional as F
from torch import nn
from torch.overrides import TorchFunctionMode

from survgen.classes import ClassVocabulary
from survgen.models.counts import spatial_on_meta
from survgen.models.video_models import NATIVE_IMAGE_SIZE, build_video_model

GiB = 2**30
DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16, "no": torch.float32}
FP32 = 4
ADAMW_MOMENTS = 2  # exp_avg and exp_avg_sq, each the parameter's dtype (fp32)


def _storage(t: torch.Tensor) -> tuple[int, int]:
    storage = t.untyped_storage()
    return storage._cdata, storage.nbytes()


class SavedActivations:
    """The storages autograd saves for backward during a forward, each storage once.

    Use as a context manager around the forward. `checkpoint` has the signature of a
    checkpoint function (`VideoUNet.enable_gradient_checkpointing(checkpoint_fn=...)`,
    diffusers' `gradient_checkpointing_func`): it runs a unit without checkpointing but
    records the unit's tensor inputs and its own saved tensors apart, so one forward
    gives the count both with and without checkpointing.
    """

    def __init__(self, weights: list[torch.Tensor]):
        self._weights = {_storage(w)[0] for w in weights}
        self.outside: dict[int, int] = {}  # storage -> bytes, saved by ops outside checkpointed units
        self.unit_inputs: dict[int, int] = {}
        self.units: list[dict[int, int]] = []
        # Storages are told apart by address, so every counted one is held (as a real checkpoint holds
        # its inputs) lest a later tensor reuse a freed one's address and be taken for it.
        self._held: list[torch.Tensor] = []

    def _recording(self, saved: dict[int, int]):
        def pack(t: torch.Tensor) -> torch.Tensor:
            key, nbytes = _storage(t)
            if key not in self._weights:
                saved[key] = nbytes
            return t

        return torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t)

    def __enter__(self) -> "SavedActivations":
        self._hooks = self._recording(self.outside)
        self._hooks.__enter__()
        return self

    def __exit__(self, *exc) -> None:
        self._hooks.__exit__(*exc)

    def checkpoint(self, unit: Callable[..., torch.Tensor], *args) -> torch.Tensor:
        for a in args:
            if isinstance(a, torch.Tensor):
                key, nbytes = _storage(a)
                self.unit_inputs[key] = nbytes
                self._held.append(a)
        saved: dict[int, int] = {}
        self.units.append(saved)
        with self._recording(saved):  # innermost hooks win: the unit's tensors go here, not to `outside`
            return unit(*args)

    def without_checkpointing(self) -> int:
        everything = dict(self.outside)
        for saved in self.units:
            everything.update(saved)
        return sum(everything.values())

    def with_checkpointing(self) -> dict[str, int]:
        """`kept` between forward and backward, and the `peak` while the largest unit is recomputed."""
        kept = self.outside | self.unit_inputs
        recompute = max((sum(b for k, b in saved.items() if k not in kept) for saved in self.units), default=0)
        return {"kept": sum(kept.values()), "largest_unit": recompute, "peak": sum(kept.values()) + recompute}


class FusedAttentionOnMeta(TorchFunctionMode):
    """Runs SDPA on meta tensors as the fused kernel a GPU runs (the meta device would take the math path)."""

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if func is F.scaled_dot_product_attention and args[0].device.type == "meta":
            query, key, value = args[:3]
            return torch.ops.aten._scaled_dot_product_efficient_attention(
                query, key, value, kwargs.get("attn_mask"), True, kwargs.get("dropout_p", 0.0),
                kwargs.get("is_causal", False), scale=kwargs.get("scale"))[0]
        return func(*args, **kwargs)


def count_saved_activations(model: nn.Module, run_loss: Callable[[], torch.Tensor],
                            enable_checkpointing: Callable[[Callable], None]) -> SavedActivations:
    """Run `run_loss()` once with `enable_checkpointing(counter.checkpoint)` in place and count what it saves."""
    counter = SavedActivations(list(model.parameters()))
    enable_checkpointing(counter.checkpoint)
    with counter, FusedAttentionOnMeta():
        run_loss()
    return counter


def _v_prediction_loss(pred: torch.Tensor) -> torch.Tensor:
    """What the training loss saves: the prediction and a v target of its shape, both fp32."""
    return F.mse_loss(pred.float(), torch.zeros(pred.shape, device=pred.device))


def _parameters(modules: list[nn.Module]) -> int:
    return sum(p.numel() for m in modules for p in m.parameters())


def _states(frozen: list[tuple[torch.dtype, list[nn.Module]]], trainable: int, ema: bool) -> dict[str, int]:
    return {
        "frozen_weights": sum(_parameters(modules) * dtype.itemsize for dtype, modules in frozen),
        "trainable_weights": trainable * FP32,
        "gradients": trainable * FP32,
        "optimizer_state": trainable * FP32 * ADAMW_MOMENTS,
        "ema": trainable * FP32 if ema else 0,
    }


def _latent_size(image_size: int, spatial) -> int:
    if image_size % spatial.vae_downsample:
        raise ValueError(f"image size {image_size} is not a multiple of the VAE's downsampling "
                         f"({spatial.vae_downsample})")
    return image_size // spatial.vae_downsample


def _text_states(spatial, batch: int, dtype: torch.dtype) -> torch.Tensor:
    config = spatial.text_encoder.config
    return torch.empty(batch, config.max_position_embeddings, config.hidden_size, dtype=dtype)


def spatial_stage_memory(preset: str, *, batch_size: int, image_size: int, mixed_precision: str,
                         ema: bool = True) -> dict:
    """Stage 1: the U-Net trained on `batch_size` frames (the tiny preset trains its text encoder too)."""
    dtype = DTYPES[mixed_precision]
    train_text = preset == "tiny"  # stage 1's default: tiny's text encoder starts random, SD's is kept
    with torch.device("meta"):
        spatial = spatial_on_meta(preset)
        trained = [spatial.unet] + ([spatial.text_encoder] if train_text else [])
        frozen = [spatial.vae] + ([] if train_text else [spatial.text_encoder])
        states = _states([(torch.float32, frozen)], _parameters(trained), ema)
        unet = spatial.unet.to(dtype)
        latent = _latent_size(image_size, spatial)
        noisy = torch.empty(batch_size, unet.config.in_channels, latent, latent, dtype=dtype)
        text = _text_states(spatial, batch_size, dtype)
        timesteps = torch.zeros(batch_size, dtype=torch.long)

        def run_loss() -> torch.Tensor:
            return _v_prediction_loss(unet(noisy, timesteps, text).sample)

        counter = count_saved_activations(unet, run_loss,
                                          lambda fn: unet.enable_gradient_checkpointing(gradient_checkpointing_func=fn))
    return _report("spatial", states, counter, batch_size=batch_size, image_size=image_size, frames=1)


def temporal_stage_memory(preset: str, *, batch_size: int, image_size: int, mixed_precision: str,
                          frames: int = 16, ema: bool = True) -> dict:
    """Stage 2 (survgen): temporal blocks and class embedding trained on `batch_size` clips of `frames` frames."""
    from survgen.training.stage2 import frozen_weight_dtype

    dtype = DTYPES[mixed_precision]
    with torch.device("meta"):
        spatial = spatial_on_meta(preset)
        latent = _latent_size(image_size, spatial)
        video = build_video_model("survgen", spatial, preset=preset, num_classes=len(ClassVocabulary()),
                                  latent_size=latent)
        trainable = sum(p.numel() for p in video.trainable_parameters().values())
        states = _states([(frozen_weight_dtype(mixed_precision), [spatial.unet, spatial.vae]),
                          (torch.float32, [spatial.text_encoder])], trainable, ema)
        video = video.to(dtype)
        noisy = torch.empty(batch_size, video.latent_channels, frames, latent, latent, dtype=dtype)
        text = _text_states(spatial, batch_size, dtype)
        timesteps, labels = torch.zeros(batch_size, dtype=torch.long), torch.zeros(batch_size, dtype=torch.long)

        def run_loss() -> torch.Tensor:
            return _v_prediction_loss(video(noisy, timesteps, text, labels))

        counter = count_saved_activations(video, run_loss,
                                          lambda fn: video.enable_gradient_checkpointing(True, checkpoint_fn=fn))
    return _report("temporal", states, counter, batch_size=batch_size, image_size=image_size, frames=frames)


def _report(stage: str, states: dict[str, int], counter: SavedActivations, **shape) -> dict:
    checkpointed = counter.with_checkpointing()
    activations = {"no_checkpointing": counter.without_checkpointing(), "checkpointing": checkpointed["peak"],
                   "checkpointing_kept": checkpointed["kept"],
                   "checkpointing_largest_unit": checkpointed["largest_unit"]}
    # torch's foreach AdamW step takes sqrt(exp_avg_sq) of every parameter at once: one fp32 temporary
    # per trainable weight, while the activations are already freed.
    adamw_step = states["trainable_weights"]
    weights_and_state = sum(states.values())
    return {"stage": stage, **shape, **states, "adamw_step_temporaries": adamw_step, "saved_activations": activations,
            "total": {key: weights_and_state + max(activations[key], adamw_step)
                      for key in ("no_checkpointing", "checkpointing")}}


ASSUMPTIONS = [
    "bytes counted on the meta device from each preset's config (no weights loaded)",
    "mixed precision is autocast: trainable weights, gradients, AdamW moments (2) and EMA are fp32",
    "frozen weights: stage 2 stores them in the compute dtype, stage 1 keeps them fp32",
    "activations in the compute dtype; spatial attention as a fused kernel, temporal attention through the reference",
    "checkpointing: stage 2 checkpoints every spatial layer and every temporal block (--gradient-checkpointing); "
    "stage 1's count uses diffusers' U-Net checkpointing (resnets only; train-spatial has no flag for it)",
    "EMA on (the default; --ema-decay 0 drops it)",
    "total = weights + gradients + AdamW moments + EMA + the larger of the saved activations and AdamW's "
    "step temporaries (an upper bound on the step's peak; other transient tensors, the CUDA context and "
    "allocator fragmentation are not counted)",
]


def training_memory(preset: str, *, batch_size: int = 1, image_size: int | None = None,
                    mixed_precision: str = "bf16", frames: int = 16) -> dict:
    """Counted bytes of both training stages at `preset` (image size: the preset's, 256 for sd15)."""
    if preset not in NATIVE_IMAGE_SIZE:
        raise ValueError(f"unknown preset {preset!r}; choose one of {', '.join(NATIVE_IMAGE_SIZE)}")
    if mixed_precision not in DTYPES:
        raise ValueError(f"mixed precision {mixed_precision!r}: choose one of {', '.join(DTYPES)}")
    image_size = NATIVE_IMAGE_SIZE[preset] if image_size is None else image_size
    shape = dict(batch_size=batch_size, image_size=image_size, mixed_precision=mixed_precision)
    return {"preset": preset, **shape, "assumptions": ASSUMPTIONS,
            "spatial": spatial_stage_memory(preset, **shape),
            "temporal": temporal_stage_memory(preset, frames=frames, **shape)}
