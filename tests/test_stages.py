"""Both training stages end to end on the tiny preset and the bundled synthetic data (small budgets)."""

import json

import pytest
import torch
from safetensors.torch import load_file

from survgen.kernels.backends import use_backend
from survgen.models.loading import load_video_model
from survgen.models.spatial import load_spatial
from survgen.runs import RunFolderError, read_run
from survgen.training.configs import SpatialStageConfig, TemporalStageConfig
from survgen.training.stage1 import train_spatial
from survgen.training.stage2 import train_temporal
from tests.conftest import fast_train


def test_autoencoder_run_exports_a_scaled_vae(vae_run):
    run = read_run(vae_run, stage="vae")
    cfg = json.loads((run.model_dir / "config.json").read_text())
    assert cfg["scaling_factor"] != 1.0 and cfg["scaling_factor"] > 0


def test_spatial_stage_reduces_the_loss_and_exports_a_model(spatial_run):
    out, result = spatial_run
    losses = result.losses
    assert len(losses) == 30
    assert sum(losses[-8:]) / 8 < sum(losses[:8]) / 8, losses
    spatial = load_spatial(out / "model")
    assert spatial.vae.config.scaling_factor != 1.0  # the trained VAE, not a fresh one
    assert (out / "samples" / "step-000030.png").exists()
    assert read_run(out, stage="spatial").extra["status"] == "done"


def test_temporal_stage_freezes_spatial_weights_and_trains_only_temporal(synth_dataset, spatial_run, tmp_path):
    spatial_out, _ = spatial_run
    out = tmp_path / "temporal"
    cfg = TemporalStageConfig(classes=["G7"], clip_length=8, sample_steps=2,
                              train=fast_train(steps=4, batch_size=2, sample_every=4))
    result = train_temporal(synth_dataset, spatial_out, out, cfg)
    assert len(result.losses) == 4 and all(torch.isfinite(torch.tensor(result.losses)))

    weights = load_file(out / "model" / "temporal.safetensors")
    assert weights and not any(k.startswith("unet.") for k in weights)
    assert any(k.startswith("class_embedding") for k in weights)
    # the spatial model on disk is untouched and the video model loads on top of it
    video_unet, spatial, run = load_video_model(out)
    original = load_spatial(spatial_out / "model")
    for (n, a), (_, b) in zip(spatial.unet.named_parameters(), original.unet.named_parameters()):
        assert torch.equal(a, b), n
    assert run.extra["classes"] == ["G7"]
    assert (out / "samples" / "step-000004" / "frames.png").exists()
    assert list((out / "samples" / "step-000004").glob("G7-*.gif"))


def test_temporal_resume_equals_uninterrupted(synth_dataset, spatial_run, tmp_path):
    spatial_out, _ = spatial_run

    def cfg(steps):
        return TemporalStageConfig(classes=["G1"], clip_length=8, sample_steps=2,
                                   train=fast_train(steps=steps, batch_size=2, checkpoint_every=2, ema_decay=0.9))

    whole = train_temporal(synth_dataset, spatial_out, tmp_path / "whole", cfg(4))
    train_temporal(synth_dataset, spatial_out, tmp_path / "parts", cfg(2))
    resumed = train_temporal(synth_dataset, spatial_out, tmp_path / "parts", cfg(4), resume=True)
    assert resumed.losses[-2:] == whole.losses[-2:]
    a = load_file(tmp_path / "whole" / "model" / "temporal.safetensors")
    b = load_file(tmp_path / "parts" / "model" / "temporal.safetensors")
    for k in a:
        assert torch.equal(a[k], b[k]), k


def test_stages_refuse_to_overwrite_and_check_the_run_stage(synth_dataset, spatial_run, vae_run, tmp_path):
    spatial_out, _ = spatial_run
    with pytest.raises(RunFolderError, match="holds a run already"):
        train_spatial(synth_dataset, spatial_out, SpatialStageConfig(vae=str(vae_run)))
    with pytest.raises(RunFolderError, match="'vae' run"):
        train_temporal(synth_dataset, vae_run, tmp_path / "t", TemporalStageConfig())


def test_temporal_stage_with_the_fused_kernel_trains_like_the_reference(synth_dataset, spatial_run, tmp_path):
    """Liger-style mini training: the same stage-2 steps through the fused CPU op and through the reference."""
    spatial_out, _ = spatial_run
    cfg = TemporalStageConfig(classes=["G7"], clip_length=8, sample_steps=2, train=fast_train(steps=4, batch_size=2))
    losses, weights = {}, {}
    for backend in ("reference", "cpu"):
        with use_backend(backend):
            result = train_temporal(synth_dataset, spatial_out, tmp_path / backend, cfg)
        losses[backend] = torch.tensor(result.losses)
        weights[backend] = load_file(tmp_path / backend / "model" / "temporal.safetensors")
    # float32 summation order is all that differs: losses agree to ~1e-7 relative. Weights are compared as
    # one vector: Adam divides each gradient by its own running magnitude, so single elements whose gradient
    # is ~0 (a bias summed over cancelling tokens) can move by a visible fraction of lr either way, while
    # the weights as a whole agree to ~1e-5 relative (measured 7e-6; identical runs of one backend: 0).
    torch.testing.assert_close(losses["cpu"], losses["reference"], rtol=1e-5, atol=1e-6)
    assert weights["cpu"].keys() == weights["reference"].keys()
    difference = torch.cat([(weights["cpu"][n] - weights["reference"][n]).flatten() for n in weights["cpu"]])
    reference = torch.cat([weights["reference"][n].flatten() for n in weights["cpu"]])
    assert difference.norm() / reference.norm() < 1e-4
    # ...and the two runs did go through different code (bitwise equal results would mean the op never ran).
    assert not all(torch.equal(weights["cpu"][n], weights["reference"][n]) for n in weights["cpu"])


def test_stage1_image_size_follows_the_preset_and_is_stored(spatial_run):
    """No --image-size: the tiny preset's 64 px, written into run.json for stage 2 to read."""
    run = read_run(spatial_run[0], stage="spatial")
    assert run.options["image_size"] == 64 and run.options["clip_fps"] == 10.0


def test_stage2_drops_prompt_and_class_together(synth_dataset, spatial_run, monkeypatch):
    """The unconditional branch sampling uses (no prompt, no class) is what dropout trains."""
    from survgen.models.loading import load_spatial_run
    from survgen.training import stage2

    spatial, _ = load_spatial_run(spatial_run[0])
    video_model = stage2.build_video_model("survgen", spatial, preset="tiny", num_classes=8, latent_size=16,
                                           temporal=stage2.TEMPORAL_PRESETS["tiny"])
    trainee = stage2.TemporalTrainee(video_model, spatial)
    prompts = spatial.encode_prompts(["a", "b", ""])
    seen = {}

    def record(sample, timesteps, text, class_labels, **_):
        seen["text"], seen["labels"] = text, class_labels
        return torch.zeros_like(sample)

    monkeypatch.setattr(video_model, "forward", record)
    cfg = TemporalStageConfig(condition_dropout=0.5)
    class_ids = torch.ones(64, dtype=torch.long)
    stage2.stage2_loss(trainee, spatial, prompts, {"pixels": torch.zeros(64, 2, 3, 64, 64), "class_id": class_ids},
                       cfg, torch.Generator().manual_seed(0))
    no_prompt = (seen["text"] == prompts[-1]).flatten(1).all(1)
    no_class = seen["labels"] == video_model.null_class
    assert torch.equal(no_prompt, no_class) and 10 < int(no_class.sum()) < 54


def test_stage2_refuses_a_raw_epsilon_prediction_folder(synth_dataset, spatial_run, tmp_path):
    """A raw SD 1.5 folder predicts epsilon: stage 2 says so and names the stage-1 command instead."""
    import shutil

    from survgen.models.spatial import ModelLoadError

    raw = tmp_path / "sd15-like"
    shutil.copytree(spatial_run[0] / "model", raw)
    config = raw / "scheduler" / "scheduler_config.json"
    config.write_text(json.dumps({**json.loads(config.read_text()), "prediction_type": "epsilon"}))
    with pytest.raises(ModelLoadError, match="predicts epsilon.*train-spatial --preset sd15"):
        train_temporal(synth_dataset, raw, tmp_path / "t", TemporalStageConfig())
    assert not (tmp_path / "t").exists()
    # the stage-1 export itself is v-prediction and is accepted as --spatial
    train_temporal(synth_dataset, spatial_run[0] / "model", tmp_path / "ok",
                   TemporalStageConfig(clip_length=8, sample_steps=2, train=fast_train(steps=1, batch_size=1)))
