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

A vision-language method runs on an open_clip CLIP model (`backbone.clip`) with one of the CLIP
protocols (`data.kind`: `clip-few-shot`, `clip-base-to-novel` or `vlm-micro`):

    ```yaml
    method: {name: coop, options: {n_ctx: 4, init_text: "a photo of a"}}
    backbone: {clip: ViT-B-16, pretrained: openai}
    data: {kind: clip-base-to-novel, root: /data/coop, tasks: [oxford_pets], shots: 16}
    train: {optimizer: sgd, lr: 0.002, epochs: 10, batch_size: 32}
    ```
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any, Literal, Union

from pydantic import (BaseModel, ConfigDict, Discriminator, Field, Tag, ValidationInfo, field_validator,
                      model_validator)

from ..problems import Problem, validate_model
from ..yamlio import LocatedYaml, load_yaml

__all__ = [
    "CLIP_KINDS",
    "BackboneConfig",
    "ClipBackboneConfig",
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
CLIP_MEAN = [0.48145466, 0.4578275, 0.40821073]
CLIP_STD = [0.26862954, 0.26130258, 0.27577711]
"""The normalization of OpenAI's CLIP (open_clip's `OPENAI_DATASET_MEAN` / `_STD`), the default of
the CLIP protocols on folders."""

VIT_KINDS = ("vtab-1k", "micro")
VlmMicroRecipe = Literal["text-3x64", "text-6x128"]
"""The pretraining recipes of the VLM-micro CLIP (`peft_atlas.bench.vlm_micro.RECIPES`, which a test
keeps equal to this list; here so that a config is checked without torch)."""
CLIP_KINDS = ("clip-few-shot", "clip-base-to-novel", "vlm-micro")
"""Data kinds of the vision-language protocols: they train a CLIP method on a CLIP backbone."""
DataKind = Literal["vtab-1k", "micro", "clip-few-shot", "clip-base-to-novel", "vlm-micro"]

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

        # Whether the method fits the data kind (a ViT method on VTAB, a CLIP method on a CLIP
        # protocol) is checked with the other sections, in `parse_config`.
        if name not in ri.list_methods():
            raise ValueError(f"unknown method {name!r}; valid methods: {', '.join(ri.list_methods())}")
        return name

    @field_validator("options")
    @classmethod
    def _valid_options(cls, options: dict[str, Any], info: ValidationInfo) -> dict[str, Any]:
        import reference_impls as ri

        if "name" in info.data:  # an unknown name was reported already
            name = info.data["name"]
            checked = dict(options)
            if ri.get_spec(name).backbone == "clip":
                if "classnames" in options:
                    raise ValueError("classnames are not an option here: the harness takes them from the data "
                                     "(the task's class names, or its base and novel classes)")
                checked["classnames"] = ["first class", "second class"]  # stands in for the task's
            try:
                ri.build_config(name, checked)
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


class ClipBackboneConfig(_Section):
    """The open_clip CLIP model of a vision-language run and where its weights come from.

    Attributes:
        clip: An open_clip model name (`open_clip.list_models()`, e.g. `ViT-B-16`), `vlm-micro`
            for the VLM-micro CLIP (its committed checkpoint, hash verified), or `custom` for an
            `open_clip.CLIP` built from `model_cfg`.
        pretrained: An open_clip pretrained tag of the model (`openai`, `laion2b_s34b_b88k`, ...):
            open_clip downloads the weights (on the user's machine).
        checkpoint: A local state dict of the model (`.safetensors`, or a torch file read with
            `weights_only=True`). With neither `pretrained` nor `checkpoint` an open_clip model
            or a custom one is randomly initialized.
        model_cfg: With `clip: custom`: the arguments of `open_clip.CLIP` (`embed_dim`,
            `vision_cfg`, `text_cfg`, ...).
        recipe: With `clip: vlm-micro`: which pretraining recipe's model (a key of
            `peft_atlas.bench.vlm_micro.RECIPES`); unset, the benchmark's.
    """

    clip: str
    pretrained: str | None = None
    checkpoint: str | None = None
    model_cfg: dict[str, Any] | None = None
    recipe: VlmMicroRecipe | None = None

    @field_validator("clip")
    @classmethod
    def _known_clip(cls, clip: str) -> str:
        if clip in ("vlm-micro", "custom"):
            return clip
        try:
            import open_clip
        except ImportError:
            raise ValueError("CLIP backbones need open_clip: pip install open_clip_torch (the project's "
                             "`vlm` extra)") from None
        if clip not in open_clip.list_models():
            examples = ", ".join(m for m in open_clip.list_models() if m.startswith("ViT-B"))
            raise ValueError(f"unknown open_clip model {clip!r} (open_clip.list_models() lists them, e.g. "
                             f"{examples}; or vlm-micro, or custom with model_cfg)")
        return clip

    @model_validator(mode="after")
    def _weights(self) -> ClipBackboneConfig:
        if self.pretrained is not None and self.checkpoint is not None:
            raise ValueError("give either pretrained (an open_clip tag) or a checkpoint, not both")
        if self.clip == "vlm-micro" and (self.pretrained is not None or self.checkpoint is not None
                                         or self.model_cfg is not None):
            raise ValueError("clip: vlm-micro takes its architecture and its committed weights from the "
                             "harness; leave out pretrained, checkpoint and model_cfg")
        if self.clip == "custom":
            if self.model_cfg is None:
                raise ValueError("clip: custom needs model_cfg (the arguments of open_clip.CLIP: "
                                 "embed_dim, vision_cfg, text_cfg)")
            if self.pretrained is not None:
                raise ValueError("clip: custom has no open_clip pretrained tag; give a checkpoint instead")
        elif self.model_cfg is not None:
            raise ValueError(f"model_cfg is only read with clip: custom (clip is {self.clip!r})")
        if self.recipe is not None and self.clip != "vlm-micro":
            raise ValueError(f"recipe is only read with clip: vlm-micro (clip is {self.clip!r})")
        if self.pretrained is not None:
            import open_clip

            tags = open_clip.list_pretrained_tags_by_model(self.clip)
            if self.pretrained not in tags:
                raise ValueError(f"open_clip has no pretrained tag {self.pretrained!r} for {self.clip} "
                                 f"(valid tags: {', '.join(tags) or 'none'})")
        return self


def _backbone_kind(value: Any) -> str:
    """Which backbone section a value is: a CLIP one names `clip`, a timm one `model`."""
    if isinstance(value, ClipBackboneConfig) or (isinstance(value, dict) and "clip" in value):
        return "clip[open_clip]"
    return "vit[timm]"


AnyBackbone = Annotated[
    Union[Annotated[BackboneConfig, Tag("vit[timm]")], Annotated[ClipBackboneConfig, Tag("clip[open_clip]")]],
    Discriminator(_backbone_kind),
]
"""A timm backbone (`model: ...`) or an open_clip CLIP (`clip: ...`)."""


class DataConfig(_Section):
    """Which tasks to run and how images are prepared.

    Attributes:
        kind: `vtab-1k` (a VTAB-1k folder tree, NOAH/VPT layout), `micro` (VTAB-micro),
            `clip-few-shot` or `clip-base-to-novel` (CLIP protocols on image folders under
            `root`, one per data set), or `vlm-micro` (the generated base-to-novel benchmark).
        root: Folder holding one sub-folder per task (`--data-root` overrides it).
        tasks: Task ids; for `vtab-1k`, None means all 19 tasks; for the CLIP protocols on
            folders, the 11 data sets of the base-to-novel benchmark.
        shots: CLIP protocols: training images per class, K (default 16); the validation
            split keeps min(K, 4) per class.
        image_size: Images are resized to `image_size` x `image_size` (the CLIP protocols resize
            the shorter side and crop the centre).
        interpolation: Resize filter.
        mean: Per-channel mean subtracted after scaling pixels to [0, 1] (default: ImageNet's;
            OpenAI CLIP's for the CLIP protocols on folders).
        std: Per-channel standard deviation divided by after subtracting the mean.
    """

    kind: DataKind
    root: str | None = None
    tasks: Annotated[list[str], Field(min_length=1)] | None = None
    shots: PositiveInt | None = None
    image_size: PositiveInt = 224
    interpolation: Literal["bicubic", "bilinear"] = "bicubic"
    mean: Annotated[list[float], Field(min_length=3, max_length=3)] = Field(default_factory=lambda: list(IMAGENET_MEAN))
    std: Annotated[list[float], Field(min_length=3, max_length=3)] = Field(default_factory=lambda: list(IMAGENET_STD))

    @model_validator(mode="before")
    @classmethod
    def _clip_defaults(cls, data: Any) -> Any:
        # The CLIP protocols normalize as CLIP does unless told otherwise; VLM-micro's images are
        # those of its pretraining.
        if isinstance(data, dict) and data.get("kind") in ("clip-few-shot", "clip-base-to-novel"):
            data = {"mean": list(CLIP_MEAN), "std": list(CLIP_STD), **data}
        elif isinstance(data, dict) and data.get("kind") == "vlm-micro":
            from .vlm_micro_render import IMAGE_SIZE, MEAN, STD

            data = {"image_size": IMAGE_SIZE, "interpolation": "bilinear", "mean": list(MEAN), "std": list(STD), **data}
        return data

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

    `backbone` is a timm backbone (`model: ...`) for the ViT kinds and an open_clip CLIP
    (`clip: ...`) for the CLIP protocols; a method, backbone or train setting that does not fit
    the data kind is reported by `parse_config` with the field it concerns.

    Attributes:
        description: Free text shown with the results.
        method: The PEFT method.
        backbone: The timm backbone and its weights.
        data: The tasks and image preparation.
        train: Optimization and model selection.
        seed: Seed of initialization, data order and augmentation, and of the draw of the shots in
            the CLIP protocols (`--seed` overrides it).
        cheap_to_reproduce: The run takes seconds on a CPU with no downloads; the test suite
            re-runs committed results that set it and checks the metrics match exactly.
    """

    description: str = ""
    method: MethodConfig
    backbone: AnyBackbone
    data: DataConfig
    train: TrainConfig = Field(default_factory=TrainConfig)
    seed: NonNegativeInt = 0
    cheap_to_reproduce: bool = False

    @model_validator(mode="before")
    @classmethod
    def _clip_selection(cls, data: Any) -> Any:
        # The CLIP protocols report the model after the last epoch (CoOp's and CoCoOp's scripts
        # evaluate the checkpoint of the last epoch); it is their default selection.
        if isinstance(data, dict) and isinstance(data.get("data"), dict) and data["data"].get("kind") in CLIP_KINDS:
            train = data.get("train", {})
            if isinstance(train, dict) and "selection" not in train:
                data = {**data, "train": {**train, "selection": "last-epoch"}}
        return data


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
    line_of = located.line_of if located else None
    config, problems = validate_model(ExperimentConfig, data, file, line_of)
    problems = sorted(set(problems) | set(_kind_problems(data, file, line_of)))
    if config is None or problems:
        raise ConfigError(problems)
    return config


def _kind_problems(data: Any, file: str, line_of: Any) -> list[Problem]:
    """What does not fit the data kind: a method or backbone for the other family of models, a
    selection rule or option the CLIP protocols do not have.

    Checked on the plain data, so that these problems are reported beside any other.
    """
    import reference_impls as ri

    def get(*path: str) -> Any:
        value = data
        for key in path:
            if not isinstance(value, dict) or key not in value:
                return None
            value = value[key]
        return value

    def problem(path: tuple[str, ...], message: str) -> Problem:
        return Problem(file, line_of(path) if line_of else 0, ".".join(path), message)

    kind = get("data", "kind")
    if kind not in VIT_KINDS + CLIP_KINDS:
        return []  # reported by the schema
    clip = kind in CLIP_KINDS
    family = "clip" if clip else "vit"
    found = []
    name = get("method", "name")
    if isinstance(name, str) and name in ri.list_methods() and ri.get_spec(name).backbone != family:
        valid = ", ".join(ri.list_methods(backbone=family))
        trains = "open_clip CLIP models" if clip else "timm vision transformers"
        found.append(problem(("method", "name"), f"method {name!r} acts on {ri.get_spec(name).backbone} models; "
                                                 f"data.kind {kind!r} trains {trains} (valid methods: {valid})"))
    backbone = get("backbone")
    if isinstance(backbone, dict) and clip and "clip" not in backbone:
        found.append(problem(("backbone",), f"data.kind {kind!r} needs a CLIP backbone: clip: <open_clip model "
                                            "name> (with pretrained: <tag>), vlm-micro, or custom with model_cfg"))
    if isinstance(backbone, dict) and not clip and "clip" in backbone:
        found.append(problem(("backbone", "clip"), f"data.kind {kind!r} trains a timm vision transformer: give "
                                                   "backbone.model, not backbone.clip"))
    if clip:
        selection = get("train", "selection")
        if selection is not None and selection != "last-epoch":
            found.append(problem(("train", "selection"), f"the CLIP protocols report the model after the last epoch: "
                                                         f"expected 'last-epoch', got {selection!r}"))
        if get("train", "label_smoothing"):
            found.append(problem(("train", "label_smoothing"), "a CLIP method trains with its own loss "
                                                               "(reference_impls.clip_training_step): expected 0"))
        if kind == "vlm-micro" and get("data", "root") is not None:
            found.append(problem(("data", "root"), "vlm-micro generates its images: leave out data.root"))
    elif get("data", "shots") is not None:
        found.append(problem(("data", "shots"), f"shots are read by the CLIP protocols only; data.kind {kind!r} "
                                                "uses its fixed splits"))
    return found


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

    if ri.get_spec(method).backbone == "clip":  # the harness gives the class names
        options = ri.get_config_class(method)(classnames=["a class"]).model_dump(mode="json")
        del options["classnames"]
        return options
    return ri.get_config_class(method)().model_dump(mode="json")
