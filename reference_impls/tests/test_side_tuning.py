"""Side-tuning-specific checks: the blend equation, alpha, a fresh side network, the wrapped patch
embedding, and a clear error when the head runs without side features."""

from __future__ import annotations

import pytest
import torch
from torch import nn

import reference_impls as ri
from reference_impls.methods.side_tuning import SideBlendHead, SideInput

from .common import BACKBONES, batch, build, perturb

backbones = pytest.mark.parametrize("backbone", list(BACKBONES))
SIDES = pytest.mark.parametrize(
    "kwargs",
    [{"width": 8, "depth": 2}, {"side": "mlp", "width": 8, "depth": 2, "pool_size": 4}, {"side": "vit", "width": 8, "depth": 1, "num_heads": 2}],
    ids=["conv", "mlp", "vit"],
)


@backbones
@SIDES
def test_matches_equation(backbone: str, kwargs: dict) -> None:
    images, _ = batch()
    plain = build(backbone)
    model = ri.apply(build(backbone), "side-tuning", **kwargs)
    perturb(model)
    branch = model.peft_side_tuning
    with torch.no_grad():
        features = plain.forward_features(images)
        if hasattr(plain, "head_dist"):
            # distilled: the class and distillation tokens feed their own heads, then are averaged
            bases = [features[:, 0], features[:, 1]]
            heads = [model.head.base_layer, model.head_dist.base_layer]
        else:
            bases, heads = [plain.forward_head(features, pre_logits=True)], [model.head.base_layer]
        side = branch.peft_side(images)
        alpha = torch.sigmoid(branch.peft_alpha)
        # R(x) = alpha B(x) + (1 - alpha) S(x), y = T(R(x))
        expected = sum(h(alpha * b + (1 - alpha) * side) for h, b in zip(heads, bases)) / len(heads)
        torch.testing.assert_close(model(images), expected)


def test_wrapping_and_alpha() -> None:
    model = ri.apply(build("distilled"), "side-tuning", width=8, depth=2)
    assert isinstance(model.patch_embed, SideInput)
    assert isinstance(model.head, SideBlendHead) and isinstance(model.head_dist, SideBlendHead)
    # one side network and one alpha, registered once
    names = [n for n, _ in model.named_parameters() if "peft_" in n]
    assert names and all(n.startswith("peft_side_tuning.") for n in names)
    assert model.peft_side_tuning.alpha().item() == 0.5  # a = 0: an even blend, as the official code
    # timm reads attributes of patch_embed: they fall through the wrapper
    assert model.patch_embed.grid_size == model.patch_embed.base_layer.grid_size


def test_fixed_alpha_is_not_trained_and_can_follow_a_schedule() -> None:
    images, _ = batch()
    model = ri.apply(build(), "side-tuning", width=8, depth=2, alpha_init=2.0, learn_alpha=False)
    assert "peft_side_tuning.peft_alpha" not in dict(model.named_parameters())
    assert abs(model.peft_side_tuning.alpha().item() - torch.sigmoid(torch.tensor(2.0)).item()) < 1e-7
    with torch.no_grad():
        before = model(images)
        model.peft_side_tuning.set_alpha_logit(-1.0)
        assert not torch.allclose(model(images), before)


def test_side_network_is_fresh_and_backbone_builds_no_graph() -> None:
    images, labels = batch()
    model = ri.apply(build(), "side-tuning", side="vit", width=8, depth=1, num_heads=2).train()
    backbone = {p.data_ptr() for n, p in model.named_parameters() if "peft_" not in n}
    assert not backbone & {p.data_ptr() for p in model.peft_side_tuning.parameters()}
    features = []
    hook = model.norm.register_forward_hook(lambda _m, _a, out: features.append(out))
    loss = torch.nn.functional.cross_entropy(model(images), labels)
    hook.remove()
    assert not features[0].requires_grad  # the frozen backbone's output carries no autograd graph
    loss.backward()
    assert model.peft_side_tuning.peft_alpha.grad is not None


def test_head_without_side_features_of_the_batch_is_an_error() -> None:
    images, _ = batch(n=4)
    model = ri.apply(build(), "side-tuning", width=8, depth=2)
    with torch.no_grad():
        features = model.forward_features(images)
        model.forward_head(features)  # the same batch: fine
        other = model.forward_features(images[:2])
        with pytest.raises(RuntimeError, match="the side-tuning head needs the side features of the same batch"):
            model.forward_head(features)
        assert model.forward_head(other).shape == (2, 5)


@pytest.mark.parametrize(
    ("kwargs", "pattern"),
    [
        ({"width": 0}, r"^side-tuning: config field 'width' must be greater than or equal to 1, got 0$"),
        ({"side": "vit", "width": 10, "num_heads": 4}, r"side-tuning: width 10 must be divisible by num_heads 4"),
    ],
)
def test_config_errors(kwargs: dict, pattern: str) -> None:
    with pytest.raises(ValueError, match=pattern):
        ri.apply(build(), "side-tuning", **kwargs)


def test_model_without_patch_embed_is_refused() -> None:
    model = build()
    model.patch_embed = None
    with pytest.raises(ValueError, match="side-tuning: the model has no patch_embed"):
        ri.apply(model, "side-tuning")
    assert isinstance(model.head, nn.Linear)
