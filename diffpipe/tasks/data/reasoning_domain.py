"""The Countdown and Sudoku domains: token data in zarr, the masked-diffusion transformer, block sampling,
exact verifiers.

Data. `build` writes `train.zarr` and `test.zarr` (prompt and completion token ids plus the problem's
numbers and target, or puzzle and solution); train and test never share a problem.

Training. The network maps token ids to logits (`net(model)` is the model itself); a batch is
(completions, prompts) and the `masked_diffusion` objective masks completions only. With `cond_dropout`
> 0 a share of the prompts is replaced by mask tokens (prompt dropout), which discrete classifier-free
guidance (`search: {method: discrete_cfg}`) needs for its unconditional branch.

Sampling. The first `num_samples` held-out prompts are completed with low-confidence remasking in
semi-autoregressive blocks (diffusers' `BlockRefinementScheduler`; `scheduler.steps` decoding steps in
all, `scheduler.options.block_length` tokens per block), greedily, or by the stage's `search` method.
With `samples_per_condition: k` > 1 each prompt gets k completions drawn at temperature 1 (the model's
own distribution; tokens sampled, the most confident committed first) instead of one greedy completion.
Evaluation scores the completions with the exact verifiers: accuracy (exactly correct) and the d1 reward
(Countdown: 1 / 0.1 / 0; Sudoku: share of blanks filled correctly), beside the reference completions'
scores as a floor. For k > 1 draws per prompt it adds their diversity: per prompt the share of distinct
completions and the mean pairwise Hamming distance (positions that differ, over the k (k - 1) / 2 pairs),
averaged over prompts.
"""

from __future__ import annotations

import time
from abc import ABC, abstractmethod
from pathlib import Path
from typing import Any

import numpy as np
import torch
import xarray as xr
from diffusers import ModelMixin, SchedulerMixin

from diffpipe.errors import DataError, SpecError
from diffpipe.schemas import EvaluateStage, ModelSpec, Objective, PipelineSpec, SampleStage
from diffpipe.schemas.reasoning import CountdownData, MDLMSpec, SudokuData
from diffpipe.storage.formats import open_dataset, write_dataset, write_json

from ..context import StageContext, StageOutput
from ..domain import SAMPLES_FILE, TensorBatches, metrics_table
from ..mdlm import block_schedule, sample_completions
from ..nets.mdlm import MaskedDiffusionTransformer
from ..registry import domain
from ..sampling import CountingNet
from ..search.masked import complete
from ..search.run import make_search
from .reasoning import (
    MASK,
    VOCAB,
    CharVocab,
    build_countdown,
    build_sudoku,
    check_reasoning_dataset,
    countdown_problem_counts,
    score_completions,
    sudoku_puzzle_counts,
)

SCHEDULER_OPTIONS = frozenset({"block_length"})
"""BlockRefinementScheduler options the sampler honours (it commits exactly the scheduled tokens per step)."""
PREVIEW_ROWS = 8


def token_tensors(ds: xr.Dataset) -> tuple[torch.Tensor, torch.Tensor]:
    """Prompt (N, P) and completion (N, L) token ids of a split or of a samples set."""
    return torch.from_numpy(ds["prompt"].values), torch.from_numpy(ds["completion"].values)


def diversity(completions: np.ndarray, per_prompt: int) -> dict[str, float]:
    """Distinct share and mean pairwise Hamming distance of each prompt's `per_prompt` consecutive completions,
    averaged over prompts."""
    groups = np.asarray(completions).reshape(-1, per_prompt, np.asarray(completions).shape[-1])
    distinct = [len({row.tobytes() for row in g}) / per_prompt for g in groups]
    upper = np.triu_indices(per_prompt, k=1)
    hamming = [(g[:, None, :] != g[None, :, :]).sum(-1)[upper].mean() for g in groups]
    return {"distinct_share": float(np.mean(distinct)), "mean_pairwise_hamming": float(np.mean(hamming))}


def score(task: str, prompts: np.ndarray, completions: np.ndarray) -> dict[str, float]:
    """Held-out accuracy (exactly correct) and mean reward of completions."""
    rewards, correct = score_completions(task, prompts, completions)
    return {"accuracy": float(correct.mean()), "reward": float(rewards.mean())}


class ReasoningDomain(ABC):
    """Shared behaviour of the verifiable token tasks; subclasses name the task and build the splits.

    A task with its own vocabulary or verifier (the RNA design task) overrides `vocab`, `check_split`
    and `score_completions`.
    """

    task: str
    vocab: CharVocab = VOCAB
    """Token vocabulary (pad, mask and end are ids 0, 1, 2 in every vocabulary)."""

    def check_split(self, ds: xr.Dataset, where: str) -> None:
        """Raise DataError unless `ds` holds this task's in-vocabulary prompt and completion arrays."""
        check_reasoning_dataset(ds, where)

    def score_completions(self, prompts: np.ndarray, completions: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Rewards and exact correctness of completions (token arrays) for their prompts."""
        return score_completions(self.task, prompts, completions)

    def score(self, prompts: np.ndarray, completions: np.ndarray) -> dict[str, float]:
        """Held-out accuracy (exactly correct) and mean reward of completions."""
        rewards, correct = self.score_completions(prompts, completions)
        return {"accuracy": float(correct.mean()), "reward": float(rewards.mean())}

    def load_split(self, path: Path, split: str) -> xr.Dataset:
        """One split of the data artifact, checked."""
        ds = open_dataset(path / f"{split}.zarr").load()
        self.check_split(ds, f"{path.name}/{split}.zarr")
        return ds

    @abstractmethod
    def splits(self, ctx: StageContext) -> dict[str, xr.Dataset]:
        """The train and test splits built from the data spec."""

    def build(self, ctx: StageContext) -> StageOutput:
        """Write `train.zarr` and `test.zarr`; metrics: sizes, lengths, a few decoded examples."""
        t0 = time.perf_counter()
        splits = self.splits(ctx)
        for split, ds in splits.items():
            self.check_split(ds, f"{self.task} {split} split")
            write_dataset(ds, ctx.workdir / f"{split}.zarr")
        train = splits["train"]
        metrics = {"task": self.task, "num_train": int(train.sizes["problem"]),
                   "num_test": int(splits["test"].sizes["problem"]),
                   "prompt_length": int(train.sizes["prompt_pos"]),
                   "completion_length": int(train.sizes["completion_pos"]), "vocab_size": self.vocab.size,
                   "examples": [f"{self.vocab.decode(p)} -> {self.vocab.decode(c)}" for p, c in
                                zip(train["prompt"].values[:3], train["completion"].values[:3], strict=True)],
                   "build_wall_s": time.perf_counter() - t0}
        write_json(ctx.workdir / "metrics.json", metrics)
        summary = (f"{self.task}: {metrics['num_train']} train / {metrics['num_test']} held-out problems, "
                   f"prompt {metrics['prompt_length']} + completion {metrics['completion_length']} tokens.")
        return StageOutput("dataset", metrics, summary)

    def lengths(self, ctx: StageContext) -> tuple[int, int]:
        """(prompt, completion) lengths in tokens."""
        train = open_dataset(ctx.input_path("data") / "train.zarr")
        return int(train.sizes["prompt_pos"]), int(train.sizes["completion_pos"])

    def check_spec(self, spec: PipelineSpec) -> None:
        """The model is the masked-diffusion transformer; block lengths of the block sampler are positive integers;
        several draws per prompt come from plain sampling, not from a search."""
        if not isinstance(spec.model, MDLMSpec):
            raise SpecError("model.arch", f"{self.task} data needs the masked-diffusion transformer", "mdlm",
                            repr(spec.model.arch))
        for i, stage in enumerate(spec.stages):
            if isinstance(stage, SampleStage) and stage.search is not None and stage.samples_per_condition > 1:
                raise SpecError(f"stages[{i}].samples_per_condition", "a search returns one completion per prompt",
                                "1 with search", str(stage.samples_per_condition))
            block = getattr(getattr(stage, "scheduler", None), "options", {}).get("block_length")
            if block is not None and (isinstance(block, bool) or not isinstance(block, int) or block < 1):
                raise SpecError(f"stages[{i}].scheduler.options.block_length", "the block sampler needs whole blocks",
                                "a positive integer (tokens)", repr(block))

    def build_model(self, model: ModelSpec, ctx: StageContext) -> ModelMixin:
        """A masked-diffusion transformer with random weights, sized for the data's sequences."""
        if not isinstance(model, MDLMSpec):
            raise SpecError("model.arch", f"{self.task} data needs the masked-diffusion transformer", "mdlm",
                            repr(model.arch))
        prompt_len, completion_len = self.lengths(ctx)
        return MaskedDiffusionTransformer(self.vocab.size, prompt_len + completion_len, MASK,
                                          **model.model_dump(exclude={"arch"}))

    def net(self, model: ModelMixin) -> ModelMixin:
        """The token model itself: ids (B, P + L) -> logits."""
        return model

    def batches(self, ctx: StageContext, device: torch.device) -> TensorBatches:
        """Training batches: (completions, prompts) drawn with replacement."""
        prompts, completions = token_tensors(self.load_split(ctx.input_path("data"), "train"))
        return TensorBatches(completions.to(device), prompts.to(device))

    def drop_condition(self, model: ModelMixin, cond: torch.Tensor, drop: torch.Tensor) -> torch.Tensor:
        """Prompts of the dropped rows replaced by mask tokens (what discrete classifier-free guidance reads)."""
        return torch.where(drop.to(cond.device)[:, None], torch.full_like(cond, MASK), cond)

    def reward(self, prompts: torch.Tensor, completions: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Exact verifier: rewards (d1 scheme) and correctness of completions."""
        rewards, correct = self.score_completions(prompts.cpu().numpy(), completions.cpu().numpy())
        return torch.from_numpy(rewards).float(), torch.from_numpy(correct)

    def sampler_settings(self, ctx: StageContext, spec: SampleStage, scheduler: SchedulerMixin,
                         completion_len: int) -> tuple[int, int]:
        """(steps, block_length) of the block sampler, checked against the completion length."""
        unknown = sorted(set(spec.scheduler.options) - SCHEDULER_OPTIONS)
        if unknown:
            raise SpecError(ctx.field_path("scheduler.options"), "the block sampler takes only a block length",
                            "block_length", ", ".join(unknown))
        block_length = min(int(scheduler.config.block_length), completion_len)
        try:
            block_schedule(completion_len, spec.scheduler.steps, block_length)
        except ValueError as e:
            raise SpecError(ctx.field_path("scheduler.steps"), str(e), "a multiple of the number of blocks",
                            str(spec.scheduler.steps)) from e
        return spec.scheduler.steps, block_length

    def sample(self, ctx: StageContext, spec: SampleStage, model: ModelMixin, objective: Objective,
               scheduler: SchedulerMixin, info: dict[str, Any]) -> StageOutput:
        """Block-sampled completions of the first `num_samples` held-out prompts, as zarr: one greedy completion
        each, or `samples_per_condition` draws at temperature 1."""
        test = self.load_split(ctx.input_path("data"), "test")
        prompts, _ = token_tensors(test)
        draws = spec.samples_per_condition
        prompts = prompts[: spec.num_samples].repeat_interleave(draws, dim=0)
        temperature = 0.0 if draws == 1 else 1.0
        steps, block_length = self.sampler_settings(ctx, spec, scheduler, test.sizes["completion_pos"])
        net, search, length = CountingNet(model), make_search(ctx, spec), test.sizes["completion_pos"]
        chunks, gen, t0 = [], ctx.generator(offset=1000 + spec.seed), time.perf_counter()
        with ctx.progress_bar("completions", len(prompts)) as advance:
            for start in range(0, len(prompts), spec.batch_size):
                batch = prompts[start:start + spec.batch_size].to(ctx.device)
                with ctx.autocast():
                    out = complete(search, net, batch, length, steps, block_length, MASK, gen) if search else \
                        sample_completions(net, batch, length, MASK, steps=steps, block_length=block_length,
                                           temperature=temperature, generator=gen)
                chunks.append(out.cpu())
                advance(len(batch))
        wall = time.perf_counter() - t0
        completions = torch.cat(chunks)
        ds = xr.Dataset({"prompt": (("sample", "prompt_pos"), prompts.numpy()),
                         "completion": (("sample", "completion_pos"), completions.numpy())},
                        attrs={"stage": ctx.node, "task": self.task, "steps": steps, "block_length": block_length,
                               "samples_per_condition": draws, "temperature": temperature})
        write_dataset(ds, ctx.workdir / SAMPLES_FILE)
        metrics = {"num_samples": len(prompts), "samples_per_condition": draws, "temperature": temperature,
                   "scheduler": type(scheduler).__name__, "steps": steps,
                   "block_length": block_length, "nfe_per_sample": steps, "sampling_wall_s": wall,
                   "samples_per_s": len(prompts) / wall, **net.costs(len(prompts)),
                   **(search.metrics() if search else {}),
                   "examples": [f"{self.vocab.decode(p)} -> {self.vocab.decode(c)}" for p, c in
                                zip(prompts[:PREVIEW_ROWS].tolist(), completions[:PREVIEW_ROWS].tolist(),
                                    strict=True)]}
        how = "greedy" if draws == 1 else f"{draws} draws per prompt at temperature 1"
        summary = (f"{len(prompts)} held-out {self.task} completions, {steps} steps in blocks of {block_length} "
                   f"tokens (low-confidence remasking, {how}).")
        return StageOutput("samples", metrics, summary)

    def evaluate(self, ctx: StageContext, spec: EvaluateStage) -> StageOutput:
        """Accuracy and mean reward under the exact verifiers, with the reference completions as floor; with
        several draws per prompt, their diversity too."""
        if "domain" not in spec.metrics:
            raise SpecError(ctx.field_path("metrics"), f"{self.task} is scored by its exact verifiers",
                            "a list containing domain", str(spec.metrics))
        samples = open_dataset(ctx.input_path("samples") / SAMPLES_FILE).load()
        if samples.attrs.get("task") != self.task:
            raise DataError(f"{ctx.input_path('samples').name}/{SAMPLES_FILE}", "samples of another task",
                            self.task, repr(samples.attrs.get("task")))
        prompts, completions = token_tensors(samples)
        draws = int(samples.attrs.get("samples_per_condition", 1))
        test = self.load_split(ctx.input_path("data"), "test")
        with ctx.progress_bar("sample sets scored", 2) as advance:
            model = self.score(prompts.numpy(), completions.numpy())
            if draws > 1:
                model.update(diversity(completions.numpy(), draws))
            advance(1)
            heldout = len(prompts) // draws
            floor = self.score(test["prompt"].values[:heldout], test["completion"].values[:heldout])
            advance(1)
        metrics = {"model": model, "data_floor": floor, "num_samples": len(prompts), "samples_per_condition": draws,
                   "not_applicable": sorted(set(spec.metrics) - {"domain"})}
        return StageOutput("metrics", metrics, metrics_table(metrics))


def check_split_sizes(data: CountdownData | SudokuData, counts: dict[str, int], what: str) -> None:
    """SpecError naming `data.num_train` / `data.num_test` when a split has fewer distinct `what` than asked."""
    for split, field in (("train", "num_train"), ("test", "num_test")):
        wanted = getattr(data, field)
        if wanted > counts[split]:
            raise SpecError(f"data.{field}", f"the {split} split has only {counts[split]} distinct {what}",
                            f"at most {counts[split]}", str(wanted))


@domain("countdown")
class CountdownDomain(ReasoningDomain):
    """Countdown with 3-4 numbers and + - * /."""

    task = "countdown"

    def check_spec(self, spec: PipelineSpec) -> None:
        """The reasoning checks, and the split sizes against the distinct problems each split holds (counted
        exactly where that takes about a second; larger spaces rely on the schema's upper bound)."""
        super().check_spec(spec)
        data: CountdownData = spec.data
        counts = countdown_problem_counts(data.num_numbers, data.max_number, data.max_target, data.test_fraction)
        if counts is not None:
            check_split_sizes(data, counts, f"problems with targets up to {data.max_target}")

    def splits(self, ctx: StageContext) -> dict[str, xr.Dataset]:
        """Countdown splits from the data spec."""
        spec: CountdownData = ctx.pipeline.data
        return build_countdown(spec.num_train, spec.num_test, num_numbers=tuple(spec.num_numbers),
                               max_number=spec.max_number, max_target=spec.max_target,
                               test_fraction=spec.test_fraction, seed=spec.seed, bars=ctx.progress_bar)


@domain("sudoku")
class SudokuDomain(ReasoningDomain):
    """4x4 Sudoku with unique solutions."""

    task = "sudoku"

    def check_spec(self, spec: PipelineSpec) -> None:
        """The reasoning checks, and the split sizes against the distinct puzzles each split holds (exact)."""
        super().check_spec(spec)
        data: SudokuData = spec.data
        counts = sudoku_puzzle_counts(data.min_blanks, data.max_blanks, data.test_fraction)
        check_split_sizes(data, counts, f"puzzles with {data.min_blanks}..{data.max_blanks} blanks")

    def splits(self, ctx: StageContext) -> dict[str, xr.Dataset]:
        """Sudoku splits from the data spec."""
        spec: SudokuData = ctx.pipeline.data
        return build_sudoku(spec.num_train, spec.num_test, min_blanks=spec.min_blanks, max_blanks=spec.max_blanks,
                            test_fraction=spec.test_fraction, seed=spec.seed, bars=ctx.progress_bar)
