"""Data of the CLIP protocols: image folders the user provides, K shots per class, base and novel classes.

Each data set is a folder under `data.root`, named by its task id, in one of two layouts:

```
<root>/<task>/                       split files
    classnames.txt                   one class name a line, line i naming label i
    train.txt  test.txt  [val.txt]   "<relative image path> <integer label>" a line
    ...                              the images (any layout under the task folder)

<root>/<task>/                       class folders
    classnames.txt                   "<class folder> <class name>" a line (the name may have spaces;
                                     a line with the folder alone names the class after it)
    train/<class folder>/<image>...  labels follow the sorted class folder names
    test/<class folder>/...
    [val/<class folder>/...]
```

The protocols (the rules of CoOp's and CoCoOp's code, `KaiyangZhou/CoOp`):

- **few-shot** (`clip-few-shot`): K training images per class drawn from the training split with
  the run's seed (without replacement, or with replacement for a class with fewer than K
  images), min(K, 4) per class from the validation split, the whole test split; every class.
- **base-to-novel** (`clip-base-to-novel`): the same draw; the classes, in label order, are cut
  into halves: the first ceil(n / 2) are base classes, the rest novel. Training and validation
  keep the base classes; the base classes' test images are classified among the base class
  names, the novel classes' test images among the novel class names (labels renumbered from 0).

`python -m peft_atlas.bench.clip_data from-coop` writes the split-file layout for the 11 data
sets of the base-to-novel benchmark from folders prepared as CoOp's DATASETS.md describes.
"""

from __future__ import annotations

import hashlib
import json
import math
import posixpath
import zlib
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError
from torch.utils.data import Dataset

from .data_types import ClipTaskData
from .vtab import DataError, _check_image, read_split_list

__all__ = [
    "BASE_TO_NOVEL_TASKS",
    "COOP_LAYOUT",
    "ClipImageDataset",
    "EmptyClassError",
    "FolderData",
    "base_novel_split",
    "load_clip_task",
    "read_folder",
    "sample_shots",
    "val_shots",
]

Protocol = Literal["few-shot", "base-to-novel"]

BASE_TO_NOVEL_TASKS = ("imagenet", "caltech101", "oxford_pets", "stanford_cars", "flowers102", "food101",
                       "fgvc_aircraft", "sun397", "dtd", "eurosat", "ucf101")
"""The 11 data sets of the base-to-novel benchmark, by task id (the order of `taxonomy/benchmarks.yaml`)."""

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp", ".tif", ".tiff", ".ppm", ".pgm")
"""Files read as images in the class-folder layout (other files are ignored)."""

MAX_VAL_SHOTS = 4
"""The validation split keeps min(K, 4) images per class (CoOp's data sets do)."""

_FILTERS = {"bicubic": Image.Resampling.BICUBIC, "bilinear": Image.Resampling.BILINEAR}


def val_shots(shots: int) -> int:
    """Validation images per class for K training shots: min(K, 4)."""
    return min(shots, MAX_VAL_SHOTS)


def base_novel_split(num_classes: int) -> tuple[range, range]:
    """Base and novel labels: the first ceil(n / 2) labels, and the rest (CoOp's `subsample_classes`)."""
    if num_classes < 2:
        raise ValueError(f"a base-to-novel split needs at least 2 classes, got {num_classes}")
    cut = math.ceil(num_classes / 2)
    return range(cut), range(cut, num_classes)


class EmptyClassError(ValueError):
    """A class with no example to draw from."""

    def __init__(self, label: int) -> None:
        self.label = label
        super().__init__(f"class {label} has no example")


def sample_shots(labels: Sequence[int], num_classes: int, shots: int, rng: np.random.Generator) -> list[int]:
    """Indices of `shots` examples of every class, class after class.

    A class with at least `shots` examples gives distinct ones; a class with fewer gives `shots`
    draws with replacement (so every class has K training images, as in Dassl's few-shot
    sampling that CoOp uses).

    Args:
        labels: Label of every example.
        num_classes: Classes; a class with no example is an error.
        shots: Examples wanted per class.
        rng: Source of the draws.

    Raises:
        EmptyClassError: If a class has no example at all.
    """
    labels = np.asarray(labels, dtype=np.int64)
    chosen: list[int] = []
    for label in range(num_classes):
        pool = np.flatnonzero(labels == label)
        if len(pool) == 0:
            raise EmptyClassError(label)
        replace = len(pool) < shots
        chosen += [int(i) for i in rng.choice(pool, size=shots, replace=replace)]
    return chosen


# ---------------------------------------------------------------- folders


@dataclass(frozen=True)
class FolderData:
    """A data set folder as read: its class names and its splits.

    Attributes:
        directory: The task folder (relative paths start here).
        layout: `split files` or `class folders`.
        classnames: Class names in label order.
        splits: `train`, `test` and, when present, `val`, each as (where it was read from,
            `(relative path, label)` pairs).
    """

    directory: Path
    layout: str
    classnames: list[str]
    splits: dict[str, tuple[Path, list[tuple[str, int]]]]


def _read_lines(path: Path) -> list[tuple[int, str]]:
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as error:
        raise DataError(f"{path}: cannot read the class names ({error.strerror or error})") from None
    return [(number, line.strip()) for number, line in enumerate(text.splitlines(), start=1) if line.strip()]


def _check_distinct(names: list[str], path: Path) -> None:
    seen: dict[str, int] = {}
    for index, name in enumerate(names):
        if name in seen:
            raise DataError(f"{path}: class name {name!r} is given twice (labels {seen[name]} and {index}); "
                            "CLIP tells classes apart by their names")
        seen[name] = index


def _read_split_files(directory: Path) -> FolderData:
    names_file = directory / "classnames.txt"
    if not names_file.is_file():
        raise DataError(f"{names_file}: not found (expected one class name a line, line i naming label i)")
    classnames = [line for _, line in _read_lines(names_file)]
    if not classnames:
        raise DataError(f"{names_file}: no class name in the file")
    _check_distinct(classnames, names_file)
    splits = {}
    for role in ("train", "val", "test"):
        path = directory / f"{role}.txt"
        if role == "val" and not path.is_file():
            continue
        entries = read_split_list(path)
        for relative, label in entries:
            if label >= len(classnames):
                raise DataError(f"{path}: label {label} of {relative} has no class name "
                                f"({names_file.name} names {len(classnames)} classes, labels 0 to {len(classnames) - 1})")
        splits[role] = (path, entries)
    return FolderData(directory, "split files", classnames, splits)


def _read_class_folders(directory: Path) -> FolderData:
    names_file = directory / "classnames.txt"
    if not names_file.is_file():
        raise DataError(f"{names_file}: not found (expected '<class folder> <class name>' a line)")
    names: dict[str, str] = {}
    for number, line in _read_lines(names_file):
        folder, _, name = line.partition(" ")
        if folder in names:
            raise DataError(f"{names_file}:{number}: class folder {folder!r} is named twice")
        names[folder] = name.strip() or folder
    folders = sorted(p.name for p in (directory / "train").iterdir() if p.is_dir() and not p.name.startswith("."))
    if not folders:
        raise DataError(f"{directory / 'train'}: no class folder")
    unnamed = [f for f in folders if f not in names]
    if unnamed:
        raise DataError(f"{names_file}: no line for the class folder(s) {', '.join(unnamed[:5])} of "
                        f"{directory / 'train'} (expected '<class folder> <class name>')")
    classnames = [names[f] for f in folders]
    _check_distinct(classnames, names_file)
    label_of = {folder: label for label, folder in enumerate(folders)}
    splits = {}
    for role in ("train", "val", "test"):
        split_dir = directory / role
        if not split_dir.is_dir():
            if role == "val":
                continue
            raise DataError(f"{split_dir}: not found (expected {role}/<class folder>/<image> beside train/)")
        entries = []
        for folder in sorted(p.name for p in split_dir.iterdir() if p.is_dir() and not p.name.startswith(".")):
            if folder not in label_of:
                raise DataError(f"{split_dir / folder}: class folder not in {directory / 'train'}")
            files = sorted(p.name for p in (split_dir / folder).iterdir()
                           if p.is_file() and not p.name.startswith(".") and p.suffix.lower() in IMAGE_SUFFIXES)
            entries += [(f"{role}/{folder}/{name}", label_of[folder]) for name in files]
        if not entries:
            raise DataError(f"{split_dir}: no image in its class folders")
        splits[role] = (split_dir, entries)
    return FolderData(directory, "class folders", classnames, splits)


def read_folder(directory: Path) -> FolderData:
    """Read a data set folder in either layout (see the module docstring).

    Raises:
        DataError: If the folder matches neither layout, or a file in it is malformed, naming
            the file (and line) and what was expected.
    """
    if (directory / "train.txt").is_file():
        return _read_split_files(directory)
    if (directory / "train").is_dir():
        return _read_class_folders(directory)
    raise DataError(f"{directory}: expected split files (train.txt, test.txt, optional val.txt, classnames.txt) or "
                    "class folders (train/, test/, optional val/, classnames.txt); for data sets prepared as in "
                    "CoOp's DATASETS.md run: python -m peft_atlas.bench.clip_data from-coop")


class ClipImageDataset(Dataset):
    """Images of a data set folder as CLIP sees them: the shorter side resized to `image_size`,
    the centre cropped to a square, pixels scaled to [0, 1] and normalized.

    Args:
        directory: The task folder the relative paths start from.
        entries: `(relative path, label)` pairs.
        listed_in: Where the entries were read from (named in errors).
        image_size: Output side length.
        interpolation: `bicubic` or `bilinear`.
        mean: Per-channel mean.
        std: Per-channel standard deviation.
    """

    def __init__(self, directory: Path, entries: list[tuple[str, int]], listed_in: Path, image_size: int,
                 interpolation: str, mean: Sequence[float], std: Sequence[float]) -> None:
        self.directory = directory
        self.entries = entries
        self.listed_in = listed_in
        self.image_size = image_size
        self.filter = _FILTERS[interpolation]
        self.mean = torch.tensor(mean, dtype=torch.float32).view(3, 1, 1)
        self.std = torch.tensor(std, dtype=torch.float32).view(3, 1, 1)

    def __len__(self) -> int:
        return len(self.entries)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        relative, label = self.entries[index]
        path = self.directory / relative
        try:
            with Image.open(path) as image:
                image = image.convert("RGB")
                width, height = image.size
                scale = self.image_size / min(width, height)
                size = (max(self.image_size, round(width * scale)), max(self.image_size, round(height * scale)))
                image = image.resize(size, self.filter)
                left, top = (size[0] - self.image_size) // 2, (size[1] - self.image_size) // 2
                image = image.crop((left, top, left + self.image_size, top + self.image_size))
        except (OSError, UnidentifiedImageError) as error:
            raise DataError(f"{path}: cannot read the image listed in {self.listed_in} ({error})") from None
        pixels = torch.from_numpy(np.asarray(image, dtype=np.uint8).copy()).permute(2, 0, 1)
        return (pixels.float() / 255.0 - self.mean) / self.std, label


def _task_rng(task: str, seed: int) -> np.random.Generator:
    """The generator of a task's draws: seeded by the task name and the run's seed."""
    return np.random.default_rng([zlib.crc32(task.encode()), seed])


def load_clip_task(
    root: str | Path,
    task: str,
    *,
    protocol: Protocol,
    shots: int,
    seed: int,
    image_size: int = 224,
    interpolation: str = "bicubic",
    mean: Sequence[float] = (0.48145466, 0.4578275, 0.40821073),
    std: Sequence[float] = (0.26862954, 0.26130258, 0.27577711),
) -> ClipTaskData:
    """Read one data set folder, draw its shots, split its classes, check and fingerprint every image used.

    Args:
        root: Folder holding one sub-folder per data set.
        task: Task id: the sub-folder's name.
        protocol: `few-shot` or `base-to-novel` (see the module docstring).
        shots: Training images per class, K.
        seed: Seed of the draw of the shots (with the task name).
        image_size: Side of the square images.
        interpolation: Resize filter.
        mean: Per-channel normalization mean.
        std: Per-channel normalization standard deviation.

    Returns:
        The task; its fingerprint covers the protocol, the class names, every split's image
        paths, labels and file contents, and the preprocessing.

    Raises:
        DataError: A missing folder or file, a malformed line, a class without training images,
            a missing or corrupt image; the message names the file.
    """
    root = Path(root)
    if not root.is_dir():
        raise DataError(f"{root}: data folder not found (expected one sub-folder per data set, named by task id)")
    directory = root / task
    if not directory.is_dir():
        raise DataError(f"{directory}: data set folder not found for task {task!r}")
    data = read_folder(directory)
    n = len(data.classnames)
    rng = _task_rng(task, seed)
    chosen: dict[str, list[tuple[str, int]]] = {}
    for role, count in (("train", shots), ("val", val_shots(shots))):
        if role not in data.splits:
            continue
        where, entries = data.splits[role]
        try:
            picked = sample_shots([label for _, label in entries], n, count, rng)
        except EmptyClassError as error:
            raise DataError(f"{where}: class {error.label} ({data.classnames[error.label]!r}) has no {role} image"
                            ) from None
        chosen[role] = [entries[i] for i in picked]
    chosen["test"] = data.splits["test"][1]
    listed = {role: data.splits[role][0] for role in chosen}

    if protocol == "base-to-novel":
        base, novel = base_novel_split(n)
        classnames, novel_classnames = data.classnames[: len(base)], data.classnames[len(base):]
        parts = {role: [(p, y) for p, y in entries if y in base] for role, entries in chosen.items()}
        parts["novel_test"] = [(p, y - len(base)) for p, y in chosen["test"] if y in novel]
        listed["novel_test"] = listed["test"]
    elif protocol == "few-shot":
        classnames, novel_classnames, parts = list(data.classnames), None, chosen
    else:
        raise DataError(f"unknown CLIP protocol {protocol!r}; valid: few-shot, base-to-novel")

    preprocessing = {"image_size": image_size, "interpolation": interpolation,
                     "mean": [float(m) for m in mean], "std": [float(s) for s in std], "crop": "centre"}
    digest = hashlib.sha256()
    digest.update(json.dumps({"protocol": protocol, "shots": shots, "seed": seed, "classnames": data.classnames,
                              "preprocessing": preprocessing}, sort_keys=True).encode())
    file_hashes: dict[str, str] = {}
    for role, entries in parts.items():
        digest.update(f"\0split {role}\n".encode())
        for relative, label in entries:
            if relative not in file_hashes:
                file_hashes[relative] = hashlib.sha256(_check_image(directory / relative, listed[role])).hexdigest()
            digest.update(f"{relative}\t{label}\t{file_hashes[relative]}\n".encode())

    def dataset(role: str) -> ClipImageDataset:
        return ClipImageDataset(directory, parts[role], listed[role], image_size, interpolation, mean, std)

    source = (f"image folders {directory} ({data.layout}): {n} classes; {protocol}, {shots} training images per "
              f"class drawn with seed {seed}" + (f", {val_shots(shots)} validation images per class" if "val" in parts
                                                 else ", no validation split"))
    if novel_classnames is not None:
        source += f"; base classes: the first {len(classnames)}, novel: the other {len(novel_classnames)}"
    return ClipTaskData(
        name=task,
        group="datasets",
        classnames=classnames,
        train=dataset("train"),
        val=dataset("val") if "val" in parts else None,
        test=dataset("test"),
        novel_classnames=novel_classnames,
        novel_test=dataset("novel_test") if novel_classnames is not None else None,
        shots=shots,
        source=source,
        fingerprint=digest.hexdigest(),
    )


# ---------------------------------------------------------------- from CoOp's folders


@dataclass(frozen=True)
class CoopDataset:
    """Where a data set prepared as in CoOp's DATASETS.md keeps its images and split.

    Attributes:
        folder: Its folder under CoOp's data root.
        images: The folder the split's image paths start from (relative to `folder`).
        split: CoOp's split file (`split_zhou_*.json`), or None for the two data sets CoOp
            reads otherwise (ImageNet: class folders; FGVCAircraft: the data set's own lists).
    """

    folder: str
    images: str
    split: str | None


COOP_LAYOUT: dict[str, CoopDataset] = {
    "imagenet": CoopDataset("imagenet", "images", None),
    "caltech101": CoopDataset("caltech-101", "101_ObjectCategories", "split_zhou_Caltech101.json"),
    "oxford_pets": CoopDataset("oxford_pets", "images", "split_zhou_OxfordPets.json"),
    "stanford_cars": CoopDataset("stanford_cars", ".", "split_zhou_StanfordCars.json"),
    "flowers102": CoopDataset("oxford_flowers", "jpg", "split_zhou_OxfordFlowers.json"),
    "food101": CoopDataset("food-101", "images", "split_zhou_Food101.json"),
    "fgvc_aircraft": CoopDataset("fgvc_aircraft", "images", None),
    "sun397": CoopDataset("sun397", "SUN397", "split_zhou_SUN397.json"),
    "dtd": CoopDataset("dtd", "images", "split_zhou_DescribableTextures.json"),
    "eurosat": CoopDataset("eurosat", "2750", "split_zhou_EuroSAT.json"),
    "ucf101": CoopDataset("ucf101", "UCF-101-midframes", "split_zhou_UCF101.json"),
}
"""Task id to the folder, image folder and split file of CoOp's data loaders (its `datasets/*.py`)."""


def _from_split_json(path: Path) -> tuple[list[str], dict[str, list[tuple[str, int]]]]:
    """Class names and splits of a CoOp split file: {"train"|"val"|"test": [[path, label, class name], ...]}."""
    try:
        document = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as error:
        raise DataError(f"{path}: cannot read CoOp's split file ({error})") from None
    names: dict[int, str] = {}
    splits: dict[str, list[tuple[str, int]]] = {}
    for role in ("train", "val", "test"):
        items = document.get(role) if isinstance(document, dict) else None
        if not isinstance(items, list):
            raise DataError(f"{path}: expected a list under {role!r} of [image path, label, class name] items")
        splits[role] = []
        for index, item in enumerate(items):
            if not (isinstance(item, list) and len(item) == 3 and isinstance(item[1], int)):
                raise DataError(f"{path}: {role}[{index}] is not [image path, integer label, class name]: {item!r}")
            relative, label, name = item
            if names.setdefault(label, name) != name:
                raise DataError(f"{path}: label {label} is called both {names[label]!r} and {name!r}")
            splits[role].append((relative, label))
    if sorted(names) != list(range(len(names))):
        raise DataError(f"{path}: labels are not 0 to {len(names) - 1}")
    return [names[label] for label in range(len(names))], splits


def _from_fgvc(folder: Path) -> tuple[list[str], dict[str, list[tuple[str, int]]]]:
    """FGVCAircraft as CoOp reads it: variants.txt (class names) and images_variant_<split>.txt."""
    classnames = [line for _, line in _read_lines(folder / "variants.txt")]
    label_of = {name: label for label, name in enumerate(classnames)}
    splits = {}
    for role in ("train", "val", "test"):
        path = folder / f"images_variant_{role}.txt"
        entries = []
        for number, line in _read_lines(path):
            image, _, name = line.partition(" ")
            if name not in label_of:
                raise DataError(f"{path}:{number}: variant {name!r} is not in variants.txt")
            entries.append((f"{image}.jpg", label_of[name]))
        splits[role] = entries
    return classnames, splits


def _from_imagenet(folder: Path) -> tuple[list[str], dict[str, list[tuple[str, int]]]]:
    """ImageNet as CoOp reads it: images/train and images/val (the test split) of class folders
    labelled in sorted order, named by classnames.txt ('<folder> <class name>')."""
    names = {}
    for _, line in _read_lines(folder / "classnames.txt"):
        key, _, name = line.partition(" ")
        names[key] = name.strip()
    splits = {}
    for role, sub in (("train", "train"), ("test", "val")):
        split_dir = folder / "images" / sub
        if not split_dir.is_dir():
            raise DataError(f"{split_dir}: not found (CoOp's layout: imagenet/images/train and imagenet/images/val)")
        folders = sorted(p.name for p in split_dir.iterdir() if p.is_dir())
        missing = [f for f in folders if f not in names]
        if missing:
            raise DataError(f"{folder / 'classnames.txt'}: no line for the class folder(s) {', '.join(missing[:5])}")
        entries = []
        for label, class_folder in enumerate(folders):
            entries += [(f"{sub}/{class_folder}/{p.name}", label) for p in sorted((split_dir / class_folder).iterdir())
                        if p.is_file() and not p.name.startswith(".")]
        splits[role] = entries
    classnames = [names[f] for f in sorted(p.name for p in (folder / "images" / "train").iterdir() if p.is_dir())]
    return classnames, splits


def convert_from_coop(coop_root: Path, out_root: Path, task: str, *, force: bool = False) -> Path:
    """Write the split-file layout of one data set prepared as in CoOp's DATASETS.md.

    The result, `<out_root>/<task>/`, holds `classnames.txt`, `train.txt`, `test.txt` and (except
    for ImageNet, whose validation images are its test split) `val.txt`, and a symbolic link
    `images` to the data set's image folder, which every listed path starts with. Labels and
    class names are those of CoOp's loaders, so the base and novel halves are CoOp's.

    Args:
        coop_root: CoOp's data root (`$DATA` of its DATASETS.md).
        out_root: Where to write the data set's folder (the `data.root` of a config).
        task: Task id (a key of `COOP_LAYOUT`).
        force: Replace existing split files.

    Returns:
        The written task folder.

    Raises:
        DataError: A missing or malformed file of CoOp's layout, or existing split files
            without `force`.
    """
    if task not in COOP_LAYOUT:
        raise DataError(f"unknown data set {task!r}; valid: {', '.join(COOP_LAYOUT)}")
    layout = COOP_LAYOUT[task]
    folder = coop_root / layout.folder
    if not folder.is_dir():
        raise DataError(f"{folder}: not found (prepare {task} as CoOp's DATASETS.md describes)")
    if layout.split is not None:
        classnames, splits = _from_split_json(folder / layout.split)
    elif task == "fgvc_aircraft":
        classnames, splits = _from_fgvc(folder)
    else:
        classnames, splits = _from_imagenet(folder)
    images = (folder / layout.images).resolve() if task != "imagenet" else (folder / "images").resolve()
    target = out_root / task
    target.mkdir(parents=True, exist_ok=True)
    if (target / "train.txt").exists() and not force:
        raise DataError(f"{target / 'train.txt'}: exists; pass --force to replace the split files")
    link = target / "images"
    if link.is_symlink() or link.exists():
        if not link.is_symlink():
            raise DataError(f"{link}: exists and is not a symbolic link; remove it first")
        link.unlink()
    link.symlink_to(images, target_is_directory=True)
    (target / "classnames.txt").write_text("".join(f"{name.replace('_', ' ')}\n" for name in classnames),
                                           encoding="utf-8")
    for role, entries in splits.items():
        lines = [f"images/{posixpath.normpath(relative)} {label}" for relative, label in entries]
        (target / f"{role}.txt").write_text("\n".join(lines) + "\n", encoding="utf-8")
    return target


def main(argv: Sequence[str] | None = None) -> int:
    """`python -m peft_atlas.bench.clip_data from-coop --coop-root DIR --out DIR [--tasks ...] [--force]`."""
    import argparse
    import sys

    parser = argparse.ArgumentParser(prog="python -m peft_atlas.bench.clip_data",
                                     description="Write the split-file layout of data sets prepared as in CoOp's "
                                                 "DATASETS.md (one folder per task id under --out).")
    commands = parser.add_subparsers(dest="command", required=True)
    convert = commands.add_parser("from-coop", help="convert CoOp's folders and split files")
    convert.add_argument("--coop-root", required=True, help="CoOp's data root ($DATA in its DATASETS.md)")
    convert.add_argument("--out", required=True, help="folder to write (use it as data.root)")
    convert.add_argument("--tasks", nargs="+", default=list(COOP_LAYOUT), metavar="TASK",
                         help=f"default: all ({', '.join(COOP_LAYOUT)})")
    convert.add_argument("--force", action="store_true", help="replace existing split files")
    args = parser.parse_args(argv)
    status = 0
    for task in args.tasks:
        try:
            target = convert_from_coop(Path(args.coop_root), Path(args.out), task, force=args.force)
        except DataError as error:
            print(f"error: {error}", file=sys.stderr)
            status = 2
            continue
        print(f"{task}: wrote {target}")
    return status


if __name__ == "__main__":
    raise SystemExit(main())
