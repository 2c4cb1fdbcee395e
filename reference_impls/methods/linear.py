"""Linear probing: train only the classifier head on a frozen backbone.

Paper: Visual Prompt Tuning (Jia et al., ECCV 2022), which uses linear probing as the
"Linear" baseline of its protocol. arXiv: https://arxiv.org/abs/2203.12119.
Bib key: jia2022visual.
"""

from __future__ import annotations

from torch import nn

from ..authoring import MethodConfig, Preset, register


class LinearConfig(MethodConfig):
    """Linear probing has no hyperparameters: the head is the only trained part."""


def apply_linear(model: nn.Module, config: LinearConfig) -> list[str]:
    """Leave the backbone frozen; the head is made trainable by the shared API.

    Args:
        model: A timm vision transformer (already frozen).
        config: The (empty) config.

    Returns:
        An empty list: no backbone parameter is trained.
    """
    return []


PRESETS = {
    "vtab-1k": Preset({}, source="jia2022visual: the 'Linear' baseline of the VTAB-1k tables (only the head trained)"),
    "fgvc": Preset({}, source="jia2022visual: the 'Linear' baseline of the FGVC tables (only the head trained)"),
}

register("linear-probing", LinearConfig, apply_linear, mergeable=True, presets=PRESETS)
