"""Shared tables of the vision-language tests: the tiny CLIP model, the cases, tolerances.

Adding a vision-language method means adding its lines to `CLIP_CASES`. The tests that build a
CLIP model skip, saying why, when open_clip is not installed (`pytest reference_impls` must run
with torch and timm alone).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import pytest
import torch
from torch import nn

import reference_impls as ri

CLASSNAMES = ("cat", "red panda", "sea_turtle", "fire truck")
"""Class names of the tests: one- and two-token names, one with an underscore."""

IMAGE_SIZE = 32


@dataclass(frozen=True)
class ClipCase:
    """One configured vision-language method.

    Attributes:
        method: Registry name.
        kwargs: Config fields passed to `ri.apply` besides the class names.
        zero_shot: Right after apply, the paper promises exactly zero-shot CLIP with the prompt
            "a photo of a {class}." for this configuration.
        params: The expected trainable-parameter count from the model's sizes:
            `params(text_width, embed_dim, classes, vision_width)`.
        text_rows: Rows the text encoder runs per forward pass of `batch` images:
            `text_rows(batch, classes)` (0 when class features are cached).
    """

    method: str
    kwargs: dict[str, Any] = field(default_factory=dict)
    zero_shot: bool = False
    params: Callable[[int, int, int, int], int] = lambda text, embed, classes, vision: 0
    text_rows: Callable[[int, int], int] = lambda batch, classes: classes

    @property
    def id(self) -> str:
        args = ",".join(f"{k}={v}" for k, v in self.kwargs.items()).replace(" ", "").replace("'", "")
        return f"{self.method}({args})"


CLIP_CASES: list[ClipCase] = [
    ClipCase("zero-shot-clip", zero_shot=True, text_rows=lambda batch, classes: 0),
    ClipCase("coop", {"n_ctx": 4}, params=lambda text, embed, classes, vision: 4 * text),
    ClipCase("coop", {"init_text": "a photo of a"}, zero_shot=True, params=lambda text, embed, classes, vision: 4 * text),
    ClipCase("coop", {"n_ctx": 4, "class_specific": True, "class_position": "middle"},
             params=lambda text, embed, classes, vision: classes * 4 * text),
    ClipCase("coop", {"init_text": "a photo of a", "class_specific": True}, zero_shot=True,
             params=lambda text, embed, classes, vision: classes * 4 * text),
    ClipCase("coop", {"n_ctx": 3, "class_position": "front"}, params=lambda text, embed, classes, vision: 3 * text),
    # --- CoCoOp, KgCoOp, ProGrad / PromptSRC ---
    # --- CLIP-Adapter, TaskRes, Tip-Adapter, Tip-Adapter-F ---
    # --- MaPLe, VPT on CLIP's image encoder ---
]

TOL: dict[str, float] = {
    # Zero-shot recovery: the same real-valued function, computed in float64 by (sometimes) another
    # order of operations; such differences stay near 1e-14 for logits of order 10.
    "zero_shot": 1e-10,
    "save_load": 0.0,  # the same computation on the same tensors
}


def open_clip_or_skip() -> Any:
    """open_clip, or skip the calling test with the reason."""
    return pytest.importorskip("open_clip", reason="open_clip is not installed (pip install open_clip_torch)")


def build_clip(seed: int = 0) -> nn.Module:
    """A tiny, randomly initialized open_clip CLIP in eval mode (both towers 2 blocks wide 64)."""
    open_clip = open_clip_or_skip()
    torch.manual_seed(seed)
    model = open_clip.CLIP(
        embed_dim=32,
        vision_cfg={"layers": 2, "width": 64, "head_width": 32, "patch_size": 8, "image_size": IMAGE_SIZE},
        text_cfg={"context_length": 16, "vocab_size": 49408, "width": 64, "heads": 2, "layers": 2},
    )
    return model.eval()


def clip_batch(seed: int = 1, n: int = 3) -> tuple[torch.Tensor, torch.Tensor]:
    """A fixed batch of images and labels for the tiny CLIP."""
    generator = torch.Generator().manual_seed(seed)
    images = torch.randn(n, 3, IMAGE_SIZE, IMAGE_SIZE, generator=generator)
    return images, torch.randint(0, len(CLASSNAMES), (n,), generator=generator)


def applied_clip(case: ClipCase, seed: int = 0) -> nn.Module:
    """The tiny CLIP with the case's method applied on `CLASSNAMES`."""
    return ri.apply(build_clip(seed), case.method, classnames=CLASSNAMES, **case.kwargs)
