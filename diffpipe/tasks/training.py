"""A resumable training loop shared by every training stage: EMA, warm-up, clipping, checkpoints, logs.

Resumption is exact: model, EMA, optimizer, the step's random generator and the loss history are
saved every `checkpoint_every` steps, so a run killed at any point and restarted reaches the same
final weights as an uninterrupted run with the same seed (on the same device and thread count).

Across processes (a stage started by tasks/launch.py) every rank runs this same loop: the step runs
through DistributedDataParallel or on an FSDP2-sharded model (tasks/distributed.py), gradients are
clipped by their global norm, the logged loss is the mean over ranks, and rank 0 alone writes the
checkpoints, which hold whole (unsharded) state dicts so that a run may resume at another world size.
"""

from __future__ import annotations

import copy
import json
import math
import statistics
import tempfile
import time
from collections.abc import Callable
from contextlib import nullcontext
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import torch  # noqa: E402
from diffusers import ModelMixin  # noqa: E402
from diffusers.training_utils import EMAModel  # noqa: E402
from torch.utils.flop_counter import FlopCounterMode  # noqa: E402
from tqdm.auto import tqdm  # noqa: E402

from diffpipe.errors import Interrupted  # noqa: E402
from diffpipe.storage.formats import (  # noqa: E402
    MODEL_DIR,
    ONLINE_MODEL_DIR,
    load_tensors,
    save_model,
    save_tensors,
    write_json,
)
from diffpipe.tasks.plotting import serialized  # noqa: E402

from .context import StageContext  # noqa: E402
from .distributed import (  # noqa: E402
    Wrapped,
    any_rank,
    clip_grad_norm,
    full_model_state,
    full_optimizer_state,
    full_tensors,
    is_main,
    like_parameters,
    load_full_model_state,
    load_full_optimizer_state,
    mean_over_ranks,
    sum_over_ranks,
    world_size,
)
from .stopping import stop_reason, stop_requested  # noqa: E402

StepLoss = Callable[[torch.Generator], torch.Tensor]
"""Computes the mean loss of one fresh batch; all randomness comes from the given generator.

Across processes every rank calls it with the same generator state: it draws the global batch and
computes the mean over this rank's rows (`distributed.local_rows`), or the loss of the whole batch from
forwards split over the ranks (`distributed.RowSharded`); losses that do neither compute the whole
batch on every rank (continuous RL's update), which is correct but not faster.
"""


class LossState(Protocol):
    """State a loss carries between steps besides the model (e.g. an EMA target network), saved with checkpoints."""

    def state_dict(self) -> dict[str, torch.Tensor]:
        """The state as named tensors."""
        ...

    def load_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        """Restore the state saved by `state_dict`."""
        ...


@dataclass
class TrainConfig:
    """The loop's options (mirrors the common fields of training stage schemas)."""

    steps: int
    lr: float
    weight_decay: float = 0.0
    warmup_steps: int = 0
    grad_clip: float | None = 1.0
    ema_decay: float | None = 0.999
    checkpoint_every: int = 250
    log_every: int = 50
    count_flops: bool = True
    """Count step 0's FLOPs (off where steps differ in kind, as RL's rollout steps from its update steps)."""


@dataclass
class TrainResult:
    """What a finished loop reports."""

    losses: list[float] = field(default_factory=list)
    resumed_from: int = 0
    wall_s: float = 0.0
    cpu_s: float = 0.0
    """CPU time of this process (rank 0's, across processes) over the same steps: busy time, whatever the load."""
    steps_per_s: float = 0.0
    flops_per_step: int | None = None
    """Forward + backward FLOPs of step 0 (torch's FlopCounterMode: matmuls and convolutions)."""

    def timing(self) -> dict[str, float | int | None]:
        """Resume point, wall time and speed, as stage metrics."""
        return {"resumed_from_step": self.resumed_from, "steps_per_s": self.steps_per_s, "train_wall_s": self.wall_s,
                "train_cpu_s": self.cpu_s, "processes": world_size()}

    def metrics(self, steps: int) -> dict[str, float | int | None]:
        """Timing and FLOPs of a run of `steps` identical steps, as stage metrics."""
        total = None if self.flops_per_step is None else self.flops_per_step * steps
        return {**self.timing(), "flops_per_step": self.flops_per_step, "train_flops": total}


def _lr_lambda(cfg: TrainConfig) -> Callable[[int], float]:
    return lambda s: min(1.0, (s + 1) / cfg.warmup_steps) if cfg.warmup_steps else 1.0


def train(ctx: StageContext, model: ModelMixin, step_loss: StepLoss, cfg: TrainConfig, gen: torch.Generator,
          loss_state: LossState | None = None) -> tuple[ModelMixin, TrainResult, EMAModel | None]:
    """Run (or resume) the loop; returns the trained model (eval mode), the loss history and the EMA of the weights.

    `loss_state` is saved with every checkpoint and restored on resume (after the model weights).
    The returned model is a plain module holding the whole trained weights, on every rank: `model`
    itself, except under FSDP2, which shards `model` in place and returns a plain copy of it holding the
    gathered weights (`distributed.Wrapped.unwrap`); use the returned model, not `model`, afterwards.
    """
    device = ctx.device
    model.to(device).train()
    wrapped = Wrapped(model, step_loss, device)
    params = list(model.parameters())
    opt = torch.optim.AdamW(params, lr=cfg.lr, weight_decay=cfg.weight_decay)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, _lr_lambda(cfg))
    ema = EMAModel(params, decay=cfg.ema_decay, foreach=True) if cfg.ema_decay else None
    run = ctx.store.run_dir(ctx.key)
    result = TrainResult()
    start = _resume(run, model, ema, opt, sched, gen, result, ctx, loss_state)
    bar = tqdm(total=cfg.steps, initial=start, desc=ctx.node, disable=not ctx.progress, leave=False)
    t0, c0 = time.perf_counter(), time.process_time()
    for step in range(start, cfg.steps):
        if any_rank(stop_requested()):  # SIGTERM / SIGINT / timeout (any rank): keep the steps done, then stop
            if step > start:
                _checkpoint(run, step, model, ema, opt, sched, gen, result, loss_state)
            raise Interrupted(f"{ctx.node}: {stop_reason()}: stopped at step {step}/{cfg.steps}; checkpoint saved, "
                              "rerun to resume")
        counting = step == 0 and cfg.count_flops
        with FlopCounterMode(display=False) if counting else nullcontext() as counter:  # step 0 only: the
            # counter's dispatch changes backward rounding, so a resumed run must count nothing to stay exact
            with ctx.autocast():
                loss = wrapped.loss(gen)
            mean_loss = mean_over_ranks(loss.detach())
            if not torch.isfinite(mean_loss):
                raise FloatingPointError(f"loss became {mean_loss.item()} at step {step}")
            opt.zero_grad(set_to_none=True)
            loss.backward()
        if counting:
            result.flops_per_step = sum_over_ranks(counter.get_total_flops())
        if cfg.grad_clip:
            clip_grad_norm(params, cfg.grad_clip)
        opt.step()
        sched.step()
        if ema is not None:
            ema.step(params)
        result.losses.append(mean_loss.item())
        bar.update(1)
        done = step + 1
        if done % cfg.log_every == 0 or done == cfg.steps:
            recent = result.losses[-cfg.log_every:]
            ctx.log(f"{ctx.node} step {done}/{cfg.steps} loss {sum(recent) / len(recent):.4f}")
            bar.set_postfix(loss=f"{recent[-1]:.4f}")
            if is_main():
                ctx.report_progress(done, cfg.steps, result.losses)
        if done % cfg.checkpoint_every == 0 and done < cfg.steps:
            _checkpoint(run, done, model, ema, opt, sched, gen, result, loss_state)
    bar.close()
    result.wall_s, result.cpu_s = time.perf_counter() - t0, time.process_time() - c0
    result.steps_per_s = (cfg.steps - start) / result.wall_s if result.wall_s > 0 else math.nan
    if ema is not None:
        ema.shadow_params = full_tensors(ema.shadow_params)
    return wrapped.unwrap().eval(), result, ema


def _checkpoint(run, step, model, ema, opt, sched, gen, result, loss_state) -> None:
    """Rank 0 writes whole state dicts; under FSDP2 every rank takes part in gathering them."""
    weights, optimizer = full_model_state(model), full_optimizer_state(model, opt)
    shadow = None if ema is None else full_tensors(ema.shadow_params)
    if not is_main():
        return
    with tempfile.TemporaryDirectory() as tmp:
        d = Path(tmp)
        save_tensors(weights, d / "model.safetensors")
        if shadow is not None:
            save_tensors({str(i): p for i, p in enumerate(shadow)}, d / "ema.safetensors")
        if loss_state is not None:
            save_tensors(loss_state.state_dict(), d / "loss_state.safetensors")
        torch.save({"optimizer": optimizer, "lr_scheduler": sched.state_dict(),
                    "generator": gen.get_state(), "torch_rng": torch.get_rng_state()}, d / "state.pt")
        write_json(d / "progress.json", {"step": step, "losses": result.losses,
                                         "flops_per_step": result.flops_per_step})
        run.save(step, d)


def _resume(run, model, ema, opt, sched, gen, result, ctx, loss_state) -> int:
    """Every rank loads the newest checkpoint (whole tensors, sharded again under FSDP2)."""
    steps = run.steps()
    if not steps:
        return 0
    with tempfile.TemporaryDirectory() as tmp:
        d = run.load(steps[-1], Path(tmp))
        load_full_model_state(model, load_tensors(d / "model.safetensors"))
        if loss_state is not None:
            loss_state.load_state_dict(load_tensors(d / "loss_state.safetensors"))
        if ema is not None:
            shadow = load_tensors(d / "ema.safetensors")
            ema.shadow_params = like_parameters([shadow[str(i)] for i in range(len(ema.shadow_params))],
                                                ema.shadow_params)
            ema.optimization_step = steps[-1]
        state = torch.load(d / "state.pt", weights_only=True)
        load_full_optimizer_state(model, opt, state["optimizer"])
        sched.load_state_dict(state["lr_scheduler"])
        gen.set_state(state["generator"])
        torch.set_rng_state(state["torch_rng"])
        progress = json.loads((d / "progress.json").read_text())
        result.losses, result.flops_per_step = progress["losses"], progress.get("flops_per_step")
    result.resumed_from = steps[-1]
    ctx.log(f"{ctx.node}: resumed from the checkpoint at step {steps[-1]}")
    return steps[-1]


def published_weights(model: torch.nn.Module, ema: EMAModel | None) -> torch.nn.Module:
    """The weights a training stage publishes: a copy of `model` holding the EMA, or `model` itself without one."""
    if ema is None:
        return model
    averaged = copy.deepcopy(model)
    ema.copy_to(averaged.parameters())
    return averaged


def save_trained(model: ModelMixin, ema: EMAModel | None, out: Path) -> None:
    """Write `model/` (EMA weights when EMA is on) and `model_online/` (the raw weights, with EMA)."""
    if ema is not None:
        save_model(model, out / ONLINE_MODEL_DIR)
    save_model(published_weights(model, ema), out / MODEL_DIR)


LOSSES_FILE = "losses.json"
"""The per-step training losses of a checkpoint artifact (loss spikes, convergence speed)."""


def publish_losses(losses: list[float], out: Path, title: str) -> Path:
    """Write the per-step losses into the artifact folder as JSON and as a loss-curve PNG (its path)."""
    write_json(out / LOSSES_FILE, {"losses": losses})
    return plot_losses(losses, out / "loss_curve.png", title)


def count_spikes(values: list[float], factor: float = 3.0, window: int = 50) -> int:
    """Steps whose value exceeds `factor` x the median of the previous `window` values (loss or grad-norm spikes)."""
    return sum(v > factor * statistics.median(values[i - window:i]) for i, v in enumerate(values) if i >= window)


@serialized
def plot_losses(losses: list[float], path: Path, title: str) -> Path:
    """Loss curve (raw and a running mean) as a PNG."""
    fig, ax = plt.subplots(figsize=(5, 3))
    ax.plot(losses, lw=0.5, alpha=0.4, label="loss")
    w = max(1, len(losses) // 50)
    if len(losses) >= w:
        smooth = torch.tensor(losses).unfold(0, w, 1).mean(1)
        ax.plot(range(w - 1, len(losses)), smooth, lw=1.5, label=f"mean of {w}")
    ax.set_yscale("log")
    ax.set_xlabel("step")
    ax.set_title(title, fontsize=9)
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)
    return path


@serialized
def plot_against_budget(samples: torch.Tensor, series: dict[str, torch.Tensor], path: Path, title: str,
                        ylabel: str) -> Path:
    """Curves against samples generated, as a PNG (RL reward curves).

    Not against wall time: the artifact is hashed and must not hold run facts (the wall-time column stays in
    the manifest's lineage timings).
    """
    fig, ax = plt.subplots(figsize=(5, 3))
    for name, values in series.items():
        ax.plot(samples, values, lw=1, label=name)
    ax.set_xlabel("samples generated")
    ax.set_ylabel(ylabel)
    ax.legend(fontsize=7)
    ax.set_title(title, fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)
    return path
