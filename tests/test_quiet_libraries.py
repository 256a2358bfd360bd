"""A command's stderr holds survgen's lines only; `--debug` shows the libraries' own bars, log lines and warnings.

The commands run in this process, where transformers and diffusers were imported before the command set its
variables: the harder case (a notebook, the test zygote), since a fresh `survgen` process reads them at import.
"""

from __future__ import annotations

import re
import warnings

from typer.testing import CliRunner

from survgen.cli.main import app
from survgen.console import libraries_quiet

# A tqdm bar ("Loading weights: 100%|████| 36/36"), a Python warning ("file.py:12: FutureWarning: ..."), or a
# line from transformers' or diffusers' loggers.
THIRD_PARTY = re.compile(r"\d+%\||\w+Warning: |^(transformers|diffusers)\b|it/s\]")


def third_party_lines(stderr: str) -> list[str]:
    return [line for line in re.split(r"[\r\n]", stderr) if THIRD_PARTY.search(line)]


def generate(out, *flags):
    return CliRunner().invoke(app, [*flags, "generate", "--class", "G7", "--n", "1", "--steps", "2",
                                    "--reject-topk", "0", "--out", str(out)])


def test_generate_prints_survgen_lines_only_and_debug_shows_the_libraries(tmp_path):
    # The control first: a library first imported by a quiet command keeps its bars off in that process.
    debug = generate(tmp_path / "debug", "--debug")
    assert debug.exit_code == 0, debug.output
    assert any("Loading weights" in line for line in third_party_lines(debug.stderr)), debug.stderr

    quiet = generate(tmp_path / "quiet")
    assert quiet.exit_code == 0, quiet.output
    assert "G7: 1/1 accepted" in quiet.stderr
    assert third_party_lines(quiet.stderr) == []


def test_a_training_command_prints_survgen_lines_only(synth_dataset, spatial_run, tmp_path):
    result = CliRunner().invoke(app, ["train-temporal", "--data", str(synth_dataset), "--spatial", str(spatial_run[0]),
                                      "--class", "G7", "--out", str(tmp_path / "temporal"), "--steps", "2",
                                      "--batch-size", "2", "--sample-steps", "2"])
    assert result.exit_code == 0, result.output
    assert "temporal: step 2/2" in result.stderr
    assert third_party_lines(result.stderr) == []


def test_library_warnings_are_off_and_survgen_s_own_still_show(monkeypatch):
    shown = []
    monkeypatch.setattr(warnings, "showwarning", lambda message, *rest, **kw: shown.append(str(message)))
    with libraries_quiet():
        warnings.warn_explicit("np.float is deprecated", DeprecationWarning, "numpy/core.py", 1, module="numpy.core")
        warnings.warn_explicit("old diffusers API", FutureWarning, "diffusers/x.py", 1, module="diffusers.models")
        warnings.warn_explicit("a survgen warning", UserWarning, "survgen/data/index.py", 1, module="survgen.data.index")
    with libraries_quiet(quiet=False):
        warnings.warn_explicit("shown with --debug", DeprecationWarning, "numpy/core.py", 2, module="numpy.core")
    assert shown == ["a survgen warning", "shown with --debug"]
