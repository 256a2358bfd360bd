"""The checkout's root hides no installed package.

`python -m survgen`, `python -m pytest`, `torchrun -m survgen` and a notebook
started in the checkout all put its root first on sys.path. A root folder with
an `__init__.py`, or a root `.py` file, would then be imported in place of an
installed package of the same name (as `kernels/` once hid Hugging Face's
`kernels`, which transformers imports). The root's folders are therefore
namespace portions, which the import system passes over whenever a regular
package of that name is installed.
"""

from __future__ import annotations

import importlib.machinery
import importlib.metadata
import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
OWN = {"survgen"}  # the project's own package: the same name as installed


def root_names() -> dict[str, Path]:
    """Every name `import NAME` could find at the root: folders (package or portion) and modules."""
    names = {}
    for entry in ROOT.iterdir():
        if entry.name.startswith("."):
            continue
        if entry.is_dir() and entry.name.isidentifier():
            names[entry.name] = entry
        for suffix in importlib.machinery.all_suffixes():
            if entry.is_file() and entry.name.endswith(suffix) and entry.name[: -len(suffix)].isidentifier():
                names[entry.name[: -len(suffix)]] = entry
    return names


def resolved_at_root(names: list[str], extra_path: Path | None = None) -> dict[str, list[str]]:
    """Where `import NAME` resolves for a process started at the root: the files or folders it would load."""
    script = ("import importlib.util, json, sys\n"
              "out = {}\n"
              "for name in sys.argv[1:]:\n"
              "    spec = importlib.util.find_spec(name)\n"
              "    out[name] = [] if spec is None else ([spec.origin] if spec.origin else [])"
              " + list(spec.submodule_search_locations or [])\n"
              "print(json.dumps(out))\n")
    env = None if extra_path is None else {**os.environ, "PYTHONPATH": str(extra_path)}  # after the root, as site-packages
    result = subprocess.run([sys.executable, "-c", script, *names], cwd=ROOT, env=env, capture_output=True, text=True,
                            check=True)
    return json.loads(result.stdout)


def test_no_root_folder_is_a_regular_package():
    regular = [name for name, path in root_names().items()
               if name not in OWN and (path.is_file() and path.suffix != ".py"
                                       or path.is_dir() and any(path.glob("__init__.*")))]
    assert not regular, f"{regular} at the root would hide installed packages of that name; remove their __init__.py"


def test_every_root_name_yields_to_an_installed_package(tmp_path):
    """A package installed under each root name (as a distribution may one day be) wins over the root's."""
    # setup.py, the one root module, is exempt: the card names it; no installed module has its name (next test).
    names = sorted(set(root_names()) - OWN - {"setup"})
    assert {"kernels", "cli", "benchmarks", "tests", "scripts"} <= set(names)
    for name in names:
        (tmp_path / name).mkdir()
        (tmp_path / name / "__init__.py").write_text("")
    where = resolved_at_root(names, extra_path=tmp_path)
    hidden = [name for name in names if where[name][:1] != [str(tmp_path / name / "__init__.py")]]
    assert not hidden, f"the root hides these installed packages: {hidden} (found {[where[n] for n in hidden]})"


def test_the_installed_top_level_names_resolve_outside_the_root():
    installed = set(importlib.metadata.packages_distributions()) | set(sys.stdlib_module_names)
    clashes = sorted((set(root_names()) - OWN) & installed)
    where = resolved_at_root(clashes) if clashes else {}
    # (a virtual environment may itself sit in the checkout: what counts is the root's own entry of that name)
    hidden = {name: paths for name, paths in where.items()
              if paths and (Path(paths[0]).is_relative_to(ROOT / name) or Path(paths[0]).parent == ROOT)}
    assert not hidden, f"imported from the checkout instead of the installed package: {hidden}"


def test_survgen_imports_beside_diffusers_and_transformers_from_the_root():
    subprocess.run([sys.executable, "-c", "import survgen, diffusers, transformers; "
                    "import diffusers.models.autoencoders.autoencoder_kl"], cwd=ROOT, check=True)
