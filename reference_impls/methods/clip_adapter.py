"""CLIP-Adapter: a bottleneck MLP on CLIP's output features, blended with them by a residual ratio.

Paper: CLIP-Adapter: Better Vision-Language Models with Feature Adapters (Gao et al., IJCV 2024).
arXiv: https://arxiv.org/abs/2110.04544. Bib key: gao2024clip.
Official code: https://github.com/gaopengcuhk/CLIP-Adapter (`clip_adapter.py`).

Both encoders stay frozen. A feature adapter A is a two-layer bottleneck MLP (width d / rho)
whose output is mixed with the frozen feature f by the residual ratio alpha:

    A(f) = ReLU(ReLU(f W_1) W_2)                W_1: d x d/rho,  W_2: d/rho x d,  no biases
    f*   = alpha * A(f) + (1 - alpha) * f
    p(y = c | x) = softmax_c( exp(t) * cos(f*(x), g_c) )

with g_c the text feature of the hand-written prompt of class c ("a photo of a {class}.") and t
CLIP's logit scale. The adapter acts on the image feature (`side="image"`, the setting of the
official code), on every class feature g_c (`side="text"`, the same form with its own weights),
or on both (`side="both"`, one adapter each). Only the adapters are trained (cross-entropy).

From the official code: rho = 4, no biases, a ReLU after each layer, alpha = 0.2, the blend on
the unnormalized features, PyTorch's default `nn.Linear` initialization. With alpha = 0 the model
is exactly zero-shot CLIP.

Implementation: the class features of the prompts depend neither on the image nor on anything
trained (the text adapter acts after the encoder), so the frozen text encoder runs once, at
apply; a forward pass runs the image encoder only.

Trainable parameters: 2 d^2 / rho per adapted side (d: CLIP's embedding width), d^2 / 2 for
rho = 4. Not mergeable: the adapter is a nonlinear branch after the encoders, not a weight update.
"""

from __future__ import annotations

from typing import Annotated, Literal

import torch
import torch.nn.functional as F
from pydantic import Field
from torch import nn

from ..authoring import (
    PromptTemplate,
    ClassNames,
    ClipClassifier,
    MethodConfig,
    PositiveInt,
    class_prompts,
    encode_tokens,
    register,
    tokenize,
)



class ClipAdapterConfig(MethodConfig):
    """CLIP-Adapter on given class names."""

    classnames: ClassNames
    """The class names, in the order of the labels (underscores become spaces)."""
    template: PromptTemplate = "a photo of a {}."
    """The hand-written prompt of a class: `{}` is replaced by its name."""
    side: Literal["image", "text", "both"] = "image"
    """Which features get an adapter: the image feature, the class (text) features, or both."""
    reduction: PositiveInt = 4
    """Reduction factor rho: the bottleneck width is d // rho (the official code: 4)."""
    alpha: Annotated[float, Field(ge=0.0, le=1.0)] = 0.2
    """Residual ratio: the weight of the adapted feature in the blend (the official code: 0.2;
    0 is zero-shot CLIP, and then no adapter is built)."""


class FeatureAdapter(nn.Module):
    """The bottleneck MLP A(f) = ReLU(ReLU(f W_1) W_2), without biases.

    Args:
        dim: Feature width d.
        bottleneck: Hidden width d // rho.
        like: A tensor whose device and dtype the weights take.
    """

    def __init__(self, dim: int, bottleneck: int, like: torch.Tensor) -> None:
        super().__init__()
        self.peft_down = nn.Linear(dim, bottleneck, bias=False, device=like.device, dtype=like.dtype)
        self.peft_up = nn.Linear(bottleneck, dim, bias=False, device=like.device, dtype=like.dtype)

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        """`(..., d)` adapted features (not yet blended)."""
        # A(f) = ReLU(ReLU(f W_1) W_2)
        return F.relu(self.peft_up(F.relu(self.peft_down(features))))


class ClipAdapterClassifier(ClipClassifier):
    """CLIP with feature adapters (`peft_image_adapter`, `peft_text_adapter`) after the frozen encoders."""

    def __init__(self, model: nn.Module, config: ClipAdapterConfig) -> None:
        super().__init__(tokenize(model, class_prompts(config.template, config.classnames)))
        with torch.no_grad():
            class_features = encode_tokens(model, self.class_tokens)
        self.register_buffer("class_features", class_features, persistent=False)
        dim = class_features.shape[-1]
        bottleneck = dim // config.reduction
        if bottleneck < 1:
            raise ValueError(f"config field 'reduction' ({config.reduction}) leaves no hidden unit of the "
                             f"{dim}-wide features")
        self.alpha = config.alpha
        # with alpha = 0 an adapter's output would be multiplied by zero: none is built
        sides = set() if config.alpha == 0 else {"image", "text"} if config.side == "both" else {config.side}
        self.peft_image_adapter = FeatureAdapter(dim, bottleneck, class_features) if "image" in sides else None
        self.peft_text_adapter = FeatureAdapter(dim, bottleneck, class_features) if "text" in sides else None

    def blend(self, adapter: FeatureAdapter | None, features: torch.Tensor) -> torch.Tensor:
        """The features blended with their adapted version (unchanged without an adapter)."""
        if adapter is None:
            return features
        # f* = alpha * A(f) + (1 - alpha) * f
        return self.alpha * adapter(features) + (1.0 - self.alpha) * features

    def image_features(self, model: nn.Module, images: torch.Tensor) -> torch.Tensor:
        """The frozen image features, adapted on the image side."""
        return self.blend(self.peft_image_adapter, model.encode_image(images))

    def text_features(self, model: nn.Module, image_features: torch.Tensor) -> torch.Tensor:
        """The class features cached at apply, adapted on the text side."""
        return self.blend(self.peft_text_adapter, self.class_features)


def apply_clip_adapter(model: nn.Module, config: ClipAdapterConfig) -> list[str]:
    """Install CLIP-Adapter's classifier as `model.peft_classifier`.

    Args:
        model: An open_clip CLIP model (already frozen).
        config: Class names, prompt template, adapted side, reduction and residual ratio.

    Returns:
        An empty list: no backbone parameter is trained.

    Raises:
        ValueError: If the reduction leaves no hidden unit.
    """
    model.peft_classifier = ClipAdapterClassifier(model, config)
    return []


register("clip-adapter", ClipAdapterConfig, apply_clip_adapter, mergeable=False, backbone="clip")
