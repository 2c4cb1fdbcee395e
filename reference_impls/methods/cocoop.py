"""CoCoOp: CoOp's learned context, shifted for every image by a token a small Meta-Net computes.

Paper: Conditional Prompt Learning for Vision-Language Models (Zhou et al., CVPR 2022).
arXiv: https://arxiv.org/abs/2203.05557. Bib key: zhou2022conditional.

CoOp's M context vectors v_1..v_M become functions of the image x: a Meta-Net h_theta maps the
image feature to one token pi(x) of the text encoder's width, added to every context vector,

    pi(x) = h_theta(f(x)),      h_theta(z) = W_2 ReLU(W_1 z + b_1) + b_2
    v_m(x) = v_m + pi(x)
    t_c(x) = [SOS] v_1(x) ... v_M(x) [CLASS_c] . [EOS]
    p(y = c | x) = softmax_c( exp(tau) * cos(f(x), g(t_c(x))) )

with f the frozen image encoder, g the frozen text encoder and tau CLIP's logit scale. The
Meta-Net is a bottleneck from the image-feature width d_v (CLIP's joint embedding width) to
d_v / 16 to the text width d_t. Trained: the context (M * d_t) and the Meta-Net
(d_v * d_v/16 + d_v/16 + d_v/16 * d_t + d_t).

Implementation notes, following the released code (KaiyangZhou/CoOp, trainers/cocoop.py):
the Meta-Net reads the L2-normalized image feature; the class token sits at the end of one
context shared by all classes; the context starts from the words "a photo of a" (M = 4, the
paper's configuration) or from N(0, 0.02^2); the Meta-Net keeps PyTorch's default
initialization, so pi(x) is not zero at the start and CoCoOp is not zero-shot CLIP before
training. CoOp's prompt assembly is reused. Because every image has its own prompts, the text
encoder runs batch * classes sequences per forward pass (CoOp: classes).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ..authoring import ClassNames, MethodConfig, PositiveFloat, PositiveInt, encode_token_embeddings, register

from .coop import CoOpClassifier, CoOpConfig


class CoCoOpConfig(MethodConfig):
    """Conditional context optimization on given class names."""

    classnames: ClassNames
    """The class names, in the order of the labels (underscores become spaces)."""
    n_ctx: PositiveInt = 4
    """Number of context vectors M (ignored when `init_text` is given: its token count is used)."""
    init_text: str | None = "a photo of a"
    """Start the context from the word embeddings of this text; None: random N(0, init_std^2)."""
    init_std: PositiveFloat = 0.02
    """Standard deviation of the random initialization."""
    meta_reduction: PositiveInt = 16
    """The Meta-Net's hidden width is the image-feature width divided by this (integer division)."""


def image_feature_width(model: nn.Module) -> int:
    """Width of CLIP's image (and text) features: the output width of the text projection."""
    projection = model.text_projection
    return int(projection.out_features if isinstance(projection, nn.Linear) else projection.shape[1])


class CoCoOpClassifier(CoOpClassifier):
    """CoOp's classifier whose context is shifted per image by the Meta-Net `peft_meta_net`."""

    def __init__(self, model: nn.Module, config: CoCoOpConfig) -> None:
        coop = CoOpConfig(classnames=config.classnames, n_ctx=config.n_ctx, init_text=config.init_text,
                          init_std=config.init_std)
        vision = image_feature_width(model)
        hidden = vision // config.meta_reduction
        if hidden < 1:
            raise ValueError(f"config field 'meta_reduction' ({config.meta_reduction}) must not exceed the "
                             f"image-feature width ({vision})")
        super().__init__(model, coop)
        weight = model.token_embedding.weight
        kwargs = {"device": weight.device, "dtype": weight.dtype}
        width = weight.shape[1]
        self.peft_meta_net = nn.Sequential(
            nn.Linear(vision, hidden, **kwargs), nn.ReLU(), nn.Linear(hidden, width, **kwargs))

    def text_features(self, model: nn.Module, image_features: torch.Tensor) -> torch.Tensor:
        """`(batch, classes, d)` class features of every image's own prompts."""
        # pi(x) = h_theta(f(x) / |f(x)|)
        shift = self.peft_meta_net(F.normalize(image_features, dim=-1))
        # v_m(x) = v_m + pi(x), for each image of the batch: (batch, M, width)
        ctx = self.peft_ctx.unsqueeze(0) + shift.unsqueeze(1)
        # t_c(x) = [SOS] v_1(x) .. v_M(x) [CLASS_c] . [EOS], all images' prompts in one batch
        prompts = torch.cat([self.assemble(ctx_i) for ctx_i in ctx], dim=0)
        batch, classes = ctx.shape[0], self.class_tokens.shape[0]
        features = encode_token_embeddings(model, prompts, self.class_tokens.repeat(batch, 1))
        return features.view(batch, classes, -1)


def apply_cocoop(model: nn.Module, config: CoCoOpConfig) -> list[str]:
    """Install CoCoOp's classifier as `model.peft_classifier`.

    Args:
        model: An open_clip CLIP model (already frozen).
        config: The class names, the context's size and initialization, the Meta-Net's reduction.

    Returns:
        An empty list: no backbone parameter is trained.
    """
    model.peft_classifier = CoCoOpClassifier(model, config)
    return []


register("cocoop", CoCoOpConfig, apply_cocoop, mergeable=False, backbone="clip")
