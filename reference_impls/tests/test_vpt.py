"""VPT-specific checks: where the prompts go, and that pooling sees the original token layout."""

from __future__ import annotations

import pytest
import torch
from torch import nn

import reference_impls as ri
from reference_impls.wrappers import Wrapper

from .common import BACKBONES, batch, build, perturb

backbones = pytest.mark.parametrize("backbone", list(BACKBONES))
variants = pytest.mark.parametrize("method", ["vpt-shallow", "vpt-deep"])
P = 3


def block_inputs(model: nn.Module, images: torch.Tensor) -> list[torch.Tensor]:
    """The token sequence entering each original block."""
    seen: list[torch.Tensor] = []
    hooks = []
    for block in model.blocks:
        inner = block.base_layer if isinstance(block, Wrapper) else block
        hooks.append(inner.register_forward_pre_hook(lambda _m, args: seen.append(args[0].detach())))
    with torch.no_grad():
        model(images)
    for hook in hooks:
        hook.remove()
    return seen


@backbones
@variants
def test_prompts_follow_the_prefix_tokens(backbone: str, method: str) -> None:
    images, _ = batch()
    plain = build(backbone)
    model = ri.apply(build(backbone), method, num_tokens=P)
    n = model.num_prefix_tokens
    before = block_inputs(plain, images)[0]
    inputs = block_inputs(model, images)
    for index, x in enumerate(inputs):
        assert x.shape[1] == before.shape[1] + P
        prompt = model.blocks[index].peft_prompt if (method == "vpt-deep" or index == 0) else None
        if prompt is not None:
            # [c, P_i, E]: the prompts sit right after the class / register / distillation tokens
            assert torch.equal(x[:, n : n + P], prompt.expand(x.shape[0], -1, -1))
    # the first block sees the original prefix and patch tokens around the prompts
    assert torch.equal(inputs[0][:, :n], before[:, :n])
    assert torch.equal(inputs[0][:, n + P :], before[:, n:])


@backbones
@variants
def test_prompt_outputs_removed_before_norm_and_pooling(backbone: str, method: str) -> None:
    images, _ = batch()
    plain = build(backbone)
    model = ri.apply(build(backbone), method, num_tokens=P)
    with torch.no_grad():
        features = model.forward_features(images)
        assert features.shape == plain.forward_features(images).shape
        # pooling ('token' or 'avg') runs on the original layout: over patch tokens only for 'avg'
        pooled = model.forward_head(features, pre_logits=True)
        if model.global_pool == "avg":
            expected = model.fc_norm(features[:, model.num_prefix_tokens :].mean(dim=1))
            torch.testing.assert_close(pooled, expected)


def reference_forward(model: nn.Module, images: torch.Tensor, deep: bool) -> torch.Tensor:
    """VPT written out from the paper's equations with the original blocks, as an independent check."""
    n = model.num_prefix_tokens
    x = model.norm_pre(model.patch_drop(model._pos_embed(model.patch_embed(images))))
    for index, block in enumerate(model.blocks):
        prompt = block.peft_prompt if isinstance(block, Wrapper) else None
        if index == 0:
            x = torch.cat([x[:, :n], prompt.expand(x.shape[0], -1, -1), x[:, n:]], dim=1)
        elif deep:
            x = torch.cat([x[:, :n], prompt.expand(x.shape[0], -1, -1), x[:, n + P :]], dim=1)
        x = (block.base_layer if isinstance(block, Wrapper) else block)(x)
    x = torch.cat([x[:, :n], x[:, n + P :]], dim=1)
    return model.forward_head(model.norm(x))


@backbones
@variants
def test_matches_equations(backbone: str, method: str) -> None:
    images, _ = batch()
    model = ri.apply(build(backbone, depth=3), method, num_tokens=P)
    perturb(model)
    with torch.no_grad():
        torch.testing.assert_close(model(images), reference_forward(model, images, method == "vpt-deep"))


@variants
def test_single_block_model(method: str) -> None:
    images, _ = batch()
    model = ri.apply(build("cls-token", depth=1), method, num_tokens=P)
    with torch.no_grad():
        assert model.forward_features(images).shape == build("cls-token", depth=1).forward_features(images).shape


def test_deep_has_one_prompt_per_block_and_shallow_one() -> None:
    deep = ri.apply(build(depth=3), "vpt-deep", num_tokens=P)
    shallow = ri.apply(build(depth=3), "vpt-shallow", num_tokens=P)
    assert [n for n, _ in deep.named_parameters() if "peft_" in n] == [f"blocks.{i}.peft_prompt" for i in range(3)]
    assert [n for n, _ in shallow.named_parameters() if "peft_" in n] == ["blocks.0.peft_prompt"]
