"""The one error type of the tooling, a problem found in a file, and the one translation of
pydantic validation errors into problems (used for the knowledge base, experiment configs and
measured runs alike)."""

from __future__ import annotations

import re
import types
import typing
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, TypeVar

from pydantic import BaseModel, ValidationError

Location = tuple[str | int, ...]
"""Keys and indices leading to a value in a document (`("rows", 3, "source")`)."""

LineOf = Callable[[Location], int]
"""Gives the line of a location in the input (`LocatedYaml.line_of`)."""

Hints = Mapping[tuple[str, str], str]
"""Messages replacing pydantic's, by (pydantic error type, field name)."""

M = TypeVar("M", bound=BaseModel)

TODO_MARKER = "TODO(new)"
"""Marks a value `peft-atlas new` left to fill; validation reports each one as a to-do."""

# YAML 1.1 reads a number with an exponent but no dot (1e-3) as a string.
_EXPONENT_WITHOUT_DOT = re.compile(r"^[+-]?(\d+\.?\d*|\.\d+)[eE][+-]?\d+$")


@dataclass(frozen=True, order=True)
class Problem:
    """One thing wrong with the input, located as precisely as the input allows.

    Attributes:
        file: Path of the offending file, relative to the repository root.
        line: 1-based line number, or 0 when unknown.
        field: Dotted path of the field (``rows.3.source``), or ``""`` for the whole file.
        message: What is wrong and what was expected.
    """

    file: str
    line: int
    field: str
    message: str

    def __str__(self) -> str:
        where = f"{self.file}:{self.line}" if self.line else self.file
        field = f" {self.field}:" if self.field else ""
        return f"{where}:{field} {self.message}"


def validate_model(
    model: type[M], data: Any, file: str, line_of: LineOf | None = None, hints: Hints | None = None
) -> tuple[M | None, list[Problem]]:
    """Validate plain data (a parsed YAML or JSON document) against a model.

    Args:
        model: The pydantic model of the document.
        data: The document as plain Python objects.
        file: Path shown in problems.
        line_of: Line of a location in the input, if known (`LocatedYaml.line_of`).
        hints: Messages replacing pydantic's for some (error type, field name) pairs, e.g. to
            say in words what a regular expression requires.

    Returns:
        The validated model (None if invalid) and one problem per error.
    """
    try:
        return model.model_validate(data), []
    except ValidationError as error:
        return None, validation_problems(error, model, file, line_of, hints)


def validation_problems(
    error: ValidationError, model: type[BaseModel], file: str, line_of: LineOf | None = None,
    hints: Hints | None = None,
) -> list[Problem]:
    """Translate a pydantic `ValidationError` into problems, one per error.

    Each problem names the file, the line (when `line_of` is given), the dotted field and what
    was expected: unknown fields list the valid ones, wrong values show what was given and its
    type, and a validator's own message is kept as it is.

    Args:
        error: Raised by `model.model_validate`.
        model: The model that was validated (to list the valid fields next to an unknown one).
        file: Path shown in problems.
        line_of: Line of a location in the input, if known.
        hints: As for [`validate_model`][peft_atlas.problems.validate_model].
    """
    problems = []
    for item in error.errors(include_url=False):
        loc = tuple(p for p in item["loc"] if not _is_union_tag(p))
        line = line_of(loc) if line_of is not None else 0
        problems.append(Problem(file, line, ".".join(str(p) for p in loc),
                                _message(item, loc, model, hints or {}, tuple(item["loc"]))))
    return problems


def _is_union_tag(part: str | int) -> bool:
    """Whether a location part names a member of a union (`list[str]`, `function-after[...]`)
    rather than a key of the input."""
    return isinstance(part, str) and ("[" in part or part.startswith("function-"))


def _message(item: Mapping[str, Any], loc: Location, model: type[BaseModel], hints: Hints,
             raw_loc: Location = ()) -> str:
    kind, given = item["type"], item.get("input")
    name = str(loc[-1]) if loc else ""
    if kind == "missing":
        return hints.get((kind, name), f"missing required field {name!r}")
    if kind == "extra_forbidden":
        # the location with its union tags, which say which member of a tagged union was validated
        valid = _fields_at(model, (raw_loc or loc)[:-1])
        return f"unknown field {name!r}" + (f" (expected one of: {', '.join(valid)})" if valid else "")
    if kind == "value_error":  # raised by a validator: its message says what was expected
        return str(item.get("ctx", {}).get("error") or item["msg"].removeprefix("Value error, "))
    if kind in ("model_type", "model_attributes_type", "dict_type"):
        message = "expected a mapping of fields"
    else:
        message = hints.get((kind, name), item["msg"])
    shown = repr(given)
    if len(shown) > 60:
        shown = shown[:57] + "..."
    message += f" (got {shown}, {type(given).__name__})"
    if isinstance(given, str) and _EXPONENT_WITHOUT_DOT.match(given):
        message += "; YAML reads 1e-3 as a string: write 1.0e-3 or 0.001"
    return message


def _fields_at(model: type[BaseModel], loc: Location) -> list[str]:
    """The fields of the model that holds the values at `loc` (empty if it is not a model)."""
    annotation: Any = model
    for part in loc:
        annotation = _inside(annotation, part)
    return list(annotation.model_fields) if _is_model(annotation) else []


def _inside(annotation: Any, part: str | int) -> Any:
    """The annotation of the value at key or index `part` of a value of `annotation`, or None."""
    if _is_model(annotation):
        info = annotation.model_fields.get(part) if isinstance(part, str) else None
        return info.annotation if info is not None else None
    origin, args = typing.get_origin(annotation), typing.get_args(annotation)
    if origin is typing.Annotated:
        return _inside(args[0], part)
    if origin in (typing.Union, types.UnionType):
        tagged = [arg for arg in args if typing.get_origin(arg) is typing.Annotated
                  and any(getattr(meta, "tag", None) == part for meta in typing.get_args(arg)[1:])]
        if tagged:  # `part` is the tag of a member of a tagged union: the member itself
            return typing.get_args(tagged[0])[0]
        return next((found for arg in args if (found := _inside(arg, part)) is not None), None)
    if origin in (list, tuple, set, frozenset) and args:
        return args[0]
    if origin is dict and len(args) == 2:
        return args[1]
    return None


def _is_model(annotation: Any) -> bool:
    return isinstance(annotation, type) and issubclass(annotation, BaseModel)


def todo_problems(data: Any, file: str, line_of: LineOf | None = None) -> tuple[list[Problem], set[str]]:
    """A problem for every string value still holding the scaffold's marker, and their dotted paths.

    Args:
        data: A parsed YAML document.
        file: Path shown in problems.
        line_of: Line of a location in the input, if known.
    """
    problems: list[Problem] = []
    paths: set[str] = set()

    def visit(value: Any, location: Location) -> None:
        if isinstance(value, dict):
            for key, item in value.items():
                visit(item, (*location, key))
        elif isinstance(value, list):
            for index, item in enumerate(value):
                visit(item, (*location, index))
        elif isinstance(value, str) and TODO_MARKER in value:
            dotted = ".".join(str(p) for p in location)
            paths.add(dotted)
            what = value.split(TODO_MARKER, 1)[1].lstrip(": ").strip()
            problems.append(Problem(file, line_of(location) if line_of else 0, dotted, f"to fill: {what}"))

    visit(data, ())
    return problems, paths

