"""LN-tuning: fine-tune only the affine parameters of the normalization layers (and the head).

Paper: Strong Baselines for Parameter-Efficient Few-Shot Fine-Tuning (Basu, Massiceti, Hu and
Feizi, AAAI 2024). arXiv: https://arxiv.org/abs/2304.01917. Bib key: basu2024strong.

Every LayerNorm of the backbone is trained: `norm1`/`norm2` of each block, the final `norm` (or
`fc_norm` for average-pooling models) and `norm_pre` where present.
"""

from __future__ import annotations

from torch import nn

from ..authoring import MethodConfig, norm_parameter_names, register


class LNTuningConfig(MethodConfig):
    """LN-tuning has no hyperparameters: every normalization layer's gain and bias are trained."""


def apply_ln_tuning(model: nn.Module, config: LNTuningConfig) -> list[str]:
    """Select the gain and bias of every normalization layer of the backbone
    (see [`NORM_TYPES`][reference_impls.backbone.NORM_TYPES]).

    Args:
        model: A timm vision transformer.
        config: The (empty) config.

    Returns:
        Names of the selected parameters.
    """
    # LN(x) = gamma * (x - mean(x)) / sqrt(var(x) + eps) + beta: gamma and beta are updated
    return norm_parameter_names(model)


register("ln-tuning", LNTuningConfig, apply_ln_tuning, mergeable=True)
