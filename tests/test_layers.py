"""The house's floors, checked from the source: every import (at the top or inside a function) looks down.

    cli → generation / evaluation → training → diffusion → models / data / kernels → classes / io / config / ...

Inference never imports training: generating, classifying and the quality
metrics run from a run folder through `survgen.models.loading`. Only the
downstream experiment, which trains recognisers, may use the trainers.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
SOURCES = {"survgen": ROOT / "survgen", "survgen.cli": ROOT / "cli", "survgen.kernels": ROOT / "kernels"}
FLOOR = {"cli": 6, "__main__": 6, "generation": 5, "evaluation": 5, "training": 4, "diffusion": 3,
         "models": 2, "data": 2, "kernels": 2}  # anything else under survgen/: 1, the bottom
INFERENCE = ("survgen.generation", "survgen.evaluation.features", "survgen.evaluation.quality",
             "survgen.evaluation.metrics", "survgen.evaluation.report", "survgen.cli.classify", "survgen.cli.generate",
             "survgen.models", "survgen.diffusion")


def modules() -> dict[str, Path]:
    found = {}
    for package, folder in SOURCES.items():
        for path in folder.rglob("*.py"):
            if package == "survgen" and path.is_relative_to(ROOT / "survgen" / "assets"):
                continue
            parts = path.relative_to(folder).with_suffix("").parts
            found[".".join((package, *parts)).removesuffix(".__init__")] = path
    return found


def imported(path: Path) -> set[str]:
    names = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module)
        elif isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
    return {n for n in names if n == "survgen" or n.startswith("survgen.")}


def floor(module: str) -> int:
    parts = module.split(".")
    return FLOOR.get(parts[1], 1) if len(parts) > 1 else 1


def within(module: str, package: str) -> bool:
    return module == package or module.startswith(package + ".")


MODULES = modules()


def test_the_source_tree_is_found():
    assert {"survgen.cli.train", "survgen.models.loading", "survgen.training.loop", "survgen.kernels.ops"} <= set(MODULES)


@pytest.mark.parametrize("module", sorted(MODULES))
def test_imports_look_down(module):
    up = sorted(m for m in imported(MODULES[module]) if floor(m) > floor(module))
    assert not up, f"{module} (floor {floor(module)}) imports from a floor above: {up}"


@pytest.mark.parametrize("module", sorted(m for m in MODULES if any(within(m, p) for p in INFERENCE)))
def test_inference_never_imports_training(module):
    trainers = sorted(m for m in imported(MODULES[module]) if within(m, "survgen.training"))
    assert not trainers, f"{module} imports {trainers}: load models through survgen.models.loading"


@pytest.mark.parametrize("module", sorted(m for m in MODULES if within(m, "survgen.training")))
def test_training_never_imports_generation(module):
    assert not [m for m in imported(MODULES[module]) if within(m, "survgen.generation")]
