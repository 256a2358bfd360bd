"""Reports and results a user keeps name paths as the user gave them, never a machine's absolute paths."""

import json
import re
import zlib
from pathlib import Path
from types import SimpleNamespace

import pytest

from survgen.evaluation.downstream import generator_saw_test
from survgen.io import PACKAGE, shown_path

DOCS = Path(__file__).resolve().parent.parent / "docs" / "evaluation"
# A home, work or temporary folder at the start of a path, an installed package, or a Windows drive.
MACHINE_PATH = re.compile(rb"(?<![\w.])/(?:work|tmp|root|home|Users|private|mnt|var/folders)/"
                          rb"|site-packages|dist-packages|(?<![\w])[A-Za-z]:\\")


def readable_text(path: Path) -> bytes:
    """A text file whole; of a PNG its text chunks (where matplotlib writes metadata); of other binaries nothing
    (their pixel bytes would match by chance)."""
    data = path.read_bytes()
    try:
        data.decode("utf-8")
        return data
    except UnicodeDecodeError:
        pass
    if not data.startswith(b"\x89PNG\r\n\x1a\n"):
        return b""
    chunks, at = [], 8
    while at + 8 <= len(data):
        length, kind = int.from_bytes(data[at:at + 4], "big"), data[at + 4:at + 8]
        if kind in (b"tEXt", b"iTXt", b"zTXt"):
            body = data[at + 8:at + 8 + length]
            chunks.append(zlib.decompress(body.split(b"\0", 1)[1][1:]) if kind == b"zTXt" else body)
        at += 12 + length
    return b"\n".join(chunks)


@pytest.mark.parametrize("path", sorted(p for p in DOCS.rglob("*") if p.is_file()),
                         ids=lambda p: p.relative_to(DOCS).as_posix())
def test_committed_evaluation_results_hold_no_machine_paths(path):
    found = [m.group().decode("latin-1") for m in MACHINE_PATH.finditer(readable_text(path))]
    assert not found, (f"{path.relative_to(DOCS.parent.parent)} names machine paths ({found[:3]}); write them as "
                       "the user typed them, relative to the repository root (or survgen/assets/default/...)")


def test_the_shipped_default_model_is_named_from_the_package():
    assert shown_path(PACKAGE / "assets" / "default" / "classifier") == "survgen/assets/default/classifier"
    assert shown_path("runs/classifier") == "runs/classifier"  # as given
    assert shown_path(Path("survgen/assets/default/temporal")) == "survgen/assets/default/temporal"


def test_the_warning_that_the_generator_saw_the_test_set_keeps_the_given_paths(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "data" / "test").mkdir(parents=True)
    (tmp_path / "generated").mkdir()
    (tmp_path / "generated" / "manifest.json").write_text(json.dumps({"request": {"model": "runs/temporal"}}))
    run = SimpleNamespace(folder=Path("runs/temporal"), data="../../data",
                          data_path=Path("runs/temporal") / "../../data")
    monkeypatch.setattr("survgen.runs.read_run", lambda folder: run)
    warning = generator_saw_test(Path("generated"), [Path("data/test/video_01.mp4")])
    assert warning is not None and "may have seen the test set" in warning
    assert "trained on data," in warning and str(tmp_path) not in warning
