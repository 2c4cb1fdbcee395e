"""The method registry and method configs.

A method registers its name, its config class, its apply function and, for methods that choose
what to tune from the training data, its prepare function. Configs are pydantic models: every
field is typed, has a default and an attribute docstring (the API pages render it), and is
checked strictly (a string is not a number, an int is not a bool) by the shared constrained
types below, so method files repeat no range check.

A method may also register named presets: the configurations papers used, each with its source.
Preset names follow one convention: `"vtab-1k"` for one configuration used on every task of a
benchmark, `"vtab-1k-<variant>"` when a paper reports several such configurations, and
`"<prefix>/<task id>"` (task ids of taxonomy/benchmarks.yaml) where the paper chose per task.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Annotated, Any

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, ValidationError, model_validator

__all__ = [
    "ClassNames",
    "Dropout",
    "MethodConfig",
    "MethodSpec",
    "NonNegativeInt",
    "PositiveFloat",
    "PositiveInt",
    "Preset",
    "PromptTemplate",
    "Rank",
    "Targets",
    "build_config",
    "get_config_class",
    "get_preset",
    "get_spec",
    "list_methods",
    "list_presets",
    "register",
]

Rank = Annotated[int, Field(ge=1)]
"""Rank of a low-rank factorization (at least 1)."""

PositiveInt = Annotated[int, Field(ge=1)]
"""A count or width of at least 1 (bottleneck width, prompt length, ...)."""

NonNegativeInt = Annotated[int, Field(ge=0)]
"""A count that may be 0 (number of tuned blocks, ...)."""

PositiveFloat = Annotated[float, Field(gt=0.0)]
"""A strictly positive real (a scale, a standard deviation, ...)."""

Dropout = Annotated[float, Field(ge=0.0, lt=1.0)]
"""A dropout probability in [0, 1)."""

Targets = Annotated[tuple[str, ...], Field(min_length=1)]
"""Names of the layers a method acts on in every block (at least one)."""

def _has_class_slot(template: str) -> str:
    if "{}" not in template:
        raise ValueError(f"must contain '{{}}' for the class name, got {template!r}")
    return template


PromptTemplate = Annotated[str, AfterValidator(_has_class_slot)]
"""A hand-written prompt of a class: `{}` is replaced by the class name ("a photo of a {}.")."""

ClassNames = Annotated[tuple[Annotated[str, Field(min_length=1)], ...], Field(min_length=1)]
"""The class names a vision-language method classifies into (at least one; none empty)."""


def _lists_to_tuples(value: Any) -> Any:
    if isinstance(value, list):
        return tuple(_lists_to_tuples(v) for v in value)
    return value


class MethodConfig(BaseModel):
    """Base class of every method's configuration.

    Subclasses declare typed fields with defaults, each followed by a docstring. Values are
    checked strictly; lists are accepted where a tuple is expected (configs come back from JSON
    and YAML as lists). Configs are frozen: a method never changes its own configuration.
    """

    model_config = ConfigDict(extra="forbid", strict=True, frozen=True, use_attribute_docstrings=True)

    @model_validator(mode="before")
    @classmethod
    def _accept_lists(cls, data: Any) -> Any:
        if isinstance(data, dict):
            return {key: _lists_to_tuples(value) for key, value in data.items()}
        return data


@dataclass(frozen=True)
class Preset:
    """A named configuration of a method, as a paper or its code used it.

    Attributes:
        options: Config fields the configuration fixes (read-only); the others keep their defaults.
        source: Where the values come from: bib key and table, or a file of the official code.
        note: What the preset leaves out or where it departs from the source, if anything.
    """

    options: Mapping[str, Any]
    source: str
    note: str = ""

    def __post_init__(self) -> None:
        # a preset is shared by every call of apply: nobody may change it in place
        object.__setattr__(self, "options", MappingProxyType(dict(self.options)))
        if not self.source.strip():
            raise ValueError("a preset needs a source")


# "vtab-1k", "vtab-1k-tt4", "vtab-1k/cifar100", "vtab-1k-tk/dsprites_loc", "fgvc"
PRESET_NAME = re.compile(r"^[a-z0-9]+(-[a-z0-9]+)*(/[a-z0-9_]+)?$")


ApplyFn = Callable[[Any, Any], "list[str] | None"]
PrepareFn = Callable[[Any, Any, Iterable[Any]], "dict[str, Any] | tuple[dict[str, Any], dict[str, Any]]"]


@dataclass(frozen=True)
class MethodSpec:
    """One registry entry.

    Attributes:
        name: Registry name, equal to the taxonomy id (e.g. `"lora"`).
        config_class: The method's config, a [`MethodConfig`][reference_impls.registry.MethodConfig].
        apply_fn: `apply_fn(model, config)` changes the (already frozen and checked) model in
            place and returns the names of backbone parameters the method trains, if any.
        mergeable: Whether the trained part can be folded into the backbone weights.
        backbone: The kind of model the method acts on (`"vit"`: a timm vision transformer).
        prepare_fn: For methods that choose what to tune from the training data:
            `prepare_fn(model, config, batches)` returns the config fields that record the
            choice (e.g. the selected channels), or a pair `(fields, tensors)` when the method
            also builds tensors from the data (Tip-Adapter's cache): `tensors` maps names of the
            applied model's method parameters or persistent `peft_` buffers to their values.
        data_fields: The config fields `prepare_fn` fills; `apply` refuses to run while one
            of them is unset, so that no placeholder selection is ever used silently.
        presets: Named configurations (see [`Preset`][reference_impls.registry.Preset]), in the
            order the method file lists them.
    """

    name: str
    config_class: type[MethodConfig]
    apply_fn: ApplyFn
    mergeable: bool
    backbone: str = "vit"
    prepare_fn: PrepareFn | None = None
    data_fields: tuple[str, ...] = ()
    presets: Mapping[str, Preset] = field(default_factory=dict)

    @property
    def needs_data(self) -> bool:
        """Whether the method chooses what to tune from data (see `reference_impls.prepare`)."""
        return self.prepare_fn is not None


_REGISTRY: dict[str, MethodSpec] = {}


def register(
    name: str,
    config_class: type[MethodConfig],
    apply_fn: ApplyFn,
    *,
    mergeable: bool,
    backbone: str = "vit",
    prepare: PrepareFn | None = None,
    data_fields: tuple[str, ...] = (),
    presets: Mapping[str, Preset] | None = None,
) -> None:
    """Add a method to the registry (one call at the end of each method file).

    Args:
        name: Registry name (lowercase slug, equal to the taxonomy id).
        config_class: A [`MethodConfig`][reference_impls.registry.MethodConfig] subclass.
        apply_fn: Function `(model, config) -> list[str] | None`; see
            [`MethodSpec`][reference_impls.registry.MethodSpec].
        mergeable: Whether `merge` is supported.
        backbone: The kind of model the method acts on.
        prepare: For data-driven methods, `(model, config, batches) -> dict` of config fields
            (or `(fields, tensors)`, see [`MethodSpec`][reference_impls.registry.MethodSpec]).
        data_fields: The config fields `prepare` fills (required with `prepare`).
        presets: Named configurations, e.g. `{"vtab-1k": Preset({"r": 8}, source="...")}`.

    Raises:
        ValueError: If the name is taken, the config class is not a `MethodConfig`,
            `prepare` and `data_fields` do not come together, or a preset has a malformed name
            or options its config rejects.
    """
    if name in _REGISTRY:
        raise ValueError(f"method {name!r} is already registered")
    if not (isinstance(config_class, type) and issubclass(config_class, MethodConfig)):
        raise ValueError(f"config class of {name!r} must subclass MethodConfig, got {config_class!r}")
    if (prepare is None) != (not data_fields):
        raise ValueError(f"method {name!r}: give `prepare` and the `data_fields` it fills together")
    unknown = sorted(set(data_fields) - set(config_class.model_fields))
    if unknown:
        raise ValueError(f"method {name!r}: data_fields {unknown} are not fields of {config_class.__name__}")
    presets = dict(presets or {})
    for preset_name, preset in presets.items():
        if not PRESET_NAME.match(preset_name) or not isinstance(preset, Preset):
            raise ValueError(f"method {name!r}: preset {preset_name!r} needs a name like 'vtab-1k' or "
                             f"'vtab-1k/cifar100' and a Preset value")
        try:
            config_class(**preset.options)
        except ValidationError as error:
            raise ValueError(f"method {name!r}: preset {preset_name!r} is not a valid config: {error}") from None
    _REGISTRY[name] = MethodSpec(
        name, config_class, apply_fn, mergeable, backbone, prepare, tuple(data_fields), MappingProxyType(presets)
    )


def list_methods(backbone: str | None = None) -> list[str]:
    """Return the sorted names of the registered methods.

    Args:
        backbone: Only the methods acting on this kind of model (`"vit"`: timm vision
            transformers, `"clip"`: open_clip CLIP models); all when None.
    """
    return sorted(name for name, spec in _REGISTRY.items() if backbone is None or spec.backbone == backbone)


def get_spec(name: str) -> MethodSpec:
    """Return the registry entry of a method.

    Args:
        name: Registry name.

    Raises:
        ValueError: If no method has that name; the message lists the registered ones.
    """
    try:
        return _REGISTRY[name]
    except KeyError:
        raise ValueError(f"unknown method {name!r}; registered methods: {', '.join(list_methods())}") from None


def list_presets(name: str) -> list[str]:
    """Return the preset names of a method, in the order its file lists them.

    Args:
        name: Registry name.
    """
    return list(get_spec(name).presets)


def get_preset(name: str, preset: str) -> Preset:
    """Return one preset of a method.

    Args:
        name: Registry name.
        preset: Preset name (see [`list_presets`][reference_impls.registry.list_presets]).

    Raises:
        ValueError: If the method has no such preset; the message lists its presets.
    """
    presets = get_spec(name).presets
    if preset not in presets:
        known = ", ".join(presets) if presets else "none"
        raise ValueError(f"unknown preset {preset!r}; presets of {name}: {known}")
    return presets[preset]


def get_config_class(name: str) -> type[MethodConfig]:
    """Return the config class of a method.

    Args:
        name: Registry name.
    """
    return get_spec(name).config_class


# pydantic error types that mean "a value of the wrong type" rather than "a value out of range"
_TYPE_ERRORS = ("_type", "_parsing", "is_instance_of")


def _describe(error: dict[str, Any]) -> tuple[bool, str]:
    """One pydantic error as (is a type error, message naming the field, the rule and the value)."""
    field = "".join(f"[{part}]" if isinstance(part, int) else f".{part}" for part in error["loc"]).lstrip(".")
    value, kind, message = error.get("input"), error["type"], error["msg"]
    if kind == "extra_forbidden":
        return False, f"unknown config field {field!r}"
    if kind == "value_error":  # raised by a validator: its message says it all, or what the field must be
        message = str(error["ctx"]["error"])
        return False, f"config field {field!r} {message}" if message.startswith("must ") else message
    if kind == "too_short":
        message = f"must have at least {error['ctx']['min_length']} item(s)"
    is_type = kind.endswith(_TYPE_ERRORS)
    message = message.replace("Input should be ", "expects " if is_type else "must be ")
    shown = f"{value!r} ({type(value).__name__})" if is_type else repr(value)
    return is_type, f"config field {field!r} {message}, got {shown}"


def build_config(name: str, kwargs: dict[str, Any]) -> MethodConfig:
    """Build and check the config of a method from keyword arguments.

    Args:
        name: Registry name.
        kwargs: Field values; missing fields take their defaults.

    Returns:
        An instance of the method's config class.

    Raises:
        TypeError: A value of the wrong type (the message names the field, what was expected
            and the value received).
        ValueError: An unknown field (the message lists the valid ones) or a value out of range.
    """
    cls = get_config_class(name)
    try:
        return cls(**kwargs)
    except ValidationError as error:
        errors = error.errors(include_url=False)
        # a tuple whose items are all invalid is also "too short" after validation: say it once
        with_item_errors = {item["loc"][0] for item in errors if len(item["loc"]) > 1}
        errors = [item for item in errors if not (item["type"] == "too_short" and item["loc"][0] in with_item_errors)]
        described = [_describe(item) for item in errors]
        messages = [message for _, message in described]
        if any(message.startswith("unknown config field") for message in messages):
            messages.append(f"valid fields: {', '.join(cls.model_fields) or '(none)'}")
        exception = TypeError if any(is_type for is_type, _ in described) else ValueError
        raise exception("; ".join(messages)) from None
