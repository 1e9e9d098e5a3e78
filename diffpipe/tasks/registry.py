"""Every name a spec can use, mapped to the one module that implements it; the pipeline walker knows no method.

A spec names its parts with discriminators: `stage`, `data.kind`, `objective.kind`, `model.arch`, an rl
stage's `algorithm`, a midtrain / distill stage's `method`, a sample stage's `search.method`, a reward's
`name`. Each name lives in one
module, listed in the tables below, where a decorator (`implements`, or its shorthands `stage` and
`domain`) registers the function, class or plugin that implements it. So a name is found in one hop:
spec name -> schema class (diffpipe/schemas) -> the module named here.

Modules are imported on first use, so computing cache keys and reading the store (all a fully cached
rerun does) never imports stage code, diffusers or domain libraries. Because stages reach methods by
name through this table and not by import, a stage's cache key can cover the modules it executes and
nothing else (see `diffpipe/flows/cache.py`).
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

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
    "self_train": "diffpipe.tasks.self_train",
    "neural_sampler": "diffpipe.tasks.samplers.stage",
}
"""Stage kind -> the module that implements it."""

DOMAIN_MODULES = {
    "digits": "diffpipe.tasks.data.digits",
    "coulomb_explosion": "diffpipe.tasks.data.cei.domain",
    "climate": "diffpipe.tasks.data.climate.domain",
    "countdown": "diffpipe.tasks.data.reasoning_domain",
    "sudoku": "diffpipe.tasks.data.reasoning_domain",
    "rna_design": "diffpipe.tasks.data.rna",
    "energy": "diffpipe.tasks.data.energy",
}
"""Data kind -> the module that implements its domain."""

OBJECTIVE_MODULES = {
    "flow_matching": "diffpipe.tasks.objectives.flow_matching",
    "ddpm": "diffpipe.tasks.objectives.ddpm",
    "edm": "diffpipe.tasks.objectives.edm",
    "regression": "diffpipe.tasks.objectives.regression",
    "masked_diffusion": "diffpipe.tasks.objectives.masked_diffusion",
}
"""Pretraining objective kind -> the module holding its loss."""

ARCH_MODULES = {
    "unet2d": "diffpipe.tasks.nets.unet2d",
    "dit": "diffpipe.tasks.nets.dit",
    "atom_transformer": "diffpipe.tasks.nets.atom_transformer",
    "mdlm": "diffpipe.tasks.nets.mdlm",
    "time_mlp": "diffpipe.tasks.nets.time_mlp",
    "spf": "diffpipe.tasks.nets.spf",
}
"""Model arch -> the module holding its network class."""

ALGORITHM_MODULES = {
    "flow_grpo": "diffpipe.tasks.rl.continuous.flow_grpo",
    "diffusion_nft": "diffpipe.tasks.rl.continuous.nft",
    "awm": "diffpipe.tasks.rl.continuous.awm",
    "ddrl": "diffpipe.tasks.rl.continuous.ddrl",
    "diffu_grpo": "diffpipe.tasks.rl.discrete.diffu_grpo",
    "coupled_grpo": "diffpipe.tasks.rl.discrete.coupled_grpo",
    "espo": "diffpipe.tasks.rl.discrete.espo",
    "gdpo": "diffpipe.tasks.rl.discrete.gdpo",
    "dmpo": "diffpipe.tasks.rl.discrete.dmpo",
    "wd1": "diffpipe.tasks.rl.discrete.wd1",
    "sdpo": "diffpipe.tasks.rl.discrete.sdpo",
    "tr2d2": "diffpipe.tasks.rl.discrete.tr2d2",
}
"""rl stage algorithm -> the module holding that algorithm (and nothing else)."""

METHOD_MODULES = {
    "cmt": "diffpipe.tasks.flowmap.cmt",
    "meanflow": "diffpipe.tasks.flowmap.meanflow",
    "meanflow_distill": "diffpipe.tasks.flowmap.meanflow_distill",
    "consistency": "diffpipe.tasks.flowmap.consistency",
    "pdns": "diffpipe.tasks.samplers.pdns",
    "mdns": "diffpipe.tasks.samplers.mdns",
    "naas": "diffpipe.tasks.samplers.naas",
    "pis": "diffpipe.tasks.samplers.pis",
    "adjoint": "diffpipe.tasks.samplers.adjoint",
}
"""midtrain / distill method -> the module holding its loss; neural_sampler method -> its trainer."""

SEARCH_MODULES = {
    "best_of_n": "diffpipe.tasks.search.best_of_n",
    "fk_steering": "diffpipe.tasks.search.fk_steering",
    "tree_search": "diffpipe.tasks.search.tree_search",
    "chords": "diffpipe.tasks.search.chords",
    "particle_gibbs": "diffpipe.tasks.search.particle_gibbs",
    "rfg": "diffpipe.tasks.search.rfg",
    "discrete_cfg": "diffpipe.tasks.search.discrete_cfg",
}
"""Search method of the sample stage -> the module that implements it."""

REWARD_MODULES = {
    "classifier_logprob": "diffpipe.tasks.data.digits_rewards",
    "ink": "diffpipe.tasks.data.digits_rewards",
    "physics_round_trip": "diffpipe.tasks.data.cei.rewards",
    "global_mean_response": "diffpipe.tasks.data.climate.rewards",
    "exact_verifier": "diffpipe.tasks.data.reasoning_rewards",
    "countdown_closeness": "diffpipe.tasks.data.reasoning_rewards",
    "rna_fold": "diffpipe.tasks.data.rna",
}
"""Reward plugin name -> the module that registers it."""

COMMAND_MODULES = {
    "evaluate": "diffpipe.tasks.data.cei.evaluate_xyz",
}
"""CLI command a domain adds -> its module: `HELP`, `add_arguments(parser)` and `run(args, spec, artifact)`.

Such a module imports nothing heavy at module level: the CLI imports it to build its parser."""

MODULES: dict[str, dict[str, str]] = {
    "stage": STAGE_MODULES, "data": DOMAIN_MODULES, "objective": OBJECTIVE_MODULES, "arch": ARCH_MODULES,
    "algorithm": ALGORITHM_MODULES, "method": METHOD_MODULES, "search": SEARCH_MODULES, "reward": REWARD_MODULES,
}
"""Namespace (the spec field that names an implementation) -> name -> module."""

REGISTERED: dict[str, dict[str, Any]] = {namespace: {} for namespace in MODULES}
"""Namespace -> name -> what the module registered (filled as modules are imported)."""


def register(namespace: str, name: str, implementation: Any) -> Any:
    """Record `implementation` as the one implementation of `name` in `namespace`; a second one is an error."""
    table = REGISTERED.setdefault(namespace, {})
    if name in table and table[name] is not implementation:
        raise RuntimeError(f"{namespace} '{name}' is implemented twice: {table[name]!r} and {implementation!r}")
    table[name] = implementation
    return implementation


def implements(namespace: str, name: str) -> Callable[[Any], Any]:
    """Class or function decorator: register it as the implementation of `name` in `namespace`."""
    return lambda implementation: register(namespace, name, implementation)


def stage(kind: str) -> Callable[[StageFn], StageFn]:
    """Register the function that runs stages of `kind`."""
    return implements("stage", kind)


def domain(kind: str) -> Callable[[type], type]:
    """Register the domain class that handles data of `kind` (one instance serves every pipeline)."""

    def decorate(cls: type) -> type:
        register("data", kind, cls())
        return cls

    return decorate


def search(method: str) -> Callable[[Callable], Callable]:
    """Register the function that runs search `method` in a sample stage."""
    return implements("search", method)


def implementation_module(namespace: str, name: str) -> str:
    """The module that implements `name` in `namespace` (InputError naming the namespace when none does)."""
    modules = MODULES.get(namespace, {})
    if name not in modules:
        what = {"data": "data kind", "stage": "stage kind"}.get(namespace, namespace)
        raise InputError(what, f"no module implements {what} {name!r}", "one of " + ", ".join(sorted(modules)),
                         repr(name))
    return modules[name]


def get_implementation(namespace: str, name: str) -> Any:
    """What implements `name` in `namespace`, importing its module on first use."""
    table = REGISTERED.setdefault(namespace, {})
    if name not in table:
        module = implementation_module(namespace, name)
        importlib.import_module(module)
        if name not in table:
            raise RuntimeError(f"{module} does not register {namespace} '{name}'")
    return table[name]


def stage_module(kind: str) -> str:
    """Python module that implements stage `kind`."""
    return implementation_module("stage", kind)


def domain_module(kind: str) -> str:
    """Python module that implements data `kind`."""
    return implementation_module("data", kind)


def get_stage(kind: str) -> StageFn:
    """The function that runs stages of `kind`, importing its module on first use."""
    return get_implementation("stage", kind)


def get_domain(kind: str) -> Domain:
    """The domain that handles data of `kind`, importing its module on first use."""
    return get_implementation("data", kind)


def get_search(method: str) -> Callable:
    """The function that runs search `method`, importing its module on first use."""
    return get_implementation("search", method)
