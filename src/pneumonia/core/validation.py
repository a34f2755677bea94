"""Settings and model-file headers declared as pydantic models, and their first problem as one line.

params.yaml (:mod:`pneumonia.core.params`) and the model files' headers
(the classifier's and the detector's) state their types and ranges as pydantic
annotations (``float = Field(gt=0, lt=1)``) instead of hand-written checks.
Pydantic reports every problem with a location and a machine-readable type;
:func:`first_problem` turns the first into the words of the message each caller
prints (``train.lr must be a number > 0 and < 1, got -0.0001``), reading the
expected type back from the model's own annotations, so the message and the
check cannot disagree.

Models are strict: YAML's ``yes`` is not a number, ``2.5`` is not an integer,
``"1e-4"`` (which YAML reads as text) is not a float; an integer is accepted
where a number is expected.
"""

from __future__ import annotations

import types
import typing
from typing import Annotated, Any, Literal, NamedTuple, Union

import annotated_types
from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, ValidationError
from pydantic_core import PydanticCustomError


class Strict(BaseModel):
    """Every key required unless given a default, no unknown keys, no lenient coercion, immutable."""

    model_config = ConfigDict(extra="forbid", frozen=True, strict=True)


class Header(BaseModel):
    """A model file's header: keys other versions added are ignored; the rest strict, as settings are."""

    model_config = ConfigDict(extra="ignore", frozen=True, strict=True)


Count = Annotated[int, annotated_types.Ge(0)]
Positive = Annotated[int, annotated_types.Ge(1)]
Fraction = Annotated[float, annotated_types.Gt(0), annotated_types.Lt(1)]  # in (0, 1)
FiniteNumber = Annotated[float, Field(allow_inf_nan=False, description="a finite number")]
PositiveNumber = Annotated[float, Field(gt=0, allow_inf_nan=False, description="a positive number")]


def _list_to_tuple(value: Any) -> Any:
    # YAML and JSON give lists; the settings are immutable tuples (strict mode takes only a tuple as a tuple)
    return tuple(value) if isinstance(value, list) else value


def ListOf(item: Any, least: int = 0) -> Any:  # noqa: N802 (a type, written as one)
    """A list of ``item`` with at least ``least`` entries, held as a tuple."""
    return Annotated[tuple[item, ...], BeforeValidator(_list_to_tuple), annotated_types.MinLen(least)]


def rule(field: str, problem: str) -> PydanticCustomError:
    """A check across fields, raised in a ``model_validator``: reported as ``<model's key>.<field> <problem>``."""
    return PydanticCustomError("rule", "{field} {problem}", {"field": field, "problem": problem})


class Problem(NamedTuple):
    kind: str  # missing, unknown, or invalid
    key: str  # dotted, e.g. download.phantom.size ("" for the whole document)
    text: str  # invalid: what is wrong ("must be ..., got ..."); unknown: the valid keys; missing: ""


def first_problem(error: ValidationError, model: type[BaseModel]) -> Problem:
    """The first of pydantic's errors for ``model``, located by dotted key and described from its annotations."""
    detail = error.errors()[0]
    keys, field, parent, rest = _walk(model, detail["loc"])
    key = ".".join(keys)
    kind, value = detail["type"], detail.get("input")
    if kind == "missing":
        return Problem("missing", key, "")
    if kind == "extra_forbidden":
        return Problem("unknown", key, ", ".join(sorted(parent.model_fields)))
    if kind == "rule":
        return Problem("invalid", ".".join([*keys, detail["ctx"]["field"]]), detail["ctx"]["problem"])
    if kind in ("model_type", "dict_type"):
        return Problem("invalid", key, f"must be a mapping of settings, got {type(value).__name__}")
    described = describe(field.annotation, field.metadata, field.description)
    if rest and isinstance(rest[0], int):  # one item of a list
        item = typing.get_args(field.annotation)[0]
        return Problem("invalid", key, f"has {value!r}; every item must be {describe(item)}")
    if kind == "literal_error" and typing.get_origin(field.annotation) is Literal:
        return Problem("invalid", key, f"is {value!r}; choose one of {', '.join(map(str, field.annotation.__args__))}")
    return Problem("invalid", key, f"must be {described}, got {value!r}")


def header_problem(error: ValidationError, model: type[BaseModel], header: dict) -> str:
    """The first problem of a model file's header in words: "lacks 'mean'", "std 0.0 is not a positive number"."""
    key = first_problem(error, model).key.split(".")[0]  # a header's keys are flat: name the whole value
    if key not in header:
        return f"lacks {key!r}"
    field = model.model_fields[key]
    return f"{key} {header[key]!r} is not {describe(field.annotation, field.metadata, field.description)}"


def _walk(model: type[BaseModel], loc: tuple) -> tuple[list[str], Any, type[BaseModel], tuple]:
    """Follow ``loc`` through nested models: (keys, the last field's info, its model, what lies below the field:
    a list item's index or a union member's tag)."""
    keys, field, parent = [], None, model
    for position, part in enumerate(loc):
        container = parent if field is None else field.annotation
        if not _is_model(container):
            return keys, field, parent, loc[position:]
        if part not in container.model_fields:  # an unknown key
            return [*keys, str(part)], None, container, ()
        parent, field = container, container.model_fields[part]
        keys.append(part)
    return keys, field, parent, ()


def _is_model(annotation: Any) -> bool:
    return isinstance(annotation, type) and issubclass(annotation, BaseModel)


_CONSTRAINTS = (
    (annotated_types.Gt, "> {0.gt}"), (annotated_types.Ge, ">= {0.ge}"), (annotated_types.Lt, "< {0.lt}"),
    (annotated_types.Le, "<= {0.le}"), (annotated_types.MultipleOf, "a multiple of {0.multiple_of}"),
    (annotated_types.MinLen, "of at least {0.min_length} character(s)"),
)
_NAMES = {int: "an integer", float: "a number", bool: "true or false", str: "text", type(None): "null"}


def describe(annotation: Any, metadata: typing.Iterable = (), description: str | None = None) -> str:
    """Words for what an annotation accepts: ``Union[Annotated[int, Ge(0)], Literal["auto"]]`` -> "an integer >= 0
    or auto". A field's ``description``, when it has one, is the words."""
    if description:
        return description
    origin, args = typing.get_origin(annotation), typing.get_args(annotation)
    if origin is Annotated:
        return describe(args[0], [*args[1:], *metadata])
    limits = " and ".join(text.format(m) for m in metadata for kind, text in _CONSTRAINTS if isinstance(m, kind))
    if origin in (Union, types.UnionType):
        return " or ".join(describe(arg) for arg in args)
    if origin is Literal:
        return " or ".join(map(str, args))
    if origin is tuple:
        least = next((m.min_length for m in metadata if isinstance(m, annotated_types.MinLen)), 0)
        return f"a list of at least {least} item(s), each {describe(args[0])}"
    if _is_model(annotation):
        return "a mapping of settings"
    return " ".join(filter(None, [_NAMES.get(annotation, getattr(annotation, "__name__", str(annotation))), limits]))
