"""Builders shared by the benchmark-harness tests: a tiny VTAB-1k folder, a tiny config and a
measured run (none of them needs torch)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

TINY_VIT = {"img_size": 32, "patch_size": 8, "depth": 2, "embed_dim": 32, "num_heads": 2}
"""A two-block ViT with 32-dimensional tokens: seconds per run on a CPU."""

SPLIT_SIZES = {"train800": 9, "val200": 5, "test": 7}
"""Examples per split list (train800val200 is train800 followed by val200)."""


def make_vtab_folder(root: Path, task: str = "cifar", num_classes: int = 3) -> Path:
    """Write a VTAB-1k-shaped task folder: PNGs whose colour depends on the label, and the lists.

    Args:
        root: The data root to create.
        task: Task folder name (`cifar` is where VTAB-1k's `cifar100` lives).
        num_classes: Labels cycle through `range(num_classes)`.

    Returns:
        The data root.
    """
    from PIL import Image

    directory = root / task
    (directory / "images").mkdir(parents=True)
    lines: dict[str, list[str]] = {}
    for split, size in SPLIT_SIZES.items():
        lines[split] = []
        for i in range(size):
            label = i % num_classes
            name = f"images/{split}_{i:03d}.png"
            colour = (80 * label + 20, 255 - 70 * label, (37 * i) % 256)
            image = Image.new("RGB", (40, 36), colour)
            image.putpixel((i % 40, i % 36), (255 - colour[0], 0, 0))
            image.save(directory / name)
            lines[split].append(f"{name} {label}")
    lines["train800val200"] = lines["train800"] + lines["val200"]
    for split, entries in lines.items():
        (directory / f"{split}.txt").write_text("\n".join(entries) + "\n")
    return root


def tiny_config(data_root: Path | None, **overrides: Any) -> dict[str, Any]:
    """A config running LoRA on the tiny ViT for two epochs; `overrides` replace sections."""
    config: dict[str, Any] = {
        "description": "tiny test run",
        "method": {"name": "lora", "options": {"r": 2}},
        "backbone": {"model": "vit_tiny_patch16_224", "model_kwargs": dict(TINY_VIT)},
        "data": {"kind": "vtab-1k", "root": str(data_root) if data_root else None, "tasks": ["cifar100"],
                 "image_size": 32},
        "train": {"selection": "val200", "epochs": 2, "batch_size": 4, "eval_batch_size": 4,
                  "lr": 0.01, "warmup_epochs": 0, "augmentation": "hflip", "device": "cpu"},
        "seed": 0,
        "cheap_to_reproduce": True,
    }
    config.update(overrides)
    return config


def write_config(path: Path, config: dict[str, Any]) -> Path:
    """Write a config dict as YAML and return the path."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    return path


def measured_run_document(method: str = "lora", kind: str = "vtab-1k", tasks: dict[str, str] | None = None,
                          top1: float = 50.0) -> dict[str, Any]:
    """A valid measured run as plain JSON data, with every task at `top1`.

    Args:
        method: The method's registry name.
        kind: `data.kind` of the recorded config.
        tasks: Task id to group (default: `cifar100` in `natural`).
        top1: Accuracy of every task.
    """
    tasks = tasks or {"cifar100": "natural"}
    groups = sorted(set(tasks.values()))
    record = {
        "group": "", "top1": top1, "test_correct": 1, "selected_epoch": 1, "selection": "val200",
        "history": [{"epoch": 1, "train_loss": 1.5, "val_top1": 40.0, "lr": 0.001}],
        "trainable_parameters": 371812, "total_parameters": 86000000, "num_train": 800, "num_val": 200,
        "num_test": 2, "data_source": "synthetic", "dataset_fingerprint": "0" * 64, "wall_time_s": 1.0,
        "data_time_s": 0.5, "max_rss_bytes": 1000, "cuda_max_allocated_bytes": None, "world_size": 1,
        "device": "cpu", "prepare": None,
    }
    return {
        "format": "peft-atlas-bench-result",
        "format_version": 1,
        "command": f"peft-atlas bench benchmarks/experiments/{method}/default.yaml --data-root /data",
        "cheap_to_reproduce": False,
        "method": method,
        "config": {
            "description": "", "method": {"name": method, "options": {}, "prepare_batches": 8},
            "backbone": {"model": "vit_base_patch16_224"},
            "data": {"kind": kind, "root": "/data", "tasks": list(tasks)},
            "train": {"selection": "val200"}, "seed": 0, "cheap_to_reproduce": False,
        },
        "seed": 0,
        "protocol": {"selection": "val200"},
        "metrics": {"top1": {t: top1 for t in tasks}, "group_means": {g: top1 for g in groups},
                    "mean_of_tasks": top1, "mean_of_group_means": top1},
        "tasks": [dict(record, task=task, group=group) for task, group in tasks.items()],
        "trainable_parameters": {t: 371812 for t in tasks},
        "wall_time_s": 1.5,
        "peak_memory": {"max_rss_bytes": 1000, "cuda_max_allocated_bytes": None},
        "hardware": {"cpu": "test"},
        "versions": {"python": "3.12", "torch": "2.14.1", "timm": "1.0", "cuda": None},
        "git": {"commit": "0123456789abcdef", "dirty": False},
        "created": "2025-01-01T00:00:00+00:00",
    }
