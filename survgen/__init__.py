"""survgen: SurV-Gen, class-conditioned surgical video generation.

Two-stage latent video diffusion (a 2D text-conditioned spatial model, then
temporal transformer blocks trained per class) plus rejection sampling with a
video classifier, to rebalance imbalanced surgical video datasets.
"""

import sys
from importlib.machinery import ModuleSpec
from pathlib import Path

__version__ = "0.1.0"

# The root's kernels/ and cli/ are installed as survgen.kernels and survgen.cli (pyproject.toml's package-dir).
# They have no __init__.py: a checkout's root is first on sys.path under `python -m`, and a root package would
# hide an installed one of its name (Hugging Face's `kernels`). setuptools' editable finder does not find such
# namespace subpackages (pypa/setuptools#4248), so in a checkout this finder does; a wheel has them in place.
_CHECKOUT_FOLDERS = {f"{__name__}.{name}": Path(__file__).resolve().parent.parent / name for name in ("kernels", "cli")}


class _CheckoutFolders:
    """Finds survgen.kernels and survgen.cli as namespace packages in the checkout's root folders."""

    @staticmethod
    def find_spec(name, path=None, target=None):
        folder = _CHECKOUT_FOLDERS.get(name)
        if folder is None or not folder.is_dir():
            return None
        spec = ModuleSpec(name, None, is_package=True)  # no loader: importlib makes a namespace package
        spec.submodule_search_locations = [str(folder)]
        return spec


if not (Path(__file__).parent / "kernels").is_dir() and _CheckoutFolders not in sys.meta_path:
    sys.meta_path.append(_CheckoutFolders)
