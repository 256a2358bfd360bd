"""Run folders: every training command writes one, and later commands read it.

A run folder holds `run.json` (which stage made it, its options, the data and
class vocabulary it used, the run it builds on), so a command that consumes a
run needs no repeated flags and can refuse a folder from the wrong stage.

    RUN/run.json          this file
    RUN/model/            the exported model (stage 1: a diffusers folder; stage 2: temporal weights)
    RUN/checkpoints/      training state for --resume
    RUN/samples/          sample grids written during training
    RUN/metrics.jsonl     the loss log; RUN/loss.png its curve
"""

from __future__ import annotations

import datetime as _dt
import json
import os
import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

from survgen import __version__
from survgen.classes import ClassVocabulary
from survgen.io import output_folder, write_json_atomic

RUN_FILE = "run.json"
STAGES = ("vae", "spatial", "temporal", "classifier")


class RunFolderError(ValueError):
    """A run folder that is missing, from another stage, or unreadable."""


@dataclass
class RunInfo:
    stage: str
    folder: Path
    options: dict
    vocabulary: ClassVocabulary
    data: str | None = None  # relative to the run folder (or absolute, in runs of earlier versions)
    parent: str | None = None  # the run (or model path) this one builds on, stored like `data`
    extra: dict = field(default_factory=dict)

    @property
    def model_dir(self) -> Path:
        return self.folder / "model"

    @property
    def parent_path(self) -> Path | None:
        """The parent run as a path; a relative one is relative to this run (see `relative_to_run`)."""
        return None if self.parent is None else self.folder / self.parent

    @property
    def data_path(self) -> Path | None:
        """The training data as a path; a relative one is relative to this run."""
        return None if self.data is None else self.folder / self.data

    def save(self) -> None:
        write_json_atomic(
            self.folder / RUN_FILE,
            {
                "stage": self.stage,
                "survgen_version": __version__,
                "written": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
                "data": self.data,
                "parent": self.parent,
                "vocabulary": self.vocabulary.to_dict(),
                "options": self.options,
                **self.extra,
            },
        )


def relative_to_run(folder: str | Path, path: str | Path) -> str:
    """`path` as run.json stores it: relative to the run folder, so it names the same place from any working
    directory, holds no machine's absolute path, and moves with the run when both move together."""
    return os.path.relpath(Path(path).resolve(), Path(folder).resolve())


def read_run(folder: str | Path, stage: str | None = None) -> RunInfo:
    """Read `folder/run.json`; with `stage`, refuse a run of another stage."""
    folder = Path(folder)
    path = folder / RUN_FILE
    if not path.exists():
        raise RunFolderError(f"{folder}: not a survgen run folder (no {RUN_FILE})")
    try:
        d = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise RunFolderError(f"{path}: unreadable ({e}); it was edited or damaged: restore it, or train the run "
                             "again") from None
    if not isinstance(d, dict):
        raise RunFolderError(f"{path}: not a run description (a JSON object); restore it, or train the run again")
    if stage is not None and d.get("stage") != stage:
        raise RunFolderError(
            f"{folder}: this is a {d.get('stage')!r} run, but a {stage!r} run is needed here"
            + (" (train one with `survgen train-" + stage + "`)" if stage in STAGES else "")
        )
    kinds = {"stage": str, "options": dict, "vocabulary": dict, "data": (str, type(None)), "parent": (str, type(None))}
    malformed = [f"{key} must be {_kind_name(kind)}, not {d.get(key)!r}" for key, kind in kinds.items()
                 if not isinstance(d.get(key, {} if key == "options" else None), kind)]
    try:
        vocabulary = ClassVocabulary.from_dict(d["vocabulary"]) if not malformed else None
    except (KeyError, TypeError, ValueError) as e:
        malformed.append(f"vocabulary: {e}")
    if malformed:
        raise RunFolderError(f"{path}: malformed ({'; '.join(malformed)}); it was edited or damaged: restore it, "
                             "or train the run again")
    known = {"stage", "survgen_version", "written", "data", "parent", "vocabulary", "options"}
    return RunInfo(stage=d["stage"], folder=folder, options=d.get("options", {}), vocabulary=vocabulary,
                   data=d.get("data"), parent=d.get("parent"), extra={k: v for k, v in d.items() if k not in known})


def _kind_name(kind) -> str:
    kinds = kind if isinstance(kind, tuple) else (kind,)
    return " or ".join({str: "text", dict: "an object", type(None): "null"}[k] for k in kinds)


def begin_run(folder: str | Path, stage: str, resume: bool) -> RunInfo | None:
    """Check, before any work, that `folder` may take a new run (or holds the run to resume); the stored run on resume.

    A new run never writes into a folder that already holds something: nothing is overwritten.
    """
    folder = Path(folder)
    if resume:
        if not (folder / RUN_FILE).exists():
            raise RunFolderError(f"{folder}: nothing to resume (no {RUN_FILE}); drop --resume to start a new run")
        return read_run(folder, stage=stage)
    if output_folder(folder, option="--out", marker=RUN_FILE):
        raise RunFolderError(f"--out {folder}: holds a run already; pass --resume to continue it, or choose a new --out")
    return None


@contextmanager
def cleared_if_failed(folder: Path, resume: bool) -> Iterator[None]:
    """A new run that fails before its first checkpoint leaves no trace (nothing in it could be resumed), so
    the corrected command can run into the same folder."""
    existed = folder.exists()
    try:
        yield
    except BaseException:
        if not resume and not (folder / "checkpoints" / "latest").exists():
            for entry in (folder.iterdir() if existed and folder.is_dir() else []):
                shutil.rmtree(entry, ignore_errors=True) if entry.is_dir() else entry.unlink(missing_ok=True)
            if not existed:
                shutil.rmtree(folder, ignore_errors=True)
        raise


# Options that only steer training from here on: --resume may change them (extend --steps, lower --lr after a
# divergence, turn off mixed precision, read a latent cache). Every other option defines the run.
CHANGEABLE_ON_RESUME = ("train_steps", "train_lr", "train_checkpoint_every", "train_sample_every",
                        "train_num_workers", "train_mixed_precision", "sample_steps", "cache")
_PATH_OPTIONS = ("pretrained", "tokenizer", "vae", "cache", "prior_dino")
_FLAGS = {"classes": "--class", "train_num_workers": "--workers"}


def option_flag(key: str) -> str:
    """The command-line flag of a stage option (`train_batch_size` -> `--batch-size`)."""
    return _FLAGS.get(key, "--" + key.removeprefix("train_").replace("_", "-"))


def _flat(options: dict) -> dict:
    """Stage options with the nested training options as `train_*` keys, as the command line names them."""
    return {**{k: v for k, v in options.items() if k != "train"},
            **{f"train_{k}": v for k, v in options.get("train", {}).items()}}


def _same_option(run: RunInfo, key: str, asked, stored) -> bool:
    if asked is None or stored is None:
        return asked is stored
    if key == "classes":
        return [run.vocabulary.resolve(c) for c in asked] == [run.vocabulary.resolve(c) for c in stored]
    if key in _PATH_OPTIONS:
        return Path(asked).expanduser().resolve() == Path(stored).expanduser().resolve()
    if isinstance(asked, (list, tuple)) and isinstance(stored, (list, tuple)):
        return list(asked) == list(stored)
    if isinstance(asked, (int, float)) and isinstance(stored, (int, float)):
        return float(asked) == float(stored) and isinstance(asked, bool) == isinstance(stored, bool)
    return asked == stored


def _shown(value) -> str:
    return " ".join(map(str, value)) if isinstance(value, (list, tuple)) else str(value)


def check_resume_request(run: RunInfo, options: dict, *, data: str | Path | None = None,
                         parent: str | Path | None = None) -> list[str]:
    """Refuse a --resume whose options (a stage config as a dict), data or parent run differ from the run's own,
    naming each difference; return notes on the CHANGEABLE_ON_RESUME options it does change."""
    asked, stored = _flat(options), _flat(run.options)
    differences, changes = [], []
    for key in [*asked, *(k for k in stored if k not in asked)]:
        if not _same_option(run, key, asked.get(key), stored.get(key)):
            line = f"{option_flag(key)} {_shown(asked.get(key))} (the run's is {_shown(stored.get(key))})"
            (changes if key in CHANGEABLE_ON_RESUME else differences).append(line)
    for flag, value, own in (("--data", data, run.data), ("--spatial", parent, run.parent)):
        if value is not None and own is not None and Path(value).resolve() != run.folder.joinpath(own).resolve():
            differences.append(f"{flag} {value} (the run's is {own})")
    if differences:
        raise RunFolderError(f"{run.folder}: --resume continues the run as it was started, but the command asks "
                             f"for {'; '.join(differences)}; drop those options to continue it, or start a new run "
                             "with another --out")
    return [f"{run.folder}: continuing with {', '.join(changes)}"] if changes else []
