"""ProGrad: CoOp trained only along gradients that do not contradict zero-shot CLIP.

Paper: Prompt-aligned Gradient for Prompt Tuning (Zhu et al., ICCV 2023).
arXiv: https://arxiv.org/abs/2205.14865. Bib key: zhu2023prompt.

The prompts, the classifier and what is trained are CoOp's (M context vectors of width d_t:
M * d_t parameters). What changes is the update. Each step computes two gradients of the
context: G_d of the cross-entropy on the labels (the "domain" direction) and G_g of the
Kullback-Leibler divergence from zero-shot CLIP's predictions (hand-written prompts,
"a photo of a {class}.") to the prompted model's (the "general" direction), at temperature T:

    L_ce = CE(p(x), y)
    L_kl = T^2 * KL( softmax(z_zs(x) / T) || softmax(z(x) / T) )
    G_d = dL_ce / dv,   G_g = dL_kl / dv

If they conflict, the component of G_d against G_g is removed; the optimizer then steps with

    G = G_d - lambda * (G_d . G_g / |G_g|^2) * G_g    if G_d . G_g < 0
    G = G_d                                           otherwise

lambda = 1 is the paper's projection (G orthogonal to G_g); the released code also runs
lambda = 0.8 on some datasets.

What is implemented, following the released code (BeierZhu/Prompt-align: trainers/prograd.py
and the `prograd_backward_and_update` of its Dassl fork): CoOp's prompt with M = 16 context
vectors whose last ones start as the words "a photo of a" and the others as zeros (so the
model is not zero-shot CLIP before training, unless M equals the word count), or random ones;
the zero-shot logits use the frozen image features the prompted model uses and the class
features of the hand-written prompt, cached at apply; the projection is made per parameter
tensor (here there is one, the context, so it is the projection of the whole gradient). The
update is `training_step` (call `reference_impls.clip.clip_training_step`); `training_loss` is
L_ce alone, so a loop that only calls `clip_training_loss(...).backward()` trains plain CoOp.

One numerical rule is added: when the prompted model predicts as zero-shot CLIP to rounding
(KL below the dtype's machine epsilon, e.g. with M = 4 from "a photo of a"), G_g counts as zero
and nothing is projected, as the equation says for G_g = 0; otherwise G_g would be rounding
noise and the projection would remove a random component of G_d. Left to the user: the released
code's per-dataset templates (pass `template`) and its optimizer and schedule.
"""

from __future__ import annotations

from typing import Literal

import torch
import torch.nn.functional as F
from torch import nn

from ..authoring import (
    PromptTemplate,
    ClassNames,
    MethodConfig,
    PositiveFloat,
    PositiveInt,
    class_prompts,
    cosine_logits,
    encode_tokens,
    register,
    tokenize,
)

from .coop import CoOpClassifier, CoOpConfig


class ProGradConfig(MethodConfig):
    """Prompt-aligned gradient on given class names: CoOp's prompt, the zero-shot prompt, the
    temperature of the distillation term and the strength of the projection."""

    classnames: ClassNames
    """The class names, in the order of the labels (underscores become spaces)."""
    n_ctx: PositiveInt = 16
    """Number of context vectors M (at least the token count of `init_text`)."""
    init_text: str | None = "a photo of a"
    """The last context vectors start as this text's word embeddings, the others as zeros (the released
    code's initialization); None: all random N(0, init_std^2)."""
    init_std: PositiveFloat = 0.02
    """Standard deviation of the random initialization."""
    class_specific: bool = False
    """One context per class (CSC) instead of one shared by all classes."""
    class_position: Literal["end", "middle", "front"] = "end"
    """Where the class name goes among the context vectors."""
    template: PromptTemplate = "a photo of a {}."
    """The hand-written prompt of zero-shot CLIP, whose predictions give the general direction."""
    temperature: PositiveFloat = 1.0
    """T, the temperature of the KL term (1.0 in the released configurations)."""
    projection: PositiveFloat = 1.0
    """lambda, the fraction of the conflicting component removed (1.0: the paper's projection)."""


def project_gradient(domain: torch.Tensor, general: torch.Tensor, strength: float = 1.0) -> torch.Tensor:
    """ProGrad's update direction from the domain gradient and the general gradient.

    Args:
        domain: G_d, the gradient of the cross-entropy.
        general: G_g, the gradient of the KL term (same shape).
        strength: lambda.

    Returns:
        G_d if G_d . G_g >= 0, else G_d - lambda * (G_d . G_g / |G_g|^2) G_g.
    """
    dot = torch.dot(domain.flatten(), general.flatten())
    if dot >= 0:
        return domain
    # G = G_d - lambda * (G_d . G_g / |G_g|^2) * G_g
    return domain - strength * dot / general.flatten().pow(2).sum() * general


class ProGradClassifier(CoOpClassifier):
    """CoOp's classifier plus zero-shot CLIP's cached class features and ProGrad's update."""

    def __init__(self, model: nn.Module, config: ProGradConfig) -> None:
        words = None
        if config.init_text is not None:
            tokens = tokenize(model, [config.init_text])
            count = int(tokens[0].argmax()) - 1
            if not 1 <= count <= config.n_ctx:
                raise ValueError(f"config field 'init_text' must hold 1 to n_ctx ({config.n_ctx}) tokens, "
                                 f"got {count} in {config.init_text!r}")
            with torch.no_grad():
                words = model.token_embedding(tokens)[0, 1:1 + count]
        super().__init__(model, CoOpConfig(
            classnames=config.classnames, n_ctx=config.n_ctx, init_std=config.init_std,
            class_specific=config.class_specific, class_position=config.class_position))
        if words is not None:
            with torch.no_grad():
                # v_1..v_{M-k} = 0, v_{M-k+1}..v_M = the k word embeddings of init_text
                self.peft_ctx.zero_()
                self.peft_ctx[..., config.n_ctx - words.shape[0]:, :] = words
        self.temperature, self.projection = config.temperature, config.projection
        with torch.no_grad():
            hand_written = encode_tokens(model, tokenize(model, class_prompts(config.template, config.classnames)))
        self.register_buffer("zero_shot_features", hand_written, persistent=False)

    def losses(self, model: nn.Module, images: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """`(L_ce, L_kl)` of a batch."""
        image_features = self.image_features(model, images)
        logits = cosine_logits(model, image_features, self.text_features(model, image_features))
        with torch.no_grad():
            zero_shot = cosine_logits(model, image_features, self.zero_shot_features)
        t = self.temperature
        # L_kl = T^2 * KL( softmax(z_zs / T) || softmax(z / T) ), averaged over the batch
        kl = F.kl_div(F.log_softmax(logits / t, dim=-1), F.log_softmax(zero_shot / t, dim=-1),
                      reduction="batchmean", log_target=True) * t * t
        return F.cross_entropy(logits, labels), kl

    def training_loss(self, model: nn.Module, images: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """L_ce: the loss ProGrad descends (its update is `training_step`'s projected gradient)."""
        return self.losses(model, images, labels)[0]

    def projected_gradients(self, model: nn.Module, images: torch.Tensor,
                            labels: torch.Tensor) -> tuple[torch.Tensor, list[torch.Tensor]]:
        """L_ce and the projected gradient G of every trainable parameter of the classifier."""
        params = [p for p in self.parameters() if p.requires_grad]
        ce, kl = self.losses(model, images, labels)
        # G_g = dL_kl / dv, G_d = dL_ce / dv
        general = torch.autograd.grad(kl, params, retain_graph=True)
        domain = torch.autograd.grad(ce, params)
        if kl.detach() <= torch.finfo(kl.dtype).eps * self.temperature ** 2:
            # the same predictions as zero-shot CLIP to rounding: G_g = 0, not rounding noise
            general = tuple(torch.zeros_like(g) for g in general)
        return ce.detach(), [project_gradient(d, g, self.projection) for d, g in zip(domain, general)]

    def training_step(self, model: nn.Module, images: torch.Tensor, labels: torch.Tensor,
                      optimizer: torch.optim.Optimizer) -> torch.Tensor:
        """One optimizer step along the projected gradient G; returns L_ce before the step."""
        optimizer.zero_grad()
        loss, gradients = self.projected_gradients(model, images, labels)
        for param, gradient in zip([p for p in self.parameters() if p.requires_grad], gradients):
            param.grad = gradient
        optimizer.step()
        return loss


def apply_prograd(model: nn.Module, config: ProGradConfig) -> list[str]:
    """Install ProGrad's classifier as `model.peft_classifier`.

    Args:
        model: An open_clip CLIP model (already frozen).
        config: CoOp's fields, the zero-shot prompt, the temperature and the projection strength.

    Returns:
        An empty list: no backbone parameter is trained.

    """
    model.peft_classifier = ProGradClassifier(model, config)
    return []


register("prograd", ProGradConfig, apply_prograd, mergeable=False, backbone="clip")
