"""Visual prompting: a learnable frame of pixels added around every input image.

Paper: Exploring Visual Prompts for Adapting Large-Scale Models (Bahng, Jahanian, Sankaranarayanan
and Isola, arXiv 2022). arXiv: https://arxiv.org/abs/2203.17274. Bib key: bahng2022exploring.

A binary mask $M$ marks a frame of width $p$ along the image border and learnable pixels $\\phi$
are added there to every (normalized) input image: $\\tilde{x} = x + M \\odot \\phi$. The frozen
model sees only $\\tilde{x}$; $\\phi$ (and here, as for every method of this package, the head) is
trained. The paper's padding prompter stores $\\phi$ as four tensors (top and bottom strips of
$p \\times W$ pixels, left and right strips of $(H - 2p) \\times p$), $12\\,p\\,(H - p)$ values for a
square $H \\times H$ RGB image (69,840 for $H = 224$, $p = 30$), drawn from $\\mathcal{N}(0, 1)$.

Implementation: the model's `patch_embed` (the first module that reads pixels) is wrapped by
[`PaddingPrompter`][reference_impls.methods.visual_prompting.PaddingPrompter], which adds the frame
to its input (attributes such as `grid_size` stay readable through the wrapper); the image size
and channel count are read from `patch_embed`. A frame at least half
as wide as the image covers all of it (the strips are clipped to the image; empty strips are not
created), so the default width works on images of any size. `init="zeros"` starts the frame at
zero (identity at init) instead of the paper's random frame. The paper's patch-shaped prompts
(a fixed or randomly placed $p \\times p$ patch) are not implemented.

Not mergeable: for a ViT the frame's contribution is linear in the patch projection and could be
absorbed into the position embeddings, but the prompt is kept as an input transformation as in
the paper.
"""

from __future__ import annotations

from typing import Any, Literal

import torch
from torch import nn

from ..authoring import MethodConfig, PositiveInt, Wrapper, register, replace_module


class VisualPromptingConfig(MethodConfig):
    """Configuration of visual prompting with a padding (frame) prompt."""

    prompt_size: PositiveInt = 30
    """Frame width p in pixels (paper: 30 on 224 x 224 images)."""
    init: Literal["normal", "zeros"] = "normal"
    """'normal': phi ~ N(0, 1) as in the paper's code; 'zeros': start at zero (identity)."""


def frame_strips(height: int, width: int, size: int) -> dict[str, tuple[int, int]]:
    """Shapes (rows, columns) of the non-empty strips of a frame of width `size`.

    The top and bottom strips span the full width; the left and right strips span the rows in
    between. A frame at least half as wide as the image covers all of it.

    Args:
        height: Image height H.
        width: Image width W.
        size: Frame width p.

    Returns:
        A mapping from `"top"`, `"bottom"`, `"left"`, `"right"` to strip shapes, empty strips left out.
    """
    top = min(size, height)
    bottom = min(size, height - top)
    middle = height - top - bottom
    left = min(size, width)
    right = min(size, width - left)
    shapes = {"top": (top, width), "bottom": (bottom, width), "left": (middle, left), "right": (middle, right)}
    return {name: shape for name, shape in shapes.items() if shape[0] > 0 and shape[1] > 0}


class PaddingPrompter(Wrapper):
    """Adds a learnable frame $M \\odot \\phi$ to the images before the wrapped module.

    Parameters: `peft_prompt[strip]` of shape `(channels, rows, columns)` for each non-empty
    strip of [`frame_strips`][reference_impls.methods.visual_prompting.frame_strips].

    Args:
        base_layer: The module that receives the images (timm's `patch_embed`).
        channels: Image channels C.
        image_size: Image size (H, W).
        prompt_size: Frame width p.
        init: `"normal"` or `"zeros"`.
        reference: A tensor whose device and dtype the prompt takes.
    """

    def __init__(
        self,
        base_layer: nn.Module,
        channels: int,
        image_size: tuple[int, int],
        prompt_size: int,
        init: str,
        reference: torch.Tensor,
    ) -> None:
        super().__init__(base_layer)
        factory = {"device": reference.device, "dtype": reference.dtype}
        self.channels = channels
        self.image_size = image_size
        self.prompt_size = prompt_size
        strips = frame_strips(image_size[0], image_size[1], prompt_size)
        make = torch.randn if init == "normal" else torch.zeros
        self.peft_prompt = nn.ParameterDict(
            {name: nn.Parameter(make(channels, rows, cols, **factory)) for name, (rows, cols) in strips.items()}
        )

    def prompt(self) -> torch.Tensor:
        """Return $M \\odot \\phi$ as a `(C, H, W)` image (zero inside the frame)."""
        height, width = self.image_size
        strips = self.peft_prompt
        rows = []
        if "top" in strips:
            rows.append(strips["top"])
        middle = height - sum(strips[s].shape[1] for s in ("top", "bottom") if s in strips)
        if middle > 0:
            columns = [strips["left"]] if "left" in strips else []
            inner = width - sum(strips[s].shape[2] for s in ("left", "right") if s in strips)
            if inner > 0:
                reference = next(iter(strips.values()))
                columns.append(reference.new_zeros(self.channels, middle, inner))
            if "right" in strips:
                columns.append(strips["right"])
            rows.append(torch.cat(columns, dim=2))
        if "bottom" in strips:
            rows.append(strips["bottom"])
        return torch.cat(rows, dim=1)

    def forward(self, x: torch.Tensor, *args: Any, **kwargs: Any) -> torch.Tensor:
        """Add the frame to the images `x` `(B, C, H, W)` and call the wrapped module."""
        if tuple(x.shape[-3:]) != (self.channels, *self.image_size):
            raise RuntimeError(
                f"the visual prompt is made for images of shape {(self.channels, *self.image_size)}, "
                f"got {tuple(x.shape[-3:])}"
            )
        # x̃ = x + M ⊙ φ
        return self.base_layer(x + self.prompt().to(x.dtype), *args, **kwargs)

    def __getattr__(self, name: str) -> Any:
        """Fall back to the wrapped module's attributes, so that timm code reading
        `model.patch_embed.grid_size`, `.num_patches`, `.feat_ratio()` ... keeps working."""
        try:
            return super().__getattr__(name)
        except AttributeError:
            if name == "base_layer":
                raise
            return getattr(self.base_layer, name)

    def extra_repr(self) -> str:
        return f"image_size={self.image_size}, prompt_size={self.prompt_size}"


def apply_visual_prompting(model: nn.Module, config: VisualPromptingConfig) -> list[str]:
    """Wrap `model.patch_embed` with a [`PaddingPrompter`][reference_impls.methods.visual_prompting.PaddingPrompter].

    Args:
        model: A timm vision transformer (already frozen).
        config: The visual prompting config.

    Returns:
        An empty list: no backbone parameter is trained.

    Raises:
        TypeError: If the model has no `patch_embed` with a fixed `img_size` and a convolutional
            projection (from which the channel count is read).
    """
    patch_embed = getattr(model, "patch_embed", None)
    image_size = getattr(patch_embed, "img_size", None)
    proj = getattr(patch_embed, "proj", None)
    if image_size is None or len(image_size) != 2 or not isinstance(proj, nn.Conv2d):
        raise TypeError("the model needs a patch_embed with a fixed img_size and a Conv2d projection")
    prompter = PaddingPrompter(
        patch_embed,
        channels=proj.in_channels,
        image_size=(int(image_size[0]), int(image_size[1])),
        prompt_size=config.prompt_size,
        init=config.init,
        reference=proj.weight,
    )
    replace_module(model, "patch_embed", prompter)
    return []


register("visual-prompting", VisualPromptingConfig, apply_visual_prompting, mergeable=False)
