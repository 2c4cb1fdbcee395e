"""Pretraining of the VTAB-micro backbone on images this module generates.

The pretraining task has 64 classes: 8 shapes x 8 background gratings. Every image shows one
shape (disk, square, triangle, ring, plus, star, bar, L) at a random position, size and rotation,
in a colour contrasting with its background, over a sinusoidal grating (4 orientations x 2
periods) with random phase, random colours and pixel noise. Colour, position, size, rotation and
phase carry no label, so the network has to learn oriented edges, frequencies and shapes. None
of the evaluation tasks is this task: they classify digits, faces, texture photographs, and the
position, orientation or number of sprites.

The cache key of a checkpoint hashes the config and the source text of this file, so any change
to the generator or the training code produces a new checkpoint (see `checkpoint_key`).
"""

from __future__ import annotations

import hashlib
import json
import math
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

from .progress import Progress

__all__ = ["PretrainConfig", "checkpoint_key", "pretrain", "render_batch"]

NUM_SHAPES = 8
NUM_GRATINGS = 8
NUM_CLASSES = NUM_SHAPES * NUM_GRATINGS


@dataclass(frozen=True)
class PretrainConfig:
    """Everything that determines the pretrained weights (with the code of this file).

    Attributes:
        model: timm model name.
        model_kwargs: Arguments of `timm.create_model` that shape the network.
        image_size: Side of the generated images (equal to `model_kwargs["img_size"]`).
        mean: Per-channel mean subtracted after scaling pixels to [0, 1].
        std: Per-channel standard deviation divided by.
        steps: Optimizer steps; each draws a fresh batch, so no image is seen twice.
        batch_size: Images per step.
        lr: Peak AdamW learning rate.
        weight_decay: AdamW weight decay.
        warmup_steps: Linear warmup steps before the cosine decay to zero.
        label_smoothing: Label smoothing of the cross-entropy.
        eval_size: Held-out generated images on which the pretraining accuracy is measured.
        seed: Seed of the initialization and of the generator.
    """

    model: str = "vit_tiny_patch16_224"
    model_kwargs: dict[str, Any] = field(default_factory=lambda: {
        "img_size": 32, "patch_size": 4, "embed_dim": 96, "depth": 4, "num_heads": 3})
    image_size: int = 32
    mean: tuple[float, float, float] = (0.5, 0.5, 0.5)
    std: tuple[float, float, float] = (0.5, 0.5, 0.5)
    steps: int = 4800
    batch_size: int = 96
    lr: float = 0.001
    weight_decay: float = 0.05
    warmup_steps: int = 100
    label_smoothing: float = 0.0
    eval_size: int = 2048
    seed: int = 0

    def __post_init__(self) -> None:
        if self.model_kwargs.get("img_size") != self.image_size:
            raise ValueError(f"model_kwargs img_size {self.model_kwargs.get('img_size')} != image_size {self.image_size}")
        for name in ("steps", "batch_size", "eval_size", "image_size"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        if not 0 <= self.warmup_steps <= self.steps:
            raise ValueError(f"warmup_steps must be in [0, steps], got {self.warmup_steps}")

    def to_json(self) -> dict[str, Any]:
        """The config as plain JSON data (tuples become lists)."""
        return json.loads(json.dumps(asdict(self)))


def checkpoint_key(config: PretrainConfig) -> str:
    """The cache key of a config: 16 hex digits of sha256(config JSON, source text of this file).

    Args:
        config: The pretraining config.

    Returns:
        A key that changes whenever the config or the pretraining code changes.
    """
    digest = hashlib.sha256()
    digest.update(json.dumps(config.to_json(), sort_keys=True).encode())
    digest.update(b"\0")
    digest.update(Path(__file__).read_bytes())
    return digest.hexdigest()[:16]


# ---------------------------------------------------------------- the generator


def _shape_masks(u: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """Inside-tests of the 8 shapes in their own frame; returns (NUM_SHAPES, *u.shape) floats."""
    r = torch.sqrt(u**2 + v**2)
    theta = torch.atan2(v, u)
    masks = [
        r <= 0.9,                                                           # disk
        (u.abs() <= 0.75) & (v.abs() <= 0.75),                              # square
        (v <= 0.6) & (v >= -0.9) & (u.abs() <= 0.55 * (v + 0.9)),          # triangle
        (r <= 0.95) & (r >= 0.55),                                          # ring
        ((u.abs() <= 0.3) & (v.abs() <= 0.95)) | ((v.abs() <= 0.3) & (u.abs() <= 0.95)),  # plus
        r <= 0.55 + 0.35 * torch.cos(5 * theta),                            # five-pointed star
        (u.abs() <= 0.95) & (v.abs() <= 0.3),                               # bar
        ((u.abs() <= 0.9) & (v.abs() <= 0.9)) & ~((u >= -0.3) & (v <= 0.3)),  # L shape
    ]
    return torch.stack(masks).float()


GRATING_ANGLES = (0.0, 0.25 * math.pi, 0.5 * math.pi, 0.75 * math.pi)
GRATING_PERIODS = (0.25, 0.5)
"""The 8 background gratings: 4 orientations x 2 periods (in units where the image spans [-1, 1]:
4 and 8 pixels at 32 x 32)."""


def render_batch(generator: torch.Generator, batch_size: int, image_size: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Draw a batch of the pretraining task: one of 8 shapes on one of 8 background gratings.

    The shape (disk, square, triangle, ring, plus, star, bar, L) has a random position, size,
    rotation and a colour contrasting with the background; the grating (4 orientations x 2
    periods) has a random phase and two random colours, plus pixel noise. Images are drawn at
    twice `image_size` and average-pooled, which smooths the edges.

    Args:
        generator: Source of every random choice (a seeded CPU generator).
        batch_size: Number of images.
        image_size: Side of the returned images.

    Returns:
        Images in [0, 1] of shape (batch_size, 3, image_size, image_size) and int64 labels
        `shape * NUM_GRATINGS + grating` in [0, NUM_CLASSES).
    """
    def uniform(low: float, high: float, *shape: int) -> torch.Tensor:
        return low + (high - low) * torch.rand(batch_size, *shape, generator=generator)

    size = 2 * image_size
    labels = torch.randint(0, NUM_CLASSES, (batch_size,), generator=generator)
    shape, grating = labels // NUM_GRATINGS, labels % NUM_GRATINGS
    centers = (torch.arange(size) + 0.5) / size * 2 - 1                     # pixel centers in [-1, 1]
    y, x = torch.meshgrid(centers, centers, indexing="ij")
    # The shape: rotate and scale the image frame into the shape's own frame.
    cx, cy = uniform(-0.35, 0.35, 1, 1), uniform(-0.35, 0.35, 1, 1)
    scale, angle = uniform(0.35, 0.6, 1, 1), uniform(0, 2 * math.pi, 1, 1)
    dx, dy = (x - cx) / scale, (y - cy) / scale
    u = torch.cos(angle) * dx - torch.sin(angle) * dy
    v = torch.sin(angle) * dx + torch.cos(angle) * dy
    mask = _shape_masks(u, v)[shape, torch.arange(batch_size)]             # (B, size, size)
    # The grating: 0.5 + 0.5 sin(2 pi <(x, y), direction> / period + phase).
    phi = torch.tensor(GRATING_ANGLES)[grating % 4].view(-1, 1, 1)
    period = torch.tensor(GRATING_PERIODS)[grating // 4].view(-1, 1, 1)
    phase = uniform(0, 2 * math.pi, 1, 1)
    wave = 0.5 + 0.5 * torch.sin(2 * math.pi * (x * torch.cos(phi) + y * torch.sin(phi)) / period + phase)
    light = uniform(0.4, 1.0, 3, 1, 1)
    dark = light * uniform(0.1, 0.5, 3, 1, 1)
    background = dark + (light - dark) * wave[:, None]
    background = background + 0.05 * torch.randn(batch_size, 1, size, size, generator=generator)
    # The shape's colour: the complement of the background's mean colour, jittered.
    foreground = (1 - (light + dark) / 2 + uniform(-0.15, 0.15, 3, 1, 1)).expand(-1, -1, size, size)
    images = torch.where(mask[:, None] > 0, foreground, background).clamp(0, 1)
    return F.avg_pool2d(images, 2), labels


# ---------------------------------------------------------------- training


def _normalize(images: torch.Tensor, config: PretrainConfig) -> torch.Tensor:
    mean = torch.tensor(config.mean).view(1, 3, 1, 1)
    std = torch.tensor(config.std).view(1, 3, 1, 1)
    return (images - mean) / std


def _accuracy(model: torch.nn.Module, images: torch.Tensor, labels: torch.Tensor) -> float:
    model.eval()
    with torch.no_grad():
        correct = sum(int((model(x).argmax(1) == y).sum()) for x, y in zip(images.split(512), labels.split(512)))
    model.train()
    return 100.0 * correct / len(labels)


def pretrain(config: PretrainConfig, *, quiet: bool = True) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """Pretrain the backbone on the generated task.

    Seeds only its own random streams: the global torch random state is left as it was, so a
    caller's results do not depend on whether the checkpoint was cached.

    Args:
        config: What to train and how.
        quiet: Print nothing; otherwise report progress and the mean loss of the last 100 steps.

    Returns:
        The backbone's state dict without the classifier (`head.*`), and metrics: final
        training loss, top-1 accuracy (percent) on `eval_size` held-out generated images,
        wall time and the number of torch threads.
    """
    with torch.random.fork_rng(devices=[]):
        return _pretrain(config, quiet=quiet)


def _pretrain(config: PretrainConfig, *, quiet: bool) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    import timm

    torch.manual_seed(config.seed)
    model = timm.create_model(config.model, pretrained=False, num_classes=NUM_CLASSES, **config.model_kwargs)
    optimizer = torch.optim.AdamW(model.parameters(), lr=config.lr, weight_decay=config.weight_decay)

    def lr_at(step: int) -> float:
        # Linear warmup, then lr_t = lr * (1 + cos(pi * t)) / 2 down to 0 at the last step.
        if step < config.warmup_steps:
            return config.lr * (step + 1) / config.warmup_steps
        progress = (step - config.warmup_steps) / max(1, config.steps - config.warmup_steps)
        return 0.5 * config.lr * (1 + math.cos(math.pi * progress))

    # Two streams: the held-out images do not depend on the number of training steps.
    train_stream = torch.Generator().manual_seed(2 * config.seed + 1)
    eval_stream = torch.Generator().manual_seed(2 * config.seed + 2)
    eval_images, eval_labels = render_batch(eval_stream, config.eval_size, config.image_size)
    eval_images = _normalize(eval_images, config)

    started = time.perf_counter()
    model.train()
    window: list[float] = []
    progress = Progress(config.steps, "pretrain", enabled=not quiet)
    for step in range(config.steps):
        images, labels = render_batch(train_stream, config.batch_size, config.image_size)
        for group in optimizer.param_groups:
            group["lr"] = lr_at(step)
        loss = F.cross_entropy(model(_normalize(images, config)), labels, label_smoothing=config.label_smoothing)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        window = (window + [loss.item()])[-100:]
        progress.update(1, f"loss {sum(window) / len(window):.3f}")
    progress.close()
    metrics = {
        "final_train_loss": round(window[-1] if window else loss.item(), 4),
        "eval_top1": round(_accuracy(model, eval_images, eval_labels), 2),
        "eval_size": config.eval_size,
        "num_classes": NUM_CLASSES,
        "chance_top1": round(100.0 / NUM_CLASSES, 2),
        "wall_time_s": round(time.perf_counter() - started, 1),
        "torch_threads": torch.get_num_threads(),
    }
    state = {k: v.detach().clone().contiguous() for k, v in model.state_dict().items() if not k.startswith("head.")}
    return state, metrics
