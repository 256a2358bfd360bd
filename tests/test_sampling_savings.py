"""The step savings of `generate`: each one against the computation it replaces."""

import pytest
import torch
from diffusers import UNet2DConditionModel
from diffusers.models.attention_processor import Attention, AttnProcessor2_0

from survgen.diffusion.sampling import SAMPLERS, make_sampler, sample_latents, step_plan
from survgen.models.per_video_text import PerVideoTextProcessor
from survgen.models.spatial import build_tiny, save_spatial, v_prediction_scheduler
from survgen.models.video_unet import TEMPORAL_PRESETS, DeepCache, VideoUNet


# ------------------------------------------------------------------ the plan
def test_the_plan_guides_inside_the_interval_and_recomputes_every_nth_step():
    plan = step_plan([999, 800, 600, 400, 200, 1], guidance_interval=(200, 800), cache_interval=3)
    assert [s.guided for s in plan] == [False, True, True, True, True, False]
    assert [s.reuse for s in plan] == [False, True, True, False, True, True]
    assert not any(s.reuse or not s.guided for s in step_plan([999, 500, 1]))  # the defaults: no saving
    with pytest.raises(ValueError, match="cache_interval"):
        step_plan([999], cache_interval=0)


# ------------------------------------------------------------------ text keys and values once per video
@pytest.mark.parametrize("videos, frames, tokens, heads", [(1, 5, 7, 2), (3, 4, 9, 4)])
def test_per_video_text_equals_per_frame_text_forward_and_backward(videos, frames, tokens, heads):
    torch.manual_seed(0)
    attn = Attention(query_dim=24, cross_attention_dim=20, heads=heads, dim_head=24 // heads)
    hidden = torch.randn(videos * frames, tokens, 24, requires_grad=True)
    text = torch.randn(videos, 11, 20, requires_grad=True)

    attn.set_processor(AttnProcessor2_0())
    want = attn(hidden, encoder_hidden_states=text.repeat_interleave(frames, 0))
    want_grads = torch.autograd.grad(want.square().sum(), [hidden, text, attn.to_k.weight, attn.to_q.weight])
    attn.set_processor(PerVideoTextProcessor())
    got = attn(hidden, encoder_hidden_states=text)
    got_grads = torch.autograd.grad(got.square().sum(), [hidden, text, attn.to_k.weight, attn.to_q.weight])
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-6)
    for g, w in zip(got_grads, want_grads):
        torch.testing.assert_close(g, w, rtol=1e-4, atol=1e-5)
    # one text row per image is diffusers' computation, bit for bit
    per_frame = attn(hidden, encoder_hidden_states=text.repeat_interleave(frames, 0))
    attn.set_processor(AttnProcessor2_0())
    assert torch.equal(per_frame, attn(hidden, encoder_hidden_states=text.repeat_interleave(frames, 0)))


# ------------------------------------------------------------------ the video U-Net's two savings
@pytest.fixture(scope="module")
def video_unet(tmp_path_factory):
    torch.manual_seed(0)
    spatial = build_tiny()
    with torch.no_grad():  # a trained-looking model: nothing zero-initialised stays zero
        for p in spatial.unet.parameters():
            p.add_(0.02 * torch.randn_like(p))
    folder = save_spatial(spatial, tmp_path_factory.mktemp("spatial") / "model")
    model = VideoUNet(UNet2DConditionModel.from_pretrained(folder / "unet", local_files_only=True),
                      TEMPORAL_PRESETS["tiny"]).eval()
    with torch.no_grad():
        for p in model.trainable_parameters().values():
            p.add_(0.05 * torch.randn_like(p))
    return model


def _inputs(b=3, f=5, size=12, seed=0):
    g = torch.Generator().manual_seed(seed)
    return (torch.randn(b, 4, f, size, size, generator=g), torch.tensor([10, 400, 900])[:b],
            torch.randn(b, 32, 64, generator=g), torch.tensor([1, 7, 8])[:b])


@torch.no_grad()
def test_text_per_video_is_the_per_frame_computation(video_unet):
    latents, t, text, labels = _inputs()
    torch.testing.assert_close(video_unet(latents, t, text, labels),
                               video_unet(latents, t, text, labels, text_per_video=False), rtol=1e-5, atol=1e-5)


@torch.no_grad()
@pytest.mark.parametrize("size", [12, 10])  # 10: not divisible by 2**levels (the upsample-size path)
def test_reusing_deep_features_of_the_same_input_is_the_full_pass(video_unet, size):
    latents, t, text, labels = _inputs(size=size)
    cache = DeepCache()
    full = video_unet(latents, t, text, labels, deep_cache=cache, reuse=True)  # empty cache: a full pass
    assert cache.feature is not None
    assert torch.equal(full, video_unet(latents, t, text, labels))
    torch.testing.assert_close(video_unet(latents, t, text, labels, deep_cache=cache, reuse=True), full,
                               rtol=1e-5, atol=1e-5)
    # stored at a guided step [uncond; cond], reused by an unguided step on the cond half alone
    doubled = [torch.cat([x, x]) for x in (latents, t, text)] + [torch.cat([torch.full_like(labels, 8), labels])]
    cache = DeepCache()
    video_unet(*doubled, deep_cache=cache)
    torch.testing.assert_close(video_unet(latents, t, text, labels, deep_cache=cache, reuse=True), full,
                               rtol=1e-5, atol=1e-5)


@torch.no_grad()
def test_reused_deep_features_change_the_output_only_through_the_deep_branch(video_unet):
    latents, t, text, labels = _inputs()
    cache = DeepCache()
    video_unet(latents, t, text, labels, deep_cache=cache)
    other = latents + 0.5 * torch.randn_like(latents)
    reused = video_unet(other, t, text, labels, deep_cache=cache, reuse=True)
    fresh = video_unet(other, t, text, labels)
    assert not torch.allclose(reused, fresh, atol=1e-3)  # the stale deep feature is used...
    assert not torch.allclose(reused, video_unet(latents, t, text, labels), atol=1e-3)  # ...and the fresh outer level


def test_a_model_without_a_deep_feature_cache_is_refused_a_cache_interval():
    from survgen.classes import ClassVocabulary
    from survgen.diffusion.video_sampler import VideoSampler

    class Baseline(torch.nn.Linear):  # what the sampler sees of an lvdm model: no `sampling_savings`
        arch = "lvdm"

    with pytest.raises(ValueError, match="lvdm model has no deep-feature cache"):
        VideoSampler(Baseline(1, 1), None, ClassVocabulary()).sample([7], [0], steps=4, cache_interval=2)


# ------------------------------------------------------------------ the sampler
def _predict(calls):
    """A model whose output depends on its input, the branch (uncond first half when guided) and `reuse`."""
    def predict(x, t, reuse):
        calls.append((x.shape[0], reuse))
        return 0.1 * x + (0.05 if reuse else 0.0)
    return predict


def test_the_sampler_runs_each_step_as_planned():
    calls = []
    noise = torch.randn(2, 4, 3, 6, 6)
    sample_latents(_predict(calls), make_sampler("dpm++", v_prediction_scheduler().config), noise, steps=6,
                   guidance=3.0, guidance_interval=(0, 700), cache_interval=2)
    plan = step_plan(_timesteps("dpm++", 6), guidance_interval=(0, 700), cache_interval=2)
    assert calls == [(4 if s.guided else 2, s.reuse) for s in plan]
    assert any(not s.guided for s in plan) and any(s.reuse for s in plan)


def _timesteps(name, steps):
    scheduler = make_sampler(name, v_prediction_scheduler().config)
    scheduler.set_timesteps(steps)
    return scheduler.timesteps.tolist()


@pytest.mark.parametrize("name", sorted(SAMPLERS))
def test_every_sampler_runs_with_per_video_generators(name):
    noise = torch.randn(2, 4, 3, 6, 6)
    generators = [torch.Generator().manual_seed(s) for s in (1, 2)]
    out = sample_latents(lambda x, t, reuse: 0.1 * x, make_sampler(name, v_prediction_scheduler().config), noise,
                         steps=3, guidance=2.0, generators=generators)
    assert out.shape == noise.shape and torch.isfinite(out).all()


def test_guidance_outside_every_step_is_guidance_one():
    noise = torch.randn(2, 4, 3, 6, 6)

    def predict(x, t, reuse):  # the conditional branch is the second half of a guided batch
        half = x.shape[0] // 2 if x.shape[0] == 4 else 0
        out = 0.2 * x
        out[half:] += 0.3
        return out

    scheduler = v_prediction_scheduler().config
    unguided = sample_latents(predict, make_sampler("ddim", scheduler), noise, steps=5, guidance=3.0,
                              guidance_interval=(5000, 6000))
    one = sample_latents(predict, make_sampler("ddim", scheduler), noise, steps=5, guidance=1.0)
    torch.testing.assert_close(unguided, one)
    guided = sample_latents(predict, make_sampler("ddim", scheduler), noise, steps=5, guidance=3.0,
                            guidance_interval=(0, 999))
    torch.testing.assert_close(guided, sample_latents(predict, make_sampler("ddim", scheduler), noise, steps=5,
                                                      guidance=3.0))


# ------------------------------------------------------------------ what the savings cost, counted
def test_counted_flops_follow_the_plan():
    from survgen.diffusion.cost import sampling_flops

    plain = dict(sampler="dpm++", steps=6, frames=8, cache_interval=1)
    full = sampling_flops("survgen", "tiny", **plain)
    assert (full["guided_steps"], full["reused_steps"]) == (6, 0)
    assert full["flops_per_video"] == 6 * full["flops_per_step"] + full["flops_decode"]
    per_frame = sampling_flops("survgen", "tiny", **plain, text_per_video=False)
    assert per_frame["flops_per_video"] > full["flops_per_video"]
    half = sampling_flops("survgen", "tiny", **plain, guidance_interval=(1000, 1000))
    assert half["guided_steps"] == 0
    assert half["flops_per_step"] == pytest.approx(full["flops_per_step"] / 2, rel=0.02)
    cached = sampling_flops("survgen", "tiny", **{**plain, "cache_interval": 3})
    assert cached["reused_steps"] == 4
    assert full["flops_per_step"] * 0.3 < cached["flops_per_step"] < full["flops_per_step"] * 0.9
    with pytest.raises(ValueError, match="deep-feature cache"):
        sampling_flops("lvdm", "tiny", steps=4, cache_interval=2)


# ------------------------------------------------------------------ folders from before the savings
def test_a_folder_from_before_the_savings_continues_with_the_computation_it_was_made_with(tmp_path):
    import dataclasses
    import json

    from survgen.generation.folder import GenerationError, generation_request, open_output
    from survgen.generation.run import GenerationConfig

    cfg = GenerationConfig(sampler="ddim", steps=25, guidance_interval=None, cache_interval=1)
    old = generation_request(dataclasses.replace(cfg, text_per_video=False, video_format="mp4"), tmp_path / "model",
                             None)
    for option in ("guidance_interval", "cache_interval", "text_per_video", "video_format"):
        del old["config"][option]
    (tmp_path / "gen").mkdir()
    (tmp_path / "gen" / "manifest.json").write_text(json.dumps({"request": old, "videos": []}))
    with pytest.raises(GenerationError, match=r"differs in: text_per_video, video_format\) \(it was made before "
                                              r"those options existed: add --per-frame-text, --format mp4\)"):
        open_output(tmp_path / "gen", generation_request(cfg, tmp_path / "model", None))
    as_before = dataclasses.replace(cfg, text_per_video=False, video_format="mp4")  # --per-frame-text --format mp4
    assert open_output(tmp_path / "gen", generation_request(as_before, tmp_path / "model", None))["videos"] == []
