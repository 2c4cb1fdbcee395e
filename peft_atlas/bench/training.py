"""Training and evaluation: data order, the optimizer and its schedule, the epoch loop, accuracy.

Each epoch draws a permutation of the training split (and, with `hflip`, the flips) from one
generator seeded with the run's seed, and cuts it into global batches of `train.batch_size`.
Under torchrun each process computes its share of every global batch and
DistributedDataParallel averages the gradients, scaled so that the update equals the
one-process update on the same global batch.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader, Dataset, Subset

from ..measured import EpochRecord
from .config import ExperimentConfig, TrainConfig
from .data_types import TaskData
from .distributed import all_reduce, rank_and_world
from .progress import Progress

__all__ = [
    "build_optimizer",
    "draw_epoch",
    "evaluate",
    "first_batches",
    "global_batches",
    "local_share",
    "lr_factor",
    "percent",
    "train",
    "train_step",
]

Batch = tuple[torch.Tensor, torch.Tensor]


def lr_factor(step: int, *, total_steps: int, warmup_steps: int, schedule: str, min_ratio: float) -> float:
    """Learning-rate multiplier at optimizer step `step` (from 0).

    Linear warmup `(step + 1) / warmup_steps` for the first `warmup_steps` steps, then constant 1
    or a cosine from 1 down to `min_ratio` at the last step.
    """
    if step < warmup_steps:
        return (step + 1) / warmup_steps
    if schedule == "constant":
        return 1.0
    progress = (step - warmup_steps) / max(1, total_steps - warmup_steps - 1)
    # lr = min + (max - min) * (1 + cos(pi * t)) / 2
    return min_ratio + (1.0 - min_ratio) * 0.5 * (1.0 + math.cos(math.pi * min(progress, 1.0)))


def build_optimizer(config: TrainConfig, params: list[nn.Parameter]) -> torch.optim.Optimizer:
    """AdamW or SGD over the trainable parameters, with the config's learning rate and decay."""
    if config.optimizer == "sgd":
        return torch.optim.SGD(params, lr=config.lr, momentum=config.momentum, weight_decay=config.weight_decay)
    return torch.optim.AdamW(params, lr=config.lr, weight_decay=config.weight_decay)


# ----------------------------------------------------------------------------------------------
# Data order


def global_batches(order: torch.Tensor, batch_size: int) -> list[list[int]]:
    """Cut a permutation into global batches; the last one may be smaller (nothing is dropped)."""
    indices = order.tolist()
    return [indices[start : start + batch_size] for start in range(0, len(indices), batch_size)]


def local_share(batch: list[int], rank: int, world_size: int) -> list[int]:
    """The examples of a global batch this process computes: every `world_size`-th from `rank`.

    Unlike `DistributedSampler(drop_last=False)`, nothing is repeated to even out the shares, so
    every process count sees exactly the same examples; a share may be empty.
    """
    return batch[rank::world_size]


def draw_epoch(generator: torch.Generator, size: int, config: TrainConfig) -> tuple[list[list[int]], torch.Tensor | None]:
    """Draw one epoch from the training generator: its global batches and, with `hflip`, which
    examples are flipped (a boolean per example)."""
    order = torch.randperm(size, generator=generator)
    flips = torch.rand(size, generator=generator) < 0.5 if config.augmentation == "hflip" else None
    return global_batches(order, config.batch_size), flips


def _flip(images: torch.Tensor, indices: list[int], flips: torch.Tensor | None) -> torch.Tensor:
    """Flip horizontally, in place, the images of `indices` drawn to be flipped."""
    if flips is not None and indices:
        mask = flips[indices]
        images[mask] = images[mask].flip(-1)
    return images


def first_batches(dataset: Dataset, config: ExperimentConfig, count: int) -> list[Batch]:
    """The first `count` global batches of the first epoch, exactly as training draws them.

    The same seeded generator, order and flips as [`train`][peft_atlas.bench.training.train];
    drawing them here leaves the training order unchanged. Every process gets whole batches.

    Args:
        dataset: The training split.
        config: The experiment (its seed and train section).
        count: Batches wanted; fewer if the epoch has fewer.

    Returns:
        `(images, labels)` pairs.
    """
    generator = torch.Generator().manual_seed(config.seed)
    batches, flips = draw_epoch(generator, len(dataset), config.train)
    chosen = batches[:count]
    loader = DataLoader(dataset, batch_sampler=chosen, num_workers=config.train.num_workers)
    return [(_flip(images, batch, flips), labels) for (images, labels), batch in zip(loader, chosen)]


# ----------------------------------------------------------------------------------------------
# Evaluation


def percent(correct: int, total: int) -> float:
    """Accuracy in percent."""
    return 100.0 * correct / total


@torch.inference_mode()
def evaluate(model: nn.Module, dataset: Dataset, config: TrainConfig, device: torch.device) -> tuple[int, int]:
    """Count correct top-1 predictions over a whole split, exactly, across processes.

    Each process classifies every `world_size`-th example; the counts are summed.

    Returns:
        `(correct, total)` over the whole split.
    """
    rank, world = rank_and_world()
    shard = Subset(dataset, range(rank, len(dataset), world))
    was_training = model.training
    model.eval()
    correct = 0
    if len(shard):
        loader = DataLoader(shard, batch_size=config.eval_batch_size, shuffle=False, num_workers=config.num_workers)
        for images, labels in loader:
            logits = model(images.to(device))
            correct += int((logits.argmax(dim=1).cpu() == labels).sum())
    model.train(was_training)
    total_correct, total = all_reduce([correct, len(shard)], device)
    return int(total_correct), int(total)


# ----------------------------------------------------------------------------------------------
# Training


def train_step(
    network: nn.Module,
    batch: Batch,
    optimizer: torch.optim.Optimizer,
    config: TrainConfig,
    global_size: int,
    device: torch.device,
) -> float:
    """One optimizer step on this process's share of a global batch.

    Args:
        network: The model (wrapped in DistributedDataParallel under torchrun).
        batch: This process's `(images, labels)`, possibly empty.
        optimizer: The optimizer.
        config: The train section (label smoothing).
        global_size: Examples in the whole global batch.
        device: Where the model is.

    Returns:
        The summed loss over this process's examples.
    """
    images, labels = batch
    logits = network(images.to(device))
    loss = F.cross_entropy(logits, labels.to(device), reduction="sum", label_smoothing=config.label_smoothing)
    # DDP averages gradients over processes: scale so the result is sum / global batch size
    (loss * rank_and_world()[1] / global_size).backward()
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)
    return float(loss.detach())


def train(
    model: nn.Module, config: ExperimentConfig, task: TaskData, device: torch.device, *, quiet: bool
) -> tuple[list[EpochRecord], int]:
    """Train in place; with `val200`, leave the best-validation epoch's parameters in the model.

    Args:
        model: The adapted model, on `device`.
        config: The experiment.
        task: The task; `task.val` is used only with `val200`.
        device: Where the model is.
        quiet: No progress bar.

    Returns:
        The per-epoch history and the selected epoch (earliest best validation accuracy with
        `val200`, else the last epoch).
    """
    train_config = config.train
    rank, world = rank_and_world()
    trainable = {name: p for name, p in model.named_parameters() if p.requires_grad}
    optimizer = build_optimizer(train_config, list(trainable.values()))
    steps_per_epoch = math.ceil(len(task.train) / train_config.batch_size)
    total_steps = steps_per_epoch * train_config.epochs
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer,
        lambda step: lr_factor(
            step,
            total_steps=total_steps,
            warmup_steps=train_config.warmup_epochs * steps_per_epoch,
            schedule=train_config.schedule,
            min_ratio=train_config.min_lr / train_config.lr,
        ),
    )
    if world > 1:
        ids = [device.index] if device.type == "cuda" else None
        network: nn.Module = nn.parallel.DistributedDataParallel(model, device_ids=ids)
    else:
        network = model
    generator = torch.Generator().manual_seed(config.seed)
    image_shape = tuple(task.train[0][0].shape)
    use_val = train_config.selection == "val200"
    history: list[EpochRecord] = []
    best_top1, best_epoch, best_state = -1.0, train_config.epochs, None
    progress = Progress(total_steps, f"{config.method.name}/{task.name}", enabled=not quiet)
    model.train()
    for epoch in range(1, train_config.epochs + 1):
        batches, flips = draw_epoch(generator, len(task.train), train_config)
        shares = [local_share(batch, rank, world) for batch in batches]
        loader = iter(
            DataLoader(task.train, batch_sampler=[s for s in shares if s], num_workers=train_config.num_workers)
        )
        loss_sum, lr = 0.0, train_config.lr
        for batch, share in zip(batches, shares):
            if share:
                images, labels = next(loader)
                images = _flip(images, share, flips)
            else:  # this process has no example in a small last batch: it still joins the all-reduce
                images, labels = torch.zeros((0, *image_shape)), torch.zeros(0, dtype=torch.long)
            lr = optimizer.param_groups[0]["lr"]
            loss_sum += train_step(network, (images, labels), optimizer, train_config, len(batch), device)
            scheduler.step()
            progress.update(1, f"epoch {epoch}/{train_config.epochs}")
        train_loss = all_reduce([loss_sum], device)[0] / len(task.train)
        val_top1 = None
        if use_val:
            val_top1 = percent(*evaluate(model, task.val, train_config, device))
            if val_top1 > best_top1:
                best_top1, best_epoch = val_top1, epoch
                best_state = {name: p.detach().clone() for name, p in trainable.items()}
        history.append(EpochRecord(epoch=epoch, train_loss=train_loss, val_top1=val_top1, lr=lr))
    progress.close()
    if best_state is not None:
        with torch.no_grad():
            for name, p in trainable.items():
                p.copy_(best_state[name])
    return history, best_epoch if use_val else train_config.epochs
