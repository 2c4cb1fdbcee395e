"""BitFit: fine-tune only the bias terms of the backbone (and the head).

Paper: BitFit: Simple Parameter-efficient Fine-tuning for Transformer-based Masked
Language-models (Ben Zaken, Goldberg and Ravfogel, ACL 2022).
arXiv: https://arxiv.org/abs/2106.10199. Bib key: benzaken2022bitfit.

Every parameter named `bias` in the backbone is trained: those of the patch embedding, of the
attention (qkv, proj) and MLP (fc1, fc2) layers, and of the LayerNorms.
"""

from __future__ import annotations

from torch import nn

from ..authoring import MethodConfig, Preset, register


class BitFitConfig(MethodConfig):
    """Configuration of BitFit."""

    include_norm_bias: bool = True
    """Also train the bias (beta) of normalization layers, as the paper does."""


def apply_bitfit(model: nn.Module, config: BitFitConfig) -> list[str]:
    """Select the bias parameters of the backbone.

    Args:
        model: A timm vision transformer.
        config: The BitFit config.

    Returns:
        Names of the selected bias parameters.
    """
    selected = []
    for module_name, module in model.named_modules():
        bias = getattr(module, "bias", None)
        if not isinstance(bias, nn.Parameter):
            continue
        if not config.include_norm_bias and isinstance(module, (nn.LayerNorm, nn.GroupNorm)):
            continue
        # y = W x + b: only b is updated
        selected.append(f"{module_name}.bias" if module_name else "bias")
    return selected


_ALL_BIASES = {"include_norm_bias": True}
PRESETS = {
    "vtab-1k": Preset(_ALL_BIASES, source="benzaken2022bitfit: every bias term; the 'BitFit' / 'Bias' rows of the "
                      "VTAB-1k tables (jie2023fact Table 1, dong2024efficient Table 1)"),
    "fgvc": Preset(_ALL_BIASES, source="benzaken2022bitfit: every bias term; the 'Bias' row of the FGVC table "
                   "(dong2024efficient Table 2)"),
}

register("bitfit", BitFitConfig, apply_bitfit, mergeable=True, presets=PRESETS)
