"""Convpass: convolutional bypasses beside the attention and the MLP of every block.

Paper: Convolutional Bypasses Are Better Vision Transformer Adapters (Jie and Deng, arXiv 2022).
arXiv: https://arxiv.org/abs/2207.07039. Bib key: jie2022convolutional.

A bypass $C$ reads the same normalized tokens as the sub-layer it accompanies and its output,
scaled by $s$, joins the residual stream with the sub-layer's:
$\\mathbf{x} \\leftarrow \\mathbf{x} + \\mathrm{MHSA}(\\mathrm{LN}_1\\mathbf{x}) + s\\,C_1(\\mathrm{LN}_1\\mathbf{x})$ and
$\\mathbf{x} \\leftarrow \\mathbf{x} + \\mathrm{MLP}(\\mathrm{LN}_2\\mathbf{x}) + s\\,C_2(\\mathrm{LN}_2\\mathbf{x})$.
Inside, a token-wise linear map (a $1 \\times 1$ convolution) reduces the width $d$ to $d'$, QuickGELU
$g(x) = x\\,\\sigma(1.702x)$ follows, the patch tokens are laid out on their $H \\times W$ grid for a
$3 \\times 3$ convolution $K$ (zero padding), then $g$, dropout and a linear map back to $d$:
$C(X) = g(K * g(X W_{down} + b_{down}) + b_K) W_{up} + b_{up}$.

Prefix tokens (class, register and distillation tokens: `model.num_prefix_tokens` of them) have no
place on the grid. The official code passes the class token through the same convolution as a
$1 \\times 1$ image, where zero padding leaves only the central tap $K_{:,:,1,1}$; every prefix
token is treated that way here.

Initialization as in the official code: $W_{down}$ Xavier-uniform, $W_{up}$ and every bias zero
(so the adapted model equals the backbone), and $K$ either the identity on its central tap
(`conv_init="identity"`) or Xavier-uniform (`conv_init="xavier"`), chosen per VTAB task there, as is
$s \\in \\{0.01, 0.1, 1, 10, 100\\}$. `positions=("attn",)` gives the Convpass-attn variant.

Implementation: the `attn` and `mlp` modules of every block are wrapped by
[`ConvpassLayer`][reference_impls.methods.convpass.ConvpassLayer], which returns
$F(\\mathbf{h}) + s\\,C(\\mathbf{h})$ for the normalized input $\\mathbf{h}$. The bypass output thus
passes through the block's LayerScale and drop-path together with the sub-layer output; ViT-B has
no LayerScale, so only the drop-path mask during training differs from the official code (which
draws a separate one for the bypass).

Not mergeable: the bypass contains nonlinearities and a spatial convolution.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

import torch
import torch.nn.functional as F
from pydantic import Field
from torch import nn

from ..authoring import (
    Dropout,
    MethodConfig,
    PositiveInt,
    Preset,
    Wrapper,
    factory_kwargs,
    quick_gelu,
    register,
    replace_module,
)


class ConvpassConfig(MethodConfig):
    """Configuration of Convpass."""

    dim: PositiveInt = 8
    """Hidden width d' of the bypass (paper: 8)."""
    scale: float = 1.0
    """Scale s of the bypass output (official default 1; tuned per task in 0.01 ... 100)."""
    positions: Annotated[tuple[Literal["attn", "mlp"], ...], Field(min_length=1)] = ("attn", "mlp")
    """Sub-layers that get a bypass in every block: 'attn', 'mlp'; ('attn',) is Convpass-attn."""
    conv_init: Literal["identity", "xavier"] = "identity"
    """Init of the 3x3 kernel: identity on the central tap, or Xavier-uniform (chosen per task)."""
    dropout: Dropout = 0.1
    """Dropout probability before the up-projection (official: 0.1)."""


class ConvBypass(nn.Module):
    """The convolutional bypass $C$: 1x1 down, QuickGELU, 3x3 conv on the patch grid, QuickGELU, 1x1 up.

    Args:
        embed_dim: Token width d.
        dim: Hidden width d'.
        grid_size: Patch grid (H, W).
        num_prefix_tokens: Number of tokens before the patch tokens.
        conv_init: `"identity"` or `"xavier"`.
        dropout: Dropout probability before the up-projection.
        device: Device of the parameters.
        dtype: Data type of the parameters.
    """

    def __init__(
        self,
        embed_dim: int,
        dim: int,
        grid_size: tuple[int, int],
        num_prefix_tokens: int,
        conv_init: str,
        dropout: float,
        device: torch.device | None = None,
        dtype: torch.dtype | None = None,
    ) -> None:
        super().__init__()
        factory = {"device": device, "dtype": dtype}
        self.grid_size = grid_size
        self.num_prefix_tokens = num_prefix_tokens
        self.down = nn.Linear(embed_dim, dim, **factory)
        self.conv = nn.Conv2d(dim, dim, kernel_size=3, padding=1, **factory)
        self.up = nn.Linear(dim, embed_dim, **factory)
        self.dropout = nn.Dropout(dropout) if dropout > 0 else nn.Identity()
        self.reset_parameters(conv_init)

    @torch.no_grad()
    def reset_parameters(self, conv_init: str) -> None:
        """The official initialization (see the module docstring)."""
        nn.init.xavier_uniform_(self.down.weight)
        nn.init.zeros_(self.down.bias)
        if conv_init == "xavier":
            nn.init.xavier_uniform_(self.conv.weight)
        else:
            self.conv.weight.zero_()
            # K[:, :, 1, 1] = I: the kernel starts as the identity map
            self.conv.weight[:, :, 1, 1] = torch.eye(self.conv.in_channels, device=self.conv.weight.device)
        nn.init.zeros_(self.conv.bias)
        nn.init.zeros_(self.up.weight)
        nn.init.zeros_(self.up.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Map tokens `(B, n + H W, d)` to `(B, n + H W, d)`."""
        batch, tokens, _ = x.shape
        n = self.num_prefix_tokens
        height, width = self.grid_size
        if tokens != n + height * width:
            raise RuntimeError(
                f"the convolutional bypass expected {n} prefix tokens and a {height}x{width} patch grid "
                f"({n + height * width} tokens), got {tokens} tokens; the image size must match the model's img_size"
            )
        # z = g(X W_down + b_down),  g(x) = x · sigmoid(1.702 x) (QuickGELU)
        z = quick_gelu(self.down(x))
        prefix, patches = z[:, :n], z[:, n:]
        # patch tokens: K * z on the H x W grid (zero padding)
        grid = patches.transpose(1, 2).reshape(batch, -1, height, width)
        patches = self.conv(grid).flatten(2).transpose(1, 2)
        # prefix tokens, each a 1 x 1 image: only the central tap acts, K[:, :, 1, 1] z + b_K
        prefix = F.linear(prefix, self.conv.weight[:, :, 1, 1], self.conv.bias)
        # C(X) = g(K * z + b_K) W_up + b_up
        return self.up(self.dropout(quick_gelu(torch.cat([prefix, patches], dim=1))))


class ConvpassLayer(Wrapper):
    """A sub-layer (attention or MLP) with a convolutional bypass beside it: $F(h) + s\\,C(h)$.

    Args:
        base_layer: The frozen sub-layer (it reads the normalized tokens h).
        bypass: The bypass $C$ (stored as `peft_bypass`).
        scale: Scale s.
    """

    def __init__(self, base_layer: nn.Module, bypass: ConvBypass, scale: float) -> None:
        super().__init__(base_layer)
        self.peft_bypass = bypass
        self.scale = scale

    def forward(self, x: torch.Tensor, *args: Any, **kwargs: Any) -> torch.Tensor:
        """Return the sub-layer output plus the scaled bypass output."""
        # F(h) + s · C(h)
        return self.base_layer(x, *args, **kwargs) + self.scale * self.peft_bypass(x)

    def extra_repr(self) -> str:
        return f"scale={self.scale:g}"


def apply_convpass(model: nn.Module, config: ConvpassConfig) -> list[str]:
    """Wrap the `attn` and/or `mlp` module of every block with a [`ConvpassLayer`][reference_impls.methods.convpass.ConvpassLayer].

    The patch grid is read from `model.patch_embed.grid_size`, the number of prefix tokens from
    `model.num_prefix_tokens`.

    Args:
        model: A timm vision transformer (already frozen).
        config: The Convpass config.

    Returns:
        An empty list: no backbone parameter is trained.

    Raises:
        TypeError: If the model has no fixed patch grid or a block lacks a sub-layer in `positions`.
    """
    grid_size = getattr(getattr(model, "patch_embed", None), "grid_size", None)
    if grid_size is None or len(grid_size) != 2:
        raise TypeError("the model has no patch_embed.grid_size; a fixed 2D patch grid is needed")
    for index, block in enumerate(model.blocks):
        missing = [p for p in config.positions if not isinstance(getattr(block, p, None), nn.Module)]
        if missing:
            raise TypeError(f"block {index} ({type(block).__name__}) has no sub-layer {missing}")
    grid = (int(grid_size[0]), int(grid_size[1]))
    for index, block in enumerate(model.blocks):
        for position in config.positions:
            layer = getattr(block, position)
            bypass = ConvBypass(
                int(model.embed_dim),
                config.dim,
                grid,
                int(model.num_prefix_tokens),
                config.conv_init,
                config.dropout,
                **factory_kwargs(layer),
            )
            replace_module(model, f"blocks.{index}.{position}", ConvpassLayer(layer, bypass, config.scale))
    return []


# Per-task (scale s, kernel initialization) of the official VTAB-1k runs: `scale` and `xavier_init` of
# convpass/vtab/configs/{convpass,convpass_attn}/<file>.yaml in github.com/JieShibo/PETL-ViT
# (commit 026e4f12cfbe1e46bfb4d3ed5ba09f2d9f83e91e); d' = 8 for every task (convpass/vtab/train.py).
# The file of a task is named as below, or like the task where it is not listed.
_FILE = {"cifar100": "cifar", "flowers102": "oxford_flowers102", "pets": "oxford_iiit_pet",
         "camelyon": "patch_camelyon", "retinopathy": "diabetic_retinopathy", "kitti_dist": "kitti"}
_VTAB_BOTH = {
    "cifar100": (0.1, "identity"), "caltech101": (1.0, "identity"), "dtd": (0.01, "xavier"),
    "flowers102": (0.1, "xavier"), "pets": (1.0, "xavier"), "svhn": (100.0, "xavier"), "sun397": (0.1, "identity"),
    "camelyon": (10.0, "identity"), "eurosat": (10.0, "identity"), "resisc45": (10.0, "identity"),
    "retinopathy": (1.0, "identity"), "clevr_count": (1.0, "identity"), "clevr_dist": (0.1, "xavier"),
    "dmlab": (10.0, "identity"), "kitti_dist": (10.0, "xavier"), "dsprites_loc": (100.0, "xavier"),
    "dsprites_ori": (0.1, "xavier"), "smallnorb_azi": (100.0, "xavier"), "smallnorb_ele": (1.0, "xavier"),
}
_VTAB_ATTN = {
    "cifar100": (0.1, "xavier"), "caltech101": (100.0, "xavier"), "dtd": (0.1, "xavier"), "flowers102": (1.0, "xavier"),
    "pets": (1.0, "xavier"), "svhn": (100.0, "xavier"), "sun397": (0.1, "xavier"), "camelyon": (10.0, "xavier"),
    "eurosat": (10.0, "xavier"), "resisc45": (100.0, "xavier"), "retinopathy": (0.1, "xavier"),
    "clevr_count": (10.0, "xavier"), "clevr_dist": (1.0, "xavier"), "dmlab": (10.0, "xavier"),
    "kitti_dist": (10.0, "xavier"), "dsprites_loc": (10.0, "xavier"), "dsprites_ori": (1.0, "xavier"),
    "smallnorb_azi": (100.0, "xavier"), "smallnorb_ele": (1.0, "xavier"),
}
PRESETS = {
    **{
        f"vtab-1k/{task}": Preset(
            {"dim": 8, "positions": ("attn", "mlp"), "scale": scale, "conv_init": init},
            source="jie2022convolutional Table 1 (Convpass): "
            f"convpass/vtab/configs/convpass/{_FILE.get(task, task)}.yaml of github.com/JieShibo/PETL-ViT",
        )
        for task, (scale, init) in _VTAB_BOTH.items()
    },
    **{
        f"vtab-1k-attn/{task}": Preset(
            {"dim": 8, "positions": ("attn",), "scale": scale, "conv_init": init},
            source="jie2022convolutional Table 1 (Convpass_attn): "
            f"convpass/vtab/configs/convpass_attn/{_FILE.get(task, task)}.yaml of github.com/JieShibo/PETL-ViT",
        )
        for task, (scale, init) in _VTAB_ATTN.items()
    },
}

register("convpass", ConvpassConfig, apply_convpass, mergeable=False, presets=PRESETS)
