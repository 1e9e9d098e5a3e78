"""SPF vs the single-level flow emulator vs the UNet and pattern scaling on held-out ssp245, over seeds.

Three `diffpipe sweep`s over `runtime.seed` through the shared harness (benchmarks/harness.py), on one
artifact root:

1. `pipelines/climate.yaml` (flow-matching emulator, deterministic UNet) on the yearly store;
2. `pipelines/climate_spf.yaml` (the two-level Spatiotemporal Pyramid Flow, decadal -> yearly) on the same
   data, which the first sweep built (the data stage is cached: its counts are in the JSON);
3. the SPF spec on the builder's monthly store (`months_per_year: 12`) with a decadal -> yearly -> monthly
   pyramid: months are sampled directly and scored as months (and their yearly means as years).

Reported per seed and as mean +- std over seeds, every number read from the spec's own sample and evaluate
stages (`diffpipe status`):

- yearly fair CRPS and RMSE of the ensemble mean (`skill_rmse`) per variable on 2080-2100, spread/skill,
  ClimateBench NRMSE total; pattern scaling and the internal-variability floor beside them; monthly CRPS,
  RMSE and spread/skill of the monthly SPF with the monthly floor;
- sampling wall time per simulated year (all members) of each sampler;
- the SPF / UNet and SPF / flow CRPS ratios, next to SPF's Table 1 (0.238 / 0.396 = 0.60 at 100M parameters).

Scores are in physical units (K, mm/day) of our offline builder's data, not SPF's standardised
ClimateBench variables: only the ratios compare with the paper.

    python benchmarks/climate_spf.py                     # quick CPU profile (120 training steps, 3 seeds)
    python benchmarks/climate_spf.py --profile full      # GPU: climate_full.yaml + climate_spf_full.yaml as written
    python benchmarks/climate_spf.py --quick             # one seed, 8 steps, to a temp folder
"""

from __future__ import annotations

import statistics
import tempfile
from pathlib import Path

from harness import REPO, open_benchmark, parser, run_sweep, stage_counts, write_result

STEPS = {"quick": 120, "smoke": 8}
MONTHLY = ["data.source.months_per_year=12",
           'model.levels=[{"space_factor": 4, "period_years": 10}, {"space_factor": 1, "period_years": 1}, '
           '{"space_factor": 1, "period_months": 1}]']
"""The monthly arm: the builder's monthly store under a decadal -> yearly -> monthly pyramid."""
SCORES = ("crps", "skill_rmse", "spread_skill_ratio", "nrmse_total")
ANCHOR = {"spf_yearly_crps": 0.238, "unet_yearly_crps": 0.396, "spf_over_unet": 0.238 / 0.396,
          "spf_s": 3, "autoregressive_pyramid_s": 19, "source": "SPF (arXiv 2512.02268) Table 1, 100M parameters"}


def arms(profile: str) -> dict[str, tuple[str, list[str]]]:
    """Arm name -> (spec, overrides) of each sweep of the profile."""
    if profile == "full":
        return {"yearly": ("climate_full.yaml", []), "spf": ("climate_spf_full.yaml", [])}
    steps = STEPS[profile]
    short = [*training("emulator", steps), *training("unet", steps), "stages.emulator_samples.scheduler.steps=10"]
    spf = [*training("spf", steps), "stages.spf_samples.scheduler.steps=10"]
    return {"yearly": ("climate.yaml", short), "spf": ("climate_spf.yaml", spf),
            "spf_monthly": ("climate_spf.yaml", [*spf, *MONTHLY])}


def training(stage: str, steps: int) -> list[str]:
    """Overrides training `stage` for `steps` steps (one checkpoint at the end, warm-up within the steps)."""
    return [f"stages.{stage}.steps={steps}", f"stages.{stage}.checkpoint_every={steps}",
            f"stages.{stage}.warmup_steps={min(50, steps // 4)}"]


def cell_scores(stages: dict[str, dict], arm: str) -> tuple[dict, dict]:
    """One cell's per-model yearly (and monthly) scores and each sampler's wall time per simulated year."""
    models: dict[str, dict] = {}
    sampling: dict[str, float] = {}
    for name, entry in stages.items():
        m = entry["metrics"]
        if entry["stage"] == "sample":
            per_year = m.get("sampling_s_per_simulated_year", m["sampling_wall_s"] / m["years"])
            sampling[name if arm != "spf_monthly" else f"{name}_monthly"] = per_year
        if entry["stage"] == "evaluate":
            model = name.removeprefix("evaluate_") + ("_monthly" if arm == "spf_monthly" else "")
            models[model] = m["model"]
            models["pattern_scaling"], models["floor"] = m["pattern_scaling"], m["internal_variability_floor"]
            if "monthly" in m:
                models[f"{model}_months"] = m["monthly"]["model"]
                models["floor_months"] = m["monthly"]["internal_variability_floor"]
    table = {model: {var: {s: scores.get(s) for s in SCORES if s in scores} for var, scores in per_var.items()}
             for model, per_var in models.items()}
    return table, sampling


def mean_std(values: list[float]) -> dict[str, float]:
    """Mean and sample standard deviation (0 for one value)."""
    return {"mean": statistics.fmean(values), "std": statistics.stdev(values) if len(values) > 1 else 0.0}


def summarise(runs: list[dict]) -> dict[str, object]:
    """Mean +- std over seeds of every score, the SPF / baseline CRPS ratios and the sampling times."""
    first = runs[0]["scores"]
    scores = {model: {var: {s: mean_std([r["scores"][model][var][s] for r in runs])
                            for s, v in per_score.items() if v is not None}
                      for var, per_score in per_var.items()}
              for model, per_var in first.items()}
    ratios = {}
    for var in first["spf"]:
        spf = [r["scores"]["spf"][var]["crps"] for r in runs]
        for base in ("unet", "emulator", "pattern_scaling"):
            ratios[f"{var}_spf_over_{base}"] = mean_std([a / r["scores"][base][var]["crps"]
                                                         for a, r in zip(spf, runs, strict=True)])
    times = {k: mean_std([r["sampling_s_per_simulated_year"][k] for r in runs])
             for k in runs[0]["sampling_s_per_simulated_year"]}
    return {"scores": scores, "crps_ratios": ratios, "sampling_s_per_simulated_year": times}


def main() -> None:
    """Sweep every arm of the profile over the seeds on one root; print and write the JSON."""
    options = parser(__doc__)
    options.add_argument("--profile", choices=("quick", "full"), default="quick")
    options.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    options.add_argument("--root", type=Path, default=None, help="artifact root (default: a fresh temp folder)")
    args = open_benchmark(options.parse_args())
    profile = "smoke" if args.quick else args.profile
    seeds = args.seeds[:1] if args.quick else args.seeds
    root = args.root or Path(tempfile.mkdtemp(prefix="climate_spf_"))
    per_seed: dict[int, dict] = {s: {"seed": s, "scores": {}, "sampling_s_per_simulated_year": {}} for s in seeds}
    sweeps = {}
    for arm, (spec, overrides) in arms(profile).items():
        done = run_sweep(REPO / "pipelines" / spec, {"runtime.seed": seeds}, 1,
                         [f"storage.root={root}", *overrides], root / "work" / arm)
        sweeps[arm] = {"spec": f"pipelines/{spec}", "overrides": overrides, "wall_s": done.wall_s,
                       "cpu_s": done.cpu_s, "stage_counts": stage_counts(done.report)}
        for row in done.report["cells"]:
            table, sampling = cell_scores(done.cells[row["cell"]], arm)
            run = per_seed[row["seed"]]
            run["scores"].update(table)
            run["sampling_s_per_simulated_year"].update(sampling)
        print(f"{arm}: {done.wall_s:.0f} s, {sweeps[arm]['stage_counts']}", flush=True)
    runs = [per_seed[s] for s in seeds]
    name = "climate_spf" if profile != "full" else "climate_spf_full"
    write_result(name, {"benchmark": "climate_spf", "profile": profile, "seeds": seeds, "anchor": ANCHOR,
                        "sweeps": sweeps, "summary": summarise(runs), "runs": runs}, args.out)


if __name__ == "__main__":
    main()
