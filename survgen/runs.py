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
from dataclasses import dataclass, field
from pathlib import Path

from survgen import __version__
from survgen.classes import ClassVocabulary
from survgen.io import write_json_atomic

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
    data: str | None = None
    parent: str | None = None  # the run (or model path) this one builds on
    extra: dict = field(default_factory=dict)

    @property
    def model_dir(self) -> Path:
        return self.folder / "model"

    @property
    def parent_path(self) -> Path | None:
        """The parent run as a path; a relative one is relative to this run (as in the shipped default)."""
        if self.parent is None:
            return None
        path = Path(self.parent)
        return path if path.is_absolute() else self.folder / path

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


def read_run(folder: str | Path, stage: str | None = None) -> RunInfo:
    """Read `folder/run.json`; with `stage`, refuse a run of another stage."""
    folder = Path(folder)
    path = folder / RUN_FILE
    if not path.exists():
        raise RunFolderError(f"{folder}: not a survgen run folder (no {RUN_FILE})")
    try:
        d = json.loads(path.read_text())
    except json.JSONDecodeError as e:
        raise RunFolderError(f"{path}: unreadable ({e})") from e
    if stage is not None and d.get("stage") != stage:
        raise RunFolderError(
            f"{folder}: this is a {d.get('stage')!r} run, but a {stage!r} run is needed here"
            + (" (train one with `survgen train-" + stage + "`)" if stage in STAGES else "")
        )
    known = {"stage", "survgen_version", "written", "data", "parent", "vocabulary", "options"}
    return RunInfo(
        stage=d["stage"],
        folder=folder,
        options=d.get("options", {}),
        vocabulary=ClassVocabulary.from_dict(d["vocabulary"]),
        data=d.get("data"),
        parent=d.get("parent"),
        extra={k: v for k, v in d.items() if k not in known},
    )


def begin_run(folder: str | Path, stage: str, resume: bool) -> RunInfo | None:
    """Check that `folder` may be used for a new run (or resumed); return the stored run on resume.

    A new run never writes into a folder that already holds something: nothing is overwritten.
    """
    folder = Path(folder)
    if resume:
        if not (folder / RUN_FILE).exists():
            raise RunFolderError(f"{folder}: nothing to resume (no {RUN_FILE}); drop --resume to start a new run")
        return read_run(folder, stage=stage)
    if folder.exists() and any(folder.iterdir()):
        hint = " pass --resume to continue it, or" if (folder / RUN_FILE).exists() else ""
        raise RunFolderError(f"{folder}: folder is not empty;{hint} choose a new --out")
    return None
