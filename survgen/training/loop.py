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

from survgen.console import say
from survgen.io import PNG_SOFTWARE, atomic_path
from survgen.training.checkpoint import CheckpointError, read_latest_checkpoint, write_checkpoint
from survgen.training.configs import TrainConfig


class TrainingDivergedError(RuntimeError):
    """The loss became NaN or infinite; the last good checkpoint is kept."""


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


@dataclass
class StepReport:
    """What the loop tells its caller's progress display after every optimizer step (main process only)."""

    run: str  # the run folder's name
    step: int
    total: int
    loss: float
    rate: float  # optimizer steps per second since this session started


StepReporter = Callable[[StepReport], None]


class Training:
    """The live state of one training run: accelerate, AdamW, the LR schedule, EMA, the step and its losses."""

    def __init__(self, run_dir: Path, model: nn.Module, trainable: dict[str, nn.Parameter], loss_fn: LossFn,
                 config: TrainConfig):
        from accelerate import Accelerator, DistributedDataParallelKwargs
        from diffusers.optimization import get_scheduler
        from diffusers.training_utils import EMAModel

        self.run_dir, self.model, self.config = run_dir, model, config
        self.trainable, self.params = trainable, list(trainable.values())
        self.accelerator = Accelerator(mixed_precision=resolve_mixed_precision(config.mixed_precision),
                                       kwargs_handlers=[DistributedDataParallelKwargs(find_unused_parameters=False)])
        optimizer = torch.optim.AdamW(self.params, lr=config.lr, betas=config.betas, eps=config.adam_eps,
                                      weight_decay=config.weight_decay)
        # Stepped by hand once per optimizer step: accelerate's wrapper would step it per process.
        self.scheduler = get_scheduler("constant_with_warmup", optimizer, num_warmup_steps=config.lr_warmup_steps)
        self.objective, self.optimizer = self.accelerator.prepare(_Objective(model, loss_fn), optimizer)
        self.ema = EMAModel(self.params, decay=config.ema_decay) if config.ema_decay > 0 else None
        if self.ema is not None:
            self.ema.to(self.accelerator.device)
        self.step, self.losses, self.last_checkpoint = 0, [], None
        self.metrics = MetricsLog(run_dir)
        self.is_main = self.accelerator.is_main_process

    def resume_from_latest(self) -> None:
        checkpoint = read_latest_checkpoint(self.run_dir / "checkpoints")
        if checkpoint is None:
            if self.is_main:
                say(f"{self.run_dir}: no checkpoint yet, starting from step 0")
            return
        restore(checkpoint, self.trainable, self.optimizer, self.scheduler, self.ema)
        self.step, self.losses, self.last_checkpoint = checkpoint.step, checkpoint.state["losses"], checkpoint.folder
        if self.is_main:
            self.metrics.truncate(self.step)
            say(f"resuming {self.run_dir} from step {self.step}")

    def batches(self, dataset: Dataset):
        """The micro-batches still to come, on this process's device."""
        config, accelerator, workers = self.config, self.accelerator, loader_workers(self.config.num_workers)
        loader = DataLoader(
            dataset, num_workers=workers, pin_memory=accelerator.device.type == "cuda",
            prefetch_factor=4 if workers else None, persistent_workers=workers > 0,
            batch_sampler=PlannedBatches(len(dataset), config.batch_size, config.seed, accelerator.process_index,
                                         accelerator.num_processes, start=self.step * config.grad_accum,
                                         count=max(0, config.steps - self.step) * config.grad_accum))
        for batch in loader:
            yield {k: v.to(accelerator.device, non_blocking=True) for k, v in batch.items()}

    def optimizer_step(self, batches) -> float:
        """One optimizer step over `grad_accum` micro-batches; returns the mean loss across processes."""
        accum, accelerator = self.config.grad_accum, self.accelerator
        total = torch.zeros((), device=accelerator.device)
        for j in range(accum):
            generator = micro_step_generator(self.config.seed, accelerator.process_index, self.step * accum + j)
            # gradients are all-reduced only on the last micro-batch of a step
            with accelerator.no_sync(self.objective) if j < accum - 1 else nullcontext():
                loss = self.objective(next(batches), generator)
                accelerator.backward(loss / accum)
            total += loss.detach().float()
        loss_value = accelerator.reduce(total / accum, reduction="mean").item()
        if not math.isfinite(loss_value):
            where = (f"the last good checkpoint is {self.last_checkpoint}" if self.last_checkpoint
                     else "no checkpoint was written yet")
            raise TrainingDivergedError(f"{self.run_dir}: the loss became {loss_value} at step {self.step + 1}; "
                                        f"{where}. Resume with --resume and a lower --lr, or turn off mixed precision.")
        if self.config.max_grad_norm > 0:
            accelerator.clip_grad_norm_(self.params, self.config.max_grad_norm)
        self.optimizer.step()
        self.scheduler.step()
        self.optimizer.zero_grad(set_to_none=True)
        if self.ema is not None:
            self.ema.step(self.params)
        self.step += 1
        self.losses.append(loss_value)
        return loss_value

    def log(self, loss: float, rate: float) -> None:
        if self.is_main:
            self.metrics.append({"step": self.step, "loss": loss, "lr": self.scheduler.get_last_lr()[0],
                                 "it_per_s": round(rate, 3)})

    def save_checkpoint(self) -> None:
        if self.is_main:
            ema = self.ema
            write_checkpoint(
                self.run_dir / "checkpoints", self.step, model=self.trainable,
                ema=dict(zip(self.trainable, ema.shadow_params)) if ema is not None else None,
                optimizer=self.optimizer.state_dict(), rng=rng_state(),
                state={"losses": self.losses, "scheduler": self.scheduler.state_dict(),
                       "ema_optimization_step": ema.optimization_step if ema is not None else None},
                keep=self.config.keep_checkpoints)
            self.metrics.plot()
        self.accelerator.wait_for_everyone()
        self.last_checkpoint = self.run_dir / "checkpoints" / f"step-{self.step:06d}"

    def with_ema_weights(self, fn: Callable[[], None]) -> None:
        """Run `fn` on the main process with the EMA weights in place, in eval mode, without grad."""
        if self.is_main:
            if self.ema is not None:
                self.ema.store(self.params)
                self.ema.copy_to(self.params)
            self.model.eval()
            try:
                with torch.no_grad(), self.accelerator.autocast():
                    fn()
            finally:
                if self.ema is not None:
                    self.ema.restore(self.params)
                self.model.train()
        self.accelerator.wait_for_everyone()


def _due(step: int, every: int, last: int) -> bool:
    return step % every == 0 or step == last


def train(*, run_dir: str | Path, model: nn.Module, trainable: dict[str, nn.Parameter], dataset: Dataset,
          loss_fn: LossFn, config: TrainConfig, on_sample: Callable[[int, nn.Module], None] | None = None,
          export: Callable[[nn.Module], None] | None = None, resume: bool = False,
          progress: StepReporter | None = None) -> TrainResult:
    """Train `trainable` (a subset of `model`'s parameters) to `config.steps` optimizer steps.

    `loss_fn(model, batch, generator)` returns the mean loss of one micro-batch and must
    draw all its randomness from `generator`. `on_sample(step, model)` and `export(model)`
    run on the main process with the EMA weights swapped in. `progress` gets a `StepReport`
    after every step.
    """
    run_dir = Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    if len(dataset) == 0:
        raise ValueError("the training set is empty")
    check_trainable(model, trainable)
    run = Training(run_dir, model, trainable, loss_fn, config)
    if resume:
        run.resume_from_latest()
    batches = run.batches(dataset)
    model.train()
    started, started_step = time.perf_counter(), run.step
    while run.step < config.steps:
        loss = run.optimizer_step(batches)
        rate = (run.step - started_step) / (time.perf_counter() - started)
        if progress and run.is_main:
            progress(StepReport(run=run_dir.name, step=run.step, total=config.steps, loss=loss, rate=rate))
        if _due(run.step, config.log_every, config.steps):
            run.log(loss, rate)
        if on_sample is not None and _due(run.step, config.sample_every, config.steps):
            run.with_ema_weights(lambda: on_sample(run.step, model))
        if _due(run.step, config.checkpoint_every, config.steps):
            run.save_checkpoint()
    if export is not None:
        run.with_ema_weights(lambda: export(model))
    return TrainResult(step=run.step, losses=run.losses, run_dir=run_dir, checkpoint=run.last_checkpoint)


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
