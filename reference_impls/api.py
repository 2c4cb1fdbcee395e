"""The public API shared by every method: apply (or prepare), trainable parameters, merge."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import torch
from torch import nn

from .backbone import check_backbone, head_modules, replace_module
from .registry import MethodSpec, build_config, get_preset, get_spec
from .wrappers import iter_wrappers, match_training_mode

__all__ = [
    "PREFIX",
    "RECORD_ATTR",
    "adapter_buffer_names",
    "adapter_parameter_names",
    "apply",
    "applied_method",
    "is_merged",
    "mark_trainable",
    "merge",
    "prepare",
    "trainable_parameters",
    "unmerge",
]

PREFIX = "peft_"
"""Name prefix shared by every parameter and submodule a method adds."""

RECORD_ATTR = "peft_atlas_method"
"""Attribute set on a model by [`apply`][reference_impls.api.apply]: `{"name", "preset", "config", "backbone_trainable"}`."""


def _is_method_name(name: str) -> bool:
    return any(part.startswith(PREFIX) for part in name.split("."))


def applied_method(model: nn.Module) -> dict[str, Any] | None:
    """The record [`apply`][reference_impls.api.apply] leaves on a model (`None` if no method is applied)."""
    return getattr(model, RECORD_ATTR, None)


def adapter_parameter_names(model: nn.Module) -> list[str]:
    """Names of the parameters an adapter consists of: method parameters, trained backbone
    parameters and the head(s). These are exactly the parameters that
    [`mark_trainable`][reference_impls.api.mark_trainable] unfreezes and
    [`save_adapter`][reference_impls.adapter_files.save_adapter] writes.

    Args:
        model: A model on which a method was applied.
    """
    record = applied_method(model)
    extra = set(record["backbone_trainable"]) if record else set()
    heads = tuple(f"{h}." for h in head_modules(model))
    return [n for n, _ in model.named_parameters() if _is_method_name(n) or n.startswith(heads) or n in extra]


def adapter_buffer_names(model: nn.Module) -> list[str]:
    """Names of the method's persistent buffers (a name component starts with `peft_`): tensors
    a method builds from data instead of training, such as Tip-Adapter's cache.
    [`save_adapter`][reference_impls.adapter_files.save_adapter] writes them with the parameters;
    they are never trained.

    Args:
        model: A model on which a method was applied.
    """
    params = {n for n, _ in model.named_parameters()}
    return [n for n in model.state_dict() if n not in params and _is_method_name(n)]


def mark_trainable(model: nn.Module) -> None:
    """Freeze every parameter, then unfreeze the adapter's: those whose name has a component
    starting with `peft_`, the backbone parameters the method trains, and the head(s).

    Args:
        model: A model on which a method was applied.
    """
    selected = set(adapter_parameter_names(model))
    for name, param in model.named_parameters():
        param.requires_grad_(name in selected)


def trainable_parameters(model: nn.Module) -> int:
    """Return the number of parameters with `requires_grad`."""
    return sum(p.numel() for p in model.parameters() if p.requires_grad)


def _with_method_name(name: str, error: Exception) -> Exception:
    """The same kind of error, its message starting with the method's name."""
    kind = TypeError if isinstance(error, TypeError) else ValueError
    return kind(f"{name}: {error}")


def _with_preset(spec: MethodSpec, preset: str | None, kwargs: dict[str, Any]) -> dict[str, Any]:
    """The preset's options overridden by the explicit keyword arguments; errors name the method."""
    if preset is None:
        return dict(kwargs)
    try:
        options = get_preset(spec.name, preset).options
    except ValueError as error:
        raise _with_method_name(spec.name, error) from None
    return {**options, **kwargs}


def _check(spec: MethodSpec, model: nn.Module, kwargs: dict[str, Any]) -> Any:
    """Build the config and check the backbone; errors name the method."""
    existing = applied_method(model)
    if existing is not None:
        raise ValueError(
            f"method {existing['name']!r} is already applied to this model; "
            f"applying {spec.name!r} on top of it is not supported"
        )
    try:
        config = build_config(spec.name, kwargs)
        check_backbone(model, spec.backbone)
    except (TypeError, ValueError) as error:
        raise _with_method_name(spec.name, error) from None
    return config


def apply(model: nn.Module, name: str, *, preset: str | None = None, **kwargs: Any) -> nn.Module:
    """Apply a PEFT method to a model, in place.

    The backbone is frozen; the method's parameters and the classifier head are trainable.

    Example:
        `ri.apply(model, "adapter", preset="vtab-1k", dropout=0.1)`: the configuration the
        VTAB-1k tables count as "Adapter", with dropout added.

    Args:
        model: A timm vision transformer.
        name: Registry name of the method (see [`list_methods`][reference_impls.registry.list_methods]).
        preset: A named configuration of the method (see
            [`list_presets`][reference_impls.registry.list_presets]); its options come first and
            `kwargs` override them. The record keeps the name; the config holds the values.
        **kwargs: Fields of the method's config.

    Returns:
        The same model object.

    Raises:
        ValueError: Unknown method, preset or config field, a bad config value, a target
            matching no module, a model on which a method was already applied, or a data-driven
            method whose selection is missing (use [`prepare`][reference_impls.api.prepare]).
        TypeError: A config value of the wrong type or a backbone the method does not support.
    """
    spec = get_spec(name)
    config = _check(spec, model, _with_preset(spec, preset, kwargs))
    unset = [f for f in spec.data_fields if getattr(config, f) is None]
    if unset:
        raise ValueError(
            f"{name}: chooses what to tune from the training data, and {', '.join(unset)} "
            f"{'is' if len(unset) == 1 else 'are'} not set; call "
            f"reference_impls.prepare(model, {name!r}, batches) or pass {', '.join(unset)}"
        )
    flags = [(param, param.requires_grad) for param in model.parameters()]
    for param, _ in flags:
        param.requires_grad_(False)
    try:
        backbone_trainable = spec.apply_fn(model, config) or []
    except Exception as error:
        # methods check the model before they change it; only the freezing needs undoing
        for param, flag in flags:
            param.requires_grad_(flag)
        if isinstance(error, (TypeError, ValueError)):
            raise _with_method_name(name, error) from error
        raise
    match_training_mode(model)
    unknown = sorted(set(backbone_trainable) - {n for n, _ in model.named_parameters()})
    if unknown:
        raise RuntimeError(f"method {name!r} returned unknown parameter names: {unknown[:5]}")
    record = {
        "name": name,
        "preset": preset,
        "config": config.model_dump(mode="json"),
        "backbone_trainable": sorted(backbone_trainable),
    }
    setattr(model, RECORD_ATTR, record)
    mark_trainable(model)
    return model


def prepare(
    model: nn.Module, name: str, batches: Iterable[Any], *, preset: str | None = None, **kwargs: Any
) -> nn.Module:
    """Apply a method that chooses what to tune from the training data.

    The method looks at `batches` (e.g. `(images, labels)` pairs from the training loader) on
    the plain backbone, records its choice in its config (so that `save_adapter` and
    `load_adapter` carry it) and is then applied as by [`apply`][reference_impls.api.apply].
    A method that also builds tensors from the data (Tip-Adapter's cache of image features)
    returns them too; they are copied into the applied model, and `save_adapter` carries them
    as well (see [`adapter_buffer_names`][reference_impls.api.adapter_buffer_names]).

    Args:
        model: A timm vision transformer with no method applied.
        name: Registry name of a data-driven method.
        batches: Training batches, in the form the method's prepare step documents.
        preset: A named configuration of the method, as for `apply`.
        **kwargs: Fields of the method's config (those the data chooses are filled in).

    Returns:
        The same model object.

    Raises:
        ValueError: If the method does not choose from data (use `apply`), if its prepare step
            rejects the batches (the message names the method), or as `apply`.
    """
    spec = get_spec(name)
    if spec.prepare_fn is None:
        raise ValueError(f"{name}: takes no data to choose what it tunes; use reference_impls.apply(model, {name!r})")
    config = _check(spec, model, _with_preset(spec, preset, kwargs))
    try:
        chosen = spec.prepare_fn(model, config, batches)
    except (TypeError, ValueError) as error:
        raise _with_method_name(name, error) from error
    chosen, built = chosen if isinstance(chosen, tuple) else (chosen, {})
    apply(model, name, preset=preset, **{**kwargs, **chosen})
    state = model.state_dict(keep_vars=True)
    carried = set(adapter_parameter_names(model)) | set(adapter_buffer_names(model))
    unknown = sorted(set(built) - carried)
    if unknown:
        raise RuntimeError(f"method {name!r} built tensors that are not its parameters or persistent buffers: "
                           f"{unknown[:5]}")
    with torch.no_grad():
        for tensor_name, tensor in built.items():
            state[tensor_name].copy_(tensor)
    return model


def _require_mergeable(model: nn.Module) -> dict[str, Any]:
    record = applied_method(model)
    if record is None:
        raise ValueError("no method is applied to this model; call reference_impls.apply first")
    if not get_spec(record["name"]).mergeable:
        raise ValueError(
            f"method {record['name']!r} is not mergeable: its trained part cannot be folded into "
            f"the backbone weights"
        )
    return record


def is_merged(model: nn.Module) -> bool:
    """Return whether any wrapper of the model is currently merged."""
    return any(w.merged for _, w in iter_wrappers(model))


def merge(model: nn.Module, unload: bool = False) -> nn.Module:
    """Fold the method's update into the backbone weights (idempotent).

    After merging, the forward pass runs only the original layers. The original weights are kept
    so that [`unmerge`][reference_impls.api.unmerge] restores them exactly. Methods that only
    train existing tensors (BitFit, LN-tuning, linear, partial-k, full) have nothing to fold:
    merging them is a no-op.

    Args:
        model: A model with a mergeable method applied.
        unload: Also replace every wrapper by its base layer and remove the `peft_` modules a
            method registered on the model itself (e.g. factors shared by all its wrappers),
            leaving the plain backbone architecture (the state-dict keys equal those of the
            un-adapted model). The method record is removed: the model can no longer be unmerged
            or saved as an adapter.

    Returns:
        The same model object.

    Raises:
        ValueError: If no method is applied or the method is not mergeable.
    """
    record = _require_mergeable(model)
    wrappers = list(iter_wrappers(model))
    try:
        for _, wrapper in wrappers:
            wrapper.merge()
    except (TypeError, ValueError) as error:
        raise _with_method_name(record["name"], error) from error
    if unload:
        # innermost first, so that nested wrappers unwrap cleanly
        for wrapper_name, wrapper in sorted(wrappers, key=lambda nw: -nw[0].count(".")):
            replace_module(model, wrapper_name, wrapper.base_layer)
        for child_name in [n for n, _ in model.named_children() if n.startswith(PREFIX)]:
            delattr(model, child_name)
        delattr(model, RECORD_ATTR)
    return model


def unmerge(model: nn.Module) -> nn.Module:
    """Restore the original backbone weights after [`merge`][reference_impls.api.merge] (idempotent).

    Args:
        model: A model with a mergeable method applied.

    Returns:
        The same model object.
    """
    _require_mergeable(model)
    for _, wrapper in iter_wrappers(model):
        wrapper.unmerge()
    return model
