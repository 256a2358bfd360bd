"""Stage-2 memory: checkpointing the spatial layers keeps the gradients and cuts what is saved; the counter
agrees with what a real CPU forward leaves alive, measured by following every storage the forward's ops create."""

import json

import pytest
import torch
import torch.nn.functional as F
from torch.multiprocessing.reductions import StorageWeakRef
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_leaves
from typer.testing import CliRunner

from survgen.classes import ClassVocabulary
from survgen.models.spatial import build_tiny
from survgen.models.video_models import build_video_model
from survgen.training.memory import GiB, temporal_stage_memory, training_memory

FRAMES, LATENT, TEXT_LENGTH = 16, 16, 32  # the tiny preset's clips: 16 frames of 64 px, 16² latents


@pytest.fixture(scope="module")
def video():
    spatial = build_tiny()
    assert spatial.text_encoder.config.max_position_embeddings == TEXT_LENGTH
    model = build_video_model("survgen", spatial, preset="tiny", num_classes=len(ClassVocabulary()),
                              latent_size=LATENT)
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():  # trained-looking temporal blocks: the fresh ones are the identity
        for p in model.trainable_parameters().values():
            p.add_(0.05 * torch.randn(p.shape, generator=g))
    return model


def _batch(batch_size=1, frames=FRAMES):
    g = torch.Generator().manual_seed(0)
    noisy = torch.randn(batch_size, 4, frames, LATENT, LATENT, generator=g)
    target = torch.randn(noisy.shape, generator=g)
    text = torch.randn(batch_size, TEXT_LENGTH, 64, generator=g)
    return noisy, torch.tensor([500] * batch_size), text, torch.tensor([2] * batch_size), target


def _loss(video, noisy, timesteps, text, labels, target):
    return F.mse_loss(video(noisy, timesteps, text, labels).float(), target.float())


def test_checkpointing_keeps_the_loss_and_the_gradients_exactly(video):
    batch = _batch(batch_size=2, frames=3)
    assert not any(t.requires_grad for t in batch)  # the U-Net's inputs need no grad; only the temporal weights do

    def loss_and_grads(checkpointing):
        video.zero_grad()
        video.enable_gradient_checkpointing(checkpointing)
        loss = _loss(video, *batch)
        loss.backward()
        return loss.detach(), {n: p.grad.clone() for n, p in video.trainable_parameters().items()}

    plain_loss, plain = loss_and_grads(False)
    checkpointed_loss, checkpointed = loss_and_grads(True)
    video.enable_gradient_checkpointing(False)
    assert torch.equal(checkpointed_loss, plain_loss)
    for name in plain:
        assert torch.equal(checkpointed[name], plain[name]), name


class LiveStorages(TorchDispatchMode):
    """Every storage an op creates (not a view of its inputs), held weakly: after a forward, the live ones
    are what the forward keeps allocated, whoever holds them."""

    def __init__(self):
        super().__init__()
        self.created = {}

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        inputs = {t.untyped_storage()._cdata for t in tree_leaves((args, kwargs)) if isinstance(t, torch.Tensor)}
        for t in tree_leaves(out):
            if isinstance(t, torch.Tensor) and t.untyped_storage()._cdata not in inputs:
                storage = t.untyped_storage()
                self.created[storage._cdata] = (StorageWeakRef(storage), storage.nbytes())
        return out

    def live_bytes(self) -> int:
        return sum(nbytes for ref, nbytes in self.created.values() if not ref.expired())


def _bytes_kept_by_forward(video, checkpointing: bool) -> int:
    """What one real forward of the loss leaves allocated on the CPU (torch's own checkpoint when on)."""
    video.enable_gradient_checkpointing(checkpointing)
    with LiveStorages() as live:
        loss = _loss(video, *_batch())
    video.enable_gradient_checkpointing(False)
    kept = live.live_bytes() - loss.untyped_storage().nbytes()
    del loss
    return kept


def test_counted_saved_activations_match_a_real_forward_on_the_cpu(video):
    counted = temporal_stage_memory("tiny", batch_size=1, image_size=64, mixed_precision="no")["saved_activations"]
    measured = {"no_checkpointing": _bytes_kept_by_forward(video, False),
                "checkpointing_kept": _bytes_kept_by_forward(video, True)}
    # The same tensors but SDPA's log-sum-exp, which the counted fused kernel pads to 32 queries (0.01 % here).
    for key, real in measured.items():
        assert counted[key] == pytest.approx(real, rel=0.002), (key, counted[key], real)
    assert measured["checkpointing_kept"] < measured["no_checkpointing"] / 5


def test_checkpointing_cuts_the_sd15_stage2_count_below_the_target():
    sd15 = temporal_stage_memory("sd15", batch_size=1, image_size=256, mixed_precision="bf16")
    activations = sd15["saved_activations"]
    assert activations["checkpointing"] < activations["no_checkpointing"] / 4
    assert activations["checkpointing"] == activations["checkpointing_kept"] + activations["checkpointing_largest_unit"]
    assert activations["checkpointing"] <= 2 * GiB
    assert sd15["total"]["checkpointing"] <= 12 * GiB
    assert sd15["trainable_weights"] == pytest.approx(412e6 * 4, rel=0.01)


def test_saved_activations_grow_with_the_batch():
    one, two = (training_memory("tiny", batch_size=b, mixed_precision="no") for b in (1, 2))
    for stage in ("spatial", "temporal"):
        a, b = one[stage]["saved_activations"], two[stage]["saved_activations"]
        assert b["no_checkpointing"] == pytest.approx(2 * a["no_checkpointing"], rel=0.05)
        assert one[stage]["optimizer_state"] == two[stage]["optimizer_state"]


def test_info_memory_prints_both_stages_as_json():
    from survgen.cli.main import app

    result = CliRunner().invoke(app, ["info", "--preset", "tiny", "--memory", "--batch-size", "2", "--json"])
    assert result.exit_code == 0, result.output
    memory = json.loads(result.stdout)["memory"]
    assert memory["image_size"] == 64 and memory["batch_size"] == 2
    for stage in ("spatial", "temporal"):
        assert memory[stage]["total"]["checkpointing"] <= memory[stage]["total"]["no_checkpointing"]


def test_stage2_trains_with_the_frozen_unet_and_vae_stored_in_bf16():
    from survgen.training.stage2 import TemporalTrainee, frozen_weight_dtype

    assert frozen_weight_dtype("bf16") == torch.bfloat16 and frozen_weight_dtype("no") == torch.float32
    spatial = build_tiny()
    trainee = TemporalTrainee(build_video_model("survgen", spatial, preset="tiny", num_classes=8,
                                                latent_size=LATENT), spatial)
    trainee.store_frozen_in(torch.bfloat16)
    assert {p.dtype for p in trainee.video_model.unet.parameters()} == {torch.bfloat16}
    assert {p.dtype for p in trainee.vae.parameters()} == {torch.bfloat16}
    assert {p.dtype for p in trainee.text_encoder.parameters()} == {torch.float32}  # runs once, outside autocast
    assert {p.dtype for p in trainee.trainable_parameters().values()} == {torch.float32}  # fp32 master weights
    noisy, timesteps, text, labels, target = _batch(frames=3)
    pixels = torch.rand(3, 3, 4 * LATENT, 4 * LATENT)
    with torch.autocast("cpu", dtype=torch.bfloat16):  # what the loop's accelerate does under --mixed-precision bf16
        latents = trainee.vae.encode(pixels).latent_dist.mean
        loss = _loss(trainee.video_model, noisy, timesteps, text, labels, target)
    loss.backward()
    assert latents.shape == (3, 4, LATENT, LATENT)
    grads = [p.grad for p in trainee.trainable_parameters().values()]
    assert all(g is not None and g.dtype == torch.float32 and torch.isfinite(g).all() for g in grads)
