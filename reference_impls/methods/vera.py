"""VeRA: frozen random low-rank projections shared by all layers, rescaled by trained vectors.

Paper: VeRA: Vector-based Random Matrix Adaptation (Kopiczko, Blankevoort and Asano, ICLR 2024).
arXiv: https://arxiv.org/abs/2310.11454. Bib key: kopiczko2024vera.

VeRA keeps LoRA's low-rank branch but freezes its two matrices: $A \\in \\mathbb{R}^{r \\times d_{in}}$
and $B \\in \\mathbb{R}^{d_{out} \\times r}$ are drawn once (Kaiming uniform) and shared by every
adapted layer. Each layer trains only $\\mathbf{d} \\in \\mathbb{R}^{r}$ and
$\\mathbf{b} \\in \\mathbb{R}^{d_{out}}$ and computes
$h = W_0 x + \\Lambda_b B \\Lambda_d A x$ with $\\Lambda = \\operatorname{diag}(\\cdot)$. $\\mathbf{b}$
starts at zero, so the model equals the backbone at initialization, and the update folds into
the weight, $W = W_0 + \\Lambda_b B \\Lambda_d A$.

Sharing across widths: the paper describes one pair shared by all adapted layers, but layers of
different widths need matrices of different shapes. Here there is one random $A$ per input width
and one random $B$ per output width, so all layers of the same shape (e.g. the query and value
thirds of `attn.qkv` and `attn.proj` in a ViT) use the same pair. (HF PEFT instead draws one pair
of the largest shape and gives each layer its top-left block.)
The matrices are drawn from a `torch.Generator` seeded with the config's `seed`, input widths
first, then output widths, each in increasing order, in float32 on the CPU, then moved to the
device and dtype of the adapted layers. They are non-persistent buffers: an adapter file stores
only $\\mathbf{d}$, $\\mathbf{b}$ and the head, and loading re-creates the same matrices from the
seed recorded in the config. Each wrapper holds the shared matrices as a submodule, so moving the
model to another device or dtype keeps them shared.

As for LoRA, the targets `"q"`, `"k"` and `"v"` adapt the thirds of timm's fused `attn.qkv` (each
with its own $\\mathbf{d}$ and $\\mathbf{b}$; the three share $A$ and $B$), and `"qkv"` adapts the
whole fused layer as one $3d \\times d$ matrix.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ..authoring import (
    Dropout,
    MethodConfig,
    NonNegativeInt,
    Rank,
    Targets,
    WeightUpdateWrapper,
    find_linear_targets,
    output_splits,
    register,
    replace_module,
)


class VeRAConfig(MethodConfig):
    """Configuration of VeRA."""

    r: Rank = 256
    """Rank of the shared random projections; a larger r costs only r numbers per adapted layer."""
    d_init: float = 0.1
    """Initial value of every entry of the vector d (b starts at 0)."""
    dropout: Dropout = 0.0
    """Dropout probability on the input of the VeRA branch."""
    targets: Targets = ("q", "v")
    """Layers to adapt in every block: 'q', 'k', 'v' (thirds of the fused attn.qkv), 'qkv', 'proj',
    'fc1', 'fc2', or any dotted suffix of a linear layer's name."""
    seed: NonNegativeInt = 0
    """Seed of the generator that draws the frozen shared matrices A and B."""


class SharedProjection(nn.Module):
    """A frozen random matrix used by several wrappers: one module object, held by each of them.

    Args:
        weight: The matrix; stored as the non-persistent buffer `weight` (not in the state dict,
            not a parameter, never trained).
    """

    def __init__(self, weight: torch.Tensor) -> None:
        super().__init__()
        self.register_buffer("weight", weight, persistent=False)

    def extra_repr(self) -> str:
        return f"shape={tuple(self.weight.shape)}"


class VeRALinear(WeightUpdateWrapper):
    """A linear layer with VeRA updates on all of its output or on parts of a fused qkv output.

    Trainable parameters are `peft_vera_lambda_d[part]` ($r$) and `peft_vera_lambda_b[part]`
    ($d_{part}$), with `part` in `"q"`, `"k"`, `"v"` or `"all"`. The frozen shared matrices are the
    submodules `peft_vera_A` ($r \\times d_{in}$) and `peft_vera_B` ($d_{part} \\times r$).

    Args:
        base_layer: The frozen linear layer.
        parts: Parts to adapt (see [`find_linear_targets`][reference_impls.targets.find_linear_targets]).
        projection_a: Shared $A$, of shape `(r, in_features)`.
        projection_b: Shared $B$, of shape `(d_part, r)`.
        d_init: Initial value of the entries of $\\mathbf{d}$.
        dropout: Dropout probability on the branch input.
    """

    def __init__(
        self,
        base_layer: nn.Linear,
        parts: tuple[str, ...],
        projection_a: SharedProjection,
        projection_b: SharedProjection,
        d_init: float,
        dropout: float,
    ) -> None:
        super().__init__(base_layer)
        weight = base_layer.weight
        factory = {"device": weight.device, "dtype": weight.dtype}
        r = projection_a.weight.shape[0]
        self.splits = output_splits(base_layer, parts)
        self.peft_vera_A = projection_a
        self.peft_vera_B = projection_b
        self.peft_dropout = nn.Dropout(dropout) if dropout > 0 else nn.Identity()
        self.peft_vera_lambda_d = nn.ParameterDict()
        self.peft_vera_lambda_b = nn.ParameterDict()
        for part, size in self.splits:
            if part in parts:
                self.peft_vera_lambda_d[part] = nn.Parameter(torch.full((r,), d_init, **factory))
                self.peft_vera_lambda_b[part] = nn.Parameter(torch.zeros(size, **factory))

    def delta_weight(self) -> torch.Tensor:
        """Return the update $\\Delta W$ with the shape of the base weight."""
        a, b = self.peft_vera_A.weight, self.peft_vera_B.weight
        weight = self.base_layer.weight
        rows = []
        for part, size in self.splits:
            if part in self.peft_vera_lambda_d:
                # ΔW_part = Λ_b B Λ_d A
                scaled_b = self.peft_vera_lambda_b[part][:, None] * b
                scaled_a = self.peft_vera_lambda_d[part][:, None] * a
                rows.append(scaled_b @ scaled_a)
            else:
                rows.append(weight.new_zeros(size, weight.shape[1]))
        return torch.cat(rows, dim=0)

    def update(self, x: torch.Tensor, out: torch.Tensor) -> torch.Tensor:
        """Return the VeRA branch output, shaped like the base output `out`."""
        h = self.peft_dropout(x)
        # A x is shared by all parts of the layer
        projected = F.linear(h, self.peft_vera_A.weight)
        pieces = []
        for part, size in self.splits:
            if part in self.peft_vera_lambda_d:
                # Δh_part = b ⊙ (B (d ⊙ (A x)))
                scaled = self.peft_vera_lambda_d[part] * projected
                pieces.append(self.peft_vera_lambda_b[part] * F.linear(scaled, self.peft_vera_B.weight))
            else:
                pieces.append(out.new_zeros(*out.shape[:-1], size))
        return torch.cat(pieces, dim=-1)

    def extra_repr(self) -> str:
        return f"parts={list(self.peft_vera_lambda_d)}"


def random_projections(
    r: int, in_widths: list[int], out_widths: list[int], seed: int
) -> tuple[dict[int, torch.Tensor], dict[int, torch.Tensor]]:
    """Draw the frozen matrices: one $A$ per input width, one $B$ per output width.

    The draw is a function of its arguments only: a CPU generator seeded with `seed` fills, in
    float32, first every $A$ (input widths in increasing order), then every $B$ (output widths in
    increasing order), each with Kaiming-uniform values ($\\pm\\sqrt{6 / \\text{fan\\_in}}$).

    Args:
        r: Rank.
        in_widths: Input widths of the adapted layers.
        out_widths: Output widths of the adapted parts.
        seed: Generator seed.

    Returns:
        `(A by input width, B by output width)`, with shapes `(r, d_in)` and `(d_out, r)`.
    """
    generator = torch.Generator(device="cpu").manual_seed(seed)
    a_by_width, b_by_width = {}, {}
    for width in sorted(set(in_widths)):
        # A ~ U(-sqrt(6 / d_in), sqrt(6 / d_in))
        a_by_width[width] = nn.init.kaiming_uniform_(torch.empty(r, width), a=0.0, generator=generator)
    for width in sorted(set(out_widths)):
        # B ~ U(-sqrt(6 / r), sqrt(6 / r))
        b_by_width[width] = nn.init.kaiming_uniform_(torch.empty(width, r), a=0.0, generator=generator)
    return a_by_width, b_by_width


def apply_vera(model: nn.Module, config: VeRAConfig) -> list[str]:
    """Wrap every targeted linear layer of the blocks with [`VeRALinear`][reference_impls.methods.vera.VeRALinear].

    Args:
        model: A timm vision transformer (already frozen).
        config: The VeRA config.

    Returns:
        An empty list: no backbone parameter is trained.
    """
    targets = find_linear_targets(model, config.targets)
    layers = {name: model.get_submodule(name) for name in targets}
    # every adapted part of a layer has the same width: all of it, or a third of a fused qkv
    out_width = {
        name: next(size for part, size in output_splits(layers[name], parts) if part in parts)
        for name, parts in targets.items()
    }
    a_by_width, b_by_width = random_projections(
        config.r, [layer.in_features for layer in layers.values()], list(out_width.values()), config.seed
    )
    shared: dict[tuple, SharedProjection] = {}

    def projection(kind: str, width: int, like: torch.Tensor) -> SharedProjection:
        # one module per matrix, device and dtype: every layer on that device uses the same object
        key = (kind, width, like.device, like.dtype)
        if key not in shared:
            matrix = (a_by_width if kind == "A" else b_by_width)[width]
            shared[key] = SharedProjection(matrix.to(device=like.device, dtype=like.dtype))
        return shared[key]

    for name, parts in targets.items():
        layer = layers[name]
        wrapper = VeRALinear(
            layer,
            parts,
            projection("A", layer.in_features, layer.weight),
            projection("B", out_width[name], layer.weight),
            config.d_init,
            config.dropout,
        )
        replace_module(model, name, wrapper)
    return []


register("vera", VeRAConfig, apply_vera, mergeable=True)
