"""The `diffpipe` command: validate, run, status, show, schema (and evaluate, ls, gc)."""

from __future__ import annotations

import argparse
import importlib
import json
import os
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

from diffpipe.errors import DiffpipeError, InputError, Interrupted
from diffpipe.tasks.registry import COMMAND_MODULES

from .store_commands import add_store_commands
from .sweep_commands import add_sweep_arguments, add_sweep_command, is_sweep, sweep_show, sweep_status

if TYPE_CHECKING:
    from diffpipe.schemas import PipelineSpec

PREFECT_DEFAULTS = {
    "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
    "PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS": "90",
}


def _spec(args: argparse.Namespace, library_checks: bool = True):
    """Load and validate the spec; `library_checks` also checks scheduler, reward and solver names."""
    from .spec_loading import load_spec

    spec = load_spec(args.spec, args.set)
    if library_checks:
        _library_checks(spec)
    return spec


def _library_checks(spec: PipelineSpec) -> None:
    """Checks that import libraries (diffusers schedulers, rewards, solvers); see checks.py."""
    from .checks import check_spec

    check_spec(spec)


def _store(spec: PipelineSpec):
    """The spec's artifact store, checked to be reachable (bucket exists, credentials accepted)."""
    from diffpipe.storage import ArtifactStore

    store = ArtifactStore(spec.storage.root)
    store.check_reachable()
    return store


def cmd_validate(args: argparse.Namespace) -> int:
    """Validate a spec and print what it will run."""
    spec = _spec(args)
    _launch_checks(spec)
    stages = ", ".join(f"{s.name} ({s.stage})" for s in spec.stages)
    print(f"OK: pipeline '{spec.name}': data {spec.data.kind}, model {spec.model.arch}; stages: {stages}")
    return 0


def cmd_run(args: argparse.Namespace) -> int:
    """Run a pipeline; cached stages are skipped.

    With every stage cached and no Prefect server configured, Prefect's temporary API is not started: the run
    only reads the store. Against a server (or with `--record`) the flow runs and its cached tasks are logged.
    """
    if args.nproc_per_node is not None:
        args.set.append(f"runtime.distributed.nproc_per_node={args.nproc_per_node}")
    spec = _spec(args, library_checks=False)
    if spec.runtime.distributed.node_rank > 0:
        from .follow import follow

        return follow(spec)
    from .plan import status

    store = _store(spec)
    rows = status(spec, store, verify=False)  # the flow verifies what it reuses; only the fast path needs it here
    if (all(r.state == "cached" for r in rows) and not args.record and not _prefect_server_configured()
            and all(store.lookup(r.key, verify=spec.storage.verify_on_load) for r in rows)):
        summary = [r.as_json() for r in rows]
        print("every stage is cached: nothing to run (--record logs a Prefect flow run anyway)", file=sys.stderr)
    else:
        _library_checks(spec)
        _launch_checks(spec)
        if _prefect_server_configured():
            from diffpipe.server.checks import check_api

            check_api()
        store.check_writable()
        summary = _run_flow(args)
    if args.json:
        print(json.dumps({"pipeline": spec.name, "stages": summary}, indent=2))
    else:
        _print_summary(summary)
    return 0


def _launch_checks(spec: PipelineSpec) -> None:
    """Distributed settings of every training stage that runs across processes, before anything runs."""
    from diffpipe.tasks.launch import check_launch, distributes

    for stage in spec.stages:
        if distributes(stage.stage, spec.runtime):
            check_launch(spec, stage.name, stage.stage)


def _print_summary(summary: list[dict[str, Any]], file: Any = None) -> None:
    """The per-stage table of a run: state, artifact digest and headline metrics (or the error)."""
    _print_table(["stage", "kind", "state", "artifact", "key metrics"],
                 [[s["name"], s["stage"], s["state"], (s["artifact"] or {}).get("sha256", "-")[:12],
                   s.get("error") or _headline(s["metrics"])] for s in summary], file=file)


def _prefect_server_configured() -> bool:
    """True when runs go to a Prefect server (PREFECT_API_URL), which then records every run, cached or not."""
    from prefect.settings import get_current_settings

    return get_current_settings().api.url is not None


def _run_flow(args: argparse.Namespace) -> list[dict[str, Any]]:
    """Run the flow; SIGTERM / SIGINT stop it within seconds, and nothing it started outlives it."""
    from .graph import GraphFailed
    from .signals import stop_on_signals
    from .watchdog import start_watchdog

    start_watchdog()
    with stop_on_signals():
        from .pipeline import run_pipeline

        if not args.debug:
            from .quiet import quiet_failures

            quiet_failures()
        try:
            return run_pipeline(_spec(args, library_checks=False), str(args.spec), args.set)
        except GraphFailed as e:  # the table says which stages failed, which never ran and which finished
            _print_summary(e.summary[""], file=sys.stderr)
            raise


def cmd_status(args: argparse.Namespace) -> int:
    """Per stage: cached / stale / never run, and why (per cell and stage for a sweep)."""
    if is_sweep(args):
        return sweep_status(args)
    spec = _spec(args)
    from .plan import status

    rows = status(spec, _store(spec))
    if args.json:
        print(json.dumps({"pipeline": spec.name, "stages": [r.as_json() for r in rows]}, indent=2))
    else:
        _print_table(["stage", "kind", "state", "cache key", "why"],
                     [[r.name, r.kind, r.state, (r.key or "-")[:12], "; ".join(r.reasons) or "-"] for r in rows])
    return 0


def cmd_show(args: argparse.Namespace) -> int:
    """A stage's artifact, lineage, metrics and files (for a sweep: its comparison, or the stage in every cell)."""
    if is_sweep(args):
        return sweep_show(args)
    if args.stage is None:
        raise InputError("stage", "show needs a stage name (only a sweep's comparison is shown without one)",
                         "a stage name or 'data'", "none")
    spec = _spec(args)
    from .plan import status

    store = _store(spec)
    rows = {r.name: r for r in status(spec, store)}
    if args.stage not in rows:
        raise InputError("stage", "no such stage in this pipeline", "one of " + ", ".join(rows), repr(args.stage))
    row = rows[args.stage]
    doc: dict[str, Any] = row.as_json()
    if row.ref is not None:
        manifest = store.manifest(row.ref.sha256)
        doc["location"] = store.uri(row.ref)
        doc["lineage"] = manifest["lineage"]
        doc["files"] = {k: v["size"] for k, v in manifest["files"].items()}
    if args.json:
        print(json.dumps(doc, indent=2, default=str))
        return 0
    print(f"{row.name} ({row.kind}): {row.state}" + (f" — {'; '.join(row.reasons)}" if row.reasons else ""))
    if row.ref is None:
        return 0
    lineage = doc["lineage"]
    print(f"  artifact  {doc['location']}  ({row.ref.kind}, {row.ref.nbytes / 1e6:.2f} MB)")
    print(f"  cache key {row.key}")
    print(f"  built     {lineage['created']} in {lineage['wall_time_s']:.1f} s on {lineage['environment']['platform']}")
    for name, digest in lineage["upstream"].items():
        print(f"  input     {name}: {digest[:12]}")
    for k, v in _flat(row.metrics).items():
        print(f"  metric    {k} = {v}")
    for f, size in doc["files"].items():
        print(f"  file      {f} ({size} B)")
    return 0


def cmd_domain(args: argparse.Namespace) -> int:
    """A domain's command (registry `COMMAND_MODULES`) on the checked spec and its built artifacts."""
    spec = _spec(args)
    from .plan import status

    store = _store(spec)
    rows = {r.name: r for r in status(spec, store)}

    def artifact(node: str) -> Path:
        row = rows[node]
        if row.ref is None:
            raise InputError(f"stage {node}", "not built yet; run `diffpipe run` on this spec first", "cached",
                             row.state)
        return store.local_path(row.ref)

    return args.domain_command(args, spec, artifact)


def add_domain_commands(sub: Any) -> None:
    """One subcommand per module in `COMMAND_MODULES`, each with `spec`, `--set` and `--json` plus its own."""
    for name, module_name in COMMAND_MODULES.items():
        module = importlib.import_module(module_name)
        c = sub.add_parser(name, help=module.HELP)
        c.add_argument("spec", type=Path, help="pipeline YAML file (already run)")
        c.add_argument("--set", action="append", default=[], metavar="PATH=VALUE", help="override a field")
        c.add_argument("--json", action="store_true", help="print one JSON document")
        module.add_arguments(c)
        c.set_defaults(fn=cmd_domain, domain_command=module.run)


def cmd_schema(args: argparse.Namespace) -> int:
    """Print the JSON Schema of pipeline specs."""
    from diffpipe.schemas import PipelineSpec

    schema = PipelineSpec.model_json_schema()
    schema["$schema"] = "https://json-schema.org/draft/2020-12/schema"
    schema["title"] = "diffpipe pipeline spec"
    print(json.dumps(schema, indent=2))
    return 0


def _headline(metrics: dict[str, Any]) -> str:
    flat = _flat(metrics)
    keys = [k for k in flat if k.split(".")[-1] in {"final_loss", "frechet_distance", "classifier_accuracy",
                                                    "mmd2", "nfe_per_sample", "n_train"}]
    return ", ".join(f"{k}={flat[k]:.4g}" if isinstance(flat[k], float) else f"{k}={flat[k]}" for k in keys[:4])


def _flat(d: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k, v in d.items():
        out.update(_flat(v, f"{prefix}{k}.") if isinstance(v, dict) else {f"{prefix}{k}": v})
    return out


def _print_table(header: list[str], rows: list[list[Any]], file: Any = None) -> None:
    cells = [header] + [[str(c) for c in r] for r in rows]
    widths = [max(len(r[i]) for r in cells) for i in range(len(header))]
    for j, r in enumerate(cells):
        print("  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip(), file=file)
        if j == 0:
            print("  ".join("-" * w for w in widths), file=file)


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of the `diffpipe` command."""
    p = argparse.ArgumentParser(prog="diffpipe", description="Declarative, cached diffusion-model pipelines.")
    p.add_argument("--debug", action="store_true", help="show tracebacks")
    sub = p.add_subparsers(dest="command", required=True)
    for name, fn, help_ in [("validate", cmd_validate, "check a spec"), ("run", cmd_run, "run a pipeline"),
                            ("status", cmd_status, "cached / stale / never run, per stage"),
                            ("show", cmd_show, "a stage's artifacts, lineage, metrics, files")]:
        c = sub.add_parser(name, help=help_)
        c.add_argument("spec", type=Path, help="pipeline YAML file")
        if name == "show":
            c.add_argument("stage", nargs="?", help="stage name (or 'data'); none: a sweep's comparison")
        if name in ("status", "show"):
            add_sweep_arguments(c)
        c.add_argument("--set", action="append", default=[], metavar="PATH=VALUE",
                       help="override a field, e.g. stages.pretrain.steps=500 (repeatable)")
        if name in ("run", "status", "show"):
            c.add_argument("--json", action="store_true", help="print one JSON document")
        if name == "run":
            c.add_argument("--record", action="store_true",
                           help="run the Prefect flow (and log it) even when every stage is cached")
            c.add_argument("--nproc-per-node", type=int, metavar="N",
                           help="processes per machine for training stages (runtime.distributed.nproc_per_node)")
        c.set_defaults(fn=fn)
    sub.add_parser("schema", help="JSON Schema of specs, for editor completion").set_defaults(fn=cmd_schema)
    add_domain_commands(sub)
    add_sweep_command(sub)
    add_store_commands(sub)
    return p


def main(argv: list[str] | None = None) -> int:
    """Entry point: exit 0 on success, 2 on bad input, 1 on a failure inside a stage."""
    for k, v in PREFECT_DEFAULTS.items():  # before anything imports Prefect: it reads its settings then
        os.environ.setdefault(k, v)
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return args.fn(args)
    except InputError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except Interrupted as e:
        print(f"interrupted: {e}", file=sys.stderr)
        return e.exit_code
    except DiffpipeError as e:
        if args.debug:
            raise
        print(f"error: {e}", file=sys.stderr)
        return e.exit_code
    except KeyboardInterrupt:
        print("interrupted: finished stages are cached; rerun to continue", file=sys.stderr)
        return 130
    except Exception as e:
        if args.debug:
            raise
        print(f"error: {e.__class__.__name__}: {e} (rerun with --debug for a traceback)", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
