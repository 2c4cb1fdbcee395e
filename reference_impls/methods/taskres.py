"""TaskRes: a learned residual added to CLIP's zero-shot text classifier, both encoders frozen.

Paper: Task Residual for Tuning Vision-Language Models (Yu et al., CVPR 2023).
arXiv: https://arxiv.org/abs/2211.10277. Bib key: yu2023task.
Official code: https://github.com/geekyutao/TaskRes (`trainers/taskres.py`).

The zero-shot classifier t (one text feature per class, from the hand-written prompts) stays
frozen; the classifier of the task adds a learnable "task residual" x of the same shape, scaled
by alpha:

    t'_c = t_c + alpha * x_c
    p(y = c | x) = softmax_c( exp(tau) * cos(f(x), t'_c) )

x starts at zero, so before training the model is exactly zero-shot CLIP. Only x is trained
(cross-entropy on the few-shot data).

From the official code: the residual is added to the unnormalized text features (normalization
comes with the cosine), x is initialized to zeros, and alpha is 0.5 in its few-shot scripts
(1.0 for Flowers102; the config default there is 1.0). The paper's "enhanced base" variant
starts from a stronger classifier t than the zero-shot one; it is not implemented here.

Implementation: t is computed once at apply (a buffer); a forward pass runs the image encoder
only.

Trainable parameters: K d (K classes, d: CLIP's embedding width). Not registered as mergeable:
nothing of the CLIP model changes, and the learned classifier t + alpha x is already a plain
(K, d) matrix, as cheap at inference as zero-shot CLIP's.
"""

from __future__ import annotations

import torch
from torch import nn

from ..authoring import (
    PromptTemplate,
    ClassNames,
    ClipClassifier,
    MethodConfig,
    PositiveFloat,
    class_prompts,
    encode_tokens,
    register,
    tokenize,
)



class TaskResConfig(MethodConfig):
    """Task residual tuning on given class names."""

    classnames: ClassNames
    """The class names, in the order of the labels (underscores become spaces)."""
    template: PromptTemplate = "a photo of a {}."
    """The hand-written prompt of a class, giving the frozen base classifier: `{}` is replaced by
    its name."""
    alpha: PositiveFloat = 0.5
    """Scale of the task residual (the official few-shot scripts: 0.5; 1.0 for Flowers102)."""


class TaskResClassifier(ClipClassifier):
    """CLIP whose text classifier is the zero-shot one plus a learned residual (`peft_residual`)."""

    def __init__(self, model: nn.Module, config: TaskResConfig) -> None:
        super().__init__(tokenize(model, class_prompts(config.template, config.classnames)))
        with torch.no_grad():
            base = encode_tokens(model, self.class_tokens)
        self.register_buffer("base_features", base, persistent=False)
        self.alpha = config.alpha
        self.peft_residual = nn.Parameter(torch.zeros_like(base))

    def text_features(self, model: nn.Module, image_features: torch.Tensor) -> torch.Tensor:
        """The classifier of the task: the frozen zero-shot features plus the scaled residual."""
        # t' = t + alpha * x
        return self.base_features + self.alpha * self.peft_residual


def apply_taskres(model: nn.Module, config: TaskResConfig) -> list[str]:
    """Install TaskRes' classifier as `model.peft_classifier`.

    Args:
        model: An open_clip CLIP model (already frozen).
        config: Class names, prompt template and residual scale.

    Returns:
        An empty list: no backbone parameter is trained.

    """
    model.peft_classifier = TaskResClassifier(model, config)
    return []


register("taskres", TaskResConfig, apply_taskres, mergeable=False, backbone="clip")
