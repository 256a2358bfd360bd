"""The shared training loop on a toy problem: learning, exact resumption, frozen weights, NaN, two processes."""

import json
import os
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from toy_training import ToyModel, run, toy_loss

from survgen.training.checkpoint import read_latest_checkpoint
from survgen.training.configs import TrainConfig
from survgen.training.loop import PlannedBatches, TrainingDivergedError, check_trainable, loader_workers
from tests.conftest import torchrun

HERE = Path(__file__).parent


def test_the_loss_falls_and_only_trainable_weights_move(tmp_path):
    before = ToyModel()
    model, result = run(tmp_path / "run", steps=40)
    assert result.step == 40 and len(result.losses) == 40
    assert sum(result.losses[-5:]) < 0.5 * sum(result.losses[:5]), result.losses
    assert torch.equal(model.features.weight, before.features.weight)
    assert not torch.equal(model.head.weight, before.head.weight)
    records = [json.loads(l) for l in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in records] == list(range(1, 41))
    assert (tmp_path / "run" / "loss.png").stat().st_size > 0


def test_a_killed_run_resumes_to_the_same_weights_as_an_uninterrupted_one(tmp_path):
    whole_model, whole = run(tmp_path / "whole", grad_accum=2)

    def killed_at_step_5(step, model):
        raise KeyboardInterrupt  # stands in for a kill after step 5 (the last checkpoint is step 3)

    with pytest.raises(KeyboardInterrupt):
        run(tmp_path / "parts", grad_accum=2, sample_every=5, on_sample=killed_at_step_5)
    assert read_latest_checkpoint(tmp_path / "parts" / "checkpoints").step == 3
    model, resumed = run(tmp_path / "parts", grad_accum=2, resume=True)

    assert resumed.losses == whole.losses  # steps 1-3 from the checkpoint, 4-8 recomputed
    assert torch.equal(model.head.weight, whole_model.head.weight)
    assert torch.equal(model.head.bias, whole_model.head.bias)
    ema_a = load_file(tmp_path / "whole" / "checkpoints" / "step-000008" / "ema.safetensors")
    ema_b = load_file(tmp_path / "parts" / "checkpoints" / "step-000008" / "ema.safetensors")
    assert all(torch.equal(ema_a[k], ema_b[k]) for k in ema_a)
    # the killed run's log lines after step 3 were replaced, not duplicated
    steps = [json.loads(l)["step"] for l in (tmp_path / "parts" / "metrics.jsonl").read_text().splitlines()]
    assert steps == list(range(1, 9))


def test_loader_workers_change_nothing_but_speed(tmp_path):
    """Two DataLoader processes feed the same batches in the same order as loading in the training process."""
    alone_model, alone = run(tmp_path / "alone", num_workers=0)
    fed_model, fed = run(tmp_path / "fed", num_workers=2)
    assert fed.losses == alone.losses and fed_model.seen == alone_model.seen
    assert torch.equal(fed_model.head.weight, alone_model.head.weight)


def test_loader_workers_default_to_the_cores_but_one():
    cores = len(os.sched_getaffinity(0))
    assert loader_workers(None) == max(0, min(8, cores - 1)) and loader_workers(0) == 0 and loader_workers(3) == 3
    with pytest.raises(ValueError, match="num_workers must be 0"):
        TrainConfig(num_workers=-1)


def test_checkpoints_hold_the_full_training_state_and_old_ones_are_pruned(tmp_path):
    run(tmp_path / "run", steps=9, checkpoint_every=2, keep_checkpoints=2)
    folders = sorted(p.name for p in (tmp_path / "run" / "checkpoints").glob("step-*"))
    assert folders == ["step-000008", "step-000009"]
    ckpt = read_latest_checkpoint(tmp_path / "run" / "checkpoints")
    assert ckpt.step == 9 and set(ckpt.model) == {"head.weight", "head.bias"}
    assert set(ckpt.ema) == set(ckpt.model)
    assert {"exp_avg", "exp_avg_sq", "step"} <= set(ckpt.optimizer["state"][0])
    assert len(ckpt.state["losses"]) == 9 and "cpu" in ckpt.rng
    assert not list((tmp_path / "run" / "checkpoints").glob(".*"))  # no temporary leftovers


def test_a_nan_loss_stops_with_a_clear_message_and_keeps_the_last_good_checkpoint(tmp_path):
    calls = []

    def nan_from_step_5(model, batch, generator):
        calls.append(1)
        loss = toy_loss(model, batch, generator)
        return loss * float("nan") if len(calls) >= 5 else loss

    with pytest.raises(TrainingDivergedError, match=r"step 5.*last good checkpoint is .*step-000003"):
        run(tmp_path / "run", loss_fn=nan_from_step_5)
    ckpt = read_latest_checkpoint(tmp_path / "run" / "checkpoints")
    assert ckpt.step == 3 and all(torch.isfinite(v).all() for v in ckpt.model.values())


def test_the_optimizer_only_gets_parameters_that_require_grad():
    model = ToyModel()
    with pytest.raises(ValueError, match="listed but frozen"):
        check_trainable(model, {"features.weight": model.features.weight, **model.trainable()})
    with pytest.raises(ValueError, match="unlisted but trainable"):
        check_trainable(model, {"head.bias": model.head.bias})


def test_bad_training_options_are_refused_with_every_problem_named():
    with pytest.raises(ValueError, match=r"steps must be at least 1.*ema_decay must be in \[0, 1\)"):
        TrainConfig(steps=0, ema_decay=1.0)
    with pytest.raises(ValueError, match="mixed_precision must be one of"):
        TrainConfig(mixed_precision="fp8")


def test_planned_batches_give_each_process_a_different_share_and_cover_every_epoch():
    ranks = [list(PlannedBatches(10, 3, seed=1, rank=r, world=2, start=0, count=5)) for r in range(2)]
    stream = [i for k in range(5) for r in range(2) for i in ranks[r][k]]
    assert sorted(stream[:10]) == list(range(10)) and sorted(stream[10:20]) == list(range(10))
    later = list(PlannedBatches(10, 3, seed=1, rank=1, world=2, start=3, count=2))
    assert later == ranks[1][3:]  # resuming at micro-batch 3 continues the same order


def test_two_gloo_processes_end_with_identical_weights(tmp_path):
    env = {**os.environ, "ACCELERATE_USE_CPU": "1", "OMP_NUM_THREADS": "1",
           "PYTHONPATH": os.pathsep.join([str(HERE), os.environ.get("PYTHONPATH", "")])}
    torchrun([str(HERE / "toy_training.py"), str(tmp_path / "run"), str(tmp_path)], env)
    a, b = (torch.load(tmp_path / f"rank{r}.pt") for r in range(2))
    for k in a["head"]:
        assert torch.equal(a["head"][k], b["head"][k]), k
    assert not torch.equal(a["head"]["weight"], ToyModel().head.weight)
    assert a["losses"] == b["losses"] and len(a["losses"]) == 5
    # the first epoch (37 samples, 8 per micro-batch over both ranks): no sample seen twice
    first_epoch = [i for k in range(4) for i in a["seen"][k] + b["seen"][k]]
    assert len(set(first_epoch)) == 32
