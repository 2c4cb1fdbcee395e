"""RepAdapter: a linear adapter before qkv and fc1, folded into them by structural re-parameterization.

Paper: Towards Efficient Visual Adaption via Structural Re-parameterization (Luo et al., arXiv 2023).
arXiv: https://arxiv.org/abs/2302.08106. Bib key: luo2023towards.

The adapter is a residual bottleneck without a nonlinearity,
$f(x) = x + s\\,(W_u\\,\\mathrm{dropout}(W_d x + b_d) + b_u)$, with a dense down-projection
$W_d \\in \\mathbb{R}^{h \\times d}$ and a group-wise up-projection $W_u \\in \\mathbb{R}^{d \\times h}$:
block-diagonal, each of its $g$ groups maps $h/g$ hidden channels to $d/g$ outputs (the official
code's `Conv1d(h, d, 1, groups=g)`). As in the official ViT code, one adapter transforms the input of
the fused `attn.qkv` projection and one the input of `mlp.fc1` in every block (the LayerNorm output
that the attention, resp. the MLP, reads), with $h = 8$, $g = 2$ and dropout 0.1; `positions=("attn",)`
gives the paper's RepAdapter_attn variant. $s$ is tuned per task in the paper (0.1 ... 10).

Initialization as in the official code: $W_d$ Xavier-uniform, $W_u$ and both biases zero, so $f$
starts as the identity.

Since $f$ is affine, the linear layer $(W_0, b_0)$ that follows absorbs it:
$W_0 f(x) + b_0 = W_0 (I + s W_u W_d) x + b_0 + s W_0 (W_u b_d + b_u)$. Merging writes
$W_0 (I + s W_u W_d)$ and $b_0 + s W_0 (W_u b_d + b_u)$ into the wrapped layer, which then runs
alone. This needs a layer with a bias; layers without one are refused at apply time.
"""

from __future__ import annotations

from typing import Annotated, Literal

import torch
import torch.nn.functional as F
from pydantic import Field, model_validator
from torch import nn

from ..authoring import Dropout, MergeableWrapper, MethodConfig, PositiveInt, Preset, register, replace_module

POSITIONS = {"attn": "attn.qkv", "mlp": "mlp.fc1"}
"""Adapter positions and the layer (relative to a block) whose input each adapter transforms."""


class RepAdapterConfig(MethodConfig):
    """Configuration of RepAdapter."""

    hidden_dim: PositiveInt = 8
    """Hidden width h of the adapter (official: 8)."""
    groups: PositiveInt = 2
    """Groups g of the block-diagonal up-projection (official: 2); must divide h and d."""
    scale: float = 1.0
    """Scale s of the adapter branch (tuned per task in 0.1 ... 10)."""
    dropout: Dropout = 0.1
    """Dropout probability on the hidden features, training only (official: 0.1)."""
    positions: Annotated[tuple[Literal["attn", "mlp"], ...], Field(min_length=1)] = ("attn", "mlp")
    """Adapters in every block: 'attn' (before attn.qkv), 'mlp' (before mlp.fc1); ('attn',) is
    RepAdapter_attn."""

    @model_validator(mode="after")
    def _groups_divide_hidden_dim(self) -> RepAdapterConfig:
        if self.hidden_dim % self.groups:
            raise ValueError(f"groups must divide hidden_dim {self.hidden_dim}, got {self.groups}")
        return self


class RepAdapterLinear(MergeableWrapper):
    """A linear layer that first passes its input through the affine adapter $f$.

    Parameters: `peft_down_weight` ($h \\times d$), `peft_down_bias` ($h$), `peft_up_weight`
    ($g \\times d/g \\times h/g$, the diagonal blocks of $W_u$) and `peft_up_bias` ($d$).

    Args:
        base_layer: The frozen linear layer (with a bias).
        hidden_dim: Hidden width h.
        groups: Groups g of the up-projection.
        scale: Scale s.
        dropout: Dropout probability on the hidden features.
    """

    def __init__(self, base_layer: nn.Linear, hidden_dim: int, groups: int, scale: float, dropout: float) -> None:
        super().__init__(base_layer)
        weight = base_layer.weight
        factory = {"device": weight.device, "dtype": weight.dtype}
        dim = base_layer.in_features
        self.groups = groups
        self.scale = scale
        # Xavier-uniform W_d (official: Conv1d(d, h, 1) weight); zero W_u, b_d, b_u
        self.peft_down_weight = nn.Parameter(nn.init.xavier_uniform_(torch.empty(hidden_dim, dim, **factory)))
        self.peft_down_bias = nn.Parameter(torch.zeros(hidden_dim, **factory))
        self.peft_up_weight = nn.Parameter(torch.zeros(groups, dim // groups, hidden_dim // groups, **factory))
        self.peft_up_bias = nn.Parameter(torch.zeros(dim, **factory))
        self.peft_dropout = nn.Dropout(dropout) if dropout > 0 else nn.Identity()

    def up_weight(self) -> torch.Tensor:
        """Return the dense block-diagonal $W_u$ ($d \\times h$)."""
        return torch.block_diag(*self.peft_up_weight)

    def adapter(self, x: torch.Tensor) -> torch.Tensor:
        """Return $f(x)$ for tokens `x` of width d."""
        hidden = self.peft_dropout(F.linear(x, self.peft_down_weight, self.peft_down_bias))
        # W_u z, group by group: group k maps hidden channels of group k to outputs of group k
        up = torch.einsum("...gk,gok->...go", hidden.unflatten(-1, (self.groups, -1)), self.peft_up_weight)
        # f(x) = x + s (W_u dropout(W_d x + b_d) + b_u)
        return x + self.scale * (up.flatten(-2) + self.peft_up_bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Compute $W_0 f(x) + b_0$."""
        if self.merged:
            return self.base_layer(x)
        # h = W_0 f(x) + b_0
        return self.base_layer(self.adapter(x))

    def fold(self) -> None:
        """Re-parameterize: fold $f$ into the base weight and bias
        (see [`MergeableWrapper`][reference_impls.wrappers.MergeableWrapper])."""
        weight, bias = self.base_layer.weight, self.base_layer.bias
        w0 = weight.detach().clone()
        up = self.up_weight()
        # b = b_0 + s W_0 (W_u b_d + b_u)
        bias.add_((self.scale * (w0 @ (up @ self.peft_down_bias + self.peft_up_bias))).to(bias.dtype))
        # W = W_0 (I + s W_u W_d) = W_0 + s W_0 W_u W_d
        weight.add_((self.scale * (w0 @ up @ self.peft_down_weight)).to(weight.dtype))

    def extra_repr(self) -> str:
        return f"hidden_dim={self.peft_down_weight.shape[0]}, groups={self.groups}, scale={self.scale:g}"


def apply_repadapter(model: nn.Module, config: RepAdapterConfig) -> list[str]:
    """Wrap `attn.qkv` and/or `mlp.fc1` of every block with a
    [`RepAdapterLinear`][reference_impls.methods.repadapter.RepAdapterLinear].

    Args:
        model: A timm vision transformer (already frozen).
        config: The RepAdapter config.

    Returns:
        An empty list: no backbone parameter is trained.

    Raises:
        TypeError: If a block lacks a linear layer at a chosen position.
        ValueError: If such a layer has no bias (the adapter could not be merged into it) or
            `groups` does not divide its input width.
    """
    names = [f"blocks.{index}.{POSITIONS[p]}" for index in range(len(model.blocks)) for p in config.positions]
    layers = {}
    for name in names:
        try:
            layer = model.get_submodule(name)
        except AttributeError:
            layer = None
        if not isinstance(layer, nn.Linear):
            raise TypeError(f"the model has no linear layer {name!r} to put an adapter before")
        if layer.bias is None:
            raise ValueError(
                f"layer {name!r} has no bias, so the adapter's biases could not be merged into it"
            )
        if layer.in_features % config.groups:
            raise ValueError(
                f"groups {config.groups} does not divide the width {layer.in_features} of {name!r}"
            )
        layers[name] = layer
    for name, layer in layers.items():
        wrapper = RepAdapterLinear(layer, config.hidden_dim, config.groups, config.scale, config.dropout)
        replace_module(model, name, wrapper)
    return []


PRESETS = {
    "vtab-1k": Preset(
        {"hidden_dim": 8, "groups": 2, "positions": ("attn", "mlp")},
        source="luo2023towards: the official ViT code (github.com/luogen1996/RepAdapter): h = 8, g = 2, "
        "adapters before qkv and fc1",
        note="The scale s is searched per task (scripts/search_repattn.sh of the official code).",
    ),
}

register("repadapter", RepAdapterConfig, apply_repadapter, mergeable=True, presets=PRESETS)
