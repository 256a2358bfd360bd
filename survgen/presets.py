"""Presets and architectures by name, with the sizes that go with them.

Plain data, so that stage configs and the command line can check a name (and
`--help` can show a default) without importing torch or building a model.
"""

from __future__ import annotations

PRESETS = ("tiny", "sd15")  # tiny: CPU-sized, built from config; sd15: local Stable Diffusion 1.5 weights
NATIVE_IMAGE_SIZE = {"tiny": 64, "sd15": 256}  # the frame size each preset trains and samples at (sd15: the paper's)

BASELINES = ("lvdm", "endora")  # the paper's baselines, trained whole in survgen's latent space
ARCHS = ("survgen",) + BASELINES

# How `generate` and stage-2 previews sample: the cheapest setting of the sampler sweep whose
# quality stays within the real-vs-real spread (benchmarks/RESULTS.md). REFERENCE_SAMPLING is
# the default before it, DDIM 25 with every saving off, kept so that earlier results can be made again.
DEFAULT_SAMPLING = dict(sampler="dpm++", steps=6, guidance_interval=None, cache_interval=3)
REFERENCE_SAMPLING = dict(sampler="ddim", steps=25, guidance_interval=None, cache_interval=1)


def savings_in_words(sampling: dict) -> str:
    """A sampling's step savings as words to follow its sampler and steps ("" for none, or a manifest from
    before them), e.g. ", deep features every 3 steps"."""
    words = ""
    if (sampling.get("cache_interval") or 1) > 1:
        words += f", deep features every {sampling['cache_interval']} steps"
    if sampling.get("guidance_interval"):
        lo, hi = sampling["guidance_interval"]
        words += f", guidance at {lo} <= t <= {hi}"
    return words

CLASSIFIER_ARCHS = ("r3d", "x3d", "resnet-lstm")
CLASSIFIER_ARCH_NAMES = {"r3d": "3D ResNet", "x3d": "X3D", "resnet-lstm": "ResNet-LSTM"}  # as reports name them
CLASSIFIER_PRESETS = {
    # CPU-sized 3D ResNet: trains on the bundled procedural dataset in minutes
    "tiny": dict(arch="r3d", widths=(16, 32, 64, 128), image_size=64),
    # torchvision's r3d_18 widths and input size (33M parameters)
    "r3d18": dict(arch="r3d", widths=(64, 128, 256, 512), image_size=112),
    # X3D-XS's network and frame size (3.8M parameters); its 4-frame input is --clip-length 4
    "x3d-xs": dict(arch="x3d", widths=(24, 48, 96, 192), depths=(3, 5, 11, 7), image_size=160),
    # the paper's task-2 recogniser (per-frame 2D ResNet, LSTM, linear head), CPU-sized for the bundled SLB data
    "resnet-lstm": dict(arch="resnet-lstm", widths=(16, 32, 64, 128), image_size=64),
    # the same with resnet18's widths and a 112 px frame (11.2M ResNet + 2.1M LSTM parameters)
    "resnet18-lstm": dict(arch="resnet-lstm", widths=(64, 128, 256, 512), image_size=112),
}


def check_arch(arch: str) -> str:
    if arch not in ARCHS:
        raise ValueError(f"unknown --arch {arch!r}; choose one of {', '.join(ARCHS)}")
    return arch


def check_preset(preset: str) -> str:
    if preset not in PRESETS:
        raise ValueError(f"unknown preset {preset!r}; choose one of {', '.join(PRESETS)}")
    return preset
