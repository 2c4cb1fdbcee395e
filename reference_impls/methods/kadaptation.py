"""KAdaptation: weight updates as sums of Kronecker products of shared and low-rank layer-specific factors.

Paper: Parameter-Efficient Model Adaptation for Vision Transformers (He et al., AAAI 2023).
arXiv: https://arxiv.org/abs/2203.16329. Bib key: he2023parameter.

The update of a frozen projection $W_0 \\in \\mathbb{R}^{d_{out} \\times d_{in}}$ is a sum of $n$
Kronecker products, $\\Delta W = s \\sum_{i=1}^{n} A_i \\otimes B_i$. The "slow" factors
$A_i \\in \\mathbb{R}^{n \\times n}$ are shared by all blocks (one set per adapted projection type, e.g.
one for the query and one for the value projection); the "fast" factors
$B_i \\in \\mathbb{R}^{d_{out}/n \\times d_{in}/n}$ belong to one layer and have rank $r$,
$B_i = u_i v_i^\\top$. The layer computes $h = W_0 x + b_0 + \\mathrm{dropout}(\\Delta W) x + b$ with a
trainable bias $b$ on the adapted outputs.

Defaults follow the official code (PEViT, `vision_benchmark/evaluation/model.py`): the query and
value thirds of timm's fused `attn.qkv` are adapted, $n = 32$, $r = 1$, each $A_i$ is itself stored
as an outer product $a_i c_i^\\top$ (`factorized_a`) with $a_i, c_i$ drawn from $U(-0.01, 0.01)$,
$s = 160$, dropout 0.5 on the entries of the expanded update, and a bias on the adapted outputs.
Differences from that code: there one bias vector is shared by the query and value outputs of a
layer (here each adapted part has its own); the query update is added after the queries are
divided by $\\sqrt{d_{head}}$ (here it is part of the projection output, as $\\Delta W_q$ is);
the value update reuses the query's fast factors (here each part uses its own); and both factors
of $B_i$ start at zero, which leaves every factor without gradient, whereas here $u_i = 0$ and
$v_i$ is Glorot-uniform (gain $\\sqrt{2}$, the code's initialization of unfactored $B_i$), so
$\\Delta W$ starts at zero and every factor trains.

The shared factors live in `model.peft_kadaptation` (one entry per projection type); every wrapper
keeps plain references to the entries it uses. Mergeable: after training $W_0 + \\Delta W$ replaces
$W_0$ and $b$ is added to the bias.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from ..authoring import (
    WHOLE,
    Dropout,
    MethodConfig,
    PositiveInt,
    Rank,
    Targets,
    WeightUpdateWrapper,
    factory_kwargs,
    find_linear_targets,
    output_splits,
    register,
    replace_module,
)


class KAdaptationConfig(MethodConfig):
    """Configuration of KAdaptation."""

    n: PositiveInt = 32
    """Number n of Kronecker products and size of each shared A_i (n x n); must divide the adapted
    widths (official: 32)."""
    r: Rank = 1
    """Rank r of each layer-specific B_i = u_i v_i^T (official: 1)."""
    scale: float = 160.0
    """Scale s of the update (official: 160)."""
    dropout: Dropout = 0.5
    """Dropout probability on the entries of the expanded update, training only (official: 0.5)."""
    factorized_a: bool = True
    """Store each shared A_i as an outer product of two n-vectors (official) instead of a full n x n
    matrix."""
    bias: bool = True
    """Train a bias on the adapted outputs (official: yes)."""
    targets: Targets = ("q", "v")
    """Layers to adapt in every block: 'q', 'k', 'v' (thirds of the fused attn.qkv), 'qkv', 'proj',
    'fc1', 'fc2', or any dotted suffix of a linear layer's name."""


class SlowFactors(nn.Module):
    """The $n$ matrices $A_i \\in \\mathbb{R}^{n \\times n}$ shared by one projection type across blocks.

    Parameters: `left` and `right` ($n \\times n$, row $i$ giving $a_i$ and $c_i$ of
    $A_i = a_i c_i^\\top$) when factorized, else `full` ($n \\times n \\times n$). All entries start in
    $U(-0.01, 0.01)$.

    Args:
        n: Number and size of the matrices.
        factorized: Store each $A_i$ as an outer product.
        device: Device of the adapted layers.
        dtype: Dtype of the adapted layers.
    """

    def __init__(self, n: int, factorized: bool, device: torch.device, dtype: torch.dtype) -> None:
        super().__init__()
        factory = {"device": device, "dtype": dtype}
        if factorized:
            self.left = nn.Parameter(torch.empty(n, n, **factory).uniform_(-0.01, 0.01))
            self.right = nn.Parameter(torch.empty(n, n, **factory).uniform_(-0.01, 0.01))
        else:
            self.full = nn.Parameter(torch.empty(n, n, n, **factory).uniform_(-0.01, 0.01))

    def matrices(self) -> torch.Tensor:
        """Return the stack of the $A_i$, shape `(n, n, n)`."""
        if hasattr(self, "full"):
            return self.full
        # A_i = a_i c_i^T
        return self.left[:, :, None] * self.right[:, None, :]


class KAdaptationLinear(WeightUpdateWrapper):
    """A linear layer with a Kronecker update on all of its output or on parts of a fused qkv output.

    Parameters per adapted part: `peft_u[part]` ($n \\times d_{part}/n \\times r$), `peft_v[part]`
    ($n \\times d_{in}/n \\times r$) and, with a bias, `peft_bias[part]` ($d_{part}$). The shared
    $A_i$ are read from `slow[part]`, plain references (registered once, in `model.peft_kadaptation`).

    Args:
        base_layer: The frozen linear layer.
        parts: Parts to adapt (see [`find_linear_targets`][reference_impls.targets.find_linear_targets]).
        slow: The shared factors of each adapted part.
        r: Rank of the $B_i$.
        scale: Scale s.
        dropout: Dropout probability on the entries of the update.
        bias: Train a bias on the adapted outputs.
    """

    def __init__(
        self,
        base_layer: nn.Linear,
        parts: tuple[str, ...],
        slow: dict[str, SlowFactors],
        r: int,
        scale: float,
        dropout: float,
        bias: bool,
    ) -> None:
        super().__init__(base_layer)
        weight = base_layer.weight
        factory = {"device": weight.device, "dtype": weight.dtype}
        # a plain dict, not submodules: the shared factors are registered once, in model.peft_kadaptation
        self.slow = dict(slow)
        self.splits = output_splits(base_layer, parts)
        self.scale = scale
        self.peft_dropout = nn.Dropout(dropout) if dropout > 0 else nn.Identity()
        self.peft_u = nn.ParameterDict()
        self.peft_v = nn.ParameterDict()
        self.peft_bias = nn.ParameterDict()
        d_in = base_layer.in_features
        for part, size in self.splits:
            if part not in parts:
                continue
            n = next(self.slow[part].parameters()).shape[0]
            self.peft_u[part] = nn.Parameter(torch.zeros(n, size // n, r, **factory))
            # Glorot-uniform with gain sqrt(2) over the factor's (d_in / n) x r shape
            bound = math.sqrt(2.0) * math.sqrt(6.0 / (d_in // n + r))
            self.peft_v[part] = nn.Parameter(torch.empty(n, d_in // n, r, **factory).uniform_(-bound, bound))
            if bias:
                self.peft_bias[part] = nn.Parameter(torch.zeros(size, **factory))

    def part_delta(self, part: str) -> torch.Tensor:
        """Return $\\Delta W$ of one adapted part, shape `(d_part, d_in)`."""
        a = self.slow[part].matrices()
        # B_i = u_i v_i^T
        b = self.peft_u[part] @ self.peft_v[part].transpose(1, 2)
        n, rows, cols = b.shape
        # ΔW = s Σ_i A_i ⊗ B_i, i.e. block (α, γ) of ΔW is s Σ_i A_i[α, γ] B_i
        return self.scale * torch.einsum("iac,ikl->akcl", a, b).reshape(n * rows, n * cols)

    def delta_weight(self) -> torch.Tensor:
        """Return $\\Delta W$ with the shape of the base weight."""
        weight = self.base_layer.weight
        rows = []
        for part, size in self.splits:
            rows.append(self.part_delta(part) if part in self.peft_u else weight.new_zeros(size, weight.shape[1]))
        return torch.cat(rows, dim=0)

    def update(self, x: torch.Tensor, out: torch.Tensor) -> torch.Tensor:
        """Return $\\mathrm{dropout}(\\Delta W) x + b$ per part, shaped like the base output `out`."""
        pieces = []
        for part, size in self.splits:
            if part in self.peft_u:
                # Δh = dropout(ΔW) x + b
                bias = self.peft_bias[part] if part in self.peft_bias else None
                pieces.append(F.linear(x, self.peft_dropout(self.part_delta(part)), bias))
            else:
                pieces.append(out.new_zeros(*out.shape[:-1], size))
        return torch.cat(pieces, dim=-1)

    def fold(self) -> None:
        """Fold the update and the bias into the base layer
        (see [`MergeableWrapper`][reference_impls.wrappers.MergeableWrapper])."""
        weight, bias = self.base_layer.weight, self.base_layer.bias
        # W = W_0 + ΔW
        weight.add_(self.delta_weight().to(weight.dtype))
        if len(self.peft_bias):
            offset = 0
            for part, size in self.splits:
                if part in self.peft_bias:
                    # b_0 ← b_0 + b on the adapted outputs
                    bias[offset : offset + size].add_(self.peft_bias[part].to(bias.dtype))
                offset += size

    def extra_repr(self) -> str:
        return f"parts={list(self.peft_u)}, scale={self.scale:g}"


def projection_type(name: str, part: str) -> str:
    """Key of the shared factors of a layer part: its name inside the block, plus the qkv third.

    Example: `("blocks.3.attn.qkv", "q")` gives `"attn_qkv_q"`, `("blocks.3.mlp.fc1", "all")` gives `"mlp_fc1"`.
    """
    inner = name.split(".", 2)[2] if name.startswith("blocks.") else name
    return (inner if part == WHOLE else f"{inner}.{part}").replace(".", "_")


def apply_kadaptation(model: nn.Module, config: KAdaptationConfig) -> list[str]:
    """Add the shared factors as `model.peft_kadaptation` and wrap every targeted linear layer of
    the blocks with [`KAdaptationLinear`][reference_impls.methods.kadaptation.KAdaptationLinear].

    Args:
        model: A timm vision transformer (already frozen).
        config: The KAdaptation config.

    Returns:
        An empty list: no backbone parameter is trained.

    Raises:
        ValueError: If a target matches no layer, n does not divide an adapted width, or a
            bias is requested for a layer without one.
    """
    targets = find_linear_targets(model, config.targets)
    layers = {name: model.get_submodule(name) for name in targets}
    for name, parts in targets.items():
        layer = layers[name]
        widths = [layer.in_features] + [size for part, size in output_splits(layer, parts) if part in parts]
        if any(width % config.n for width in widths):
            raise ValueError(
                f"n = {config.n} does not divide the widths {sorted(set(widths))} of layer {name!r}"
            )
        if config.bias and layer.bias is None:
            raise ValueError(f"layer {name!r} has no bias to merge the trained bias into; use bias=False")
    factory = factory_kwargs(next(iter(layers.values())))
    shared = nn.ModuleDict()
    for name, parts in targets.items():
        for part in parts:
            key = projection_type(name, part)
            if key not in shared:
                shared[key] = SlowFactors(config.n, config.factorized_a, **factory)
    model.peft_kadaptation = shared
    for name, parts in targets.items():
        slow = {part: shared[projection_type(name, part)] for part in parts}
        wrapper = KAdaptationLinear(layers[name], parts, slow, config.r, config.scale, config.dropout, config.bias)
        replace_module(model, name, wrapper)
    return []


register("kadaptation", KAdaptationConfig, apply_kadaptation, mergeable=True)
