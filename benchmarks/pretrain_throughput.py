"""Pretrain steps/s of the pipeline's training loop vs a bare hand-written torch loop (same model, batch, optimizer).

The pipeline side is the real `pretrain` stage function (EMA, warm-up, clipping, resumable checkpoints,
logging, progress bar) called on a real digits data artifact; the bare side is the minimal loop with the
same UNet, flow-matching loss, batch size and AdamW. Runs alternate to share the machine's noise; the
ratio of medians is reported. Prefect's per-stage overhead is excluded here and measured by
pipeline_cache.py. Usage: python benchmarks/pretrain_throughput.py [--steps 200] [--repeats 3]
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from pathlib import Path

import torch

from diffpipe.flows.plan import node_key, nodes
from diffpipe.flows.spec_loading import load_spec
from diffpipe.storage import ArtifactStore
from diffpipe.tasks.context import StageContext
from diffpipe.tasks.registry import get_domain, get_stage

REPO = Path(__file__).resolve().parents[1]


def pipeline_steps_per_s(spec, store: ArtifactStore, data_ref, key: str) -> float:
    """Run the real pretrain stage function once and return its measured steps/s."""
    store.clear_run(key)
    with tempfile.TemporaryDirectory() as tmp:
        ctx = StageContext(spec, "pretrain", key, {"data": data_ref}, store, Path(tmp), log=lambda m: None)
        out = get_stage("pretrain")(ctx)
    store.clear_run(key)
    return out.metrics["steps_per_s"]


def bare_steps_per_s(spec, data_path: Path, steps: int) -> float:
    """The same training written as a minimal loop."""
    stage = spec.stages[0]
    domain = get_domain("digits")
    x, labels = domain.load(data_path, "train")
    torch.manual_seed(0)
    model = domain.build_model(spec.model, type("C", (), {"pipeline": spec})())
    opt = torch.optim.AdamW(model.parameters(), lr=stage.lr)
    gen = torch.Generator().manual_seed(1)
    t0 = time.perf_counter()
    for _ in range(steps):
        idx = torch.randint(0, len(x), (stage.batch_size,), generator=gen)
        x0, lab = x[idx], labels[idx]
        t = torch.sigmoid(torch.randn(stage.batch_size, generator=gen))
        eps = torch.randn(x0.shape, generator=gen)
        tt = t.view(-1, 1, 1, 1)
        pred = model((1 - tt) * x0 + tt * eps, t * 1000, class_labels=lab).sample
        loss = ((pred - (eps - x0)) ** 2).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
    return steps / (time.perf_counter() - t0)


def main() -> None:
    """Measure both loops alternately and write benchmarks/results/pretrain_throughput.json."""
    parser = argparse.ArgumentParser()
    parser.add_argument("--steps", type=int, default=200)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as root:
        spec = load_spec(REPO / "pipelines" / "digits.yaml",
                         [f"stages.pretrain.steps={args.steps}", f"storage.root={root}", "runtime.device=cpu",
                          f"stages.pretrain.checkpoint_every={max(1, args.steps // 4)}"])
        store = ArtifactStore(spec.storage.root)
        data_node = nodes(spec)[0]
        key, _ = node_key(spec, data_node, {})
        with tempfile.TemporaryDirectory() as tmp:
            out = get_domain("digits").build(StageContext(spec, "data", key, {}, store, Path(tmp)))
            data_ref = store.publish(Path(tmp), out.kind, {})
        pipeline, bare = [], []
        for _ in range(args.repeats):
            bare.append(bare_steps_per_s(spec, store.local_path(data_ref), args.steps))
            pipeline.append(pipeline_steps_per_s(spec, store, data_ref, "bench-" + "0" * 58))
    result = {
        "steps": args.steps, "repeats": args.repeats, "batch_size": spec.stages[0].batch_size,
        "torch_threads": torch.get_num_threads(), "pipeline_steps_per_s": pipeline, "bare_steps_per_s": bare,
        "ratio_of_medians": statistics.median(pipeline) / statistics.median(bare), "target": ">= 0.95",
    }
    print(json.dumps(result, indent=2))
    out = REPO / "benchmarks" / "results" / "pretrain_throughput.json"
    out.write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
