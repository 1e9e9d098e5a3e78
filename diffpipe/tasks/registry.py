"""Stage kinds and data kinds by name; the pipeline walker knows no method.

Each kind lives in one module, named in `STAGE_MODULES` / `DOMAIN_MODULES`, where a decorator registers
its function or domain class. Modules are imported on first use, so computing cache keys and reading
the store (all a fully cached rerun does) never imports stage code, diffusers or domain libraries.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from typing import TYPE_CHECKING

from diffpipe.errors import InputError

if TYPE_CHECKING:
    from .context import StageContext, StageOutput
    from .domain import Domain

    StageFn = Callable[[StageContext], StageOutput]

STAGE_MODULES = {
    "pretrain": "diffpipe.tasks.pretrain",
    "sample": "diffpipe.tasks.sample",
    "evaluate": "diffpipe.tasks.evaluate",
    "midtrain": "diffpipe.tasks.midtrain",
    "distill": "diffpipe.tasks.distill",
    "rl": "diffpipe.tasks.rl.stage",
}
"""Stage kind -> the module that implements it."""

DOMAIN_MODULES = {
    "digits": "diffpipe.tasks.data.digits",
    "coulomb_explosion": "diffpipe.tasks.data.cei.domain",
    "climate": "diffpipe.tasks.data.climate.domain",
    "countdown": "diffpipe.tasks.data.reasoning_domain",
    "sudoku": "diffpipe.tasks.data.reasoning_domain",
}
"""Data kind -> the module that implements its domain."""

SEARCH_MODULES = {
    "best_of_n": "diffpipe.tasks.search.best_of_n",
    "fk_steering": "diffpipe.tasks.search.fk_steering",
    "tree_search": "diffpipe.tasks.search.tree_search",
}
"""Search method of the sample stage -> the module that implements it."""

STAGES: dict[str, StageFn] = {}
DOMAINS: dict[str, Domain] = {}
SEARCHES: dict[str, Callable] = {}


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


def search(method: str) -> Callable[[Callable], Callable]:
    """Register the function that runs search `method` in a sample stage."""

    def register(fn: Callable) -> Callable:
        SEARCHES[method] = fn
        return fn

    return register


def stage_module(kind: str) -> str:
    """Python module that implements stage `kind` (its code version is part of the cache key)."""
    return _module_of(kind, STAGE_MODULES, "stage")


def domain_module(kind: str) -> str:
    """Python module that implements data `kind`."""
    return _module_of(kind, DOMAIN_MODULES, "data")


def get_stage(kind: str) -> StageFn:
    """The function that runs stages of `kind`, importing its module on first use."""
    if kind not in STAGES:
        importlib.import_module(stage_module(kind))
    return STAGES[kind]


def get_domain(kind: str) -> Domain:
    """The domain that handles data of `kind`, importing its module on first use."""
    if kind not in DOMAINS:
        importlib.import_module(domain_module(kind))
    return DOMAINS[kind]


def get_search(method: str) -> Callable:
    """The function that runs search `method`, importing its module on first use."""
    if method not in SEARCHES:
        importlib.import_module(_module_of(method, SEARCH_MODULES, "search"))
    return SEARCHES[method]


def _module_of(kind: str, modules: dict[str, str], what: str) -> str:
    if kind not in modules:
        raise InputError(f"{what} kind", f"no module implements {what} kind {kind!r}", "one of " + ", ".join(modules),
                         repr(kind))
    return modules[kind]
