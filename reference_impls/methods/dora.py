"""DoRA: LoRA applied to the direction of the weight, with a separately learned magnitude.

Paper: DoRA: Weight-Decomposed Low-Rank Adaptation (Liu et al., ICML 2024).
arXiv: https://arxiv.org/abs/2402.09353. Bib key: liu2024dora.

The frozen weight is decomposed into a magnitude and a direction; LoRA updates the direction and
a trainable vector $m$ (one entry per output feature, initialized to the norms of $W_0$'s rows)
rescales it:

$$W' = m \\odot \\frac{W_0 + \\frac{\\alpha}{r} B A}{\\lVert W_0 + \\frac{\\alpha}{r} B A \\rVert_c}$$

where $\\lVert\\cdot\\rVert_c$ is the norm of each output feature's weights (the paper's
column-wise norm, written for $x W$; a row of PyTorch's `(out, in)` weight). With $B = 0$ and
$m = \\lVert W_0 \\rVert_c$ the model equals the backbone at initialization. As in the paper's
Section 4.3, the norm is treated as a constant in the backward pass (`detach_norm`), which saves
memory and leaves the forward pass unchanged. Targets, including the `"q"`, `"k"`, `"v"` thirds
of timm's fused `attn.qkv`, follow LoRA's; only the rows of an
adapted part get a magnitude. Dropout (if any) acts on the input of the low-rank branch only.
"""

from __future__ import annotations

import torch
from torch import nn

from ..authoring import register, wrap_linear_targets
from .lora import LoRAConfig, LoRALinear


class DoRAConfig(LoRAConfig):
    """Configuration of DoRA: LoRA's fields plus the treatment of the norm in the backward pass."""

    detach_norm: bool = True
    """Treat the weight norm as a constant in the backward pass (paper, Section 4.3)."""


class DoRALinear(LoRALinear):
    """A linear layer with a weight-decomposed low-rank update.

    Adds `peft_magnitude[part]` (one entry per output feature of the part) to
    [`LoRALinear`][reference_impls.methods.lora.LoRALinear]'s parameters.

    Args:
        base_layer: The frozen linear layer.
        parts: Parts to adapt.
        r: Rank.
        alpha: Scale numerator.
        dropout: Dropout probability on the low-rank branch input.
        detach_norm: Treat the norm as a constant in the backward pass.
    """

    def __init__(
        self, base_layer: nn.Linear, parts: tuple[str, ...], r: int, alpha: float, dropout: float, detach_norm: bool
    ) -> None:
        super().__init__(base_layer, parts, r, alpha, dropout)
        self.detach_norm = detach_norm
        self.peft_magnitude = nn.ParameterDict()
        with torch.no_grad():
            # m = ||W_0||_c, per output feature
            norms = base_layer.weight.norm(p=2, dim=1)
        start = 0
        for part, size in self.splits:
            if part in self.peft_lora_A:
                self.peft_magnitude[part] = nn.Parameter(norms[start : start + size].clone())
            start += size

    def row_scale(self) -> torch.Tensor:
        """Per-output-feature factor $m / \\lVert W_0 + \\Delta W \\rVert_c$ (1 for rows not adapted)."""
        weight = self.base_layer.weight
        # ||W_0 + (alpha / r) B A||_c
        norms = (weight + self.delta_weight().to(weight.dtype)).norm(p=2, dim=1)
        if self.detach_norm:
            norms = norms.detach()
        pieces, start = [], 0
        for part, size in self.splits:
            if part in self.peft_magnitude:
                # m / ||W_0 + ΔW||_c
                pieces.append(self.peft_magnitude[part] / norms[start : start + size])
            else:
                pieces.append(weight.new_ones(size))
            start += size
        return torch.cat(pieces)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Compute $\\frac{m}{\\lVert W_0 + \\Delta W \\rVert_c} \\odot (W_0 x + \\Delta W\\,\\mathrm{dropout}(x)) + b$."""
        out = self.base_layer(x)
        if self.merged:
            return out
        bias = self.base_layer.bias
        base = out - bias if bias is not None else out
        lora = self.update(x, out)
        # h = m / ||W_0 + ΔW||_c ⊙ (W_0 x + ΔW x) + b
        result = self.row_scale() * (base + lora)
        return result + bias if bias is not None else result

    def fold(self) -> None:
        """Fold the update into the base weight (the bias is unchanged)."""
        weight = self.base_layer.weight
        scale = self.row_scale().to(weight.dtype)
        # W' = m ⊙ (W_0 + ΔW) / ||W_0 + ΔW||_c
        weight.copy_(scale[:, None] * (weight + self.delta_weight().to(weight.dtype)))


def apply_dora(model: nn.Module, config: DoRAConfig) -> list[str]:
    """Wrap every targeted linear layer of the blocks with [`DoRALinear`][reference_impls.methods.dora.DoRALinear].

    Args:
        model: A timm vision transformer (already frozen).
        config: The DoRA config.

    Returns:
        An empty list: no backbone parameter is trained.
    """
    wrap_linear_targets(
        model,
        config.targets,
        lambda layer, parts: DoRALinear(layer, parts, config.r, config.alpha, config.dropout, config.detach_norm),
    )
    return []


register("dora", DoRAConfig, apply_dora, mergeable=True)
