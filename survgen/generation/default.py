"""The shipped default: a tiny-preset generator for the rare classes and its rejection classifier.

They live in the package (`survgen/assets/default/`) so that `survgen generate --class G7`
works right after install, with no model to train or download:

    default/spatial/      stage-1 model: a diffusers StableDiffusionPipeline folder
    default/temporal/     stage-2 run (run.json with parent "../spatial", model/temporal.safetensors)
    default/classifier/   classifier run (run.json, model/, validation.jsonl)

`scripts/train_default.sh` trains them from scratch with the project's own commands
and ends with `export_default`, which copies the finished runs here.
"""

from __future__ import annotations

import shutil
from pathlib import Path

from safetensors.torch import load_file, save_file

from survgen.io import atomic_folder
from survgen.models.loading import spatial_model_dir
from survgen.runs import read_run

DEFAULT_DIR = Path(__file__).resolve().parent.parent / "assets" / "default"


class NoDefaultModelError(FileNotFoundError):
    pass


def default_runs() -> tuple[Path, Path]:
    """The shipped (temporal run, classifier run)."""
    temporal, classifier = DEFAULT_DIR / "temporal", DEFAULT_DIR / "classifier"
    if not (temporal / "run.json").exists() or not (classifier / "run.json").exists():
        raise NoDefaultModelError(
            f"{DEFAULT_DIR}: this install has no shipped default model; pass --model RUN (and --classifier RUN), "
            "or recreate it with scripts/train_default.sh"
        )
    return temporal, classifier


def export_default(temporal_run: str | Path, classifier_run: str | Path, dest: Path = DEFAULT_DIR) -> Path:
    """Copy a finished stage-2 run, its spatial model and a classifier run into `dest` (replacing it whole)."""
    temporal = read_run(temporal_run, stage="temporal")
    classifier = read_run(classifier_run, stage="classifier")
    spatial_model = spatial_model_dir(temporal.parent_path)
    if tuple(temporal.vocabulary.names) != tuple(classifier.vocabulary.names):
        raise ValueError(f"{classifier_run}: trained on other classes than {temporal_run}")
    with atomic_folder(dest) as tmp:
        shutil.copytree(spatial_model, tmp / "spatial")
        shutil.copytree(temporal.model_dir, tmp / "temporal" / "model")
        temporal.folder, temporal.parent = tmp / "temporal", "../spatial"
        temporal.data = None  # the training data's path on the machine that trained it means nothing elsewhere
        temporal.save()
        shutil.copytree(classifier.model_dir, tmp / "classifier" / "model")
        for name in ("validation.jsonl",):
            if (Path(classifier_run) / name).exists():
                shutil.copy(Path(classifier_run) / name, tmp / "classifier" / name)
        classifier.folder, classifier.data = tmp / "classifier", None
        classifier.save()
        store_half_precision(tmp)
    return dest


def store_half_precision(folder: Path) -> None:
    """Halve the package's size: weights stored as float16 are loaded back into float32 models
    (loaders copy into the model's dtype), and the rounding is far below what sampling notices."""
    for path in folder.rglob("*.safetensors"):
        tensors = load_file(path)
        save_file({k: v.half() if v.is_floating_point() else v for k, v in tensors.items()}, str(path))
