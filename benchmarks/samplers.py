"""Neural samplers against their baselines at equal energy evaluations, 3 seeds, on targets with ground truth.

Each (target, seed) is one pipeline run through `diffpipe run` (data -> one neural_sampler stage per
method -> evaluate), so every number is what the pipeline computes; the metrics are then read back with
`diffpipe status --json`. Equal budgets: each method's `steps` is set so that its training uses the same
number of energy evaluations (rows through log pi; a gradient or Hessian-vector product counts as one):
PIS spends `batch_size` per step, buffer methods `batch_size` per refill (every `resample_every` steps),
NAAS `2 sde_steps batch_size` per refill (scores along the path, then Hessian-vector products in the
adjoint). The evaluations the stage reports are recorded beside the budget.

Adjoint Sampling uses the reference code's sigma_max = 2 (with sigma_max = 3 and 100 Euler steps its first
step is about 1 times the network and the chain diverged; see docs/samplers.md). It is not run on GMM-40,
whose modes need sigma_max ~ 60 and so far more Euler steps per rollout.

`--methods` reruns only some methods of a family and replaces their entries in the existing results
(the other methods' entries, with their own provenance, stay).

Claims tested: PDNS keeps the 40 modes of GMM-40 where the reverse-KL sampler (PIS) drops modes; NAAS
needs no importance weights and matches or beats Adjoint Sampling (many-well MW54, exact mode weights
1/32; DW-4 against a checked MCMC ground truth: energy and interatomic-distance histograms); MDNS estimates
the Ising log Z across temperatures including the critical one (4x4, h = 0, beta 0.28 / 0.4407 / 0.6,
exact log Z by transfer matrix) and the Potts log Z (q = 3, 4x4, beta 0.5 and the critical 1.005; Dask
Metropolis ground truth, exact log Z). At and below the critical point MDNS also runs with its warm start
(`mdns_warm`: the first third of the steps at beta 0.28 for Ising, 0.5 for Potts), as the MDNS code does.
Small budgets: the machine is shared (2 cores, 1 thread per process), so these are far below the papers'.

    python benchmarks/samplers.py --seeds 0 1 2 [--families gmm40 many_well dw4 ising potts] [--budget X]

Prints and writes benchmarks/results/samplers.json (families run separately are merged; each family
records its own commit, budget, wall time and machine load).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from datetime import UTC, datetime
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parents[1]
CONTINUOUS_MODEL = {"arch": "time_mlp", "hidden": 128, "layers": 3}
LATTICE_MODEL = {"arch": "mdlm", "d_model": 32, "num_layers": 2, "num_heads": 2}


def buffer_method(method: str, budget: int, batch: int, every: int, **options) -> dict:
    """A buffer-based method with steps set so that its refills spend `budget` energy evaluations."""
    return {"method": method, "batch_size": batch, "resample_every": every, "samples_per_step": batch,
            "steps": every * budget // batch, **options}


def lattice_methods(budget: int, warm_beta: float | None = None) -> dict[str, dict]:
    """MDNS and PDNS on a lattice with the same buffer schedule; with `warm_beta`, also MDNS with its
    high-temperature warm start for the first third of the steps."""
    options = {"batch_size": 64, "resample_every": 10, "replicates": 4, "steps": 10 * budget // 64, "lr": 1e-3}
    methods = {"mdns": {"method": "mdns", **options}, "pdns": {"method": "pdns", **options}}
    if warm_beta is not None:
        methods["mdns_warm"] = {"method": "mdns", **options, "warm_start_beta": warm_beta,
                                "warm_start_steps": options["steps"] // 3}
    return methods


def naas(budget: int, prior_std: float, sigma: float) -> dict:
    """NAAS with steps set so that its refills (scores and Hessian-vector products) spend `budget`."""
    return {"method": "naas", "batch_size": 64, "sde_steps": 50, "resample_every": 50, "samples_per_step": 512,
            "steps": 50 * budget // (2 * 50 * 64), "prior_std": prior_std, "sigma": sigma}


def families(budgets: dict[str, int]) -> dict[str, dict]:
    """Target family -> data spec, model and the methods compared (name -> stage options)."""
    gmm, mw, dw4 = budgets["gmm40"], budgets["many_well"], budgets["dw4"]
    return {
        "gmm40": {"data": {"kind": "energy", "target": {"kind": "gmm"}, "num_reference": 2000},
                  "model": CONTINUOUS_MODEL, "methods": {
                      "pdns": buffer_method("pdns", gmm, 512, 20, sigma=30.0),
                      "pis": {"method": "pis", "batch_size": 256, "steps": gmm // 256, "sigma": 30.0}}},
        "many_well": {"data": {"kind": "energy", "target": {"kind": "many_well"}, "num_reference": 2000},
                      "model": CONTINUOUS_MODEL, "methods": {
                          "naas": naas(mw, 2.0, 1.5),
                          "adjoint": buffer_method("adjoint", mw, 512, 20, sigma_max=2.0),
                          "pdns": buffer_method("pdns", mw, 512, 20, sigma=2.0),
                          "pis": {"method": "pis", "batch_size": 256, "steps": mw // 256, "sigma": 2.0}}},
        "dw4": {"data": {"kind": "energy", "target": {"kind": "dw4"}, "num_reference": 2000,
                         "mcmc": {"chains": 4, "walkers_per_chain": 64, "burn_in": 5000, "sweeps": 15000,
                                  "thin": 25, "step_size": 0.7}},
                "model": CONTINUOUS_MODEL, "methods": {
                    "naas": naas(dw4, 2.0, 1.5),
                    "adjoint": buffer_method("adjoint", dw4, 512, 20, sigma_max=2.0),
                    "pdns": buffer_method("pdns", dw4, 512, 20, sigma=2.0),
                    "pis": {"method": "pis", "batch_size": 256, "steps": dw4 // 256, "sigma": 2.0}}},
        **{f"ising_beta{beta}": {
            "data": {"kind": "energy", "target": {"kind": "ising", "size": 4, "beta": beta}, "num_reference": 4000},
            "model": LATTICE_MODEL, "methods": lattice_methods(budgets["ising"], None if beta < 0.3 else 0.28)}
           for beta in (0.28, 0.4407, 0.6)},
        **{f"potts_beta{beta}": {
            "data": {"kind": "energy", "target": {"kind": "potts", "q": 3, "size": 4, "beta": beta},
                     "num_reference": 4000, "mcmc": {"chains": 4, "walkers_per_chain": 64, "burn_in": 1000,
                                                     "sweeps": 4000}},
            "model": LATTICE_MODEL, "methods": lattice_methods(budgets["potts"], None if beta < 0.6 else 0.5)}
           for beta in (0.5, 1.005)},
    }


def spec_for(family: str, config: dict, seeds: list[int], root: Path) -> dict:
    """The pipeline of one family: a neural_sampler (stage seed = replicate) and an evaluate stage per
    method and seed, so that one run (one Prefect start, one data build) covers every seed."""
    stages = []
    for seed in seeds:
        for name, options in config["methods"].items():
            stages.append({"name": f"{name}_s{seed}", "stage": "neural_sampler", "num_samples": 2000,
                           "checkpoint_every": 10_000, "log_every": 100, "seed": seed, **options})
            stages.append({"name": f"evaluate_{name}_s{seed}", "stage": "evaluate", "samples": f"{name}_s{seed}"})
    return {"name": f"bench_{family}", "data": config["data"], "model": config["model"], "stages": stages,
            "runtime": {"device": "cpu", "seed": 0, "num_threads": 1}, "storage": {"root": str(root)}}


def run_pipeline(spec: dict, workdir: Path) -> dict[str, dict]:
    """`diffpipe run` the spec, then read every stage's metrics back (stage name -> metrics)."""
    path = workdir / f"{spec['name']}.yaml"
    path.write_text(yaml.safe_dump(spec))
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}
    cli = [sys.executable, "-m", "diffpipe.flows.cli"]
    done = subprocess.run([*cli, "run", str(path)], env=env, capture_output=True, text=True)
    if done.returncode != 0:
        raise RuntimeError(f"{path.name} failed:\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}")
    status = subprocess.run([*cli, "status", str(path), "--json"], env=env, capture_output=True, text=True, check=True)
    return {s["name"]: s["metrics"] for s in json.loads(status.stdout)["stages"]}


KEYS = ("log_z_error", "log_z_estimate", "elbo", "ess", "modes_covered", "modes_resolved", "fraction_in_modes",
        "mode_entropy", "mode_weight_error",
        "mode_weight_error_reweighted", "energy_distance", "wasserstein2", "sliced_wasserstein", "energy_w1",
        "distance_w1", "abs_magnetisation_error", "abs_magnetisation_error_reweighted", "energy_per_site_error",
        "energy_per_site_error_reweighted", "p_magnetisation_positive", "abs_magnetisation",
        "abs_magnetisation_reference")


def summarise(runs: list[dict]) -> dict:
    """Mean and standard deviation over seeds of every metric present in all runs."""
    out = {}
    for key in (*KEYS, "energy_evals", "train_wall_s"):
        values = [r[key] for r in runs if isinstance(r.get(key), int | float)]
        if len(values) == len(runs):
            out[key] = {"mean": statistics.fmean(values),
                        "std": statistics.stdev(values) if len(values) > 1 else 0.0, "per_seed": values}
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--families", nargs="+", default=["gmm40", "many_well", "dw4", "ising", "potts"])
    parser.add_argument("--root", default=str(REPO / "benchmarks" / "artifacts" / "samplers"))
    parser.add_argument("--methods", nargs="+", help="run only these methods (their entries replace the old ones)")
    parser.add_argument("--budget", type=float, default=1.0, help="multiplies the energy budget of the families run")
    args = parser.parse_args()
    budgets = {k: int(v * args.budget) for k, v in
               {"gmm40": 51_200, "many_well": 51_200, "dw4": 51_200, "ising": 1_920, "potts": 1_920}.items()}
    root, work = Path(args.root), Path(args.root) / "specs"
    work.mkdir(parents=True, exist_ok=True)
    configs = {f: c for f, c in families(budgets).items() if any(f.startswith(w) for w in args.families)}
    if args.methods:
        configs = {f: {**c, "methods": {m: o for m, o in c["methods"].items() if m in args.methods}}
                   for f, c in configs.items()}
    results: dict = {}
    for family, config in configs.items():
        t0, load0 = time.perf_counter(), os.getloadavg()[0]
        metrics = run_pipeline(spec_for(family, config, args.seeds, root), work)
        print(f"{family}: {time.perf_counter() - t0:.0f} s", flush=True)
        per_method = {m: [{**metrics[f"evaluate_{m}_s{s}"], "energy_evals": metrics[f"{m}_s{s}"]["energy_evals"],
                           "train_wall_s": metrics[f"{m}_s{s}"]["train_wall_s"]} for s in args.seeds]
                      for m in config["methods"]}
        budget = budgets[next(k for k in budgets if family.startswith(k))]
        results[family] = {"methods": {m: {"options": config["methods"][m], **summarise(runs)}
                                       for m, runs in per_method.items()},
                           "budget_energy_evals": budget, "budget_factor": args.budget, "seeds": args.seeds,
                           "wall_s": time.perf_counter() - t0, "data": config["data"], "model": config["model"],
                           "data_metrics": metrics["data"], **provenance(load0)}
        for m, summary in results[family]["methods"].items():
            shown = {k: round(v["mean"], 4) for k, v in summary.items() if isinstance(v, dict) and "mean" in v}
            print(f"  {family:18s} {m:8s} {shown}", flush=True)
    out = REPO / "benchmarks" / "results" / "samplers.json"
    previous = json.loads(out.read_text()) if out.exists() else {}
    merged = previous.get("results", {})
    for family, entry in results.items():
        if args.methods and family in merged:  # a partial rerun: keep the other methods and their provenance
            entry = {**merged[family], "methods": {**merged[family]["methods"], **{
                m: {**v, "rerun": {k: entry[k] for k in ("commit", "date", "wall_s", "load_average_start",
                                                         "load_average_end", "budget_energy_evals")}}
                for m, v in entry["methods"].items()}}}
        merged[family] = entry
    doc = {"benchmark": "samplers", "results": merged, **provenance(None),
           "note": "each family carries its own commit, date, load and budget; wall times are from a shared "
                   "2-core machine (1 thread per process) and only their ratios within a family mean anything"}
    out.write_text(json.dumps(doc, indent=2) + "\n")
    print(f"wrote {out}")


def provenance(load_at_start: float | None) -> dict:
    """Commit (and whether the tree had edits), date, library versions, threads, machine load."""
    from importlib.metadata import version

    def git(*cmd: str) -> str:
        return subprocess.run(["git", *cmd], cwd=REPO, capture_output=True, text=True).stdout.strip()

    out = {"commit": git("rev-parse", "HEAD"), "tree_dirty": bool(git("status", "--porcelain", "--", "diffpipe")),
           "date": datetime.now(UTC).isoformat(), "device": "cpu", "threads": 1, "cpus": os.cpu_count(),
           "python": platform.python_version(), "host": platform.node(),
           "versions": {p: version(p) for p in ("torch", "diffusers", "prefect", "dask", "distributed", "zarr",
                                                "xarray", "scipy")},
           "load_average_end": os.getloadavg()[0]}
    if load_at_start is not None:
        out["load_average_start"] = load_at_start
    return out


if __name__ == "__main__":
    main()
