"""Partial-k: fine-tune the last k transformer blocks, the final norm and the head.

Paper: Visual Prompt Tuning (Jia et al., ECCV 2022), "Partial-k" baseline of its protocol
arXiv: https://arxiv.org/abs/2203.12119. Bib key: jia2022visual (the layer-transfer idea goes
back to Yosinski et al. 2014, bib key yosinski2014transferable).

Everything between the last block and the head (timm's `norm`, `fc_norm` and `attn_pool`,
whichever exist) is trained together with the last k blocks.
"""

from __future__ import annotations

from torch import nn

from ..authoring import MethodConfig, NonNegativeInt, register

#: Modules between the last block and the head in timm vision transformers.
POST_BLOCK_MODULES = ("norm", "fc_norm", "attn_pool")


class PartialKConfig(MethodConfig):
    """Configuration of partial-k fine-tuning."""

    k: NonNegativeInt = 1
    """Number of last transformer blocks to fine-tune (0 to depth)."""


def apply_partial_k(model: nn.Module, config: PartialKConfig) -> list[str]:
    """Select the parameters of the last `k` blocks and of the post-block modules.

    Args:
        model: A timm vision transformer.
        config: The partial-k config.

    Returns:
        Names of the selected backbone parameters.

    Raises:
        ValueError: If `k` exceeds the number of blocks.
    """
    depth = len(model.blocks)
    if config.k > depth:
        raise ValueError(f"k={config.k} exceeds the model's depth ({depth} blocks)")
    prefixes = tuple(f"blocks.{i}." for i in range(depth - config.k, depth))
    prefixes += tuple(f"{name}." for name in POST_BLOCK_MODULES)
    return [name for name, _ in model.named_parameters() if name.startswith(prefixes)]


register("partial-k", PartialKConfig, apply_partial_k, mergeable=True)
