"""SPF vs the single-level flow emulator vs the UNet and pattern scaling on held-out ssp245, over seeds.

Runs `pipelines/climate.yaml` (flow-matching emulator, deterministic UNet) and `pipelines/climate_spf.yaml`
(the two-level Spatiotemporal Pyramid Flow) through the real CLI for each seed, in one artifact root per
seed (so both share the data artifact), and reports per seed and as mean +- std over seeds:

- yearly fair CRPS and RMSE of the ensemble mean (`skill_rmse`) per variable on 2080-2100, spread/skill,
  ClimateBench NRMSE total; pattern scaling and the internal-variability floor beside them;
- sampling wall time per simulated year (all members) of each sampler;
- the SPF / UNet and SPF / flow CRPS ratios, next to SPF's Table 1 (0.238 / 0.396 = 0.60 at 100M parameters).

Scores are in physical units (K, mm/day) of our offline builder's data, not SPF's standardised
ClimateBench variables: only the ratios compare with the paper. Monthly fields: the builder writes yearly
means only and the emulators train on yearly stores (monthly files ingest for the loaders), so no monthly
level is sampled or scored.

    python benchmarks/climate_spf.py                     # quick CPU profile (120 training steps, 3 seeds)
    python benchmarks/climate_spf.py --profile full      # GPU: climate_full.yaml + climate_spf_full.yaml as written
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import tempfile
import time
from pathlib import Path

from climate_quality import run_pipeline

REPO = Path(__file__).resolve().parents[1]
RESULTS = Path(__file__).parent / "results" / "climate_spf.json"
PROFILES = {
    "quick": {"specs": ("pipelines/climate.yaml", "pipelines/climate_spf.yaml"),
              "overrides": ["stages.emulator.steps=120", "stages.unet.steps=120", "stages.spf.steps=120",
                            "stages.emulator_samples.scheduler.steps=10", "stages.spf_samples.scheduler.steps=10"]},
    "full": {"specs": ("pipelines/climate_full.yaml", "pipelines/climate_spf_full.yaml"), "overrides": []},
}
SCORES = ("crps", "skill_rmse", "spread_skill_ratio", "nrmse_total")
ANCHOR = {"spf_yearly_crps": 0.238, "unet_yearly_crps": 0.396, "spf_over_unet": 0.238 / 0.396,
          "spf_s": 3, "autoregressive_pyramid_s": 19, "source": "SPF (arXiv 2512.02268) Table 1, 100M parameters"}


def applicable(overrides: list[str], spec: str) -> list[str]:
    """The overrides naming stages of `spec` (each spec has its own stage names)."""
    names = {line.split("name:")[1].strip() for line in (REPO / spec).read_text().splitlines() if "- name:" in line}
    return [o for o in overrides if o.split(".")[1] in names]


def seed_run(profile: dict, seed: int) -> dict[str, object]:
    """Both pipelines at one seed: per-model scores and sampling times."""
    root = Path(tempfile.mkdtemp(prefix=f"climate_spf_{seed}_"))
    models: dict[str, dict] = {}
    sampling: dict[str, float] = {}
    wall = {}
    for spec in profile["specs"]:
        overrides = [*applicable(profile["overrides"], spec), f"runtime.seed={seed}"]
        summary, wall[spec], _ = run_pipeline(REPO / spec, root, overrides)
        for node in summary:
            m = node["metrics"]
            if node["stage"] == "sample":
                sampling[node["name"]] = m.get("sampling_s_per_simulated_year", m["sampling_wall_s"] / m["years"])
            if node["stage"] == "evaluate":
                name = node["name"].removeprefix("evaluate_")
                models[name] = m["model"]
                models["pattern_scaling"] = m["pattern_scaling"]
                models["floor"] = m["internal_variability_floor"]
    table = {model: {var: {s: per_var[var].get(s) for s in SCORES} for var in per_var}
             for model, per_var in models.items()}
    return {"seed": seed, "scores": table, "sampling_s_per_simulated_year": sampling, "pipeline_wall_s": wall}


def summarise(runs: list[dict]) -> dict[str, object]:
    """Mean and std over seeds of every score, and the CRPS ratios against the anchor."""
    out: dict[str, object] = {}
    first = runs[0]["scores"]
    for model, variables in first.items():
        out[model] = {}
        for var, scores in variables.items():
            out[model][var] = {}
            for s in scores:
                values = [r["scores"][model][var][s] for r in runs if r["scores"][model][var][s] is not None]
                if values:
                    out[model][var][s] = {"mean": statistics.fmean(values),
                                          "std": statistics.stdev(values) if len(values) > 1 else 0.0}
    ratios = {}
    for var in first["spf"]:
        spf = [r["scores"]["spf"][var]["crps"] for r in runs]
        for base in ("unet", "emulator", "pattern_scaling"):
            ratio = [a / r["scores"][base][var]["crps"] for a, r in zip(spf, runs, strict=True)]
            ratios[f"{var}_spf_over_{base}_crps"] = {"mean": statistics.fmean(ratio),
                                                     "std": statistics.stdev(ratio) if len(ratio) > 1 else 0.0}
    times = {k: statistics.fmean(r["sampling_s_per_simulated_year"][k] for r in runs)
             for k in runs[0]["sampling_s_per_simulated_year"]}
    return {"scores": out, "crps_ratios": ratios, "sampling_s_per_simulated_year_mean": times}


def environment() -> dict[str, object]:
    """Commit, date, threads and load of the run."""
    commit = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True, cwd=REPO).stdout.strip()
    return {"commit": commit, "date": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), "cpu_count": os.cpu_count(),
            "load_average": os.getloadavg(), "torch_threads": 1}


def main() -> None:
    """Run every seed of the chosen profile and write the JSON."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--profile", choices=sorted(PROFILES), default="quick")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args()
    profile = PROFILES[args.profile]
    out = args.out or (RESULTS if args.profile == "quick" else RESULTS.with_name("climate_spf_full.json"))
    out.parent.mkdir(parents=True, exist_ok=True)
    start, runs = time.perf_counter(), []
    for seed in args.seeds:  # the JSON is rewritten after every seed, so an interrupted run keeps its seeds
        runs.append(seed_run(profile, seed))
        result = {"profile": args.profile, "specs": profile["specs"], "overrides": profile["overrides"],
                  "seeds": [r["seed"] for r in runs], "wall_s": time.perf_counter() - start, "anchor": ANCHOR,
                  "summary": summarise(runs), "runs": runs, "environment": environment()}
        out.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result["summary"], indent=2))


if __name__ == "__main__":
    main()
