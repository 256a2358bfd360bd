"""The one training loop both stages (and the tiny autoencoder) run through.

A stage hands over a model, the parameters it may train, a dataset and a loss
function; the loop owns everything else: accelerate (so `accelerate launch`
spreads it over GPUs), AdamW, EMA, gradient accumulation and clipping, mixed
precision, checkpoints, `--resume`, sample callbacks, the progress bar and
the loss log.

Exact resumption. A resumed run gives the same weights as an uninterrupted
one, bit for bit on the same machine, because nothing random depends on how
far the process has run:
- batch k is a fixed slice of a stream of per-epoch permutations seeded by
  `seed` (`PlannedBatches`), so the data order after step s needs no state;
- the loss function draws its noise, timesteps and condition dropout from a
  generator seeded by (seed, rank, micro-step) (`micro_step_generator`);
- weights, AdamW moments, EMA, LR schedule and torch's RNG are checkpointed.
"""

from __future__ import annotations

import json
import math
import os
import time
from contextlib import nullcontext
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset, Sampler

from survgen.console import say, stderr
from survgen.io import PNG_SOFTWARE, atomic_path
from survgen.training.checkpoint import CheckpointError, read_latest_checkpoint, write_checkpoint

MIXED_PRECISION = ("no", "fp16", "bf16", "auto")


class TrainingDivergedError(RuntimeError):
    """The loss became NaN or infinite; the last good checkpoint is kept."""


@dataclass
class TrainConfig:
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
    sample_every: int = 500
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
class TrainResult:
    step: int
    losses: list[float]  # mean loss of every optimizer step since step 1, across processes
    run_dir: Path
    checkpoint: Path | None = None
    extra: dict = field(default_factory=dict)


LossFn = Callable[[nn.Module, dict, torch.Generator], torch.Tensor]


class PlannedBatches(Sampler):
    """Micro-batches `start … start+count-1` of one process, as fixed slices of a seeded index stream.

    The stream is epoch 0's permutation of the dataset, then epoch 1's, …; micro-batch k
    of all processes together is positions [k·B·W, (k+1)·B·W) of it and rank r takes its
    r-th share, so every process sees different samples and the order is a pure function
    of (seed, k) whatever the dataset size.
    """

    def __init__(self, size: int, batch_size: int, seed: int, rank: int, world: int, start: int, count: int):
        self.size, self.batch_size, self.seed = size, batch_size, seed
        self.rank, self.world, self.start, self.count = rank, world, start, count
        self._epoch, self._perm = -1, None

    def _index(self, position: int) -> int:
        epoch, i = divmod(position, self.size)
        if epoch != self._epoch:
            self._epoch = epoch
            self._perm = torch.randperm(self.size, generator=torch.Generator().manual_seed(self.seed * 100_003 + epoch))
        return int(self._perm[i])

    def __iter__(self):
        for k in range(self.start, self.start + self.count):
            first = (k * self.world + self.rank) * self.batch_size
            yield [self._index(p) for p in range(first, first + self.batch_size)]

    def __len__(self):
        return self.count


def loader_workers(requested: int | None) -> int:
    """DataLoader processes: as asked, or by default one per core but one (for the training loop), at most 8."""
    if requested is not None:
        return requested
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    return max(0, min(8, cores - 1))


def micro_step_generator(seed: int, rank: int, micro_step: int) -> torch.Generator:
    # Python's hash of a tuple of ints is stable across processes (no hash randomisation for ints).
    return torch.Generator().manual_seed(hash((seed, rank, micro_step)) % 2**63)


class _Objective(nn.Module):
    """Puts the stage's loss inside a module's forward so that DDP sees the backward pass."""

    def __init__(self, model: nn.Module, loss_fn: LossFn):
        super().__init__()
        self.model = model
        self.loss_fn = loss_fn

    def forward(self, batch: dict, generator: torch.Generator) -> torch.Tensor:
        return self.loss_fn(self.model, batch, generator)


def check_trainable(model: nn.Module, trainable: dict[str, nn.Parameter]) -> None:
    """The optimizer gets exactly the parameters that require grad: a frozen weight can never be stepped."""
    requires = {id(p): n for n, p in model.named_parameters() if p.requires_grad}
    given = {id(p): n for n, p in trainable.items()}
    stray = [requires[i] for i in requires.keys() - given.keys()]
    frozen = [given[i] for i in given.keys() - requires.keys()]
    if stray or frozen:
        raise ValueError(f"trainable parameters do not match requires_grad: {len(stray)} unlisted but "
                         f"trainable (e.g. {stray[:3]}), {len(frozen)} listed but frozen (e.g. {frozen[:3]})")
    if not trainable:
        raise ValueError("nothing to train: no parameter requires grad")


def resolve_mixed_precision(choice: str) -> str:
    if choice != "auto":
        return choice
    return "bf16" if torch.cuda.is_available() and torch.cuda.is_bf16_supported() else "no"


def rng_state() -> dict[str, torch.Tensor]:
    state = {"cpu": torch.get_rng_state()}
    if torch.cuda.is_available():
        state.update({f"cuda.{i}": s for i, s in enumerate(torch.cuda.get_rng_state_all())})
    return state


def set_rng_state(state: dict[str, torch.Tensor]) -> None:
    torch.set_rng_state(state["cpu"])
    cuda = [state[k] for k in sorted(k for k in state if k.startswith("cuda."))]
    if cuda and torch.cuda.is_available() and len(cuda) == torch.cuda.device_count():
        torch.cuda.set_rng_state_all(cuda)


class MetricsLog:
    """`metrics.jsonl` (one JSON line per logged step) and its plot `loss.png`."""

    def __init__(self, run_dir: Path):
        self.path = run_dir / "metrics.jsonl"
        self.plot_path = run_dir / "loss.png"

    def records(self) -> list[dict]:
        if not self.path.exists():
            return []
        records = []
        for line in self.path.read_text().splitlines():
            try:
                records.append(json.loads(line))
            except json.JSONDecodeError:  # a line torn by a kill
                continue
        return records

    def truncate(self, step: int) -> None:
        """On resume, drop what the killed run logged after its last checkpoint."""
        kept = [r for r in self.records() if r["step"] <= step]
        with atomic_path(self.path) as tmp:
            tmp.write_text("".join(json.dumps(r) + "\n" for r in kept))

    def append(self, record: dict) -> None:
        with self.path.open("a") as f:
            f.write(json.dumps(record) + "\n")

    def plot(self) -> None:
        records = self.records()
        if not records:
            return
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        steps = [r["step"] for r in records]
        losses = [r["loss"] for r in records]
        fig, ax = plt.subplots(figsize=(6, 3.5), dpi=110)
        ax.plot(steps, losses, lw=0.8, alpha=0.45, label="loss")
        window = max(1, len(losses) // 20)
        if window > 1:
            smooth = torch.tensor(losses).unfold(0, window, 1).mean(1).tolist()
            ax.plot(steps[window - 1:], smooth, lw=1.6, label=f"mean of {window}")
        ax.set_xlabel("step")
        ax.set_ylabel("loss")
        ax.set_yscale("log")
        ax.grid(alpha=0.3)
        ax.legend()
        fig.tight_layout()
        with atomic_path(self.plot_path) as tmp:
            fig.savefig(tmp, format="png", metadata={"Software": PNG_SOFTWARE})
        plt.close(fig)


def _progress_bar(enabled: bool, console):
    from rich.progress import (BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn,
                               TimeRemainingColumn)

    return Progress(
        TextColumn("{task.description}", style="bold", markup=False), BarColumn(), MofNCompleteColumn(),
        TextColumn("loss {task.fields[loss]}"), TextColumn("{task.fields[rate]} it/s"),
        TimeElapsedColumn(), TextColumn("ETA"), TimeRemainingColumn(),
        console=console, disable=not enabled,
    )


def train(*, run_dir: str | Path, model: nn.Module, trainable: dict[str, nn.Parameter], dataset: Dataset,
          loss_fn: LossFn, config: TrainConfig, on_sample: Callable[[int, nn.Module], None] | None = None,
          export: Callable[[nn.Module], None] | None = None, resume: bool = False,
          progress: bool = True) -> TrainResult:
    """Train `trainable` (a subset of `model`'s parameters) to `config.steps` optimizer steps.

    `loss_fn(model, batch, generator)` returns the mean loss of one micro-batch and must
    draw all its randomness from `generator`. `on_sample(step, model)` and `export(model)`
    run on the main process with the EMA weights swapped in.
    """
    from accelerate import Accelerator, DistributedDataParallelKwargs
    from diffusers.optimization import get_scheduler
    from diffusers.training_utils import EMAModel

    run_dir = Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    checkpoints_dir = run_dir / "checkpoints"
    if len(dataset) == 0:
        raise ValueError("the training set is empty")
    check_trainable(model, trainable)
    names, params = list(trainable), list(trainable.values())

    accelerator = Accelerator(mixed_precision=resolve_mixed_precision(config.mixed_precision),
                              kwargs_handlers=[DistributedDataParallelKwargs(find_unused_parameters=False)])
    objective = _Objective(model, loss_fn)
    optimizer = torch.optim.AdamW(params, lr=config.lr, betas=config.betas, eps=config.adam_eps,
                                  weight_decay=config.weight_decay)
    scheduler = get_scheduler("constant_with_warmup", optimizer, num_warmup_steps=config.lr_warmup_steps)
    # The scheduler is stepped by hand once per optimizer step: accelerate's wrapper would step it per process.
    objective, optimizer = accelerator.prepare(objective, optimizer)
    ema = EMAModel(params, decay=config.ema_decay) if config.ema_decay > 0 else None
    if ema is not None:
        ema.to(accelerator.device)

    step, losses, last_checkpoint = 0, [], None
    metrics = MetricsLog(run_dir)
    if resume:
        checkpoint = read_latest_checkpoint(checkpoints_dir)
        if checkpoint is None:
            if accelerator.is_main_process:
                say(f"{run_dir}: no checkpoint yet, starting from step 0")
        else:
            restore(checkpoint, trainable, optimizer, scheduler, ema)
            step, losses, last_checkpoint = checkpoint.step, checkpoint.state["losses"], checkpoint.folder
            if accelerator.is_main_process:
                metrics.truncate(step)
            if accelerator.is_main_process:
                say(f"resuming {run_dir} from step {step}")

    def save_checkpoint() -> Path:
        folder = checkpoints_dir / f"step-{step:06d}"
        if accelerator.is_main_process:
            write_checkpoint(
                checkpoints_dir, step,
                model={n: p for n, p in zip(names, params)},
                ema=dict(zip(names, ema.shadow_params)) if ema is not None else None,
                optimizer=optimizer.state_dict(), rng=rng_state(),
                state={"losses": losses, "scheduler": scheduler.state_dict(),
                       "ema_optimization_step": ema.optimization_step if ema is not None else None},
                keep=config.keep_checkpoints,
            )
            metrics.plot()
        accelerator.wait_for_everyone()
        return folder

    def with_ema_weights(fn: Callable[[], None]) -> None:
        """Run `fn` on the main process with the EMA weights in place, in eval mode, without grad."""
        if accelerator.is_main_process:
            if ema is not None:
                ema.store(params)
                ema.copy_to(params)
            model.eval()
            try:
                with torch.no_grad(), accelerator.autocast():
                    fn()
            finally:
                if ema is not None:
                    ema.restore(params)
                model.train()
        accelerator.wait_for_everyone()

    accum = config.grad_accum
    workers = loader_workers(config.num_workers)
    batches = iter(DataLoader(
        dataset, num_workers=workers, pin_memory=accelerator.device.type == "cuda",
        prefetch_factor=4 if workers else None, persistent_workers=workers > 0,
        batch_sampler=PlannedBatches(len(dataset), config.batch_size, config.seed, accelerator.process_index,
                                     accelerator.num_processes, start=step * accum,
                                     count=max(0, config.steps - step) * accum),
    ))
    model.train()
    started, started_step = time.perf_counter(), step
    console = stderr
    show = progress and accelerator.is_main_process
    # In a log file (no terminal) a live bar cannot redraw: print a plain line every 5 % instead.
    plain_every = None if console.is_terminal else max(1, config.steps // 20)
    with _progress_bar(show and console.is_terminal, console) as bar:
        task = bar.add_task(run_dir.name, total=config.steps, completed=step, loss="-", rate="-")
        while step < config.steps:
            total = torch.zeros((), device=accelerator.device)
            for j in range(accum):
                micro = step * accum + j
                batch = {k: v.to(accelerator.device, non_blocking=True) for k, v in next(batches).items()}
                generator = micro_step_generator(config.seed, accelerator.process_index, micro)
                # gradients are all-reduced only on the last micro-batch of a step
                with accelerator.no_sync(objective) if j < accum - 1 else nullcontext():
                    loss = objective(batch, generator)
                    accelerator.backward(loss / accum)
                total += loss.detach().float()
            loss_value = accelerator.reduce(total / accum, reduction="mean").item()
            if not math.isfinite(loss_value):
                where = f"the last good checkpoint is {last_checkpoint}" if last_checkpoint else "no checkpoint was written yet"
                raise TrainingDivergedError(
                    f"{run_dir}: the loss became {loss_value} at step {step + 1}; {where}. "
                    "Resume with --resume and a lower --lr, or turn off mixed precision."
                )
            if config.max_grad_norm > 0:
                accelerator.clip_grad_norm_(params, config.max_grad_norm)
            optimizer.step()
            scheduler.step()
            optimizer.zero_grad(set_to_none=True)
            if ema is not None:
                ema.step(params)
            step += 1
            losses.append(loss_value)

            rate = (step - started_step) / (time.perf_counter() - started)
            bar.update(task, completed=step, loss=f"{loss_value:.4f}", rate=f"{rate:.2f}")
            if show and plain_every and (step % plain_every == 0 or step == config.steps):
                eta = (config.steps - step) / rate if rate > 0 else float("nan")
                say(f"{run_dir.name}: step {step}/{config.steps}  loss {loss_value:.4f}  "
                    f"{rate:.2f} it/s  ETA {eta:.0f} s")
            if accelerator.is_main_process and (step % config.log_every == 0 or step == config.steps):
                metrics.append({"step": step, "loss": loss_value, "lr": scheduler.get_last_lr()[0],
                                "it_per_s": round(rate, 3)})
            if on_sample is not None and (step % config.sample_every == 0 or step == config.steps):
                with_ema_weights(lambda: on_sample(step, model))
            if step % config.checkpoint_every == 0 or step == config.steps:
                last_checkpoint = save_checkpoint()

    if export is not None:
        with_ema_weights(lambda: export(model))
    return TrainResult(step=step, losses=losses, run_dir=run_dir, checkpoint=last_checkpoint)


def restore(checkpoint, trainable: dict[str, nn.Parameter], optimizer, scheduler, ema) -> None:
    """Load a checkpoint into the live training objects, checking that it belongs to this model."""
    if set(checkpoint.model) != set(trainable):
        missing = sorted(set(trainable) - set(checkpoint.model))
        extra = sorted(set(checkpoint.model) - set(trainable))
        raise CheckpointError(f"{checkpoint.folder}: was written for other trainable parameters "
                              f"(missing {missing[:3]}, unexpected {extra[:3]}); was the run's config changed?")
    with torch.no_grad():
        for name, p in trainable.items():
            saved = checkpoint.model[name]
            if saved.shape != p.shape:
                raise CheckpointError(f"{checkpoint.folder}: {name} has shape {tuple(saved.shape)}, "
                                      f"the model has {tuple(p.shape)}")
            p.copy_(saved)
    for group in checkpoint.optimizer["param_groups"]:
        group["betas"] = tuple(group["betas"])
    optimizer.load_state_dict(checkpoint.optimizer)
    scheduler.load_state_dict(checkpoint.state["scheduler"])
    if ema is not None:
        if checkpoint.ema is None:
            raise CheckpointError(f"{checkpoint.folder}: has no EMA weights but this run uses EMA "
                                  "(was --ema-decay changed?)")
        device = ema.shadow_params[0].device
        ema.shadow_params = [checkpoint.ema[n].to(device) for n in trainable]
        ema.optimization_step = checkpoint.state["ema_optimization_step"]
    set_rng_state(checkpoint.rng)
