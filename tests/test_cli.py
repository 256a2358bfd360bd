"""The `survgen` command line: help, info, the three training commands end to end, resume, and user errors."""

import json
import os
from pathlib import Path

import pytest
from typer.testing import CliRunner

from survgen.cli.main import app
from survgen.runs import read_run

runner = CliRunner()


def invoke(*args):
    return runner.invoke(app, [str(a) for a in args], catch_exceptions=False)


def test_help_lists_every_command_with_a_description():
    result = invoke("--help")
    assert result.exit_code == 0
    for command in ("info", "train-vae", "train-spatial", "train-temporal", "data"):
        assert command in result.output


RESOLVED_LATER = {"image_size", "train_text_encoder", "attention_layers", "workers"}


@pytest.mark.parametrize("command, config", [("train-vae", "AutoencoderStageConfig"), ("train-spatial", "SpatialStageConfig"),
                                             ("train-temporal", "TemporalStageConfig"),
                                             ("train-classifier", "ClassifierStageConfig")])
def test_help_shows_every_training_option_with_the_default_a_run_gets(command, config):
    """Each flag that sets a config field defaults to that field's value, or says in words what it resolves to."""
    import typer.main

    from survgen.config import config_to_dict
    from survgen.training import configs

    defaults = config_to_dict(getattr(configs, config)())
    flat = {**defaults, **{k: v for k, v in defaults["train"].items()}, "workers": defaults["train"]["num_workers"],
            "val_every": defaults["train"]["sample_every"]}
    params = {p.name: p for p in typer.main.get_command(app).commands[command].params}
    set_by_flags = [name for name in params if name in flat]
    assert len(set_by_flags) >= 8, set_by_flags
    for name in set_by_flags:
        shown = params[name].default
        if flat[name] is None and name in RESOLVED_LATER:  # None in the config, resolved from the preset, the parent run, the machine
            assert shown is None and isinstance(params[name].show_default, str), name
        else:
            assert shown == flat[name] or list(shown) == flat[name], (name, shown, flat[name])


def test_a_bad_training_request_is_refused_before_torch_is_imported(tmp_path):
    """Options, config values and a missing --data are checked from the light stage configs; telling the error
    apart imports nothing either."""
    import subprocess
    import sys

    code = """if True:
        import sys
        from typer.testing import CliRunner
        from survgen.cli.main import app
        for args in (["train-temporal", "--arch", "unet"], ["train-vae"], ["train-classifier", "--balance", "x"]):
            result = CliRunner().invoke(app, args + ["--out", sys.argv[1]])
            print(result.exit_code, "torch" in sys.modules, result.output.strip().splitlines()[0])
    """
    lines = subprocess.run([sys.executable, "-c", code, str(tmp_path / "run")], capture_output=True, text=True,
                           check=True).stdout.splitlines()
    assert [line.split()[:3] for line in lines] == [["2", "False", "error:"]] * 3, lines
    assert "unknown --arch 'unet'" in lines[0] and "--data is required" in lines[1] and "balance" in lines[2]
    assert not (tmp_path / "run").exists()


def test_info_reports_versions_backends_and_parameter_counts():
    result = invoke("info", "--preset", "tiny", "--json")
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)
    assert report["survgen"] and report["torch"].startswith("2.")
    assert report["attention_backends"]["reference"] == "available"
    # survgen._C's fused kernel, chosen automatically; training on the CPU takes the reference (faster there)
    assert report["attention_backend"]["cpu inference"] == "cpu"
    assert report["attention_backend"]["cpu training"].startswith("reference (not cpu: its backward recomputes")
    assert "cuda" in report["attention_backends"]  # present, with the reason it is unavailable here
    counts = report["parameters"]
    assert counts["total"] == counts["spatial_unet"] + counts["vae"] + counts["text_encoder"] + counts["stage2_trainable"]


def test_info_counts_each_architecture_at_paper_scale():
    for arch, video_model in (("lvdm", 508_715_268), ("endora", 532_631_824)):
        result = invoke("info", "--arch", arch, "--preset", "sd15", "--json")
        assert result.exit_code == 0, result.output
        counts = json.loads(result.stdout)["parameters"]
        assert counts["arch"] == arch and counts[f"{arch}_video_model"] == counts["stage2_trainable"] == video_model
        assert counts["total"] == counts["vae"] + counts["text_encoder"] + video_model
        assert counts["paper_trainable"] in (548_000_000, 675_000_000)
    assert invoke("info", "--arch", "sora", "--preset", "tiny").exit_code == 2


@pytest.fixture(scope="module")
def cli_runs(synth_dataset, tmp_path_factory):
    root = tmp_path_factory.mktemp("cli")
    fast = ["--steps", 3, "--batch-size", 4, "--sample-every", 3, "--quiet"]
    assert invoke("train-vae", "--data", synth_dataset, "--out", root / "vae", *fast, "--score-frames", 2).exit_code == 0
    result = invoke("train-spatial", "--data", synth_dataset, "--vae", root / "vae", "--out", root / "spatial", *fast,
                    "--sample-steps", 2)
    assert result.exit_code == 0
    return root


def test_a_temporal_run_logs_plain_lines_and_resumes_quietly_from_its_folder_alone(synth_dataset, cli_runs):
    """Not a terminal (a log file): the CLI's reporter prints a line every 5 % of the steps. The resume names only
    the folder, which remembers --data, --spatial and --class; with --quiet no progress is printed."""
    out = cli_runs / "temporal"
    result = invoke("train-temporal", "--data", synth_dataset, "--spatial", cli_runs / "spatial", "--class", "G7",
                    "--out", out, "--steps", 2, "--batch-size", 2, "--sample-steps", 2, "--attention", "reference")
    assert result.exit_code == 0, result.output
    assert result.stdout.strip().endswith(str(out))
    lines = [line for line in result.stderr.splitlines() if "temporal: step" in line]
    assert [line.split()[2] for line in lines] == ["1/2", "2/2"] and all("loss" in line for line in lines)

    result = invoke("train-temporal", "--out", out, "--resume", "--steps", 3, "--quiet")
    assert result.exit_code == 0, result.output
    assert "temporal: step" not in result.stderr and "resuming" in result.stderr
    run = read_run(out, stage="temporal")
    assert run.options["train"]["steps"] == 3 and run.options["classes"] == ["G7"]
    assert [json.loads(l)["step"] for l in (out / "metrics.jsonl").read_text().splitlines()] == [2, 3]  # every 10th step and the last


@pytest.mark.parametrize("args, message", [
    (["train-temporal", "--class", "G9"], "G9"),
    (["train-temporal", "--class", "G7"], "--spatial is required"),
    (["train-spatial"], "holds a run already"),
    (["train-temporal", "--resume"], "nothing to resume"),
])
def test_user_errors_end_with_a_one_line_message_and_exit_code_2(synth_dataset, cli_runs, tmp_path, args, message):
    out = cli_runs / "spatial" if "holds a run" in message else tmp_path / "run"
    extra = ["--spatial", cli_runs / "spatial"] if "G9" in args else []
    result = runner.invoke(app, [*args, "--data", str(synth_dataset), "--out", str(out), *map(str, extra)])
    assert result.exit_code == 2, result.output
    output = " ".join(result.output.split())  # rich wraps lines at the terminal width
    assert message in output and "Traceback" not in output


def test_an_attention_backend_that_cannot_run_here_is_refused_before_any_work(tmp_path):
    result = invoke("generate", "--attention", "cuda", "--n", 1, "--out", tmp_path / "gen")
    assert result.exit_code == 2
    message = " ".join(result.output.split())  # rich wraps long lines
    assert "attention backend 'cuda' (named by --attention) cannot run" in message
    assert "cpu: available" in message and "reference: available" in message
    assert not (tmp_path / "gen").exists()
    result = invoke("generate", "--attention", "fast", "--n", 1, "--out", tmp_path / "gen")
    assert result.exit_code == 2 and "unknown attention backend 'fast'" in " ".join(result.output.split())


def test_debug_holds_for_its_own_invocation_only(tmp_path, monkeypatch):
    """--debug shows the traceback of that command; the next command in the same process reports errors plainly."""
    monkeypatch.delenv("SURVGEN_DEBUG", raising=False)
    missing = ["data", "stats", str(tmp_path / "missing")]
    with pytest.raises(Exception, match="missing"):  # debug: the error itself, for its traceback
        runner.invoke(app, ["--debug", *missing], catch_exceptions=False)
    result = runner.invoke(app, missing)
    assert result.exit_code == 2 and "missing" in result.output and "Traceback" not in result.output
    assert "SURVGEN_DEBUG" not in os.environ


@pytest.mark.parametrize("name", ["[/x]", "[bold]", "data[v2]"])
def test_error_messages_print_brackets_as_text(tmp_path, name):
    """A path with Rich markup in it is printed as given, never parsed (which would crash or eat `[v2]`)."""
    missing = tmp_path / name / "dataset"
    result = runner.invoke(app, ["train-spatial", "--data", str(missing), "--out", str(tmp_path / "run")])
    assert result.exit_code == 2, result.output
    assert str(missing) in "".join(result.output.split("\n")) and "MarkupError" not in result.output


def test_resuming_a_run_of_an_older_version_names_the_file_and_the_way_out(cli_runs, tmp_path):
    """A run.json with options this version no longer has (a frame stride, per-condition dropout)."""
    import shutil

    out = tmp_path / "old"
    shutil.copytree(cli_runs / "spatial", out)
    run = json.loads((out / "run.json").read_text())
    run["options"].update(frame_stride=1, class_dropout=0.1)
    (out / "run.json").write_text(json.dumps(run))
    result = runner.invoke(app, ["train-spatial", "--out", str(out), "--resume"])
    assert result.exit_code == 2, result.output
    message = " ".join(result.output.split())
    assert "run.json" in message and "class_dropout, frame_stride" in message
    assert "start a new run" in message and "Traceback" not in message


def test_run_json_holds_paths_relative_to_the_run_not_this_machines(synth_dataset, cli_runs):
    run = read_run(cli_runs / "spatial")
    assert not Path(run.data).is_absolute() and not Path(run.parent).is_absolute()
    assert run.data_path.resolve() == synth_dataset.resolve()
    assert run.parent_path.resolve() == (cli_runs / "vae").resolve()
