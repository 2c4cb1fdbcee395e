"""Full fine-tuning: every parameter of the backbone and the head is trained.

Paper: Visual Prompt Tuning (Jia et al., ECCV 2022), which uses full fine-tuning as the
"Full" baseline of its protocol. arXiv: https://arxiv.org/abs/2203.12119.
Bib key: jia2022visual.
"""

from __future__ import annotations

from torch import nn

from ..authoring import MethodConfig, Preset, register


class FullConfig(MethodConfig):
    """Full fine-tuning has no hyperparameters: every parameter is trained."""


def apply_full(model: nn.Module, config: FullConfig) -> list[str]:
    """Select every backbone parameter for training.

    Args:
        model: A timm vision transformer.
        config: The (empty) config.

    Returns:
        The names of all parameters of the model.
    """
    return [name for name, _ in model.named_parameters()]


PRESETS = {
    "vtab-1k": Preset({}, source="jia2022visual: the 'Full' baseline of the VTAB-1k tables (every parameter trained)"),
    "fgvc": Preset({}, source="jia2022visual: the 'Full' baseline of the FGVC tables (every parameter trained)"),
}

register("full-finetuning", FullConfig, apply_full, mergeable=True, presets=PRESETS)
