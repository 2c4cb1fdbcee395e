"""VPT: learnable prompt tokens prepended to the patch tokens of a frozen ViT.

Paper: Visual Prompt Tuning (Jia et al., ECCV 2022). arXiv: https://arxiv.org/abs/2203.12119.
Bib key: jia2022visual.

With prefix tokens $c$ (class token, register tokens, distillation token: `model.num_prefix_tokens`
of them), patch tokens $E_0$ and $p$ learnable prompts $P_i \\in \\mathbb{R}^{p \\times d}$:

- VPT-shallow inserts prompts once, before the first block:
  $[c_1, Z_1, E_1] = L_1([c_0, P, E_0])$, then $[c_i, Z_i, E_i] = L_i([c_{i-1}, Z_{i-1}, E_{i-1}])$.
- VPT-deep replaces the prompt positions before every block:
  $[c_i, \\_, E_i] = L_i([c_{i-1}, P_{i-1}, E_{i-1}])$.

Prompts are inserted right after the prefix tokens (after timm's position embedding and
`norm_pre`), and carry no position embedding.

Implementation: each block is wrapped by [`PromptedBlock`][reference_impls.methods.vpt.PromptedBlock],
which inserts or replaces prompt tokens and calls the original block. The wrapper of the last
block removes the prompt outputs, so the final norm and the model's pooling see exactly the
original token layout: `global_pool='token'` reads the class token as before, and
`global_pool='avg'` averages over the patch tokens only (prompt outputs are not averaged).
The paper's models pool the class token, where this choice makes no difference.

Limitations: a custom `attn_mask` passed to the model must not be used (its size would not
include the prompts), and `forward_intermediates` returns token sequences that include prompts.
VPT is not mergeable: prompts are extra tokens, not a weight update.
"""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import nn

from ..authoring import Dropout, MethodConfig, PositiveInt, Wrapper, register, replace_module


class VPTConfig(MethodConfig):
    """Configuration of VPT (shallow and deep)."""

    num_tokens: PositiveInt = 10
    """Number of prompt tokens p (per block for VPT-deep)."""
    dropout: Dropout = 0.0
    """Dropout probability applied to the prompt tokens."""


class PromptedBlock(Wrapper):
    """A transformer block that inserts or replaces prompt tokens before calling the original block.

    Args:
        base_layer: The original timm block.
        num_prefix_tokens: Number of prefix tokens (class, register, distillation) of the model.
        num_tokens: Number of prompt tokens p.
        prompt: Initial prompt values `(p, d)`, or None for a block without its own prompts.
        insert: True for the first block: prompts are inserted (the sequence grows by p);
            otherwise the p positions after the prefix tokens are replaced (if `prompt` is given).
        remove_after: True for the last block: prompt outputs are removed after the block.
        dropout: Dropout probability on the prompts.
    """

    def __init__(
        self,
        base_layer: nn.Module,
        num_prefix_tokens: int,
        num_tokens: int,
        prompt: torch.Tensor | None,
        insert: bool,
        remove_after: bool,
        dropout: float = 0.0,
    ) -> None:
        super().__init__(base_layer)
        if insert and prompt is None:
            raise ValueError("the first prompted block needs prompts to insert")
        self.num_prefix_tokens = num_prefix_tokens
        self.num_tokens = num_tokens
        self.insert = insert
        self.remove_after = remove_after
        self.peft_prompt = nn.Parameter(prompt) if prompt is not None else None
        self.peft_dropout = nn.Dropout(dropout) if dropout > 0 else nn.Identity()

    def forward(self, x: torch.Tensor, *args: Any, **kwargs: Any) -> torch.Tensor:
        """Run the block on `[prefix, prompts, patches]`; `x` is `(batch, tokens, dim)`."""
        n, p = self.num_prefix_tokens, self.num_tokens
        if self.peft_prompt is not None:
            prompt = self.peft_dropout(self.peft_prompt).to(x.dtype).unsqueeze(0).expand(x.shape[0], -1, -1)
            if self.insert:
                # x = [c, P, E]
                x = torch.cat([x[:, :n], prompt, x[:, n:]], dim=1)
            else:
                # x = [c, P_i, E]: the previous block's prompt outputs are discarded
                x = torch.cat([x[:, :n], prompt, x[:, n + p :]], dim=1)
        x = self.base_layer(x, *args, **kwargs)
        if self.remove_after:
            # [c, E]: the final norm and the pooling see the original token layout
            x = torch.cat([x[:, :n], x[:, n + p :]], dim=1)
        return x

    def extra_repr(self) -> str:
        return f"num_prefix_tokens={self.num_prefix_tokens}, num_tokens={self.num_tokens}, insert={self.insert}, remove_after={self.remove_after}"


def _init_prompt(model: nn.Module, num_tokens: int) -> torch.Tensor:
    """Uniform Xavier-style init over the patch-embedding fan-in, as the paper's code does."""
    reference = model.pos_embed if getattr(model, "pos_embed", None) is not None else model.blocks[0].norm1.weight
    factory = {"device": reference.device, "dtype": reference.dtype}
    proj = getattr(getattr(model, "patch_embed", None), "proj", None)
    if isinstance(proj, nn.Conv2d):
        fan_in = proj.in_channels * math.prod(proj.kernel_size)
    else:
        fan_in = model.embed_dim
    # bound = sqrt(6 / (fan_in + d)),  P ~ U(-bound, bound)
    bound = math.sqrt(6.0 / (fan_in + model.embed_dim))
    return torch.empty(num_tokens, model.embed_dim, **factory).uniform_(-bound, bound)


def _apply_vpt(model: nn.Module, config: VPTConfig, deep: bool) -> list[str]:
    depth = len(model.blocks)
    for index in range(depth):
        first, last = index == 0, index == depth - 1
        if not (deep or first or last):
            continue
        prompt = _init_prompt(model, config.num_tokens) if (deep or first) else None
        block = PromptedBlock(
            model.blocks[index],
            num_prefix_tokens=int(model.num_prefix_tokens),
            num_tokens=config.num_tokens,
            prompt=prompt,
            insert=first,
            remove_after=last,
            dropout=config.dropout,
        )
        replace_module(model, f"blocks.{index}", block)
    return []


def apply_vpt_shallow(model: nn.Module, config: VPTConfig) -> list[str]:
    """Insert `num_tokens` prompts before the first block.

    Args:
        model: A timm vision transformer (already frozen).
        config: The VPT config.

    Returns:
        An empty list: no backbone parameter is trained.
    """
    return _apply_vpt(model, config, deep=False)


def apply_vpt_deep(model: nn.Module, config: VPTConfig) -> list[str]:
    """Insert `num_tokens` prompts before the first block and replace them before every later block.

    Args:
        model: A timm vision transformer (already frozen).
        config: The VPT config.

    Returns:
        An empty list: no backbone parameter is trained.
    """
    return _apply_vpt(model, config, deep=True)


register("vpt-shallow", VPTConfig, apply_vpt_shallow, mergeable=False)
register("vpt-deep", VPTConfig, apply_vpt_deep, mergeable=False)
