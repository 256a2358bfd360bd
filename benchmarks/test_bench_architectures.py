"""survgen against the LVDM-style and Endora-style baselines: `pytest benchmarks --benchmark-only`.

- inference, architecture cost: seconds per generated 16-frame video (text
  encoding, sampling with guidance, VAE decoding) for the three video models at
  the same frame size, sampler and step count;
- inference, end to end: each with the sampling it was published with
  (`PUBLISHED_SAMPLING`: survgen `generate`'s defaults at 256 px, LVDM DDIM 50 at
  256 px, Endora ancestral DDPM 250 at 128 px; the tiny preset scales the
  frame sizes by 64/256), and survgen with the reference sampling (DDIM 25,
  no step savings: the default before the sampler sweep);
- training: one stage-2 optimizer step (VAE encoding, v-loss, backward, AdamW)
  of 2 clips × 16 frames at the same frame size: survgen trains its temporal
  blocks on the frozen spatial U-Net, the baselines their whole model; with
  the memory it takes (GPU: peak allocated; CPU: weights, gradients, AdamW state
  and the activations saved for backward);
- `generate --class G7 --reject-topk 3` on the shipped model: accepted videos
  per minute with the defaults, against the reference sampling;
- the cost of one video at paper scale with each model's published sampling,
  in FLOPs counted on the meta device (`survgen.diffusion.cost.sampling_flops`):
  a cost model that any machine can compute, not a timing.

The tiny preset runs everywhere; the sd15 (paper) scale only with CUDA. Models
are built from config with random weights: the cost of an architecture does
not depend on its weights. survgen is each group's baseline: "time vs
baseline" is how many times longer than survgen a model takes.
"""

from __future__ import annotations

import functools

import pytest
import torch

from survgen.classes import ClassVocabulary
from survgen.diffusion.video_sampler import VideoSampler
from survgen.models.spatial import SD15_TEXT_CONFIG, SD15_UNET_CONFIG, SD15_VAE_CONFIG, SpatialModel, build_tiny
from survgen.models.video_models import build_video_model, published_sampling
from survgen.presets import ARCHS, DEFAULT_SAMPLING, NATIVE_IMAGE_SIZE, REFERENCE_SAMPLING, savings_in_words

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
PRESETS = [pytest.param("tiny", id="tiny"),
           pytest.param("sd15", id="sd15", marks=[pytest.mark.gpu_only, pytest.mark.paper_scale])]
VOCABULARY = ClassVocabulary()


@functools.cache
def spatial_model(preset: str) -> SpatialModel:
    if preset == "tiny":
        spatial = build_tiny(VOCABULARY, seed=0)
    else:
        from diffusers import AutoencoderKL, UNet2DConditionModel
        from transformers import CLIPTextConfig, CLIPTextModel

        from survgen.models.spatial import tiny_tokenizer, v_prediction_scheduler

        torch.manual_seed(0)
        # SD 1.5's tokenizer is a download; the tiny one gives prompts of the same 77-token length here.
        tokenizer = tiny_tokenizer(VOCABULARY, max_length=SD15_TEXT_CONFIG["max_position_embeddings"])
        text = CLIPTextModel(CLIPTextConfig(**SD15_TEXT_CONFIG))
        spatial = SpatialModel(AutoencoderKL(**SD15_VAE_CONFIG), text, tokenizer,
                               UNet2DConditionModel(**SD15_UNET_CONFIG), v_prediction_scheduler())
    return spatial.to(DEVICE)


@functools.cache
def video_model(arch: str, preset: str, image_size: int):
    spatial = spatial_model(preset)
    torch.manual_seed(0)
    model = build_video_model(arch, spatial, preset=preset, num_classes=len(VOCABULARY),
                              latent_size=image_size // spatial.vae_downsample)
    return model.to(DEVICE)


def _synchronize():
    if DEVICE == "cuda":
        torch.cuda.synchronize()


def _label(arch: str) -> str:
    return {"survgen": "survgen", "lvdm": "lvdm-style", "endora": "endora-style"}[arch]


def _sample(benchmark, arch, preset, *, image_size, quick, **sampling):
    videos = 1 if quick else 2
    frames = 4 if quick else 16
    model = video_model(arch, preset, image_size)
    run = VideoSampler(model, spatial_model(preset), VOCABULARY)
    benchmark.extra_info.update(arch=arch, label=_label(arch), videos=videos, frames=frames, **sampling,
                                image_size=image_size, role="baseline" if arch == "survgen" else None)

    def generate():
        run.sample([6] * videos, list(range(videos)), num_frames=frames, guidance=3.0, **sampling)
        _synchronize()

    benchmark.pedantic(generate, rounds=1 if quick else 3, warmup_rounds=0 if quick else 1)


@pytest.mark.parametrize("arch", ARCHS)
@pytest.mark.parametrize("preset", PRESETS)
def test_inference_same_sampler(benchmark, quick, preset, arch):
    size, steps = NATIVE_IMAGE_SIZE[preset], 1 if quick else 25
    benchmark.group = f"inference, architecture cost: {preset}, DDIM {steps} steps with guidance at {size} px"
    _sample(benchmark, arch, preset, image_size=size, sampler="ddim", steps=steps, quick=quick)


SAMPLINGS = [pytest.param(arch, False, id=arch) for arch in ARCHS] + [
    pytest.param("survgen", True, id="survgen-reference")]


def sampling_words(sampling: dict) -> str:
    """e.g. "dpm++ 6, deep features every 3 steps"."""
    return f"{sampling['sampler']} {sampling['steps']}{savings_in_words(sampling)}"


@pytest.mark.parametrize("arch, reference", SAMPLINGS)
@pytest.mark.parametrize("preset", PRESETS)
def test_inference_published_defaults(benchmark, quick, preset, arch, reference):
    sampling = {**published_sampling(arch, preset), **(REFERENCE_SAMPLING if reference else {})}
    size = sampling.pop("image_size")
    if quick:
        sampling.update(steps=1, cache_interval=1)
    benchmark.group = f"inference, end to end with each model's published sampling: {preset}"
    _sample(benchmark, arch, preset, image_size=size, quick=quick, **sampling)
    benchmark.extra_info["label"] += f"{', reference' if reference else ''} ({sampling_words(sampling)} @ {size} px)"
    if reference:
        benchmark.extra_info.update(role=None, variant="reference")


# Each of generate's step savings added in turn, from the reference sampling to the defaults (the last row).
SAVINGS = [
    ("reference: ddim 25, text per frame", dict(REFERENCE_SAMPLING, text_per_video=False)),
    ("+ text keys/values once per video", dict(REFERENCE_SAMPLING, text_per_video=True)),
    (f"+ {DEFAULT_SAMPLING['sampler']} {DEFAULT_SAMPLING['steps']} steps",
     dict(REFERENCE_SAMPLING, sampler=DEFAULT_SAMPLING["sampler"], steps=DEFAULT_SAMPLING["steps"])),
    (f"+ deep features every {DEFAULT_SAMPLING['cache_interval']} steps (the defaults)", dict(DEFAULT_SAMPLING)),
]


@pytest.mark.parametrize("step", range(len(SAVINGS)), ids=[name for name, _ in SAVINGS])
@pytest.mark.parametrize("preset", PRESETS)
def test_step_savings(benchmark, quick, preset, step):
    from survgen.diffusion.cost import sampling_flops

    name, sampling = SAVINGS[step]
    size = NATIVE_IMAGE_SIZE[preset]
    benchmark.group = f"generate's step savings, one at a time: {preset} survgen at {size} px"
    run = {**sampling, **({"steps": 2} if quick else {})}
    _sample(benchmark, "survgen", preset, image_size=size, quick=quick, **run)
    benchmark.extra_info.update(label=name, role="baseline" if step == 0 else None)
    if not quick:  # counting sd15 takes seconds; the smoke run checks the timing path only
        counted = sampling_flops("survgen", "sd15", frames=16, **sampling)
        benchmark.extra_info["sd15_tflop_per_video"] = counted["flops_per_video"] / 1e12


def _training_memory_cpu(step) -> int:
    """Bytes of the tensors autograd saves for backward in one step (each storage counted once)."""
    saved: dict[int, int] = {}

    def pack(t):
        saved[t.untyped_storage().data_ptr()] = t.untyped_storage().nbytes()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        step()
    return sum(saved.values())


@pytest.mark.parametrize("arch", ARCHS)
@pytest.mark.parametrize("preset", PRESETS)
def test_training_step(benchmark, quick, preset, arch):
    from survgen.training.configs import TemporalStageConfig
    from survgen.training.stage2 import TemporalTrainee, stage2_loss

    size = NATIVE_IMAGE_SIZE[preset]
    frames = 4 if quick else 16
    benchmark.group = f"stage-2 training step: {preset}, 2 clips x {frames} frames at {size} px"
    spatial = spatial_model(preset)
    trainee = TemporalTrainee(video_model(arch, preset, size), spatial)
    trainable = trainee.trainable_parameters()
    optimizer = torch.optim.AdamW(trainable.values(), lr=1e-5)
    prompts = spatial.encode_prompts(VOCABULARY.prompts() + [""])
    g = torch.Generator().manual_seed(0)
    pixels = (torch.rand(2, frames, 3, size, size, generator=g) * 2 - 1).to(DEVICE)
    class_ids = torch.tensor([6, 6], device=DEVICE)
    config = TemporalStageConfig()

    def loss():
        return stage2_loss(trainee, spatial, prompts, {"pixels": pixels, "class_id": class_ids}, config,
                           torch.Generator().manual_seed(0))

    def step():
        loss().backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        _synchronize()

    step()  # AdamW's state exists from here on
    if DEVICE == "cuda":
        torch.cuda.reset_peak_memory_stats()
        step()
        memory, metric = torch.cuda.max_memory_allocated(), "GPU: peak allocated in one step"
    else:
        weights = sum(p.numel() * p.element_size() for p in trainee.parameters())
        state = sum(3 * p.numel() * p.element_size() for p in trainable.values())  # gradient, 2 AdamW moments
        activations = _training_memory_cpu(lambda: loss().backward())
        optimizer.zero_grad(set_to_none=True)
        memory = weights + state + activations
        metric = "CPU: weights + gradients + AdamW state + activations saved for backward"
    benchmark.extra_info.update(arch=arch, label=_label(arch), steps=1, memory_mb=memory / 2**20,
                                memory_metric=metric, role="baseline" if arch == "survgen" else None,
                                trainable_parameters=sum(p.numel() for p in trainable.values()))
    benchmark.pedantic(step, rounds=1 if quick else 3, warmup_rounds=0)


@pytest.mark.parametrize("reference", [False, True], ids=["defaults", "reference-sampling"])
def test_generate_throughput(benchmark, quick, tmp_path, reference):
    from survgen.generation.default import default_runs
    from survgen.generation.run import GenerationConfig, generate
    from survgen.models.loading import load_classifier, load_video_model

    model_run, classifier_run = default_runs()
    video = load_video_model(model_run)
    video[0].to(DEVICE)
    video[1].to(DEVICE)
    classifier, vocabulary, _ = load_classifier(classifier_run)
    n = 1 if quick else 8
    sampling = REFERENCE_SAMPLING if reference else DEFAULT_SAMPLING
    # the smoke run samples one batch: one-step videos are seldom accepted, and it checks the path, not the rate
    smoke = {"steps": 1, "cache_interval": 1, "max_candidates": 4} if quick else {}
    cfg = GenerationConfig(classes=["G7"], n=n, reject_topk=3, batch_size=4, seed=0, **{**sampling, **smoke})
    benchmark.group = f"generate --class G7 --reject-topk 3: shipped tiny model, n={n}"
    folders = iter(range(100))
    manifests = []

    def setup():
        return (tmp_path / f"round-{next(folders)}",), {}

    def run(out):
        manifests.append(generate(model_run, out, cfg, classifier=classifier_run,
                                  loaded=(video, (classifier.to(DEVICE), vocabulary))))

    benchmark.pedantic(run, setup=setup, rounds=1)
    summary = manifests[-1]["summary"]["per_class"]["G7"]
    benchmark.extra_info.update(arch="survgen", label=f"survgen, {'reference' if reference else 'defaults'} "
                                f"({sampling_words(cfg.__dict__)})", accepted=summary["accepted"],
                                candidates=summary["candidates"], role="baseline" if reference else None)


@pytest.mark.parametrize("arch, reference", SAMPLINGS)
def test_paper_scale_flops(benchmark, arch, reference):
    from survgen.diffusion.cost import sampling_flops

    benchmark.group = "cost at paper scale (sd15), published sampling: FLOPs counted on the meta device, not timed"
    sampling = REFERENCE_SAMPLING if reference else {}
    cost = benchmark.pedantic(sampling_flops, args=(arch, "sd15"), kwargs=sampling, rounds=1)
    benchmark.extra_info.update(arch=arch, label=f"{_label(arch)}{', reference' if reference else ''} "
                                f"({sampling_words(cost)} @ {cost['image_size']} px)",
                                tflop_per_video=cost["flops_per_video"] / 1e12,
                                role="baseline" if arch == "survgen" and not reference else None,
                                variant="reference" if reference else None)
