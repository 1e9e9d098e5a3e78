"""Every data and stage kind the schemas accept names a module, and importing it registers that kind."""

from __future__ import annotations

import typing

import pytest

from diffpipe.errors import InputError
from diffpipe.schemas import STAGE_CLASSES, DataSpec
from diffpipe.tasks.registry import DOMAIN_MODULES, STAGE_MODULES, get_domain, get_stage, stage_module


def _literal(cls: type, field: str) -> str:
    (value,) = typing.get_args(cls.model_fields[field].annotation)
    return value


def test_every_schema_kind_has_a_registered_implementation() -> None:
    data_kinds = {_literal(cls, "kind") for cls in typing.get_args(typing.get_args(DataSpec)[0])}
    stage_kinds = {_literal(cls, "stage") for cls in STAGE_CLASSES}
    assert data_kinds == set(DOMAIN_MODULES) and stage_kinds == set(STAGE_MODULES)
    for kind in sorted(data_kinds):
        assert type(get_domain(kind)).__module__ == DOMAIN_MODULES[kind]
    for kind in sorted(stage_kinds):
        assert get_stage(kind).__module__ == STAGE_MODULES[kind]


def test_unknown_kind_is_an_input_error() -> None:
    with pytest.raises(InputError, match="no module implements stage kind 'nosuch'"):
        stage_module("nosuch")
