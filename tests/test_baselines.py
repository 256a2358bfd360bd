"""The LVDM-style and Endora-style baselines: built from diffusers' models, class conditioned,
trainable whole through stage 2, sampleable through `generate`, counted against the paper."""

import json

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from survgen.models.baselines import BaselineConfig, build_baseline
from survgen.models.counts import PAPER_TRAINABLE, preset_parameter_counts
from survgen.models.dino_prior import DinoPrior, DinoPriorError, load_dino, pearson
from survgen.models.video_models import video_model_config, video_model_from_config
from survgen.presets import ARCHS, BASELINES
from tests.conftest import fast_train


def tiny(arch, **kw):
    torch.manual_seed(0)
    config = dict(arch=arch, preset="tiny", num_classes=8, latent_channels=4, latent_size=8, text_dim=64, max_frames=8)
    return build_baseline(BaselineConfig(**{**config, **kw}))


def inputs(b=2, f=5, size=8, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(b, 4, f, size, size, generator=g), torch.tensor([3, 700])[:b], torch.randn(b, 7, 64, generator=g)


def test_endora_forward_is_lattes_plus_the_class_embedding():
    model = tiny("endora").eval()
    x, t, text = inputs(f=8)  # Latte's own forward needs exactly video_length frames
    with torch.no_grad():
        torch.nn.init.zeros_(model.class_embedding.weight)
        ours = model(x, t, text, torch.tensor([0, 8]))
        lattes = model.transformer(x, t, text).sample
        assert torch.allclose(ours, lattes, atol=1e-6)
        torch.nn.init.normal_(model.class_embedding.weight)
        a, b = model(x, t, text, torch.tensor([0, 0])), model(x, t, text, torch.tensor([1, 1]))
    assert (a - b).abs().max() > 1e-3  # the class changes the prediction


def test_lvdm_class_enters_through_the_unets_timestep_condition():
    model = tiny("lvdm").eval()
    x, t, text = inputs()
    labels = torch.tensor([2, 8])
    with torch.no_grad():
        ours = model(x, t, text, labels)
        direct = model.unet(x, t, text, timestep_cond=model.class_embedding(labels)).sample
        other = model(x, t, text, torch.tensor([5, 8]))
    assert torch.equal(ours, direct)
    assert (ours[0] - other[0]).abs().max() > 1e-4 and torch.equal(ours[1], other[1])


@pytest.mark.parametrize("arch", BASELINES)
def test_baselines_train_whole_and_a_few_steps_fit_one_batch(arch):
    model = tiny(arch)
    x, t, text = inputs()
    target = torch.randn_like(x)
    labels = torch.tensor([1, 2])
    loss = (model(x, t, text, labels) - target).square().mean()
    loss.backward()
    trainable = model.trainable_parameters()
    assert set(trainable) == {n for n, _ in model.named_parameters()}
    assert all(p.grad is not None for p in trainable.values())
    opt = torch.optim.Adam(trainable.values(), lr=1e-3)
    first = loss.item()
    for _ in range(8):
        opt.zero_grad()
        loss = (model(x, t, text, labels) - target).square().mean()
        loss.backward()
        opt.step()
    assert loss.item() < first


def test_gradient_checkpointing_gives_the_same_gradients():
    def grads(checkpointing):
        model = tiny("endora")
        model.enable_gradient_checkpointing(checkpointing)
        x, t, text = inputs(f=3)
        model(x, t, text, torch.tensor([1, 8])).square().mean().backward()
        return {n: p.grad for n, p in model.named_parameters()}

    plain, checkpointed = grads(False), grads(True)
    for name in plain:
        assert torch.allclose(plain[name], checkpointed[name], atol=1e-5, rtol=1e-4), name
    with pytest.raises(ValueError, match="not available for --arch lvdm"):  # diffusers' 3D U-Net has none
        tiny("lvdm").enable_gradient_checkpointing(True)


@pytest.mark.parametrize("arch", BASELINES)
def test_baselines_refuse_bad_input(arch):
    model = tiny(arch)
    x, t, text = inputs()
    with pytest.raises(ValueError, match="one per video"):
        model(x, t, text, torch.tensor([1]))
    with pytest.raises(ValueError, match="class labels must be in 0..8"):
        model(x, t, text, torch.tensor([1, 9]))
    with pytest.raises(ValueError, match="expects latents"):
        model(x[:, :3], t, text, torch.tensor([1, 2]))
    with pytest.raises(ValueError, match="timesteps for 2 videos"):
        model(x, torch.tensor([1, 2, 3]), text, torch.tensor([1, 2]))


def test_endora_refuses_more_frames_than_built_for_and_odd_latent_sizes():
    model = tiny("endora")
    x, t, text = inputs(f=9)
    with pytest.raises(ValueError, match="at most 8 frames"):
        model(x, t, text, torch.tensor([1, 2]))
    with pytest.raises(ValueError, match="multiple of the patch size"):
        tiny("endora", latent_size=9)
    with pytest.raises(ValueError, match="unknown baseline"):
        BaselineConfig(arch="sora", preset="tiny")


@pytest.mark.parametrize("arch", BASELINES)
def test_a_saved_config_rebuilds_the_same_model(arch):
    model = tiny(arch)
    config = json.loads(json.dumps(video_model_config(model)))
    assert config["arch"] == arch
    rebuilt = video_model_from_config(config, spatial=None)
    rebuilt.load_state_dict(model.state_dict())
    x, t, text = inputs()
    with torch.no_grad():
        assert torch.equal(model(x, t, text, torch.tensor([1, 2])), rebuilt(x, t, text, torch.tensor([1, 2])))


# ------------------------------------------------------------------ parameter counts
@pytest.mark.parametrize("arch", ARCHS)
def test_paper_presets_are_within_the_stated_tolerance_of_table_1(arch):
    counts = preset_parameter_counts("sd15", arch)  # meta device: nothing allocated
    paper, tolerance, _ = PAPER_TRAINABLE[arch]
    assert counts["paper_trainable"] == paper
    assert abs(counts["stage2_trainable"] / paper - 1) <= tolerance, counts


def test_endora_count_differs_from_the_paper_exactly_by_the_stated_reasons():
    counts = preset_parameter_counts("sd15", "endora")
    d = 1152
    per_block_adaln = 28 * 6 * d * d  # Endora/DiT: one adaLN modulation per block; diffusers' Latte: one shared
    cross_attention = 14 * (4 * d * d + 4 * d)  # q, k, v, out (with biases) of the 14 spatial blocks
    estimate = counts["stage2_trainable"] + per_block_adaln - cross_attention
    assert abs(estimate / 675e6 - 1) < 0.02


def test_tiny_baselines_are_about_the_size_of_the_tiny_survgen_video_model():
    survgen = preset_parameter_counts("tiny", "survgen")
    video_model = survgen["spatial_unet"] + survgen["stage2_trainable"]
    for arch in BASELINES:
        trainable = preset_parameter_counts("tiny", arch)["stage2_trainable"]
        assert 0.5 < trainable / video_model < 2, (arch, trainable, video_model)


def test_sampling_flops_follow_steps_and_frames_and_the_published_sampling():
    from survgen.diffusion.cost import sampling_flops

    base = sampling_flops("survgen", "tiny", steps=10, frames=8)
    assert base["flops_per_video"] == 10 * base["flops_per_step"] + base["flops_decode"]
    twice = sampling_flops("survgen", "tiny", steps=10, frames=16)
    assert 1.9 < twice["flops_per_step"] / base["flops_per_step"] < 2.3  # per-frame work plus f² attention
    assert twice["flops_decode"] == 2 * base["flops_decode"]
    endora = sampling_flops("endora", "tiny")  # Endora's own: DDPM 250 steps at half the frame size
    assert (endora["sampler"], endora["steps"], endora["image_size"]) == ("ddpm", 250, 32)
    # a transformer on 4×4 tokens of 2×2 patches: per step, about 2·params FLOPs per token and branch
    params = preset_parameter_counts("tiny", "endora")["stage2_trainable"]
    tokens = 2 * 16 * (32 // 4 // 2) ** 2
    assert 0.5 < endora["flops_per_step"] / (2 * params * tokens) < 2


# ------------------------------------------------------------------ Endora's DINO prior
@pytest.fixture(scope="module")
def tiny_dino(tmp_path_factory):
    from transformers import ViTConfig, ViTModel

    torch.manual_seed(0)
    folder = tmp_path_factory.mktemp("dino") / "dino-tiny"
    ViTModel(ViTConfig(hidden_size=16, num_hidden_layers=12, num_attention_heads=2, intermediate_size=32,
                       image_size=32, patch_size=4), add_pooling_layer=False).save_pretrained(folder)
    return folder


def test_pearson_matches_numpy():
    g = torch.Generator().manual_seed(1)
    a, b = torch.randn(3, 5, 7, generator=g), torch.randn(3, 5, 7, generator=g)
    b[1] = 2 * a[1] + 1
    expected = [np.corrcoef(a[i].flatten().numpy(), b[i].flatten().numpy())[0, 1] for i in range(3)]
    assert np.allclose(pearson(a, b).numpy(), expected, atol=1e-6)
    assert pearson(a, b)[1] == pytest.approx(1.0, abs=1e-6)


def test_dino_prior_loss_reads_four_layers_and_trains_the_projections_and_endora(tiny_dino):
    model = tiny("endora")  # 4 spatial blocks, 4×4 tokens
    prior = DinoPrior.from_folder(tiny_dino, model)
    assert prior.block_indices == (0, 1, 2, 3)  # DINO layers 2, 5, 8, 11 of 12 at the same relative depth
    x, t, text = inputs(f=3)
    frames = torch.rand(2 * 3, 3, 32, 32) * 2 - 1
    maps = prior.dino_maps(frames)
    assert [m.shape for m in maps] == [(6, 16, 8, 8)] * 4  # twice Endora's grid, before the stride-2 conv
    _, features = model(x, t, text, torch.tensor([1, 2]), features_of=prior.block_indices)
    loss = prior.loss(features, frames)
    assert 0 <= loss.item() <= 2
    loss.backward()
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in prior.trainable_parameters().values())
    assert model.transformer.transformer_blocks[0].attn1.to_q.weight.grad.abs().sum() > 0
    assert not any(p.requires_grad for p in prior.dino.parameters())


def test_dino_prior_refuses_what_is_not_a_local_dino(tmp_path, tiny_dino):
    from transformers import CLIPTextConfig, CLIPTextModel

    with pytest.raises(DinoPriorError, match="no config.json"):
        load_dino(tmp_path / "missing")
    CLIPTextModel(CLIPTextConfig(hidden_size=8, intermediate_size=8, num_hidden_layers=1, num_attention_heads=2)
                  ).save_pretrained(tmp_path / "clip")
    with pytest.raises(DinoPriorError, match="not a DINO ViT"):
        load_dino(tmp_path / "clip")
    with pytest.raises(DinoPriorError, match="use it with --arch endora"):
        DinoPrior(load_dino(tiny_dino), tiny("lvdm"))


# ------------------------------------------------------------------ end to end: train-temporal --arch, generate
@pytest.mark.parametrize("arch", BASELINES)
def test_train_temporal_arch_trains_the_whole_baseline_and_generate_samples_it(arch, synth_dataset, spatial_run,
                                                                              tmp_path, tiny_dino):
    from survgen.generation.run import GenerationConfig, generate
    from survgen.models.loading import load_video_model, video_model_arch
    from survgen.training.configs import TemporalStageConfig
    from survgen.training.stage2 import train_temporal

    out = tmp_path / arch
    cfg = TemporalStageConfig(arch=arch, classes=["G7"], clip_length=8, sample_steps=2,
                              prior_dino=str(tiny_dino) if arch == "endora" else None,
                              train=fast_train(steps=3, batch_size=2, sample_every=3))
    result = train_temporal(synth_dataset, spatial_run[0], out, cfg)
    assert len(result.losses) == 3 and all(np.isfinite(result.losses))
    weights = load_file(out / "model" / "temporal.safetensors")
    model, spatial, run = load_video_model(out)
    assert video_model_arch(out) == arch and run.extra["arch"] == arch
    assert set(weights) == set(model.trainable_parameters())  # the whole model, nothing of the prior
    assert (out / "samples" / "step-000003" / "frames.png").exists()

    manifest = generate(out, tmp_path / "gen", GenerationConfig(classes=["G7"], n=2, reject_topk=0, steps=2,
                                                                num_frames=4, sampler="ddpm"))
    assert manifest["model"]["arch"] == arch
    assert len([v for v in manifest["videos"] if v["accepted"]]) == 2
    assert all((tmp_path / "gen" / v["file"]).exists() for v in manifest["videos"])


def test_stage2_refuses_options_of_another_architecture():
    """Refused when the stage config is made, so before anything loads or is written."""
    from survgen.training.configs import TemporalStageConfig

    for options, message in [(dict(arch="lvdm", attention_layers=2), "shape survgen's temporal blocks"),
                             (dict(prior_dino="dino"), "use it with --arch endora"),
                             (dict(arch="unet"), "unknown --arch")]:
        with pytest.raises(ValueError, match=message):
            TemporalStageConfig(**options)


def test_cli_arch_options_and_their_refusals(synth_dataset, spatial_run, temporal_run, tmp_path):
    from tests.test_cli import invoke

    result = invoke("generate", "--arch", "lvdm", "--out", tmp_path / "g")
    assert result.exit_code == 2 and "no lvdm model ships with survgen" in " ".join(result.output.split())
    result = invoke("generate", "--model", temporal_run, "--arch", "endora", "--reject-topk", "0",
                    "--out", tmp_path / "g")
    assert result.exit_code == 2 and "a survgen model, not endora" in " ".join(result.output.split())
    result = invoke("train-temporal", "--data", synth_dataset, "--spatial", spatial_run[0], "--arch", "lvdm",
                    "--attention-layers", "2", "--out", tmp_path / "t")
    assert result.exit_code == 2 and "shape survgen's temporal blocks" in " ".join(result.output.split())
    result = invoke("train-temporal", "--data", synth_dataset, "--spatial", spatial_run[0], "--arch", "endora",
                    "--image-size", "32", "--steps", "1", "--batch-size", "1", "--sample-every", "1",
                    "--sample-steps", "1", "--quiet", "--out", tmp_path / "endora")
    assert result.exit_code == 0, result.output
    assert json.loads((tmp_path / "endora" / "model" / "temporal_config.json").read_text())["latent_size"] == 8
