"""NOAH: a per-block mix of Adapter, LoRA and VPT prompts, trained as one fixed sub-network.

Paper: Neural Prompt Search (Zhang, Zhou and Liu; arXiv 2022, TPAMI 2025).
arXiv: https://arxiv.org/abs/2206.04673. Bib keys: zhang2025neural, zhang2022neural.

NOAH treats Adapter, LoRA and VPT as three "prompt modules" of a ViT and chooses, per block $l$,
a prompt length $p_l$, a LoRA rank $r_l$ and an adapter width $h_l$ (0 removes the module) by
one-shot neural architecture search on each downstream dataset: a supernet holding every
candidate is trained, an evolutionary search picks a sub-network under a parameter budget, and
that sub-network is retrained from the pre-trained backbone. This module has neither the
supernet nor the search: it trains one fixed sub-network, the one its configuration gives. To
run NOAH as published, use the sub-networks the authors released for each VTAB-1k task
(`RETRAIN` sizes of `experiments/NOAH/subnet/VTAB/ViT-B_prompt_<task>.yaml` in
github.com/ZhangYuanhan-AI/NOAH, commit e9c55f3; the presets `vtab-1k/<task>`): training one of
them here is the paper's retraining step for that task. The module computes, per block:

- VPT-deep prompts $P_l \\in \\mathbb{R}^{p_l \\times d}$ enter before block $l$ and replace the
  prompts present so far; a block with $p_l = 0$ lets the present prompts pass through.
- LoRA on the fused query/key/value projection, no scaling:
  $\\mathrm{qkv}(x) = W_{qkv} x + b + B_l A_l x$ with $A_l \\in \\mathbb{R}^{r_l \\times d}$,
  $B_l \\in \\mathbb{R}^{3d \\times r_l}$.
- A bottleneck adapter on the MLP output:
  $M' = M + W^{up}_l\\, \\sigma(W^{down}_l M + b^{down}_l) + b^{up}_l$, $\\sigma$ = QuickGELU
  ($x \\cdot \\mathrm{sigmoid}(1.702 x)$).

Initialization as in the released code, where the model's weight initialization runs after the
modules are built and overrides their own (`model/supernet_vision_transformer_timm.py`: the
blocks are built at lines 423-427, `init_weights` runs at line 462 and applies the file's
`_init_vit_weights` to every module at line 531, which draws each `nn.Linear` weight from a
normal with std 0.02 truncated at $\\pm 2$ and zeroes its bias, lines 686-688): so LoRA's $A_l$
and $B_l$ (both `nn.Linear`, lines 225-228, whose Kaiming and zero initializations are
overridden) and the
adapter's two projections (`model/module/adapter_super.py`, lines 32-45, whose Xavier-uniform
weights and $\\mathcal{N}(0, 10^{-12})$ biases are overridden) all start from
$\\mathcal{N}(0, 0.02^2)$ weights and zero biases. $B_l$ is therefore not zero and the adapter's
up-projection is not zero: neither branch starts as the identity. The block prompts are plain
parameters, which that initialization leaves alone: Xavier-uniform over the supernet's
`(1, 100, d)` prompt tensor (line 319; all released sub-network files build the model with
`SUPERNET.VISUAL_PROMPT_DIM: 100`, line 4), of which a block uses the first $p_l$ rows, so every
prompt entry is uniform on $\\pm\\sqrt{6 / (101\\, d)}$ whatever $p_l$.

Sizes are given per block (a tuple with one entry per block) or as one number for every block.
The defaults are the maximum of the released VTAB-1k search space ({1, 5, 10} for each module in
every one of the 12 blocks): 10 prompts, rank 10 and width 10 everywhere. They are not a
searched sub-network and match no reported parameter count (0.65M on ViT-B/16 without the head,
where the released sub-networks average 0.36M). Dropout (0.1 for each module in the official
code) acts on the prompts, on the LoRA input and after the adapter's activation.

Reuse: the LoRA branch is [`LoRALinear`][reference_impls.methods.lora.LoRALinear] (alpha = r,
target `"qkv"`), the adapter is [`AdapterLayer`][reference_impls.methods.adapter.AdapterLayer]
on `mlp` with QuickGELU, both re-initialized as described above, and the prompts are
[`PromptedBlock`][reference_impls.methods.vpt.PromptedBlock] wrappers (placed after the prefix
tokens, removed after the last block so that pooling sees the original layout).

Differences from the official code (which retrains a sub-network by running the supernet model
with the sub-network's sizes), which do not change the function at inference: the official
model appends prompts at the end of the sequence (attention does not depend on token order, and
prompts carry no position embedding in the blocks); it also creates
model-level prompts with a prompt position embedding that the first block immediately replaces,
so they never influence the output and are not created here; its adapter acts after drop-path.
One difference can change outputs: when a block without prompts is followed by a prompted block,
the official code removes only the previous block's (zero) prompts and so keeps the older ones
in the sequence; here every prompted block replaces all prompts present. The released VTAB-1k
sub-networks have prompts in every block, where both agree.

Mergeability: NOAH as a whole is not mergeable (prompts lengthen the sequence and the adapter is
nonlinear). The LoRA part alone could be folded into `attn.qkv`.
"""

from __future__ import annotations

import math
from typing import Annotated, Any

import torch
from pydantic import Discriminator, Field, Tag
from torch import nn

from ..authoring import WHOLE, Dropout, MethodConfig, NonNegativeInt, Preset, register, replace_module
from .adapter import AdapterLayer
from .lora import LoRALinear
from .vpt import PromptedBlock

LINEAR_INIT_STD = 0.02
"""Standard deviation of the LoRA and adapter weights at initialization (released code)."""

SUPERNET_PROMPT_TOKENS = 100
"""Prompt length per block of the supernet that the released sub-network files build; a block's
prompts are the first rows of that tensor, so it sets their initialization bound."""


def _sizes_form(value: Any) -> str:
    """Which form of `Sizes` a value is given in (a tuple or list: one entry per block)."""
    return "per_block" if isinstance(value, (tuple, list)) else "all_blocks"


Sizes = Annotated[
    Annotated[NonNegativeInt, Tag("all_blocks")]
    | Annotated[tuple[NonNegativeInt, ...], Field(min_length=1), Tag("per_block")],
    Discriminator(_sizes_form),
]
"""A size per block: one number (>= 0) for every block, or a non-empty tuple with one entry (>= 0)
per block. An error names the form checked: `field.all_blocks` or `field.per_block[i]`."""


class NOAHConfig(MethodConfig):
    """Configuration of the one fixed NOAH sub-network that is trained: its per-block sizes."""

    prompt_tokens: Sizes = 10
    """VPT prompt length per block (one number for all blocks, or one entry per block; 0 = none)."""
    lora_ranks: Sizes = 10
    """LoRA rank on the fused attn.qkv per block (one number or one entry per block; 0 = none)."""
    adapter_dims: Sizes = 10
    """Adapter bottleneck width on the MLP output per block (one number or one per block; 0 = none)."""
    dropout: Dropout = 0.1
    """Dropout on prompts, on the LoRA branch input and after the adapter activation (official: 0.1)."""

    def per_block(self, name: str, depth: int) -> tuple[int, ...]:
        """Sizes of field `name` for each of `depth` blocks.

        Raises:
            ValueError: If a per-block tuple does not have `depth` entries.
        """
        value = getattr(self, name)
        if isinstance(value, int):
            return (value,) * depth
        if len(value) != depth:
            raise ValueError(f"{name} has {len(value)} entries, but the model has {depth} blocks")
        return tuple(value)


def init_linear_weight(weight: torch.Tensor) -> None:
    """The released model's initialization of every linear weight: a normal with std 0.02
    truncated at +-2 (in place)."""
    # W ~ N(0, 0.02^2), truncated to [-2, 2]
    nn.init.trunc_normal_(weight, std=LINEAR_INIT_STD, a=-2.0, b=2.0)


def noah_adapter(mlp: nn.Module, dim: int, bottleneck: int, dropout: float) -> AdapterLayer:
    """The block's MLP followed by NOAH's adapter on its output, initialized as the released model
    ends up initializing it (see the module docstring): weights N(0, 0.02^2), biases zero.

    Args:
        mlp: The block's MLP (`block.mlp`).
        dim: Width d of the MLP output.
        bottleneck: Adapter width h.
        dropout: Dropout probability after the activation.
    """
    # M' = M + W_up σ(W_down M + b_down) + b_up,  σ(x) = x · sigmoid(1.702 x)
    layer = AdapterLayer(mlp, dim, bottleneck, "quick_gelu", dropout, "zero-up")
    with torch.no_grad():
        for projection in (layer.peft_down, layer.peft_up):
            # W ~ N(0, 0.02^2), b = 0
            init_linear_weight(projection.weight)
            nn.init.zeros_(projection.bias)
    return layer


def noah_lora(qkv: nn.Linear, rank: int, dropout: float) -> LoRALinear:
    """LoRA on the whole fused qkv layer without scaling, initialized as the released model ends up
    initializing it (see the module docstring): A and B both N(0, 0.02^2), so B is not zero.

    Args:
        qkv: The block's fused `attn.qkv` layer.
        rank: LoRA rank r.
        dropout: Dropout probability on the branch input.
    """
    # qkv(x) = W_qkv x + b + B A x  (alpha = r: no scaling)
    layer = LoRALinear(qkv, (WHOLE,), rank, float(rank), dropout)
    with torch.no_grad():
        for part in layer.peft_lora_A:
            # A, B ~ N(0, 0.02^2)
            init_linear_weight(layer.peft_lora_A[part])
            init_linear_weight(layer.peft_lora_B[part])
    return layer


def _init_prompt(num_tokens: int, dim: int, reference: torch.Tensor) -> torch.Tensor:
    """The first `num_tokens` rows of a Xavier-uniform `(1, P, d)` tensor, as the released code
    initializes its block prompts, with P the supernet's prompt length (100, or `num_tokens` if
    larger)."""
    supernet_tokens = max(SUPERNET_PROMPT_TOKENS, num_tokens)
    # bound = sqrt(6 / (P d + d)),  P_l ~ U(-bound, bound)
    bound = math.sqrt(6.0 / (supernet_tokens * dim + dim))
    return torch.empty(num_tokens, dim, device=reference.device, dtype=reference.dtype).uniform_(-bound, bound)


def apply_noah(model: nn.Module, config: NOAHConfig) -> list[str]:
    """Add the configured LoRA, adapter and prompt modules to every block.

    Args:
        model: A timm vision transformer (already frozen).
        config: The NOAH config.

    Returns:
        An empty list: no backbone parameter is trained.

    Raises:
        ValueError: If a per-block tuple does not match the model's depth.
    """
    depth, dim = len(model.blocks), int(model.embed_dim)
    prompts = config.per_block("prompt_tokens", depth)
    ranks = config.per_block("lora_ranks", depth)
    widths = config.per_block("adapter_dims", depth)
    for index in range(depth):
        for path in ("attn.qkv", "mlp"):
            try:
                model.blocks[index].get_submodule(path)
            except AttributeError:
                raise ValueError(f"block {index} has no {path!r} (a timm ViT block is expected)") from None
    # prompts present after block l: the block's own, or those passing through a block without prompts
    present, count = [], 0
    for p in prompts:
        count = p if p > 0 else count
        present.append(count)
    for index in range(depth):
        prefix = f"blocks.{index}"
        if ranks[index] > 0:
            qkv = model.get_submodule(f"{prefix}.attn.qkv")
            replace_module(model, f"{prefix}.attn.qkv", noah_lora(qkv, ranks[index], config.dropout))
        if widths[index] > 0:
            mlp = model.get_submodule(f"{prefix}.mlp")
            replace_module(model, f"{prefix}.mlp", noah_adapter(mlp, dim, widths[index], config.dropout))
        last = index == depth - 1
        # the prompts present after this block leave before the next prompted block (or the final norm)
        remove_after = present[index] > 0 and (last or prompts[index + 1] > 0)
        if prompts[index] > 0 or remove_after:
            reference = model.blocks[index].norm1.weight if hasattr(model.blocks[index], "norm1") else next(model.parameters())
            prompt = _init_prompt(prompts[index], dim, reference) if prompts[index] > 0 else None
            block = PromptedBlock(
                model.blocks[index],
                num_prefix_tokens=int(model.num_prefix_tokens),
                num_tokens=present[index],
                prompt=prompt,
                insert=prompts[index] > 0,
                remove_after=remove_after,
                dropout=config.dropout,
            )
            replace_module(model, prefix, block)
    return []


# Per-block (prompt length, LoRA rank, adapter width) of the 19 retrained VTAB-1k sub-networks
# released with the paper: RETRAIN.VISUAL_PROMPT_DIM, LORA_DIM and ADAPTER_DIM of
# experiments/NOAH/subnet/VTAB/ViT-B_prompt_<file>.yaml in github.com/ZhangYuanhan-AI/NOAH
# (commit e9c55f360be4f7f1133a08bf84f86f0309e98f8c). The file of a task is named as below, or like the task.
_FILE = {"flowers102": "oxford_flowers102", "pets": "oxford_pet", "camelyon": "patch_camelyon",
         "retinopathy": "diabetic_retinopathy", "kitti_dist": "kitti"}
_VTAB_SUBNETS: dict[str, tuple[tuple[int, ...], tuple[int, ...], tuple[int, ...]]] = {
    "cifar100": (
        (10, 5, 10, 1, 5, 1, 10, 1, 10, 5, 1, 10),
        (10, 1, 5, 5, 1, 10, 1, 1, 1, 10, 1, 1),
        (5, 10, 10, 10, 5, 1, 1, 1, 10, 10, 10, 1),
    ),
    "caltech101": (
        (5, 10, 1, 5, 10, 1, 10, 1, 10, 1, 10, 1),
        (1, 10, 10, 10, 5, 10, 10, 10, 5, 1, 10, 1),
        (10, 1, 5, 10, 10, 1, 5, 5, 10, 1, 5, 10),
    ),
    "dtd": (
        (10, 5, 1, 1, 5, 10, 5, 1, 1, 5, 1, 1),
        (10, 5, 1, 1, 5, 10, 5, 1, 1, 5, 1, 1),
        (1, 1, 1, 10, 1, 1, 10, 10, 10, 10, 10, 1),
    ),
    "flowers102": (
        (10, 10, 5, 5, 1, 10, 1, 5, 10, 1, 5, 10),
        (10, 10, 5, 5, 1, 10, 1, 5, 10, 1, 5, 10),
        (5, 1, 5, 5, 1, 1, 10, 5, 5, 10, 5, 10),
    ),
    "pets": (
        (10, 5, 5, 10, 1, 10, 10, 10, 10, 5, 10, 10),
        (10, 1, 1, 10, 5, 1, 1, 5, 10, 10, 1, 10),
        (1, 5, 5, 5, 5, 10, 1, 5, 10, 1, 1, 5),
    ),
    "svhn": (
        (10, 5, 5, 10, 5, 5, 5, 5, 5, 5, 5, 5),
        (5, 5, 5, 10, 5, 5, 5, 10, 10, 10, 10, 5),
        (5, 5, 5, 5, 5, 10, 5, 10, 5, 5, 5, 5),
    ),
    "sun397": (
        (5, 1, 10, 5, 5, 10, 1, 5, 1, 1, 1, 1),
        (10, 10, 5, 5, 1, 1, 10, 1, 1, 1, 1, 10),
        (10, 5, 1, 1, 1, 10, 5, 5, 1, 1, 5, 1),
    ),
    "camelyon": (
        (10, 10, 5, 10, 1, 10, 10, 10, 5, 1, 5, 5),
        (10, 10, 1, 10, 1, 1, 5, 5, 5, 1, 5, 5),
        (5, 1, 10, 5, 5, 1, 1, 10, 1, 5, 1, 5),
    ),
    "eurosat": (
        (10, 10, 10, 10, 10, 1, 5, 5, 10, 10, 5, 10),
        (10, 1, 10, 10, 1, 5, 10, 1, 1, 1, 10, 1),
        (10, 10, 5, 1, 10, 1, 10, 5, 10, 1, 10, 10),
    ),
    "resisc45": (
        (5, 5, 10, 1, 5, 1, 5, 10, 1, 1, 5, 1),
        (10, 10, 5, 5, 5, 10, 10, 10, 1, 5, 1, 5),
        (5, 5, 5, 1, 5, 1, 10, 5, 5, 1, 5, 5),
    ),
    "retinopathy": (
        (10, 1, 5, 10, 1, 5, 5, 10, 5, 10, 5, 5),
        (1, 1, 10, 5, 5, 10, 1, 10, 10, 5, 10, 1),
        (1, 1, 5, 5, 10, 10, 10, 5, 1, 10, 10, 1),
    ),
    "clevr_count": (
        (10, 1, 5, 10, 5, 1, 10, 5, 5, 5, 10, 1),
        (1, 1, 10, 5, 10, 10, 10, 1, 5, 1, 10, 1),
        (1, 10, 10, 10, 10, 1, 5, 10, 10, 10, 1, 1),
    ),
    "clevr_dist": (
        (10, 1, 1, 10, 5, 10, 5, 1, 5, 10, 5, 5),
        (5, 1, 10, 5, 10, 10, 1, 1, 5, 10, 1, 10),
        (1, 1, 1, 10, 1, 1, 1, 10, 5, 1, 10, 10),
    ),
    "dmlab": (
        (1, 10, 5, 1, 10, 10, 5, 10, 10, 1, 1, 1),
        (10, 5, 1, 5, 10, 10, 5, 5, 5, 10, 10, 1),
        (5, 1, 5, 1, 5, 1, 5, 5, 5, 10, 10, 10),
    ),
    "kitti_dist": (
        (1, 5, 10, 1, 10, 5, 1, 1, 1, 5, 5, 5),
        (5, 10, 10, 10, 1, 10, 5, 5, 10, 5, 10, 1),
        (5, 1, 10, 10, 1, 10, 1, 1, 5, 10, 5, 5),
    ),
    "dsprites_loc": (
        (5, 10, 1, 10, 10, 5, 5, 1, 5, 5, 10, 1),
        (1, 1, 1, 1, 10, 10, 1, 10, 5, 1, 5, 10),
        (1, 1, 1, 10, 1, 1, 10, 10, 10, 10, 10, 1),
    ),
    "dsprites_ori": (
        (5, 5, 1, 1, 10, 5, 1, 10, 10, 10, 10, 10),
        (1, 10, 1, 10, 1, 5, 10, 10, 5, 5, 1, 5),
        (1, 10, 10, 10, 10, 1, 5, 10, 10, 10, 1, 1),
    ),
    "smallnorb_azi": (
        (1, 10, 1, 10, 1, 5, 10, 10, 1, 10, 10, 5),
        (10, 5, 1, 5, 1, 1, 5, 5, 10, 1, 1, 10),
        (5, 1, 1, 1, 5, 5, 1, 10, 1, 1, 5, 1),
    ),
    "smallnorb_ele": (
        (10, 1, 1, 1, 1, 5, 10, 10, 10, 10, 1, 10),
        (10, 1, 1, 1, 5, 5, 10, 5, 1, 10, 1, 1),
        (1, 1, 1, 10, 1, 1, 10, 10, 10, 10, 10, 1),
    ),
}
PRESETS = {
    f"vtab-1k/{task}": Preset(
        {"prompt_tokens": prompts, "lora_ranks": ranks, "adapter_dims": widths},
        source=f"zhang2022neural: experiments/NOAH/subnet/VTAB/ViT-B_prompt_{_FILE.get(task, task)}.yaml "
        "of github.com/ZhangYuanhan-AI/NOAH (the released sub-network, RETRAIN sizes)",
    )
    for task, (prompts, ranks, widths) in _VTAB_SUBNETS.items()
}

register("noah", NOAHConfig, apply_noah, mergeable=False, presets=PRESETS)
