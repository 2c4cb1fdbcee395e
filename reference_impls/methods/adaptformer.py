"""AdaptFormer: a scaled bottleneck branch in parallel to the MLP of every block.

Paper: AdaptFormer: Adapting Vision Transformers for Scalable Visual Recognition (Chen, Ge, Tong,
Wang, Song, Wang and Luo, NeurIPS 2022). arXiv: https://arxiv.org/abs/2205.13535.
Bib key: chen2022adaptformer.

With $\\mathbf{x}'_\\ell$ the tokens after the attention sub-block of block $\\ell$, the AdaptMLP
branch reads $\\mathbf{x}'_\\ell$ (not layer-normalized, as in the official code),
$\\tilde{\\mathbf{x}}_\\ell = \\mathrm{ReLU}(\\mathbf{x}'_\\ell W_{down} + b_{down}) W_{up} + b_{up}$, and
its output, scaled by a fixed $s$, is added beside the frozen MLP:
$\\mathbf{x}_\\ell = \\mathbf{x}'_\\ell + \\mathrm{MLP}(\\mathrm{LN}(\\mathbf{x}'_\\ell)) + s \\cdot \\tilde{\\mathbf{x}}_\\ell$.
$W_{down}$ starts Kaiming-uniform, $W_{up}$ and both biases at zero, so the adapted model equals the
backbone at initialization. The official code uses width 64, $s = 0.1$ and dropout 0.1 after the ReLU.

Implementation: the branch input $\\mathbf{x}'_\\ell$ exists only inside the block, so each block is
wrapped by [`AdaptFormerBlock`][reference_impls.methods.adaptformer.AdaptFormerBlock], whose
forward runs the block's own sub-modules in the order of timm's `Block.forward` (norm1, attn,
ls1, drop_path1, norm2, mlp, ls2, drop_path2) and adds the branch; blocks whose `forward` is not
timm's pre-norm `Block.forward` are refused. As in the official code the branch is added outside
the MLP's drop-path (and LayerScale).

The VTAB-1k tables of NOAH, Convpass, FacT and later papers count AdaptFormer at 0.16 M
(0.157 M) parameters: that is width 8 (the preset `"vtab-1k"`), not the paper's 64.

Not mergeable: the ReLU between the projections prevents folding the branch into the MLP.
"""

from __future__ import annotations

import math
from typing import Any

import torch
import torch.nn.functional as F
from timm.models.vision_transformer import Block
from torch import nn

from ..authoring import Dropout, MethodConfig, PositiveInt, Preset, Wrapper, factory_kwargs, register, replace_module


class AdaptFormerConfig(MethodConfig):
    """Configuration of AdaptFormer."""

    bottleneck: PositiveInt = 64
    """Width of the AdaptMLP bottleneck (paper and code: 64)."""
    scale: float = 0.1
    """Fixed scale s of the branch output (official code: 0.1)."""
    dropout: Dropout = 0.1
    """Dropout probability after the ReLU (official code: 0.1)."""


class AdaptFormerBlock(Wrapper):
    """A timm pre-norm `Block` with an AdaptMLP branch beside its MLP.

    Parameters: `peft_down` ($\\hat d \\times d$ weight, $\\hat d$ bias) and `peft_up`
    ($d \\times \\hat d$ weight, $d$ bias).

    Args:
        base_layer: The frozen timm `Block` (its `forward` must be timm's `Block.forward`).
        dim: Token width d.
        bottleneck: Bottleneck width $\\hat d$.
        scale: Scale s of the branch output.
        dropout: Dropout probability after the ReLU.
    """

    def __init__(self, base_layer: nn.Module, dim: int, bottleneck: int, scale: float, dropout: float) -> None:
        super().__init__(base_layer)
        factory = factory_kwargs(base_layer.mlp)
        self.scale = scale
        self.peft_down = nn.Linear(dim, bottleneck, **factory)
        self.peft_up = nn.Linear(bottleneck, dim, **factory)
        self.peft_dropout = nn.Dropout(dropout) if dropout > 0 else nn.Identity()
        self.reset_adaptformer_parameters()

    @torch.no_grad()
    def reset_adaptformer_parameters(self) -> None:
        """Down-projection Kaiming-uniform, up-projection and biases zero (the official 'lora' init)."""
        nn.init.kaiming_uniform_(self.peft_down.weight, a=math.sqrt(5))
        nn.init.zeros_(self.peft_down.bias)
        nn.init.zeros_(self.peft_up.weight)
        nn.init.zeros_(self.peft_up.bias)

    def branch(self, x: torch.Tensor) -> torch.Tensor:
        """Return $s \\cdot \\tilde{x}$ for the post-attention tokens `x`."""
        # x̃ = ReLU(x' W_down + b_down) W_up + b_up
        tilde = self.peft_up(self.peft_dropout(F.relu(self.peft_down(x))))
        return self.scale * tilde

    def forward(self, x: torch.Tensor, *args: Any, **kwargs: Any) -> torch.Tensor:
        """Run the block with the branch; extra arguments (`attn_mask`, ...) go to the attention."""
        block = self.base_layer
        # x' = x + Attn(LN_1(x))   (timm's Block.forward, first line)
        x = x + block.drop_path1(block.ls1(block.attn(block.norm1(x), *args, **kwargs)))
        # x_ℓ = x' + MLP(LN_2(x')) + s · x̃
        return x + block.drop_path2(block.ls2(block.mlp(block.norm2(x)))) + self.branch(x)

    def extra_repr(self) -> str:
        return f"scale={self.scale:g}"


def apply_adaptformer(model: nn.Module, config: AdaptFormerConfig) -> list[str]:
    """Wrap every block with an [`AdaptFormerBlock`][reference_impls.methods.adaptformer.AdaptFormerBlock].

    Args:
        model: A timm vision transformer (already frozen).
        config: The AdaptFormer config.

    Returns:
        An empty list: no backbone parameter is trained.

    Raises:
        TypeError: If a block is not a timm pre-norm `Block` (its forward is overridden or absent).
    """
    for index, block in enumerate(model.blocks):
        if not isinstance(block, Block) or type(block).forward is not Block.forward:
            raise TypeError(
                f"block {index} is {type(block).__name__}; only timm's pre-norm "
                f"vision_transformer.Block (x + attn(norm1(x)), then x + mlp(norm2(x))) is supported"
            )
    dim = int(model.embed_dim)
    for index, block in enumerate(model.blocks):
        wrapper = AdaptFormerBlock(block, dim, config.bottleneck, config.scale, config.dropout)
        replace_module(model, f"blocks.{index}", wrapper)
    return []


PRESETS = {
    "vtab-1k": Preset(
        {"bottleneck": 8},
        source="jie2022convolutional Sec. 4.1 and jie2023fact Table 1: AdaptFormer with hidden dimension 8 "
        "in the VTAB-1k tables of Convpass, FacT and later papers",
        note="The scale s is searched per task there; the paper itself uses width 64.",
    ),
}

register("adaptformer", AdaptFormerConfig, apply_adaptformer, mergeable=False, presets=PRESETS)
