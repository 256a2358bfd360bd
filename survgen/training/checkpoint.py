"""Training checkpoints: everything `--resume` needs, in safetensors, written atomically.

    RUN/checkpoints/step-000500/
        model.safetensors      the trainable parameters (frozen ones are rebuilt from the run's inputs)
        ema.safetensors        the EMA shadow of those parameters (absent when EMA is off)
        optimizer.safetensors  AdamW moments, flattened as `state.<param index>.<name>`
        rng.safetensors        torch's CPU (and CUDA) generator states
        state.json             step, per-step losses, optimizer param groups, LR-scheduler and EMA counters
    RUN/checkpoints/latest     the name of the newest complete checkpoint

A checkpoint folder is built under a temporary name and renamed into place, and
`latest` is replaced only after that, so a run killed at any moment leaves a
usable checkpoint behind.
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors.torch import load_file

from survgen.console import say
from survgen.io import atomic_folder, safetensors_problem, save_safetensors, write_text_atomic
from survgen.runs import RunInfo, begin_run, check_resume_request, cleared_if_failed

LATEST = "latest"


class CheckpointError(RuntimeError):
    """A checkpoint that is missing pieces or does not fit the model being resumed."""


def flatten_optimizer_state(state_dict: dict) -> tuple[dict[str, torch.Tensor], list]:
    """Split a torch optimizer state dict into tensors (for safetensors) and JSON-able param groups."""
    tensors = {}
    for index, per_param in state_dict["state"].items():
        for name, value in per_param.items():
            tensors[f"state.{index}.{name}"] = value if torch.is_tensor(value) else torch.tensor(value)
    return tensors, state_dict["param_groups"]


def unflatten_optimizer_state(tensors: dict[str, torch.Tensor], param_groups: list) -> dict:
    state: dict[int, dict] = {}
    for key, value in tensors.items():
        _, index, name = key.split(".", 2)
        state.setdefault(int(index), {})[name] = value
    return {"state": state, "param_groups": param_groups}


@dataclass
class Checkpoint:
    """One checkpoint read back from disk."""

    folder: Path
    step: int
    model: dict[str, torch.Tensor]
    ema: dict[str, torch.Tensor] | None
    optimizer: dict
    rng: dict[str, torch.Tensor]
    state: dict


def write_checkpoint(checkpoints_dir: Path, step: int, *, model: dict, ema: dict | None, optimizer: dict,
                     rng: dict, state: dict, keep: int) -> Path:
    """Write checkpoint `step` atomically, point `latest` at it and prune all but the newest `keep`."""
    name = f"step-{step:06d}"
    with atomic_folder(checkpoints_dir / name) as tmp:
        save_safetensors(model, tmp / "model.safetensors")
        if ema is not None:
            save_safetensors(ema, tmp / "ema.safetensors")
        opt_tensors, param_groups = flatten_optimizer_state(optimizer)
        save_safetensors(opt_tensors, tmp / "optimizer.safetensors")
        save_safetensors(rng, tmp / "rng.safetensors")
        (tmp / "state.json").write_text(json.dumps({**state, "step": step, "param_groups": param_groups}) + "\n")
    write_text_atomic(checkpoints_dir / LATEST, name + "\n")
    if keep > 0:
        # never prune the newest, even if an older run left higher-numbered folders behind
        old = sorted(p for p in checkpoints_dir.glob("step-*") if p.is_dir() and p.name != name)
        for folder in old[: max(0, len(old) - (keep - 1))]:
            shutil.rmtree(folder, ignore_errors=True)
    return checkpoints_dir / name


CHECKPOINT_FILES = ("model.safetensors", "optimizer.safetensors", "rng.safetensors", "state.json")


def latest_checkpoint_folder(checkpoints_dir: Path) -> Path | None:
    """The folder `latest` names, checked whole (every file present and readable) without loading it; None when
    the run has written no checkpoint yet. A damaged one is reported by file, with the step to fall back to."""
    pointer = checkpoints_dir / LATEST
    if not pointer.exists():
        return None
    folder = checkpoints_dir / pointer.read_text().strip()
    problems = [f"{name} missing" for name in CHECKPOINT_FILES if not (folder / name).is_file()]
    for name in ("model.safetensors", "ema.safetensors", "optimizer.safetensors", "rng.safetensors"):
        if (folder / name).is_file() and (problem := safetensors_problem(folder / name)):
            problems.append(f"{name} {problem}")
    if (folder / "state.json").is_file():
        try:
            state = json.loads((folder / "state.json").read_text())
            int(state["step"]), state["param_groups"], state["losses"], state["scheduler"]
        except (ValueError, KeyError, TypeError) as e:
            problems.append(f"state.json unreadable ({type(e).__name__}: {e})")
    if problems:
        older = sorted(p.name for p in checkpoints_dir.glob("step-*") if p.is_dir() and p.name < folder.name)
        fallback = (f"to resume from the step before, write {older[-1]} into {pointer}" if older else
                    "no older checkpoint is left: start a new run with another --out")
        raise CheckpointError(f"{folder}: damaged checkpoint ({'; '.join(problems)}); {fallback}")
    return folder


def read_latest_checkpoint(checkpoints_dir: Path) -> Checkpoint | None:
    """The checkpoint `latest` names, or None when the run has not written one yet."""
    folder = latest_checkpoint_folder(checkpoints_dir)
    if folder is None:
        return None
    state = json.loads((folder / "state.json").read_text())
    ema_path = folder / "ema.safetensors"
    return Checkpoint(
        folder=folder,
        step=int(state["step"]),
        model=load_file(folder / "model.safetensors"),
        ema=load_file(ema_path) if ema_path.exists() else None,
        optimizer=unflatten_optimizer_state(load_file(folder / "optimizer.safetensors"), state["param_groups"]),
        rng=load_file(folder / "rng.safetensors"),
        state=state,
    )


def check_resumable(run: RunInfo) -> Path | None:
    """Before anything is written: the checkpoint `--resume` of `run` will continue from, or None
    when the run wrote none yet. A finished run without checkpoints is refused, never trained over."""
    folder = latest_checkpoint_folder(run.folder / "checkpoints")
    if folder is None and (run.extra.get("status") == "done" or run.model_dir.exists()):
        raise CheckpointError(f"{run.folder}: the run has a trained model but no checkpoint to resume from "
                              f"(checkpoints/{LATEST} is missing); its model in {run.model_dir} is left as it is: "
                              "to train further, start a new run with another --out")
    return folder


def open_training_run(out: Path, stage: str, resume: bool, options: dict, *, data: str | Path,
                      parent: str | Path | None = None) -> None:
    """Every check a training command makes before it writes anything: `out` may take a new run, or on --resume
    holds a `stage` run of the same request (options, data, parent) with a checkpoint that can be read."""
    stored = begin_run(out, stage, resume)
    if stored is not None:
        notes = check_resume_request(stored, options, data=data, parent=parent)
        check_resumable(stored)
        for note in notes:
            say(note)


@contextmanager
def training_run(run: RunInfo, resume: bool) -> Iterator[None]:
    """run.json says `training` while the block runs and `done` after it; a new run that fails before its first
    checkpoint leaves nothing behind."""
    with cleared_if_failed(run.folder, resume):
        run.folder.mkdir(parents=True, exist_ok=True)
        run.extra["status"] = "training"
        run.save()
        yield
    run.extra["status"] = "done"
    run.save()
