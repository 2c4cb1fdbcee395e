"""KgCoOp-specific checks: L = L_ce + lambda * L_kg against a recomputation by hand, L_kg = 0 at the
hand-written initialization, and the relation to the released code's 1 - cos form."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import reference_impls as ri
from reference_impls.clip import clip_logits, clip_training_loss, tokenize

from .clip_cases import CLASSNAMES, TOL, build_clip, clip_batch
from .common import perturb

NAMES = [name.replace("_", " ") for name in CLASSNAMES]


def text_tower(model: nn.Module, embeddings: torch.Tensor, tokens: torch.Tensor) -> torch.Tensor:
    """CLIP's text tower on token embeddings, written out."""
    x = model.transformer(embeddings + model.positional_embedding, attn_mask=model.attn_mask)
    x = model.ln_final(x)[torch.arange(tokens.shape[0]), tokens.argmax(dim=-1)]
    return x @ model.text_projection


def learned_features(model: nn.Module) -> torch.Tensor:
    """g(t_c) of "[SOS] v_1..v_M name . [EOS]" (unified context, class at the end), by hand."""
    ctx = model.peft_classifier.peft_ctx
    tokens = tokenize(model, [" ".join(["X"] * ctx.shape[0]) + f" {name}." for name in NAMES])
    x = model.token_embedding(tokens).clone()
    x[:, 1:1 + ctx.shape[0]] = ctx
    return text_tower(model, x, tokens)


def hand_written_features(model: nn.Module, template: str) -> torch.Tensor:
    tokens = tokenize(model, [template.format(name) for name in NAMES])
    return model.encode_text(tokens)


@pytest.mark.parametrize("template", ["a photo of a {}.", "a photo of a {}, a type of pet."])
def test_the_training_loss_follows_the_released_codes_equation(template: str) -> None:
    model = ri.apply(build_clip(), "kgcoop", classnames=CLASSNAMES, template=template, weight=3.0)
    with torch.no_grad():
        perturb(model)  # the learned prompt away from the hand-written one
        images, labels = clip_batch()
        w = F.normalize(learned_features(model), dim=-1)
        w_clip = F.normalize(hand_written_features(model, template), dim=-1)
        f = F.normalize(model.encode_image(images), dim=-1)
        logits = model.logit_scale.exp() * f @ w.t()
        # L_kg = 1 - 1/C sum_c cos(w_c, w_c^clip), L = L_ce + lambda L_kg
        l_kg = 1.0 - F.cosine_similarity(w, w_clip, dim=-1).mean()
        expected = F.cross_entropy(logits, labels) + 3.0 * l_kg
        assert l_kg > 1e-6  # the regularizer is active, so the check can fail
        torch.testing.assert_close(clip_training_loss(model, images, labels), expected, atol=TOL["zero_shot"], rtol=0.0)
        torch.testing.assert_close(clip_logits(model, images), logits, atol=TOL["zero_shot"], rtol=0.0)
        # for unit vectors, the same as half the mean squared distance
        half_squared = ((w - w_clip) ** 2).sum(dim=1).mean() / 2
        torch.testing.assert_close(model.peft_classifier.knowledge_loss(learned_features(model)), half_squared,
                                   atol=TOL["zero_shot"], rtol=0.0)


def test_at_the_hand_written_initialization_the_regularizer_is_zero() -> None:
    model = ri.apply(build_clip(), "kgcoop", classnames=CLASSNAMES)  # default weight 8
    images, labels = clip_batch()
    with torch.no_grad():
        classifier = model.peft_classifier
        assert classifier.knowledge_loss(classifier.text_features(model, None)).abs() < 1e-12
        torch.testing.assert_close(clip_training_loss(model, images, labels),
                                   F.cross_entropy(clip_logits(model, images), labels), atol=TOL["zero_shot"], rtol=0.0)


def test_the_regularizer_pulls_the_prompt_back() -> None:
    """From a perturbed context, descending lambda * L_kg alone lowers L_kg (it has a gradient)."""
    model = ri.apply(build_clip(), "kgcoop", classnames=CLASSNAMES)
    with torch.no_grad():
        perturb(model)
    classifier = model.peft_classifier
    optimizer = torch.optim.SGD([classifier.peft_ctx], lr=1e-2)
    before = classifier.knowledge_loss(classifier.text_features(model, None))
    before.backward()
    optimizer.step()
    with torch.no_grad():
        assert classifier.knowledge_loss(classifier.text_features(model, None)) < before


def test_a_template_without_a_slot_is_refused() -> None:
    with pytest.raises(ValueError, match=r"kgcoop: config field 'template' must contain"):
        ri.apply(build_clip(), "kgcoop", classnames=CLASSNAMES, template="a photo")
