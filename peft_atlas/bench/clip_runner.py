"""The CLIP protocols of the harness: train a vision-language method on K shots per class and
test it, on the same classes (few-shot) or on base and novel classes (base-to-novel).

One run of a task:

1. The CLIP backbone is built and the method applied to the task's class names (base classes
   for base-to-novel) after seeding with the run's seed; a method that builds something from the
   data (Tip-Adapter's cache) is prepared on every training image, once, in the order of the
   first epoch.
2. Training: `train.epochs` epochs over the shots in a seeded order, one
   `reference_impls.clip_training_step` per batch (the method's own loss and update: ProGrad
   projects its gradient, KgCoOp adds its regularizer), the learning rate per step. After every
   epoch the validation images (min(K, 4) per class) are classified and their accuracy recorded;
   nothing is selected on them. A method with nothing to train (zero-shot CLIP, Tip-Adapter)
   runs no epoch.
3. The test split is classified once, with the model after the last epoch (CoOp and CoCoOp
   report that model).
4. Base-to-novel: the method is applied anew, to a fresh copy of the backbone, with the novel
   class names; every trained tensor is copied over except those that belong to the base classes
   (found by their shape following the number of classes, such as TaskRes's per-class residual
   or Tip-Adapter's one-hot cache values), which keep their initial value and are listed in the
   record. The novel test images are classified among the novel class names.

The runs are single-process (`torchrun` is refused) and deterministic for a seed on a machine.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable

import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset

import reference_impls as ri
from reference_impls.api import adapter_buffer_names, applied_method

from ..measured import EpochRecord, NovelRecord, PrepareRecord, TaskRecord
from . import training
from .backbone import BackboneError
from .clip_backbone import build_clip
from .config import ExperimentConfig
from .data_types import ClipTaskData
from .distributed import deterministic, max_rss_bytes, rank_and_world, seed_everything, select_device
from .progress import Progress
from .vtab import DataError

__all__ = ["apply_clip_method", "evaluate_clip", "load_clip_task_of", "run_clip_experiment", "run_clip_task",
           "train_clip", "transfer_to_classes"]

PROBE_NAME = "another class"
"""An extra class name, to find the tensors whose shape follows the number of classes."""


def apply_clip_method(model: nn.Module, config: ExperimentConfig, classnames: list[str],
                      train_split: Dataset) -> PrepareRecord | None:
    """Apply `config.method` to a CLIP model for `classnames`, in place.

    A method that builds from data (`needs_data`) is prepared on every training image once, in
    the first epoch's order (the batches training draws first).

    Returns:
        What the prepare step used, or None for a method applied directly.

    Raises:
        BackboneError: If the method's options do not fit the model (named in the message).
    """
    method = config.method
    spec = ri.get_spec(method.name)
    options = {**method.options, "classnames": list(classnames)}
    try:
        if not spec.needs_data:
            ri.apply(model, method.name, **options)
            return None
        batches = training.first_batches(train_split, config, math.ceil(len(train_split) / config.train.batch_size))
        ri.prepare(model, method.name, batches, **options)
    except (TypeError, ValueError) as error:  # options the model cannot take (a context longer than the text encoder's)
        raise BackboneError(f"method.options {method.options} do not fit the CLIP backbone: {error}") from None
    return PrepareRecord(batches=len(batches), fields=list(spec.data_fields))


@torch.inference_mode()
def evaluate_clip(model: nn.Module, dataset: Dataset, batch_size: int, device: torch.device) -> tuple[int, int]:
    """Count the correct top-1 predictions of `reference_impls.clip_logits` over a split.

    Returns:
        `(correct, total)`.
    """
    was_training = model.training
    model.eval()
    correct = 0
    for images, labels in DataLoader(dataset, batch_size=batch_size, shuffle=False):
        logits = ri.clip_logits(model, images.to(device))
        correct += int((logits.argmax(dim=1).cpu() == labels).sum())
    model.train(was_training)
    return correct, len(dataset)


def train_clip(model: nn.Module, config: ExperimentConfig, task: ClipTaskData, device: torch.device, *,
               quiet: bool) -> tuple[list[EpochRecord], int]:
    """Train the applied method in place, epoch by epoch (see the module docstring).

    Returns:
        The per-epoch history (mean training loss, validation accuracy, learning rate) and the
        reported epoch: the last one, or 0 when the method has nothing to train.
    """
    train_config = config.train
    trainable = [p for p in model.parameters() if p.requires_grad]
    if not trainable:
        return [], 0
    optimizer = training.build_optimizer(train_config, trainable)
    steps_per_epoch = math.ceil(len(task.train) / train_config.batch_size)
    total_steps = steps_per_epoch * train_config.epochs
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer,
        lambda step: training.lr_factor(step, total_steps=total_steps,
                                        warmup_steps=train_config.warmup_epochs * steps_per_epoch,
                                        schedule=train_config.schedule, min_ratio=train_config.min_lr / train_config.lr),
    )
    generator = torch.Generator().manual_seed(config.seed)
    history: list[EpochRecord] = []
    progress = Progress(total_steps, f"{config.method.name}/{task.name}", enabled=not quiet)
    model.train()
    for epoch in range(1, train_config.epochs + 1):
        batches, flips = training.draw_epoch(generator, len(task.train), train_config)
        loader = DataLoader(task.train, batch_sampler=batches, num_workers=train_config.num_workers)
        loss_sum, lr = 0.0, train_config.lr
        for batch, (images, labels) in zip(batches, loader):
            images = training._flip(images, batch, flips)
            lr = optimizer.param_groups[0]["lr"]
            loss = ri.clip_training_step(model, images.to(device), labels.to(device), optimizer)
            loss_sum += float(loss) * len(batch)
            scheduler.step()
            progress.update(1, f"epoch {epoch}/{train_config.epochs} loss {float(loss):.3f}")
        val_top1 = None
        if task.val is not None:
            val_top1 = training.percent(*evaluate_clip(model, task.val, train_config.eval_batch_size, device))
        history.append(EpochRecord(epoch=epoch, train_loss=loss_sum / len(task.train), val_top1=val_top1, lr=lr))
    progress.close()
    model.eval()
    return history, train_config.epochs


def transfer_to_classes(model: nn.Module, build: Callable[[], nn.Module],
                        classnames: list[str]) -> tuple[nn.Module, list[str]]:
    """The trained method of `model` on other class names: applied anew to a fresh backbone,
    with every trained tensor copied over except those that belong to the old classes.

    A tensor belongs to the classes when its shape changes with their number: its shape differs
    between the two applications, or (when both have as many classes) between this one and an
    application to one class more.

    Args:
        model: A CLIP model with a trained method.
        build: Builds a fresh copy of the backbone with the same weights (for random weights:
            from the same seed, which then also draws the initial values of the tensors that
            are not carried over).
        classnames: The new class names.

    Returns:
        The new model (in eval mode, on the old one's device) and the names of the tensors left
        at their initial value.
    """
    record = applied_method(model)
    if record is None:
        raise ValueError("no method is applied to the model")
    device = next(model.parameters()).device
    options = {**record["config"], "classnames": list(classnames)}
    target = build()
    ri.apply(target, record["name"], **options)
    names = ri.adapter_parameter_names(model) + adapter_buffer_names(model)
    source_state, target_state = model.state_dict(keep_vars=True), target.state_dict(keep_vars=True)
    bound = {name for name in names if source_state[name].shape != target_state[name].shape}
    if len(classnames) == len(record["config"]["classnames"]):
        probe = build()
        ri.apply(probe, record["name"], **{**options, "classnames": [*classnames, PROBE_NAME]})
        probe_state = probe.state_dict()
        bound |= {name for name in names if probe_state[name].shape != target_state[name].shape}
        del probe
    with torch.no_grad():
        for name in names:
            if name not in bound:
                target_state[name].copy_(source_state[name])
    return target.to(device).eval(), sorted(bound)


def run_clip_task(config: ExperimentConfig, task: ClipTaskData, *, quiet: bool = False) -> TaskRecord:
    """Run one task of a CLIP protocol (see the module docstring) and record it.

    Raises:
        BackboneError: If the backbone cannot be built as configured.
        DataError: Under torchrun (the CLIP protocols run in one process).
    """
    rank, world = rank_and_world()
    if world > 1:
        raise DataError("the CLIP protocols run in one process; start peft-atlas bench without torchrun")
    device = select_device(config.train.device)
    started = time.perf_counter()
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)

    def build() -> nn.Module:
        # Every copy from the same seed: a randomly initialized backbone is the same each time.
        seed_everything(config.seed)
        return build_clip(config.backbone)

    with deterministic():
        model = build()
        prepared = apply_clip_method(model, config, task.classnames, task.train)
        model.to(device)
        history, selected_epoch = train_clip(model, config, task, device, quiet=quiet)
        batch_size = config.train.eval_batch_size
        correct, total = evaluate_clip(model, task.test, batch_size, device)
        novel = None
        if task.novel_classnames is not None and task.novel_test is not None:
            novel_model, reinitialized = transfer_to_classes(model, build, task.novel_classnames)
            novel_correct, novel_total = evaluate_clip(novel_model, task.novel_test, batch_size, device)
            novel = NovelRecord(top1=training.percent(novel_correct, novel_total), test_correct=novel_correct,
                                num_test=novel_total, num_classes=len(task.novel_classnames),
                                reinitialized=reinitialized)
    rss = max_rss_bytes()
    return TaskRecord(
        task=task.name,
        group=task.group,
        top1=training.percent(correct, total),
        test_correct=correct,
        selected_epoch=selected_epoch,
        selection=config.train.selection,
        history=history,
        trainable_parameters=ri.trainable_parameters(model),
        total_parameters=sum(p.numel() for p in model.parameters()),
        num_train=len(task.train),
        num_val=len(task.val) if task.val is not None else 0,
        num_test=total,
        data_source=task.source,
        dataset_fingerprint=task.fingerprint,
        wall_time_s=time.perf_counter() - started,
        data_time_s=0.0,
        max_rss_bytes=rss,
        cuda_max_allocated_bytes=torch.cuda.max_memory_allocated(device) if device.type == "cuda" else None,
        world_size=world,
        device=device.type,
        prepare=prepared,
        num_classes=task.num_classes,
        shots=task.shots,
        novel=novel,
    )


def load_clip_task_of(config: ExperimentConfig, name: str) -> ClipTaskData:
    """Load one task named in `config.data` (folders under `data.root`, or VLM-micro).

    Raises:
        DataError: If `data.root` is not set, a folder is unusable, or a VLM-micro task is unknown.
    """
    from .clip_data import load_clip_task

    data = config.data
    shots = data.shots or 16
    if data.kind == "vlm-micro":
        from .vlm_micro import load_vlm_micro_task

        try:
            return load_vlm_micro_task(name, config.seed, shots=shots)
        except KeyError as error:
            raise DataError(error.args[0]) from None
    if data.root is None:
        raise DataError("data.root is not set: give the folder of the data sets in the config or with --data-root")
    return load_clip_task(data.root, name, protocol="few-shot" if data.kind == "clip-few-shot" else "base-to-novel",
                          shots=shots, seed=config.seed, image_size=data.image_size,
                          interpolation=data.interpolation, mean=data.mean, std=data.std)


def run_clip_experiment(config: ExperimentConfig, *, quiet: bool = False) -> list[TaskRecord]:
    """Load and run every task of a CLIP protocol's config, in order (the config resolved)."""
    results = []
    for name in config.data.tasks or []:
        started = time.perf_counter()
        task = load_clip_task_of(config, name)
        data_time = time.perf_counter() - started
        result = run_clip_task(config, task, quiet=quiet)
        results.append(result.model_copy(update={"data_time_s": data_time}))
    return results
