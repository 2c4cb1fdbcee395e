"""Write measured runs: one JSON document per run, with everything needed to trust and repeat it.

The format (its records, its marker and its reader) is defined in
[`peft_atlas.measured`][peft_atlas.measured]; this module fills it from a run's task records.
"""

from __future__ import annotations

import json
import os
import platform
import subprocess
import sys
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from ..measured import (FORMAT, FORMAT_VERSION, BackboneWeightsRecord, BaseNovelMetric, GitState, MeasuredRun, Metrics,
                        PeakMemory, TaskRecord)
from .config import CLIP_KINDS, BackboneConfig, ClipBackboneConfig, ExperimentConfig
from .micro import file_sha256, micro_backbone_weights

__all__ = ["cpu_model", "environment", "harmonic_mean", "protocol", "summarize", "write_results"]

REPOSITORY = Path(__file__).resolve().parents[2]


def harmonic_mean(base: float, novel: float) -> float:
    """HM = 2 B N / (B + N) (0 when both are 0)."""
    return 2 * base * novel / (base + novel) if base + novel else 0.0


def summarize(task_results: list[TaskRecord]) -> Metrics:
    """Compute the metrics of a run: per-task top-1, group means and both overall means, and for a
    base-to-novel run base, novel and HM per task and averaged (HM of the average base and novel)."""
    top1 = {r.task: r.top1 for r in task_results}
    groups: dict[str, list[float]] = {}
    for r in task_results:
        groups.setdefault(r.group, []).append(r.top1)
    group_means = {g: sum(v) / len(v) for g, v in groups.items()}
    base_novel = base_novel_mean = None
    if task_results and all(r.novel is not None for r in task_results):
        base_novel = {r.task: BaseNovelMetric(base=r.top1, novel=r.novel.top1, hm=harmonic_mean(r.top1, r.novel.top1))
                      for r in task_results}
        base = sum(m.base for m in base_novel.values()) / len(base_novel)
        novel = sum(m.novel for m in base_novel.values()) / len(base_novel)
        base_novel_mean = BaseNovelMetric(base=base, novel=novel, hm=harmonic_mean(base, novel))
    return Metrics(
        top1=top1,
        group_means=group_means,
        mean_of_tasks=sum(top1.values()) / len(top1),
        mean_of_group_means=sum(group_means.values()) / len(group_means),
        base_novel=base_novel,
        base_novel_mean=base_novel_mean,
    )


def _clip_protocol(config: ExperimentConfig, task_results: list[TaskRecord]) -> dict[str, Any]:
    """The protocol of a CLIP run, in the words of the few-shot and base-to-novel papers."""
    from .clip_data import val_shots

    data, train = config.data, config.train
    base_to_novel = data.kind != "clip-few-shot"
    shots = data.shots or 16
    described: dict[str, Any] = {
        "kind": data.kind,
        "protocol": "base-to-novel" if base_to_novel else "few-shot",
        "sources": {r.task: r.data_source for r in task_results},
        "shots": shots,
        "train_split": f"{shots} images per class drawn from the training split with the run's seed",
        "val_split": f"{val_shots(shots)} images per class of the validation split (when the data set has one), "
                     "measured after every epoch and never used to select anything in the run",
        "test_split": "the whole test split",
    }
    if base_to_novel:
        described["classes"] = ("in label order, the first ceil(n / 2) classes are base classes, the rest novel; "
                                "training and validation keep the base classes; base test images are classified "
                                "among the base class names, novel test images among the novel class names")
    normalization: dict[str, Any] | str = {
        "image_size": data.image_size, "interpolation": data.interpolation, "mean": data.mean, "std": data.std,
        "resize": "shorter side to image_size, centre crop" if data.kind != "vlm-micro" else "generated at image_size"}
    protocol = {
        "data": described,
        "normalization": normalization,
        "augmentation": train.augmentation,
        "optimizer": {"name": train.optimizer, "lr": train.lr, "weight_decay": train.weight_decay,
                      **({"momentum": train.momentum} if train.optimizer == "sgd" else {})},
        "schedule": {"name": train.schedule, "warmup_epochs": train.warmup_epochs, "min_lr": train.min_lr,
                     "per": "step"},
        "epochs": train.epochs,
        "batch_size": train.batch_size,
        "loss": "the method's own training step (reference_impls.clip_training_step)",
        "selection": train.selection,
        "selection_rule": "train on the shots; report the test accuracy after the last epoch; the test split is "
                          "evaluated once (a method with nothing to train is evaluated as applied)",
        "metric": "top-1 accuracy (percent) on the test split",
        "seed": config.seed,
        "processes": 1,
    }
    if base_to_novel:
        protocol["metric"] = ("top-1 accuracy (percent) on the base classes and on the novel classes, and their "
                              "harmonic mean HM = 2 x base x novel / (base + novel)")
        protocol["novel_evaluation"] = (
            "the method is applied anew to the novel class names and every trained tensor is carried over, except "
            "those whose shape follows the number of classes (they belong to the base classes and keep their "
            "initial value; each task lists them under novel.reinitialized)")
        protocol["mean_conventions"] = {"base_novel_mean": "base and novel averaged over the tasks; HM of the two "
                                                           "averages"}
    else:
        protocol["mean_conventions"] = {"mean_of_tasks": "unweighted mean over tasks",
                                        "mean_of_group_means": "unweighted mean of the group means"}
    return protocol


def protocol(config: ExperimentConfig, task_results: list[TaskRecord]) -> dict[str, Any]:
    """Describe how the numbers were obtained, in words a reader of a paper would look for."""
    from .vtab import SPLITS

    if config.data.kind in CLIP_KINDS:
        return _clip_protocol(config, task_results)
    data, train = config.data, config.train
    train_split, val_split, test_split = SPLITS[train.selection]
    if data.kind == "vtab-1k":
        normalization: dict[str, Any] | str = {
            "image_size": data.image_size,
            "interpolation": data.interpolation,
            "mean": data.mean,
            "std": data.std,
        }
    else:
        normalization = "prepared by peft_atlas.bench.micro (see data_source of each task)"
    return {
        "data": {
            "kind": data.kind,
            "sources": {r.task: r.data_source for r in task_results},
            "train_split": train_split,
            "val_split": val_split,
            "test_split": test_split,
        },
        "normalization": normalization,
        "augmentation": train.augmentation,
        "optimizer": {
            "name": train.optimizer,
            "lr": train.lr,
            "weight_decay": train.weight_decay,
            **({"momentum": train.momentum} if train.optimizer == "sgd" else {}),
        },
        "schedule": {
            "name": train.schedule,
            "warmup_epochs": train.warmup_epochs,
            "min_lr": train.min_lr,
            "per": "step",
        },
        "epochs": train.epochs,
        "batch_size": train.batch_size,
        "label_smoothing": train.label_smoothing,
        "selection": train.selection,
        "selection_rule": (
            "train on train800; report the test accuracy of the epoch with the best val200 accuracy "
            "(earliest on ties); the test split is evaluated once"
            if train.selection == "val200"
            else "train on train800val200; report the last epoch's test accuracy; the test split is "
            "evaluated once"
        ),
        "metric": "top-1 accuracy (percent) on the test split",
        "mean_conventions": {
            "mean_of_tasks": "unweighted mean over tasks",
            "mean_of_group_means": "unweighted mean of the group means",
        },
        "seed": config.seed,
        "processes": task_results[0].world_size if task_results else 1,
    }


def cpu_model() -> str:
    """The CPU's model name as /proc/cpuinfo gives it (the processor type where there is none)."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _git(*args: str) -> str | None:
    try:
        done = subprocess.run(["git", "-C", str(REPOSITORY), *args], capture_output=True, text=True, timeout=30)
    except (OSError, subprocess.TimeoutExpired):
        return None
    return done.stdout.strip() if done.returncode == 0 else None


def environment() -> dict[str, Any]:
    """Hardware, package versions and the git state of the code that ran."""
    import timm
    import torch

    commit = _git("rev-parse", "HEAD")
    status = _git("status", "--porcelain") if commit else None
    open_clip = sys.modules.get("open_clip")
    return {
        "hardware": {
            "cpu": cpu_model(),
            "cpu_cores": os.cpu_count(),
            "torch_threads": torch.get_num_threads(),
            "gpu": torch.cuda.get_device_name() if torch.cuda.is_available() else None,
            "platform": platform.platform(),
        },
        "versions": {
            "python": platform.python_version(),
            "torch": torch.__version__,
            "timm": timm.__version__,
            "cuda": torch.version.cuda if torch.cuda.is_available() else None,
            **({"open_clip": getattr(open_clip, "__version__", None)} if open_clip is not None else {}),
        },
        "git": GitState(commit=commit, dirty=bool(status) if commit else None),
    }


def backbone_weights(config: BackboneConfig | ClipBackboneConfig) -> BackboneWeightsRecord | None:
    """The weights file a backbone config loads, by content (None without a checkpoint)."""
    if isinstance(config, ClipBackboneConfig):
        from .clip_backbone import clip_weights_record

        return clip_weights_record(config)
    if config.checkpoint is None:
        return None
    if config.checkpoint == "micro":
        weights = micro_backbone_weights()
        return BackboneWeightsRecord(checkpoint="micro", sha256=weights.sha256, origin=weights.origin, key=weights.key)
    return BackboneWeightsRecord(checkpoint=config.checkpoint, sha256=file_sha256(Path(config.checkpoint)),
                                 origin="file")


def write_results(path: str | Path, config: ExperimentConfig, task_results: list[TaskRecord], command: str) -> None:
    """Write a measured run (see [`MeasuredRun`][peft_atlas.measured.MeasuredRun] for its fields).

    Args:
        path: Destination `.json` file; parent folders are created.
        config: The resolved config the run used.
        task_results: One record per task, in config order.
        command: The exact command that reproduces the run.

    Raises:
        ValueError: If there are no task results.
    """
    if not task_results:
        raise ValueError("no task results to write")
    peaks = [r.max_rss_bytes for r in task_results if r.max_rss_bytes is not None]
    cuda_peaks = [r.cuda_max_allocated_bytes for r in task_results if r.cuda_max_allocated_bytes is not None]
    run = MeasuredRun(
        format=FORMAT,
        format_version=FORMAT_VERSION,
        command=command,
        cheap_to_reproduce=config.cheap_to_reproduce,
        method=config.method.name,
        config=config.model_dump(mode="json"),
        seed=config.seed,
        protocol=protocol(config, task_results),
        metrics=summarize(task_results),
        tasks=task_results,
        trainable_parameters={r.task: r.trainable_parameters for r in task_results},
        wall_time_s=sum(r.wall_time_s + r.data_time_s for r in task_results),
        peak_memory=PeakMemory(
            max_rss_bytes=max(peaks) if peaks else None,
            cuda_max_allocated_bytes=max(cuda_peaks) if cuda_peaks else None,
        ),
        **environment(),
        backbone_weights=backbone_weights(config.backbone),
        created=datetime.now(timezone.utc).isoformat(timespec="seconds"),
    )
    document = run.model_dump(mode="json")
    # Fields only CLIP runs fill are left out of other runs' files (their files stay as they were).
    for key in ("base_novel", "base_novel_mean"):
        if document["metrics"][key] is None:
            del document["metrics"][key]
    for task in document["tasks"]:
        for key in ("num_classes", "shots", "novel"):
            if task[key] is None:
                del task[key]
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(document, indent=2) + "\n", encoding="utf-8")
