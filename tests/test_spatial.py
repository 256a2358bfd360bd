"""The spatial model: offline tiny preset, diffusers-folder round trip, sd15 loading errors, parameter counts."""

import json

import pytest
import torch
from diffusers import StableDiffusionPipeline

from survgen.classes import ClassVocabulary
from survgen.models.counts import preset_parameter_counts
from survgen.models.spatial import ModelLoadError, build_spatial, build_tiny, load_spatial, save_spatial


def test_tiny_tokenizer_makes_prompt_words_single_tokens_and_still_reads_any_text():
    tok = build_tiny().tokenizer
    prompt = ClassVocabulary().prompt(6)
    assert prompt == "action recognition task of cutting the suture"
    ids = tok(prompt).input_ids
    assert len(ids) == len(prompt.split()) + 2  # one token a word, plus start and end
    unknown = tok("zebra 42 ü").input_ids
    assert tok.unk_token_id not in unknown[1:-1]  # byte fallback, never <unk>
    assert tok.decode(unknown, skip_special_tokens=True).replace(" ", "") == "zebra42ü"


def test_custom_class_names_get_their_own_word_tokens():
    vocab = ClassVocabulary(names=("staple line bleeding", "no bleeding"), prompt_template="a complication of {name}")
    tok = build_tiny(vocab).tokenizer
    assert len(tok("a complication of staple line bleeding").input_ids) == 6 + 2


def test_saved_tiny_model_is_a_diffusers_pipeline_folder_and_round_trips(tmp_path):
    spatial = build_tiny(seed=3)
    folder = save_spatial(spatial, tmp_path / "model")
    assert json.loads((folder / "model_index.json").read_text())["_class_name"] == "StableDiffusionPipeline"
    pipe = StableDiffusionPipeline.from_pretrained(folder, local_files_only=True, safety_checker=None)
    assert list(pipe.unet.config.block_out_channels) == list(spatial.unet.config.block_out_channels)
    loaded = load_spatial(folder)
    x, t = torch.randn(2, 4, 16, 16), torch.tensor([5, 500])
    text = loaded.encode_prompts(["action recognition task of tying a knot"] * 2)
    torch.testing.assert_close(text, spatial.encode_prompts(["action recognition task of tying a knot"] * 2))
    with torch.no_grad():
        torch.testing.assert_close(loaded.unet(x, t, text).sample, spatial.unet(x, t, text).sample)
    assert loaded.noise_scheduler.config.prediction_type == "v_prediction"


def test_save_never_leaves_a_half_written_folder(tmp_path, monkeypatch):
    spatial = build_tiny()
    save_spatial(spatial, tmp_path / "model")
    before = sorted(p.name for p in (tmp_path / "model").iterdir())

    def boom(*a, **k):
        raise RuntimeError("disk full")

    monkeypatch.setattr(spatial.unet, "save_pretrained", boom)
    with pytest.raises(RuntimeError, match="disk full"):
        save_spatial(spatial, tmp_path / "model")
    assert sorted(p.name for p in (tmp_path / "model").iterdir()) == before
    assert [p.name for p in tmp_path.iterdir()] == ["model"]  # no temp folders left behind


def test_sd15_needs_a_local_path_and_says_so(tmp_path):
    with pytest.raises(ModelLoadError, match="--pretrained"):
        build_spatial("sd15")
    with pytest.raises(ModelLoadError, match="missing .*unet"):
        build_spatial("sd15", pretrained=tmp_path)
    ckpt = tmp_path / "sd15.safetensors"
    ckpt.write_bytes(b"")
    with pytest.raises(ModelLoadError, match="--tokenizer"):
        load_spatial(ckpt)
    with pytest.raises(ModelLoadError, match="unknown preset"):
        build_spatial("sdxl")


def test_sd15_parameter_counts_match_stable_diffusion_and_the_paper():
    counts = preset_parameter_counts("sd15")
    assert counts["spatial_unet"] == 859_520_964  # SD 1.5's U-Net
    assert counts["text_encoder"] == 123_060_480  # CLIP ViT-L/14 text tower
    # Paper Table 1: 435M trainable parameters. AnimateDiff-style blocks (two self-attention
    # sub-layers + GEGLU MLP) after every resnet/attention pair land within 10 % of it.
    assert abs(counts["stage2_trainable"] - 435e6) / 435e6 < 0.10, counts
