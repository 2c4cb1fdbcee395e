"""LST-specific checks: the ladder equations, the output path of the official code (biased
ladders, no backbone norm after the up-projection), that backpropagation never enters the
backbone (no autograd inside frozen blocks, no backbone activation saved, no gradient to the
input), layer dropping and config errors."""

from __future__ import annotations

import pytest
import torch
from torch import nn

import reference_impls as ri
from reference_impls.methods.lst import BypassedNorm, LadderBlock

from .common import BACKBONES, batch, build, perturb

backbones = pytest.mark.parametrize("backbone", list(BACKBONES))


def pooled_logits(model: nn.Module, tokens: torch.Tensor) -> torch.Tensor:
    """The classifier on the tokens with no norm in between: timm's pooling, then the head(s)
    (DeiT's distillation head averaged in, as timm does in eval mode)."""
    if getattr(model, "head_dist", None) is not None:
        return (model.head(tokens[:, 0]) + model.head_dist(tokens[:, 1])) / 2
    return model.head(model.pool(tokens))


def reference_forward(model: nn.Module, images: torch.Tensor) -> torch.Tensor:
    """LST written out from the paper's equations with the wrappers' parts, as an independent check:
    the up-projected side state goes to pooling and head without the backbone's final norm."""
    x = model.norm_pre(model.patch_drop(model._pos_embed(model.patch_embed(images))))
    h = x
    s = model.blocks[0].peft_down_embed(h)
    for block in model.blocks:
        h = block.base_layer(h)
        if hasattr(block, "peft_side"):
            mu = torch.sigmoid(block.peft_gate / block.temperature)
            s = block.peft_side(mu * s + (1 - mu) * block.peft_down(h))
    last = model.blocks[-1]
    # W^up LN^S(h^S_L) + b^up, read by pooling and head as it is
    out = last.peft_up(last.peft_side_norm(s))
    return pooled_logits(model, out)


@backbones
def test_matches_equations(backbone: str) -> None:
    images, _ = batch()
    model = ri.apply(build(backbone, depth=3), "lst", reduction=4, side_layers=(0, 2))
    perturb(model)
    with torch.no_grad():
        torch.testing.assert_close(model(images), reference_forward(model, images))


def test_structure_gates_and_layer_dropping() -> None:
    model = ri.apply(build(depth=3), "lst", side_layers=(1,))
    assert all(isinstance(b, LadderBlock) for b in model.blocks)
    assert [hasattr(b, "peft_side") for b in model.blocks] == [False, True, False]
    assert hasattr(model.blocks[0], "peft_down_embed") and hasattr(model.blocks[2], "peft_up")
    side = model.blocks[1].peft_side
    # width d / r = 32 / 8, the backbone's 2 heads and MLP ratio 4
    assert side.norm1.normalized_shape == (4,) and side.attn.num_heads == 2 and side.mlp.fc1.out_features == 16
    # mu = sigmoid(0 / T) = 0.5 at init
    assert model.blocks[1].gate().item() == 0.5
    ladders = [m for n, m in model.named_modules() if n.endswith(("peft_down", "peft_down_embed", "peft_up"))]
    assert len(ladders) == 3


def test_ladders_have_biases_and_the_official_initialization() -> None:
    """The released scripts set `add_bias_sampling`, and the official `_init_weights` draws every
    plain linear layer's weight from N(0, 0.01^2) with a zero bias."""
    model = ri.apply(build(embed_dim=64, depth=3), "lst", reduction=4)
    names = ("peft_down", "peft_down_embed", "peft_up")
    ladders = {n: m for n, m in model.named_modules() if n.endswith(names)}
    # first ladder, one ladder per side layer, up-projection
    assert len(ladders) == 1 + 3 + 1
    assert all(m.bias is not None and torch.count_nonzero(m.bias) == 0 for m in ladders.values())
    weights = torch.cat([m.weight.flatten() for m in ladders.values()])
    # 5 x 64 x 16 = 5120 draws: the sample std is within a few percent of 0.01
    assert abs(weights.std().item() - 0.01) < 0.001 and weights.abs().max() < 0.06
    trainable = set(ri.adapter_parameter_names(model))
    assert {f"{n}.bias" for n in ladders} <= trainable


@backbones
def test_backbone_final_norm_is_bypassed(backbone: str) -> None:
    """Pooling and head read W^up LN^S(h^S_L) + b^up directly: the backbone's final norm (`norm`,
    or `fc_norm` on average-pooling models) is wrapped, kept frozen, and has no effect."""
    images, _ = batch()
    plain = build(backbone, depth=3)
    norms = [name for name in ("norm", "fc_norm") if isinstance(getattr(plain, name), nn.LayerNorm)]
    model = ri.apply(build(backbone, depth=3), "lst", reduction=4)
    perturb(model)
    assert norms and all(isinstance(getattr(model, name), BypassedNorm) for name in norms)
    assert not any(p.requires_grad for name in norms for p in getattr(model, name).parameters())
    with torch.no_grad():
        before = model(images)
        for name in norms:
            norm = getattr(model, name).base_layer
            norm.weight.mul_(3.0)
            norm.bias.add_(1.0)
        torch.testing.assert_close(model(images), before, atol=0.0, rtol=0.0)


@backbones
def test_backbone_blocks_run_without_autograd(backbone: str) -> None:
    images, labels = batch()
    model = ri.apply(build(backbone), "lst", reduction=4).train()
    seen = []

    def record(module: nn.Module, _args: tuple, output: torch.Tensor) -> None:
        seen.append((torch.is_grad_enabled(), output.requires_grad, output.grad_fn))

    hooks = [m.register_forward_hook(record) for b in model.blocks for m in b.base_layer.modules()]
    output = model(images)
    for hook in hooks:
        hook.remove()
    assert seen and all(state == (False, False, None) for state in seen)
    assert output.requires_grad
    torch.nn.functional.cross_entropy(output, labels).backward()
    assert all(p.grad is None for n, p in model.named_parameters() if not p.requires_grad)


@backbones
def test_no_backbone_activation_is_saved_for_backward(backbone: str) -> None:
    """Autograd keeps the ladder inputs (the block outputs) but nothing computed inside a block:
    no attention, qkv or MLP activation of the backbone is stored for the backward pass, even for
    an input that requires grad (with LoRA, the same check finds stored backbone activations)."""
    images, _ = batch()
    images.requires_grad_(True)
    model = ri.apply(build(backbone), "lst", reduction=4).train()
    internal: list[torch.Tensor] = []
    hooks = [
        m.register_forward_hook(lambda _m, _a, out: internal.append(out))
        for b in model.blocks
        for name, m in b.base_layer.named_modules()
        if name  # every submodule of a backbone block, not the block itself
    ]
    saved: list[torch.Tensor] = []

    def pack(tensor: torch.Tensor) -> torch.Tensor:
        saved.append(tensor)
        return tensor

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        output = model(images)
    for hook in hooks:
        hook.remove()
    assert output.requires_grad and saved
    internal_storage = {t.untyped_storage().data_ptr() for t in internal if isinstance(t, torch.Tensor)}
    saved_storage = {t.untyped_storage().data_ptr() for t in saved}
    assert internal_storage and not internal_storage & saved_storage


def test_gradient_never_reaches_the_input() -> None:
    images, labels = batch()
    images.requires_grad_(True)
    model = ri.apply(build(), "lst").train()
    torch.nn.functional.cross_entropy(model(images), labels).backward()
    assert images.grad is None
    assert model.blocks[0].peft_down_embed.weight.grad is not None


@pytest.mark.parametrize(
    ("kwargs", "pattern"),
    [
        ({"reduction": 3}, r"lst: embed_dim 32 is not divisible by reduction 3"),
        ({"reduction": 16}, r"lst: side width 2 \(= 32 / 16\) is not divisible by 4 heads; set num_heads"),
        ({"side_layers": (0, 5)}, r"lst: side_layers \[5\] exceed the model's depth \(2 blocks\)"),
        ({"side_layers": (1, 1)}, r"lst: side_layers must be distinct"),
        ({"temperature": 0.0}, r"^lst: config field 'temperature' must be greater than 0, got 0\.0$"),
    ],
)
def test_config_errors(kwargs: dict, pattern: str) -> None:
    model = build(num_heads=4) if kwargs.get("reduction") == 16 else build()
    with pytest.raises(ValueError, match=pattern):
        ri.apply(model, "lst", **kwargs)
