"""CoCoOp-specific checks: the conditioning v_m(x) = v_m + pi(x) against a recomputation by hand,
the Meta-Net's shape, and that every image gets its own prompts."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import reference_impls as ri
from reference_impls.clip import clip_logits, tokenize

from .clip_cases import CLASSNAMES, TOL, build_clip, clip_batch
from .common import perturb

M = 4  # "a photo of a"


def prompt_features(model: nn.Module, ctx: torch.Tensor) -> torch.Tensor:
    """Class features of "[SOS] ctx_1..ctx_M name . [EOS]" for every class name, by hand:
    token embeddings with the context written over the placeholders, then CLIP's text tower."""
    names = [name.replace("_", " ") for name in CLASSNAMES]
    tokens = tokenize(model, [" ".join(["X"] * ctx.shape[0]) + f" {name}." for name in names])
    x = model.token_embedding(tokens).clone()
    x[:, 1:1 + ctx.shape[0]] = ctx
    x = model.transformer(x + model.positional_embedding, attn_mask=model.attn_mask)
    x = model.ln_final(x)[torch.arange(len(names)), tokens.argmax(dim=-1)]
    return x @ model.text_projection


def meta_net_by_hand(model: nn.Module, image_features: torch.Tensor) -> torch.Tensor:
    """pi(x) = W_2 relu(W_1 f/|f| + b_1) + b_2, from the Meta-Net's weights."""
    first, last = model.peft_classifier.peft_meta_net[0], model.peft_classifier.peft_meta_net[2]
    hidden = torch.relu(F.normalize(image_features, dim=-1) @ first.weight.t() + first.bias)
    return hidden @ last.weight.t() + last.bias


def logits_by_hand(model: nn.Module, images: torch.Tensor, with_shift: bool = True) -> torch.Tensor:
    """exp(t) cos(f(x), g(t_c(x))) with t_c(x) built from v_m + pi(x), one image at a time."""
    image_features = model.encode_image(images)
    shifts = meta_net_by_hand(model, image_features)
    rows = []
    for feature, shift in zip(image_features, shifts):
        ctx = model.peft_classifier.peft_ctx + (shift if with_shift else 0.0)
        text = prompt_features(model, ctx)
        rows.append(model.logit_scale.exp() * F.cosine_similarity(feature.unsqueeze(0), text, dim=-1))
    return torch.stack(rows)


def test_logits_follow_the_conditioning_equation() -> None:
    model = ri.apply(build_clip(), "cocoop", classnames=CLASSNAMES)
    with torch.no_grad():
        perturb(model)  # context away from "a photo of a", Meta-Net away from its initialization
        images, _ = clip_batch(n=3)
        expected = logits_by_hand(model, images)
        torch.testing.assert_close(clip_logits(model, images), expected, atol=TOL["zero_shot"], rtol=0.0)
        # the check can fail: without pi(x) the logits differ
        assert (logits_by_hand(model, images, with_shift=False) - expected).abs().max() > 1e-6


def test_the_meta_net_maps_the_image_feature_to_one_token() -> None:
    model = ri.apply(build_clip(), "cocoop", classnames=CLASSNAMES, meta_reduction=4)
    net = model.peft_classifier.peft_meta_net
    embed, width = model.text_projection.shape[1], model.token_embedding.weight.shape[1]
    assert [type(m) for m in net] == [nn.Linear, nn.ReLU, nn.Linear]
    assert (net[0].in_features, net[0].out_features) == (embed, embed // 4)
    assert (net[2].in_features, net[2].out_features) == (embed // 4, width)
    assert model.peft_classifier.peft_ctx.shape == (M, width)


def test_every_image_has_its_own_prompts() -> None:
    model = ri.apply(build_clip(), "cocoop", classnames=CLASSNAMES)
    with torch.no_grad():
        perturb(model)
        images, _ = clip_batch(n=3)
        features = model.peft_classifier.text_features(model, model.encode_image(images))
        assert features.shape == (3, len(CLASSNAMES), model.text_projection.shape[1])
        assert (features[0] - features[1]).abs().max() > 1e-6
        # an image's logits do not depend on the other images of its batch
        one_by_one = torch.cat([clip_logits(model, images[i:i + 1]) for i in range(3)])
        torch.testing.assert_close(clip_logits(model, images), one_by_one, atol=TOL["zero_shot"], rtol=0.0)


def test_without_the_shift_it_is_coop_with_the_same_context() -> None:
    model = ri.apply(build_clip(), "cocoop", classnames=CLASSNAMES)
    coop = ri.apply(build_clip(), "coop", classnames=CLASSNAMES, init_text="a photo of a")
    with torch.no_grad():
        perturb(model)
        model.peft_classifier.peft_meta_net[2].weight.zero_()
        model.peft_classifier.peft_meta_net[2].bias.zero_()
        coop.peft_classifier.peft_ctx.copy_(model.peft_classifier.peft_ctx)
        images, _ = clip_batch()
        torch.testing.assert_close(clip_logits(model, images), clip_logits(coop, images),
                                   atol=TOL["zero_shot"], rtol=0.0)


def test_a_reduction_wider_than_the_feature_is_refused() -> None:
    with pytest.raises(ValueError, match=r"cocoop: config field 'meta_reduction' \(64\) must not exceed"):
        ri.apply(build_clip(), "cocoop", classnames=CLASSNAMES, meta_reduction=64)
