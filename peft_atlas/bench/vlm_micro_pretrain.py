"""Pretraining of the VLM-micro CLIP: contrastive learning on generated image-caption pairs.

A small `open_clip.CLIP` (a 4-block vision transformer on 32 x 32 images, a 3-block text
transformer over CLIP's byte-pair vocabulary) learns from fresh pairs every step: images of
coloured shapes on `plain` backgrounds and captions that name their colour and shape and,
at random, their size and position ([`vlm_micro_render`][peft_atlas.bench.vlm_micro_render]).
Every shape, colour, size and position appears in pretraining, as the world appears in CLIP's;
the classification task built on top of it uses another background style.

The loss is CLIP's symmetric cross-entropy over the batch's image-caption similarities, with one
change for generated captions: pairs whose captions are the same text are all positives (their
target mass is shared), since a batch of 256 often draws the same caption twice.

The cache key of a checkpoint hashes the config and the source text of this file and of the
renderer, so any change to either produces a new checkpoint (see `checkpoint_key`).
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

from . import vlm_micro_render as render
from .progress import Progress

__all__ = ["EMBEDDING_IDS", "EMBEDDING_ROWS", "VlmPretrainConfig", "checkpoint_key", "dense_state", "pretrain"]

EMBEDDING_IDS = "token_embedding.ids"
EMBEDDING_ROWS = "token_embedding.rows"
"""The checkpoint keeps the token embedding's rows of the tokens pretraining saw (ids and rows):
the other 49,000 rows of CLIP's vocabulary were never trained and are zero."""


@dataclass(frozen=True)
class VlmPretrainConfig:
    """Everything that determines the pretrained weights (with the code of this file and the renderer).

    Attributes:
        embed_dim: Width of the joint embedding.
        vision_cfg: `open_clip.CLIP`'s `vision_cfg`.
        text_cfg: `open_clip.CLIP`'s `text_cfg`.
        steps: Optimizer steps; each draws a fresh batch.
        batch_size: Image-caption pairs per step.
        lr: Peak AdamW learning rate.
        weight_decay: AdamW weight decay.
        warmup_steps: Linear warmup steps before the cosine decay to zero.
        p_size: Probability that a caption names the size.
        p_position: Probability that a caption names the position.
        eval_size: Held-out images on which the zero-shot accuracy is measured.
        seed: Seed of the initialization and of the generators.
    """

    embed_dim: int = 64
    vision_cfg: dict[str, Any] = field(default_factory=lambda: {
        "image_size": 32, "patch_size": 8, "width": 96, "layers": 4, "head_width": 32})
    text_cfg: dict[str, Any] = field(default_factory=lambda: {
        "context_length": 16, "vocab_size": 49408, "width": 64, "heads": 2, "layers": 3})
    steps: int = 400
    batch_size: int = 256
    lr: float = 0.001
    weight_decay: float = 0.05
    warmup_steps: int = 30
    p_size: float = 0.5
    p_position: float = 0.5
    eval_size: int = 1024
    seed: int = 0

    def __post_init__(self) -> None:
        if self.vision_cfg.get("image_size") != render.IMAGE_SIZE:
            raise ValueError(f"vision_cfg image_size must be {render.IMAGE_SIZE}, got {self.vision_cfg.get('image_size')}")
        for name in ("steps", "batch_size", "eval_size", "embed_dim"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        if not 0 <= self.warmup_steps <= self.steps:
            raise ValueError(f"warmup_steps must be in [0, steps], got {self.warmup_steps}")

    def to_json(self) -> dict[str, Any]:
        """The config as plain JSON data."""
        return json.loads(json.dumps(asdict(self)))

    def model_cfg(self) -> dict[str, Any]:
        """The arguments of `open_clip.CLIP` that build the model."""
        return {"embed_dim": self.embed_dim, "vision_cfg": dict(self.vision_cfg), "text_cfg": dict(self.text_cfg)}


def checkpoint_key(config: VlmPretrainConfig) -> str:
    """16 hex digits of sha256(config JSON, this file, the renderer): changes with any of them."""
    digest = hashlib.sha256()
    digest.update(json.dumps(config.to_json(), sort_keys=True).encode())
    for module in (__file__, render.__file__):
        digest.update(b"\0")
        digest.update(Path(module).read_bytes())
    return digest.hexdigest()[:16]


def dense_state(state: dict[str, torch.Tensor], vocab_size: int) -> dict[str, torch.Tensor]:
    """A checkpoint's state dict with its token embedding rebuilt: the kept rows, zeros elsewhere."""
    state = dict(state)
    ids, rows = state.pop(EMBEDDING_IDS), state.pop(EMBEDDING_ROWS)
    weight = torch.zeros(vocab_size, rows.shape[1], dtype=rows.dtype)
    weight[ids] = rows
    state["token_embedding.weight"] = weight
    return state


def _draw_batch(generator: torch.Generator, n: int, config: VlmPretrainConfig, style: str,
                with_captions: bool = True) -> tuple[torch.Tensor, list[str], torch.Tensor]:
    """n images with their captions and their colour-shape class (shape * 8 + colour)."""
    shape = torch.randint(len(render.SHAPES), (n,), generator=generator)
    colour = torch.randint(len(render.COLOURS), (n,), generator=generator)
    position = torch.randint(len(render.POSITIONS), (n,), generator=generator)
    size = torch.randint(len(render.SIZES), (n,), generator=generator)
    images = render.draw(generator, shape, colour, position, size, style)
    captions = [render.caption(generator, int(s), int(c), int(p), int(z), config.p_size, config.p_position)
                for s, c, p, z in zip(shape, colour, position, size)] if with_captions else []
    return render.normalize(images), captions, shape * len(render.COLOURS) + colour


def _zero_shot_top1(model: torch.nn.Module, tokenizer: Any, images: torch.Tensor, labels: torch.Tensor) -> float:
    """Top-1 (percent) of the 64 colour-shape classes with the prompt "a photo of a {colour} {shape}."."""
    prompts = [f"a photo of a {colour} {shape}." for shape in render.SHAPES for colour in render.COLOURS]
    model.eval()
    with torch.no_grad():
        text = F.normalize(model.encode_text(tokenizer(prompts)), dim=-1)
        image = F.normalize(torch.cat([model.encode_image(x) for x in images.split(512)]), dim=-1)
        correct = int(((image @ text.t()).argmax(1) == labels).sum())
    model.train()
    return 100.0 * correct / len(labels)


def pretrain(config: VlmPretrainConfig, *, quiet: bool = True) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """Pretrain the VLM-micro CLIP.

    Seeds only its own random streams: the global torch random state is left as it was.

    Args:
        config: What to train and how.
        quiet: Print nothing; otherwise report progress and the mean loss of the last 50 steps.

    Returns:
        The state dict (its token embedding as the rows of the tokens seen, see `EMBEDDING_IDS`)
        and metrics: final loss, zero-shot top-1 over the 64 colour-shape classes on held-out
        `plain` images (the pretraining style), wall time and torch threads.
    """
    with torch.random.fork_rng(devices=[]):
        return _pretrain(config, quiet=quiet)


def _pretrain(config: VlmPretrainConfig, *, quiet: bool) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    import open_clip

    torch.manual_seed(config.seed)
    model = open_clip.CLIP(**config.model_cfg())
    tokenizer = open_clip.tokenizer.SimpleTokenizer(context_length=config.text_cfg["context_length"])
    optimizer = torch.optim.AdamW(model.parameters(), lr=config.lr, weight_decay=config.weight_decay)

    def lr_at(step: int) -> float:
        # Linear warmup, then lr_t = lr * (1 + cos(pi * t)) / 2 down to 0 at the last step.
        if step < config.warmup_steps:
            return config.lr * (step + 1) / config.warmup_steps
        progress = (step - config.warmup_steps) / max(1, config.steps - config.warmup_steps)
        return 0.5 * config.lr * (1 + math.cos(math.pi * progress))

    train_stream = torch.Generator().manual_seed(2 * config.seed + 1)
    eval_stream = torch.Generator().manual_seed(2 * config.seed + 2)
    eval_images, _, eval_labels = _draw_batch(eval_stream, config.eval_size, config, "plain", with_captions=False)
    seen: set[int] = set()
    started = time.perf_counter()
    model.train()
    window: list[float] = []
    progress = Progress(config.steps, "pretrain vlm-micro", enabled=not quiet)
    for step in range(config.steps):
        images, captions, _ = _draw_batch(train_stream, config.batch_size, config, "plain")
        tokens = tokenizer(captions)
        seen.update(int(t) for t in tokens.unique())
        for group in optimizer.param_groups:
            group["lr"] = lr_at(step)
        image = F.normalize(model.encode_image(images), dim=-1)
        text = F.normalize(model.encode_text(tokens), dim=-1)
        logits = model.logit_scale.exp() * image @ text.t()
        # Pairs with the same caption are all positives: target t_ij = [c_i = c_j] / #{k: c_k = c_i}.
        index = {c: i for i, c in enumerate(dict.fromkeys(captions))}
        ids = torch.tensor([index[c] for c in captions])
        same = (ids[:, None] == ids[None, :]).float()
        target = same / same.sum(dim=1, keepdim=True)
        # L = (CE(images -> captions) + CE(captions -> images)) / 2
        loss = 0.5 * (-(target * logits.log_softmax(dim=1)).sum(1).mean()
                      - (target * logits.t().log_softmax(dim=1)).sum(1).mean())
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        window = (window + [loss.item()])[-50:]
        progress.update(1, f"loss {sum(window) / len(window):.3f}")
    progress.close()
    wall = time.perf_counter() - started
    state = {k: v.detach().clone().contiguous() for k, v in model.state_dict().items()}
    ids = torch.tensor(sorted(seen), dtype=torch.int64)
    rows = state.pop("token_embedding.weight")[ids].clone()
    state[EMBEDDING_IDS], state[EMBEDDING_ROWS] = ids, rows
    # Measured on the model as saved (unseen token rows zero; no caption uses them).
    model.load_state_dict(dense_state(state, config.text_cfg["vocab_size"]))
    metrics = {
        "final_train_loss": round(sum(window) / len(window), 4) if window else None,
        "zero_shot_top1_plain": round(_zero_shot_top1(model, tokenizer, eval_images, eval_labels), 2),
        "eval_size": config.eval_size,
        "num_classes": len(render.SHAPES) * len(render.COLOURS),
        "chance_top1": round(100.0 / (len(render.SHAPES) * len(render.COLOURS)), 2),
        "tokens_seen": len(ids),
        "wall_time_s": round(wall, 1),
        "torch_threads": torch.get_num_threads(),
    }
    return state, metrics
