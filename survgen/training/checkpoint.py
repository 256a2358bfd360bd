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
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

from survgen.io import atomic_folder, atomic_path, write_text_atomic

LATEST = "latest"


class CheckpointError(RuntimeError):
    """A checkpoint that is missing pieces or does not fit the model being resumed."""


def _save(tensors: dict[str, torch.Tensor], path: Path) -> None:
    """safetensors needs contiguous CPU tensors."""
    save_file({k: v.detach().cpu().contiguous() for k, v in tensors.items()}, str(path))


def save_safetensors_atomic(tensors: dict[str, torch.Tensor], path: str | Path) -> None:
    """Write `tensors` to `path` through a temporary file."""
    with atomic_path(path) as tmp:
        _save(tensors, tmp)


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
        _save(model, tmp / "model.safetensors")
        if ema is not None:
            _save(ema, tmp / "ema.safetensors")
        opt_tensors, param_groups = flatten_optimizer_state(optimizer)
        _save(opt_tensors, tmp / "optimizer.safetensors")
        _save(rng, tmp / "rng.safetensors")
        (tmp / "state.json").write_text(json.dumps({**state, "step": step, "param_groups": param_groups}) + "\n")
    write_text_atomic(checkpoints_dir / LATEST, name + "\n")
    if keep > 0:
        # never prune the newest, even if an older run left higher-numbered folders behind
        old = sorted(p for p in checkpoints_dir.glob("step-*") if p.is_dir() and p.name != name)
        for folder in old[: max(0, len(old) - (keep - 1))]:
            shutil.rmtree(folder, ignore_errors=True)
    return checkpoints_dir / name


def read_latest_checkpoint(checkpoints_dir: Path) -> Checkpoint | None:
    """The checkpoint `latest` names, or None when the run has not written one yet."""
    pointer = checkpoints_dir / LATEST
    if not pointer.exists():
        return None
    folder = checkpoints_dir / pointer.read_text().strip()
    needed = ["model.safetensors", "optimizer.safetensors", "rng.safetensors", "state.json"]
    missing = [n for n in needed if not (folder / n).exists()]
    if missing:
        raise CheckpointError(f"{folder}: incomplete checkpoint (missing {', '.join(missing)}); "
                              f"point {pointer} at an older step-* folder to resume from it")
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
