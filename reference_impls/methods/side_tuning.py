"""Side-Tuning: a small side network on the input image, alpha-blended with the frozen backbone's features.

Paper: Side-Tuning: A Baseline for Network Adaptation via Additive Side Networks (Zhang et al.,
ECCV 2020). arXiv: https://arxiv.org/abs/1912.13503. Bib key: zhang2020sidetuning.

A trainable side network $S$ reads the same input $x$ as the frozen base network $B$ and produces
a representation of the same shape; the task head $T$ reads their blend
$R(x) = \\alpha B(x) + (1 - \\alpha) S(x)$, $\\hat{y} = T(R(x))$. As in the official code, $\\alpha$
is learned as $\\alpha = \\sigma(a)$ from a scalar $a$ that starts at 0 (an even blend); it can also
be fixed (`learn_alpha=False`; a curriculum on $\\alpha$, as studied in the paper, is then set
from outside with `model.peft_side_tuning.set_alpha_logit`).

For a timm ViT, $B(x)$ is the pooled, normalized feature vector the classifier reads (after
`pool`, `fc_norm` and `head_drop`), of width `head.in_features`. The side network is built fresh
(never copied from the backbone) and is one of:

- `"conv"`: `depth` 3x3 convolutions with stride 2, `width` channels, GroupNorm and ReLU (the
  shape of the small distilled convolutional side networks of the paper), global average
  pooling, and a linear map to the feature width;
- `"mlp"`: the image average-pooled to `pool_size` x `pool_size`, flattened, then `depth` linear
  layers (GELU between them), the last one mapping to the feature width;
- `"vit"`: a timm `VisionTransformer` of width `width`, `depth` blocks and `num_heads` heads with
  the backbone's image and patch size, whose classifier maps its class token to the feature width.

Implementation: the side network and $a$ live in one module, `model.peft_side_tuning`.
`model.patch_embed` is wrapped by [`SideInput`][reference_impls.methods.side_tuning.SideInput],
which hands the image to the side network before embedding it, and the classifier(s) (`head`,
and `head_dist` of distilled models) are wrapped by
[`SideBlendHead`][reference_impls.methods.side_tuning.SideBlendHead], which blends before
classifying. The side features of the last image batch are kept until the head has read them, so
`forward_head` must follow the `forward_features` call of the same batch (as in `model(x)`);
`forward_head(x, pre_logits=True)` returns the backbone's features, unblended. Only the side
network, $a$ and the head train; the backbone builds no autograd graph. Side-tuning is not
mergeable: the side network runs next to the backbone at inference.
"""

from __future__ import annotations

from typing import Any, Literal

import torch
from pydantic import model_validator
from torch import nn
from timm.models.vision_transformer import VisionTransformer

from ..authoring import MethodConfig, PositiveInt, Wrapper, factory_kwargs, head_modules, register, replace_module


class SideTuningConfig(MethodConfig):
    """Configuration of Side-Tuning."""

    side: Literal["conv", "mlp", "vit"] = "conv"
    """Side network: small conv net, MLP on the pooled image, or a narrow fresh ViT."""
    width: PositiveInt = 64
    """Channels (conv), hidden width (mlp) or embedding width (vit)."""
    depth: PositiveInt = 4
    """Conv layers (conv), linear layers (mlp) or blocks (vit)."""
    num_heads: PositiveInt = 4
    """Attention heads of the 'vit' side network."""
    pool_size: PositiveInt = 8
    """The 'mlp' side network reads the image average-pooled to this size."""
    alpha_init: float = 0.0
    """Initial blending logit a; alpha = sigmoid(a) weighs the backbone."""
    learn_alpha: bool = True
    """Learn a (as the official code); otherwise alpha stays fixed."""

    @model_validator(mode="after")
    def _heads_divide_width(self) -> SideTuningConfig:
        if self.side == "vit" and self.width % self.num_heads:
            raise ValueError(
                f"width {self.width} must be divisible by num_heads {self.num_heads} for the 'vit' side network"
            )
        return self


def conv_side_network(in_chans: int, width: int, depth: int, out_dim: int, factory: dict[str, Any]) -> nn.Module:
    """`depth` x (3x3 conv, stride 2, GroupNorm, ReLU), global average pooling, linear map to `out_dim`."""
    layers: list[nn.Module] = []
    channels = in_chans
    for _ in range(depth):
        layers += [
            nn.Conv2d(channels, width, kernel_size=3, stride=2, padding=1, **factory),
            nn.GroupNorm(2 if width % 2 == 0 else 1, width, **factory),
            nn.ReLU(),
        ]
        channels = width
    layers += [nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(width, out_dim, **factory)]
    return nn.Sequential(*layers)


def mlp_side_network(in_chans: int, pool_size: int, width: int, depth: int, out_dim: int, factory: dict[str, Any]) -> nn.Module:
    """Average-pool the image to `pool_size`^2, flatten, then `depth` linear layers with GELU between them."""
    layers: list[nn.Module] = [nn.AdaptiveAvgPool2d(pool_size), nn.Flatten()]
    features = in_chans * pool_size * pool_size
    for _ in range(depth - 1):
        layers += [nn.Linear(features, width, **factory), nn.GELU()]
        features = width
    layers.append(nn.Linear(features, out_dim, **factory))
    return nn.Sequential(*layers)


def vit_side_network(model: nn.Module, config: SideTuningConfig, in_chans: int, out_dim: int, factory: dict[str, Any]) -> nn.Module:
    """A fresh timm ViT with the backbone's image and patch size whose classifier outputs `out_dim` features."""
    patch_embed = model.patch_embed
    return VisionTransformer(
        img_size=patch_embed.img_size,
        patch_size=patch_embed.patch_size,
        in_chans=in_chans,
        num_classes=out_dim,
        embed_dim=config.width,
        depth=config.depth,
        num_heads=config.num_heads,
        dynamic_img_size=bool(getattr(model, "dynamic_img_size", False)),
        **factory,
    )


class SideTuningBranch(nn.Module):
    """The side network $S$ and the blending logit $a$; computes $\\alpha B(x) + (1 - \\alpha) S(x)$.

    Args:
        side: The side network, mapping images to `(batch, feature width)`.
        alpha_init: Initial logit a.
        learn_alpha: Whether a is a trainable parameter.
        reference: A tensor of the backbone, giving device and dtype of a.
    """

    def __init__(self, side: nn.Module, alpha_init: float, learn_alpha: bool, reference: torch.Tensor) -> None:
        super().__init__()
        self.peft_side = side
        logit = torch.full((1,), alpha_init, device=reference.device, dtype=reference.dtype)
        if learn_alpha:
            self.peft_alpha = nn.Parameter(logit)
        else:
            self.register_buffer("peft_alpha", logit, persistent=False)
        self.features: torch.Tensor | None = None

    def alpha(self) -> torch.Tensor:
        """Return $\\alpha = \\sigma(a)$, the weight of the backbone's features."""
        # α = sigmoid(a)
        return torch.sigmoid(self.peft_alpha)

    @torch.no_grad()
    def set_alpha_logit(self, value: float) -> None:
        """Set a (for a schedule on alpha when it is not learned)."""
        self.peft_alpha.fill_(value)

    def capture(self, images: torch.Tensor) -> None:
        """Run the side network on the input images and keep $S(x)$ for the head."""
        # S(x)
        self.features = self.peft_side(images)

    def blend(self, base: torch.Tensor) -> torch.Tensor:
        """Return $R(x) = \\alpha B(x) + (1 - \\alpha) S(x)$ for backbone features `base`.

        Raises:
            RuntimeError: If no side features of a batch of this size were computed.
        """
        side = self.features
        if side is None or side.shape[0] != base.shape[0]:
            raise RuntimeError(
                "the side-tuning head needs the side features of the same batch; run model(x) "
                "(or forward_features on this batch before forward_head)"
            )
        alpha = self.alpha().to(base.dtype)
        # R(x) = α B(x) + (1 - α) S(x)
        return alpha * base + (1 - alpha) * side.to(base.dtype)


class SideInput(Wrapper):
    """The patch embedding, which first hands the input image to the side branch.

    Attribute lookups that fail on the wrapper fall through to the patch embedding (timm reads
    `grid_size`, `dynamic_feat_size`, ... from `model.patch_embed`).

    Args:
        base_layer: The model's `patch_embed`.
        branch: The side branch (kept as a reference, registered on the model itself).
    """

    def __init__(self, base_layer: nn.Module, branch: SideTuningBranch) -> None:
        super().__init__(base_layer)
        # a plain reference, not a submodule: the branch is registered once, as model.peft_side_tuning
        object.__setattr__(self, "branch", branch)

    def __getattr__(self, name: str) -> Any:
        try:
            return super().__getattr__(name)
        except AttributeError:
            if name.startswith("_") or name == "base_layer":
                raise
            return getattr(self._modules["base_layer"], name)

    def forward(self, x: torch.Tensor, *args: Any, **kwargs: Any) -> torch.Tensor:
        """Compute the side features of `x`, then embed `x` as before."""
        self.branch.capture(x)
        return self.base_layer(x, *args, **kwargs)


class SideBlendHead(Wrapper):
    """A classifier that reads $\\alpha B(x) + (1 - \\alpha) S(x)$ instead of the backbone's features.

    Args:
        base_layer: The classifier (`head` or `head_dist`).
        branch: The side branch (kept as a reference, registered on the model itself).
    """

    def __init__(self, base_layer: nn.Module, branch: SideTuningBranch) -> None:
        super().__init__(base_layer)
        object.__setattr__(self, "branch", branch)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Return $T(\\alpha B(x) + (1 - \\alpha) S(x))$."""
        # ŷ = T(R(x))
        return self.base_layer(self.branch.blend(x))


def apply_side_tuning(model: nn.Module, config: SideTuningConfig) -> list[str]:
    """Add the side branch as `model.peft_side_tuning` and wrap `patch_embed` and the head(s).

    Args:
        model: A timm vision transformer (already frozen).
        config: The side-tuning config.

    Returns:
        An empty list: no backbone parameter is trained.

    Raises:
        ValueError: If the model has no `patch_embed` (the side network needs the input image).
    """
    patch_embed = getattr(model, "patch_embed", None)
    if not isinstance(patch_embed, nn.Module):
        raise ValueError("the model has no patch_embed to read the input image from")
    head = model.head
    dim = head.in_features if isinstance(head, nn.Linear) else int(getattr(model, "num_features", model.embed_dim))
    proj = getattr(patch_embed, "proj", None)
    in_chans = proj.in_channels if isinstance(proj, nn.Conv2d) else 3
    factory = factory_kwargs(patch_embed)
    if config.side == "conv":
        side = conv_side_network(in_chans, config.width, config.depth, dim, factory)
    elif config.side == "mlp":
        side = mlp_side_network(in_chans, config.pool_size, config.width, config.depth, dim, factory)
    else:
        side = vit_side_network(model, config, in_chans, dim, factory)
    branch = SideTuningBranch(side, config.alpha_init, config.learn_alpha, next(patch_embed.parameters()))
    branch.train(model.training)
    model.peft_side_tuning = branch
    replace_module(model, "patch_embed", SideInput(patch_embed, branch))
    for name, classifier in head_modules(model).items():
        replace_module(model, name, SideBlendHead(classifier, branch))
    return []


register("side-tuning", SideTuningConfig, apply_side_tuning, mergeable=False)
