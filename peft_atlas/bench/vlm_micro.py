"""VLM-micro: a base-to-novel benchmark for vision-language methods that runs on a laptop CPU.

The spirit of VTAB-micro ([`micro`][peft_atlas.bench.micro]) for CLIP: a small CLIP pretrained by
the harness on generated image-caption pairs
([`vlm_micro_pretrain`][peft_atlas.bench.vlm_micro_pretrain]), its checkpoint committed with its
sha256 and verified before use, and a classification task over held-out concepts.

Every task has 64 classes, every colour of every shape ("red circle", ..., "pink heart"),
labelled shape by shape (label = 8 x shape + colour). In label order the first half, the 32
classes of circles, squares, triangles and crosses, are the base classes; the second half, the
diamonds, stars, rings and hearts, are novel: their shape names never occur in the data a
method is trained on. Per run: 16 training images per base class, drawn anew with the run's seed
(the few-shot draw), 4 validation images per base class and 25 test images per class, both fixed.
The tasks differ in how their images look:

- `turned`, the benchmark's task: the pretraining style, every image turned a quarter turn
  anticlockwise (pretraining only showed upright shapes): what adaptation has to learn differs by
  shape (a triangle now points left, a square stays a square), so it is knowledge of the base
  classes rather than of the whole task.
- `shapes`: upright, on the `textured` background style with its warm light, which pretraining
  never showed: a change every class shares.
- `turned-dev`: the `turned` images with another split of the shapes (base: circle, triangle,
  diamond, ring; novel: square, cross, star, heart) and image streams of its own. A change to the
  benchmark's design is tried here first, with the dev seeds of `DEV_SEEDS`, so that it is
  chosen without looking at the benchmark's novel classes.

Example:
    >>> from peft_atlas.bench.vlm_micro import load_vlm_micro_task, vlm_micro_weights
    >>> task = load_vlm_micro_task("turned", seed=0)  # doctest: +SKIP
    >>> weights = vlm_micro_weights()  # doctest: +SKIP
"""

from __future__ import annotations

import hashlib
import json
import os
import zlib
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import torch
from torch import nn

from . import vlm_micro_render as render
from .clip_data import val_shots
from .data_types import ClipTaskData
from .micro import ANEW_VARIABLE, BackboneWeights, MicroDataset, cache_dir, committed_backbone, file_sha256
from .vlm_micro_pretrain import VlmPretrainConfig, checkpoint_key, dense_state, pretrain

__all__ = [
    "COMMITTED_DIR",
    "DEFAULT_PRETRAIN",
    "DEFAULT_RECIPE",
    "RECIPES",
    "SHOTS",
    "TEST_PER_CLASS",
    "BENCHMARK_TASKS",
    "DEV_SEEDS",
    "VLM_MICRO_TASKS",
    "build_vlm_micro",
    "load_vlm_micro_task",
    "recipe_config",
    "vlm_micro_weights",
]

RECIPES: dict[str, VlmPretrainConfig] = {
    "text-3x64": VlmPretrainConfig(),
    "text-6x128": VlmPretrainConfig(text_cfg={"context_length": 16, "vocab_size": 49408, "width": 128, "heads": 4,
                                              "layers": 6}),
}
"""Pretraining recipes of the VLM-micro CLIP by name: they differ in the text encoder (blocks x
width). The first benchmark used `text-3x64`; the design trial `text-6x128` on the development
split met the rule for adopting a change (see `benchmarks/vlm_micro.py`), so it is the benchmark's."""
DEFAULT_RECIPE = "text-6x128"
DEFAULT_PRETRAIN = RECIPES[DEFAULT_RECIPE]
"""The pretraining config of the benchmark's VLM-micro CLIP."""


def recipe_config(name: str | None) -> VlmPretrainConfig:
    """The pretraining config of a recipe (None: the benchmark's).

    Raises:
        KeyError: If the recipe is unknown (names the valid ones).
    """
    if name is None:
        return DEFAULT_PRETRAIN
    if name not in RECIPES:
        raise KeyError(f"unknown VLM-micro recipe {name!r}; valid recipes: {', '.join(RECIPES)}")
    return RECIPES[name]

SHOTS = 16
"""Training images per base class (the base-to-novel benchmark's 16 shots)."""
TEST_PER_CLASS = 25
"""Test images per class, base and novel."""

COMMITTED_DIR = Path(__file__).resolve().parents[2] / "benchmarks" / "backbones" / "vlm-micro"
"""Where the repository keeps the pretrained VLM-micro CLIP: `<key>.safetensors` beside `<key>.json`
(recipe, pretraining metrics, versions and the file's sha256)."""


@dataclass(frozen=True)
class VlmMicroTask:
    """A VLM-micro task: which attributes make its classes, and how its images look.

    Attributes:
        description: What is classified (for the provenance record).
        style: Background style of its images.
        quarter_turns: Quarter turns (90 degrees, anticlockwise) applied to every image; exact,
            so the images stay the same on every machine.
        base_shapes: Indices into `SHAPES` of the base classes' shapes (every colour of each); the
            other shapes make the novel classes.
    """

    description: str
    style: str
    quarter_turns: int = 0
    base_shapes: tuple[int, ...] = (0, 1, 2, 3)

    def labels(self) -> tuple[list[int], list[int]]:
        """Colour-shape labels (8 x shape + colour) of the base and the novel classes, shape by shape."""
        colours = len(render.COLOURS)
        novel_shapes = [shape for shape in range(len(render.SHAPES)) if shape not in self.base_shapes]
        return ([shape * colours + colour for shape in self.base_shapes for colour in range(colours)],
                [shape * colours + colour for shape in novel_shapes for colour in range(colours)])


VLM_MICRO_TASKS: dict[str, VlmMicroTask] = {
    "turned": VlmMicroTask("colour and shape: 8 shapes x 8 colours, classes named '<colour> <shape>'; "
                           "every image turned a quarter turn anticlockwise", "plain", quarter_turns=1),
    "shapes": VlmMicroTask("colour and shape: 8 shapes x 8 colours, classes named '<colour> <shape>'", "textured"),
    "turned-dev": VlmMicroTask("colour and shape: 8 shapes x 8 colours, classes named '<colour> <shape>'; "
                               "every image turned a quarter turn anticlockwise; the development split", "plain",
                               quarter_turns=1, base_shapes=(0, 2, 4, 6)),
}
"""Task id to its definition."""

DEV_SEEDS = (100, 101, 102)
"""Seeds of design trials on `turned-dev`: none of them is a seed of the benchmark's runs."""

BENCHMARK_TASKS = ("turned",)
"""The tasks of the VLM-micro benchmark: what the suite runs and a config without `data.tasks` means."""


def classnames() -> list[str]:
    """The 64 class names in label order: shape by shape, every colour of each."""
    return [f"{colour} {shape}" for shape in render.SHAPES for colour in render.COLOURS]


def _generator(task: str, part: str, seed: int) -> torch.Generator:
    """A generator per task, split part and seed, so no two parts share a random stream."""
    return torch.Generator().manual_seed(zlib.crc32(f"{task}/{part}".encode()) * 1000 + seed)


def _draw(task: VlmMicroTask, generator: torch.Generator, labels: torch.Tensor) -> torch.Tensor:
    """uint8 images of the given colour-shape labels (position and size at random)."""
    n = len(labels)
    shape, colour = labels // len(render.COLOURS), labels % len(render.COLOURS)
    position = torch.randint(len(render.POSITIONS), (n,), generator=generator)
    size = torch.randint(len(render.SIZES), (n,), generator=generator)
    images = render.draw(generator, shape, colour, position, size, task.style)
    return torch.rot90(images, task.quarter_turns, dims=(2, 3)) if task.quarter_turns else images


def load_vlm_micro_task(name: str, seed: int = 0, *, shots: int = SHOTS) -> ClipTaskData:
    """Generate one VLM-micro task for a run: base-class shots drawn with `seed`, fixed validation and test images.

    Args:
        name: Task id, a key of `VLM_MICRO_TASKS`.
        seed: The run's seed: it draws the training images (the few-shot draw); validation and
            test images do not depend on it.
        shots: Training images per base class.

    Returns:
        The base-to-novel task. Its fingerprint covers the class names and the uint8 images and
        labels of every split.

    Raises:
        KeyError: If the task id is unknown.
    """
    if name not in VLM_MICRO_TASKS:
        raise KeyError(f"unknown VLM-micro task {name!r}; valid tasks: {', '.join(VLM_MICRO_TASKS)}")
    task = VLM_MICRO_TASKS[name]
    names = classnames()
    base, novel = task.labels()
    parts = {
        "train": (torch.arange(len(base)).repeat_interleave(shots), _generator(name, "train", seed)),
        "val": (torch.arange(len(base)).repeat_interleave(val_shots(shots)), _generator(name, "val", 0)),
        "test": (torch.arange(len(base)).repeat_interleave(TEST_PER_CLASS), _generator(name, "test", 0)),
        "novel_test": (torch.arange(len(novel)).repeat_interleave(TEST_PER_CLASS), _generator(name, "novel", 0)),
    }
    digest = hashlib.sha256()
    digest.update(json.dumps({"task": name, "classnames": names, "shots": shots, "mean": render.MEAN,
                              "std": render.STD}, sort_keys=True).encode())
    datasets = {}
    for part, (labels, generator) in parts.items():
        global_labels = torch.tensor(novel if part == "novel_test" else base)
        images = _draw(task, generator, global_labels[labels])
        digest.update(f"\0{part}\0".encode())
        digest.update(images.numpy().tobytes())
        digest.update(labels.numpy().tobytes())
        datasets[part] = MicroDataset(render.normalize(images), labels)
    base_names = ", ".join(render.SHAPES[shape] for shape in task.base_shapes)
    novel_names = ", ".join(shape for shape in render.SHAPES if shape not in base_names.split(", "))
    which = "the first" if base == list(range(len(base))) else "the"
    source = (f"VLM-micro (seed {seed}): generated by peft_atlas.bench.vlm_micro_render, {render.IMAGE_SIZE}x"
              f"{render.IMAGE_SIZE}, {task.style} backgrounds; {task.description}; base classes: {which} "
              f"{len(base)} ({base_names}), novel: the other {len(novel)} ({novel_names}); train {shots} per base "
              f"class (drawn with the seed), val {val_shots(shots)} per base class, test {TEST_PER_CLASS} per class")
    return ClipTaskData(
        name=name,
        group="tasks",
        classnames=[names[label] for label in base],
        train=datasets["train"],
        val=datasets["val"],
        test=datasets["test"],
        novel_classnames=[names[label] for label in novel],
        novel_test=datasets["novel_test"],
        shots=shots,
        source=source,
        fingerprint=digest.hexdigest(),
    )


# ---------------------------------------------------------------- the CLIP model


def _cache() -> Path:
    """`$PEFT_ATLAS_CACHE/vlm-micro`, else `~/.cache/peft-atlas/vlm-micro`."""
    return cache_dir().parent / "vlm-micro"


def vlm_micro_weights(config: VlmPretrainConfig = DEFAULT_PRETRAIN, *, quiet: bool = True,
                      committed_dir: Path = COMMITTED_DIR) -> BackboneWeights:
    """The pretrained VLM-micro CLIP: the committed file (hash verified), else the cached one, else pretrained now.

    With `PEFT_ATLAS_PRETRAIN_ANEW=1` the committed file is skipped; pretraining then says
    whether its result equals the committed one (float32 training on another CPU may differ).

    Args:
        config: The pretraining config (the default is the benchmark's).
        quiet: Print nothing; otherwise report pretraining progress.
        committed_dir: Where committed checkpoints are looked for.

    Raises:
        CheckpointHashError: If a committed file does not match its recorded hash.
    """
    key = checkpoint_key(config)
    anew = os.environ.get(ANEW_VARIABLE, "") not in ("", "0")
    committed = None if anew else committed_backbone(key, committed_dir)
    if committed is not None:
        return committed
    directory = _cache()
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
        print(f"the VLM-micro CLIP in {path} (sha256 {weights.sha256[:12]}) {same} the committed one "
              f"(sha256 {str(expected)[:12]})", flush=True)
    return weights


def _pretrain_into(config: VlmPretrainConfig, key: str, directory: Path, *, quiet: bool) -> None:
    """Pretrain and write `<key>.safetensors` and its `<key>.json` record into `directory`."""
    import numpy as np
    import open_clip
    from safetensors.torch import save_file

    if not quiet:
        print(f"pretraining the VLM-micro CLIP (recipe key {key}); this runs once", flush=True)
    state, metrics = pretrain(config, quiet=quiet)
    directory.mkdir(parents=True, exist_ok=True)
    # Temporary files renamed at the end: a concurrent reader never sees a partial file.
    temporary = directory / f".{key}.{os.getpid()}.tmp"
    save_file(state, str(temporary), metadata={"key": key, "config": json.dumps(config.to_json(), sort_keys=True)})
    record: dict[str, Any] = {
        "key": key,
        "sha256": file_sha256(temporary),
        "config": config.to_json(),
        "pretraining": metrics,
        "versions": {"torch": torch.__version__, "open_clip": open_clip.__version__, "numpy": np.__version__},
        "command": "python -m peft_atlas.bench.vlm_micro --commit",
    }
    sidecar = directory / f".{key}.{os.getpid()}.json.tmp"
    sidecar.write_text(json.dumps(record, indent=2, sort_keys=True) + "\n", encoding="utf-8")
    os.replace(sidecar, directory / f"{key}.json")
    os.replace(temporary, directory / f"{key}.safetensors")


def build_vlm_micro(path: Path, config: VlmPretrainConfig = DEFAULT_PRETRAIN) -> nn.Module:
    """The VLM-micro CLIP with the weights of `path`, in eval mode.

    Raises:
        ValueError: If the file does not fit the model (names the file).
    """
    import open_clip
    from safetensors.torch import load_file

    model = open_clip.CLIP(**config.model_cfg())
    try:
        state = dense_state(load_file(str(path)), config.text_cfg["vocab_size"])
        model.load_state_dict(state)
    except (KeyError, RuntimeError) as error:
        raise ValueError(f"{path}: not a VLM-micro checkpoint of this recipe ({type(error).__name__}: {error})") from None
    return model.eval()


def main(argv: Sequence[str] | None = None) -> int:
    """Pretrain the VLM-micro CLIP anew, say whether it equals the committed one, optionally commit it.

    Usage: `python -m peft_atlas.bench.vlm_micro [--recipe NAME] [--commit]`. The checkpoint goes to the cache (or is
    taken from it if this recipe was pretrained on this machine before); `--commit` copies it and
    its record into `benchmarks/backbones/vlm-micro/`, where every run finds it first.
    """
    import argparse
    import shutil

    parser = argparse.ArgumentParser(description=main.__doc__.splitlines()[0])
    parser.add_argument("--commit", action="store_true", help=f"copy the checkpoint into {COMMITTED_DIR}")
    parser.add_argument("--recipe", choices=sorted(RECIPES), default=DEFAULT_RECIPE,
                        help=f"the pretraining recipe (default: the benchmark's, {DEFAULT_RECIPE})")
    args = parser.parse_args(argv)
    os.environ[ANEW_VARIABLE] = "1"
    weights = vlm_micro_weights(RECIPES[args.recipe], quiet=False)
    record = json.loads(weights.path.with_suffix(".json").read_text(encoding="utf-8"))
    print(f"{weights.path} ({weights.origin}), sha256 {weights.sha256}; pretraining: {record['pretraining']}")
    if args.commit:
        COMMITTED_DIR.mkdir(parents=True, exist_ok=True)
        for suffix in (".safetensors", ".json"):
            shutil.copyfile(weights.path.with_suffix(suffix), COMMITTED_DIR / f"{weights.key}{suffix}")
        print(f"committed to {COMMITTED_DIR}: add both files to git; runs on the old recipe stay as they are")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
