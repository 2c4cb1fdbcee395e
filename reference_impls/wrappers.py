"""Wrappers: how a method changes a backbone layer without patching it.

A wrapper keeps the original layer as `self.base_layer`, calls it in `forward`, and is swapped in
with `setattr` on the parent (see `replace_module`). A wrapper whose update is linear in the
weight can be folded into the backbone (`MergeableWrapper`); `merge` and `unmerge` are explicit
and idempotent, never a side effect of `train()` or `eval()`.
"""

from __future__ import annotations

from collections.abc import Iterator

import torch
from torch import nn

__all__ = ["MergeableWrapper", "WeightUpdateWrapper", "Wrapper", "iter_wrappers", "match_training_mode"]


class Wrapper(nn.Module):
    """Base class of every module a method swaps in for a backbone layer.

    Subclasses keep the original layer as `self.base_layer` and call it in `forward`. Wrappers
    that can be folded into the backbone derive from
    [`MergeableWrapper`][reference_impls.wrappers.MergeableWrapper] instead.

    Args:
        base_layer: The wrapped backbone layer.
    """

    mergeable: bool = False

    def __init__(self, base_layer: nn.Module) -> None:
        super().__init__()
        self.base_layer = base_layer
        self.merged = False

    def merge(self) -> None:
        """Fold the method's update into `base_layer`'s weights."""
        raise TypeError(f"{type(self).__name__} cannot be merged into the backbone")

    def unmerge(self) -> None:
        """Restore `base_layer`'s original weights."""
        raise TypeError(f"{type(self).__name__} cannot be merged into the backbone")


class MergeableWrapper(Wrapper):
    """A wrapper whose update can be folded into `base_layer.weight` (and `.bias`).

    Subclasses implement [`fold`][reference_impls.wrappers.MergeableWrapper.fold] and return the
    base layer's output alone from `forward` while `self.merged` is true. `merge` keeps a copy of
    the original weight and bias (non-persistent buffers, so not in the state dict) and `unmerge`
    restores them exactly; both are idempotent.

    Args:
        base_layer: The wrapped backbone layer (with `weight` and optionally `bias`).
    """

    mergeable = True

    def __init__(self, base_layer: nn.Module) -> None:
        super().__init__(base_layer)
        self.register_buffer("peft_original_weight", None, persistent=False)
        self.register_buffer("peft_original_bias", None, persistent=False)

    def fold(self) -> None:
        """Change `base_layer.weight` / `.bias` in place so that the base layer alone computes
        the adapted output. Called under `torch.no_grad()` with the original weights in place."""
        raise NotImplementedError

    @torch.no_grad()
    def merge(self) -> None:
        """Fold the update into the base layer (idempotent)."""
        if self.merged:
            return
        bias = getattr(self.base_layer, "bias", None)
        self.peft_original_weight = self.base_layer.weight.detach().clone()
        self.peft_original_bias = bias.detach().clone() if bias is not None else None
        self.fold()
        self.merged = True

    @torch.no_grad()
    def unmerge(self) -> None:
        """Restore the exact original weight and bias (idempotent)."""
        if not self.merged:
            return
        self.base_layer.weight.copy_(self.peft_original_weight)
        if self.peft_original_bias is not None:
            self.base_layer.bias.copy_(self.peft_original_bias)
        self.peft_original_weight = self.peft_original_bias = None
        self.merged = False


class WeightUpdateWrapper(MergeableWrapper):
    """A mergeable wrapper whose method adds an update $\\Delta W x$ to the base layer's output.

    Subclasses implement `update(x, out)` (the added output, shaped like the base output `out`)
    and `delta_weight()` (the same update as a matrix of the base weight's shape); this class
    adds the first in `forward` and folds the second into the weight on `merge`.
    """

    def update(self, x: torch.Tensor, out: torch.Tensor) -> torch.Tensor:
        """The output added to the base layer's output `out` for the input `x`."""
        raise NotImplementedError

    def delta_weight(self) -> torch.Tensor:
        """The update as a matrix of the base weight's shape."""
        raise NotImplementedError

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Compute $W_0 x + b_0 + \\Delta W x$ (the base layer alone once merged)."""
        out = self.base_layer(x)
        if self.merged:
            return out
        # h = W_0 x + b_0 + ΔW x
        return out + self.update(x, out).to(out.dtype)

    def fold(self) -> None:
        """Fold the update into the base weight (see [`MergeableWrapper`][reference_impls.wrappers.MergeableWrapper])."""
        weight = self.base_layer.weight
        # W = W_0 + ΔW
        weight.add_(self.delta_weight().to(weight.dtype))


def match_training_mode(model: nn.Module) -> None:
    """New modules start in training mode; give each wrapper's added submodules (dropout, ...)
    the mode of the layer it wraps, so that applying a method to an eval-mode model keeps it in
    eval mode."""
    for _, wrapper in iter_wrappers(model):
        mode = wrapper.base_layer.training
        wrapper.training = mode
        for name, child in wrapper.named_children():
            if name != "base_layer":
                child.train(mode)


def iter_wrappers(model: nn.Module) -> Iterator[tuple[str, Wrapper]]:
    """Yield `(name, wrapper)` for every [`Wrapper`][reference_impls.wrappers.Wrapper] in the model."""
    for name, module in model.named_modules():
        if isinstance(module, Wrapper):
            yield name, module
