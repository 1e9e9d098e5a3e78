"""Few-step generation on the ring of 8 Gaussians: teacher ODE vs MeanFlow students; CMT's claim.

1. Quality vs NFE: the exact (analytic) teacher and a small trained MLP teacher with Euler at 1, 2, 4,
   8, 50 steps vs MeanFlow students at 1, 2, 4 flow-map steps. Metric: unbiased MMD^2 (RBF bandwidths
   0.1, 0.5, 1.0) against fresh data, with the data-vs-data floor at the same n.
2. CMT's claim: MeanFlow training (JVP, py-meanflow defaults) for the same number of steps from random
   init, from the MLP teacher (u(x, r, t) := v(x, t)) and from a CMT mid-trained student. Reported:
   1-step MMD^2 after equal steps, steps until 1-step MMD^2 < THRESHOLD (evaluated every EVAL_EVERY
   steps), count of loss spikes (raw MeanFlow error > SPIKE x median of the previous 100 steps) and of
   gradient-norm spikes (same rule on the global gradient norm).
3. Wall time of each route (pretrain + midtrain + distill) and its ratio to pretraining alone.
3 seeds; mean and standard deviation over seeds. One CPU thread. Writes benchmarks/results/flowmap_ring.json.
"""

from __future__ import annotations

import json
import statistics
import time
from pathlib import Path

import torch

from diffpipe.schemas import FlowMatching
from diffpipe.schemas.distill import MeanFlowTraining, MidtrainStage
from diffpipe.tasks.flowmap.cmt import ConsistencyMidTrainingLoss
from diffpipe.tasks.flowmap.meanflow import MeanFlowLoss
from diffpipe.tasks.flowmap.ring import AnalyticRing
from diffpipe.tasks.flowmap.sampling import sample_flow_map, sample_teacher
from diffpipe.tasks.metrics.generic import mmd2_unbiased
from diffpipe.tasks.nets.flowmap import FlowMapNet, TwoTimeCall, VelocityMLP, one_time_velocity
from diffpipe.tasks.objectives.flow_matching import FlowMatchingLoss
from diffpipe.tasks.training import count_spikes

SEEDS = (0, 1, 2)
MLP = {"hidden": 128, "depth": 3, "time_channels": 32}
BATCH, LR = 256, 1e-3
PRETRAIN_STEPS, CMT_STEPS, MEANFLOW_STEPS = 2000, 500, 1500
EVAL_EVERY, N_EVAL = 100, 1000
BANDWIDTHS = [0.1, 0.5, 1.0]
TEACHER_STEPS, STUDENT_STEPS = (1, 2, 4, 8, 50), (1, 2, 4)
THRESHOLD, SPIKE = 0.02, 3.0
SPIKE_WINDOW = 100
"""Spikes are measured against the median of the previous SPIKE_WINDOW steps."""
RING = AnalyticRing()


def gen(seed: int) -> torch.Generator:
    """A seeded CPU generator."""
    return torch.Generator().manual_seed(seed)


def mmd(x: torch.Tensor, data: torch.Tensor) -> float:
    """Unbiased MMD^2 with the benchmark's bandwidths."""
    return mmd2_unbiased(x, data, BANDWIDTHS)


def adam_step(opt: torch.optim.Optimizer, net: torch.nn.Module, loss: torch.Tensor) -> float:
    """One optimiser step; returns the global gradient norm before the step."""
    opt.zero_grad()
    loss.backward()
    norm = torch.nn.utils.clip_grad_norm_(net.parameters(), float("inf"))
    opt.step()
    return float(norm)


def pretrain(seed: int) -> tuple[VelocityMLP, float]:
    """Flow-matching MLP teacher (diffpipe's FlowMatchingLoss, logit-normal t) and its wall time."""
    torch.manual_seed(seed)
    net, loss_fn, g = VelocityMLP(**MLP), FlowMatchingLoss(FlowMatching()), gen(100 + seed)
    opt = torch.optim.Adam(net.parameters(), lr=LR)
    start = time.perf_counter()
    for _ in range(PRETRAIN_STEPS):
        loss = loss_fn(lambda x, ts, lab: net(x, ts, lab), RING.sample(BATCH, g), None, g).mean()
        adam_step(opt, net, loss)
    return net.eval(), time.perf_counter() - start


def midtrain(teacher: VelocityMLP, seed: int) -> tuple[TwoTimeCall, float]:
    """CMT (flow-map form, Euler 16 steps on the MLP teacher), student initialised from the teacher."""
    student, g = TwoTimeCall(FlowMapNet.from_teacher(teacher)), gen(200 + seed)
    loss_fn = ConsistencyMidTrainingLoss(MidtrainStage(name="cmt", solver_steps=16), one_time_velocity(teacher))
    opt = torch.optim.Adam(student.parameters(), lr=LR)
    start = time.perf_counter()
    for _ in range(CMT_STEPS):
        adam_step(opt, student, loss_fn(student, torch.zeros(BATCH, 2), None, g).mean())
    return student, time.perf_counter() - start


def meanflow(net: TwoTimeCall, seed: int, data: torch.Tensor, noise: torch.Tensor) -> dict:
    """MeanFlow training from `net`; curve of 1-step MMD^2, spikes, final 1/2/4-step MMD^2, wall time."""
    loss_fn, g = MeanFlowLoss(MeanFlowTraining(name="meanflow")), gen(300 + seed)
    opt = torch.optim.Adam(net.parameters(), lr=LR)
    raw, norms, curve, train_time = [], [], [], 0.0
    for step in range(MEANFLOW_STEPS + 1):
        if step % EVAL_EVERY == 0:
            curve.append((step, mmd(sample_flow_map(net, noise, 1), data)))
        if step == MEANFLOW_STEPS:
            break
        start = time.perf_counter()
        err = loss_fn.per_sample_error(net, RING.sample(BATCH, g), None, g)
        norms.append(adam_step(opt, net, loss_fn.adaptive_weight(err).mean()))
        train_time += time.perf_counter() - start
        raw.append(float(err.detach().mean()))
    reached = next((s for s, m in curve if m < THRESHOLD), None)
    return {
        "curve_1step": curve, "steps_to_threshold": reached, "loss_spikes": count_spikes(raw, SPIKE, SPIKE_WINDOW),
        "grad_norm_spikes": count_spikes(norms, SPIKE, SPIKE_WINDOW), "grad_norm_mean": statistics.fmean(norms),
        "grad_norm_max": max(norms),
        "mmd2": {k: mmd(sample_flow_map(net, noise, k), data) for k in STUDENT_STEPS}, "wall_s": train_time,
    }


def run_seed(seed: int) -> dict:
    """Everything for one seed."""
    data, other = RING.sample(N_EVAL, gen(seed)), RING.sample(N_EVAL, gen(10 + seed))
    noise = torch.randn(N_EVAL, 2, generator=gen(20 + seed))
    teacher, pretrain_s = pretrain(seed)
    velocity = one_time_velocity(teacher)
    with torch.no_grad():
        out = {
            "floor": mmd(other, data),
            "exact_teacher_euler": {k: mmd(sample_teacher(RING.velocity, noise, k), data)
                                    for k in TEACHER_STEPS},
            "mlp_teacher_euler": {k: mmd(sample_teacher(velocity, noise, k), data) for k in TEACHER_STEPS},
        }
    cmt_student, cmt_s = midtrain(teacher, seed)
    with torch.no_grad():
        out["cmt_only"] = {k: mmd(sample_flow_map(cmt_student, noise, k), data) for k in STUDENT_STEPS}
    torch.manual_seed(seed)
    inits = {"random": TwoTimeCall(FlowMapNet(base_class="VelocityMLP", base_config=MLP)),
             "teacher": TwoTimeCall(FlowMapNet.from_teacher(teacher)), "cmt": cmt_student}
    out["meanflow"] = {name: meanflow(net, seed, data, noise) for name, net in inits.items()}
    mf = {name: r["wall_s"] for name, r in out["meanflow"].items()}
    out["wall_s"] = {"pretrain": pretrain_s, "cmt": cmt_s, **{f"meanflow_from_{k}": v for k, v in mf.items()}}
    out["route_over_pretrain"] = {
        "random -> meanflow": mf["random"] / pretrain_s,
        "pretrain -> meanflow": (pretrain_s + mf["teacher"]) / pretrain_s,
        "pretrain -> cmt -> meanflow": (pretrain_s + cmt_s + mf["cmt"]) / pretrain_s,
    }
    return out


def mean_spread(values: list[float | None]) -> str:
    """'mean ± std' over seeds (or the list when some runs never reached a value)."""
    if any(v is None for v in values):
        return str(values)
    return f"{statistics.fmean(values):.4f} ± {statistics.stdev(values):.4f}"


def summarise(runs: list[dict]) -> dict:
    """Mean ± spread over seeds of every reported number."""
    pick = lambda f: mean_spread([f(r) for r in runs])  # noqa: E731
    summary = {"floor": pick(lambda r: r["floor"])}
    for name in ("exact_teacher_euler", "mlp_teacher_euler"):
        summary[name] = {k: pick(lambda r, k=k, n=name: r[n][k]) for k in TEACHER_STEPS}
    summary["cmt_only"] = {k: pick(lambda r, k=k: r["cmt_only"][k]) for k in STUDENT_STEPS}
    for init in ("random", "teacher", "cmt"):
        mf = lambda r, i=init: r["meanflow"][i]  # noqa: E731
        summary[f"meanflow_from_{init}"] = {
            **{f"{k}-step": pick(lambda r, k=k, mf=mf: mf(r)["mmd2"][k]) for k in STUDENT_STEPS},
            "steps_to_threshold": [mf(r)["steps_to_threshold"] for r in runs],
            "loss_spikes": pick(lambda r, mf=mf: mf(r)["loss_spikes"]),
            "grad_norm_spikes": pick(lambda r, mf=mf: mf(r)["grad_norm_spikes"]),
            "grad_norm_mean": pick(lambda r, mf=mf: mf(r)["grad_norm_mean"]),
            "grad_norm_max": pick(lambda r, mf=mf: mf(r)["grad_norm_max"]),
        }
    summary["wall_s"] = {k: pick(lambda r, k=k: r["wall_s"][k]) for k in runs[0]["wall_s"]}
    summary["route_over_pretrain"] = {k: pick(lambda r, k=k: r["route_over_pretrain"][k])
                                      for k in runs[0]["route_over_pretrain"]}
    return summary


def main() -> None:
    """Run all seeds, print the summary, write the JSON."""
    torch.set_num_threads(1)
    start = time.perf_counter()
    runs = [run_seed(seed) for seed in SEEDS]
    result = {
        "setup": {"seeds": SEEDS, "mlp": MLP, "batch": BATCH, "lr": LR, "pretrain_steps": PRETRAIN_STEPS,
                  "cmt_steps": CMT_STEPS, "meanflow_steps": MEANFLOW_STEPS, "n_eval": N_EVAL,
                  "bandwidths": BANDWIDTHS, "threshold": THRESHOLD, "spike_factor": SPIKE},
        "summary": summarise(runs), "runs": runs, "total_wall_s": time.perf_counter() - start,
    }
    print(json.dumps(result["summary"], indent=1))
    print(f"total wall time {result['total_wall_s']:.0f} s")
    out = Path(__file__).parent / "results" / "flowmap_ring.json"
    out.write_text(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
