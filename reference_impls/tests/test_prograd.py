"""ProGrad-specific checks: the projection against hand computations, one `clip_training_step`
against gradients computed by hand, and the default training step of the shared hook."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import reference_impls as ri
from reference_impls.clip import clip_logits, clip_training_loss, clip_training_step, tokenize
from reference_impls.methods.prograd import project_gradient

from .clip_cases import CLASSNAMES, TOL, build_clip, clip_batch
from .common import perturb

NAMES = [name.replace("_", " ") for name in CLASSNAMES]


def test_conflicting_gradients_are_projected() -> None:
    domain, general = torch.tensor([1.0, 2.0, -1.0]), torch.tensor([-1.0, 0.0, 1.0])
    # G_d . G_g = -2, |G_g|^2 = 2: G = G_d - (-2 / 2) G_g = G_d + G_g
    torch.testing.assert_close(project_gradient(domain, general), torch.tensor([0.0, 2.0, 0.0]), atol=0.0, rtol=0.0)
    assert torch.dot(project_gradient(domain, general), general) == 0.0  # orthogonal to G_g
    half = project_gradient(domain, general, 0.5)
    torch.testing.assert_close(half, torch.tensor([0.5, 2.0, -0.5]), atol=0.0, rtol=0.0)
    # matrices are treated as flat vectors: G_d . G_g = -4, |G_g|^2 = 8
    d, g = torch.tensor([[3.0, 0.0], [0.0, -1.0]]), torch.tensor([[-2.0, 0.0], [0.0, -2.0]])
    torch.testing.assert_close(project_gradient(d, g), torch.tensor([[2.0, 0.0], [0.0, -2.0]]), atol=0.0, rtol=0.0)


def test_agreeing_or_orthogonal_gradients_are_kept() -> None:
    domain = torch.tensor([1.0, 0.0, 2.0])
    for general in (torch.tensor([1.0, 1.0, 0.0]), torch.tensor([0.0, 5.0, 0.0]), torch.zeros(3)):
        assert torch.equal(project_gradient(domain, general), domain)


def features_by_hand(model: nn.Module) -> tuple[torch.Tensor, torch.Tensor]:
    """Learned class features (context over the "X" placeholders) and zero-shot ones, by hand."""
    ctx = model.peft_classifier.peft_ctx
    tokens = tokenize(model, [" ".join(["X"] * ctx.shape[0]) + f" {name}." for name in NAMES])
    x = model.token_embedding(tokens).clone()
    x[:, 1:1 + ctx.shape[0]] = ctx
    x = model.transformer(x + model.positional_embedding, attn_mask=model.attn_mask)
    learned = model.ln_final(x)[torch.arange(len(NAMES)), tokens.argmax(dim=-1)] @ model.text_projection
    zero_shot = model.encode_text(tokenize(model, [f"a photo of a {name}." for name in NAMES]))
    return learned, zero_shot.detach()


@pytest.mark.parametrize("labels_from", ["zero-shot argmax", "random"])
def test_one_training_step_moves_the_context_along_the_projected_gradient(labels_from: str) -> None:
    t, lam = 2.0, 0.8
    model = ri.apply(build_clip(), "prograd", classnames=CLASSNAMES, n_ctx=8, temperature=t, projection=lam)
    with torch.no_grad():
        perturb(model)  # away from "a photo of a", so that the KL term has a gradient
    images, labels = clip_batch(n=4)
    ctx = model.peft_classifier.peft_ctx
    learned, zero_shot = features_by_hand(model)
    f = F.normalize(model.encode_image(images), dim=-1)
    logits = model.logit_scale.exp() * f @ F.normalize(learned, dim=-1).t()
    zs_logits = (model.logit_scale.exp() * f @ F.normalize(zero_shot, dim=-1).t()).detach()
    if labels_from == "zero-shot argmax":
        labels = zs_logits.argmax(dim=-1)
    # L_kl = T^2 * mean_i sum_c q_ic (log q_ic - log p_ic), q = softmax(z_zs / T), p = softmax(z / T)
    q = torch.softmax(zs_logits / t, dim=-1)
    kl = t * t * (q * (q.log() - torch.log_softmax(logits / t, dim=-1))).sum(dim=-1).mean()
    g_general = torch.autograd.grad(kl, ctx, retain_graph=True)[0]
    g_domain = torch.autograd.grad(F.cross_entropy(logits, labels), ctx)[0]
    dot = (g_domain * g_general).sum()
    conflict = dot < 0
    assert conflict == (labels_from == "zero-shot argmax")  # both branches are exercised
    expected = g_domain - lam * dot / (g_general * g_general).sum() * g_general if conflict else g_domain

    before = ctx.detach().clone()
    optimizer = torch.optim.SGD([ctx], lr=1.0)
    loss = clip_training_step(model, images, labels, optimizer)
    torch.testing.assert_close(before - ctx.detach(), expected, atol=1e-10, rtol=0.0)
    torch.testing.assert_close(loss, F.cross_entropy(logits, labels).detach(), atol=TOL["zero_shot"], rtol=0.0)
    if conflict:  # the check can fail: the plain gradient is another step
        assert (expected - g_domain).abs().max() > 1e-6


def test_the_context_starts_as_zeros_then_the_words() -> None:
    """The released initialization: M - k zero vectors, then the k words of "a photo of a"."""
    model = ri.apply(build_clip(), "prograd", classnames=CLASSNAMES, n_ctx=8)
    words = model.token_embedding(tokenize(model, ["a photo of a"]))[0, 1:5]
    ctx = model.peft_classifier.peft_ctx
    assert torch.equal(ctx[:4], torch.zeros_like(ctx[:4])) and torch.equal(ctx[4:], words)
    images, labels = clip_batch()
    _, kl = model.peft_classifier.losses(model, images, labels)
    assert kl > 1e-6  # not zero-shot CLIP before training: the general direction exists from the start


def test_from_the_hand_written_prompt_itself_the_step_is_plain_cross_entropy() -> None:
    """With M = 4 the context is "a photo of a": the model predicts as zero-shot CLIP, L_kl = 0 and
    G_g = 0 (not rounding noise), so nothing is projected."""
    model = ri.apply(build_clip(), "prograd", classnames=CLASSNAMES, n_ctx=4)
    zero_shot = ri.apply(build_clip(), "zero-shot-clip", classnames=CLASSNAMES)
    images, labels = clip_batch()
    with torch.no_grad():
        torch.testing.assert_close(clip_logits(model, images), clip_logits(zero_shot, images),
                                   atol=TOL["zero_shot"], rtol=0.0)
    ce, kl = model.peft_classifier.losses(model, images, labels)
    assert kl.abs() < 1e-12
    ctx = model.peft_classifier.peft_ctx
    g_domain = torch.autograd.grad(ce, ctx)[0]
    before = ctx.detach().clone()
    clip_training_step(model, images, labels, torch.optim.SGD([ctx], lr=1.0))
    torch.testing.assert_close(before - ctx.detach(), g_domain, atol=1e-12, rtol=0.0)


def test_init_text_longer_than_the_context_is_refused() -> None:
    with pytest.raises(ValueError, match=r"prograd: config field 'init_text' must hold 1 to n_ctx \(2\) tokens"):
        ri.apply(build_clip(), "prograd", classnames=CLASSNAMES, n_ctx=2)


def test_training_steps_lower_the_loss_and_leave_clip_bit_identical() -> None:
    model = ri.apply(build_clip(), "prograd", classnames=CLASSNAMES, init_text=None, n_ctx=4)
    frozen = {k: v.clone() for k, v in model.state_dict().items() if k not in ri.adapter_parameter_names(model)}
    images, labels = clip_batch(n=8)
    optimizer = torch.optim.Adam([p for p in model.parameters() if p.requires_grad], lr=1e-2)
    losses = [clip_training_step(model, images, labels, optimizer).item() for _ in range(5)]
    assert losses[-1] < losses[0], losses
    after = model.state_dict()
    assert all(torch.equal(after[k], v) for k, v in frozen.items())


def test_the_default_training_step_is_loss_backward_step() -> None:
    """The shared hook: for methods that do not override it, one step of `clip_training_loss`."""
    stepped, manual = (ri.apply(build_clip(), "coop", classnames=CLASSNAMES, n_ctx=4) for _ in range(2))
    with torch.no_grad():
        manual.peft_classifier.peft_ctx.copy_(stepped.peft_classifier.peft_ctx)
    images, labels = clip_batch()
    loss = clip_training_step(stepped, images, labels, torch.optim.SGD(stepped.peft_classifier.parameters(), lr=0.1))
    optimizer = torch.optim.SGD(manual.peft_classifier.parameters(), lr=0.1)
    expected = clip_training_loss(manual, images, labels)
    expected.backward()
    optimizer.step()
    assert not loss.requires_grad
    torch.testing.assert_close(loss, expected.detach(), atol=0.0, rtol=0.0)
    torch.testing.assert_close(stepped.peft_classifier.peft_ctx, manual.peft_classifier.peft_ctx, atol=0.0, rtol=0.0)
    with torch.no_grad():
        torch.testing.assert_close(clip_logits(stepped, images), clip_logits(manual, images), atol=0.0, rtol=0.0)


def test_a_template_without_a_slot_is_refused() -> None:
    with pytest.raises(ValueError, match=r"prograd: config field 'template' must contain"):
        ri.apply(build_clip(), "prograd", classnames=CLASSNAMES, template="a photo")
