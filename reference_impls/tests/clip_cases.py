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
    params: Callable[[int, int, int, int], int] = field(default=lambda text, embed, classes, vision: 0)
    text_rows: Callable[[int, int], int] = field(default=lambda batch, classes: classes)

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
    # CoCoOp: context M * d_t plus the Meta-Net d_v -> d_v // r -> d_t (weights and biases); prompts per image
    ClipCase("cocoop",
             params=lambda text, embed, classes, vision: (
                 4 * text + embed * (embed // 16) + embed // 16 + (embed // 16) * text + text),
             text_rows=lambda batch, classes: batch * classes),
    ClipCase("cocoop", {"init_text": None, "n_ctx": 2, "meta_reduction": 4},
             params=lambda text, embed, classes, vision: (
                 2 * text + embed * (embed // 4) + embed // 4 + (embed // 4) * text + text),
             text_rows=lambda batch, classes: batch * classes),
    # KgCoOp: CoOp's context; from "a photo of a" it is zero-shot CLIP (and L_kg = 0) at init. There L_kg
    # is at its minimum, and the matrix's Adam steps (1e-2 per coordinate, large for the tiny model's
    # embeddings) raise lambda * L_kg more than they lower L_ce unless lambda is small.
    ClipCase("kgcoop", {"weight": 0.5}, zero_shot=True, params=lambda text, embed, classes, vision: 4 * text),
    ClipCase("kgcoop", {"init_text": None, "n_ctx": 4, "class_specific": True},
             params=lambda text, embed, classes, vision: classes * 4 * text),
    # ProGrad: CoOp's context (zeros, then "a photo of a"); the update is projected in training_step
    # (tests in test_prograd.py). The default M = 16 does not fit the tiny CLIP's 16-token context.
    ClipCase("prograd", {"n_ctx": 6}, params=lambda text, embed, classes, vision: 6 * text),
    ClipCase("prograd", {"n_ctx": 6, "class_specific": True, "class_position": "middle"},
             params=lambda text, embed, classes, vision: classes * 6 * text),
    ClipCase("prograd", {"init_text": None, "n_ctx": 4, "temperature": 2.0, "projection": 0.8},
             params=lambda text, embed, classes, vision: 4 * text),
    # --- CLIP-Adapter, TaskRes, Tip-Adapter, Tip-Adapter-F ---
    # CLIP-Adapter: 2 d^2 / rho per adapted side (d: embedding width), none with alpha = 0; class features cached
    ClipCase("clip-adapter", params=lambda text, embed, classes, vision: 2 * embed * (embed // 4),
             text_rows=lambda batch, classes: 0),
    ClipCase("clip-adapter", {"side": "text", "reduction": 2, "alpha": 0.6},
             params=lambda text, embed, classes, vision: 2 * embed * (embed // 2), text_rows=lambda batch, classes: 0),
    ClipCase("clip-adapter", {"side": "both"}, params=lambda text, embed, classes, vision: 4 * embed * (embed // 4),
             text_rows=lambda batch, classes: 0),
    ClipCase("clip-adapter", {"side": "both", "alpha": 0.0}, zero_shot=True, text_rows=lambda batch, classes: 0),
    # TaskRes: a residual of the (K, d) classifier, zero at init
    ClipCase("taskres", zero_shot=True, params=lambda text, embed, classes, vision: classes * embed,
             text_rows=lambda batch, classes: 0),
    ClipCase("taskres", {"alpha": 1.0, "template": "a drawing of a {}."},
             params=lambda text, embed, classes, vision: classes * embed, text_rows=lambda batch, classes: 0),
    # Tip-Adapter: a cache of the CACHE_IMAGES images of prepare_batches(), nothing trained;
    # alpha = 0 or an empty cache is zero-shot CLIP
    ClipCase("tip-adapter", text_rows=lambda batch, classes: 0),
    ClipCase("tip-adapter", {"alpha": 0.0}, zero_shot=True, text_rows=lambda batch, classes: 0),
    ClipCase("tip-adapter", {"cache_size": 0}, zero_shot=True, text_rows=lambda batch, classes: 0),
    # Tip-Adapter-F: the N K keys of width d train
    ClipCase("tip-adapter-f", {"beta": 5.5, "alpha": 2.0},
             params=lambda text, embed, classes, vision: CACHE_IMAGES * embed, text_rows=lambda batch, classes: 0),
    ClipCase("tip-adapter-f", {"cache_size": 0}, zero_shot=True, text_rows=lambda batch, classes: 0),
    # --- MaPLe, VPT on CLIP's image encoder ---
    # MaPLe: J prompts of b tokens (d_t each) + J coupling layers d_t -> d_v with biases; the tiny CLIP
    # has 2 blocks per tower, so depth 2 is MaPLe over every block and depth 1 is shallow MaPLe
    ClipCase("maple", {"depth": 2},
             params=lambda text, embed, classes, vision: 2 * 2 * text + 2 * (text * vision + vision)),
    ClipCase("maple", {"depth": 1, "n_ctx": 3, "init_text": None},
             params=lambda text, embed, classes, vision: 3 * text + (text * vision + vision)),
    # VPT on the image encoder: p * d_v per prompted block (2 blocks deep, 1 shallow); class features cached
    ClipCase("vpt-clip", {"num_tokens": 3}, params=lambda text, embed, classes, vision: 2 * 3 * vision,
             text_rows=lambda batch, classes: 0),
    ClipCase("vpt-clip", {"num_tokens": 2, "deep": False, "dropout": 0.1},
             params=lambda text, embed, classes, vision: 2 * vision, text_rows=lambda batch, classes: 0),
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


CACHE_IMAGES = 8
"""Images in `prepare_batches()`."""


def prepare_batches() -> list[tuple[torch.Tensor, torch.Tensor]]:
    """The training batches `ri.prepare` gets for a method that builds something from data
    (Tip-Adapter's cache): two batches, `CACHE_IMAGES` images in all."""
    return [clip_batch(seed, n=CACHE_IMAGES // 2) for seed in (11, 12)]


def applied_clip(case: ClipCase, seed: int = 0) -> nn.Module:
    """The tiny CLIP with the case's method applied on `CLASSNAMES`; a method that needs data is
    prepared on `prepare_batches()`, unless the case gives the config fields the data would fill."""
    model, spec = build_clip(seed), ri.get_spec(case.method)
    if spec.needs_data and not set(spec.data_fields) <= set(case.kwargs):
        return ri.prepare(model, case.method, prepare_batches(), classnames=CLASSNAMES, **case.kwargs)
    return ri.apply(model, case.method, classnames=CLASSNAMES, **case.kwargs)
