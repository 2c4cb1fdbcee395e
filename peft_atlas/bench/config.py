"""The experiment config: one YAML file under `benchmarks/experiments/<method>/<variant>.yaml`.

Every section forbids unknown fields and checks types strictly (a string is not a number, an int
is not a bool). Errors name the file, the line, the dotted field and what was expected.

Example:
    ```yaml
    method: {name: lora, options: {r: 8}}
    backbone: {model: vit_base_patch16_224, pretrained: true}
    data: {kind: vtab-1k, root: /data/vtab-1k, tasks: [cifar100, dtd]}
    train: {selection: val200, epochs: 100, lr: 0.001}
    seed: 0
    ```
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationInfo, field_validator, model_validator

from ..problems import Problem, validate_model
from ..yamlio import LocatedYaml, load_yaml

__all__ = [
    "BackboneConfig",
    "ConfigError",
    "DataConfig",
    "ExperimentConfig",
    "MethodConfig",
    "TrainConfig",
    "default_method_options",
    "load_config",
    "parse_config",
    "with_overrides",
]

IMAGENET_MEAN = [0.485, 0.456, 0.406]
IMAGENET_STD = [0.229, 0.224, 0.225]

PositiveInt = Annotated[int, Field(ge=1)]
NonNegativeInt = Annotated[int, Field(ge=0)]
NonNegativeFloat = Annotated[float, Field(ge=0.0)]


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True, frozen=True)


class MethodConfig(_Section):
    """Which PEFT method to apply, by its reference-implementation registry name.

    Attributes:
        name: Registry name (`reference_impls.list_methods()`), e.g. `lora`.
        options: Keyword arguments of `reference_impls.apply` (fields of the method's config
            model); missing fields take the method's defaults.
        prepare_batches: For a method that chooses what to tune from the training data: how
            many training batches its prepare step looks at (the first ones of the first epoch,
            in the seeded training order). Unused by other methods.
    """

    name: str
    options: dict[str, Any] = Field(default_factory=dict)
    prepare_batches: PositiveInt = 8

    @field_validator("name")
    @classmethod
    def _known_method(cls, name: str) -> str:
        # Imported here: the registry needs torch, the rest of the schema does not.
        import reference_impls as ri

        valid = ri.list_methods(backbone="vit")
        if name in ri.list_methods() and name not in valid:
            raise ValueError(f"method {name!r} acts on {ri.get_spec(name).backbone} models; the harness trains "
                             f"timm vision transformers (valid methods: {', '.join(valid)})")
        if name not in valid:
            raise ValueError(f"unknown method {name!r}; valid methods: {', '.join(valid)}")
        return name

    @field_validator("options")
    @classmethod
    def _valid_options(cls, options: dict[str, Any], info: ValidationInfo) -> dict[str, Any]:
        import reference_impls as ri

        if "name" in info.data:  # an unknown name was reported already
            try:
                ri.build_config(info.data["name"], dict(options))
            except (ValueError, TypeError) as error:
                raise ValueError(str(error)) from None
        return options


class BackboneConfig(_Section):
    """The timm vision transformer to fine-tune and where its weights come from.

    Attributes:
        model: timm model name, e.g. `vit_base_patch16_224`.
        pretrained: Let timm download the pretrained weights (on the user's machine).
        checkpoint: A local checkpoint (`.safetensors`, or a timm state dict read with
            `torch.load(weights_only=True)`), or `micro` for the VTAB-micro pretrained backbone.
            With neither `pretrained` nor `checkpoint` the backbone is randomly initialized.
        model_kwargs: Extra arguments of `timm.create_model` (`img_size`, `depth`, ...).
    """

    model: str
    pretrained: bool = False
    checkpoint: str | None = None
    model_kwargs: dict[str, Any] = Field(default_factory=dict)

    @field_validator("model")
    @classmethod
    def _known_model(cls, model: str) -> str:
        import timm

        if not timm.is_model(model):
            examples = ", ".join(timm.list_models("vit_*patch16_224")[:4])
            raise ValueError(f"unknown timm model {model!r} (timm.list_models('vit_*') lists them, e.g. {examples})")
        return model

    @model_validator(mode="after")
    def _one_weight_source(self) -> BackboneConfig:
        if self.pretrained and self.checkpoint is not None:
            raise ValueError("give either pretrained: true or a checkpoint, not both")
        if "num_classes" in self.model_kwargs or "pretrained" in self.model_kwargs:
            raise ValueError("model_kwargs may not set num_classes (taken from the task) or pretrained")
        return self


class DataConfig(_Section):
    """Which tasks to run and how images are prepared.

    Attributes:
        kind: `vtab-1k` (a VTAB-1k folder tree, NOAH/VPT layout) or `micro` (VTAB-micro).
        root: Folder holding one sub-folder per VTAB-1k task (`--data-root` overrides it).
        tasks: Task ids; for `vtab-1k`, None means all 19 tasks.
        image_size: Images are resized to `image_size` x `image_size`.
        interpolation: Resize filter.
        mean: Per-channel mean subtracted after scaling pixels to [0, 1].
        std: Per-channel standard deviation divided by after subtracting the mean.
    """

    kind: Literal["vtab-1k", "micro"]
    root: str | None = None
    tasks: Annotated[list[str], Field(min_length=1)] | None = None
    image_size: PositiveInt = 224
    interpolation: Literal["bicubic", "bilinear"] = "bicubic"
    mean: Annotated[list[float], Field(min_length=3, max_length=3)] = Field(default_factory=lambda: list(IMAGENET_MEAN))
    std: Annotated[list[float], Field(min_length=3, max_length=3)] = Field(default_factory=lambda: list(IMAGENET_STD))

    @model_validator(mode="after")
    def _tasks_for_micro(self) -> DataConfig:
        if self.kind == "micro" and self.tasks is None:
            raise ValueError("kind: micro needs an explicit list of tasks")
        if any(s <= 0 for s in self.std):
            raise ValueError(f"std must be positive, got {self.std}")
        return self


class TrainConfig(_Section):
    """Optimization and the model-selection rule.

    Attributes:
        selection: `val200`: train on train800, report the test accuracy of the epoch with the
            best val200 accuracy (earliest on ties). `last-epoch`: train on train800val200,
            report the last epoch's test accuracy. The test split is measured once, at the end.
        epochs: Training epochs.
        batch_size: Global batch size (split evenly over processes under torchrun).
        eval_batch_size: Batch size of evaluation (does not change results).
        optimizer: `adamw` or `sgd`.
        lr: Peak learning rate.
        weight_decay: Decoupled (AdamW) or L2 (SGD) weight decay on every trainable parameter.
        momentum: SGD momentum (unused by AdamW).
        schedule: `cosine` (per step, to `min_lr`) or `constant`, after the warmup.
        warmup_epochs: Linear warmup from 0 to `lr`, in epochs (counted in steps).
        min_lr: Final learning rate of the cosine schedule.
        label_smoothing: Label smoothing of the cross-entropy.
        augmentation: `none` (the VTAB-1k convention) or `hflip` (seeded random horizontal flip).
        num_workers: DataLoader worker processes (0 keeps everything in one process).
        device: `auto` (CUDA if available), `cpu` or `cuda`.
    """

    selection: Literal["val200", "last-epoch"] = "val200"
    epochs: PositiveInt = 100
    batch_size: PositiveInt = 64
    eval_batch_size: PositiveInt = 256
    optimizer: Literal["adamw", "sgd"] = "adamw"
    lr: Annotated[float, Field(gt=0.0)] = 0.001
    weight_decay: NonNegativeFloat = 0.0001
    momentum: NonNegativeFloat = 0.9
    schedule: Literal["cosine", "constant"] = "cosine"
    warmup_epochs: NonNegativeInt = 10
    min_lr: NonNegativeFloat = 0.0
    label_smoothing: Annotated[float, Field(ge=0.0, lt=1.0)] = 0.0
    augmentation: Literal["none", "hflip"] = "none"
    num_workers: NonNegativeInt = 0
    device: Literal["auto", "cpu", "cuda"] = "auto"


class ExperimentConfig(_Section):
    """One experiment: a method on a backbone, over a list of tasks, with one seed.

    Attributes:
        description: Free text shown with the results.
        method: The PEFT method.
        backbone: The timm backbone and its weights.
        data: The tasks and image preparation.
        train: Optimization and model selection.
        seed: Seed of initialization, data order and augmentation (`--seed` overrides it).
        cheap_to_reproduce: The run takes seconds on a CPU with no downloads; the test suite
            re-runs committed results that set it and checks the metrics match exactly.
    """

    description: str = ""
    method: MethodConfig
    backbone: BackboneConfig
    data: DataConfig
    train: TrainConfig = Field(default_factory=TrainConfig)
    seed: NonNegativeInt = 0
    cheap_to_reproduce: bool = False


class ConfigError(ValueError):
    """An experiment config that cannot be used; carries every problem found."""

    def __init__(self, problems: list[Problem]):
        self.problems = sorted(problems)
        super().__init__("\n".join(str(p) for p in self.problems))


def parse_config(data: Any, file: str, located: LocatedYaml | None = None) -> ExperimentConfig:
    """Validate plain data (a parsed YAML document, or the `config` recorded in a measured run).

    Args:
        data: The config as plain Python objects.
        file: Path shown in errors.
        located: Line numbers of the YAML document, if it came from one.

    Returns:
        The validated config.

    Raises:
        ConfigError: Listing every problem with file, line, field and what was expected.
    """
    config, problems = validate_model(ExperimentConfig, data, file, located.line_of if located else None)
    if config is None:
        raise ConfigError(problems)
    return config


def load_config(path: str | Path) -> ExperimentConfig:
    """Read and validate an experiment config file.

    Args:
        path: A YAML file.

    Returns:
        The validated config, with defaults filled in.

    Raises:
        ConfigError: If the file is missing, is not valid YAML or does not match the schema.
    """
    file = str(path)
    try:
        text = Path(path).read_text(encoding="utf-8")
    except OSError as error:
        raise ConfigError([Problem(file, 0, "", f"cannot read the config: {error.strerror or error}")]) from None
    located, problems = load_yaml(text, file)
    if problems or located is None:
        raise ConfigError(problems)
    return parse_config(located.data, file, located)


def with_overrides(
    config: ExperimentConfig, *, seed: int | None = None, data_root: str | None = None
) -> ExperimentConfig:
    """Return the config with command-line overrides applied (and validated again).

    Args:
        config: The config from the file.
        seed: Replaces `seed` when given.
        data_root: Replaces `data.root` when given.
    """
    data = config.model_dump()
    if seed is not None:
        data["seed"] = seed
    if data_root is not None:
        data["data"]["root"] = data_root
    return parse_config(data, "<command line>")


def default_method_options(method: str) -> dict[str, Any]:
    """The default field values of a method's config, as YAML-friendly values (tuples become
    lists), for writing experiment configs."""
    import reference_impls as ri

    return ri.get_config_class(method)().model_dump(mode="json")
