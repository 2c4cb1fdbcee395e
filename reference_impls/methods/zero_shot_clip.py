"""Zero-shot CLIP: classify with hand-written prompts, nothing trained.

Paper: Learning Transferable Visual Models From Natural Language Supervision (Radford et al.,
ICML 2021). arXiv: https://arxiv.org/abs/2103.00020. The baseline every vision-language method
here starts from and is compared with.
"""

from __future__ import annotations

import torch
from torch import nn

from ..authoring import PromptTemplate, ClassNames, ClipClassifier, MethodConfig, class_prompts, encode_tokens, register, tokenize



class ZeroShotClipConfig(MethodConfig):
    """Zero-shot CLIP on given class names."""

    classnames: ClassNames
    """The class names, in the order of the labels."""
    template: PromptTemplate = "a photo of a {}."
    """The prompt of a class: `{}` is replaced by its name (underscores become spaces)."""


class ZeroShotClassifier(ClipClassifier):
    """Zero-shot CLIP whose class features are computed once, at apply (nothing here trains)."""

    def __init__(self, model: nn.Module, config: ZeroShotClipConfig) -> None:
        super().__init__(tokenize(model, class_prompts(config.template, config.classnames)))
        self.register_buffer("class_features", encode_tokens(model, self.class_tokens).detach(), persistent=False)

    def text_features(self, model: nn.Module, image_features: torch.Tensor) -> torch.Tensor:
        """The class features cached at apply."""
        return self.class_features


def apply_zero_shot_clip(model: nn.Module, config: ZeroShotClipConfig) -> list[str]:
    """Install the zero-shot classifier as `model.peft_classifier`.

    Args:
        model: An open_clip CLIP model (already frozen).
        config: Class names and prompt template.

    Returns:
        An empty list: nothing is trained.

    """
    model.peft_classifier = ZeroShotClassifier(model, config)
    return []


register("zero-shot-clip", ZeroShotClipConfig, apply_zero_shot_clip, mergeable=False, backbone="clip")
