"""VPT on CLIP's image encoder: learnable prompt tokens in the frozen vision tower, zero-shot text side.

Paper: Visual Prompt Tuning (Jia et al., ECCV 2022). arXiv: https://arxiv.org/abs/2203.12119.
Bib key: jia2022visual.

Visual Prompt Tuning (see `vpt.py` for timm ViTs) applied to the image encoder f of CLIP, the class
features staying those of zero-shot CLIP. The official code of MaPLe
(github.com/muzairkhattak/multimodal-prompt-learning, `trainers/vpt.py`) ships this as its "Deep
Vision Prompting" baseline: hand-written text prompts "a photo of a {class}.", prompts in the image
encoder only.

With the class token c, the patch tokens E_0 (after the position embedding and `ln_pre`), the
vision blocks V_1..V_N and p learnable prompts P_i of the vision width d_v:

    VPT-shallow:  [c_1, Z_1, E_1] = V_1([c_0, P, E_0]),  [c_i, Z_i, E_i] = V_i([c_{i-1}, Z_{i-1}, E_{i-1}])
    VPT-deep:     [c_i, _, E_i] = V_i([c_{i-1}, P_{i-1}, E_{i-1}])      (each block gets its own prompts)
    f(x) = LN_post(c_N) W_proj
    logits_ic = exp(t) * cos(f(x_i), g("a photo of a {class_c}."))

Trained: the prompts (p * d_v shallow, N * p * d_v deep). The prompts start from U(-a, a) with
a = sqrt(6 / (3 * patch_h * patch_w + d_v)), as in VPT's code; the MaPLe code's baseline instead
appends N(0, 0.02^2) prompts at the end of the sequence before `ln_pre`. Where they sit in the
sequence makes no difference (the vision tower has no attention mask and prompts get no position
embedding); the defaults (8 tokens, deep) are that baseline's
(configs/trainers/VPT/vit_b16_c2_ep5_batch4_4.yaml).

Implementation: each vision block is wrapped by VPT's
[`PromptedBlock`][reference_impls.methods.vpt.PromptedBlock] (open_clip's vision transformer is
batch-first and has one class token); the wrapper of the last block removes the prompt outputs, so
open_clip's pooling (class token, or mean of the patch tokens) sees the original layout. The class
features do not depend on the image or on anything trained: they are computed once, at apply.
VPT is not mergeable: prompts are extra tokens, not a weight update.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from ..authoring import PromptTemplate, ClassNames, Dropout, MethodConfig, PositiveInt, register, replace_module
from .vpt import PromptedBlock
from .zero_shot_clip import ZeroShotClassifier, ZeroShotClipConfig


class VPTClipConfig(MethodConfig):
    """Visual prompt tuning of CLIP's image encoder on given class names."""

    classnames: ClassNames
    """The class names, in the order of the labels (underscores become spaces)."""
    num_tokens: PositiveInt = 8
    """Number of prompt tokens p (per block for VPT-deep)."""
    deep: bool = True
    """New prompts before every vision block (VPT-deep); False: before the first block only (VPT-shallow)."""
    template: PromptTemplate = "a photo of a {}."
    """The hand-written prompt of a class: `{}` is replaced by its name."""
    dropout: Dropout = 0.0
    """Dropout probability applied to the prompt tokens."""


def _vision_blocks(model: nn.Module) -> nn.ModuleList:
    """The blocks of CLIP's vision transformer; raises for an image encoder VPT does not fit."""
    visual = model.visual
    transformer = getattr(visual, "transformer", None)
    blocks = getattr(transformer, "resblocks", None)
    if not isinstance(blocks, nn.ModuleList) or not isinstance(getattr(visual, "conv1", None), nn.Conv2d):
        raise TypeError("VPT needs a vision-transformer image encoder (open_clip VisionTransformer with "
                        f"conv1 and transformer.resblocks); got {type(visual).__name__}")
    if not getattr(transformer, "batch_first", True):
        raise TypeError("VPT needs a batch-first vision transformer (`transformer.batch_first`)")
    return blocks


def _init_prompt(visual: nn.Module, num_tokens: int) -> torch.Tensor:
    """Uniform Xavier-style init over the patch embedding's fan-in, as VPT's code does."""
    conv = visual.conv1
    width = conv.out_channels
    fan_in = conv.in_channels * math.prod(conv.kernel_size)
    # a = sqrt(6 / (fan_in + d_v)),  P ~ U(-a, a)
    bound = math.sqrt(6.0 / (fan_in + width))
    return torch.empty(num_tokens, width, device=conv.weight.device, dtype=conv.weight.dtype).uniform_(-bound, bound)


def apply_vpt_clip(model: nn.Module, config: VPTClipConfig) -> list[str]:
    """Install the zero-shot classifier and wrap CLIP's vision blocks with prompts.

    Args:
        model: An open_clip CLIP model with a vision-transformer image encoder (already frozen).
        config: The class names, the template and the prompts' number and depth.

    Returns:
        An empty list: no backbone parameter is trained.

        TypeError: If the image encoder is not a batch-first vision transformer.
    """
    blocks = _vision_blocks(model)
    text = ZeroShotClipConfig(classnames=config.classnames, template=config.template)
    model.peft_classifier = ZeroShotClassifier(model, text)
    depth = len(blocks)
    for index in range(depth):
        first, last = index == 0, index == depth - 1
        if not (config.deep or first or last):
            continue
        prompt = _init_prompt(model.visual, config.num_tokens) if (config.deep or first) else None
        block = PromptedBlock(
            blocks[index],
            num_prefix_tokens=1,  # open_clip's vision transformer: one class token
            num_tokens=config.num_tokens,
            prompt=prompt,
            insert=first,
            remove_after=last,
            dropout=config.dropout,
        )
        replace_module(model, f"visual.transformer.resblocks.{index}", block)
    return []


register("vpt-clip", VPTClipConfig, apply_vpt_clip, mergeable=False, backbone="clip")
