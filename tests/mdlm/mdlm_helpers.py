"""Tiny models shared by the masked-diffusion tests."""

import torch

from diffpipe.tasks.data.reasoning import MASK, VOCAB
from diffpipe.tasks.nets.mdlm import MaskedDiffusionTransformer


def tiny_model(seed: int = 0, max_length: int = 16, d_model: int = 16) -> MaskedDiffusionTransformer:
    """A 1-layer model with random weights, scaled up so its predictions depend on the context."""
    torch.manual_seed(seed)
    model = MaskedDiffusionTransformer(VOCAB.size, max_length, MASK, d_model=d_model, num_layers=1,
                                       num_heads=2)
    with torch.no_grad():
        model.head.weight.mul_(8.0)
    return model.eval()


class ContextModel(torch.nn.Module):
    """Logits linear in the one-hot of every position plus a masked-fraction term: context-dependent."""

    def __init__(self, length: int, seed: int, scale: float = 1.5):
        super().__init__()
        generator = torch.Generator().manual_seed(seed)
        self.weight = torch.nn.Parameter(scale * torch.randn(length, length, VOCAB.size, VOCAB.size,
                                                             generator=generator))
        self.masked_fraction = torch.nn.Parameter(4 * torch.randn(length, VOCAB.size, generator=generator))

    def forward(self, input_ids: torch.Tensor) -> torch.Tensor:
        """Logits (B, S, V) with the mask logit at -inf."""
        length = input_ids.shape[1]
        onehot = torch.nn.functional.one_hot(input_ids, VOCAB.size).float()
        logits = torch.einsum("bjv,ijvw->biw", onehot, self.weight[:length, :length]) / length ** 0.5
        fraction = (input_ids == MASK).float().mean(dim=1, keepdim=True).unsqueeze(-1)
        logits = logits + fraction * self.masked_fraction[:length]
        return logits.index_fill(-1, torch.tensor([MASK]), float("-inf"))


def rl_rollout_batch(model: torch.nn.Module, algorithm: dict, prompts: torch.Tensor, reward_fn, *,
                     completion_length: int, group_size: int = 4, groups_per_step: int = 2, lr: float = 1e-3):
    """One rollout batch through the `rl` stage's per-step work (`DiscreteRun.step_loss`): `num_iterations`
    optimizer steps, each back-propagated, clipped and stepped as the shared loop does; returns the run's
    state (its per-step log) and the losses."""
    from diffpipe.schemas.rl import RLStage
    from diffpipe.tasks.data.reasoning import EOS
    from diffpipe.tasks.distributed import frozen_copy
    from diffpipe.tasks.rl.discrete import make_algorithm
    from diffpipe.tasks.rl.discrete.stage import DiscreteRun, DiscreteState

    spec = RLStage.model_validate({"name": "rl", "init": "pretrain", "algorithm": algorithm,
                                   "rewards": [{"name": "verifier"}], "group_size": group_size,
                                   "groups_per_step": groups_per_step, "steps": algorithm["num_iterations"],
                                   "lr": lr})
    algo = make_algorithm(spec.algorithm, MASK, EOS)
    state = DiscreteState(spec.steps, algo.state)
    run = DiscreteRun(spec, model, frozen_copy(model, torch.device("cpu")), algo, reward_fn, prompts,
                      completion_length, state)
    optimizer, gen, losses = torch.optim.AdamW(model.parameters(), lr=spec.lr), torch.Generator().manual_seed(0), []
    model.train()
    for _ in range(spec.steps):
        optimizer.zero_grad(set_to_none=True)
        loss = run.step_loss(gen)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), spec.grad_clip)
        optimizer.step()
        losses.append(float(loss.detach()))
    return state, losses
