"""LST: a narrow side transformer fed by gated down-projections ("ladders") of the frozen backbone.

Paper: LST: Ladder Side-Tuning for Parameter and Memory Efficient Transfer Learning
(Sung, Cho and Bansal, NeurIPS 2022). arXiv: https://arxiv.org/abs/2206.06522. Bib key: sung2022lst.

The side network has one transformer layer per backbone layer at width $d/r$ (reduction factor
$r$, 8 in the released scripts). Its stream starts from the down-projected token embeddings,
$h^S_0 = h^B_0 W^{down}_0 + b^{down}_0$, and before side layer $i$ the output $h^B_i$ of
backbone layer $i$ is projected down and mixed in with a learned gate:

$z_i = \\mu_i h^S_{i-1} + (1 - \\mu_i)\\, (h^B_i W^{down}_i + b^{down}_i)$, $h^S_i = f^S_i(z_i)$,
$\\mu_i = \\sigma(\\alpha_i / T)$, $\\alpha_i$ starting at 0 and $T = 0.1$.

The last side state is normalized by the side network's own final norm and projected back to
width $d$: $\\hat h = W^{up} \\mathrm{LN}^S(h^S_L) + b^{up}$ replaces the backbone's output, and
the model's pooling and classifier head read it directly. The backbone's final norm (`norm`, or
`fc_norm` after pooling) is bypassed, because the official code feeds the up-projected side state
straight to the output head: in `seq2seq/third_party/models/t5/modeling_side_t5.py` of
github.com/ylsung/Ladder-Side-Tuning (commit 1798e82), `T5Stack.forward` applies
`final_side_layer_norm` to the side stream (line 1311) and
`T5ForConditionalGeneration.forward` applies `side_final_upsample` and then `lm_head`
(lines 2031-2055), with no backbone norm in between; the backbone's `final_layer_norm` acts only
on the backbone stream (line 1308).

The ladders and $W^{up}$ have biases, as in the released scripts: every LST script sets
`add_bias_sampling` to true (e.g. `seq2seq/scripts/ladder_side_tuning_base.sh`, line 38, and
`seq2seq/configs/side_transformers.json`, line 51; `VL-T5/src/side_transformers/config.py`,
line 8), overriding the false default of `seq2seq/training_args.py` (line 114), and it is the
`bias` flag of the first ladder, the ladders and the up-projection
(`modeling_side_t5.py`, lines 884, 887 and 1710). Their weights start from
$\\mathcal{N}(0, 0.01^2)$ and their biases at zero, which is what the official model's
`_init_weights` does to every plain `nn.Linear` (`modeling_side_t5.py`, lines 798-802). Side
layers keep the backbone's number of attention heads (and its MLP ratio) at the reduced width;
side layers may be dropped (`side_layers`), which also drops their ladder and gate.

Memory: the backbone only runs forward. Each backbone block runs under `torch.no_grad()` and its
output is detached before a ladder reads it, so autograd stores no backbone activation and no
gradient ever enters the backbone; only the ladder inputs (the block outputs) are kept.

Implementation: every block is wrapped by [`LadderBlock`][reference_impls.methods.lst.LadderBlock].
Between blocks the side stream travels as $d/r$ extra channels appended to the token features
(`[h^B_i, h^S_i]`), so no state is kept outside the forward pass; the last wrapper returns
$W^{up} \\mathrm{LN}^S(h^S_L) + b^{up}$ with the original width and token layout. The backbone's
final norm layers are wrapped by [`BypassedNorm`][reference_impls.methods.lst.BypassedNorm],
which passes its input through (the frozen norm stays in the model). A custom `attn_mask` is
passed to both the backbone block and the side layer; `forward_intermediates` would see the
widened features.

Not implemented: the paper initializes side layers by structurally pruning the backbone's
weights with a Fisher-information score computed on task data (and evaluates layer dropping);
here side layers start from timm's ViT initialization, and pruned weights can be loaded into
them before training. LST is not mergeable: the prediction comes from the side network.
"""

from __future__ import annotations

from functools import partial
from typing import Any

import torch
from pydantic import model_validator
from torch import nn
from timm.models.vision_transformer import Block, init_weights_vit_timm

from ..authoring import (
    NORM_TYPES,
    MethodConfig,
    NonNegativeInt,
    PositiveFloat,
    PositiveInt,
    Wrapper,
    register,
    replace_module,
)

FINAL_NORMS = ("norm", "fc_norm")
"""timm's final norm layers: `norm` before pooling, `fc_norm` after it (average-pooling models)."""

LADDER_INIT_STD = 0.01
"""Standard deviation of the ladder and up-projection weights at initialization (official code)."""


class LSTConfig(MethodConfig):
    """Configuration of Ladder Side-Tuning."""

    reduction: PositiveInt = 8
    """Reduction factor r: side width d / r (8 in the paper's scripts)."""
    num_heads: NonNegativeInt = 0
    """Attention heads of the side layers; 0 keeps the backbone's number (as the official code)."""
    side_layers: tuple[NonNegativeInt, ...] = ()
    """Indices of the backbone blocks that get a side layer, ladder and gate; empty = every block."""
    gate_init: float = 0.0
    """Initial gate parameter alpha_i (mu_i = sigmoid(alpha_i / T))."""
    temperature: PositiveFloat = 0.1
    """Gate temperature T."""

    @model_validator(mode="after")
    def _distinct_side_layers(self) -> LSTConfig:
        if len(set(self.side_layers)) != len(self.side_layers):
            raise ValueError(f"side_layers must be distinct block indices, got {self.side_layers}")
        return self


def ladder(in_features: int, out_features: int, factory: dict[str, Any]) -> nn.Linear:
    """A ladder (or the up-projection): a biased linear layer initialized as in the official code.

    Args:
        in_features: Input width.
        out_features: Output width.
        factory: `device` and `dtype` of the new parameters.
    """
    layer = nn.Linear(in_features, out_features, bias=True, **factory)
    with torch.no_grad():
        # W ~ N(0, 0.01^2), b = 0
        nn.init.normal_(layer.weight, std=LADDER_INIT_STD)
        nn.init.zeros_(layer.bias)
    return layer


class BypassedNorm(Wrapper):
    """A final norm layer of the backbone that LST's output skips: returns its input unchanged.

    The official LST feeds the up-projected side state to the output head without a backbone
    norm (see the module docstring); the frozen norm is kept as `base_layer`, unused.

    Args:
        base_layer: The backbone's final norm (`norm` or `fc_norm`).
    """

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Return `x`: the side network's output reaches pooling and head as it is."""
        return x


class LadderBlock(Wrapper):
    """A frozen backbone block, run without autograd, plus its rung of the side network.

    Input: `h^B_{i-1}` (first block) or `[h^B_{i-1}, h^S_{i-1}]` (width d + d/r). Output:
    `[h^B_i, h^S_i]`, or `W_up LN^S(h^S_L) + b_up` (width d) for the last block. The ladders and
    `W_up` are biased linear layers (see [`ladder`][reference_impls.methods.lst.ladder]).

    Args:
        base_layer: The frozen backbone block.
        dim: Backbone width d.
        side_dim: Side width d / r.
        side_layer: The side transformer layer f^S_i, or None if this block has no side layer.
        first: Whether this is the first block (it starts the side stream).
        last: Whether this is the last block (it ends the side stream).
        gate_init: Initial gate parameter.
        temperature: Gate temperature T.
        reference: A tensor of the backbone, giving device and dtype of the new parameters.
    """

    def __init__(
        self,
        base_layer: nn.Module,
        dim: int,
        side_dim: int,
        side_layer: nn.Module | None,
        first: bool,
        last: bool,
        gate_init: float,
        temperature: float,
        reference: torch.Tensor,
    ) -> None:
        super().__init__(base_layer)
        factory = {"device": reference.device, "dtype": reference.dtype}
        self.dim, self.side_dim = dim, side_dim
        self.first, self.last = first, last
        self.temperature = temperature
        if first:
            self.peft_down_embed = ladder(dim, side_dim, factory)
        if side_layer is not None:
            self.peft_down = ladder(dim, side_dim, factory)
            self.peft_gate = nn.Parameter(torch.full((1,), gate_init, **factory))
            self.peft_side = side_layer
        if last:
            self.peft_side_norm = nn.LayerNorm(side_dim, eps=1e-6, **factory)
            self.peft_up = ladder(side_dim, dim, factory)

    @property
    def has_side_layer(self) -> bool:
        """Whether this block has a side layer (and a ladder and gate)."""
        return hasattr(self, "peft_side")

    def gate(self) -> torch.Tensor:
        """Return $\\mu_i = \\sigma(\\alpha_i / T)$."""
        # μ_i = sigmoid(α_i / T)
        return torch.sigmoid(self.peft_gate / self.temperature)

    def forward(self, x: torch.Tensor, *args: Any, **kwargs: Any) -> torch.Tensor:
        """Run the backbone block without autograd and advance the side stream by one layer."""
        if self.first:
            h = x
            # h^S_0 = h^B_0 W^down_0 + b^down_0  (the backbone activation is detached)
            s = self.peft_down_embed(h.detach())
        else:
            h, s = x[..., : self.dim], x[..., self.dim :]
        # the backbone runs forward only: autograd records nothing inside it
        with torch.no_grad():
            h = self.base_layer(h, *args, **kwargs)
        h = h.detach()
        if self.has_side_layer:
            mu = self.gate().to(s.dtype)
            # z_i = μ_i h^S_{i-1} + (1 - μ_i) (h^B_i W^down_i + b^down_i)
            z = mu * s + (1 - mu) * self.peft_down(h)
            # h^S_i = f^S_i(z_i)
            s = self.peft_side(z, *args, **kwargs)
        if self.last:
            # output = W^up LN^S(h^S_L) + b^up: replaces the backbone output; the backbone's final
            # norm is bypassed (BypassedNorm), so pooling and head read it as it is
            return self.peft_up(self.peft_side_norm(s))
        # [h^B_i, h^S_i]: the side stream rides along as extra channels
        return torch.cat([h, s], dim=-1)

    def extra_repr(self) -> str:
        return f"dim={self.dim}, side_dim={self.side_dim}, first={self.first}, last={self.last}, side_layer={self.has_side_layer}"


def side_layer(block: nn.Module, side_dim: int, reduction: int, num_heads: int, reference: torch.Tensor) -> nn.Module:
    """A fresh timm ViT block of width `side_dim` mirroring `block` (MLP hidden width divided by r).

    Args:
        block: The backbone block (its `mlp.fc1` gives the MLP hidden width).
        side_dim: Side width d / r.
        reduction: Reduction factor r.
        num_heads: Attention heads of the side layer.
        reference: A tensor of the backbone, giving device and dtype.
    """
    fc1 = getattr(getattr(block, "mlp", None), "fc1", None)
    hidden = fc1.out_features // reduction if isinstance(fc1, nn.Linear) else 4 * side_dim
    layer = Block(
        dim=side_dim,
        num_heads=num_heads,
        # int(side_dim * ratio) == hidden exactly
        mlp_ratio=(hidden + 0.5) / side_dim,
        qkv_bias=True,
        norm_layer=partial(nn.LayerNorm, eps=1e-6),
        device=reference.device,
        dtype=reference.dtype,
    )
    layer.apply(init_weights_vit_timm)
    return layer


def apply_lst(model: nn.Module, config: LSTConfig) -> list[str]:
    """Wrap every block with a [`LadderBlock`][reference_impls.methods.lst.LadderBlock] and the
    backbone's final norm layers with [`BypassedNorm`][reference_impls.methods.lst.BypassedNorm].

    Args:
        model: A timm vision transformer (already frozen).
        config: The LST config.

    Returns:
        An empty list: no backbone parameter is trained.

    Raises:
        ValueError: If the width is not divisible by r, the side width not by the number of
            heads, or a side layer index exceeds the depth.
    """
    dim, depth = int(model.embed_dim), len(model.blocks)
    if dim % config.reduction:
        raise ValueError(f"embed_dim {dim} is not divisible by reduction {config.reduction}")
    side_dim = dim // config.reduction
    backbone_heads = getattr(getattr(model.blocks[0], "attn", None), "num_heads", 1)
    heads = config.num_heads or backbone_heads
    if side_dim % heads:
        raise ValueError(
            f"side width {side_dim} (= {dim} / {config.reduction}) is not divisible by {heads} heads; set num_heads"
        )
    too_deep = [i for i in config.side_layers if i >= depth]
    if too_deep:
        raise ValueError(f"side_layers {too_deep} exceed the model's depth ({depth} blocks)")
    chosen = set(config.side_layers) if config.side_layers else set(range(depth))
    reference = model.blocks[0].norm1.weight if hasattr(model.blocks[0], "norm1") else next(model.parameters())
    for index in range(depth):
        block = model.blocks[index]
        layer = side_layer(block, side_dim, config.reduction, heads, reference) if index in chosen else None
        wrapper = LadderBlock(
            block,
            dim,
            side_dim,
            layer,
            first=index == 0,
            last=index == depth - 1,
            gate_init=config.gate_init,
            temperature=config.temperature,
            reference=reference,
        )
        replace_module(model, f"blocks.{index}", wrapper)
    # the up-projected side state goes to pooling and head without the backbone's final norm
    for name in FINAL_NORMS:
        if isinstance(getattr(model, name, None), NORM_TYPES):
            replace_module(model, name, BypassedNorm(getattr(model, name)))
    return []


register("lst", LSTConfig, apply_lst, mergeable=False)
