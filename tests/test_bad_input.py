"""Careless and unlucky input against the real command line, each command its own process.

Every case asserts the exit code, a message naming the problem, no traceback,
and the files on disk before and after: nothing survgen did not write is
changed, nothing is left half-written. Commands are forked from a process that
has imported survgen once (tests/cli_zygote.py), so each is a fresh process that
does not spend seconds importing torch; the last test runs `python -m survgen`
itself.
"""

import hashlib
import json
import os
import shutil
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from survgen.data.synth import synthesize_dataset
from survgen.generation.default import default_runs

MARKUP = "[v2] [bold] [/x]"  # a folder name Rich would read as markup


def _environment() -> dict:
    env = {**os.environ, "COLUMNS": "300"}
    env.pop("SURVGEN_DEBUG", None)
    return env


@pytest.fixture(scope="module")
def zygote():
    process = subprocess.Popen([sys.executable, str(Path(__file__).with_name("cli_zygote.py"))], text=True,
                               stdin=subprocess.PIPE, stdout=subprocess.PIPE, env=_environment())
    yield process
    process.stdin.close()
    process.wait(timeout=60)


@pytest.fixture(autouse=True)
def _commands(zygote, tmp_path):
    global _zygote, _logs
    _zygote, _logs = zygote, tmp_path / "logs"
    _logs.mkdir()


def survgen_each(*commands: list) -> list[subprocess.CompletedProcess]:
    """Run each command (a list of arguments) as its own process, all at once; their results in order."""
    requests = []
    for args in commands:
        k = len(list(_logs.iterdir())) // 2 + len(requests)
        requests.append({"args": [str(a) for a in args], "cwd": str(_logs), "stdout": str(_logs / f"{k}.out"),
                         "stderr": str(_logs / f"{k}.err")})
    _zygote.stdin.write(json.dumps(requests) + "\n")
    _zygote.stdin.flush()
    codes = json.loads(_zygote.stdout.readline())
    return [subprocess.CompletedProcess(r["args"], code, Path(r["stdout"]).read_text(), Path(r["stderr"]).read_text())
            for r, code in zip(requests, codes)]


def survgen(*args) -> subprocess.CompletedProcess:
    return survgen_each(list(args))[0]


def snapshot(root: Path) -> dict[str, str]:
    """Every file under `root` with a hash of its bytes, and every folder."""
    files = {}
    for path in sorted(root.rglob("*")):
        rel = path.relative_to(root).as_posix()
        files[rel] = hashlib.sha1(path.read_bytes()).hexdigest() if path.is_file() else "folder"
    return files


def refused(result: subprocess.CompletedProcess, *named: str) -> str:
    """Exit 2, one message naming each of `named`, no traceback; returns the message."""
    message = result.stderr
    assert result.returncode == 2, (result.returncode, result.stdout, result.stderr)
    assert "Traceback" not in message and "This is a survgen bug" not in message, message
    errors = [line for line in message.splitlines() if line.startswith("error: ")]
    assert len(errors) == 1 or "Usage:" in message, message
    for text in named:
        assert text in message, (text, message)
    assert result.stdout == "", result.stdout  # nothing for a script to mistake for a result
    return message


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    """A small dataset, a finished tiny autoencoder run with two checkpoints, and the shipped runs, all copies."""
    from survgen.training.autoencoder import train_autoencoder
    from survgen.training.configs import AutoencoderStageConfig, TrainConfig

    root = tmp_path_factory.mktemp("bad-input")
    data = synthesize_dataset(root / "data", num_videos=4, frames_per_video=90, size=32)
    train = TrainConfig(steps=2, batch_size=2, checkpoint_every=1, sample_every=2, ema_decay=0.0, num_workers=0)
    train_autoencoder(data, root / "vae", AutoencoderStageConfig(image_size=32, score_frames=2, train=train))
    temporal, classifier = default_runs()
    shutil.copytree(temporal.parent, root / "default")  # spatial, temporal and classifier, with relative links
    return root


@pytest.fixture
def here(world, tmp_path):
    """A scratch copy of the world for one case (its files may be damaged freely)."""
    shutil.copytree(world, tmp_path / "w")
    return tmp_path / "w"


# ---------------------------------------------------------------- data loss
def test_plot_never_overwrites_a_file_survgen_did_not_write(here):
    labels = here / "data" / "video_01" / "action_discrete.txt"
    foreign = here / "figure.png"
    shutil.copy(here / "vae" / "samples" / "step-000002.png", foreign)
    foreign.write_bytes(foreign.read_bytes().replace(b"survgen", b"someone"))  # a PNG of another program
    before = snapshot(here)
    text_file, other_png, folder = survgen_each(*(["data", "stats", here / "data", "--plot", plot]
                                                  for plot in (labels, foreign, here / "data")))
    refused(text_file, "--plot", "action_discrete.txt", ".png")
    refused(other_png, "figure.png", "did not write")
    refused(folder, "is a folder")
    assert snapshot(here) == before
    own = here / "balance.png"
    for _ in range(2):  # its own plot, replaced by a re-run
        done = survgen("data", "stats", here / "data", "--plot", own)
        assert done.returncode == 0 and own.exists(), done.stderr


def test_overwrite_removes_only_a_dataset_survgen_made(here):
    thesis = here / "thesis"
    (thesis / "code").mkdir(parents=True)
    (thesis / "thesis.tex").write_text("\\chapter{Results}")
    before = snapshot(here)
    refused(survgen("data", "synth", "--out", thesis, "--overwrite", "--num-videos", 2), "thesis.tex",
            "not a synthetic dataset")
    (here / "data" / "notes.txt").write_text("mine")  # a dataset survgen made, with a user's file added
    refused(survgen("data", "synth", "--out", here / "data", "--overwrite", "--num-videos", 2), "notes.txt")
    assert snapshot(here) == {**before, "data/notes.txt": snapshot(here)["data/notes.txt"]}


def test_resume_of_a_finished_run_without_checkpoints_never_trains_over_it(here):
    shutil.rmtree(here / "vae" / "checkpoints")
    before = snapshot(here)
    refused(survgen("train-vae", "--out", here / "vae", "--resume"), "no checkpoint to resume from",
            "start a new run")
    assert snapshot(here) == before


def test_resume_with_another_request_names_each_difference(here):
    from survgen.config import config_to_dict
    from survgen.training.configs import TemporalStageConfig

    temporal = here / "default" / "temporal"  # as a G7 run of this version, on the test data
    run = json.loads((temporal / "run.json").read_text())
    run.update(options=config_to_dict(TemporalStageConfig(classes=["G7"])), classes=["G7"], data=str(here / "data"))
    (temporal / "run.json").write_text(json.dumps(run))
    other = here / "other-data"
    shutil.copytree(here / "data", other)
    before = snapshot(here)
    classes, vae = survgen_each(
        ["train-temporal", "--out", temporal, "--resume", "--class", "G1"],
        ["train-vae", "--out", here / "vae", "--resume", "--data", other, "--image-size", 64, "--seed", 3])
    message = refused(classes, "--class G1 (the run's is G7)", "start a new run")
    assert "--resume continues the run as it was started" in message
    refused(vae, f"--data {other}", "--image-size 64 (the run's is 32)", "--seed 3 (the run's is 0)")
    assert snapshot(here) == before


def test_resume_may_extend_steps_and_says_so(here):
    done = survgen("train-vae", "--out", here / "vae", "--resume", "--steps", 3, "--workers", 0, "--quiet")
    assert done.returncode == 0, done.stderr
    assert "continuing with --steps 3 (the run's is 2)" in done.stderr
    assert json.loads((here / "vae" / "run.json").read_text())["options"]["train"]["steps"] == 3


# ---------------------------------------------------------------- messages are text, not markup
COMMANDS_GIVEN_A_MISSING_PATH = [
    ["data", "stats", "{missing}"],
    ["data", "synth", "--out", "{file}"],
    ["data", "cache", "--data", "{missing}", "--vae", "{vae}", "--out", "{new}"],
    ["train-vae", "--data", "{missing}", "--out", "{new}"],
    ["train-spatial", "--data", "{data}", "--vae", "{missing}", "--out", "{new}"],
    ["train-temporal", "--data", "{data}", "--spatial", "{missing}", "--class", "G7", "--out", "{new}"],
    ["train-classifier", "--data", "{missing}", "--out", "{new}"],
    ["classify", "--model", "{classifier}", "{missing}"],
    ["generate", "--model", "{missing}", "--out", "{new}", "--reject-topk", "0"],
    ["evaluate", "quality", "--real", "{missing}", "--fake", "{data}", "--report", "{new}"],
    ["evaluate", "downstream", "--real", "{missing}", "--synthetic", "{data}", "--report", "{new}"],
]


def test_paths_print_as_given_in_every_command(here):
    odd = here / MARKUP
    odd.mkdir(parents=True)  # "[/x]" makes a folder "[" holding "x]"
    (odd / "file").write_text("x")
    names = {"missing": odd / "missing", "file": odd / "file", "new": odd / "new", "data": here / "data",
             "vae": here / "vae", "classifier": here / "default" / "classifier"}
    before = snapshot(here)
    commands = [[a.format(**names) if a.startswith("{") else a for a in c] for c in COMMANDS_GIVEN_A_MISSING_PATH]
    for command, result in zip(COMMANDS_GIVEN_A_MISSING_PATH, survgen_each(*commands)):
        named = str(odd / "file") if "{file}" in command else str(odd / "missing")
        assert "MarkupError" not in refused(result, named), command
    assert snapshot(here) == before


def test_a_label_line_with_brackets_prints_as_text(here):
    labels = here / "data" / "video_02" / "action_discrete.txt"
    labels.write_text(labels.read_text() + "[/x],[bold]\n")
    done = survgen("data", "stats", here / "data")
    assert done.returncode == 0 and "MarkupError" not in done.stderr, done.stderr
    assert "[/x],[bold]" in done.stderr


# ---------------------------------------------------------------- files and folders where they should not be
def test_outputs_that_are_files_folders_or_unwritable_are_refused_before_any_work(here):
    a_file = here / "a_file"
    a_file.write_text("mine")
    before = snapshot(here)
    results = survgen_each(
        ["train-vae", "--data", here / "data", "--out", a_file],
        ["train-vae", "--data", here / "data", "--out", a_file / "run"],
        ["evaluate", "quality", "--real", here / "data", "--fake", here / "data", "--report", a_file],
        ["data", "cache", "--data", here / "data", "--vae", here / "vae", "--out", a_file],
        ["generate", "--out", a_file, "--n", 1],
        ["data", "synth", "--out", "/proc/survgen-cannot-write"])
    for result in results[:-1]:
        refused(result, str(a_file), "is a file")
    refused(results[-1], "/proc/survgen-cannot-write", "cannot write")
    assert snapshot(here) == before


def test_a_truncated_weights_file_is_named(here):
    weights = here / "default" / "classifier" / "model" / "classifier.safetensors"
    weights.write_bytes(weights.read_bytes()[:100])
    before = snapshot(here)
    refused(survgen("classify", "--model", here / "default" / "classifier", here / "data" / "video_01" / "video_left.avi"),
            str(weights), "damaged or truncated")
    assert snapshot(here) == before


def test_a_damaged_checkpoint_is_named_with_the_step_to_fall_back_to_and_nothing_is_rewritten(here):
    latest = here / "vae" / "checkpoints" / "step-000002" / "model.safetensors"
    latest.write_bytes(latest.read_bytes()[:1000])
    before = snapshot(here)
    refused(survgen("train-vae", "--out", here / "vae", "--resume", "--steps", 4),
            "step-000002", "model.safetensors", "damaged or truncated", "write step-000001 into")
    assert snapshot(here) == before  # run.json keeps its status and history


def test_an_edited_run_json_with_a_wrong_type_is_named(here):
    run_json = here / "vae" / "run.json"
    run = json.loads(run_json.read_text())
    run["options"]["train"]["steps"] = "many"
    run_json.write_text(json.dumps(run))
    refused(survgen("train-vae", "--out", here / "vae", "--resume"), "run.json", "steps must be int", "'many'")
    run["vocabulary"] = 3
    run_json.write_text(json.dumps(run))
    refused(survgen("train-vae", "--out", here / "vae", "--resume"), "run.json", "malformed", "vocabulary must be")


# ---------------------------------------------------------------- half-done state
@pytest.mark.parametrize("size, named", [(4, "--image-size"), (63, "--image-size 63")])
def test_a_refused_option_leaves_no_trace(here, size, named):
    before = snapshot(here)
    refused(survgen("train-vae", "--data", here / "data", "--out", here / "new", "--image-size", size,
                    "--workers", 0), named)
    assert snapshot(here) == before and not (here / "new").exists()


# ---------------------------------------------------------------- silent wrong results
def test_options_that_would_be_ignored_are_refused():
    arch, batch = survgen_each(["info", "--arch", "lvdm"], ["info", "--batch-size", 4, "--preset", "tiny"])
    refused(arch, "--arch lvdm", "--preset")
    refused(batch, "--batch-size", "--memory")


def test_bad_step_savings_are_refused_before_any_work(here):
    before = snapshot(here)
    words, order, cache = survgen_each(
        ["generate", "--out", here / "g1", "--guidance-interval", "early"],
        ["generate", "--out", here / "g2", "--guidance-interval", "700,100"],
        ["generate", "--out", here / "g3", "--cache-interval", 0])
    refused(words, "--guidance-interval 'early'", "LO,HI")
    refused(order, "--guidance-interval", "LO <= HI")
    refused(cache, "--cache-interval", "between 1")
    assert snapshot(here) == before


def test_a_dataset_is_never_read_with_another_class_vocabulary(here):
    other = here / "relabelled"
    shutil.copytree(here / "data", other)
    (other / "classes.json").write_text(json.dumps({"names": [f"step {i}" for i in range(8)]}))
    refused(survgen("evaluate", "quality", "--real", other, "--fake", here / "data", "--report", here / "q"),
            str(other / "classes.json"), "step 0")
    assert not (here / "q").exists()


# ---------------------------------------------------------------- output that scripts can use
def test_results_go_to_stdout_and_every_reporting_command_has_json(here):
    video = here / "data" / "video_01" / "video_left.avi"
    commands = [["data", "stats", here / "data"], ["data", "stats", here / "data", "--json"], ["info", "--json"],
                ["classify", "--model", here / "default" / "classifier", video, "--json"]]
    with ThreadPoolExecutor(max_workers=2) as pool:  # `python -m survgen` itself, two at a time
        table, stats, info, classify = pool.map(
            lambda args: subprocess.run([sys.executable, "-m", "survgen", *map(str, args)], capture_output=True,
                                        text=True, env=_environment(), timeout=600), commands)
    assert table.returncode == 0 and "labelled frames" in table.stdout and "G7" in table.stdout
    assert {row["code"] for row in json.loads(stats.stdout)["classes"]} >= {"G0", "G7"}
    assert json.loads(info.stdout)["survgen"]
    classify = json.loads(classify.stdout)
    assert classify[0]["video"] == str(video) and len(classify[0]["topk"]) == 3


def test_debug_shows_the_traceback_a_user_error_hides(here):
    plain, debug = survgen_each(["data", "stats", here / "missing"], ["--debug", "data", "stats", here / "missing"])
    refused(plain, str(here / "missing"))
    assert debug.returncode == 1 and "Traceback" in debug.stderr and "DatasetError" in debug.stderr
