"""FacT: the weight increments of all blocks as one factorized tensor, with factors shared across layers.

Paper: FacT: Factor-Tuning for Lightweight Adaptation on Vision Transformer (Jie and Deng, AAAI 2023).
arXiv: https://arxiv.org/abs/2212.03145. Bib key: jie2023fact.

Every $d \\times d$ slice of the block weights ($W_q, W_k, W_v, W_o$ and the four $d \\times d$ pieces
of each MLP matrix: 12 per block, $12L$ in all) receives an increment built from two factors
$U, V \\in \\mathbb{R}^{d \\times r}$ shared by all slices and a small $r \\times r$ core per slice:
$\\Delta W_j = s\\,U \\Sigma_j V^\\top$ ($\\Sigma_j$ maps the input rank to the output rank).
FacT-TT (tensor train) learns each core $\\Sigma_j$; FacT-TK (Tucker) mixes the slices
$C_t = \\mathcal{C}_{:,:,t}$ of one shared core tensor $\\mathcal{C} \\in \\mathbb{R}^{r \\times r \\times r}$
with row $j$ of $P \\in \\mathbb{R}^{12L \\times r}$, $M_j = \\sum_t P_{jt} C_t$, and uses $M_j$ in the
direction of the released code (`FacT/fact_tk.py` of github.com/JieShibo/PETL-ViT, commit
026e4f1): for q, k, v, `proj` and `fc1` it right-multiplies the projected input by $M_j$
(`(FacTu x) @ M_j`, lines 66-68, 83 and 94), so the first axis of $\\mathcal{C}$ indexes the input
rank and $\\Sigma_j = M_j^\\top$; for `fc2` it right-multiplies by the transpose (lines 101-102), so
there the first axis indexes the output rank and $\\Sigma_j = M_j$. $\\mathcal{C}$ is stored in the
released orientation (it equals the released `FacTc`); the direction is set per layer
(`input_rank_first`, false for `fc2` only). The two directions give different functions of the
same $\\mathcal{C}$ and $P$: the mixed cores of `fc2` and of the other layers are transposed
relative to each other.

Layout: for a linear layer of shape $(m_{out} d) \\times (m_{in} d)$ the slice in output block $o$ and
input block $b$ is $(o, b)$, so the fused `attn.qkv` has the three slices q, k, v, `attn.proj` one,
`mlp.fc1` four output blocks and `mlp.fc2` four input blocks. The layer computes
$h_o = W_0 x + b_0 + s\\,U\\,\\mathrm{dropout}\\big(\\sum_b \\Sigma_{o,b} V^\\top x_b\\big)$, which is how the
official code runs its MLP increments (one core map from the $m_{in}$ projected input blocks to
the $m_{out}$ output blocks, dropout on its output). The shared factors live in one module,
`model.peft_fact` (`U`, `V`, and `C` for FacT-TK); every wrapper keeps a plain reference to it.
Each wrapper holds its own cores (`peft_fact_cores`, FacT-TT) or rows of $P$ (`peft_fact_P`, FacT-TK).

Initialization as in the official code: $U = 0$ (so the increment starts at zero), $V$ as the
weight of `nn.Linear(d, r)` ($\\pm 1/\\sqrt{d}$), FacT-TT cores as the weight of `nn.Linear` from
the $m_{in} r$ projected inputs ($\\pm 1/\\sqrt{m_{in} r}$), and for FacT-TK Xavier-uniform
$\\mathcal{C}$ and $P$ (the bound of the whole $r \\times 12L$ matrix, also for its rows held by each wrapper).
Known difference: for the MLP matrices, the released FacT-TK code reshapes the mixed cores
$\\mathcal{C} P$ in an order that interleaves rank and slice indices (`fact_tk.py`, lines 91-92,
94-96 and 100-102), so its MLP slices are not the plain mixtures $M_j = \\sum_t P_{jt} C_t$ of the
paper; here they are (same parameter count), each used in the released direction above.
The paper tunes $r$ and $s$ per task; dropout 0.1 is the official value.

Mergeable: after training $W_0 + \\Delta W$ replaces $W_0$.
"""

from __future__ import annotations

import math
from typing import Literal

import torch
from torch import nn

from ..authoring import (
    QKV_PARTS,
    WHOLE,
    Dropout,
    MethodConfig,
    Preset,
    Rank,
    Targets,
    WeightUpdateWrapper,
    factory_kwargs,
    find_linear_targets,
    register,
    replace_module,
)


class FacTConfig(MethodConfig):
    """Configuration of FacT."""

    form: Literal["tt", "tk"] = "tt"
    """'tt': a learned r x r core per slice (FacT-TT); 'tk': cores mixed from a shared r x r x r
    tensor (FacT-TK)."""
    r: Rank = 8
    """Rank r of the shared factors U, V (paper: tuned per task, up to 16 for TT and 32 for TK)."""
    scale: float = 1.0
    """Scale s of the increment (paper: tuned per task in 0.01 ... 100)."""
    dropout: Dropout = 0.1
    """Dropout probability on the core output (official: 0.1)."""
    targets: Targets = ("q", "k", "v", "proj", "fc1", "fc2")
    """Layers of every block whose d x d slices are adapted: 'q', 'k', 'v' (thirds of the fused
    attn.qkv), 'qkv', 'proj', 'fc1', 'fc2'; each must have in and out widths that are multiples of d."""


class FacTFactors(nn.Module):
    """The factors shared by every adapted slice: $U$, $V$ ($d \\times r$) and, for FacT-TK, $\\mathcal{C}$.

    `C[i, k, t]` is stored in the released code's orientation (its `FacTc`): for the layers other
    than `fc2`, `i` indexes the input rank and `k` the output rank; `t` is the mixing index.

    Args:
        dim: Width d of the model.
        r: Rank.
        form: `"tt"` or `"tk"`.
        device: Device of the adapted layers.
        dtype: Dtype of the adapted layers.
    """

    def __init__(self, dim: int, r: int, form: str, device: torch.device, dtype: torch.dtype) -> None:
        super().__init__()
        factory = {"device": device, "dtype": dtype}
        self.U = nn.Parameter(torch.zeros(dim, r, **factory))
        # V^T is the weight of nn.Linear(d, r): U(-1/sqrt(d), 1/sqrt(d))
        bound = 1.0 / math.sqrt(dim)
        self.V = nn.Parameter(torch.empty(dim, r, **factory).uniform_(-bound, bound))
        if form == "tk":
            # Xavier-uniform on r x r x r: fan_in = fan_out = r^2
            self.C = nn.Parameter(nn.init.xavier_uniform_(torch.empty(r, r, r, **factory)))
        else:
            self.register_parameter("C", None)

    def extra_repr(self) -> str:
        return f"dim={self.U.shape[0]}, r={self.U.shape[1]}, tucker={self.C is not None}"


def slice_layout(layer: nn.Linear, parts: tuple[str, ...], dim: int, name: str) -> tuple[int, int, list[int]]:
    """Cut a linear layer into $d \\times d$ slices.

    Args:
        layer: The linear layer.
        parts: Parts to adapt (see [`find_linear_targets`][reference_impls.targets.find_linear_targets]).
        dim: Slice width d (the model's `embed_dim`).
        name: Layer name, used in messages.

    Returns:
        `(input blocks, output blocks, adapted output blocks)`.

    Raises:
        ValueError: If the layer's widths are not multiples of d (or a qkv third is not d wide).
    """
    if layer.in_features % dim or layer.out_features % dim:
        raise ValueError(
            f"layer {name!r} ({layer.out_features} x {layer.in_features}) cannot be cut into "
            f"{dim} x {dim} slices: its widths must be multiples of embed_dim {dim}"
        )
    num_in, num_out = layer.in_features // dim, layer.out_features // dim
    if parts == (WHOLE,):
        return num_in, num_out, list(range(num_out))
    if num_out != 3:
        raise ValueError(f"the thirds of fused layer {name!r} are not {dim} wide")
    return num_in, num_out, [index for index, part in enumerate(QKV_PARTS) if part in parts]


class FacTLinear(WeightUpdateWrapper):
    """A linear layer whose adapted $d \\times d$ slices receive $\\Delta W_j = s\\,U \\Sigma_j V^\\top$.

    Trainable parameters of the wrapper: `peft_fact_cores` (FacT-TT, shape
    `(adapted output blocks, input blocks, r, r)`) or `peft_fact_P` (FacT-TK, the rows of $P$ of its
    slices, shape `(adapted output blocks, input blocks, r)`). The shared factors are read from
    `factors`, a plain reference (registered once, as `model.peft_fact`).

    Args:
        base_layer: The frozen linear layer.
        factors: The shared factors.
        layout: `(input blocks, output blocks, adapted output blocks)` from
            [`slice_layout`][reference_impls.methods.fact.slice_layout].
        scale: Scale s.
        dropout: Dropout probability on the core output.
        p_bound: Bound of the uniform init of the rows of P (FacT-TK only).
        input_rank_first: FacT-TK only: whether the first axis of $\\mathcal{C}$ indexes the input
            rank, $\\Sigma_j = M_j^\\top$ (the released code's q, k, v, proj and fc1), or the output
            rank, $\\Sigma_j = M_j$ (its fc2).
    """

    def __init__(
        self,
        base_layer: nn.Linear,
        factors: FacTFactors,
        layout: tuple[int, int, list[int]],
        scale: float,
        dropout: float,
        p_bound: float = 0.0,
        input_rank_first: bool = True,
    ) -> None:
        super().__init__(base_layer)
        self.input_rank_first = input_rank_first
        # a plain reference, not a submodule: the factors are registered once, as model.peft_fact
        object.__setattr__(self, "factors", factors)
        weight = base_layer.weight
        factory = {"device": weight.device, "dtype": weight.dtype}
        self.num_in, self.num_out, self.adapted = layout
        self.dim, r = factors.U.shape
        self.scale = scale
        self.peft_dropout = nn.Dropout(dropout) if dropout > 0 else nn.Identity()
        shape = (len(self.adapted), self.num_in, r)
        if factors.C is None:
            # each core as the weight of nn.Linear(m_in r, r): U(-1/sqrt(m_in r), 1/sqrt(m_in r))
            bound = 1.0 / math.sqrt(self.num_in * r)
            self.peft_fact_cores = nn.Parameter(torch.empty(*shape, r, **factory).uniform_(-bound, bound))
        else:
            self.peft_fact_P = nn.Parameter(torch.empty(*shape, **factory).uniform_(-p_bound, p_bound))

    def cores(self) -> torch.Tensor:
        """Return the cores $\\Sigma_{o,b}$, shape `(adapted output blocks, input blocks, r, r)`."""
        if self.factors.C is None:
            return self.peft_fact_cores
        # M_j = Σ_t P_jt C_t, indexed [o, b, first axis of C, second axis of C]
        mixed = torch.einsum("ikt,obt->obik", self.factors.C, self.peft_fact_P)
        # Σ_j maps input rank to output rank: Σ_j = M_j^T (input rank first), or Σ_j = M_j (fc2)
        return mixed.transpose(-1, -2) if self.input_rank_first else mixed

    def _full_width(self, blocks: torch.Tensor, block_dim: int) -> torch.Tensor:
        """Place the adapted output blocks (along `block_dim`) among zero blocks of the others."""
        if len(self.adapted) == self.num_out:
            return blocks.flatten(block_dim, block_dim + 1)
        shape = list(blocks.shape)
        shape[block_dim] = self.num_out
        index = torch.tensor(self.adapted, device=blocks.device)
        full = blocks.new_zeros(shape).index_copy(block_dim, index, blocks)
        return full.flatten(block_dim, block_dim + 1)

    def delta_weight(self) -> torch.Tensor:
        """Return the increment $\\Delta W$ with the shape of the base weight."""
        U, V = self.factors.U, self.factors.V
        # ΔW_{o,b} = s U Σ_{o,b} V^T, one d x d slice per (output block o, input block b)
        slices = self.scale * torch.einsum("ia,obac,jc->oibj", U, self.cores(), V)
        return self._full_width(slices.flatten(2, 3), 0)

    def update(self, x: torch.Tensor, out: torch.Tensor | None = None) -> torch.Tensor:
        """Return $\\Delta W x$ (with dropout on the core output), shaped like the base output."""
        U, V = self.factors.U, self.factors.V
        # z_b = V^T x_b for every d-wide input block b
        z = x.unflatten(-1, (self.num_in, self.dim)) @ V
        # y_o = Σ_b Σ_{o,b} z_b
        y = self.peft_dropout(torch.einsum("...bc,obac->...oa", z, self.cores()))
        # Δh_o = s U y_o
        return self._full_width(self.scale * (y @ U.T), -2)

    def extra_repr(self) -> str:
        text = f"blocks={self.num_out}x{self.num_in}, adapted_out={self.adapted}, scale={self.scale:g}"
        return text if self.factors.C is None else f"{text}, input_rank_first={self.input_rank_first}"


def apply_fact(model: nn.Module, config: FacTConfig) -> list[str]:
    """Add the shared factors as `model.peft_fact` and wrap every targeted linear layer of the blocks
    with [`FacTLinear`][reference_impls.methods.fact.FacTLinear].

    Args:
        model: A timm vision transformer (already frozen).
        config: The FacT config.

    Returns:
        An empty list: no backbone parameter is trained.

    Raises:
        ValueError: If a target matches no layer or a targeted layer cannot be cut into d x d slices.
    """
    dim = int(model.embed_dim)
    targets = find_linear_targets(model, config.targets)
    layers = {name: model.get_submodule(name) for name in targets}
    layouts = {name: slice_layout(layers[name], parts, dim, name) for name, parts in targets.items()}
    # the slices j = 1 ... 12L of the paper: every adapted (output block, input block) pair
    num_slices = sum(len(adapted) * num_in for num_in, _, adapted in layouts.values())
    # P (r x 12L in the official code) is Xavier-uniform: bound sqrt(6 / (12L + r))
    p_bound = math.sqrt(6.0 / (num_slices + config.r))
    factors = FacTFactors(dim, config.r, config.form, **factory_kwargs(next(iter(layers.values()))))
    model.peft_fact = factors
    for name in targets:
        # the released FacT-TK code applies the mixed core of fc2 transposed (see the module docstring)
        input_rank_first = name.rsplit(".", 1)[-1] != "fc2"
        wrapper = FacTLinear(
            layers[name], factors, layouts[name], config.scale, config.dropout, p_bound, input_rank_first
        )
        replace_module(model, name, wrapper)
    return []


# Per-task (rank r, scale s) of the official VTAB-1k runs of FacT-TT_{<=16} and FacT-TK_{<=32}: `rank` and
# `scale` of FacT/configs/{tt,tk}/<file>.yaml in github.com/JieShibo/PETL-ViT
# (commit 026e4f12cfbe1e46bfb4d3ed5ba09f2d9f83e91e). The file of a task is named as below, or like the task.
_FILE = {"cifar100": "cifar", "flowers102": "oxford_flowers102", "pets": "oxford_iiit_pet",
         "camelyon": "patch_camelyon", "retinopathy": "diabetic_retinopathy", "kitti_dist": "kitti"}
_VTAB = {
    "tt": {
        "cifar100": (8, 1.0), "caltech101": (16, 10.0), "dtd": (8, 0.01), "flowers102": (16, 1.0), "pets": (8, 1.0),
        "svhn": (16, 100.0), "sun397": (8, 1.0), "camelyon": (8, 10.0), "eurosat": (8, 100.0), "resisc45": (8, 0.1),
        "retinopathy": (8, 1.0), "clevr_count": (16, 1.0), "clevr_dist": (4, 10.0), "dmlab": (16, 10.0),
        "kitti_dist": (16, 10.0), "dsprites_loc": (16, 100.0), "dsprites_ori": (16, 1.0), "smallnorb_azi": (16, 100.0),
        "smallnorb_ele": (8, 10.0),
    },
    "tk": {
        "cifar100": (32, 0.1), "caltech101": (32, 10.0), "dtd": (16, 0.01), "flowers102": (32, 1.0), "pets": (16, 10.0),
        "svhn": (32, 100.0), "sun397": (16, 1.0), "camelyon": (32, 10.0), "eurosat": (32, 100.0),
        "resisc45": (32, 10.0), "retinopathy": (16, 1.0), "clevr_count": (32, 10.0), "clevr_dist": (16, 10.0),
        "dmlab": (32, 10.0), "kitti_dist": (32, 10.0), "dsprites_loc": (32, 100.0), "dsprites_ori": (32, 1.0),
        "smallnorb_azi": (32, 100.0), "smallnorb_ele": (16, 10.0),
    },
}
_LABEL = {"tt": "FacT-TT_{<=16}", "tk": "FacT-TK_{<=32}"}
PRESETS = {
    "vtab-1k-tt4": Preset(
        {"form": "tt", "r": 4},
        source="jie2023fact Table 1 (FacT-TT_4): Tensor-Train format, rank 4 on every task",
        note="The scale s is tuned per task; the paper does not list the values of this variant.",
    ),
    "vtab-1k-tk8": Preset(
        {"form": "tk", "r": 8},
        source="jie2023fact Table 1 (FacT-TK_8): Tucker format, rank 8 on every task",
        note="The scale s is tuned per task; the paper does not list the values of this variant.",
    ),
    **{
        f"vtab-1k-{form}/{task}": Preset(
            {"form": form, "r": r, "scale": scale},
            source=f"jie2023fact Table 1 ({_LABEL[form]}): FacT/configs/{form}/{_FILE.get(task, task)}.yaml "
            "of github.com/JieShibo/PETL-ViT",
        )
        for form, tasks in _VTAB.items()
        for task, (r, scale) in tasks.items()
    },
}

register("fact", FacTConfig, apply_fact, mergeable=True, presets=PRESETS)
