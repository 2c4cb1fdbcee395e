"""(IA)^3: learned vectors that rescale keys, values and the MLP's hidden activations.

Paper: Few-Shot Parameter-Efficient Fine-Tuning is Better and Cheaper than In-Context Learning
(Liu et al., NeurIPS 2022). arXiv: https://arxiv.org/abs/2205.05638. Bib key: liu2022fewshot.

(IA)^3 ("Infused Adapter by Inhibiting and Amplifying Inner Activations") learns
$l_k, l_v \\in \\mathbb{R}^{d}$ and $l_{ff} \\in \\mathbb{R}^{d_{ff}}$, initialized to ones, and
computes attention with $l_k \\odot K$ and $l_v \\odot V$ and the MLP as
$W_2 (l_{ff} \\odot \\gamma(W_1 x))$. In timm's ViT, $K$ and $V$ are the key and value thirds of
the fused `attn.qkv` output (bias included), and $l_{ff}$ scales the input of `mlp.fc2`. Each
vector folds into a weight: rows of `attn.qkv` (and its bias) for $l_k, l_v$, columns of
`mlp.fc2` for $l_{ff}$.
"""

from __future__ import annotations

import torch
from pydantic import model_validator
from torch import nn

from ..authoring import (
    QKV_PARTS,
    WHOLE,
    MergeableWrapper,
    MethodConfig,
    Targets,
    find_linear_targets,
    output_splits,
    register,
    replace_module,
)


class IA3Config(MethodConfig):
    """Configuration of (IA)^3."""

    targets: Targets = ("k", "v", "fc2")
    """Layers whose output is rescaled ('q', 'k', 'v' thirds of attn.qkv, or any linear layer) or, if
    also listed in `feedforward`, whose input is rescaled."""
    feedforward: tuple[str, ...] = ("fc2",)
    """Targets whose input (the MLP hidden activation) is rescaled instead of the output."""

    @model_validator(mode="after")
    def _feedforward_among_whole_targets(self) -> IA3Config:
        extra = [t for t in self.feedforward if t not in self.targets]
        if extra:
            raise ValueError(f"feedforward entries {extra} must also be in targets {list(self.targets)}")
        sliced = [t for t in self.feedforward if t in QKV_PARTS]
        if sliced:
            raise ValueError(f"feedforward entries {sliced} are output slices; only whole layers can scale their input")
        return self


class IA3Linear(MergeableWrapper):
    """A linear layer whose output parts (or whose input) are rescaled by learned vectors.

    Parameters are `peft_ia3[part]`: one entry per output feature of the part (`"q"`, `"k"`,
    `"v"` or `"all"`), or, with `scale_input`, one entry per input feature (part `"all"`).

    Args:
        base_layer: The frozen linear layer.
        parts: Parts to rescale (see [`find_linear_targets`][reference_impls.targets.find_linear_targets]).
        scale_input: Rescale the input instead of the output.
    """

    def __init__(self, base_layer: nn.Linear, parts: tuple[str, ...], scale_input: bool) -> None:
        super().__init__(base_layer)
        factory = {"device": base_layer.weight.device, "dtype": base_layer.weight.dtype}
        self.scale_input = scale_input
        self.splits = output_splits(base_layer, parts)
        self.peft_ia3 = nn.ParameterDict()
        if scale_input:
            self.peft_ia3[WHOLE] = nn.Parameter(torch.ones(base_layer.in_features, **factory))
        else:
            for part, size in self.splits:
                if part in parts:
                    self.peft_ia3[part] = nn.Parameter(torch.ones(size, **factory))

    def output_scale(self) -> torch.Tensor:
        """The per-output-feature factor: $l$ on rescaled parts, 1 elsewhere."""
        weight = self.base_layer.weight
        return torch.cat([self.peft_ia3[p] if p in self.peft_ia3 else weight.new_ones(n) for p, n in self.splits])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Compute $W (l \\odot x) + b$ (input scaling) or $l \\odot (W x + b)$ (output scaling)."""
        if self.merged:
            return self.base_layer(x)
        if self.scale_input:
            # W_2 (l_ff ⊙ h)
            return self.base_layer(x * self.peft_ia3[WHOLE])
        # l_k ⊙ K, l_v ⊙ V (the query third is left unscaled unless targeted)
        return self.base_layer(x) * self.output_scale()

    def fold(self) -> None:
        """Fold the vectors into the weight: columns for input scaling, rows (and bias) for output scaling."""
        weight, bias = self.base_layer.weight, self.base_layer.bias
        if self.scale_input:
            # W_2' = W_2 diag(l_ff)
            weight.mul_(self.peft_ia3[WHOLE].to(weight.dtype)[None, :])
            return
        scale = self.output_scale().to(weight.dtype)
        # W' = diag(l) W,  b' = l ⊙ b
        weight.mul_(scale[:, None])
        if bias is not None:
            bias.mul_(scale)


def apply_ia3(model: nn.Module, config: IA3Config) -> list[str]:
    """Wrap every targeted linear layer of the blocks with [`IA3Linear`][reference_impls.methods.ia3.IA3Linear].

    Args:
        model: A timm vision transformer (already frozen).
        config: The (IA)^3 config.

    Returns:
        An empty list: no backbone parameter is trained.
    """
    feedforward = set(find_linear_targets(model, config.feedforward)) if config.feedforward else set()
    for name, parts in find_linear_targets(model, config.targets).items():
        replace_module(model, name, IA3Linear(model.get_submodule(name), parts, scale_input=name in feedforward))
    return []


register("ia3", IA3Config, apply_ia3, mergeable=True)
