"""Every training stage's options and their defaults: the one place the `train-*` commands take them from.

A stage config is saved whole into its run's run.json and read back on
`--resume` (`survgen.config`); the command-line flags of `survgen train-*`
set its fields. Plain dataclasses, so `survgen --help` needs no torch.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from survgen.data.index import CLIP_FPS
from survgen.presets import CLASSIFIER_PRESETS, DEFAULT_SAMPLING, check_arch, check_preset

MIXED_PRECISION = ("no", "fp16", "bf16", "auto")
BALANCE = ("loss", "sampler", "none")


@dataclass
class TrainConfig:
    """The training loop's options, shared by every stage (`survgen.training.loop.train`)."""

    steps: int = 1000
    batch_size: int = 8  # per process; the global batch is batch_size × processes × grad_accum
    lr: float = 1e-4
    lr_warmup_steps: int = 0
    weight_decay: float = 1e-2
    betas: tuple[float, float] = (0.9, 0.999)
    adam_eps: float = 1e-8
    grad_accum: int = 1
    max_grad_norm: float = 1.0  # 0 turns clipping off
    mixed_precision: str = "auto"  # auto: bf16 on a GPU that has it, else full precision
    ema_decay: float = 0.9999  # 0 turns EMA off
    checkpoint_every: int = 500
    sample_every: int = 500  # steps between sample grids (the classifier: between validations)
    log_every: int = 10
    keep_checkpoints: int = 2
    seed: int = 0
    num_workers: int | None = None  # DataLoader processes; None: min(8, CPU cores - 1)

    def __post_init__(self):
        self.betas = tuple(self.betas)  # JSON gives a list back
        problems = []
        for name in ("steps", "batch_size", "grad_accum", "checkpoint_every", "sample_every", "log_every"):
            if getattr(self, name) < 1:
                problems.append(f"{name} must be at least 1 (got {getattr(self, name)})")
        if self.num_workers is not None and self.num_workers < 0:
            problems.append(f"num_workers must be 0 (load in the training process) or more (got {self.num_workers})")
        if not self.lr > 0:
            problems.append(f"lr must be positive (got {self.lr})")
        if not 0 <= self.ema_decay < 1:
            problems.append(f"ema_decay must be in [0, 1) (got {self.ema_decay})")
        if self.mixed_precision not in MIXED_PRECISION:
            problems.append(f"mixed_precision must be one of {', '.join(MIXED_PRECISION)} (got {self.mixed_precision!r})")
        if problems:
            raise ValueError("invalid training options: " + "; ".join(problems))


@dataclass
class AutoencoderStageConfig:
    """Stage 0 (`train-vae`, tiny preset only): the small VAE that SD ships and the tiny preset lacks."""

    image_size: int = 64
    widths: tuple[int, ...] = (32, 64, 64)  # channels per block; n blocks make latents 2^(n-1) times smaller
    latent_channels: int = 4
    kl_weight: float = 1e-6
    cue_weight: float = 1.0  # weight of the L1 loss on needle/thread pixels, where the data has cue masks
    score_frames: int = 32  # frames per class whose reconstruction is scored at each sample step
    clip_length: int = 16
    clip_fps: float | None = CLIP_FPS  # clip rate: each video's stride is round(fps / clip_fps); None: every frame
    train: TrainConfig = field(default_factory=lambda: TrainConfig(lr=1e-3, ema_decay=0.0))

    def __post_init__(self):
        self.widths = tuple(int(w) for w in self.widths)  # JSON gives a list back
        problems = []
        if not self.widths or min(self.widths) < 16 or any(w % 16 for w in self.widths):
            problems.append(f"widths must be multiples of 16 channels (the VAE's group norm; got {self.widths})")
        for name in ("latent_channels", "score_frames"):
            if getattr(self, name) < 1:
                problems.append(f"{name} must be at least 1 (got {getattr(self, name)})")
        if self.kl_weight < 0 or self.cue_weight < 0:
            problems.append(f"kl_weight and cue_weight must not be negative (got {self.kl_weight}, {self.cue_weight})")
        if problems:
            raise ValueError("invalid autoencoder options: " + "; ".join(problems))


@dataclass
class SpatialStageConfig:
    """Stage 1 (`train-spatial`): the 2D U-Net fine-tuned on frames with their class prompts."""

    preset: str = "tiny"  # tiny | sd15 (survgen.presets)
    pretrained: str | None = None  # sd15: a local SD 1.5 folder/.safetensors; tiny: optional start point
    tokenizer: str | None = None  # for single-file checkpoints
    vae: str | None = None  # tiny: a `survgen train-vae` run folder
    image_size: int | None = None  # None: the preset's (NATIVE_IMAGE_SIZE: sd15 256 as in the paper, tiny 64)
    train_text_encoder: bool | None = None  # None: on for tiny (random encoder), off for sd15
    prompt_dropout: float = 0.1  # share of empty prompts, for guidance's unconditional branch
    clip_length: int = 16
    clip_fps: float | None = CLIP_FPS  # clip rate: each video's stride is round(fps / clip_fps); None: every frame
    cache: str | None = None  # a `survgen data cache` folder: the frames' VAE posteriors, read instead of decoding
    sample_steps: int = 25
    sample_guidance: float = 3.0
    train: TrainConfig = field(default_factory=TrainConfig)

    def __post_init__(self):
        check_preset(self.preset)


@dataclass
class TemporalStageConfig:
    """Stage 2 (`train-temporal`): a class's motion, by default temporal blocks on the frozen spatial model."""

    arch: str = "survgen"  # survgen | lvdm | endora
    classes: list[str] = field(default_factory=lambda: ["G7"])
    clip_length: int = 16
    clip_fps: float | None = CLIP_FPS  # clip rate: each video's stride is round(fps / clip_fps); None: every frame
    cache: str | None = None  # a `survgen data cache` folder: the frames' VAE posteriors, read instead of decoding
    image_size: int | None = None  # None: the size stage 1 trained at
    condition_dropout: float = 0.1  # prompt and class dropped together: sampling's unconditional branch drops both
    gradient_checkpointing: bool = False
    sample_steps: int = DEFAULT_SAMPLING["steps"]  # previews sample as generate does
    sample_guidance: float = 3.0
    heads: int | None = None  # survgen only; None: the spatial preset's default (TEMPORAL_PRESETS)
    attention_layers: int | None = None  # survgen only
    prior_dino: str | None = None  # endora only: local DINO ViT folder, turns on Endora's prior loss
    prior_weight: float = 0.5  # Endora's α, "by grid searching"
    train: TrainConfig = field(default_factory=TrainConfig)

    def __post_init__(self):
        check_arch(self.arch)
        if self.arch != "survgen" and (self.heads is not None or self.attention_layers is not None):
            raise ValueError(f"--attention-layers and heads shape survgen's temporal blocks; --arch {self.arch} "
                             "takes its size from the spatial preset")
        if self.prior_dino is not None and self.arch != "endora":
            raise ValueError("--prior-dino is Endora's prior loss; use it with --arch endora")
        if self.prior_dino is not None and self.cache is not None:
            raise ValueError("--prior-dino compares the clips' pixels, which a latent cache does not hold; "
                             "train without --cache")
        if self.prior_weight < 0:
            raise ValueError(f"--prior-weight must be 0 or more, got {self.prior_weight}")


@dataclass
class ClassifierStageConfig:
    """`train-classifier`: the video classifier of rejection sampling, trained on the real clips."""

    preset: str = "tiny"  # tiny | r3d18 | x3d-xs | resnet-lstm | resnet18-lstm (survgen.presets.CLASSIFIER_PRESETS)
    image_size: int | None = None  # None: the preset's size
    clip_length: int = 16
    clip_fps: float | None = CLIP_FPS  # clip rate: each video's stride is round(fps / clip_fps); None: every frame
    dropout: float = 0.3
    val_fraction: float = 0.2  # share of recordings held out for validation
    split_seed: int = 0  # fixed apart from train.seed, so runs with other seeds validate on the same videos
    balance: str = "loss"  # loss: inverse-frequency class weights | sampler: oversample rare classes | none
    augment: bool = True  # per clip: horizontal flip, resized crop (scale 0.8-1), brightness/contrast
    train: TrainConfig = field(default_factory=lambda: TrainConfig(
        steps=2000, batch_size=16, lr=3e-3, weight_decay=0.05, ema_decay=0.0,
        checkpoint_every=500, sample_every=250, log_every=10))

    def __post_init__(self):
        if self.balance not in BALANCE:
            raise ValueError(f"balance must be one of {', '.join(BALANCE)} (got {self.balance!r})")
        if self.preset not in CLASSIFIER_PRESETS:
            raise ValueError(f"unknown classifier preset {self.preset!r}; use one of {', '.join(CLASSIFIER_PRESETS)}")
