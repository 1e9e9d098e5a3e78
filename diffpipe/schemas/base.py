"""Base model for every schema: unknown fields are errors, defaults are validated, nothing is silently coerced.

YAML gives diffpipe booleans, integers, floats and strings; pydantic's lax mode would read `steps: true`
as 1, `steps: '5'` as 5 and `class_conditional: 1` as True, and accepts `.inf` and `.nan`. A spec field
takes only its own type here: booleans only as booleans, integers only as integers (not booleans,
strings or 2.0), floats as numbers or numeric strings (YAML reads `1e-3` as a string) but finite. Every
field whose name ends in `seed` lies in [0, 2**32), the range numpy, scikit-learn and torch all accept.
"""

from __future__ import annotations

import types
import typing
from typing import Annotated, Any, Union

from pydantic import BaseModel, ConfigDict, model_validator

SEED_LIMIT = 2**32
"""Seeds lie in [0, SEED_LIMIT)."""


class FieldError(ValueError):
    """A model validator's error about one of its fields: the path gets `field` appended (flows/spec_loading.py)."""

    def __init__(self, field: str, problem: str, expected: str | None = None, found: str | None = None):
        self.field, self.problem, self.expected, self.found = field, problem, expected, found
        super().__init__(f"{field}: {problem}")


def _scalar_kinds(annotation: Any) -> set[type]:
    """The scalar types (bool, int, float) an annotation accepts, looking through Optional and Annotated."""
    origin = typing.get_origin(annotation)
    if origin is Annotated:
        return _scalar_kinds(typing.get_args(annotation)[0])
    if origin in (Union, types.UnionType):
        return set().union(*(_scalar_kinds(a) for a in typing.get_args(annotation)))
    return {annotation} & {bool, int, float}


def _element_annotation(annotation: Any) -> Any | None:
    """The element type of a list / tuple annotation (through Optional), else None."""
    origin = typing.get_origin(annotation)
    if origin in (Union, types.UnionType):
        inner = [a for a in typing.get_args(annotation) if a is not type(None)]
        return _element_annotation(inner[0]) if len(inner) == 1 else None
    if origin in (list, tuple):
        args = [a for a in typing.get_args(annotation) if a is not Ellipsis]
        return args[0] if len(set(args)) == 1 else None
    return None


def _coercion_problem(kinds: set[type], value: Any) -> str | None:
    """Why `value` may not fill a field of scalar `kinds` without coercion (None: it may)."""
    if not kinds or value is None:
        return None
    if isinstance(value, bool):
        return None if bool in kinds else f"expected {_names(kinds)}, found the boolean {value}"
    if bool in kinds and kinds == {bool}:
        return f"expected true or false, found {value!r}"
    if int in kinds and float not in kinds and not isinstance(value, int):
        return f"expected an integer, found {value!r}"
    return None


def _names(kinds: set[type]) -> str:
    return " or ".join(sorted({bool: "a boolean", int: "an integer", float: "a number"}[k] for k in kinds))


class Strict(BaseModel):
    """A schema node: `extra="forbid"`, validated defaults, attribute docstrings as field descriptions, no coercion."""

    model_config = ConfigDict(
        extra="forbid",
        validate_default=True,
        use_attribute_docstrings=True,
        frozen=False,
        allow_inf_nan=False,
    )

    @model_validator(mode="before")
    @classmethod
    def _no_silent_coercion(cls, data: Any) -> Any:
        if not isinstance(data, dict):
            return data
        for name, value in data.items():
            field = cls.model_fields.get(name)
            if field is None:
                continue
            problem = _coercion_problem(_scalar_kinds(field.annotation), value)
            element = _element_annotation(field.annotation)
            if problem is None and element is not None and isinstance(value, list | tuple):
                problem = next(filter(None, (_coercion_problem(_scalar_kinds(element), v) for v in value)), None)
            if problem is None and name.endswith("seed") and isinstance(value, int) and not 0 <= value < SEED_LIMIT:
                problem = f"a seed lies in [0, 2**32); found {value}"
            if problem:
                raise FieldError(name, problem)
        return data
