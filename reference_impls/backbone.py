"""What the methods need to know about a timm vision transformer, read from the model itself."""

from __future__ import annotations

from typing import Any

from timm.layers import RmsNorm
from torch import nn

__all__ = [
    "NORM_TYPES",
    "backbone_signature",
    "check_backbone",
    "check_vit",
    "factory_kwargs",
    "head_modules",
    "replace_module",
]

NORM_TYPES: tuple[type[nn.Module], ...] = (nn.LayerNorm, RmsNorm)
"""The normalization layers of timm vision transformers."""


def check_vit(model: nn.Module) -> None:
    """Raise unless `model` looks like a timm `VisionTransformer`.

    Supported are timm `VisionTransformer` models and their subclasses (DeiT distilled, models
    with register tokens, models without class token): anything with `blocks`, `embed_dim`,
    `num_prefix_tokens` and a classifier `head`.

    Args:
        model: The model to check.

    Raises:
        TypeError: If the model lacks one of the attributes above.
    """
    missing = [a for a in ("blocks", "embed_dim", "num_prefix_tokens", "head") if not hasattr(model, a)]
    if missing or not isinstance(getattr(model, "blocks", None), (nn.Sequential, nn.ModuleList)):
        raise TypeError(
            "the model must be a timm VisionTransformer (with `blocks`, `embed_dim`, `num_prefix_tokens` "
            f"and `head`, e.g. timm.create_model('vit_base_patch16_224')); got {type(model).__name__}"
            + (f" without {', '.join(missing)}" if missing else "")
        )


def _check_clip(model: nn.Module) -> None:
    from .clip import check_clip

    check_clip(model)


BACKBONE_CHECKS = {"vit": check_vit, "clip": _check_clip}
"""The check of each kind of backbone a method can declare in `register(..., backbone=...)`."""


def check_backbone(model: nn.Module, kind: str) -> None:
    """Raise a `TypeError` unless `model` is a backbone of the given kind (see `BACKBONE_CHECKS`)."""
    BACKBONE_CHECKS[kind](model)


def head_modules(model: nn.Module) -> dict[str, nn.Module]:
    """Return the classifier head(s): `head`, and `head_dist` for distilled models."""
    return {n: getattr(model, n) for n in ("head", "head_dist") if isinstance(getattr(model, n, None), nn.Module)}


def factory_kwargs(module: nn.Module) -> dict[str, Any]:
    """`device` and `dtype` of a module's first parameter, for creating tensors beside it."""
    reference = next(module.parameters())
    return {"device": reference.device, "dtype": reference.dtype}


def replace_module(model: nn.Module, name: str, new: nn.Module) -> None:
    """Swap the submodule at dotted path `name` for `new` (`setattr` on its parent).

    Args:
        model: Root module.
        name: Dotted module name, as in `model.named_modules()`.
        new: The replacement (usually a wrapper holding the old module as `base_layer`).
    """
    parent_name, _, child = name.rpartition(".")
    parent = model.get_submodule(parent_name) if parent_name else model
    setattr(parent, child, new)


def backbone_signature(model: nn.Module) -> dict[str, Any]:
    """Describe the backbone an adapter was trained on (for a CLIP model: both towers' sizes).

    Returns:
        `architecture` (timm's pretrained-config name, else the class name), `embed_dim`,
        `depth`, `num_prefix_tokens` and `num_classes`.
    """
    cfg = getattr(model, "pretrained_cfg", None) or getattr(model, "default_cfg", None) or {}
    if hasattr(model, "token_embedding") and hasattr(model, "visual"):  # a CLIP model: both towers
        return {
            "architecture": type(model).__name__,
            "embed_dim": int(model.text_projection.shape[-1]) if hasattr(model, "text_projection") else -1,
            "text_width": int(model.token_embedding.weight.shape[1]),
            "context_length": int(model.positional_embedding.shape[0]),
            "vision_width": int(getattr(getattr(model.visual, "conv1", None), "out_channels", -1)),
            "vision_depth": len(getattr(getattr(model.visual, "transformer", None), "resblocks", ())),
        }
    return {
        "architecture": cfg.get("architecture") or type(model).__name__,
        "embed_dim": int(getattr(model, "embed_dim", -1)),
        "depth": len(getattr(model, "blocks", ())),
        "num_prefix_tokens": int(getattr(model, "num_prefix_tokens", -1)),
        "num_classes": int(getattr(model, "num_classes", -1)),
    }

