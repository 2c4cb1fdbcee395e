"""Measured runs: the files the benchmark harness writes under `benchmarks/measured/`.

One JSON document per run of an experiment config (`format: "peft-atlas-bench-result"`,
`format_version: 1`), with everything needed to trust and repeat it. This module is its only
definition: the harness writes [`MeasuredRun`][peft_atlas.measured.MeasuredRun] records
(`peft_atlas.bench.results`), and the validator and the site read them back with
[`load_measured_runs`][peft_atlas.measured.load_measured_runs]. It needs no torch.

Every `*.json` file in a sub-folder of `benchmarks/measured/` is a measured run
(`benchmarks/measured/<method>/<variant>-seed<N>.json`, `benchmarks/measured/vtab-micro/<method>-seed<N>.json`);
files directly in `benchmarks/measured/` (such as `efficiency.json`) have formats of their own.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from .problems import LineOf, Problem, validate_model
from .yamlio import load_yaml

__all__ = [
    "FORMAT",
    "FORMAT_VERSION",
    "MEASURED_DIR",
    "BaseNovelMetric",
    "EpochRecord",
    "GitState",
    "LoadedRun",
    "MeasuredFileError",
    "MeasuredRun",
    "Metrics",
    "NovelRecord",
    "PeakMemory",
    "PrepareRecord",
    "RecordedConfig",
    "TaskRecord",
    "load_measured_runs",
    "read_measured_run",
]

FORMAT = "peft-atlas-bench-result"
FORMAT_VERSION = 1
MEASURED_DIR = Path("benchmarks") / "measured"
"""Where measured runs live, relative to the repository root."""

Selection = Literal["val200", "last-epoch"]
Count = Annotated[int, Field(ge=0)]


class Record(BaseModel):
    """Base of the records: unknown fields are errors, types are strict, values never change."""

    model_config = ConfigDict(extra="forbid", strict=True, frozen=True)


class _OpenRecord(Record):
    model_config = ConfigDict(extra="allow")


class EpochRecord(Record):
    """What one epoch of training measured (the test split is never measured per epoch).

    Attributes:
        epoch: Epoch number, from 1.
        train_loss: Mean training loss over the epoch's examples.
        val_top1: Top-1 accuracy (percent) on the validation split, or None without one.
        lr: Learning rate of the epoch's last step.
    """

    epoch: Annotated[int, Field(ge=1)]
    train_loss: float
    val_top1: float | None
    lr: float


class PrepareRecord(Record):
    """The prepare step of a method that chooses what to tune from the training data.

    Attributes:
        batches: Training batches the method looked at (the first ones of the first epoch).
        fields: The config fields the method filled from them.
    """

    batches: Annotated[int, Field(ge=1)]
    fields: list[str]


class NovelRecord(Record):
    """The evaluation of a base-to-novel task on its novel classes (never trained on).

    Attributes:
        top1: Top-1 accuracy (percent) of the novel classes' test images among the novel class
            names: `100 * test_correct / num_test`.
        test_correct: Correctly classified novel test images.
        num_test: Novel test images.
        num_classes: Novel classes.
        reinitialized: The method's tensors that belong to the base classes (their shape follows
            the number of classes): on the novel classes they keep their initial value; every
            other trained tensor is carried over.
    """

    top1: Annotated[float, Field(ge=0.0, le=100.0)]
    test_correct: Count
    num_test: Count
    num_classes: Annotated[int, Field(ge=1)]
    reinitialized: list[str]


class TaskRecord(Record):
    """The outcome of one task of one run.

    Attributes:
        task: Task id.
        group: Task group.
        top1: Test top-1 accuracy (percent) at the selected epoch: `100 * test_correct / num_test`
            (base-to-novel: of the base classes).
        test_correct: Correctly classified test examples (exact, gathered over processes).
        selected_epoch: The epoch whose test accuracy is reported (0: the method has nothing to
            train, and no epoch ran).
        selection: The model-selection rule.
        history: One record per epoch.
        trainable_parameters: Parameters updated by the optimizer (method + head).
        total_parameters: All parameters of the adapted model.
        num_train: Training examples.
        num_val: Validation examples (0 without a validation split).
        num_test: Test examples.
        data_source: Where the data came from.
        dataset_fingerprint: sha256 over the exact examples of every split.
        wall_time_s: Seconds spent on model building, training and evaluation.
        data_time_s: Seconds spent reading and fingerprinting the task's data.
        max_rss_bytes: Peak resident memory of the process so far (max over processes), or None
            where the platform does not report it.
        cuda_max_allocated_bytes: Peak CUDA memory allocated during the task, or None on CPU.
        world_size: Number of processes.
        device: Device type (`cpu` or `cuda`).
        prepare: The prepare step, for a method that chooses what to tune from data; None when
            the method was applied directly.
        num_classes: Classes trained and tested on (CLIP protocols; None in other runs).
        shots: CLIP protocols: training images per class (None in other runs).
        novel: Base-to-novel: the evaluation on the novel classes (None in other runs).
    """

    task: str
    group: str
    top1: Annotated[float, Field(ge=0.0, le=100.0)]
    test_correct: Count
    selected_epoch: Annotated[int, Field(ge=0)]
    selection: Selection
    history: list[EpochRecord]
    trainable_parameters: Count
    total_parameters: Count
    num_train: Count
    num_val: Count
    num_test: Count
    data_source: str
    dataset_fingerprint: str
    wall_time_s: float
    data_time_s: float
    max_rss_bytes: Count | None
    cuda_max_allocated_bytes: Count | None
    world_size: Annotated[int, Field(ge=1)]
    device: str
    prepare: PrepareRecord | None = None
    num_classes: Annotated[int, Field(ge=1)] | None = None
    shots: Annotated[int, Field(ge=1)] | None = None
    novel: NovelRecord | None = None


class BaseNovelMetric(Record):
    """Base, novel and their harmonic mean HM = 2 B N / (B + N), in percent."""

    base: Annotated[float, Field(ge=0.0, le=100.0)]
    novel: Annotated[float, Field(ge=0.0, le=100.0)]
    hm: Annotated[float, Field(ge=0.0, le=100.0)]


class Metrics(Record):
    """The accuracies of a run.

    Attributes:
        top1: Task to top-1 accuracy (percent).
        group_means: Group to the mean of its tasks.
        mean_of_tasks: Every task weighs the same.
        mean_of_group_means: Every group weighs the same (the VTAB-1k papers use both means).
        base_novel: Base-to-novel runs: per task, base, novel and HM (None in other runs).
        base_novel_mean: Base-to-novel runs: base and novel averaged over the tasks, and the HM
            of those two averages (the convention of the base-to-novel tables).
    """

    top1: dict[str, float]
    group_means: dict[str, float]
    mean_of_tasks: float
    mean_of_group_means: float
    base_novel: dict[str, BaseNovelMetric] | None = None
    base_novel_mean: BaseNovelMetric | None = None


class PeakMemory(Record):
    """Peak memory over the run's tasks (None where not measured)."""

    max_rss_bytes: Count | None
    cuda_max_allocated_bytes: Count | None


class GitState(Record):
    """The commit of the code that ran and whether the work tree had uncommitted changes."""

    commit: str | None
    dirty: bool | None


class BackboneWeightsRecord(Record):
    """Which weights the backbone was loaded from, by content.

    Attributes:
        checkpoint: `backbone.checkpoint` of the config (`micro`, or a file path).
        sha256: The content hash of the file loaded.
        origin: `committed` (the repository's file, hash verified before use), `cache` or
            `pretrained` (pretrained on the machine that ran), `file` (a path given by the user),
            or `open_clip` (the file open_clip downloaded for a pretrained tag; `checkpoint` is
            `<model>/<tag>`).
        key: For the VTAB-micro and VLM-micro backbones, the recipe key (config and pretraining code).
    """

    checkpoint: str
    sha256: Annotated[str, Field(pattern=r"^[0-9a-f]{64}$")]
    origin: Literal["committed", "cache", "pretrained", "file", "open_clip"]
    key: str | None = None


class RecordedMethod(_OpenRecord):
    """The `method` section of the recorded config."""

    name: str


class RecordedData(_OpenRecord):
    """The `data` section of the recorded config."""

    kind: str
    tasks: list[str]


class RecordedTrain(_OpenRecord):
    """The `train` section of the recorded config."""

    selection: Selection


class RecordedConfig(_OpenRecord):
    """The resolved experiment config the run used (defaults filled, task list explicit).

    Only the fields that readers of measured runs rely on are checked here; the rest is kept as
    written. `peft_atlas.bench.config.parse_config` checks the whole config (it needs torch) when
    a run is repeated.
    """

    description: str
    method: RecordedMethod
    backbone: dict[str, Any]
    data: RecordedData
    train: RecordedTrain
    seed: int
    cheap_to_reproduce: bool


class MeasuredRun(Record):
    """One measured run: the content of a measured-results file.

    Attributes:
        format: The format marker, `peft-atlas-bench-result`.
        format_version: The version of this format.
        command: The exact command that reproduces the run (from the same working directory).
        cheap_to_reproduce: Copied from the config; the test suite re-runs such files.
        method: Registry name of the method.
        config: The full resolved config.
        seed: The seed.
        protocol: How the numbers were obtained, in words a reader of a paper looks for (data
            source and splits, normalization, optimizer, schedule, selection rule, ...).
        metrics: Per-task accuracies and both means.
        tasks: One record per task, in config order.
        trainable_parameters: Per task (the head depends on the number of classes).
        wall_time_s: Total seconds.
        peak_memory: Peak memory over the tasks.
        hardware: CPU, cores, torch threads, GPU, platform.
        versions: Python, torch, timm and CUDA versions (and open_clip's for CLIP runs).
        git: The state of the code that ran.
        created: UTC time the file was written (ISO 8601).
        backbone_weights: The backbone's weights by content (None: none loaded from a file,
            or a run from before this field was recorded).
    """

    format: Literal["peft-atlas-bench-result"]
    format_version: Literal[1]
    command: str
    cheap_to_reproduce: bool
    method: str
    config: RecordedConfig
    seed: int
    protocol: dict[str, Any]
    metrics: Metrics
    tasks: Annotated[list[TaskRecord], Field(min_length=1)]
    trainable_parameters: dict[str, int]
    wall_time_s: float
    peak_memory: PeakMemory
    hardware: dict[str, Any]
    versions: dict[str, str | None]
    git: GitState
    created: str
    backbone_weights: BackboneWeightsRecord | None = None


class MeasuredFileError(ValueError):
    """A measured-results file that cannot be used; carries every problem found."""

    def __init__(self, problems: list[Problem]):
        self.problems = sorted(problems)
        super().__init__("\n".join(str(p) for p in self.problems))


@dataclass(frozen=True)
class LoadedRun:
    """A measured run with the file it came from.

    Attributes:
        file: Path relative to the repository root (posix).
        run: The run.
    """

    file: str
    run: MeasuredRun


def _parse(text: str, file: str) -> tuple[MeasuredRun | None, list[Problem]]:
    try:
        document = json.loads(text)
    except ValueError as error:
        return None, [Problem(file, getattr(error, "lineno", 0), "", f"malformed JSON: {getattr(error, 'msg', error)}")]
    if not isinstance(document, dict):
        return None, [Problem(file, 1, "", f"expected a JSON object, got {type(document).__name__}")]
    # The marker first: a file of another kind gets one problem, not one per field.
    for name, expected in (("format", FORMAT), ("format_version", FORMAT_VERSION)):
        if document.get(name) != expected:
            message = f"expected {expected!r} (a measured-results file of this version), got {document.get(name)!r}"
            return None, [Problem(file, _line_of(text, file)((name,)), name, message)]
    run, problems = validate_model(MeasuredRun, document, file)
    if problems:
        _, problems = validate_model(MeasuredRun, document, file, _line_of(text, file))
    return run, problems


def _line_of(text: str, file: str) -> LineOf:
    """Lines of the fields of a JSON document: JSON is YAML, whose parser records them."""
    located, _ = load_yaml(text, file)
    return located.line_of if located is not None else lambda _: 0


def read_measured_run(path: str | Path, file: str | None = None) -> MeasuredRun:
    """Read and check one measured-results file.

    Args:
        path: The file.
        file: Path shown in errors (default: `path`).

    Raises:
        MeasuredFileError: If the file cannot be read or is not a valid measured run; each
            problem names the file, the line where known and the dotted field.
    """
    file = str(path) if file is None else file
    try:
        text = Path(path).read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as error:
        raise MeasuredFileError([Problem(file, 0, "", f"cannot read the file: {error}")]) from None
    run, problems = _parse(text, file)
    if run is None:
        raise MeasuredFileError(problems)
    return run


def load_measured_runs(root: str | Path) -> tuple[list[LoadedRun], list[Problem]]:
    """Read every measured run under `<root>/benchmarks/measured/`, never raising on bad input.

    Args:
        root: Repository root.

    Returns:
        The valid runs sorted by file, and a problem for every file that is not a valid run.
    """
    root = Path(root)
    runs, problems = [], []
    for path in sorted((root / MEASURED_DIR).glob("*/**/*.json")):
        file = path.relative_to(root).as_posix()
        try:
            runs.append(LoadedRun(file, read_measured_run(path, file)))
        except MeasuredFileError as error:
            problems.extend(error.problems)
    return runs, problems
