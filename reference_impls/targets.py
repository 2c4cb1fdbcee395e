"""Targets of methods that act on linear layers (LoRA, DoRA, (IA)³, ...), including slices of
timm's fused `attn.qkv` layer."""

from __future__ import annotations

from collections.abc import Callable, Iterable

from torch import nn

from .backbone import replace_module

__all__ = ["QKV_PARTS", "WHOLE", "find_linear_targets", "output_splits", "wrap_linear_targets"]

QKV_PARTS = ("q", "k", "v")
"""Targets that select a third of the output of timm's fused `attn.qkv` layer."""

WHOLE = "all"
"""Part name used for a whole (not sliced) linear layer."""


def find_linear_targets(model: nn.Module, targets: Iterable[str]) -> dict[str, tuple[str, ...]]:
    """Resolve target names to the linear layers inside the model's blocks.

    `"q"`, `"k"` and `"v"` select the query, key and value thirds of timm's fused `attn.qkv`
    (or, on a model with separate projections, layers named `q`, `k`, `v`). Any other target
    matches the linear layers whose dotted name equals it or ends with `"." + target`, e.g.
    `"proj"`, `"attn.proj"`, `"fc1"`, `"mlp.fc2"` or `"qkv"` (the whole fused layer).

    Args:
        model: A timm vision transformer.
        targets: Target names.

    Returns:
        A mapping from module name to the parts to adapt: a subset of `("q", "k", "v")` (in that
        order) for a fused qkv layer, or `("all",)` for a whole layer.

    Raises:
        ValueError: If a target matches no layer (the message lists candidate names), or if
            targets overlap (e.g. `"q"` together with `"qkv"`).
    """
    linears = {n: m for n, m in model.named_modules() if n.startswith("blocks.") and isinstance(m, nn.Linear)}
    fused = [n for n, m in linears.items() if n.endswith(".qkv") and m.out_features % 3 == 0]
    parts: dict[str, set[str]] = {}
    for target in dict.fromkeys(targets):
        if target in QKV_PARTS and fused:
            matched, part = fused, target
        else:
            matched = [n for n in linears if n == target or n.endswith("." + target)]
            part = WHOLE
        if not matched:
            candidates = sorted({n.split(".", 2)[2] for n in linears if n.count(".") >= 2})
            if fused:
                candidates = list(QKV_PARTS) + candidates
            raise ValueError(
                f"target {target!r} matches no linear layer in the model's blocks; "
                f"candidates: {', '.join(candidates)}"
            )
        for name in matched:
            chosen = parts.setdefault(name, set())
            if (part == WHOLE) != (WHOLE in chosen) and chosen:
                raise ValueError(f"targets overlap on layer {name!r} (a whole layer and a slice of it)")
            chosen.add(part)
    order = (*QKV_PARTS, WHOLE)
    return {name: tuple(p for p in order if p in chosen) for name, chosen in parts.items()}


def output_splits(layer: nn.Linear, parts: tuple[str, ...]) -> list[tuple[str, int]]:
    """Partition a layer's output features into named parts.

    Args:
        layer: The linear layer.
        parts: As returned by [`find_linear_targets`][reference_impls.targets.find_linear_targets].

    Returns:
        `[("all", out_features)]` for a whole layer, else `[("q", n), ("k", n), ("v", n)]` with
        `n = out_features // 3`, in the order of the fused layer's output.
    """
    if parts == (WHOLE,):
        return [(WHOLE, layer.out_features)]
    third = layer.out_features // 3
    return [(p, third) for p in QKV_PARTS]


def wrap_linear_targets(
    model: nn.Module, targets: Iterable[str], make_wrapper: Callable[[nn.Linear, tuple[str, ...]], nn.Module]
) -> None:
    """Swap every linear layer the targets select for `make_wrapper(layer, parts)`.

    Args:
        model: A timm vision transformer.
        targets: Target names (see [`find_linear_targets`][reference_impls.targets.find_linear_targets]).
        make_wrapper: Builds the wrapper of one layer from the layer and the parts to adapt.
    """
    for name, parts in find_linear_targets(model, targets).items():
        replace_module(model, name, make_wrapper(model.get_submodule(name), parts))
