"""The task and experiment loop of the benchmark harness: fine-tune one method on each task of
an experiment, by the protocol.

Contract with the data sources (VTAB-1k folders in `vtab.py`, VTAB-micro in `micro.py`):

- A data source returns a [`TaskData`][peft_atlas.bench.data_types.TaskData]; its datasets yield
  `(image, label)`, already resized and normalized. With `config.train.selection == "val200"`,
  `task.train` is train800 and `task.val` val200 (required). With `"last-epoch"`, the runner
  trains on `task.train` followed by `task.val` when `task.val` is given (a source that does not
  know the rule returns train800 and val200), or on `task.train` alone when `task.val` is None
  (the VTAB-1k reader then returns train800val200).
- `run_task(config, task, *, quiet=False) -> TaskRecord` trains `config.method` on
  `config.backbone` for `config.train.epochs` epochs and measures the test split exactly once,
  at the epoch chosen by the selection rule (never the best test epoch).
- `run_experiment(config, *, quiet=False) -> list[TaskRecord]` loads every task of
  `config.data` (`kind: vtab-1k` reads folders; `kind: micro` calls
  `peft_atlas.bench.micro.load_micro_task(name, seed)`) and runs them in order. The CLIP
  protocols (`clip-few-shot`, `clip-base-to-novel`, `vlm-micro`) run in
  [`clip_runner`][peft_atlas.bench.clip_runner] instead.
- `peft_atlas.bench.results.write_results(path, config, task_results, command)` writes the
  measured run; a config with `cheap_to_reproduce: true` marks a run that the test suite re-runs.
- The loop works in one process or under `torchrun` (DistributedDataParallel, gloo on CPU, nccl
  on CUDA); only rank 0 writes files and prints.

The other parts live beside it: processes, devices and seeds in
[`distributed`][peft_atlas.bench.distributed], the backbone in
[`backbone`][peft_atlas.bench.backbone], the epoch loop and evaluation in
[`training`][peft_atlas.bench.training].
"""

from __future__ import annotations

import dataclasses
import time
from pathlib import Path

import torch
from torch import nn
from torch.utils.data import ConcatDataset, Dataset

import reference_impls as ri

from ..measured import PrepareRecord, TaskRecord
from . import training
from .backbone import build_backbone
from .config import CLIP_KINDS, ExperimentConfig, parse_config
from .data_types import TaskData
from .distributed import all_reduce, deterministic, max_rss_bytes, rank_and_world, seed_everything, select_device
from .micro import load_micro_task
from .vtab import VTAB_TASKS, DataError, load_vtab_task

__all__ = ["apply_method", "load_task", "resolve_config", "run_experiment", "run_task"]


def apply_method(model: nn.Module, config: ExperimentConfig, train_split: Dataset) -> PrepareRecord | None:
    """Apply `config.method` to the backbone, in place.

    A method that chooses what to tune from the training data (`needs_data` in the registry)
    is prepared on the first `method.prepare_batches` batches of the training split, in the
    order training draws them (see [`first_batches`][peft_atlas.bench.training.first_batches]);
    any other method is applied directly.

    Returns:
        What the prepare step used, or None for a method applied directly.
    """
    method = config.method
    spec = ri.get_spec(method.name)
    if not spec.needs_data:
        ri.apply(model, method.name, **method.options)
        return None
    batches = training.first_batches(train_split, config, method.prepare_batches)
    ri.prepare(model, method.name, batches, **method.options)
    return PrepareRecord(batches=len(batches), fields=list(spec.data_fields))


def run_task(config: ExperimentConfig, task: TaskData, *, quiet: bool = False) -> TaskRecord:
    """Fine-tune `config.method` on one task and report its test accuracy by the selection rule.

    The backbone is built and the method applied after seeding with `config.seed`; training
    follows [`train`][peft_atlas.bench.training.train]. The test split is evaluated once, after
    training: with `val200`, on the parameters of the epoch with the best validation accuracy
    (earliest on ties); with `last-epoch`, on the last epoch's.

    Args:
        config: The experiment.
        task: The task's data (see `TaskData`).
        quiet: No progress bar.

    Returns:
        The task's record (`data_time_s` is left at 0; `run_experiment` sets it).

    Raises:
        DataError: If `val200` selection is asked for and the task has no validation split.
        BackboneError: If the backbone cannot be built as configured.
    """
    train_config = config.train
    if train_config.selection == "val200" and task.val is None:
        raise DataError(f"task {task.name!r}: selection 'val200' needs a validation split (task.val is None)")
    rank, world = rank_and_world()
    device = select_device(train_config.device)
    started = time.perf_counter()
    if train_config.selection == "last-epoch" and task.val is not None:
        task = dataclasses.replace(task, train=ConcatDataset([task.train, task.val]), val=None)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    with deterministic():
        seed_everything(config.seed)
        model = build_backbone(config.backbone, task.num_classes)
        prepared = apply_method(model, config, task.train)
        model.to(device)
        history, selected_epoch = training.train(model, config, task, device, quiet=quiet or rank != 0)
        correct, total = training.evaluate(model, task.test, train_config, device)
    rss = max_rss_bytes()
    return TaskRecord(
        task=task.name,
        group=task.group,
        top1=training.percent(correct, total),
        test_correct=correct,
        selected_epoch=selected_epoch,
        selection=train_config.selection,
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
        max_rss_bytes=int(all_reduce([rss], device, "max")[0]) if rss is not None else None,
        cuda_max_allocated_bytes=torch.cuda.max_memory_allocated(device) if device.type == "cuda" else None,
        world_size=world,
        device=device.type,
        prepare=prepared,
    )


def resolve_config(config: ExperimentConfig) -> ExperimentConfig:
    """Fill in what the config leaves implicit: the task list and an absolute data root.

    The result is what measured runs record, so that a run can be repeated from it alone. The
    CLIP protocols also make their shots explicit (16 unless given).
    """
    data = config.model_dump()
    kind = data["data"]["kind"]
    if kind in CLIP_KINDS:
        from .clip_data import BASE_TO_NOVEL_TASKS
        from .vlm_micro import BENCHMARK_TASKS, SHOTS

        if data["data"]["shots"] is None:
            data["data"]["shots"] = SHOTS
        if data["data"]["tasks"] is None:
            data["data"]["tasks"] = list(BENCHMARK_TASKS if kind == "vlm-micro" else BASE_TO_NOVEL_TASKS)
    if data["data"]["tasks"] is None:
        data["data"]["tasks"] = list(VTAB_TASKS)
    if data["data"]["root"] is not None:
        data["data"]["root"] = str(Path(data["data"]["root"]).expanduser().resolve())
    return parse_config(data, "<resolved config>")


def load_task(config: ExperimentConfig, name: str) -> TaskData:
    """Load one task named in `config.data`.

    Raises:
        DataError: For `vtab-1k`, when `data.root` is not set or the folder is unusable; for
            `micro`, when the task is unknown or the package shipping its images is missing.
    """
    data = config.data
    if data.kind == "micro":
        try:
            return load_micro_task(name, config.seed)
        except (KeyError, ImportError) as error:  # an unknown task, a package missing its images
            raise DataError(error.args[0] if error.args else str(error)) from None
    if data.root is None:
        raise DataError("data.root is not set: give the VTAB-1k folder in the config or with --data-root")
    return load_vtab_task(
        data.root,
        name,
        selection=config.train.selection,
        image_size=data.image_size,
        interpolation=data.interpolation,
        mean=data.mean,
        std=data.std,
    )


def run_experiment(config: ExperimentConfig, *, quiet: bool = False) -> list[TaskRecord]:
    """Load every task named by `config.data` and run it, in order.

    Args:
        config: The experiment (resolved with [`resolve_config`][peft_atlas.bench.runner.resolve_config]).
        quiet: No progress bar.

    Returns:
        One record per task.

    Raises:
        DataError: If a task's data cannot be read.
        BackboneError: If the backbone cannot be built as configured.
    """
    config = resolve_config(config)
    if config.data.kind in CLIP_KINDS:
        from .clip_runner import run_clip_experiment

        return run_clip_experiment(config, quiet=quiet)
    results = []
    for name in config.data.tasks:
        started = time.perf_counter()
        task = load_task(config, name)
        data_time = time.perf_counter() - started
        result = run_task(config, task, quiet=quiet)
        results.append(result.model_copy(update={"data_time_s": data_time}))
    return results
