"""AdaptFormer-specific checks: the branch reads the post-attention tokens and is added beside
timm's own block computation; refused blocks; the width the VTAB-1k tables count."""

from __future__ import annotations

import pytest
import timm
import torch
import torch.nn.functional as F
from timm.models.vision_transformer import Block
from torch import nn

import reference_impls as ri
from reference_impls.wrappers import Wrapper

from .common import BACKBONES, TINY, batch, build, perturb
from .reported import added_parameters, in_millions

backbones = pytest.mark.parametrize("backbone", list(BACKBONES))


def reference_forward(model: nn.Module, images: torch.Tensor, scale: float) -> torch.Tensor:
    """x_l = Block(x) + s · (ReLU(x' W_down + b_down) W_up + b_up), with timm's own Block.forward
    for the frozen path and x' = x + Attn(LN_1 x) taken from the original sub-modules."""
    x = model.norm_pre(model.patch_drop(model._pos_embed(model.patch_embed(images))))
    for wrapper in model.blocks:
        block = wrapper.base_layer
        post_attention = x + block.ls1(block.attn(block.norm1(x)))
        hidden = F.relu(post_attention @ wrapper.peft_down.weight.T + wrapper.peft_down.bias)
        x = block(x) + scale * (hidden @ wrapper.peft_up.weight.T + wrapper.peft_up.bias)
    return model.forward_head(model.norm(x))


@backbones
def test_matches_equations(backbone: str) -> None:
    images, _ = batch()
    model = ri.apply(build(backbone), "adaptformer", bottleneck=4, scale=0.3)
    perturb(model)
    with torch.no_grad():
        torch.testing.assert_close(model(images), reference_forward(model, images, 0.3))


def test_identity_with_layer_scale_and_masks() -> None:
    """The recomposed block equals timm's Block.forward bit for bit (LayerScale present), and an
    attention mask reaches the attention."""
    images, _ = batch()
    plain = build(init_values=0.5)
    model = ri.apply(build(init_values=0.5), "adaptformer", bottleneck=4)
    tokens = plain.patch_embed.num_patches + plain.num_prefix_tokens
    mask = torch.rand(tokens, tokens, generator=torch.Generator().manual_seed(0)) > 0.3
    mask.fill_diagonal_(True)
    with torch.no_grad():
        assert torch.equal(model(images), plain(images))
        masked = model.forward_features(images, attn_mask=mask)
        assert torch.equal(masked, plain.forward_features(images, attn_mask=mask))
        assert not torch.allclose(masked, plain.forward_features(images))


def test_refuses_blocks_with_another_forward() -> None:
    class OtherBlock(Block):
        def forward(self, x: torch.Tensor, **kwargs) -> torch.Tensor:  # a post-norm block, say
            return super().forward(x, **kwargs)

    model = build()
    model.blocks[1].__class__ = OtherBlock
    with pytest.raises(TypeError, match=r"adaptformer: block 1 is OtherBlock; only timm's pre-norm"):
        ri.apply(model, "adaptformer")
    assert not any(isinstance(b, Wrapper) for b in model.blocks)
    res_post = timm.create_model("vit_tiny_patch16_224", **TINY, block_fn=timm.models.vision_transformer.ResPostBlock)
    with pytest.raises(TypeError, match=r"block 0 is ResPostBlock"):
        ri.apply(res_post, "adaptformer")


def test_official_defaults() -> None:
    model = ri.apply(build(), "adaptformer")
    block = model.blocks[0]
    assert block.peft_down.out_features == 64 and block.scale == 0.1 and block.peft_dropout.p == 0.1
    assert torch.count_nonzero(block.peft_up.weight) == 0 and torch.count_nonzero(block.peft_down.weight) > 0


# The "AdaptFormer" rows of the VTAB-1k tables (ViT-B/16, head not counted) are bottleneck width 8,
# the preset "vtab-1k" (test_reported_presets.py recomputes them); the AdaptFormer paper uses 64.


def test_width_8_is_the_only_width_printing_0_16() -> None:
    printed = {m: in_millions(added_parameters("adaptformer", bottleneck=m), "0.16") for m in (7, 8, 9, 64)}
    assert printed == {7: "0.14", 8: "0.16", 9: "0.18", 64: "1.19"}
