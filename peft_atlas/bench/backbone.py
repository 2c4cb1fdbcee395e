"""The backbone of a run: the timm model, its weights from a checkpoint, and the VTAB-micro backbone.

Every way a backbone cannot be built from the config (a missing or unreadable checkpoint, one
that does not fit the model, arguments timm rejects) raises
[`BackboneError`][peft_atlas.bench.backbone.BackboneError], naming the file or the model.
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from reference_impls.backbone import head_modules

from .config import BackboneConfig
from .micro import CheckpointHashError, micro_backbone_checkpoint

__all__ = ["BackboneError", "build_backbone", "load_state_dict"]


class BackboneError(ValueError):
    """A backbone that cannot be built as configured; the message names the file or model."""


def load_state_dict(path: Path) -> dict[str, torch.Tensor]:
    """Read a checkpoint: safetensors, or a torch file read with `weights_only=True`.

    A dict nested under `model` or `state_dict` is unwrapped and a `module.` prefix (from
    DistributedDataParallel) is removed.

    Args:
        path: The checkpoint file.

    Raises:
        BackboneError: If the file does not exist, cannot be read or holds no tensors.
    """
    if not path.is_file():
        raise BackboneError(f"{path}: backbone checkpoint not found (backbone.checkpoint)")
    try:
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file

            state = load_file(str(path), device="cpu")
        else:
            state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:  # safetensors and torch raise several unrelated types
        raise BackboneError(f"{path}: cannot read the checkpoint ({type(error).__name__}: {error})") from None
    for key in ("model", "state_dict"):
        if isinstance(state, dict) and isinstance(state.get(key), dict):
            state = state[key]
    if not isinstance(state, dict) or not any(isinstance(v, torch.Tensor) for v in state.values()):
        raise BackboneError(f"{path}: expected a state dict of tensors")
    return {k.removeprefix("module."): v for k, v in state.items() if isinstance(v, torch.Tensor)}


def _checkpoint_path(checkpoint: str) -> Path:
    """The file named by `backbone.checkpoint` (`micro`: the cached VTAB-micro backbone)."""
    if checkpoint != "micro":
        return Path(checkpoint)
    try:
        return micro_backbone_checkpoint()  # the committed file, else cached, else pretrained now
    except CheckpointHashError as error:
        raise BackboneError(str(error)) from None


def build_backbone(config: BackboneConfig, num_classes: int) -> nn.Module:
    """Create the timm model with a new `num_classes` head and load its weights.

    With a local checkpoint, timm's ViT checkpoint filter adapts it (position-embedding
    resampling, CLIP/DINOv2 key names); the classifier head is never loaded (it is new for each
    task) and every other model parameter must be present in the checkpoint.

    Args:
        config: The backbone section.
        num_classes: Classes of the task.

    Raises:
        BackboneError: If timm rejects the model arguments or cannot download the pretrained
            weights, or the checkpoint is missing, unreadable, or misses parameters of the model
            or has unexpected ones.
    """
    import timm
    from timm.models.vision_transformer import VisionTransformer, checkpoint_filter_fn

    described = f"{config.model} {config.model_kwargs}"
    try:
        model = timm.create_model(config.model, pretrained=config.pretrained, num_classes=num_classes,
                                  **config.model_kwargs)
    except (TypeError, ValueError, OSError) as error:  # an argument the model does not take, a failed download
        raise BackboneError(f"cannot create {described}: {type(error).__name__}: {error}") from None
    if config.checkpoint is None:
        return model
    path = _checkpoint_path(config.checkpoint)
    state = load_state_dict(path)
    if isinstance(model, VisionTransformer):
        state = checkpoint_filter_fn(state, model)
    heads = tuple(f"{name}." for name in head_modules(model))
    state = {k: v for k, v in state.items() if not k.startswith(heads)}
    try:
        missing, unexpected = model.load_state_dict(state, strict=False)
    except RuntimeError as error:  # shape mismatch
        raise BackboneError(f"{path}: checkpoint does not fit {described}: {error}") from None
    missing = [k for k in missing if not k.startswith(heads)]
    if missing or unexpected:
        raise BackboneError(
            f"{path}: checkpoint does not fit {described}: "
            f"missing {missing[:5]}{'...' if len(missing) > 5 else ''}, "
            f"unexpected {unexpected[:5]}{'...' if len(unexpected) > 5 else ''}"
        )
    return model
