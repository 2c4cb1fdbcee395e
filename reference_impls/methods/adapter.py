"""Adapter (Houlsby et al.): sequential bottleneck modules after the attention and the MLP.

Paper: Parameter-Efficient Transfer Learning for NLP (Houlsby, Giurgiu, Jastrzebski, Morrone,
de Laroussilhe, Gesmundo, Attariyan and Gelly, ICML 2019).
arXiv: https://arxiv.org/abs/1902.00751. Bib key: houlsby2019parameter.

An adapter maps the output $\\mathbf{h} \\in \\mathbb{R}^d$ of a sub-layer through a bottleneck of
width $m$ and adds it back: $A(\\mathbf{h}) = \\mathbf{h} + W_{up} f(W_{down} \\mathbf{h} + b_{down}) + b_{up}$.
Every transformer block gets one adapter on the output of the attention (after its output
projection) and one on the output of the MLP, each before the sub-layer joins the residual stream:
$\\mathbf{x} \\leftarrow \\mathbf{x} + A(F(\\mathbf{x}))$. The paper also trains the layer
normalizations (`train_norms`).

Implementation: each block's `attn` and `mlp` modules are wrapped by
[`AdapterLayer`][reference_impls.methods.adapter.AdapterLayer], which calls the original sub-layer
and applies the adapter to its output, so the adapter sits inside timm's LayerScale and drop-path
(`x + drop_path(ls(A(F(x))))`); for ViT-B (no LayerScale) and at inference this is exactly the
paper's placement.

Initialization: by default the down-projection starts like `nn.Linear` (Kaiming-uniform) and the
up-projection at zero, so the adapted model equals the backbone exactly. `init="houlsby"` draws
both weights from a truncated normal with standard deviation $10^{-3}$ as the paper's code does
(near, not exactly, the identity).

The configuration counted as "Adapter" (0.16 M parameters) in the VTAB-1k tables of NOAH, FacT and
Convpass is the one of NOAH's code: a single adapter of width 8 on the MLP output of each block,
QuickGELU, layer norms frozen: the preset `"vtab-1k"` (NOAH initializes both weights with Xavier;
the count does not depend on it).

Not mergeable: the nonlinearity inside the bottleneck cannot be folded into the backbone weights.
"""

from __future__ import annotations

import math
from typing import Annotated, Any, Literal

import torch
from pydantic import Field
from torch import nn

from ..authoring import (
    ACTIVATIONS,
    Dropout,
    MethodConfig,
    PositiveInt,
    Preset,
    Wrapper,
    factory_kwargs,
    norm_parameter_names,
    register,
    replace_module,
)


class AdapterConfig(MethodConfig):
    """Configuration of the Houlsby adapter."""

    bottleneck: PositiveInt = 64
    """Bottleneck width m (the paper tries 8, 64 and 256; its code defaults to 64)."""
    positions: Annotated[tuple[Literal["attn", "mlp"], ...], Field(min_length=1)] = ("attn", "mlp")
    """Sub-layers whose output gets an adapter in every block: 'attn', 'mlp' (the paper: both)."""
    activation: Literal["gelu", "quick_gelu", "relu"] = "gelu"
    """Nonlinearity f in the bottleneck (the paper's code: GELU)."""
    dropout: Dropout = 0.0
    """Dropout probability after the nonlinearity."""
    train_norms: bool = True
    """Also train the gain and bias of every LayerNorm, as the paper does."""
    init: Literal["zero-up", "houlsby"] = "zero-up"
    """'zero-up': down-projection Kaiming-uniform, up-projection zero (exact identity at init);
    'houlsby': both weights truncated normal with std 1e-3, as in the paper's code (near identity)."""


class AdapterLayer(Wrapper):
    """A sub-layer (attention or MLP) followed by a bottleneck adapter with a skip connection.

    Parameters: `peft_down` ($m \\times d$ weight, $m$ bias) and `peft_up` ($d \\times m$ weight,
    $d$ bias).

    Args:
        base_layer: The frozen sub-layer; its output has `dim` features.
        dim: Width d of the sub-layer output.
        bottleneck: Bottleneck width m.
        activation: Name of the nonlinearity f (a key of `ACTIVATIONS`).
        dropout: Dropout probability after f.
        init: `"zero-up"` or `"houlsby"` (see [`AdapterConfig`][reference_impls.methods.adapter.AdapterConfig]).
    """

    def __init__(
        self, base_layer: nn.Module, dim: int, bottleneck: int, activation: str, dropout: float, init: str
    ) -> None:
        super().__init__(base_layer)
        factory = factory_kwargs(base_layer)
        self.activation = activation
        self.peft_down = nn.Linear(dim, bottleneck, **factory)
        self.peft_up = nn.Linear(bottleneck, dim, **factory)
        self.peft_dropout = nn.Dropout(dropout) if dropout > 0 else nn.Identity()
        self.reset_adapter_parameters(init)

    @torch.no_grad()
    def reset_adapter_parameters(self, init: str) -> None:
        """Initialize the projections (biases at zero in both schemes)."""
        if init == "houlsby":
            for layer in (self.peft_down, self.peft_up):
                nn.init.trunc_normal_(layer.weight, std=1e-3, a=-2e-3, b=2e-3)
        else:
            nn.init.kaiming_uniform_(self.peft_down.weight, a=math.sqrt(5))
            nn.init.zeros_(self.peft_up.weight)
        nn.init.zeros_(self.peft_down.bias)
        nn.init.zeros_(self.peft_up.bias)

    def adapter(self, h: torch.Tensor) -> torch.Tensor:
        """Return $A(h) = h + W_{up} f(W_{down} h + b_{down}) + b_{up}$."""
        # z = f(W_down h + b_down)
        z = self.peft_dropout(ACTIVATIONS[self.activation](self.peft_down(h)))
        # A(h) = h + W_up z + b_up
        return h + self.peft_up(z)

    def forward(self, x: torch.Tensor, *args: Any, **kwargs: Any) -> torch.Tensor:
        """Compute $A(F(x))$, F being the wrapped sub-layer."""
        return self.adapter(self.base_layer(x, *args, **kwargs))

    def extra_repr(self) -> str:
        return f"activation={self.activation}"


def apply_adapter(model: nn.Module, config: AdapterConfig) -> list[str]:
    """Wrap the `attn` and/or `mlp` module of every block with an [`AdapterLayer`][reference_impls.methods.adapter.AdapterLayer].

    Args:
        model: A timm vision transformer (already frozen).
        config: The adapter config.

    Returns:
        The names of the LayerNorm gains and biases if `train_norms`, else an empty list.

    Raises:
        TypeError: If a block lacks one of the sub-layers named in `positions`.
    """
    for index, block in enumerate(model.blocks):
        missing = [p for p in config.positions if not isinstance(getattr(block, p, None), nn.Module)]
        if missing:
            raise TypeError(f"block {index} ({type(block).__name__}) has no sub-layer {missing}")
    dim = int(model.embed_dim)
    for index, block in enumerate(model.blocks):
        for position in config.positions:
            layer = AdapterLayer(
                getattr(block, position), dim, config.bottleneck, config.activation, config.dropout, config.init
            )
            replace_module(model, f"blocks.{index}.{position}", layer)
    # LN(x) = gamma ⊙ (x - mean(x)) / sqrt(var(x) + eps) + beta: gamma and beta are trained too
    return norm_parameter_names(model) if config.train_norms else []


PRESETS = {
    "vtab-1k": Preset(
        {"bottleneck": 8, "positions": ("mlp",), "activation": "quick_gelu", "train_norms": False},
        source="zhang2022neural: experiments/Adapter/ViT-B_prompt_adapter_8.yaml (ADAPTER_DIM 8 in every block) "
        "of github.com/ZhangYuanhan-AI/NOAH; the 'Adapter' of the VTAB-1k tables of NOAH, Convpass, FacT and later",
        note="NOAH's code initializes both projections Xavier-uniform, which no `init` option reproduces; "
        "the count does not depend on it.",
    ),
}

register("adapter", AdapterConfig, apply_adapter, mergeable=False, presets=PRESETS)
