"""Neural samplers against their baselines at equal energy evaluations, 3 seeds, on targets with ground truth.

One `diffpipe sweep` per target family through the shared harness (benchmarks/harness.py): the family's
shipped spec (`pipelines/samplers_*.yaml`; Potts reuses the Ising one) with its stages cut to one
`neural_sampler` stage named `sampler` and its `evaluate` stage, swept over the sampler block (method and
options) x the sampler's `seed`. Every cell of a family shares one artifact root, so the data stage (exact
samples, or the Dask MCMC ground truth of DW-4 and Potts) is built once and every method is scored against
the same ground truth; every number is what the pipeline's stages computed, read back from the store with
`diffpipe status`. Cells run one stage at a time (`runtime.max_parallel_stages=1`, one thread).

Equal budgets: each method's `steps` is set so that its training uses the same number of energy evaluations
(rows through log pi; a gradient or Hessian-vector product counts as one): PIS spends `batch_size` per step,
buffer methods `batch_size` per refill (every `resample_every` steps), NAAS `2 sde_steps batch_size` per
refill (scores along the path, then Hessian-vector products in the adjoint). The evaluations each stage
reports are recorded beside the budget.

Claims tested: PDNS keeps the 40 modes of GMM-40 where the reverse-KL sampler (PIS) drops modes; NAAS
needs no importance weights and matches or beats Adjoint Sampling (many-well MW54, exact mode weights
1/32; DW-4 against a checked MCMC ground truth: energy and interatomic-distance histograms); MDNS estimates
the Ising log Z across temperatures including the critical one (4x4, h = 0, beta 0.28 / 0.4407 / 0.6,
exact log Z by transfer matrix) and the Potts log Z (q = 3, 4x4, beta 0.5 and the critical 1.005; Dask
Metropolis ground truth, exact log Z). At and below the critical point MDNS also runs with its warm start
(`mdns_warm`: the first third of the steps at beta 0.28 for Ising, 0.5 for Potts), as the MDNS code does.
Small budgets: the machine is shared (2 cores, 1 thread per process), so these are far below the papers'.

    python benchmarks/samplers.py [--seeds 0 1 2] [--families gmm40 many_well dw4 ising potts] [--budget X]
    python benchmarks/samplers.py --quick          # one seed, two small families at 2% budget, to a temp folder

Writes benchmarks/results/samplers.json; families run separately are merged (each family records its own
budget, overrides, sweep wall time and environment).
"""

from __future__ import annotations

import json
import statistics
import tempfile
import time
from pathlib import Path

from harness import REPO, environment, open_benchmark, parser, run_sweep, write_result

SPECS = {"gmm40": "samplers_gmm40.yaml", "many_well": "samplers_many_well.yaml", "dw4": "samplers_dw4.yaml",
         "ising": "samplers_ising.yaml", "potts": "samplers_ising.yaml"}
"""Family -> the shipped spec its sweep starts from (Potts: the Ising spec with the Potts target)."""
STAGE = "stages.sampler"
BUDGETS = {"gmm40": 51_200, "many_well": 51_200, "dw4": 51_200, "ising": 1_920, "potts": 1_920}
"""Energy evaluations per method and seed at --budget 1."""
CONTINUOUS_MODEL = {"arch": "time_mlp", "hidden": 128, "layers": 3}
LATTICE_MODEL = {"arch": "mdlm", "d_model": 32, "num_layers": 2, "num_heads": 2}


def buffer_method(method: str, budget: int, batch: int, every: int, **options) -> dict:
    """A buffer-based method with steps set so that its refills spend `budget` energy evaluations."""
    return {"method": method, "batch_size": batch, "resample_every": every, "samples_per_step": batch,
            "steps": max(1, every * budget // batch), **options}


def lattice_methods(budget: int, warm_beta: float | None = None) -> dict[str, dict]:
    """MDNS and PDNS on a lattice with the same buffer schedule; with `warm_beta`, also MDNS with its
    high-temperature warm start for the first third of the steps."""
    steps = max(3, 10 * budget // 64)
    options = {"batch_size": 64, "resample_every": 10, "replicates": 4, "steps": steps, "lr": 1e-3}
    methods = {"mdns": {"method": "mdns", **options}, "pdns": {"method": "pdns", **options}}
    if warm_beta is not None:
        methods["mdns_warm"] = {"method": "mdns", **options, "warm_start_beta": warm_beta,
                                "warm_start_steps": steps // 3}
    return methods


def naas(budget: int, prior_std: float, sigma: float) -> dict:
    """NAAS with steps set so that its refills (scores and Hessian-vector products) spend `budget`."""
    return {"method": "naas", "batch_size": 64, "sde_steps": 50, "resample_every": 50, "samples_per_step": 512,
            "steps": max(1, 50 * budget // (2 * 50 * 64)), "prior_std": prior_std, "sigma": sigma}


def pis(budget: int, sigma: float) -> dict:
    """PIS with one rollout of 256 trajectories per step."""
    return {"method": "pis", "batch_size": 256, "steps": max(1, budget // 256), "sigma": sigma}


def families(budgets: dict[str, int]) -> dict[str, dict]:
    """Family -> the sweeps' data specs (one per target parameter), model and methods (tag -> sampler options)."""
    gmm, mw, dw4 = budgets["gmm40"], budgets["many_well"], budgets["dw4"]
    particle_methods = {"naas": naas(dw4, 2.0, 1.5),
                        "adjoint": buffer_method("adjoint", dw4, 512, 20, sigma_max=2.0),
                        "pdns": buffer_method("pdns", dw4, 512, 20, sigma=2.0), "pis": pis(dw4, 2.0)}
    return {
        "gmm40": {"data": {"kind": "energy", "target": {"kind": "gmm"}, "num_reference": 2000},
                  "model": CONTINUOUS_MODEL, "methods": {"pdns": buffer_method("pdns", gmm, 512, 20, sigma=30.0),
                                                         "pis": pis(gmm, 30.0)}},
        "many_well": {"data": {"kind": "energy", "target": {"kind": "many_well"}, "num_reference": 2000},
                      "model": CONTINUOUS_MODEL, "methods": {
                          "naas": naas(mw, 2.0, 1.5), "adjoint": buffer_method("adjoint", mw, 512, 20, sigma_max=2.0),
                          "pdns": buffer_method("pdns", mw, 512, 20, sigma=2.0), "pis": pis(mw, 2.0)}},
        "dw4": {"data": {"kind": "energy", "target": {"kind": "dw4"}, "num_reference": 2000,
                         "mcmc": {"chains": 4, "walkers_per_chain": 64, "burn_in": 5000, "sweeps": 15000,
                                  "thin": 25, "step_size": 0.7}},
                "model": CONTINUOUS_MODEL, "methods": particle_methods},
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


def sampler_block(options: dict) -> dict:
    """The `sampler` stage of a cell: the method's options, 2000 published samples."""
    return {"name": "sampler", "stage": "neural_sampler", "num_samples": 2000, "checkpoint_every": 10_000,
            "log_every": 100, **options}


def overrides_for(config: dict, root: Path) -> list[str]:
    """`--set` options: the family's data and model, the stages cut to `sampler` + `evaluate`, one stage and
    one thread at a time, artifacts under `root`."""
    first = sampler_block(next(iter(config["methods"].values())))
    stages = [first, {"name": "evaluate", "stage": "evaluate", "samples": "sampler"}]
    return [f"storage.root={root}", "runtime.device=cpu", "runtime.max_parallel_stages=1", "runtime.num_threads=1",
            f"data={json.dumps(config['data'])}", f"model={json.dumps(config['model'])}",
            f"stages={json.dumps(stages)}"]


KEYS = ("log_z_error", "log_z_estimate", "elbo", "ess", "modes_covered", "modes_resolved", "fraction_in_modes",
        "mode_entropy", "mode_weight_error", "mode_weight_error_reweighted", "energy_distance", "wasserstein2",
        "sliced_wasserstein", "energy_w1", "distance_w1", "abs_magnetisation_error",
        "abs_magnetisation_error_reweighted", "energy_per_site_error", "energy_per_site_error_reweighted",
        "p_magnetisation_positive", "abs_magnetisation", "abs_magnetisation_reference")


def summarise(runs: list[dict]) -> dict:
    """Mean and standard deviation over seeds of every metric present in all runs."""
    out = {}
    for key in (*KEYS, "energy_evals", "train_wall_s"):
        values = [r[key] for r in runs if isinstance(r.get(key), int | float)]
        if values and len(values) == len(runs):
            out[key] = {"mean": statistics.fmean(values),
                        "std": statistics.stdev(values) if len(values) > 1 else 0.0, "per_seed": values}
    return out


def run_family(family: str, config: dict, seeds: list[int], root: Path, budget: int) -> dict:
    """Sweep the family's methods x seeds; per method, the evaluate metrics (with the sampler's energy count and
    train wall time) per seed and summarised."""
    spec = REPO / "pipelines" / SPECS[family.split("_beta")[0]]
    blocks = {tag: sampler_block(options) for tag, options in config["methods"].items()}
    tags = {json.dumps(block, sort_keys=True): tag for tag, block in blocks.items()}
    overrides = overrides_for(config, root / family)
    done = run_sweep(spec, {STAGE: list(blocks.values()), f"{STAGE}.seed": seeds}, 1, overrides,
                     root / family / "sweep")
    runs: dict[str, list[dict]] = {tag: [] for tag in blocks}
    for row in done.report["cells"]:
        block = {k: v for k, v in row["params"][STAGE].items()}
        tag, stages = tags[json.dumps(block, sort_keys=True)], done.cells[row["cell"]]
        trained = stages["sampler"]["metrics"]
        runs[tag].append({**stages["evaluate"]["metrics"], "seed": row["params"][f"{STAGE}.seed"],
                          "energy_evals": trained["energy_evals"], "train_wall_s": trained.get("train_wall_s")})
    data_metrics = next(iter(done.cells.values()))["data"]["metrics"]
    methods = {tag: {"options": config["methods"][tag], **summarise(sorted(rs, key=lambda r: r["seed"]))}
               for tag, rs in runs.items()}
    for tag, summary in methods.items():
        shown = {k: round(v["mean"], 4) for k, v in summary.items() if isinstance(v, dict) and "mean" in v}
        print(f"  {family:18s} {tag:10s} {shown}", flush=True)
    return {"spec": f"pipelines/{spec.name}", "overrides": overrides, "methods": methods, "seeds": seeds,
            "budget_energy_evals": budget, "data_metrics": data_metrics, "sweep_wall_s": done.wall_s,
            "environment": environment()}


def main() -> None:
    """Sweep every selected family; print and merge into samplers.json."""
    options = parser(__doc__)
    options.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2], help="sampler stage seeds")
    options.add_argument("--families", nargs="+", default=["gmm40", "many_well", "dw4", "ising", "potts"],
                         help="family prefixes (ising_beta0.6 runs one temperature)")
    options.add_argument("--budget", type=float, default=None, help="multiplies the energy budgets (--quick 0.02)")
    options.add_argument("--root", type=Path, default=None, help="artifact root, reused as a cache by later runs")
    args = open_benchmark(options.parse_args())
    factor = args.budget or (0.02 if args.quick else 1.0)
    seeds = args.seeds[:1] if args.quick else args.seeds
    selected = ["many_well", "ising_beta0.28"] if args.quick else args.families
    budgets = {k: max(64, int(v * factor)) for k, v in BUDGETS.items()}
    root = args.root or Path(tempfile.gettempdir()) / ("diffpipe_samplers_quick" if args.quick else
                                                       "diffpipe_samplers")
    configs = {f: c for f, c in families(budgets).items() if any(f.startswith(s) for s in selected)}
    path = args.out / "samplers.json"
    everything = json.loads(path.read_text()) if path.exists() else {}
    results = everything.get("results", {})
    for family, config in configs.items():
        t0 = time.perf_counter()
        results[family] = {**run_family(family, config, seeds, root, budgets[family.split("_beta")[0]]),
                           "budget_factor": factor, "command_options": {k: str(v) for k, v in vars(args).items()}}
        print(f"{family}: {time.perf_counter() - t0:.0f} s", flush=True)
        write_result("samplers", {"benchmark": "samplers", "results": results}, args.out)


if __name__ == "__main__":
    main()
