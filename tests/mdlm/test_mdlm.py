"""Masked-diffusion network, pretraining loss and block low-confidence sampler."""

import pytest
import torch
from mdlm_helpers import tiny_model

from diffpipe.tasks.data.reasoning import MASK
from diffpipe.tasks.mdlm import block_schedule, masked_diffusion_loss, sample_completions
from diffpipe.tasks.nets.mdlm import MaskedDiffusionTransformer


def test_model_never_predicts_mask_and_reloads_offline(model, tmp_path):
    tokens = torch.randint(3, 21, (2, 10))
    logits = model(tokens)
    assert logits.shape == (2, 10, 21) and torch.isinf(logits[..., MASK]).all()
    model.save_pretrained(tmp_path)
    again = MaskedDiffusionTransformer.from_pretrained(tmp_path).eval()
    assert torch.allclose(again(tokens), logits)


def test_loss_is_finite_and_decreases_when_overfitting_a_batch():
    model = tiny_model(d_model=32).train()
    generator = torch.Generator().manual_seed(0)
    prompt, completion = torch.randint(3, 21, (8, 4), generator=generator), torch.randint(3, 21, (8, 6),
                                                                                         generator=generator)
    optimizer = torch.optim.Adam(model.parameters(), lr=3e-3)
    losses = []
    for _ in range(150):
        loss = masked_diffusion_loss(model, prompt, completion, MASK, generator)
        assert torch.isfinite(loss)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(float(loss.detach()))
    assert sum(losses[-20:]) / 20 < 0.5 * sum(losses[:20]) / 20


def test_loss_never_masks_the_prompt(model):
    """Changing the prompt changes the loss only through conditioning: masked prompt ids never appear."""
    seen = []
    model.register_forward_pre_hook(lambda _m, args: seen.append(args[0].clone()))
    prompt, completion = torch.randint(3, 21, (64, 5)), torch.randint(3, 21, (64, 6))
    masked_diffusion_loss(model, prompt, completion, MASK)
    inputs = seen[0]
    assert (inputs[:, :5] == prompt).all() and (inputs[:, 5:] == MASK).any()


@pytest.mark.parametrize(("steps", "block_length", "temperature"), [(6, None, 0.0), (6, 3, 1.0), (3, 2, 1.0)])
def test_sampler_fills_every_mask_block_by_block(model, steps, block_length, temperature):
    prompt = torch.randint(3, 21, (5, 4))
    inputs = []
    model.register_forward_pre_hook(lambda _m, args: inputs.append(args[0].clone()))
    out = sample_completions(model, prompt, 6, MASK, steps=steps, block_length=block_length,
                             temperature=temperature, generator=torch.Generator().manual_seed(0))
    assert out.shape == (5, 6) and not (out == MASK).any()
    assert len(inputs) == steps
    for x in inputs:
        assert (x[:, :4] == prompt).all()
        if block_length is not None:  # a later block stays fully masked until every earlier one is filled
            filled = x[:, 4:] != MASK
            for start in range(block_length, 6, block_length):
                if filled[:, start:].any():
                    assert filled[:, :start].all()


def test_greedy_sampling_is_deterministic_and_block_schedule_checks_steps(model):
    prompt = torch.randint(3, 21, (3, 4))
    first = sample_completions(model, prompt, 6, MASK, steps=6, block_length=2)
    assert torch.equal(first, sample_completions(model, prompt, 6, MASK, steps=6, block_length=2))
    assert block_schedule(6, 6, 4) == [(0, 4, 3), (4, 6, 3)]
    with pytest.raises(ValueError, match="multiple"):
        block_schedule(6, 5, 2)
