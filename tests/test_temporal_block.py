"""TemporalTransformerBlock: identity when fresh, only temporal parameters, formula-exact counts, checkpointing."""

from __future__ import annotations

import pytest
import torch
from torch.utils.checkpoint import checkpoint

from survgen.kernels.backends import BackendUnavailableError, use_backend
from survgen.kernels.reference import temporal_attention_reference
from survgen.models.temporal import TemporalTransformerBlock, temporal_block_parameter_count


def perturb_zero_initialised(block: TemporalTransformerBlock, seed: int = 0) -> None:
    """Give every zero-initialised projection random weights, so each residual branch contributes."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for attention in block.attentions:
            attention.to_out.weight.copy_(torch.randn(attention.to_out.weight.shape, generator=g) * 0.2)
            attention.to_out.bias.copy_(torch.randn(attention.to_out.bias.shape, generator=g) * 0.2)
        block.mlp.proj_out.weight.copy_(torch.randn(block.mlp.proj_out.weight.shape, generator=g) * 0.2)
        block.mlp.proj_out.bias.copy_(torch.randn(block.mlp.proj_out.bias.shape, generator=g) * 0.2)


@pytest.mark.parametrize("attention_layers", [1, 2])
def test_fresh_block_is_exactly_the_identity(attention_layers):
    torch.manual_seed(0)
    block = TemporalTransformerBlock(40, heads=5, attention_layers=attention_layers)
    x = torch.randn(3 * 4, 40, 3, 5)
    out = block(x, num_frames=4)
    assert out.shape == x.shape
    assert torch.equal(out, x)


def test_perturbed_block_is_not_the_identity_and_each_branch_counts():
    torch.manual_seed(0)
    block = TemporalTransformerBlock(24, heads=3, attention_layers=2)
    x = torch.randn(2 * 3, 24, 3, 5)
    perturb_zero_initialised(block)
    out = block(x, 3)
    assert not torch.allclose(out, x, atol=1e-3)
    with torch.no_grad():  # back to zero on the MLP only: the attention branches alone still change x
        block.mlp.proj_out.weight.zero_()
        block.mlp.proj_out.bias.zero_()
    assert not torch.allclose(block(x, 3), x, atol=1e-3)


def test_block_is_attention_sublayers_then_geglu_mlp():
    """The forward written out: the kernels' reference per sub-layer, then diffusers' GEGLU FeedForward."""
    from diffusers.models.attention import FeedForward

    torch.manual_seed(0)
    block = TemporalTransformerBlock(24, heads=3, attention_layers=2, mlp_ratio=2).double()
    perturb_zero_initialised(block)
    x = torch.randn(2 * 5, 24, 3, 5, dtype=torch.float64)
    want = x
    for a in block.attentions:
        want = temporal_attention_reference(want, 5, a.norm.weight, a.norm.bias, a.to_qkv.weight, None,
                                            a.to_out.weight, a.to_out.bias, 3, a.norm.eps)
    feed_forward = FeedForward(24, mult=2, activation_fn="geglu").double()
    feed_forward.net[0].proj.load_state_dict(block.mlp.proj_in.state_dict())
    feed_forward.net[2].load_state_dict(block.mlp.proj_out.state_dict())
    tokens = want.permute(0, 2, 3, 1)
    want = (tokens + feed_forward(block.mlp_norm(tokens))).permute(0, 3, 1, 2)
    torch.testing.assert_close(block(x, 5), want, rtol=1e-12, atol=1e-12)


def test_attention_goes_through_the_kernels_api():
    block = TemporalTransformerBlock(24, heads=3)
    with use_backend("cuda"), pytest.raises(BackendUnavailableError):
        block(torch.randn(6, 24, 2, 2), 3)


def test_only_temporal_parameters_with_stable_names():
    block = TemporalTransformerBlock(32, heads=4, attention_layers=2)
    names = {n for n, _ in block.named_parameters()}
    per_layer = ["norm.weight", "norm.bias", "to_qkv.weight", "to_out.weight", "to_out.bias"]
    assert names == {f"attentions.{i}.{p}" for i in range(2) for p in per_layer} | {
        "mlp_norm.weight", "mlp_norm.bias", "mlp.proj_in.weight", "mlp.proj_in.bias",
        "mlp.proj_out.weight", "mlp.proj_out.bias",
    }
    assert list(block.buffers()) == []
    assert set(block.state_dict()) == names


@pytest.mark.parametrize("channels, attention_layers, mlp_ratio", [(32, 1, 4), (40, 2, 4), (24, 3, 2), (320, 2, 4)])
def test_parameter_count_formula_matches_the_module(channels, attention_layers, mlp_ratio):
    with torch.device("meta"):  # as the preset counts build it: nothing allocated
        block = TemporalTransformerBlock(channels, heads=8, attention_layers=attention_layers, mlp_ratio=mlp_ratio)
    assert sum(p.numel() for p in block.parameters()) == temporal_block_parameter_count(
        channels, attention_layers, mlp_ratio
    )


def test_bad_configuration_and_too_many_frames_are_clear_errors():
    with pytest.raises(ValueError, match=r"heads=8 must divide channels=36; choose one of \[1, 2, 3, 4, 6, 9, 12"):
        TemporalTransformerBlock(36, heads=8)
    with pytest.raises(ValueError, match="attention_layers, mlp_ratio and max_frames must be >= 1"):
        TemporalTransformerBlock(32, heads=4, attention_layers=0)
    block = TemporalTransformerBlock(32, heads=4, max_frames=8)
    with pytest.raises(ValueError, match="num_frames=9 exceeds max_frames=8"):
        block(torch.zeros(9, 32, 1, 1), 9)


def test_gradient_checkpointing_gives_the_same_output_and_gradients():
    torch.manual_seed(0)
    block = TemporalTransformerBlock(24, heads=3, attention_layers=2).double()
    perturb_zero_initialised(block)
    x = torch.randn(2 * 4, 24, 3, 5, dtype=torch.float64, requires_grad=True)
    grad_out = torch.randn_like(x)

    def grads(run):
        block.zero_grad()
        x.grad = None
        out = run(x)
        out.backward(grad_out)
        return out.detach(), x.grad.clone(), {n: p.grad.clone() for n, p in block.named_parameters()}

    plain = grads(lambda t: block(t, 4))
    checkpointed = grads(lambda t: checkpoint(block, t, 4, use_reentrant=False))
    torch.testing.assert_close(checkpointed[0], plain[0], rtol=0, atol=0)
    torch.testing.assert_close(checkpointed[1], plain[1], rtol=1e-12, atol=1e-12)
    assert set(checkpointed[2]) == set(plain[2])
    for name, g in plain[2].items():
        assert g.abs().sum() > 0, name
        torch.testing.assert_close(checkpointed[2][name], g, rtol=1e-12, atol=1e-12)
