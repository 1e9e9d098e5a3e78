"""Few-step generation: teacher vs CMT and MeanFlow students by function evaluations, on digits, CEI or climate.

Runs the shipped spec of a domain (pipelines/digits_distill.yaml, cei_distill.yaml or climate_distill.yaml) as one
`diffpipe sweep` over the seeds (through the shared harness; one stage at a time unless --parallel, so the
training wall times are not shared), with its sample / evaluate stages replaced by a grid: the flow-matching
teacher with its Euler solver in 1, 2, 4, 8 and 50 steps, and each two-time student (the CMT checkpoint,
and MeanFlow students initialised from CMT, from the teacher and from random weights, equal steps) in 1,
2 and 4 flow-map steps; each MeanFlow init is also trained for 1/4 and 1/2 of its steps and sampled in 2
steps (quality after equal numbers of steps; steps to reach 110% of the 50-step teacher's score).
Scores are the domain's own evaluate metrics on held-out data (digits: Frechet distance in the classifier's
features and classifier accuracy, with the data floor; CEI: MAE and RMSD
in Bohr, the momentum round trip and the 90% coverage of the draws, one draw per event; climate: fair CRPS,
NRMSE and spread/skill over the evaluation period, with the internal-variability floor). A rerun on the same
root reuses every cached stage and only re-reads the metrics. Cost of each route (pretrain -> cmt ->
distill) is its training wall time and FLOPs (recorded by every training stage) over pretraining alone;
loss spikes are counted on each midtrain / distill stage's published losses.
Prints and writes benchmarks/results/distill_<domain>.json.

    python benchmarks/distill_domains.py --domain cei --seeds 0 1 2
    python benchmarks/distill_domains.py --domain cei --quick    # a smoke run (tiny steps), to a temp folder

The pipeline children import diffpipe from this checkout while they run (one to two hours per domain), so
edits made meanwhile leak into later seeds: run long grids from a `git worktree` of a fixed commit.
"""

from __future__ import annotations

import json
import tempfile
import time
from pathlib import Path

import numpy as np
import yaml
from harness import REPO, open_benchmark, parser, run_sweep, write_result

from diffpipe.storage import ArtifactStore
from diffpipe.tasks.training import LOSSES_FILE, count_spikes

TEACHER_STEPS = (1, 2, 4, 8, 50)
STUDENT_STEPS = (1, 2, 4)
INITS = ("cmt", "teacher", "random")
CURVE_FRACTIONS = (0.25, 0.5)
"""Shorter MeanFlow runs per init, as fractions of the spec's steps (quality after equal numbers of steps)."""
CURVE_SAMPLER_STEPS = 2
THRESHOLD = 1.1
"""Steps to threshold: the 2-step score within 10% of the 50-step teacher's (lower is better for every metric used)."""
SPIKE = 3.0
"""A loss spike: a step whose loss exceeds SPIKE x the median of the previous 50 (tasks/training.count_spikes)."""
DOMAINS = {
    "digits": {"spec": "digits_distill.yaml", "teacher": "pretrain", "evaluate": {}, "primary": "frechet_distance",
               "scores": ("frechet_distance", "classifier_accuracy")},
    "cei": {"spec": "cei_distill.yaml", "teacher": "diffusion", "evaluate": {}, "primary": "mae_frame_bohr",
            "scores": ("mae_frame_bohr", "mae_kabsch_bohr", "rmsd_bohr", "momentum_rel_error", "coverage_0.9")},
    "climate": {"spec": "climate_distill.yaml", "teacher": "emulator", "evaluate": {"metrics": ["domain"]},
                "primary": "tas/crps",
                "scores": ("tas/crps", "tas/nrmse_total", "tas/spread_skill_ratio", "pr/crps", "pr/nrmse_total")},
}


def grid_spec(domain: str, quick: bool) -> dict:
    """The domain's shipped spec (shrunk with `quick`) with the sample / evaluate grid and one MeanFlow
    student per init."""
    config = DOMAINS[domain]
    spec = yaml.safe_load((REPO / "pipelines" / config["spec"]).read_text())
    spec = shrink(spec) if quick else spec
    stages = [s for s in spec["stages"] if s["stage"] not in ("sample", "evaluate")]
    template = next(s for s in spec["stages"] if s["stage"] == "sample")
    meanflow = next(s for s in stages if s["stage"] == "distill")
    students = {"cmt": "cmt"}
    for init in INITS:
        name = f"meanflow_from_{init}"
        stages.append({**meanflow, "name": name, "init": config["teacher"] if init == "teacher" else init})
        students[name] = name
    stages = [s for s in stages if s is not meanflow]
    runs = [(f"teacher_{k}", config["teacher"], "FlowMatchEulerDiscreteScheduler", k) for k in TEACHER_STEPS]
    runs += [(f"{name}_{k}", model, "FlowMapEulerDiscreteScheduler", k)
             for name, model in students.items() for k in STUDENT_STEPS]
    for init in INITS:  # shorter MeanFlow runs of each init, sampled in CURVE_SAMPLER_STEPS: quality vs steps
        full = next(s for s in stages if s["name"] == f"meanflow_from_{init}")
        for steps in curve_steps(full["steps"]):
            name = f"meanflow_from_{init}_s{steps}"
            stages.append({**full, "name": name, "steps": steps, "checkpoint_every": steps})
            runs.append((f"{name}_{CURVE_SAMPLER_STEPS}", name, "FlowMapEulerDiscreteScheduler", CURVE_SAMPLER_STEPS))
    for label, model, scheduler, steps in runs:
        stages.append({**{k: v for k, v in template.items() if k not in ("name", "model", "scheduler")},
                       "name": f"sample_{label}", "model": model, "scheduler": {"name": scheduler, "steps": steps}})
        stages.append({"name": f"evaluate_{label}", "stage": "evaluate", "samples": f"sample_{label}",
                       **config["evaluate"]})
    spec["stages"] = stages
    return spec


def curve_steps(total: int) -> list[int]:
    """Training lengths of the shorter MeanFlow runs (fractions CURVE_FRACTIONS of the full run)."""
    return [max(1, round(total * f)) for f in CURVE_FRACTIONS]


def steps_to_threshold(scores: dict[str, dict[str, float]], metric: str, total: int) -> dict[str, int | None]:
    """Per MeanFlow init, the fewest training steps whose CURVE_SAMPLER_STEPS-step score is within
    THRESHOLD x the 50-step teacher's (None: not within the full run)."""
    limit = THRESHOLD * scores[f"teacher_{TEACHER_STEPS[-1]}"][metric]
    out = {}
    for init in INITS:
        points = [(steps, scores[f"meanflow_from_{init}_s{steps}_{CURVE_SAMPLER_STEPS}"][metric])
                  for steps in curve_steps(total)]
        points.append((total, scores[f"meanflow_from_{init}_{CURVE_SAMPLER_STEPS}"][metric]))
        out[init] = next((steps for steps, score in sorted(points) if score <= limit), None)
    return out


QUICK_STEPS = 8
"""--quick: every training stage runs this many steps (CEI: also 4 geometries per molecule): a smoke run."""


def shrink(spec: dict) -> dict:
    """The spec of a smoke run: QUICK_STEPS steps per training stage, CEI's data cut down."""
    for stage in spec["stages"]:
        if stage["stage"] in ("pretrain", "midtrain", "distill"):
            stage.update(steps=QUICK_STEPS, checkpoint_every=QUICK_STEPS)
    if "geometries_per_molecule" in spec["data"]:
        spec["data"]["geometries_per_molecule"] = 4
    return spec


def scores_of(domain: str, metrics: dict) -> dict[str, float]:
    """Headline held-out scores of one evaluate stage (CEI: one draw per event)."""
    if domain == "cei":
        return {k: metrics["sample"]["overall"][k] for k in DOMAINS["cei"]["scores"]}
    if domain == "digits":
        return {k: metrics["model"][k] for k in DOMAINS["digits"]["scores"]}
    out = {}
    for key in DOMAINS["climate"]["scores"]:
        var, score = key.split("/")
        out[key] = metrics["model"][var][score]
    return out


def floor_of(domain: str, metrics: dict) -> dict[str, float] | None:
    """The data floor where the evaluation reports one (digits: held-out against train images; climate: internal
    variability between members)."""
    if domain == "digits":
        return {k: metrics["data_floor"].get(k) for k in DOMAINS["digits"]["scores"]}
    if domain != "climate":
        return None
    floor = metrics["internal_variability_floor"]
    return {key: floor[key.split("/")[0]].get(key.split("/")[1]) for key in DOMAINS["climate"]["scores"]}


def loss_history(root: Path, node: dict) -> list[float] | None:
    """The per-step losses a training stage published (None for artifacts written before they were)."""
    store = ArtifactStore(str(root))
    path = store.local_path(store.lookup(node["cache_key"])) / LOSSES_FILE
    return json.loads(path.read_text())["losses"] if path.exists() else None


def convergence(root: Path, nodes: dict[str, dict]) -> dict:
    """Loss spikes of the CMT stage and of each full-length MeanFlow run, from the losses each published.

    Steps to a quality threshold are not derived from the loss: MeanFlow's target contains the network's own
    time derivative, so loss values of different inits are not comparable (on CEI the random init ends lowest).
    """
    histories = {n: loss_history(root, nodes[n]) for n in ("cmt", *(f"meanflow_from_{i}" for i in INITS))}
    if any(h is None for h in histories.values()):
        return {}
    return {"loss_spikes": {n: count_spikes(h, SPIKE) for n, h in histories.items()}}


def cost(nodes: dict[str, dict], teacher: str) -> dict[str, dict[str, float]]:
    """Training wall time and FLOPs of each route over pretraining alone."""
    def part(name: str, key: str) -> float:
        return float(nodes[name]["metrics"][key])

    routes = {"cmt": [teacher, "cmt"], **{f"cmt -> meanflow_from_{i}" if i == "cmt" else f"meanflow_from_{i}":
                                          ([teacher, "cmt"] if i == "cmt" else [teacher]) + [f"meanflow_from_{i}"]
                                          for i in INITS}}
    out = {}
    for key in ("train_wall_s", "train_flops"):
        base = part(teacher, key)
        out[key] = {"pretrain": base, **{r: sum(part(p, key) for p in parts) / base for r, parts in routes.items()}}
    return out


def summarise(runs: list[dict]) -> dict:
    """Mean and std over seeds of every (model, steps) score and cost ratio."""
    def stats(values: list[float]) -> dict[str, float]:
        return {"mean": float(np.mean(values)), "std": float(np.std(values))}

    labels = runs[0]["scores"].keys()
    scores = {label: {k: stats([r["scores"][label][k] for r in runs]) for k in runs[0]["scores"][label]}
              for label in labels}
    cost_keys = runs[0]["cost"]
    costs = {key: {route: stats([r["cost"][key][route] for r in runs]) for route in cost_keys[key]}
             for key in cost_keys}
    per_seed = {key: {name: [r[key][name] for r in runs] for name in runs[0][key]}
                for key in ("steps_to_threshold", "loss_spikes") if key in runs[0]}
    return {"scores": scores, "cost_over_pretrain": costs, **per_seed}


def main() -> None:
    """Run the grid for every seed and write the JSON."""
    options = parser(__doc__)
    options.add_argument("--domain", choices=sorted(DOMAINS), required=True)
    options.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    options.add_argument("--parallel", type=int, default=1, help="runtime.max_parallel_stages of the sweep")
    options.add_argument("--root", type=Path, default=None,
                         help="artifact root, reused as a cache by later runs (default: one under the temp folder)")
    args = open_benchmark(options.parse_args())
    root = args.root or Path(tempfile.gettempdir()) / f"diffpipe_distill_{args.domain}{'_quick' if args.quick else ''}"
    root.mkdir(parents=True, exist_ok=True)
    spec_path = root / "grid.yaml"
    spec_path.write_text(yaml.safe_dump(grid_spec(args.domain, args.quick), sort_keys=False))
    overrides = [f"storage.root={root}", f"runtime.num_threads={args.threads}",
                 f"runtime.max_parallel_stages={args.parallel}"]
    t0, runs, teacher = time.perf_counter(), [], DOMAINS[args.domain]["teacher"]
    done = run_sweep(spec_path, {"runtime.seed": args.seeds}, 1, overrides, root / "sweep")
    for cell in done.report["cells"]:
        seed, nodes = cell["seed"], done.cells[cell["cell"]]
        evaluations = {name.removeprefix("evaluate_"): node["metrics"] for name, node in nodes.items()
                       if node["stage"] == "evaluate"}
        record = {"seed": seed, "scores": {label: scores_of(args.domain, m) for label, m in evaluations.items()},
                  "floor": floor_of(args.domain, next(iter(evaluations.values()))), "cost": cost(nodes, teacher),
                  "final_loss": {n: nodes[n]["metrics"]["final_loss"] for n in nodes
                                 if nodes[n]["stage"] in ("midtrain", "distill")},
                  **convergence(root, nodes)}
        total = nodes["meanflow_from_cmt"]["metrics"]["steps"]
        record["steps_to_threshold"] = steps_to_threshold(record["scores"], DOMAINS[args.domain]["primary"], total)
        for label, values in record["scores"].items():
            print(f"seed {seed} {label:>24}: " + ", ".join(f"{k} {v:.4f}" for k, v in values.items()), flush=True)
        print(f"seed {seed} cost: {json.dumps(record['cost'])}", flush=True)
        runs.append(record)
    result = {"domain": args.domain, "spec": f"pipelines/{DOMAINS[args.domain]['spec']}", "seeds": args.seeds,
              "torch_threads": args.threads, "teacher_steps": TEACHER_STEPS, "student_steps": STUDENT_STEPS,
              "quick_steps": QUICK_STEPS if args.quick else None, "summary": summarise(runs), "runs": runs,
              "benchmark_wall_s": time.perf_counter() - t0}
    write_result(f"distill_{args.domain}", result, args.out)


if __name__ == "__main__":
    main()
