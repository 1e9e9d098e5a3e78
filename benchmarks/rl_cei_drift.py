"""Drift of CEI geometries from the truth at equal physics-reward gain, for each RL algorithm (DDRL's claim).

The same runs as benchmarks/rl_cei.py (pipelines/cei_rl.yaml, per seed and algorithm, equal rollout
batches), made in-process through the rl stage's own `fine_tune` with a hook: every `eval_every`
rollout batches the online policy samples fixed events with the sample stage's sampler (one draw each)
and is scored twice: the reward it is trained on, minus the round-trip error, on training-molecule
events, and the drift, MAE against the true geometry, on held-out molecules. Drift is then read at a
common reward gain (see `summarise`), interpolated linearly along each curve. The data and pretrained
model come from the artifact root that rl_cei.py filled (run it first, with --quick for a --quick run here).
Prints and writes benchmarks/results/rl_cei_drift.json.

    python benchmarks/rl_cei_drift.py --seeds 0 1 2
    python benchmarks/rl_cei_drift.py --quick     # after rl_cei.py --quick: a smoke run, to a temp folder
"""

from __future__ import annotations

import contextlib
import tempfile
import time
from pathlib import Path

import yaml
from harness import open_benchmark, parser, write_result
from rl_cei import ALGORITHMS, QUICK, SPEC, default_root

from diffpipe.flows.plan import status
from diffpipe.flows.spec_loading import apply_override, validate_spec
from diffpipe.storage import ArtifactStore
from diffpipe.tasks.context import StageContext
from diffpipe.tasks.data.cei.build import open_cei_store
from diffpipe.tasks.data.cei.domain import STORE_FILE, CeiDomain
from diffpipe.tasks.data.cei.inference import balanced_events, score_samples
from diffpipe.tasks.rl.stage import RLRun, fine_tune
from diffpipe.tasks.schedulers import make_scheduler


class Probe:
    """Scores a policy on fixed training events (reward) and fixed held-out events (MAE against the truth)."""

    def __init__(self, spec, data_path: Path, n_events: int):
        self.spec, self.domain = spec, CeiDomain()
        self.settings = self.domain.settings(data_path)
        self.sample = spec.stage("sample_rl").model_copy(update={"samples_per_condition": 1})
        self.objective = spec.stage("rl").objective
        self.scheduler = make_scheduler(self.objective, self.sample.scheduler.name, self.sample.scheduler.options)
        self.splits = {}
        for split in ("train", "test"):
            events = open_cei_store(str(data_path / STORE_FILE), split)
            chosen = balanced_events(events, n_events)
            self.splits[split] = (events.isel(event=chosen).load().assign(event_index=("event", chosen)),
                                  list(events.attrs["molecule_names"]))

    def scores(self, split: str, policy) -> dict:
        """Overall metrics of one draw per event of `split`."""
        events, names = self.splits[split]
        samples, _ = self.domain.draw(events, self.domain.net(policy), self.objective, self.scheduler, self.sample,
                                      self.spec.data, self.settings, self.spec.runtime, contextlib.nullcontext)
        return score_samples(samples, events["positions"].values, names)["sample"]["overall"]

    def __call__(self, policy) -> dict:
        """Reward (minus round trip, training molecules) and drift (held-out MAE and round trip)."""
        was_training = policy.training
        policy.eval()
        train, test = self.scores("train", policy), self.scores("test", policy)
        policy.train(was_training)
        return {"reward": -train["momentum_rel_error"], "mae_heldout_bohr": test["mae_frame_bohr"],
                "round_trip_heldout": test["momentum_rel_error"]}


def pipeline(root: Path, seed: int, algorithm: str, rollouts: int, quick: bool) -> dict:
    """The cei_rl spec for one seed and algorithm (with rl_cei.py's --quick overrides), artifacts under `root`."""
    raw = yaml.safe_load(SPEC.read_text())
    for assignment in QUICK if quick else []:
        apply_override(raw, assignment)
    updates = 2 if algorithm == "flow_grpo" else 1
    raw["storage"], raw["runtime"]["seed"] = {"root": str(root)}, seed
    rl = next(s for s in raw["stages"] if s["name"] == "rl")
    rl.update(algorithm=ALGORITHMS[algorithm], steps=rollouts * updates, checkpoint_every=rollouts * updates,
              log_every=rollouts * updates)
    return raw


def run_one(root: Path, seed: int, algorithm: str, args) -> dict:
    """One fine-tuning run with the probe every `eval_every` rollout batches."""
    spec = validate_spec(pipeline(root, seed, algorithm, args.rollouts, args.quick))
    store = ArtifactStore(spec.storage.root)
    refs = {r.name: r.ref for r in status(spec, store) if r.ref is not None}
    if "diffusion" not in refs:
        raise SystemExit(f"no cached data and pretraining for seed {seed} under {root}: run rl_cei.py first")
    probe, curve = Probe(spec, store.local_path(refs["data"]), args.events), []
    updates = 2 if algorithm == "flow_grpo" else 1

    def hook(step: int, run: RLRun) -> None:
        if step % (args.eval_every * updates) == 0:
            curve.append({"rollout_batches": step // updates, **probe(run.policy)})

    with tempfile.TemporaryDirectory() as tmp:
        key = f"bench-drift-{algorithm}-{seed}-{time.time_ns()}"
        ctx = StageContext(spec, "rl", key, {"data": refs["data"], "init": refs["diffusion"]}, store, Path(tmp),
                           log=lambda m: None, progress=False)
        done = fine_tune(ctx, spec.stage("rl"), hook)
        store.clear_run(key)
    curve.append({"rollout_batches": args.rollouts, **probe(done.policy)})
    return {"seed": seed, "algorithm": algorithm, "curve": curve}


def at_gain(curve: list[dict], gain: float, key: str) -> float | None:
    """`key` where the reward first reaches `gain` above its start (linear interpolation), else None."""
    gains = [c["reward"] - curve[0]["reward"] for c in curve]
    for i in range(1, len(curve)):
        if gains[i] >= gain:
            w = (gain - gains[i - 1]) / max(gains[i] - gains[i - 1], 1e-12)
            return curve[i - 1][key] + w * (curve[i][key] - curve[i - 1][key])
    return None


def summarise(runs: list[dict]) -> dict:
    """Per algorithm: reward gain, held-out MAE change, and held-out MAE at the common reward gain.

    The common gain is half the smallest final gain among the algorithms that gained on every seed (as in
    rl_digits.py), so each of those reaches it on every seed.
    """
    gains = {a: [r["curve"][-1]["reward"] - r["curve"][0]["reward"] for r in runs if r["algorithm"] == a]
             for a in ALGORITHMS}
    positive = [min(g) for g in gains.values() if g and min(g) > 0]
    common = 0.5 * min(positive) if positive else None
    out: dict = {"common_reward_gain": common}
    for algorithm in ALGORITHMS:
        mine = [r for r in runs if r["algorithm"] == algorithm]
        if mine:
            out[algorithm] = {
                "reward_gain": [r["curve"][-1]["reward"] - r["curve"][0]["reward"] for r in mine],
                "mae_start": [r["curve"][0]["mae_heldout_bohr"] for r in mine],
                "mae_end": [r["curve"][-1]["mae_heldout_bohr"] for r in mine],
                "mae_at_common_gain": [None if common is None else at_gain(r["curve"], common, "mae_heldout_bohr")
                                       for r in mine]}
    return out


def main() -> None:
    """Run every (seed, algorithm) pair and write the JSON."""
    options = parser(__doc__)
    options.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    options.add_argument("--algorithms", nargs="+", default=list(ALGORITHMS))
    options.add_argument("--rollouts", type=int, default=100)
    options.add_argument("--eval-every", type=int, default=20)
    options.add_argument("--events", type=int, default=96, help="events per probe split")
    options.add_argument("--root", type=Path, default=None, help="rl_cei.py's artifact root (default: its default)")
    args = open_benchmark(options.parse_args())
    if args.quick:
        args.seeds, args.rollouts, args.eval_every, args.events = [0], 2, 1, 8
    args.root = args.root or default_root(args.quick)
    t0, runs = time.perf_counter(), []
    for seed in args.seeds:
        for algorithm in args.algorithms:
            run = run_one(args.root, seed, algorithm, args)
            first, last = run["curve"][0], run["curve"][-1]
            print(f"seed {seed} {algorithm:>13}: reward {first['reward']:.4f} -> {last['reward']:.4f}, held-out MAE "
                  f"{first['mae_heldout_bohr']:.4f} -> {last['mae_heldout_bohr']:.4f}", flush=True)
            runs.append(run)
    result = {"config": vars(args), "summary": summarise(runs), "runs": runs,
              "benchmark_wall_s": time.perf_counter() - t0}
    write_result("rl_cei_drift", result, args.out)


if __name__ == "__main__":
    main()
