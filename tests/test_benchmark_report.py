"""benchmarks/report.py: pytest-benchmark JSON -> RESULTS.md, numbers read from the file."""

import importlib.util
import json
from pathlib import Path

spec = importlib.util.spec_from_file_location("bench_report", Path(__file__).parents[1] / "benchmarks" / "report.py")
report = importlib.util.module_from_spec(spec)
spec.loader.exec_module(report)


def bench(group, seconds, **info):
    return {"group": group, "name": f"test[{info.get('arch')}]", "extra_info": info,
            "stats": {"min": seconds, "mean": seconds * 1.1, "rounds": 3}}


def test_report_computes_ratios_measures_and_aims_from_the_json(tmp_path):
    e2e = "inference, end to end with each model's published sampling: tiny"
    data = {
        "machine_info": {"cpu": {"brand_raw": "Test CPU", "count": 2}},
        "commit_info": {"id": "abc123", "dirty": True},
        "datetime": "2026-11-26T01:00:00",
        "command": "python -m pytest benchmarks --benchmark-only",
        "gpu": None,
        "benchmarks": [
            bench(e2e, 2.0, arch="survgen", videos=2, role="baseline", label="survgen"),
            bench(e2e, 10.0, arch="endora", videos=2, label="endora-style"),
            bench(e2e, 30.0, arch="lvdm", videos=2, label="lvdm-style"),
            bench(e2e, 1.0, arch="survgen", videos=2, label="survgen, fast", variant="fast"),
            bench("stage-2 training step: tiny", 0.5, arch="survgen", steps=1, memory_mb=100.0, role="baseline",
                  memory_metric="CPU: test"),
            bench("stage-2 training step: tiny", 2.0, arch="lvdm", steps=1, memory_mb=400.0),
            bench("temporal attention forward x", 0.004, backend="reference"),
            bench("temporal attention forward x", 0.002, backend="cpu"),
        ],
    }
    path = tmp_path / "run.json"
    path.write_text(json.dumps(data))
    text = report.write_report([path], tmp_path / "RESULTS.md").read_text()
    assert "Test CPU, 2 cores, no GPU" in text and "abc123 (with uncommitted changes)" in text
    assert "`python -m pytest benchmarks --benchmark-only`" in text
    assert f"| {e2e} | endora-style | 5 s/video |  | 5.00× |" in text
    assert "| survgen vs endora-style | ≥ 4× | 5.00× | met |" in text
    assert "| survgen vs lvdm-style | ≥ 10× | 15.00× | met |" in text
    assert "| survgen, fast vs lvdm-style | ≥ 10× | 30.00× | met |" in text
    assert "| stage-2 training step: tiny | lvdm | 0.5 steps/s | 400 | 4.00× |" in text
    assert "| temporal attention forward x | cpu | 2.0 | 2.00× |" in text
    assert "Memory: CPU: test." in text


def test_counted_flops_are_compared_by_flops_not_by_counting_time(tmp_path):
    group = "cost at paper scale (sd15), published sampling: FLOPs counted on the meta device, not timed"
    data = {"benchmarks": [bench(group, 2.0, arch="survgen", tflop_per_video=200.0, role="baseline"),
                           bench(group, 1.0, arch="endora", tflop_per_video=500.0, label="endora-style")]}
    path = tmp_path / "flops.json"
    path.write_text(json.dumps(data))
    text = report.write_report([path], tmp_path / "RESULTS.md").read_text()
    assert f"| {group} | endora-style | 500 TFLOP/video |  | 2.50× |" in text
    assert "| survgen vs endora-style | ≥ 4× | 2.50× | not met |" in text  # counted FLOPs, not counting time


def test_an_aim_that_is_missed_says_so(tmp_path):
    e2e = "inference, end to end with each model's published sampling: sd15"
    data = {"benchmarks": [bench(e2e, 2.0, arch="survgen", videos=1, role="baseline"),
                           bench(e2e, 5.0, arch="lvdm", videos=1)]}
    path = tmp_path / "gpu.json"
    path.write_text(json.dumps(data))
    text = report.write_report([path], tmp_path / "RESULTS.md").read_text()
    assert "| survgen vs lvdm | ≥ 10× | 2.50× | not met |" in text
    assert "command: not recorded" in text
