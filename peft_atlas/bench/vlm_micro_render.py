"""The images and captions of VLM-micro: coloured shapes drawn at 32 x 32 pixels, described in words.

An image shows one shape (8 kinds) in one colour (8), at one of 5 positions and in one of 2
sizes, in one of two styles: `plain` (a dark random background colour with a faint gradient and
an opaque shape, the style of pretraining) or `textured` (a sinusoidal grating of two random
colours behind a shape of opacity 0.75 to 1 through which it shows, under a warm light that
shifts every colour, with stronger pixel noise: the style of the classification task, which the
CLIP model never saw). A caption names
the colour and the shape and, at random, the size and the position, in one of four templates:
"a photo of a small red circle at the top left."

Every random choice comes from a seeded torch generator; images are returned as uint8, the form
their fingerprints and the datasets start from. The pretraining checkpoint's key hashes this file
(see `vlm_micro_pretrain.checkpoint_key`): changing the drawing or the captions needs a new
checkpoint.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

__all__ = ["COLOURS", "IMAGE_SIZE", "MEAN", "POSITIONS", "SHAPES", "SIZES", "STD", "TEMPLATES", "caption",
           "draw", "normalize"]

IMAGE_SIZE = 32
MEAN = (0.5, 0.5, 0.5)
STD = (0.5, 0.5, 0.5)
"""Images are 32 x 32; pixels in [0, 1] map to [-1, 1]."""

SHAPES = ("circle", "square", "triangle", "cross", "diamond", "star", "ring", "heart")
COLOURS: dict[str, tuple[float, float, float]] = {
    "red": (0.86, 0.12, 0.12),
    "green": (0.13, 0.70, 0.18),
    "blue": (0.16, 0.27, 0.92),
    "yellow": (0.93, 0.88, 0.15),
    "purple": (0.55, 0.18, 0.78),
    "orange": (0.96, 0.52, 0.08),
    "white": (0.95, 0.95, 0.95),
    "pink": (1.00, 0.55, 0.78),
}
POSITIONS: dict[str, tuple[float, float]] = {
    "top left": (-0.45, -0.45),
    "top right": (0.45, -0.45),
    "bottom left": (-0.45, 0.45),
    "bottom right": (0.45, 0.45),
    "center": (0.0, 0.0),
}
"""Centre of each position, in image coordinates from -1 (left, top) to 1 (right, bottom)."""
SIZES: dict[str, tuple[float, float]] = {"small": (0.25, 0.32), "large": (0.40, 0.50)}
"""Half-size range of each size, as a fraction of half the image side."""
TEMPLATES = ("a {}.", "a photo of a {}.", "an image of a {}.", "{}")
"""Caption templates; `{}` is the description ("small red circle at the top left")."""

STYLES = ("plain", "textured")

WARM_LIGHT = ((0.90, 0.25, 0.00),
              (0.10, 0.75, 0.10),
              (0.00, 0.15, 0.55))
"""The colour mixing of the `textured` style's light (rows: output red, green, blue): hues move
towards red and yellow and blue dims, so colours no longer look as in pretraining."""


def _mask(shape: str, u: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """Inside-test of a shape of half-size 1 in its own frame (u to the right, v down)."""
    r = torch.sqrt(u**2 + v**2)
    if shape == "circle":
        return r <= 0.95
    if shape == "square":
        return (u.abs() <= 0.8) & (v.abs() <= 0.8)
    if shape == "triangle":  # pointing up
        return (v <= 0.8) & (v >= -0.95) & (u.abs() <= 0.55 * (v + 0.95))
    if shape == "cross":
        return ((u.abs() <= 0.3) & (v.abs() <= 0.95)) | ((v.abs() <= 0.3) & (u.abs() <= 0.95))
    if shape == "diamond":
        return (u.abs() + v.abs()) <= 1.0
    if shape == "star":  # five points, one pointing up
        return r <= 0.5 + 0.45 * torch.cos(5 * (torch.atan2(v, u) + math.pi / 2))
    if shape == "ring":
        return (r <= 0.95) & (r >= 0.55)
    if shape == "heart":  # two lobes over a downward point
        lobes = ((u - 0.45) ** 2 + (v + 0.3) ** 2 <= 0.22) | ((u + 0.45) ** 2 + (v + 0.3) ** 2 <= 0.22)
        return lobes | ((v >= -0.3) & (v <= 0.95) & (u.abs() <= 0.9 * (0.95 - v) / 1.25))
    raise ValueError(f"unknown shape {shape!r}")


def draw(generator: torch.Generator, shape: torch.Tensor, colour: torch.Tensor, position: torch.Tensor,
         size: torch.Tensor, style: str) -> torch.Tensor:
    """Draw a batch of images.

    Args:
        generator: Source of every random choice (jitter of position, size and colour, the
            background, the noise).
        shape: Index into `SHAPES` of every image, int64 of shape (n,).
        colour: Index into `COLOURS`.
        position: Index into `POSITIONS`.
        size: Index into `SIZES`.
        style: `plain` or `textured` background.

    Returns:
        uint8 images of shape (n, 3, 32, 32), drawn at twice the size and average-pooled.
    """
    if style not in STYLES:
        raise ValueError(f"unknown style {style!r}; valid: {', '.join(STYLES)}")
    n, side = len(shape), 2 * IMAGE_SIZE

    def uniform(low: float, high: float, *dims: int) -> torch.Tensor:
        return low + (high - low) * torch.rand(n, *dims, generator=generator)

    centers = (torch.arange(side) + 0.5) / side * 2 - 1
    y, x = torch.meshgrid(centers, centers, indexing="ij")
    where = torch.tensor(list(POSITIONS.values()))[position]
    cx = where[:, 0].view(-1, 1, 1) + uniform(-0.08, 0.08, 1, 1)
    cy = where[:, 1].view(-1, 1, 1) + uniform(-0.08, 0.08, 1, 1)
    ranges = torch.tensor(list(SIZES.values()))[size]
    scale = (ranges[:, 0] + (ranges[:, 1] - ranges[:, 0]) * torch.rand(n, generator=generator)).view(-1, 1, 1)
    u, v = (x - cx) / scale, (y - cy) / scale
    mask = torch.zeros(n, side, side, dtype=torch.bool)
    for index, name in enumerate(SHAPES):
        chosen = shape == index
        if bool(chosen.any()):
            mask[chosen] = _mask(name, u[chosen], v[chosen])
    paint = torch.tensor(list(COLOURS.values()))[colour].view(n, 3, 1, 1) + uniform(-0.06, 0.06, 3, 1, 1)
    if style == "plain":
        first = uniform(0.0, 0.45, 3, 1, 1)
        angle = uniform(0, 2 * math.pi, 1, 1)
        gradient = (x * torch.cos(angle) + y * torch.sin(angle))[:, None] * uniform(0.0, 0.12, 1, 1, 1)
        background, opacity = first + gradient, torch.ones(n, 1, 1, 1)
    else:
        first, second = uniform(0.0, 0.55, 3, 1, 1), uniform(0.0, 0.55, 3, 1, 1)
        angle, period, phase = uniform(0, math.pi, 1, 1), uniform(0.2, 0.5, 1, 1), uniform(0, 2 * math.pi, 1, 1)
        # w = (1 + sin(2 pi <(x, y), direction> / period + phase)) / 2 blends the two colours
        wave = 0.5 + 0.5 * torch.sin(2 * math.pi * (x * torch.cos(angle) + y * torch.sin(angle)) / period + phase)
        background, opacity = first + (second - first) * wave[:, None], uniform(0.75, 1.0, 1, 1, 1)
    # the shape lets the background show through: colour = a * paint + (1 - a) * background
    images = torch.where(mask[:, None], opacity * paint + (1 - opacity) * background, background)
    if style == "textured":
        # warm light: every pixel's colour c becomes W c
        images = torch.einsum("ij,njhw->nihw", torch.tensor(WARM_LIGHT), images)
    noise = 0.04 if style == "plain" else 0.08
    images = images + noise * torch.randn(n, 1, side, side, generator=generator)
    return (F.avg_pool2d(images.clamp(0, 1), 2) * 255).round().to(torch.uint8)


def normalize(images: torch.Tensor) -> torch.Tensor:
    """uint8 images to the float input of the model (pixels in [0, 1] to [-1, 1])."""
    mean = torch.tensor(MEAN).view(1, 3, 1, 1)
    std = torch.tensor(STD).view(1, 3, 1, 1)
    return (images.float() / 255.0 - mean) / std


def caption(generator: torch.Generator, shape: int, colour: int, position: int, size: int,
            p_size: float = 0.5, p_position: float = 0.5) -> str:
    """A caption of one image: colour and shape always, size and position each with a probability.

    Args:
        generator: Source of the choices (whether to name size and position, the template).
        shape: Index into `SHAPES`; `colour`, `position` and `size` likewise.
        p_size: Probability of naming the size.
        p_position: Probability of naming the position.

    Returns:
        E.g. "a photo of a small red circle at the top left."
    """
    words = []
    if float(torch.rand(1, generator=generator)) < p_size:
        words.append(list(SIZES)[size])
    words += [list(COLOURS)[colour], SHAPES[shape]]
    if float(torch.rand(1, generator=generator)) < p_position:
        place = list(POSITIONS)[position]
        words.append(("in the " if place == "center" else "at the ") + place)
    # The article stays "a" before every colour: the methods' template, "a photo of a {}.", says
    # "a orange circle" too.
    return TEMPLATES[int(torch.randint(len(TEMPLATES), (1,), generator=generator))].format(" ".join(words))
