"""Adapter files: the trained part of a model (method parameters, trained backbone parameters
and head, and the method's persistent buffers: tensors it built from data) in safetensors, with
the method, its config and the backbone in the metadata."""

from __future__ import annotations

import json
from pathlib import Path

import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file
from torch import nn

from .api import adapter_buffer_names, adapter_parameter_names, applied_method, apply, is_merged, merge, unmerge
from .backbone import backbone_signature

__all__ = ["FORMAT_VERSION", "load_adapter", "save_adapter"]

FORMAT_VERSION = "1"
"""Version of the adapter file layout written by [`save_adapter`][reference_impls.adapter_files.save_adapter]."""


def save_adapter(model: nn.Module, path: str | Path) -> None:
    """Write the adapter (method parameters, trained backbone parameters, head, and the method's
    persistent buffers, see [`adapter_buffer_names`][reference_impls.api.adapter_buffer_names]) to
    safetensors.

    The file's metadata holds the method name, its config as JSON, the backbone signature
    ([`backbone_signature`][reference_impls.backbone.backbone_signature]) and the format version.

    Args:
        model: A model on which a method was applied.
        path: Destination file (conventionally `*.safetensors`).

    Raises:
        ValueError: If no method is applied.
    """
    record = applied_method(model)
    if record is None:
        raise ValueError("no method is applied to this model; nothing to save")
    state = model.state_dict(keep_vars=True)
    names = adapter_parameter_names(model) + adapter_buffer_names(model)
    tensors = {n: state[n].detach().to("cpu").contiguous().clone() for n in names}
    metadata = {
        "format": "peft-atlas-adapter",
        "format_version": FORMAT_VERSION,
        "method": record["name"],
        "config": json.dumps(record["config"], sort_keys=True),
        "backbone": json.dumps(backbone_signature(model), sort_keys=True),
    }
    save_file(tensors, str(path), metadata=metadata)


def load_adapter(model: nn.Module, path: str | Path) -> nn.Module:
    """Load an adapter written by [`save_adapter`][reference_impls.adapter_files.save_adapter].

    If no method is applied to `model`, the stored method is applied first with the stored
    config. Tensors are loaded strictly. A merged model is unmerged, loaded and merged again.
    Only safetensors is read (never pickle).

    Args:
        model: The model to load into.
        path: An adapter file.

    Returns:
        The same model object.

    Raises:
        ValueError: If the file is not an adapter of this format, was made for another method,
            config or backbone, or its tensors do not match the model's adapter parameters.
    """
    with safe_open(str(path), framework="pt") as f:
        metadata = f.metadata() or {}
    if metadata.get("format") != "peft-atlas-adapter":
        raise ValueError(f"{path}: not a PEFT Atlas adapter file (no 'format' metadata)")
    if metadata.get("format_version") != FORMAT_VERSION:
        raise ValueError(
            f"{path}: adapter format version {metadata.get('format_version')!r} is not supported "
            f"(expected {FORMAT_VERSION!r})"
        )
    method = metadata["method"]
    config = json.loads(metadata["config"])
    stored_backbone = json.loads(metadata["backbone"])
    backbone = backbone_signature(model)
    if stored_backbone != backbone:
        diff = ", ".join(
            f"{k}: file {stored_backbone.get(k)!r} vs model {backbone.get(k)!r}"
            for k in sorted(set(stored_backbone) | set(backbone))
            if stored_backbone.get(k) != backbone.get(k)
        )
        raise ValueError(f"{path}: adapter was made for another backbone ({diff})")
    record = applied_method(model)
    if record is None:
        apply(model, method, **config)
    elif record["name"] != method:
        raise ValueError(f"{path}: adapter was made for method {method!r}, but the model has method {record['name']!r}")
    elif record["config"] != config:
        raise ValueError(
            f"{path}: adapter config of method {method!r} differs: file {config} vs model {record['config']}"
        )
    tensors = load_file(str(path), device="cpu")
    params = model.state_dict(keep_vars=True)
    expected = set(adapter_parameter_names(model)) | set(adapter_buffer_names(model))
    missing, unexpected = sorted(expected - set(tensors)), sorted(set(tensors) - expected)
    if missing or unexpected:
        raise ValueError(f"{path}: adapter tensors do not match the model: missing {missing}, unexpected {unexpected}")
    for name, tensor in tensors.items():
        if tensor.shape != params[name].shape:
            raise ValueError(
                f"{path}: tensor {name!r} has shape {tuple(tensor.shape)}, model expects {tuple(params[name].shape)}"
            )
    was_merged = is_merged(model)
    if was_merged:
        unmerge(model)
    with torch.no_grad():
        for name, tensor in tensors.items():
            params[name].copy_(tensor)
    if was_merged:
        merge(model)
    return model
