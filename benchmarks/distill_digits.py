"""Few-step digits: flow-matching teacher vs CMT / MeanFlow students, and what CMT buys as an init.

Same methods, network (FlowMapNet around the digits UNet) and metrics as the midtrain / distill stages,
in a hand-written loop so every step's raw loss and gradient norm can be recorded.

1. Quality vs NFE: the teacher with Euler on an even grid (FlowMatchEulerDiscreteScheduler with
   sigmas = linspace(1, 0, N + 1)[:-1]; diffusers' default grid linspace(1, 0.001, N) + [0] wastes
   the last of N steps, shown once at N = 2) at 1, 2, 4, 8, 50 steps, vs students at 1, 2, 4 flow-map
   steps. Metrics: Frechet distance in the digits classifier's features and MMD^2 (median-heuristic
   bandwidths x 0.5, 1, 2) against the held-out split, with the data floor (train images, same n).
2. CMT's claim: MeanFlow (one-point velocity) for the same number of steps from random weights, from
   the teacher and from the CMT student; also MeanFlow distillation (teacher velocity) from CMT, and
   consistency distillation from the teacher (the stage's defaults: 18 Karras levels, Heun, EMA target
   0.95), sampled with consistency multistep sampling (jump to data, re-noise) at 1, 2 and 4 steps.
   Reported: metrics after equal steps, steps until the 1-step FD falls below THRESHOLD x the 50-step
   teacher's (checked every EVAL_EVERY steps), loss spikes and gradient-norm spikes (value > SPIKE x
   median of the previous 50 steps).
   Metric noise at this n: std of the floor's FD over NOISE_DRAWS train subsets and of the 50-step
   teacher's FD over NOISE_DRAWS noise draws.
3. Cost of each route (pretrain + midtrain + distill) / pretrain alone: wall time of the training
   steps, and FLOPs = FlopCounterMode count of one training step x steps.
One CPU thread. Usage: python benchmarks/distill_digits.py [--seeds 0 1 2]. Writes
benchmarks/results/distill_digits.json.
"""

from __future__ import annotations

import argparse
import copy
import json
import statistics
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
from diffusers import FlowMatchEulerDiscreteScheduler
from diffusers.training_utils import EMAModel
from sklearn.datasets import load_digits
from sklearn.model_selection import train_test_split
from torch.utils.flop_counter import FlopCounterMode

from diffpipe.schemas import FlowMatching, UNet2DSpec
from diffpipe.schemas.distill import ConsistencyDistill, MeanFlowTeacherDistill, MeanFlowTraining, MidtrainStage
from diffpipe.tasks.data.digits import frechet_distance, train_classifier
from diffpipe.tasks.flowmap.cmt import ConsistencyMidTrainingLoss
from diffpipe.tasks.flowmap.consistency import ConsistencyDistillationLoss
from diffpipe.tasks.flowmap.meanflow import MeanFlowLoss
from diffpipe.tasks.flowmap.meanflow_distill import MeanFlowDistillLoss
from diffpipe.tasks.flowmap.sampling import sample_consistency, sample_flow_map
from diffpipe.tasks.metrics.generic import median_bandwidth, mmd2_unbiased
from diffpipe.tasks.nets import build_image_model
from diffpipe.tasks.nets.flowmap import FlowMapNet, TwoTimeCall, one_time_velocity
from diffpipe.tasks.objectives.flow_matching import FlowMatchingLoss
from diffpipe.tasks.training import count_spikes

MODEL = UNet2DSpec(block_out_channels=(16, 32))
BATCH, COND_DROPOUT, NULL_LABEL = 64, 0.1, 10
PRETRAIN = {"steps": 1200, "lr": 2e-3, "warmup": 100, "ema": 0.995}
CMT = {"steps": 300, "lr": 5e-4, "ema": 0.99}
MEANFLOW = {"steps": 300, "lr": 2e-4, "ema": 0.99}
MEANFLOW_OPTIONS = {"derivative": "finite_difference"}
RANDOM_TIME_SCALE = 0.01
N_EVAL, EVAL_EVERY, NOISE_DRAWS = 500, 50, 3
TEACHER_STEPS, STUDENT_STEPS = (1, 2, 4, 8, 50), (1, 2, 4)
THRESHOLD, SPIKE = 1.5, 3.0


class Digits:
    """The digits split, classifier and metrics exactly as the digits domain builds them (split seed 0)."""

    def __init__(self) -> None:
        raw = load_digits()
        x = (raw.images / 8.0 - 1.0).astype(np.float32)
        x_tr, x_te, y_tr, y_te = train_test_split(x, raw.target, test_size=0.2, random_state=0, stratify=raw.target)
        self.x, self.y = torch.from_numpy(x_tr[:, None]), torch.from_numpy(y_tr)
        self.test = torch.from_numpy(x_te[:, None])
        self.classifier = train_classifier(self.x, self.y, seed=0)
        with torch.no_grad():
            self.test_features = self.classifier.features(self.test).numpy()
        self.bandwidths = [f * median_bandwidth(self.test) for f in (0.5, 1.0, 2.0)]

    def batch(self, gen: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
        """A training batch with labels dropped to the null class at rate COND_DROPOUT."""
        idx = torch.randint(0, len(self.x), (BATCH,), generator=gen)
        labels = self.y[idx].clone()
        labels[torch.rand(BATCH, generator=gen) < COND_DROPOUT] = NULL_LABEL
        return self.x[idx], labels

    def score(self, samples: torch.Tensor) -> dict[str, float]:
        """Frechet distance in classifier features and MMD^2 (median-heuristic bandwidths x 0.5, 1, 2)."""
        with torch.no_grad():
            fd = frechet_distance(self.classifier.features(samples).numpy(), self.test_features)
        return {"frechet_distance": fd, "mmd2": mmd2_unbiased(samples, self.test, self.bandwidths)}


def fit(net: torch.nn.Module, loss_of: Callable[[torch.Generator], torch.Tensor], steps: int, lr: float,
        ema_decay: float, gen: torch.Generator, warmup: int = 0,
        every: Callable[[int, torch.nn.Module], None] | None = None) -> dict:
    """AdamW + clip 1.0 + EMA (as the training loop); returns raw losses, grad norms and train wall time."""
    opt = torch.optim.AdamW(net.parameters(), lr=lr)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: min(1.0, (s + 1) / warmup) if warmup else 1.0)
    ema = EMAModel(net.parameters(), decay=ema_decay)
    losses, norms, wall = [], [], 0.0
    for step in range(steps + 1):
        if every is not None and step % EVAL_EVERY == 0:
            every(step, averaged(net, ema))
        if step == steps:
            break
        start = time.perf_counter()
        loss = loss_of(gen)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        norms.append(float(torch.nn.utils.clip_grad_norm_(net.parameters(), 1.0)))
        opt.step()
        sched.step()
        ema.step(net.parameters())
        wall += time.perf_counter() - start
        losses.append(float(loss.detach()))
    ema.copy_to(net.parameters())
    return {"losses": losses, "grad_norms": norms, "wall_s": wall}


def averaged(net: torch.nn.Module, ema: EMAModel) -> torch.nn.Module:
    """A copy of `net` with the EMA weights, in eval mode."""
    copy_ = copy.deepcopy(net)
    ema.copy_to(copy_.parameters())
    return copy_.eval()


def flops_of(step: Callable[[], torch.Tensor]) -> int:
    """FLOPs of one training step (forward, backward and any teacher calls inside)."""
    with FlopCounterMode(display=False) as counter:
        step().backward()
    return counter.get_total_flops()


@torch.no_grad()
def teacher_samples(teacher: torch.nn.Module, noise: torch.Tensor, labels: torch.Tensor, steps: int,
                    even: bool = True) -> torch.Tensor:
    """Euler on the teacher's ODE with FlowMatchEulerDiscreteScheduler, on the even grid or diffusers' default."""
    scheduler = FlowMatchEulerDiscreteScheduler()
    if even:
        scheduler.set_timesteps(sigmas=torch.linspace(1.0, 0.0, steps + 1)[:-1].tolist())
    else:
        scheduler.set_timesteps(steps)
    velocity, x = one_time_velocity(teacher), noise
    for i, timestep in enumerate(scheduler.timesteps):
        x = scheduler.step(velocity(x, scheduler.sigmas[i].expand(len(x)), labels), timestep, x).prev_sample
    return x


def run_seed(seed: int, digits: Digits) -> dict:
    """Every measurement for one seed."""
    gen = lambda offset: torch.Generator().manual_seed(1000 * seed + offset)  # noqa: E731
    noise = torch.randn(N_EVAL, 1, 8, 8, generator=gen(1))
    labels = torch.arange(N_EVAL) % 10
    floors = [digits.score(digits.x[torch.randperm(len(digits.x), generator=gen(2 + 100 * i))[:N_EVAL]])
              for i in range(NOISE_DRAWS)]

    torch.manual_seed(seed)
    teacher = build_image_model(MODEL, (1, 8, 8), 10)
    fm_loss = FlowMatchingLoss(FlowMatching())
    fm_step = lambda g: fm_loss(lambda x, t, c: teacher(x, t, class_labels=c).sample, *digits.batch(g), g).mean()  # noqa: E731
    pretrain = fit(teacher, fm_step, PRETRAIN["steps"], PRETRAIN["lr"], PRETRAIN["ema"], gen(3), PRETRAIN["warmup"])
    step_flops = {"pretrain": flops_of(lambda: fm_step(gen(9)))}
    teacher.eval().requires_grad_(False)
    velocity = one_time_velocity(teacher)
    redraws = [torch.randn(N_EVAL, 1, 8, 8, generator=gen(6 + 100 * i)) for i in range(1, NOISE_DRAWS)]
    out = {"data_floor": floors[0],
           "metric_noise": {"data_floor_fd_over_subsets": [f["frechet_distance"] for f in floors],
                            "teacher_50_fd_over_noise_draws": [digits.score(teacher_samples(teacher, z, labels, 50))
                                                               ["frechet_distance"] for z in [noise, *redraws]]},
           "teacher_even_grid": {k: digits.score(teacher_samples(teacher, noise, labels, k)) for k in TEACHER_STEPS},
           "teacher_diffusers_default_grid_2_steps": digits.score(teacher_samples(teacher, noise, labels, 2, False))}
    target = THRESHOLD * out["teacher_even_grid"][50]["frechet_distance"]

    def student_scores(net: torch.nn.Module) -> dict:
        return {k: digits.score(sample_flow_map(net, noise, k, labels)) for k in STUDENT_STEPS}

    def consistency_scores(net: torch.nn.Module) -> dict:
        return {k: digits.score(sample_consistency(net, noise, k, labels, generator=gen(7))) for k in STUDENT_STEPS}

    torch.manual_seed(seed)
    cmt = TwoTimeCall(FlowMapNet.from_teacher(teacher)).requires_grad_(True)
    cmt_loss = ConsistencyMidTrainingLoss(MidtrainStage(name="cmt", solver_steps=16), velocity)
    cmt_step = lambda g: cmt_loss(cmt, *digits.batch(g), g).mean()  # noqa: E731
    cmt_run = fit(cmt, cmt_step, CMT["steps"], CMT["lr"], CMT["ema"], gen(4))
    out["cmt_only"] = {"scores": student_scores(cmt.eval())}

    torch.manual_seed(seed)
    random_init = FlowMapNet.from_teacher(build_image_model(MODEL, (1, 8, 8), 10), time_scale=RANDOM_TIME_SCALE)
    inits = {"random": TwoTimeCall(random_init),
             "teacher": TwoTimeCall(FlowMapNet.from_teacher(teacher)).requires_grad_(True), "cmt": copy.deepcopy(cmt)}
    one_point = MeanFlowLoss(MeanFlowTraining(name="meanflow", **MEANFLOW_OPTIONS))
    # the same loss options as MeanFlow training (not the meanflow_distill stage's mf-rae defaults)
    distill = MeanFlowDistillLoss(MeanFlowTeacherDistill(name="distill", ratio=0.75, norm_p=0.75, **MEANFLOW_OPTIONS),
                                  velocity)
    routes = {f"meanflow_from_{k}": (net, one_point) for k, net in inits.items()}
    routes["meanflow_distill_from_cmt"] = (copy.deepcopy(cmt), distill)
    mf_flops = {}
    for name, (net, loss_fn) in routes.items():
        net.train()
        curve: list[tuple[int, float]] = []
        raw: list[float] = []

        def step(g: torch.Generator, net=net, loss_fn=loss_fn, raw=raw) -> torch.Tensor:
            err = loss_fn.per_sample_error(net, *digits.batch(g), g)
            raw.append(float(err.detach().mean()))
            return loss_fn.adaptive_weight(err).mean()

        def evaluate(s: int, averaged_net: torch.nn.Module, curve=curve) -> None:
            curve.append((s, digits.score(sample_flow_map(averaged_net, noise, 1, labels))["frechet_distance"]))

        run = fit(net, step, MEANFLOW["steps"], MEANFLOW["lr"], MEANFLOW["ema"], gen(5), every=evaluate)
        mf_flops[name] = flops_of(lambda net=net, loss_fn=loss_fn: loss_fn(net, *digits.batch(gen(9)), gen(9)).mean())
        out[name] = {"scores": student_scores(net.eval()), "curve_1step_fd": curve,
                     "steps_to_threshold": next((s for s, v in curve if v <= target), None),
                     "loss_spikes": count_spikes(raw, SPIKE),
                     "grad_norm_spikes": count_spikes(run["grad_norms"], SPIKE),
                     "grad_norm_mean": statistics.fmean(run["grad_norms"]), "grad_norm_max": max(run["grad_norms"]),
                     "raw_error_median": statistics.median(raw), "wall_s": run["wall_s"]}

    cd_route = "consistency_distill_from_teacher"
    torch.manual_seed(seed)
    cd_net = TwoTimeCall(FlowMapNet.from_teacher(teacher)).requires_grad_(True)
    cd_loss = ConsistencyDistillationLoss(ConsistencyDistill(name="cd"), velocity)
    cd_step = lambda g: cd_loss(cd_net, *digits.batch(g), g).mean()  # noqa: E731
    cd_curve: list[tuple[int, float]] = []

    def cd_evaluate(s: int, averaged_net: torch.nn.Module) -> None:
        cd_curve.append((s, digits.score(sample_consistency(averaged_net, noise, 1, labels))["frechet_distance"]))

    cd_run = fit(cd_net, cd_step, MEANFLOW["steps"], MEANFLOW["lr"], MEANFLOW["ema"], gen(8), every=cd_evaluate)
    mf_flops[cd_route] = flops_of(lambda: cd_loss(cd_net, *digits.batch(gen(9)), gen(9)).mean())
    norms, losses = cd_run["grad_norms"], cd_run["losses"]
    out[cd_route] = {"scores": consistency_scores(cd_net.eval()), "curve_1step_fd": cd_curve,
                     "steps_to_threshold": next((s for s, v in cd_curve if v <= target), None),
                     "loss_spikes": count_spikes(losses, SPIKE), "grad_norm_spikes": count_spikes(norms, SPIKE),
                     "grad_norm_mean": statistics.fmean(norms), "grad_norm_max": max(norms),
                     "raw_error_median": statistics.median(losses), "wall_s": cd_run["wall_s"]}

    step_flops.update({"cmt": flops_of(lambda: cmt_step(gen(9))), **mf_flops})
    walls = {"pretrain": pretrain["wall_s"], "cmt": cmt_run["wall_s"],
             **{k: out[k]["wall_s"] for k in [*routes, cd_route]}}
    total_flops = {"pretrain": step_flops["pretrain"] * PRETRAIN["steps"], "cmt": step_flops["cmt"] * CMT["steps"],
                   **{k: v * MEANFLOW["steps"] for k, v in mf_flops.items()}}
    route_parts = {"meanflow from random (no pretrain)": ["meanflow_from_random"],
                   "pretrain -> meanflow": ["pretrain", "meanflow_from_teacher"],
                   "pretrain -> cmt": ["pretrain", "cmt"],
                   "pretrain -> cmt -> meanflow": ["pretrain", "cmt", "meanflow_from_cmt"],
                   "pretrain -> cmt -> meanflow_distill": ["pretrain", "cmt", "meanflow_distill_from_cmt"],
                   "pretrain -> consistency_distill": ["pretrain", cd_route]}
    out["cost"] = {
        "flops_per_step": step_flops, "train_wall_s": walls,
        "route_wall_over_pretrain": {r: sum(walls[p] for p in parts) / walls["pretrain"]
                                     for r, parts in route_parts.items()},
        "route_flops_over_pretrain": {r: sum(total_flops[p] for p in parts) / total_flops["pretrain"]
                                      for r, parts in route_parts.items()},
    }
    return out


def mean_spread(values: list[float | None]) -> str | list:
    """'mean ± std' over seeds (one seed: the value; runs that never reached a value: the list)."""
    if any(v is None for v in values) or len(values) == 1:
        return values if len(values) > 1 else values[0]
    return f"{statistics.fmean(values):.4g} ± {statistics.stdev(values):.2g}"


def summarise(runs: list[dict]) -> dict:
    """Mean ± spread over seeds of the headline numbers."""
    pick = lambda f: mean_spread([f(r) for r in runs])  # noqa: E731
    summary = {"data_floor": {m: pick(lambda r, m=m: r["data_floor"][m]) for m in ("frechet_distance", "mmd2")}}
    summary["metric_noise_fd_std"] = {
        name: pick(lambda r, name=name: statistics.stdev(r["metric_noise"][name]))
        for name in ("data_floor_fd_over_subsets", "teacher_50_fd_over_noise_draws")}
    summary["teacher_even_grid_fd"] = {k: pick(lambda r, k=k: r["teacher_even_grid"][k]["frechet_distance"])
                                       for k in TEACHER_STEPS}
    summary["teacher_even_grid_mmd2"] = {k: pick(lambda r, k=k: r["teacher_even_grid"][k]["mmd2"])
                                         for k in TEACHER_STEPS}
    summary["teacher_default_grid_2_steps_fd"] = pick(
        lambda r: r["teacher_diffusers_default_grid_2_steps"]["frechet_distance"])
    students = ["cmt_only", *[k for k in runs[0] if k.startswith(("meanflow", "consistency"))]]
    for name in students:
        summary[name] = {
            **{f"{k}-step fd": pick(lambda r, k=k, n=name: r[n]["scores"][k]["frechet_distance"])
               for k in STUDENT_STEPS},
            **{f"{k}-step mmd2": pick(lambda r, k=k, n=name: r[n]["scores"][k]["mmd2"]) for k in STUDENT_STEPS},
            **{key: pick(lambda r, n=name, key=key: r[n][key])
               for key in ("steps_to_threshold", "loss_spikes", "grad_norm_spikes", "grad_norm_max", "raw_error_median")
               if key in runs[0][name]},
        }
    summary["route_wall_over_pretrain"] = {k: pick(lambda r, k=k: r["cost"]["route_wall_over_pretrain"][k])
                                           for k in runs[0]["cost"]["route_wall_over_pretrain"]}
    summary["route_flops_over_pretrain"] = {k: pick(lambda r, k=k: r["cost"]["route_flops_over_pretrain"][k])
                                            for k in runs[0]["cost"]["route_flops_over_pretrain"]}
    two_step = {n: statistics.fmean(r[n]["scores"][2]["frechet_distance"] for r in runs) for n in students}
    best = min(two_step, key=two_step.get)
    best_fd = two_step[best]
    teacher_fd = statistics.fmean(r["teacher_even_grid"][50]["frechet_distance"] for r in runs)
    summary["goal_2_step_within_10_percent_of_teacher_50"] = {
        "best_student": best, "best_2_step_fd": best_fd, "teacher_50_step_fd": teacher_fd,
        "ratio": best_fd / teacher_fd, "met": best_fd <= 1.1 * teacher_fd}
    return summary


def main() -> None:
    """Run the seeds, print the summary, write the JSON."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0])
    args = parser.parse_args()
    torch.set_num_threads(1)
    start = time.perf_counter()
    digits = Digits()
    runs = [run_seed(seed, digits) for seed in args.seeds]
    result = {"setup": {"seeds": args.seeds, "model": MODEL.model_dump(), "batch": BATCH, "pretrain": PRETRAIN,
                        "cmt": CMT, "meanflow": MEANFLOW, "meanflow_options": MEANFLOW_OPTIONS,
                        "random_time_scale": RANDOM_TIME_SCALE, "n_eval": N_EVAL, "threshold_x_teacher_50": THRESHOLD,
                        "spike_factor": SPIKE, "teacher_grid": "even: sigmas = linspace(1, 0, N + 1)[:-1]"},
              "summary": summarise(runs), "runs": runs, "total_wall_s": time.perf_counter() - start}
    print(json.dumps(result["summary"], indent=1, default=str))
    print(f"total wall time {result['total_wall_s']:.0f} s")
    out = Path(__file__).parent / "results" / "distill_digits.json"
    out.write_text(json.dumps(result, indent=1, default=str))


if __name__ == "__main__":
    main()
