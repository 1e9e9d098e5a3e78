"""Stage kinds and data kinds register here by name; the pipeline walker knows no method."""

from __future__ import annotations

from collections.abc import Callable

from .context import StageContext, StageOutput
from .domain import Domain

StageFn = Callable[[StageContext], StageOutput]
STAGES: dict[str, StageFn] = {}
DOMAINS: dict[str, Domain] = {}


def stage(kind: str) -> Callable[[StageFn], StageFn]:
    """Register the function that runs stages of `kind`."""

    def register(fn: StageFn) -> StageFn:
        STAGES[kind] = fn
        return fn

    return register


def domain(kind: str) -> Callable[[type], type]:
    """Register the domain class that handles data of `kind`."""

    def register(cls: type) -> type:
        DOMAINS[kind] = cls()
        return cls

    return register


def stage_module(kind: str) -> str:
    """Python module that implements stage `kind` (its code version is part of the cache key)."""
    return STAGES[kind].__module__


def domain_module(kind: str) -> str:
    """Python module that implements data `kind`."""
    return type(DOMAINS[kind]).__module__
