"""Prefix-tuning-specific checks, with timm's own attention as the oracle: prefixes equal to the
keys and values of extra tokens z must give the wrapped attention's output on [z; x]."""

from __future__ import annotations

import pytest
import torch
from torch import nn

import reference_impls as ri
from reference_impls.methods.prefix_tuning import PrefixAttention
from reference_impls.wrappers import Wrapper

from .common import BACKBONES, TOL, batch, build, perturb
from .reported import added_parameters

backbones = pytest.mark.parametrize("backbone", list(BACKBONES))
P = 3


@torch.no_grad()
def prefixes_from_tokens(layer: PrefixAttention, z: torch.Tensor) -> None:
    """Set P^K = k_norm(z W_K + b_K), P^V = z W_V + b_V: the keys and values tokens z would have."""
    attn = layer.base_layer
    k, v = attn.qkv(z).reshape(P, 3, attn.num_heads, attn.head_dim).unbind(1)[1:]
    k = attn.k_norm(k.transpose(0, 1)).transpose(0, 1)
    layer.peft_prefix_key.copy_(k.reshape(P, -1))
    layer.peft_prefix_value.copy_(v.reshape(P, -1))


@pytest.mark.parametrize("fused", [True, False], ids=["fused", "explicit"])
@pytest.mark.parametrize(
    "overrides", [{}, {"qk_norm": True, "scale_attn_norm": True}], ids=["plain", "qk-norm+scale-norm"]
)
@pytest.mark.parametrize("masked", [False, True], ids=["no-mask", "mask"])
def test_prefixes_act_like_extra_keys_and_values(fused: bool, overrides: dict, masked: bool) -> None:
    model = ri.apply(build(**overrides), "prefix-tuning", num_tokens=P)
    layer = model.blocks[0].attn
    attn = layer.base_layer
    attn.fused_attn = fused
    generator = torch.Generator().manual_seed(5)
    x = torch.randn(2, 7, model.embed_dim, generator=generator)
    z = torch.randn(P, model.embed_dim, generator=generator)
    prefixes_from_tokens(layer, z)
    mask = full = None
    if masked:
        mask = torch.rand(7, 7, generator=generator) > 0.4
        mask.fill_diagonal_(True)
        full = torch.ones(P + 7, P + 7, dtype=torch.bool)
        full[P:, P:] = mask
    with torch.no_grad():
        ours = layer(x, attn_mask=mask)
        # timm's Attention on [z; x]: the rows of x see z's keys and values like the prefixes
        oracle = attn(torch.cat([z.expand(2, -1, -1), x], dim=1), attn_mask=full)[:, P:]
    torch.testing.assert_close(ours, oracle, atol=TOL["merge"], rtol=0.0)


@backbones
def test_fused_and_explicit_paths_agree(backbone: str) -> None:
    images, _ = batch()
    model = ri.apply(build(backbone), "prefix-tuning", num_tokens=P)
    perturb(model)
    with torch.no_grad():
        fused = model(images)
        for block in model.blocks:
            block.attn.base_layer.fused_attn = False
        torch.testing.assert_close(model(images), fused, atol=1e-5, rtol=1e-5)


def test_float_and_causal_masks() -> None:
    model = ri.apply(build(), "prefix-tuning", num_tokens=P)
    layer = model.blocks[0].attn
    x = torch.randn(2, 5, model.embed_dim, generator=torch.Generator().manual_seed(0))
    causal = torch.ones(5, 5, dtype=torch.bool).tril()
    additive = torch.zeros(5, 5).masked_fill(~causal, float("-inf"))
    with torch.no_grad():
        by_bool = layer(x, attn_mask=causal)
        torch.testing.assert_close(layer(x, attn_mask=additive), by_bool)
        torch.testing.assert_close(layer(x, is_causal=True), by_bool)
        assert not torch.allclose(layer(x), by_bool)


def test_sequence_length_and_parameters() -> None:
    images, _ = batch()
    model = ri.apply(build(depth=3), "prefix-tuning", num_tokens=P)
    names = [n for n, _ in model.named_parameters() if "peft_" in n]
    assert names == [f"blocks.{i}.attn.peft_prefix_{kv}" for i in range(3) for kv in ("key", "value")]
    assert model.blocks[0].attn.peft_prefix_key.shape == (P, model.embed_dim)
    with torch.no_grad():
        assert model.forward_features(images).shape == build(depth=3).forward_features(images).shape


def test_refuses_other_attention() -> None:
    class OtherAttention(nn.Module):
        def forward(self, x: torch.Tensor, **kwargs) -> torch.Tensor:
            return x

    model = build()
    model.blocks[1].attn = OtherAttention()
    with pytest.raises(TypeError, match=r"prefix-tuning: block 1 has attention OtherAttention"):
        ri.apply(model, "prefix-tuning")
    assert not isinstance(model.blocks[0].attn, Wrapper)


def test_zero_tokens_refused() -> None:
    with pytest.raises(ValueError, match=r"prefix-tuning: config field 'num_tokens' must be greater than or equal to 1, got 0"):
        ri.apply(build(), "prefix-tuning", num_tokens=0)


def test_count() -> None:
    """2 L p d stored parameters (no reparameterization MLP). No VTAB-1k row in taxonomy/reported
    reports prefix-tuning on a ViT, so there is no printed number to compare with."""
    assert added_parameters("prefix-tuning", num_tokens=10) == 2 * 12 * 10 * 768 == 184_320
