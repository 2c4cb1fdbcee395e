"""GLoRA: generalized LoRA, five support tensors that rescale and shift a layer's weight and bias.

Paper: One-for-All: Generalized LoRA for Parameter-Efficient Fine-tuning (Chavan et al., 2023).
arXiv: https://arxiv.org/abs/2306.07967. Bib key: chavan2023one.

For a frozen linear layer $y = W_0 x + b_0$, GLoRA trains support tensors $A, B, C, D, E$ and
computes $y = (W_0 + W_0 \\odot A + B)\\,x + W_0 C + b_0 \\odot D + E + b_0$: $A$ rescales and $B$
shifts the weight, $C$ acts like a learned input prompt mapped through $W_0$ into a bias, $D$
rescales and $E$ shifts the bias. Each support tensor is low rank, a vector, a scalar or absent,
so LoRA ($B$ low rank, the rest absent), SSF-like and bias-tuning updates are special cases.
Every path is linear in $W_0$ and $b_0$, so the layer folds into
$W' = W_0 + W_0 \\odot A + B$, $b' = b_0 + b_0 \\odot D + E + W_0 C$.

Shapes and initialization follow the official code (ViT-Slim, GLoRA folder): with rank $r$,
a low-rank $A$ or $B$ is $X_d X_u$ with $X_d \\in \\mathbb{R}^{d_{out} \\times r}$ (zeros) and
$X_u \\in \\mathbb{R}^{r \\times d_{in}}$ (Xavier-uniform); a vector $A$ or $B$ has one entry per
output row, broadcast along the row; a low-rank $C$ is $C_d C_u$ with
$C_d \\in \\mathbb{R}^{d_{in} \\times r}$ (zeros) and $C_u \\in \\mathbb{R}^{r \\times 1}$
(Xavier-uniform), a vector $C$ has $d_{in}$ entries; $D$ and $E$ are vectors over the outputs or
scalars; vectors and scalars start at zero. Every support tensor is therefore zero at
initialization and the adapted model equals the backbone. The official code adapts every linear
layer of the blocks (`attn.qkv` as one fused layer, `attn.proj`, `mlp.fc1`, `mlp.fc2`) with
rank 4.

The paper trains a supernet in which every layer samples one of the allowed combinations per
step, then picks one combination per layer by evolutionary search under a parameter budget. The
official code does not retrain the selected sub-network: the search scores candidates with the
supernet's shared weights, fixing each layer's combination (`eval_config` in `GLoRA/layer.py`,
lines 66-82, of github.com/Arnav0400/ViT-Slim, commit 0fed674), after loading the trained
supernet (`GLoRA/evolution.py`, lines 33-38; `GLoRA/README.md`, line 48: supernet training,
then evolutionary search), with a budget of `--param-limits` million parameters (1.00 by
default, `evolution.py`, line 23). This module implements neither the supernet nor the search:
it trains one fixed sub-network from its initialization, the one its configuration gives: one
combination for all layers (`a` ... `e`), optionally overridden per layer (`overrides`, for
example with codes found by the official search). The defaults are the largest member of the
search space, not a searched sub-network: A, B and C of rank 4 with vector D and E on all 48
linear layers of ViT-B/16 make 1.60M trainable parameters without the head, above the official
search's default budget, so a search with that budget could not select them.

On a layer without bias, $b_0 \\odot D$ vanishes and $D$ is not created (as in the official
code); such a layer cannot be merged if it has a $C$ or
$E$ term, because the folded bias has nowhere to go. In a pre-norm ViT a scalar $B$ or $E$ on a
layer that writes into the residual stream (`attn.proj`, `mlp.fc2`) shifts every feature of a
token by the same amount, which the next LayerNorm removes: such a term has no effect there.
"""

from __future__ import annotations

from typing import Literal

import torch
import torch.nn.functional as F
from pydantic import model_validator
from torch import nn

from ..authoring import (
    WHOLE,
    MergeableWrapper,
    MethodConfig,
    Rank,
    Targets,
    find_linear_targets,
    register,
    replace_module,
)

COMPONENTS = ("a", "b", "c", "d", "e")
"""The five support tensors, in the order of a per-layer code."""

ALLOWED: dict[str, tuple[str, ...]] = {
    "a": ("lora", "vector", "scalar", "none"),
    "b": ("lora", "vector", "scalar", "none"),
    "c": ("lora", "vector", "none"),
    "d": ("vector", "scalar", "none"),
    "e": ("vector", "scalar", "none"),
}
"""Forms each support tensor may take (the paper's support set)."""

CODES = {"L": "lora", "V": "vector", "S": "scalar", "N": "none"}
"""Letters of a per-layer code: L = low rank, V = vector, S = scalar, N = none."""


def parse_code(code: str) -> dict[str, str]:
    """Turn a five-letter code such as `"LLLVV"` into forms for A, B, C, D, E.

    Raises:
        ValueError: If the code has the wrong length, an unknown letter, or a form that the
            support tensor does not allow (C cannot be a scalar, D and E cannot be low rank).
    """
    if len(code) != len(COMPONENTS) or any(ch not in CODES for ch in code):
        raise ValueError(
            f"layer code {code!r} must be 5 letters for A, B, C, D, E, each one of "
            f"L (low rank), V (vector), S (scalar), N (none)"
        )
    forms = {name: CODES[ch] for name, ch in zip(COMPONENTS, code)}
    for name, form in forms.items():
        if form not in ALLOWED[name]:
            raise ValueError(f"in layer code {code!r}, {name.upper()} cannot be {form!r}; allowed: {list(ALLOWED[name])}")
    return forms


class GLoRAConfig(MethodConfig):
    """Configuration of the one fixed GLoRA sub-network that is trained (no supernet, no search)."""

    r: Rank = 4
    """Rank of the low-rank support tensors (the official default is 4)."""
    a: Literal["lora", "vector", "scalar", "none"] = "lora"
    """Form of A, which rescales the weight: W0 * A."""
    b: Literal["lora", "vector", "scalar", "none"] = "lora"
    """Form of B, which shifts the weight."""
    c: Literal["lora", "vector", "none"] = "lora"
    """Form of C, the input prompt mapped into a bias: W0 C."""
    d: Literal["vector", "scalar", "none"] = "vector"
    """Form of D, which rescales the bias: b0 * D."""
    e: Literal["vector", "scalar", "none"] = "vector"
    """Form of E, which shifts the bias."""
    targets: Targets = ("qkv", "proj", "fc1", "fc2")
    """Whole linear layers to adapt in every block (dotted name suffixes; the official code adapts all)."""
    overrides: tuple[str, ...] = ()
    """Per-layer forms that replace a..e on one layer, as 'module.name=CODE' with a five-letter code
    for A, B, C, D, E (L low rank, V vector, S scalar, N none), e.g. 'blocks.0.attn.qkv=LNNVV'."""

    @model_validator(mode="after")
    def _check_overrides(self) -> GLoRAConfig:
        seen = set()
        for entry in self.overrides:
            name, sep, code = entry.partition("=")
            if not sep or not name:
                raise ValueError(f"override {entry!r} must have the form 'module.name=CODE'")
            if name in seen:
                raise ValueError(f"layer {name!r} is overridden twice")
            seen.add(name)
            parse_code(code)
        return self

    def forms(self) -> dict[str, str]:
        """The forms of A ... E used for layers without an override."""
        return {name: getattr(self, name) for name in COMPONENTS}


class GLoRALinear(MergeableWrapper):
    """A linear layer with GLoRA's five support tensors.

    Parameters live in `peft_glora`: for a low-rank tensor `X` the factors `X_d` and `X_u`,
    otherwise `X` (a vector or a one-element scalar); absent tensors have no entry.

    Args:
        base_layer: The frozen linear layer.
        forms: Form of each support tensor, keys `"a"` ... `"e"`.
        r: Rank of the low-rank support tensors.
    """

    def __init__(self, base_layer: nn.Linear, forms: dict[str, str], r: int) -> None:
        super().__init__(base_layer)
        weight = base_layer.weight
        factory = {"device": weight.device, "dtype": weight.dtype}
        d_out, d_in = base_layer.out_features, base_layer.in_features
        self.forms = dict(forms)
        if base_layer.bias is None:
            # b0 ⊙ D = 0 without a bias: D would have no effect
            self.forms["d"] = "none"
        self.peft_glora = nn.ParameterDict()
        for name, form in self.forms.items():
            key = name.upper()
            # rows of the dense tensor: outputs for A, B, D, E; inputs for C (a column vector)
            rows = d_in if name == "c" else d_out
            cols = 1 if name == "c" else d_in
            if form == "lora":
                # X = X_d X_u with X_d = 0 (so X = 0 at init) and X_u Xavier-uniform
                self.peft_glora[f"{key}_d"] = nn.Parameter(torch.zeros(rows, r, **factory))
                self.peft_glora[f"{key}_u"] = nn.Parameter(nn.init.xavier_uniform_(torch.empty(r, cols, **factory)))
            elif form == "vector":
                self.peft_glora[key] = nn.Parameter(torch.zeros(rows, **factory))
            elif form == "scalar":
                self.peft_glora[key] = nn.Parameter(torch.zeros(1, **factory))

    def support(self, name: str) -> torch.Tensor | None:
        """Return support tensor `name` ("a" ... "e") in a shape that broadcasts in the layer's formula.

        A and B: `(d_out, d_in)` if low rank, `(d_out, 1)` if a vector, `(1,)` if a scalar.
        C: `(d_in,)`. D and E: `(d_out,)` or `(1,)`. None if absent.
        """
        form, key = self.forms[name], name.upper()
        if form == "none":
            return None
        if form == "lora":
            dense = self.peft_glora[f"{key}_d"] @ self.peft_glora[f"{key}_u"]
            return dense.squeeze(-1) if name == "c" else dense
        tensor = self.peft_glora[key]
        if form == "vector" and name in ("a", "b"):
            return tensor.unsqueeze(-1)
        return tensor

    def adapted_weight_and_bias(self) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Return $W' = W_0 + W_0 \\odot A + B$ and $b' = b_0 + b_0 \\odot D + E + W_0 C$."""
        w0, b0 = self.base_layer.weight, self.base_layer.bias
        a, b, c, d, e = (self.support(name) for name in COMPONENTS)
        # W' = W_0 + W_0 ⊙ A + B
        weight = w0
        if a is not None:
            weight = weight + w0 * a
        if b is not None:
            weight = weight + b
        # b' = b_0 + b_0 ⊙ D + E + W_0 C
        bias = b0
        if b0 is not None and d is not None:
            bias = bias + b0 * d
        if e is not None:
            bias = e.expand(w0.shape[0]) if bias is None else bias + e
        if c is not None:
            prompt = w0 @ c
            bias = prompt if bias is None else bias + prompt
        return weight, bias

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Compute $W' x + b'$ (the base layer alone while merged)."""
        if self.merged:
            return self.base_layer(x)
        weight, bias = self.adapted_weight_and_bias()
        # y = (W_0 + W_0 ⊙ A + B) x + b_0 + b_0 ⊙ D + E + W_0 C
        return F.linear(x, weight, bias)

    def merge(self) -> None:
        """Fold the support tensors into the base layer (idempotent).

        Raises:
            ValueError: If the base layer has no bias but the layer has a C or E term.
        """
        if not self.merged and self.base_layer.bias is None and (self.forms["c"] != "none" or self.forms["e"] != "none"):
            raise ValueError(
                "cannot merge a layer without bias that has a C or E term (the folded bias has nowhere to go)"
            )
        super().merge()

    def fold(self) -> None:
        """Write $W'$ and $b'$ into the base layer
        (see [`MergeableWrapper`][reference_impls.wrappers.MergeableWrapper])."""
        weight, bias = self.adapted_weight_and_bias()
        self.base_layer.weight.copy_(weight)
        if bias is not None:
            self.base_layer.bias.copy_(bias)

    def extra_repr(self) -> str:
        return ", ".join(f"{name.upper()}={form}" for name, form in self.forms.items())


def apply_glora(model: nn.Module, config: GLoRAConfig) -> list[str]:
    """Wrap every targeted linear layer of the blocks with [`GLoRALinear`][reference_impls.methods.glora.GLoRALinear].

    Args:
        model: A timm vision transformer (already frozen).
        config: The GLoRA config.

    Returns:
        An empty list: no backbone parameter is trained.

    Raises:
        ValueError: If a target selects a slice of the fused qkv layer (GLoRA adapts whole
            layers) or an override names a layer that is not adapted.
    """
    targets = find_linear_targets(model, config.targets)
    sliced = sorted(name for name, parts in targets.items() if parts != (WHOLE,))
    if sliced:
        raise ValueError(
            f"targets 'q', 'k', 'v' select slices of {sliced[0]!r}; GLoRA adapts whole layers, use 'qkv'"
        )
    overrides = dict(entry.split("=", 1) for entry in config.overrides)
    unknown = sorted(set(overrides) - set(targets))
    if unknown:
        raise ValueError(
            f"overrides name layers that are not adapted: {unknown}; adapted layers are e.g. "
            f"{', '.join(list(targets)[:4])}"
        )
    for name in targets:
        forms = parse_code(overrides[name]) if name in overrides else config.forms()
        replace_module(model, name, GLoRALinear(model.get_submodule(name), forms, config.r))
    return []


register("glora", GLoRAConfig, apply_glora, mergeable=True)
