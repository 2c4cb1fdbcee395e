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


TINY_CLIP = {
    "embed_dim": 32,
    "vision_cfg": {"layers": 2, "width": 64, "head_width": 32, "patch_size": 8, "image_size": 32},
    "text_cfg": {"context_length": 16, "vocab_size": 49408, "width": 64, "heads": 2, "layers": 2},
}
"""The tiny open_clip CLIP of the reference implementations' tests (`clip: custom`)."""

CLIP_CLASSES = ("cat", "red panda", "sea turtle", "fire truck", "tulip")
"""Five classes: a base-to-novel split gives 3 base and 2 novel classes."""

CLIP_SPLITS = {"train": 3, "val": 2, "test": 2}
"""Images per class in each split of `make_clip_folder`."""


def _clip_image(path: Path, label: int, index: int) -> None:
    from PIL import Image

    colour = (50 * label + 20, 255 - 45 * label, (61 * index) % 256)
    image = Image.new("RGB", (20, 16), colour)
    image.putpixel((index % 20, index % 16), (255 - colour[0], 0, 0))
    path.parent.mkdir(parents=True, exist_ok=True)
    image.save(path)


def make_clip_folder(root: Path, task: str = "pets", layout: str = "split files",
                     classes: tuple[str, ...] = CLIP_CLASSES, splits: dict[str, int] | None = None) -> Path:
    """Write a data set folder of a CLIP protocol: small PNGs whose colour depends on the class.

    Args:
        root: The data root (created).
        task: The data set's folder name.
        layout: `split files` (train.txt, val.txt, test.txt, classnames.txt) or `class folders`
            (train/, val/, test/ of class folders, classnames.txt '<folder> <name>').
        classes: Class names in label order.
        splits: Images per class of each split (default `CLIP_SPLITS`).

    Returns:
        The data root.
    """
    directory = root / task
    directory.mkdir(parents=True)
    splits = splits or CLIP_SPLITS
    if layout == "split files":
        (directory / "classnames.txt").write_text("".join(f"{name}\n" for name in classes))
        for split, count in splits.items():
            lines = []
            for label in range(len(classes)):
                for i in range(count):
                    name = f"images/{split}_{label}_{i}.png"
                    _clip_image(directory / name, label, i)
                    lines.append(f"{name} {label}")
            (directory / f"{split}.txt").write_text("\n".join(lines) + "\n")
    else:
        # folder names sort in label order: c0_..., c1_...
        folders = [f"c{label}_{name.replace(' ', '_')}" for label, name in enumerate(classes)]
        (directory / "classnames.txt").write_text("".join(f"{f} {n}\n" for f, n in zip(folders, classes)))
        for split, count in splits.items():
            for label, folder in enumerate(folders):
                for i in range(count):
                    _clip_image(directory / split / folder / f"{i}.png", label, i)
    return root


def clip_config(data_root: Path | None, kind: str = "clip-base-to-novel", method: str = "coop",
                options: dict[str, Any] | None = None, **overrides: Any) -> dict[str, Any]:
    """A config running a CLIP method on the tiny CLIP for two epochs; `overrides` replace sections."""
    config: dict[str, Any] = {
        "description": "tiny CLIP test run",
        "method": {"name": method, "options": {"n_ctx": 2} if options is None and method == "coop" else (options or {})},
        "backbone": {"clip": "custom", "model_cfg": TINY_CLIP},
        "data": {"kind": kind, "root": str(data_root) if data_root else None, "tasks": ["pets"], "shots": 2,
                 "image_size": 32},
        "train": {"epochs": 2, "batch_size": 4, "eval_batch_size": 8, "lr": 0.01, "warmup_epochs": 0,
                  "device": "cpu"},
        "seed": 0,
    }
    config.update(overrides)
    return config


def base_novel_run_document(method: str = "coop", seed: int = 0, base: float = 80.0, novel: float = 60.0,
                            kind: str = "vlm-micro", task: str = "shapes", group: str = "tasks") -> dict[str, Any]:
    """A valid measured run of a base-to-novel protocol as plain JSON data (one task)."""
    document = measured_run_document(method, kind, {task: group}, top1=base)
    hm = 2 * base * novel / (base + novel) if base + novel else 0.0
    document["seed"] = document["config"]["seed"] = seed
    document["config"]["backbone"] = {"clip": "vlm-micro"}
    document["config"]["data"] = {"kind": kind, "root": None, "tasks": [task], "shots": 16}
    document["config"]["train"] = {"selection": "last-epoch", "lr": 0.01}
    document["command"] = f"peft-atlas bench benchmarks/experiments/{method}/vlm-micro.yaml --seed {seed}"
    document["metrics"]["base_novel"] = {task: {"base": base, "novel": novel, "hm": hm}}
    document["metrics"]["base_novel_mean"] = {"base": base, "novel": novel, "hm": hm}
    document["tasks"][0].update(selection="last-epoch", num_classes=32, shots=16, novel={
        "top1": novel, "test_correct": 1, "num_test": 2, "num_classes": 32, "reinitialized": []})
    return document
