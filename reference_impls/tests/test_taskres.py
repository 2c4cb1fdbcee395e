"""TaskRes-specific checks: the classifier t' = t + alpha x against a recomputation by hand (from
a residual away from zero), and the residual's start at zero."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

import reference_impls as ri
from reference_impls.clip import clip_logits, tokenize

from .clip_cases import CLASSNAMES, TOL, build_clip, clip_batch
from .common import perturb


def prompt_features(model: nn.Module) -> torch.Tensor:
    """t: CLIP's (unnormalized) text features of "a photo of a {class}." (open_clip's encode_text)."""
    return model.encode_text(tokenize(model, [f"a photo of a {name.replace('_', ' ')}." for name in CLASSNAMES]))


def test_logits_follow_the_residual_equation() -> None:
    alpha = 0.7
    model = ri.apply(build_clip(), "taskres", classnames=CLASSNAMES, alpha=alpha)
    images, _ = clip_batch(n=3)
    with torch.no_grad():
        perturb(model)  # the residual away from zero
        residual = model.peft_classifier.peft_residual
        # t' = t + alpha x, added before the normalization of the cosine (as in the official code)
        classifier = prompt_features(model) + alpha * residual
        expected = model.logit_scale.exp() * F.normalize(model.encode_image(images), dim=-1) @ F.normalize(
            classifier, dim=-1).t()
        torch.testing.assert_close(clip_logits(model, images), expected, atol=TOL["zero_shot"], rtol=0.0)
        # the check can fail: adding the residual to the normalized features gives other logits
        other = F.normalize(prompt_features(model), dim=-1) + alpha * residual
        assert (model.logit_scale.exp() * F.normalize(model.encode_image(images), dim=-1)
                @ F.normalize(other, dim=-1).t() - expected).abs().max() > 1e-6


def test_residual_starts_at_zero_with_one_row_per_class() -> None:
    model = ri.apply(build_clip(), "taskres", classnames=CLASSNAMES)
    residual = model.peft_classifier.peft_residual
    assert residual.shape == (len(CLASSNAMES), model.text_projection.shape[1])
    assert torch.count_nonzero(residual) == 0
    assert ri.trainable_parameters(model) == residual.numel()
