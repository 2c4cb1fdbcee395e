"""LoRA: a trainable low-rank update added to frozen linear layers.

Paper: LoRA: Low-Rank Adaptation of Large Language Models (Hu et al., ICLR 2022).
arXiv: https://arxiv.org/abs/2106.09685. Bib key: hu2022lora.

For a frozen weight $W_0 \\in \\mathbb{R}^{d_{out} \\times d_{in}}$ LoRA learns
$A \\in \\mathbb{R}^{r \\times d_{in}}$ and $B \\in \\mathbb{R}^{d_{out} \\times r}$ and computes
$h = W_0 x + \\frac{\\alpha}{r} B A x$. $B$ starts at zero, so the adapted model equals the
backbone at initialization. The update folds into the weight, $W = W_0 + \\frac{\\alpha}{r} B A$,
for zero inference overhead.

timm fuses the query, key and value projections into one `attn.qkv` layer. The targets
`"q"`, `"k"` and `"v"` each get their own $(A, B)$ pair acting on their third of the fused output,
which is what the paper's $W_q$, $W_k$, $W_v$ adaptation means; the target `"qkv"` instead puts
one pair on the whole fused layer.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from ..authoring import (
    Dropout,
    MethodConfig,
    Preset,
    Rank,
    Targets,
    WeightUpdateWrapper,
    output_splits,
    register,
    wrap_linear_targets,
)


class LoRAConfig(MethodConfig):
    """Configuration of LoRA."""

    r: Rank = 8
    """Rank of the update B A."""
    alpha: float = 8.0
    """Scale numerator: the update is multiplied by alpha / r."""
    dropout: Dropout = 0.0
    """Dropout probability on the input of the low-rank branch."""
    targets: Targets = ("q", "v")
    """Layers to adapt in every block: 'q', 'k', 'v' (thirds of the fused attn.qkv), 'qkv', 'proj',
    'fc1', 'fc2', or any dotted suffix of a linear layer's name."""


class LoRALinear(WeightUpdateWrapper):
    """A linear layer with LoRA updates on all of its output or on parts of a fused qkv output.

    Parameters are `peft_lora_A[part]` ($r \\times d_{in}$) and `peft_lora_B[part]`
    ($d_{part} \\times r$), with `part` in `"q"`, `"k"`, `"v"` or `"all"`.

    Args:
        base_layer: The frozen linear layer.
        parts: Parts to adapt (see [`find_linear_targets`][reference_impls.targets.find_linear_targets]).
        r: Rank.
        alpha: Scale numerator.
        dropout: Dropout probability on the branch input.
    """

    def __init__(self, base_layer: nn.Linear, parts: tuple[str, ...], r: int, alpha: float, dropout: float) -> None:
        super().__init__(base_layer)
        weight = base_layer.weight
        factory = {"device": weight.device, "dtype": weight.dtype}
        self.splits = output_splits(base_layer, parts)
        self.scaling = alpha / r
        self.peft_dropout = nn.Dropout(dropout) if dropout > 0 else nn.Identity()
        self.peft_lora_A = nn.ParameterDict()
        self.peft_lora_B = nn.ParameterDict()
        for part, size in self.splits:
            if part in parts:
                self.peft_lora_A[part] = nn.Parameter(torch.empty(r, base_layer.in_features, **factory))
                self.peft_lora_B[part] = nn.Parameter(torch.zeros(size, r, **factory))
        self.reset_lora_parameters()

    def reset_lora_parameters(self) -> None:
        """A: Kaiming-uniform (as `nn.Linear` initializes weights); B: zeros, so the update starts at 0."""
        for part in self.peft_lora_A:
            nn.init.kaiming_uniform_(self.peft_lora_A[part], a=math.sqrt(5))
            nn.init.zeros_(self.peft_lora_B[part])

    def delta_weight(self) -> torch.Tensor:
        """Return the update $\\Delta W$ with the shape of the base weight."""
        rows = []
        weight = self.base_layer.weight
        for part, size in self.splits:
            if part in self.peft_lora_A:
                # ΔW_part = (alpha / r) · B_part A_part
                rows.append(self.scaling * (self.peft_lora_B[part] @ self.peft_lora_A[part]))
            else:
                rows.append(weight.new_zeros(size, weight.shape[1]))
        return torch.cat(rows, dim=0)

    def update(self, x: torch.Tensor, out: torch.Tensor) -> torch.Tensor:
        """Return the low-rank branch output, shaped like the base output `out`."""
        h = self.peft_dropout(x)
        pieces = []
        for part, size in self.splits:
            if part in self.peft_lora_A:
                # Δh_part = (alpha / r) · B_part (A_part x)
                pieces.append(self.scaling * F.linear(F.linear(h, self.peft_lora_A[part]), self.peft_lora_B[part]))
            else:
                pieces.append(out.new_zeros(*out.shape[:-1], size))
        return torch.cat(pieces, dim=-1)

    def extra_repr(self) -> str:
        return f"parts={list(self.peft_lora_A)}, scaling={self.scaling:g}"


def apply_lora(model: nn.Module, config: LoRAConfig) -> list[str]:
    """Wrap every targeted linear layer of the blocks with [`LoRALinear`][reference_impls.methods.lora.LoRALinear].

    Args:
        model: A timm vision transformer (already frozen).
        config: The LoRA config.

    Returns:
        An empty list: no backbone parameter is trained.
    """
    wrap_linear_targets(
        model, config.targets, lambda layer, parts: LoRALinear(layer, parts, config.r, config.alpha, config.dropout)
    )
    return []


PRESETS = {
    "vtab-1k": Preset(
        {"r": 8, "alpha": 8.0, "targets": ("qkv",)},
        source="zhang2022neural: experiments/LoRA/ViT-B_prompt_lora_8.yaml (LORA_DIM 8 in every block) of "
        "github.com/ZhangYuanhan-AI/NOAH, whose LoRA acts on the fused qkv unscaled; the 'LoRA' of the "
        "VTAB-1k tables of NOAH, Convpass, FacT and later papers",
        note="Rank 8 on q and v apart (targets ('q', 'v')) adds the same number of parameters.",
    ),
}

register("lora", LoRAConfig, apply_lora, mergeable=True, presets=PRESETS)
