"""Prefix-tuning: learnable key and value vectors prepended in every attention layer.

Paper: Prefix-Tuning: Optimizing Continuous Prompts for Generation (Li and Liang, ACL 2021).
arXiv: https://arxiv.org/abs/2101.00190. Bib key: li2021prefix.

For every attention layer $\\ell$ with frozen projections and input tokens $X$, prefix-tuning learns
$P^K_\\ell, P^V_\\ell \\in \\mathbb{R}^{p \\times d}$ and attends over extended keys and values:
$\\mathrm{Attn}(X) = \\mathrm{softmax}\\big(X W_Q [P^K_\\ell; X W_K]^\\top / \\sqrt{d_h}\\big)\\,[P^V_\\ell; X W_V]$.
The prefixes are split over the heads like the keys and values. The output keeps one row per
token: the prefixes steer attention without lengthening the residual stream.

Implementation: each block's `attn` (timm's `Attention`) is wrapped by
[`PrefixAttention`][reference_impls.methods.prefix_tuning.PrefixAttention], which computes q, k,
v with the wrapped module's fused `qkv`, applies its `q_norm` / `k_norm`, prepends the prefixes
(they are keys and values as the attention sees them, so they are not normalized), and finishes
with the wrapped module's own settings and layers: `fused_attn` (scaled-dot-product attention) or
the explicit softmax with `scale`, `attn_drop`, `norm`, `gate`, `proj`, `proj_drop`. An
`attn_mask` (or `is_causal`) given to the model is extended so that every token sees the prefixes.
Attention modules whose `forward` is not timm's `Attention.forward` are refused.

The paper's reparameterization of the prefixes by an MLP during training is not implemented: the
prefixes are trained directly (the form stored after training). They start Xavier-uniform over
the $(p, d)$ matrix (NOAH's ViT prefixes also start from a Xavier-uniform draw). Not an identity
at initialization: any prefix changes the attention weights. Not mergeable: the prefixes compete
with the real tokens inside the softmax.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from timm.layers import Attention
from torch import nn

from ..authoring import MethodConfig, PositiveInt, Wrapper, factory_kwargs, register, replace_module


class PrefixTuningConfig(MethodConfig):
    """Configuration of prefix-tuning."""

    num_tokens: PositiveInt = 10
    """Prefix length p: key and value vectors per attention layer."""


class PrefixAttention(Wrapper):
    """timm `Attention` whose keys and values are extended by learnable prefixes.

    Parameters: `peft_prefix_key` and `peft_prefix_value`, each $p \\times d_{attn}$ with
    $d_{attn}$ = heads x head width (the width of the keys).

    Args:
        base_layer: The frozen timm `Attention`.
        num_tokens: Prefix length p.
    """

    def __init__(self, base_layer: Attention, num_tokens: int) -> None:
        super().__init__(base_layer)
        factory = factory_kwargs(base_layer.qkv)
        self.num_tokens = num_tokens
        self.num_heads = int(base_layer.num_heads)
        self.head_dim = int(base_layer.head_dim)
        attn_dim = self.num_heads * self.head_dim
        # bound = sqrt(6 / (p + d)),  P ~ U(-bound, bound)
        bound = math.sqrt(6.0 / (num_tokens + attn_dim))
        self.peft_prefix_key = nn.Parameter(torch.empty(num_tokens, attn_dim, **factory).uniform_(-bound, bound))
        self.peft_prefix_value = nn.Parameter(torch.empty(num_tokens, attn_dim, **factory).uniform_(-bound, bound))

    def _heads(self, prefix: torch.Tensor, batch: int, dtype: torch.dtype) -> torch.Tensor:
        """`(p, d)` -> `(B, heads, p, head_dim)`, the layout of timm's keys and values."""
        heads = prefix.to(dtype).view(self.num_tokens, self.num_heads, self.head_dim).transpose(0, 1)
        return heads.expand(batch, -1, -1, -1)

    def _extend_mask(
        self, attn_mask: torch.Tensor | None, is_causal: bool, tokens: int, like: torch.Tensor
    ) -> torch.Tensor | None:
        """Extend a `(..., N, N)` mask to `(..., N, p + N)`: every token may attend to every prefix."""
        if is_causal:
            attn_mask = torch.ones(tokens, tokens, dtype=torch.bool, device=like.device).tril()
        if attn_mask is None:
            return None
        shape = (*attn_mask.shape[:-1], self.num_tokens)
        if attn_mask.dtype == torch.bool:
            visible = torch.ones(shape, dtype=torch.bool, device=attn_mask.device)
        else:
            visible = torch.zeros(shape, dtype=attn_mask.dtype, device=attn_mask.device)
        return torch.cat([visible, attn_mask], dim=-1)

    def forward(self, x: torch.Tensor, attn_mask: torch.Tensor | None = None, is_causal: bool = False) -> torch.Tensor:
        """Attention of the tokens `x` `(B, N, d)` over `[prefixes; tokens]`."""
        attn = self.base_layer
        batch, tokens, _ = x.shape
        gate = attn.gate(x).sigmoid() if getattr(attn, "gate", None) is not None else None
        qkv = attn.qkv(x).reshape(batch, tokens, 3, self.num_heads, self.head_dim).permute(2, 0, 3, 1, 4)
        q, k, v = qkv.unbind(0)
        q, k = attn.q_norm(q), attn.k_norm(k)
        # K = [P^K; X W_K],  V = [P^V; X W_V]
        k = torch.cat([self._heads(self.peft_prefix_key, batch, k.dtype), k], dim=2)
        v = torch.cat([self._heads(self.peft_prefix_value, batch, v.dtype), v], dim=2)
        mask = self._extend_mask(attn_mask, is_causal, tokens, x)
        if attn.fused_attn:
            # softmax(Q K^T / sqrt(d_h)) V
            out = F.scaled_dot_product_attention(
                q, k, v, attn_mask=mask, dropout_p=attn.attn_drop.p if attn.training else 0.0
            )
        else:
            # A = softmax(Q K^T · scale + mask)
            scores = (q * attn.scale) @ k.transpose(-2, -1)
            if mask is not None:
                scores = scores.masked_fill(~mask, float("-inf")) if mask.dtype == torch.bool else scores + mask
            # out = A V
            out = attn.attn_drop(scores.softmax(dim=-1)) @ v
        out = attn.norm(out.transpose(1, 2).reshape(batch, tokens, self.num_heads * self.head_dim))
        if gate is not None:
            out = out * gate
        return attn.proj_drop(attn.proj(out))

    def extra_repr(self) -> str:
        return f"num_tokens={self.num_tokens}, num_heads={self.num_heads}, head_dim={self.head_dim}"


def apply_prefix_tuning(model: nn.Module, config: PrefixTuningConfig) -> list[str]:
    """Wrap the `attn` module of every block with a [`PrefixAttention`][reference_impls.methods.prefix_tuning.PrefixAttention].

    Args:
        model: A timm vision transformer (already frozen).
        config: The prefix-tuning config.

    Returns:
        An empty list: no backbone parameter is trained.

    Raises:
        TypeError: If a block's `attn` is not timm's `Attention` (with its own forward and a fused qkv).
    """
    for index, block in enumerate(model.blocks):
        attn = getattr(block, "attn", None)
        if (
            not isinstance(attn, Attention)
            or type(attn).forward is not Attention.forward
            or not isinstance(getattr(attn, "qkv", None), nn.Linear)
        ):
            raise TypeError(
                f"block {index} has attention {type(attn).__name__}; only timm's "
                f"timm.layers.Attention with a fused qkv projection is supported"
            )
    for index, block in enumerate(model.blocks):
        replace_module(model, f"blocks.{index}.attn", PrefixAttention(block.attn, config.num_tokens))
    return []


register("prefix-tuning", PrefixTuningConfig, apply_prefix_tuning, mergeable=False)
