"""CLIP-Adapter-specific checks: the blend f* = alpha A(f) + (1 - alpha) f against a recomputation
by hand on each side, the adapter's shape (the official code's), and alpha = 0."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import reference_impls as ri
from reference_impls.clip import clip_logits, tokenize

from .clip_cases import CLASSNAMES, TOL, build_clip, clip_batch
from .common import perturb


def prompt_features(model: nn.Module) -> torch.Tensor:
    """CLIP's text features of "a photo of a {class}." (open_clip's own encode_text)."""
    return model.encode_text(tokenize(model, [f"a photo of a {name.replace('_', ' ')}." for name in CLASSNAMES]))


def adapted_by_hand(adapter: nn.Module, features: torch.Tensor, alpha: float) -> torch.Tensor:
    """alpha * ReLU(ReLU(f W_1^T) W_2^T) + (1 - alpha) * f, from the adapter's weights."""
    hidden = torch.relu(features @ adapter.peft_down.weight.t())
    return alpha * torch.relu(hidden @ adapter.peft_up.weight.t()) + (1 - alpha) * features


def logits_by_hand(model: nn.Module, images: torch.Tensor, alpha: float) -> torch.Tensor:
    classifier = model.peft_classifier
    image, text = model.encode_image(images), prompt_features(model)
    if classifier.peft_image_adapter is not None:
        image = adapted_by_hand(classifier.peft_image_adapter, image, alpha)
    if classifier.peft_text_adapter is not None:
        text = adapted_by_hand(classifier.peft_text_adapter, text, alpha)
    return model.logit_scale.exp() * F.normalize(image, dim=-1) @ F.normalize(text, dim=-1).t()


@pytest.mark.parametrize("side", ["image", "text", "both"])
def test_logits_follow_the_blend_equation(side: str) -> None:
    alpha = 0.3
    model = ri.apply(build_clip(), "clip-adapter", classnames=CLASSNAMES, side=side, alpha=alpha)
    images, _ = clip_batch(n=3)
    with torch.no_grad():
        perturb(model, scale=0.5)  # away from PyTorch's initialization, so that both ReLUs act
        expected = logits_by_hand(model, images, alpha)
        torch.testing.assert_close(clip_logits(model, images), expected, atol=TOL["zero_shot"], rtol=0.0)
        # the check can fail: zero-shot CLIP gives other logits
        zero_shot = logits_by_hand(model, images, 0.0)
        assert (zero_shot - expected).abs().max() > 1e-6


def test_adapter_is_the_official_bottleneck_without_biases() -> None:
    model = ri.apply(build_clip(), "clip-adapter", classnames=CLASSNAMES)
    adapter = model.peft_classifier.peft_image_adapter
    d = model.text_projection.shape[1]
    assert adapter.peft_down.weight.shape == (d // 4, d) and adapter.peft_down.bias is None
    assert adapter.peft_up.weight.shape == (d, d // 4) and adapter.peft_up.bias is None
    assert model.peft_classifier.peft_text_adapter is None


def test_alpha_zero_builds_no_adapter_and_is_zero_shot_clip() -> None:
    model = ri.apply(build_clip(), "clip-adapter", classnames=CLASSNAMES, side="both", alpha=0.0)
    assert ri.trainable_parameters(model) == 0
    images, _ = clip_batch()
    with torch.no_grad():
        expected = model.logit_scale.exp() * F.normalize(model.encode_image(images), dim=-1) @ F.normalize(
            prompt_features(model), dim=-1).t()
        torch.testing.assert_close(clip_logits(model, images), expected, atol=TOL["zero_shot"], rtol=0.0)


def test_bad_configurations_are_refused() -> None:
    with pytest.raises(ValueError, match=r"clip-adapter: config field 'reduction' \(64\) leaves no hidden unit"):
        ri.apply(build_clip(), "clip-adapter", classnames=CLASSNAMES, reduction=64)
    with pytest.raises(ValueError, match=r"clip-adapter: config field 'alpha' must be less than or equal to 1"):
        ri.apply(build_clip(), "clip-adapter", classnames=CLASSNAMES, alpha=1.5)
    with pytest.raises(ValueError, match=r"clip-adapter: config field 'template' must contain"):
        ri.apply(build_clip(), "clip-adapter", classnames=CLASSNAMES, template="a photo")
