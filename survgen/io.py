"""Output files: written atomically, and never over something survgen did not write.

Every file goes to a temporary name in the same folder and is renamed over the
final name, so a killed process leaves either the old file or the new one.
"""

from __future__ import annotations

import fnmatch
import json
import os
import shutil
import tempfile
from collections.abc import Callable, Sequence
from contextlib import contextmanager
from pathlib import Path


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


@contextmanager
def atomic_path(path: str | Path):
    """Yield a temporary path next to `path`; on success rename it to `path`."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        yield Path(tmp)
        os.chmod(tmp, 0o666 & ~_umask())  # mkstemp makes it owner-only; give it a normal file's mode
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def write_text_atomic(path: str | Path, text: str) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(text)


def write_json_atomic(path: str | Path, obj) -> None:
    write_text_atomic(path, json.dumps(obj, indent=2, sort_keys=False) + "\n")


@contextmanager
def atomic_folder(folder: str | Path):
    """Yield a temporary folder next to `folder`; on success it replaces `folder` whole."""
    folder = Path(folder)
    folder.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{folder.name}.", suffix=".tmp", dir=folder.parent))
    try:
        yield tmp
        os.chmod(tmp, 0o777 & ~_umask())  # mkdtemp makes it owner-only
        if folder.exists():
            old = folder.with_name(f".{folder.name}.old")
            shutil.rmtree(old, ignore_errors=True)
            os.replace(folder, old)
            os.replace(tmp, folder)
            shutil.rmtree(old)
        else:
            os.replace(tmp, folder)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


PACKAGE = Path(__file__).resolve().parent


def shown_path(path: str | Path) -> str:
    """`path` as outputs a user keeps (manifests, reports) show it: as given, except a path into the installed
    package (the shipped default model), which is named from the package, `survgen/assets/...`, not from where
    it is installed on this machine."""
    resolved = Path(path).resolve()
    if Path(path).is_absolute() and resolved.is_relative_to(PACKAGE):
        return (Path(PACKAGE.name) / resolved.relative_to(PACKAGE)).as_posix()
    return str(path)


class OutputPathError(ValueError):
    """An output location that cannot be written, or that holds something survgen did not write."""


def _entries(folder: Path, limit: int = 3) -> str:
    names = sorted(p.name + ("/" if p.is_dir() else "") for p in folder.iterdir())
    return ", ".join(names[:limit]) + (f" and {len(names) - limit} more" if len(names) > limit else "")


def check_writable(path: str | Path, option: str) -> None:
    """Refuse, before any work, a `path` that cannot be created: a file in its way, or a folder one cannot write.

    A probe file is made and removed in the nearest existing folder: permission
    bits do not tell for root or on a read-only file system.
    """
    path = Path(path)
    existing = path
    while not existing.exists() and existing != existing.parent:
        existing = existing.parent
    if existing != path and not existing.is_dir():
        raise OutputPathError(f"{option} {path}: {existing} is a file, so nothing can be made under it; "
                              f"choose another {option}")
    folder = existing if existing.is_dir() else existing.parent
    try:
        fd, probe = tempfile.mkstemp(prefix=".survgen-write-test.", dir=folder)
        os.close(fd)
        os.unlink(probe)
    except OSError as e:
        raise OutputPathError(f"{option} {path}: cannot write in {folder} ({e.strerror}); "
                              f"choose another {option}") from None


def output_folder(folder: str | Path, *, option: str, marker: str) -> bool:
    """Check, before any work, that `folder` may receive an output whose own file is `marker`.

    Returns True when it already holds such an output (the caller continues or
    compares it), False when it is empty or absent. A file, a folder holding
    anything else, or a location that cannot be written is refused with the
    option to change: nothing survgen did not write is ever written into.
    """
    folder = Path(folder)
    if folder.exists() and not folder.is_dir():
        raise OutputPathError(f"{option} {folder}: is a file; give a folder (a new one, or one this command made)")
    if (folder / marker).is_file():
        return True
    if folder.exists() and any(folder.iterdir()):
        raise OutputPathError(f"{option} {folder}: folder is not empty (holds {_entries(folder)}) and has no "
                              f"{marker}, so survgen did not make it; it is left as it is: choose a new {option}")
    check_writable(folder, option)
    return False


def output_file(path: str | Path, *, option: str, suffix: str, ours: Callable[[Path], bool]) -> None:
    """Check, before any work, that the file `path` may be written: absent, or an earlier output of the same kind
    (`ours(path)`); never a folder, another file, or a place that cannot be written."""
    path = Path(path)
    if path.is_dir():
        raise OutputPathError(f"{option} {path}: is a folder; give a file name, e.g. {path / ('plot' + suffix)}")
    if path.suffix.lower() != suffix:
        raise OutputPathError(f"{option} {path}: give a file name ending in {suffix}")
    if path.exists() and not ours(path):
        raise OutputPathError(f"{option} {path}: the file exists and survgen did not write it; it is left as it "
                              f"is: choose a new {option}")
    check_writable(path, option)


def check_replaceable(folder: str | Path, *, option: str, marker: str, kind: str, written: Sequence[str]) -> None:
    """`--overwrite`: `folder` may be replaced only when it is a `kind` survgen wrote (it holds `marker`) and
    holds nothing but what that output is made of (names matching the globs in `written`)."""
    folder = Path(folder)
    if not folder.exists() or (folder.is_dir() and not any(folder.iterdir())):
        check_writable(folder, option)
        return
    if not folder.is_dir():
        raise OutputPathError(f"{option} {folder}: is a file; --overwrite only replaces a {kind} survgen made")
    if not (folder / marker).is_file():
        raise OutputPathError(f"{option} {folder}: holds {_entries(folder)} but no {marker}, so it is not a {kind} "
                              f"survgen made; --overwrite leaves it as it is: choose a new {option}")
    foreign = [p for p in folder.iterdir() if not any(fnmatch.fnmatch(p.name, g) for g in written)]
    if foreign:
        names = ", ".join(sorted(p.name for p in foreign)[:3])
        raise OutputPathError(f"{option} {folder}: a {kind} survgen made, but it also holds {names}, which survgen "
                              "did not write; --overwrite leaves it as it is: move those out or choose a new "
                              f"{option}")


PNG_SOFTWARE = "survgen"  # the PNG text chunk that marks a picture as survgen's, so a re-run may replace it


def is_survgen_png(path: str | Path) -> bool:
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as image:
            return image.format == "PNG" and image.info.get("Software", "").startswith(PNG_SOFTWARE)
    except (OSError, UnidentifiedImageError):
        return False


class DamagedFileError(ValueError):
    """A weights or checkpoint file that cannot be read: truncated, emptied, or not what its name says."""


def save_safetensors(tensors: dict, path: str | Path) -> None:
    """Write `tensors` (moved to contiguous CPU memory, as safetensors needs) to `path`."""
    from safetensors.torch import save_file

    save_file({k: v.detach().cpu().contiguous() for k, v in tensors.items()}, str(path))


def load_safetensors(path: str | Path, fix: str) -> dict:
    """The tensors of `path`; a damaged file is reported by name with `fix`, the way out."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    path = Path(path)
    if not path.is_file():
        raise DamagedFileError(f"{path}: missing; {fix}")
    try:
        return load_file(path)
    except SafetensorError as e:
        raise DamagedFileError(f"{path}: damaged or truncated ({e}); {fix}") from None


def safetensors_problem(path: str | Path) -> str | None:
    """Why `path` is not a complete safetensors file (its header read, nothing loaded), or None."""
    from safetensors import SafetensorError, safe_open

    try:
        with safe_open(str(path), framework="pt"):
            return None
    except (SafetensorError, OSError) as e:
        return f"damaged or truncated ({e})"
