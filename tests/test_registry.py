"""Every name a spec can use resolves, in one hop, to exactly one registered implementation in the module listed for it.

The names are collected by walking the schemas from `PipelineSpec`: the `kind` or `method` of a model
held by a field named `data`, `objective` or `search` is a name in that field's namespace; any other
Literal field named `stage`, `method`, `algorithm` or `arch` is a name in its own. A new union member (a
search method, an algorithm) is therefore covered as soon as its schema class is reachable from the
pipeline spec.
"""

from __future__ import annotations

import importlib
import typing
from collections import defaultdict

import pytest
from pydantic import BaseModel

from diffpipe.errors import InputError
from diffpipe.schemas import PipelineSpec
from diffpipe.tasks.registry import MODULES, REGISTERED, REWARD_MODULES, get_implementation, register, stage_module

NAMED_BY_FIELD = {"stage", "method", "algorithm", "arch"}
"""Literal fields whose own name is the namespace."""
HOLDER_NAMESPACES = {"data", "objective", "search"}
"""Fields whose model's `kind` or `method` is a name in the namespace of the field."""


def _models(annotation: object) -> list[type[BaseModel]]:
    """The pydantic model classes inside an annotation (through unions, lists, Optional, Annotated)."""
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return [annotation]
    return [m for arg in typing.get_args(annotation) for m in _models(arg)]


def _literal(annotation: object) -> list[str]:
    return list(typing.get_args(annotation)) if typing.get_origin(annotation) is typing.Literal else []


def spec_names(root: type[BaseModel] = PipelineSpec) -> dict[str, set[str]]:
    """Namespace -> every name the schemas accept, walking every model reachable from `root`."""
    names: dict[str, set[str]] = defaultdict(set)
    seen: set[type[BaseModel]] = set()
    todo: list[tuple[type[BaseModel], str]] = [(root, "")]
    while todo:
        model, holder = todo.pop()
        if model in seen:
            continue
        seen.add(model)
        for field_name, info in model.model_fields.items():
            if holder in HOLDER_NAMESPACES and field_name in ("kind", "method"):
                names[holder].update(_literal(info.annotation))
            elif field_name in NAMED_BY_FIELD:
                names[field_name].update(_literal(info.annotation))
            todo += [(m, field_name) for m in _models(info.annotation)]
    return names


def _defining_module(implementation: object) -> str:
    """Module of a registered class, function or instance (a reward plugin: of its function)."""
    return getattr(implementation, "fn", implementation).__module__


NAMES = sorted((ns, name) for ns, values in spec_names().items() for name in values)


def test_the_walk_finds_every_namespace_and_known_names() -> None:
    names = spec_names()
    assert {"stage", "data", "objective", "arch", "algorithm", "method", "search"} <= set(names)
    assert {"espo", "flow_grpo"} <= names["algorithm"] and {"meanflow", "cmt"} <= names["method"]
    assert "best_of_n" in names["search"] and "best_of_n" not in names["method"]


@pytest.mark.parametrize(("namespace", "name"), NAMES, ids=[f"{ns}:{n}" for ns, n in NAMES])
def test_every_spec_name_resolves_to_one_registered_implementation(namespace: str, name: str) -> None:
    assert namespace in MODULES, f"no registry table for the {namespace!r} names the schemas accept"
    assert name in MODULES[namespace], f"{namespace} {name!r} is accepted by the schemas but names no module"
    module = MODULES[namespace][name]
    importlib.import_module(module)
    implementation = REGISTERED[namespace].get(name)
    assert implementation is not None, f"{module} does not register {namespace} {name!r}"
    assert _defining_module(implementation) == module
    assert get_implementation(namespace, name) is implementation


def test_no_registry_entry_without_a_spec_name() -> None:
    names = spec_names()
    for namespace, table in MODULES.items():
        if namespace != "reward":
            assert set(table) == names[namespace], namespace


@pytest.mark.parametrize("name", sorted(REWARD_MODULES))
def test_every_reward_resolves_to_one_plugin_in_its_module(name: str) -> None:
    plugin = get_implementation("reward", name)
    assert plugin.name == name and _defining_module(plugin) == REWARD_MODULES[name]


def test_a_second_implementation_of_a_name_is_an_error() -> None:
    first = get_implementation("algorithm", "espo")
    with pytest.raises(RuntimeError, match="implemented twice"):
        register("algorithm", "espo", type("Other", (), {}))
    assert get_implementation("algorithm", "espo") is first


def test_unknown_kind_is_an_input_error() -> None:
    with pytest.raises(InputError, match="no module implements stage kind 'nosuch'"):
        stage_module("nosuch")
