"""NOAH: a searched per-block mix of Adapter, LoRA and VPT prompts, as one fixed configuration.

Paper: Neural Prompt Search (Zhang, Zhou and Liu; arXiv 2022, TPAMI 2025).
arXiv: https://arxiv.org/abs/2206.04673. Bib keys: zhang2025neural, zhang2022neural.

NOAH treats Adapter, LoRA and VPT as three "prompt modules" of a ViT and chooses, per block $l$,
a prompt length $p_l$, a LoRA rank $r_l$ and an adapter width $h_l$ (0 removes the module) by
one-shot neural architecture search on each downstream dataset; the selected sub-network is then
retrained. This module implements that retrained sub-network for given per-block sizes:

- VPT-deep prompts $P_l \\in \\mathbb{R}^{p_l \\times d}$ enter before block $l$ and replace the
  prompts present so far; a block with $p_l = 0$ lets the present prompts pass through.
- LoRA on the fused query/key/value projection, no scaling:
  $\\mathrm{qkv}(x) = W_{qkv} x + b + B_l A_l x$ with $A_l \\in \\mathbb{R}^{r_l \\times d}$,
  $B_l \\in \\mathbb{R}^{3d \\times r_l}$ (zero at init).
- A bottleneck adapter on the MLP output:
  $M' = M + W^{up}_l\\, \\sigma(W^{down}_l M + b^{down}_l) + b^{up}_l$, $\\sigma$ = QuickGELU
  ($x \\cdot \\mathrm{sigmoid}(1.702 x)$), weights Xavier-uniform, biases $\\mathcal{N}(0, 10^{-12})$.

Sizes are given per block (a tuple with one entry per block) or as one number for every block.
The defaults are the maximum of the released VTAB-1k search space ({1, 5, 10} for each module in
every one of the 12 blocks): 10 prompts, rank 10 and width 10 everywhere. Dropout (0.1 for each
module in the official code) acts on the prompts, on the LoRA input and after the adapter's
activation.

Reuse: the LoRA branch is [`LoRALinear`][reference_impls.methods.lora.LoRALinear] (alpha = r,
target `"qkv"`), the adapter is [`AdapterLayer`][reference_impls.methods.adapter.AdapterLayer]
on `mlp` with QuickGELU, re-initialized as NOAH's code does, and the prompts are
[`PromptedBlock`][reference_impls.methods.vpt.PromptedBlock] wrappers (placed after the prefix
tokens, removed after the last block so that pooling sees the original layout).

Differences from the official supernet code, which do not change the retrained function at
inference: the official model appends prompts at the end of the sequence (attention does not
depend on token order, and prompts carry no position embedding in the blocks); it also creates
model-level prompts with a prompt position embedding that the first block immediately replaces,
so they never influence the output and are not created here; its adapter acts after drop-path.
One difference can change outputs: when a block without prompts is followed by a prompted block,
the official code removes only the previous block's (zero) prompts and so keeps the older ones
in the sequence; here every prompted block replaces all prompts present. The released VTAB-1k
sub-networks have prompts in every block, where both agree.

Mergeability: NOAH as a whole is not mergeable (prompts lengthen the sequence and the adapter is
nonlinear). The LoRA part alone could be folded into `attn.qkv`.
"""

from __future__ import annotations

import math
from typing import Annotated, Any

import torch
from pydantic import Discriminator, Field, Tag
from torch import nn

from ..authoring import WHOLE, Dropout, MethodConfig, NonNegativeInt, register, replace_module
from .adapter import AdapterLayer
from .lora import LoRALinear
from .vpt import PromptedBlock


def _sizes_form(value: Any) -> str:
    """Which form of `Sizes` a value is given in (a tuple or list: one entry per block)."""
    return "per_block" if isinstance(value, (tuple, list)) else "all_blocks"


Sizes = Annotated[
    Annotated[NonNegativeInt, Tag("all_blocks")]
    | Annotated[tuple[NonNegativeInt, ...], Field(min_length=1), Tag("per_block")],
    Discriminator(_sizes_form),
]
"""A size per block: one number (>= 0) for every block, or a non-empty tuple with one entry (>= 0)
per block. An error names the form checked: `field.all_blocks` or `field.per_block[i]`."""


class NOAHConfig(MethodConfig):
    """Configuration of NOAH's retrained sub-network."""

    prompt_tokens: Sizes = 10
    """VPT prompt length per block (one number for all blocks, or one entry per block; 0 = none)."""
    lora_ranks: Sizes = 10
    """LoRA rank on the fused attn.qkv per block (one number or one entry per block; 0 = none)."""
    adapter_dims: Sizes = 10
    """Adapter bottleneck width on the MLP output per block (one number or one per block; 0 = none)."""
    dropout: Dropout = 0.1
    """Dropout on prompts, on the LoRA branch input and after the adapter activation (official: 0.1)."""

    def per_block(self, name: str, depth: int) -> tuple[int, ...]:
        """Sizes of field `name` for each of `depth` blocks.

        Raises:
            ValueError: If a per-block tuple does not have `depth` entries.
        """
        value = getattr(self, name)
        if isinstance(value, int):
            return (value,) * depth
        if len(value) != depth:
            raise ValueError(f"{name} has {len(value)} entries, but the model has {depth} blocks")
        return tuple(value)


def noah_adapter(mlp: nn.Module, dim: int, bottleneck: int, dropout: float) -> AdapterLayer:
    """The block's MLP followed by NOAH's adapter on its output, initialized as NOAH's code does.

    Args:
        mlp: The block's MLP (`block.mlp`).
        dim: Width d of the MLP output.
        bottleneck: Adapter width h.
        dropout: Dropout probability after the activation.
    """
    # M' = M + W_up σ(W_down M + b_down) + b_up,  σ(x) = x · sigmoid(1.702 x)
    layer = AdapterLayer(mlp, dim, bottleneck, "quick_gelu", dropout, "zero-up")
    with torch.no_grad():
        for projection in (layer.peft_down, layer.peft_up):
            # W ~ Xavier-uniform, b ~ N(0, 1e-6^2)
            nn.init.xavier_uniform_(projection.weight)
            nn.init.normal_(projection.bias, std=1e-6)
    return layer


def _init_prompt(num_tokens: int, dim: int, reference: torch.Tensor) -> torch.Tensor:
    """Xavier-uniform over a `(1, p, d)` tensor, as the official code initializes its prompts."""
    # bound = sqrt(6 / (p d + d)),  P ~ U(-bound, bound)
    bound = math.sqrt(6.0 / (num_tokens * dim + dim))
    return torch.empty(num_tokens, dim, device=reference.device, dtype=reference.dtype).uniform_(-bound, bound)


def apply_noah(model: nn.Module, config: NOAHConfig) -> list[str]:
    """Add the configured LoRA, adapter and prompt modules to every block.

    Args:
        model: A timm vision transformer (already frozen).
        config: The NOAH config.

    Returns:
        An empty list: no backbone parameter is trained.

    Raises:
        ValueError: If a per-block tuple does not match the model's depth.
    """
    depth, dim = len(model.blocks), int(model.embed_dim)
    prompts = config.per_block("prompt_tokens", depth)
    ranks = config.per_block("lora_ranks", depth)
    widths = config.per_block("adapter_dims", depth)
    for index in range(depth):
        for path in ("attn.qkv", "mlp"):
            try:
                model.blocks[index].get_submodule(path)
            except AttributeError:
                raise ValueError(f"block {index} has no {path!r} (a timm ViT block is expected)") from None
    # prompts present after block l: the block's own, or those passing through a block without prompts
    present, count = [], 0
    for p in prompts:
        count = p if p > 0 else count
        present.append(count)
    for index in range(depth):
        prefix = f"blocks.{index}"
        if ranks[index] > 0:
            qkv = model.get_submodule(f"{prefix}.attn.qkv")
            # qkv(x) = W_qkv x + b + B A x  (alpha = r: no scaling)
            lora = LoRALinear(qkv, (WHOLE,), ranks[index], float(ranks[index]), config.dropout)
            replace_module(model, f"{prefix}.attn.qkv", lora)
        if widths[index] > 0:
            mlp = model.get_submodule(f"{prefix}.mlp")
            replace_module(model, f"{prefix}.mlp", noah_adapter(mlp, dim, widths[index], config.dropout))
        last = index == depth - 1
        # the prompts present after this block leave before the next prompted block (or the final norm)
        remove_after = present[index] > 0 and (last or prompts[index + 1] > 0)
        if prompts[index] > 0 or remove_after:
            reference = model.blocks[index].norm1.weight if hasattr(model.blocks[index], "norm1") else next(model.parameters())
            prompt = _init_prompt(prompts[index], dim, reference) if prompts[index] > 0 else None
            block = PromptedBlock(
                model.blocks[index],
                num_prefix_tokens=int(model.num_prefix_tokens),
                num_tokens=present[index],
                prompt=prompt,
                insert=prompts[index] > 0,
                remove_after=remove_after,
                dropout=config.dropout,
            )
            replace_module(model, prefix, block)
    return []


register("noah", NOAHConfig, apply_noah, mergeable=False)
