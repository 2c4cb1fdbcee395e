"""KgCoOp: CoOp whose learned class features are kept close to those of the hand-written prompt.

Paper: Visual-Language Prompt Tuning with Knowledge-guided Context Optimization (Yao et al.,
CVPR 2023). arXiv: https://arxiv.org/abs/2303.13283. Bib key: yao2023visual.

The prompts, the classifier and what is trained are CoOp's (M context vectors of width d_t:
M * d_t parameters, or C * M * d_t with class-specific context). The training loss adds how far
the class features w_c = g(t_c) of the learned prompts have moved from the features w_c^clip of
zero-shot CLIP's hand-written prompt ("a photo of a {class}."), as the released code computes it
(trainers/kgcoop.py of htyao89/KgCoOp):

    L_kg = 1 - 1/C * sum_c cos(w_c, w_c^clip)
    L = L_ce + lambda * L_kg

For unit vectors this is half the mean squared distance, 1/(2C) * sum_c |w_c - w_c^clip|^2.
Nothing is added at inference: the classifier is CoOp's. With the context initialized from the
words of the hand-written prompt ("a photo of a", the released configuration), the learned
prompt is that prompt before training, so the logits are zero-shot CLIP's and L_kg = 0.

The hand-written prompts' features are computed once, at apply, and cached (a buffer). The
default lambda = 8.0 is the weight the README's example command passes. The released code takes
the hand-written prompt per dataset (e.g. "a photo of a {}, a type of pet." for Oxford Pets);
pass it as `template`. The paper's own equations were not consulted here.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ..authoring import PromptTemplate, PositiveFloat, class_prompts, cosine_logits, encode_tokens, register, tokenize

from .coop import CoOpClassifier, CoOpConfig


class KgCoOpConfig(CoOpConfig):
    """Knowledge-guided context optimization on given class names (CoOp's fields, plus the
    hand-written prompt and the weight of the regularizer)."""

    init_text: str | None = "a photo of a"
    """Start the context from the word embeddings of this text (None: random N(0, init_std^2))."""
    template: PromptTemplate = "a photo of a {}."
    """The hand-written prompt whose class features the learned ones are kept close to (`{}`: class name)."""
    weight: PositiveFloat = 8.0
    """lambda, the weight of L_kg in the training loss."""


class KgCoOpClassifier(CoOpClassifier):
    """CoOp's classifier plus the cached hand-written class features `clip_features`."""

    def __init__(self, model: nn.Module, config: KgCoOpConfig) -> None:
        super().__init__(model, config)
        self.weight = config.weight
        with torch.no_grad():
            hand_written = encode_tokens(model, tokenize(model, class_prompts(config.template, config.classnames)))
        # w_c^clip, normalized
        self.register_buffer("clip_features", F.normalize(hand_written, dim=-1), persistent=False)

    def knowledge_loss(self, text_features: torch.Tensor) -> torch.Tensor:
        """L_kg of the learned class features `text_features` (classes, d), not normalized."""
        # L_kg = 1 - 1/C * sum_c cos(w_c, w_c^clip)   (clip_features are already unit vectors)
        return 1.0 - (F.normalize(text_features, dim=-1) * self.clip_features).sum(dim=-1).mean()

    def training_loss(self, model: nn.Module, images: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """L = L_ce + lambda * L_kg, the class features computed once for both terms."""
        image_features = self.image_features(model, images)
        text_features = self.text_features(model, image_features)
        logits = cosine_logits(model, image_features, text_features)
        # L = L_ce + lambda * L_kg
        return F.cross_entropy(logits, labels) + self.weight * self.knowledge_loss(text_features)


def apply_kgcoop(model: nn.Module, config: KgCoOpConfig) -> list[str]:
    """Install KgCoOp's classifier as `model.peft_classifier`.

    Args:
        model: An open_clip CLIP model (already frozen).
        config: CoOp's fields, the hand-written prompt and the regularizer's weight.

    Returns:
        An empty list: no backbone parameter is trained.

    """
    model.peft_classifier = KgCoOpClassifier(model, config)
    return []


register("kgcoop", KgCoOpConfig, apply_kgcoop, mergeable=False, backbone="clip")
