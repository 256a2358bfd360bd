"""The video U-Net: a fresh one is the stage-1 image U-Net frame by frame; stage 2 trains only temporal weights."""

import pytest
import torch
from diffusers import UNet2DConditionModel

from survgen.models.spatial import build_tiny, save_spatial
from survgen.models.video_unet import TEMPORAL_PRESETS, TemporalConfig, VideoUNet


@pytest.fixture(scope="module")
def tiny_folder(tmp_path_factory):
    torch.manual_seed(0)
    spatial = build_tiny()
    # A trained-looking U-Net: perturb the zero-initialised output conv so outputs are not trivial.
    with torch.no_grad():
        for p in spatial.unet.parameters():
            p.add_(0.02 * torch.randn_like(p))
    return save_spatial(spatial, tmp_path_factory.mktemp("spatial") / "model")


def _inputs(b=2, f=3, h=16, w=16, seed=0):
    g = torch.Generator().manual_seed(seed)
    latents = torch.randn(b, 4, f, h, w, generator=g)
    text = torch.randn(b, 32, 64, generator=g)
    t = torch.tensor([10, 700])[:b]
    labels = torch.tensor([1, 7])[:b]
    return latents, t, text, labels


def _perturb_temporal(model: VideoUNet, scale=0.05):
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for p in model.trainable_parameters().values():
            p.add_(scale * torch.randn(p.shape, generator=g))


@pytest.mark.parametrize("size", [(16, 16), (10, 14)])  # 10×14: not divisible by 2**levels (upsample-size path)
def test_fresh_video_unet_equals_image_unet_frame_by_frame(tiny_folder, size):
    image_unet = UNet2DConditionModel.from_pretrained(tiny_folder / "unet", local_files_only=True).eval()
    video = VideoUNet(UNet2DConditionModel.from_pretrained(tiny_folder / "unet", local_files_only=True),
                      TEMPORAL_PRESETS["tiny"]).eval()
    latents, t, text, labels = _inputs(h=size[0], w=size[1])
    b, c, f, h, w = latents.shape
    with torch.no_grad():
        got = video(latents, t, text, labels)
        frames = latents.transpose(1, 2).reshape(b * f, c, h, w)
        want = image_unet(frames, t.repeat_interleave(f), text.repeat_interleave(f, 0)).sample
    want = want.reshape(b, f, c, h, w).transpose(1, 2)
    assert got.shape == latents.shape
    torch.testing.assert_close(got, want, rtol=0, atol=1e-5)


def test_trained_temporal_blocks_mix_frames_and_use_the_class(tiny_folder):
    video = VideoUNet(UNet2DConditionModel.from_pretrained(tiny_folder / "unet", local_files_only=True),
                      TemporalConfig(num_classes=8, heads=4)).eval()
    _perturb_temporal(video)
    latents, t, text, labels = _inputs()
    with torch.no_grad():
        base = video(latents, t, text, labels)
        changed = latents.clone()
        changed[:, :, 2] += 1.0  # change only frame 2
        moved = video(changed, t, text, labels)
        other_class = video(latents, t, text, torch.tensor([3, 3]))
    assert (moved[:, :, 0] - base[:, :, 0]).abs().max() > 1e-4, "frame 0 must see frame 2 through temporal attention"
    assert (other_class - base).abs().max() > 1e-4, "the class label must change the prediction"
    # videos of the batch never see each other
    with torch.no_grad():
        changed = latents.clone()
        changed[1] += 1.0
        torch.testing.assert_close(video(changed, t, text, labels)[0], base[0], rtol=0, atol=1e-5)


def test_only_temporal_parameters_are_trainable_and_change(tiny_folder):
    video = VideoUNet(UNet2DConditionModel.from_pretrained(tiny_folder / "unet", local_files_only=True),
                      TemporalConfig(num_classes=8, heads=4))
    trainable = {n for n, p in video.named_parameters() if p.requires_grad}
    assert trainable == set(video.trainable_parameters())
    assert trainable and not any(n.startswith("unet.") for n in trainable)
    assert any(n.startswith("class_embedding") for n in trainable)

    before = {n: p.detach().clone() for n, p in video.named_parameters()}
    opt = torch.optim.AdamW(video.trainable_parameters().values(), lr=1e-2)
    latents, t, text, labels = _inputs()
    for _ in range(2):  # two steps: the first only moves the zero-initialised output projections
        opt.zero_grad()
        video(latents, t, text, labels).square().mean().backward()
        opt.step()
    for n, p in video.named_parameters():
        if n.startswith("unet."):
            assert p.grad is None, f"{n} got a gradient"
            assert torch.equal(p, before[n]), f"spatial weight {n} changed"
    changed = [n for n, p in video.trainable_parameters().items() if not torch.equal(p, before[n])]
    assert any("class_embedding" in n for n in changed)
    assert len(changed) > len(trainable) // 2


def test_gradient_checkpointing_gives_the_same_gradients(tiny_folder):
    video = VideoUNet(UNet2DConditionModel.from_pretrained(tiny_folder / "unet", local_files_only=True),
                      TemporalConfig(num_classes=8, heads=4))
    _perturb_temporal(video)
    latents, t, text, labels = _inputs()

    def grads(checkpointing):
        video.zero_grad()
        video.enable_gradient_checkpointing(checkpointing)
        video(latents, t, text, labels).square().mean().backward()
        return {n: p.grad.clone() for n, p in video.trainable_parameters().items()}

    plain, ckpt = grads(False), grads(True)
    for n in plain:
        torch.testing.assert_close(ckpt[n], plain[n], rtol=1e-5, atol=1e-6)


def test_rejects_video_unet_input_of_wrong_rank(tiny_folder):
    video = VideoUNet(UNet2DConditionModel.from_pretrained(tiny_folder / "unet", local_files_only=True),
                      TemporalConfig(num_classes=8, heads=4))
    with pytest.raises(ValueError, match=r"\(b, c, f, h, w\)"):
        video(torch.zeros(2, 4, 16, 16), torch.tensor([1, 2]), torch.zeros(2, 32, 64), torch.tensor([0, 1]))


def test_video_unet_uses_the_fused_kernel_and_matches_the_reference(tiny_folder):
    from survgen.kernels.backends import select_backend, use_backend

    video = VideoUNet(UNet2DConditionModel.from_pretrained(tiny_folder / "unet", local_files_only=True),
                      TemporalConfig(num_classes=8, heads=4))
    _perturb_temporal(video)
    latents, t, text, labels = _inputs(f=5, h=10, w=14)  # 140, 35, ... positions: partial tiles at every level
    assert select_backend(latents).name == "cpu"  # what the model runs by default on this machine

    def run(backend):
        video.zero_grad()
        with use_backend(backend):
            out = video(latents, t, text, labels)
            out.square().mean().backward()
        return out.detach(), {n: p.grad.clone() for n, p in video.trainable_parameters().items()}

    fused, fused_grads = run("cpu")
    reference, reference_grads = run("reference")
    torch.testing.assert_close(fused, reference, rtol=1e-5, atol=1e-5)
    for name in reference_grads:
        torch.testing.assert_close(fused_grads[name], reference_grads[name], rtol=1e-4, atol=1e-6,
                                   msg=lambda m: f"{name}: {m}")
