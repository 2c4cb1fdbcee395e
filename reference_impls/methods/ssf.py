"""SSF: a trained per-channel scale and shift after the operations of a frozen backbone.

Paper: Scaling & Shifting Your Features: A New Baseline for Efficient Model Tuning (Lian, Zhou,
Feng and Wang, NeurIPS 2022). arXiv: https://arxiv.org/abs/2210.08823. Bib key: lian2022scaling.

After a frozen operation with output $x \\in \\mathbb{R}^{C}$ (per token, or per pixel for a
convolution) SSF computes $y = \\gamma \\odot x + \\beta$ with trained $\\gamma, \\beta \\in
\\mathbb{R}^{C}$. The modulation is affine, so it folds into the operation it follows:
$W' = \\operatorname{diag}(\\gamma) W$, $b' = \\gamma \\odot b + \\beta$ for a linear or
convolution layer, and the same for a LayerNorm's affine weight and bias.

Placement (the official ViT code's): after the patch-embedding projection, after every
LayerNorm (`norm1`, `norm2` of each block and the final norm), after `attn.qkv` ($3d$
channels), `attn.proj`, `mlp.fc1` (before the activation, $4d$ channels) and `mlp.fc2`: $22d$
per block. On a model that pools by averaging, timm puts the final LayerNorm after the pooling
(`fc_norm`, with `norm` an identity); the `"norm"` target modulates every LayerNorm, so it is
`fc_norm`'s output that gets a scale and shift. (The official code modulates the tokens after the
identity `norm`, before the pooling and `fc_norm`: same count, another place.)

Initialization: `init_std=0` (default) sets $\\gamma = 1$, $\\beta = 0$, so the model equals the
backbone right after `apply`. The official code instead draws $\\gamma \\sim \\mathcal{N}(1,
0.02^2)$ and $\\beta \\sim \\mathcal{N}(0, 0.02^2)$: set `init_std=0.02` to reproduce it.
"""

from __future__ import annotations

from typing import Annotated

import torch
from pydantic import Field, model_validator
from torch import nn

from ..authoring import (
    QKV_PARTS,
    MergeableWrapper,
    MethodConfig,
    Preset,
    Targets,
    find_linear_targets,
    head_modules,
    register,
    replace_module,
)

PATCH_EMBED = "patch_embed"
"""Target naming the patch-embedding projection (`patch_embed.proj`)."""

NORM = "norm"
"""Target naming every LayerNorm of the model (outside the classifier head)."""


class SSFConfig(MethodConfig):
    """Configuration of SSF."""

    targets: Targets = (PATCH_EMBED, NORM, "qkv", "proj", "fc1", "fc2")
    """Operations followed by a scale and shift: 'patch_embed' (the patch projection), 'norm' (every
    LayerNorm), and linear layers of the blocks ('qkv', 'proj', 'fc1', 'fc2' or any dotted suffix)."""
    init_std: Annotated[float, Field(ge=0.0)] = 0.0
    """0: gamma = 1, beta = 0 (identity at init). > 0: gamma ~ N(1, std^2), beta ~ N(0, std^2); the
    official code uses 0.02."""

    @model_validator(mode="after")
    def _whole_outputs_only(self) -> SSFConfig:
        sliced = [t for t in self.targets if t in QKV_PARTS]
        if sliced:
            raise ValueError(f"targets {sliced} are thirds of attn.qkv; SSF modulates whole outputs (use 'qkv')")
        return self


class SSFWrapper(MergeableWrapper):
    """A linear, convolution or LayerNorm layer followed by a per-channel scale and shift.

    Parameters are `peft_ssf_scale` ($\\gamma$) and `peft_ssf_shift` ($\\beta$), one entry per
    output channel: the last dimension of a linear or LayerNorm output, dimension 1 of a
    convolution's `(N, C, H, W)` output.

    Args:
        base_layer: The frozen layer, with a `weight` and a `bias` (the shift folds into the bias).
        init_std: 0 for $\\gamma = 1, \\beta = 0$; else the standard deviation of a normal
            initialization around those values.
    """

    def __init__(self, base_layer: nn.Module, init_std: float) -> None:
        super().__init__(base_layer)
        weight = base_layer.weight
        factory = {"device": weight.device, "dtype": weight.dtype}
        channels = weight.shape[0]
        self.channels_first = isinstance(base_layer, nn.Conv2d)
        self.peft_ssf_scale = nn.Parameter(torch.ones(channels, **factory))
        self.peft_ssf_shift = nn.Parameter(torch.zeros(channels, **factory))
        if init_std > 0:
            # gamma ~ N(1, std^2), beta ~ N(0, std^2)
            nn.init.normal_(self.peft_ssf_scale, mean=1.0, std=init_std)
            nn.init.normal_(self.peft_ssf_shift, mean=0.0, std=init_std)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Compute $\\gamma \\odot \\mathrm{op}(x) + \\beta$ over the channel dimension."""
        out = self.base_layer(x)
        if self.merged:
            return out
        scale, shift = self.peft_ssf_scale, self.peft_ssf_shift
        if self.channels_first:
            scale, shift = scale[:, None, None], shift[:, None, None]
        # y = gamma ⊙ x + beta
        return out * scale + shift

    def fold(self) -> None:
        """Fold the scale into the weight and both into the bias."""
        weight, bias = self.base_layer.weight, self.base_layer.bias
        scale = self.peft_ssf_scale.to(weight.dtype)
        # W' = diag(gamma) W  (rows of a linear layer, output channels of a conv, entries of a LayerNorm)
        weight.mul_(scale.view(-1, *([1] * (weight.dim() - 1))))
        # b' = gamma ⊙ b + beta
        bias.mul_(scale).add_(self.peft_ssf_shift.to(bias.dtype))

    def extra_repr(self) -> str:
        return f"channels={self.peft_ssf_scale.numel()}"


def find_ssf_targets(model: nn.Module, targets: tuple[str, ...]) -> list[str]:
    """Resolve SSF targets to module names, checking that each layer can absorb a scale and shift.

    Args:
        model: A timm vision transformer.
        targets: Target names (see [`SSFConfig`][reference_impls.methods.ssf.SSFConfig]).

    Returns:
        Module names, in the model's module order.

    Raises:
        ValueError: If a target matches nothing, or a matched layer has no weight and bias or a
            LayerNorm normalizes over more than one dimension.
    """
    heads = tuple(f"{h}." for h in head_modules(model))
    modules = dict(model.named_modules())
    chosen: set[str] = set()
    linear_targets = [t for t in targets if t not in (PATCH_EMBED, NORM)]
    if PATCH_EMBED in targets:
        proj = getattr(getattr(model, "patch_embed", None), "proj", None)
        if not isinstance(proj, (nn.Conv2d, nn.Linear)):
            raise ValueError("target 'patch_embed' needs a `patch_embed.proj` convolution or linear layer")
        chosen.add("patch_embed.proj")
    if NORM in targets:
        norms = [n for n, m in modules.items() if isinstance(m, nn.LayerNorm) and not n.startswith(heads)]
        if not norms:
            raise ValueError("target 'norm' matches no LayerNorm in the model")
        chosen.update(norms)
    if linear_targets:
        chosen.update(find_linear_targets(model, linear_targets))
    ordered = [n for n in modules if n in chosen]
    for name in ordered:
        layer = modules[name]
        if getattr(layer, "weight", None) is None or getattr(layer, "bias", None) is None:
            raise ValueError(
                f"layer {name!r} has no weight or no bias, so a scale and shift cannot be folded into it; "
                f"leave it out of targets"
            )
        if isinstance(layer, nn.LayerNorm) and len(layer.normalized_shape) != 1:
            shape = tuple(layer.normalized_shape)
            raise ValueError(f"LayerNorm {name!r} normalizes over {shape}; expected one dimension")
    return ordered


def apply_ssf(model: nn.Module, config: SSFConfig) -> list[str]:
    """Wrap every targeted operation with [`SSFWrapper`][reference_impls.methods.ssf.SSFWrapper].

    Args:
        model: A timm vision transformer (already frozen).
        config: The SSF config.

    Returns:
        An empty list: no backbone parameter is trained.
    """
    # resolve and check every target before changing the model
    names = find_ssf_targets(model, config.targets)
    for name in names:
        replace_module(model, name, SSFWrapper(model.get_submodule(name), config.init_std))
    return []


# the official code's placement and initialization (gamma ~ N(1, 0.02^2), beta ~ N(0, 0.02^2))
_OFFICIAL = {"targets": (PATCH_EMBED, NORM, "qkv", "proj", "fc1", "fc2"), "init_std": 0.02}
PRESETS = {
    "vtab-1k": Preset(_OFFICIAL, source="lian2022scaling: the official ViT code (github.com/dongzelian/SSF), "
                      "train_scripts/vit/vtab/*/train_ssf.sh"),
    "fgvc": Preset(_OFFICIAL, source="lian2022scaling: the official ViT code (github.com/dongzelian/SSF), "
                   "train_scripts/vit/fgvc/*/train_ssf.sh"),
}

register("ssf", SSFConfig, apply_ssf, mergeable=True, presets=PRESETS)
