"""ELBO estimators against the exact ELBO from enumerating every mask.

Statistical tolerance: each unbiased estimator's mean over N independent replicates must lie within
4.5 standard errors of its exact target (a false failure has probability below 1e-4 over this file;
the seeds are fixed, so a run is reproducible).
"""

import itertools
import math

import pytest
import torch
from mdlm_helpers import ContextModel

from diffpipe.tasks.data.reasoning import MASK
from diffpipe.tasks.mdlm import (
    MaskPlan,
    draw_elbo_plan,
    elbo_integrand_from_sums,
    exact_elbo,
    exact_elbo_from_sums,
    mask_size_sums,
    masked_token_logps,
    plan_estimate,
    quadrature_rule,
)

LENGTH, REPLICATES, Z_TOL = 6, 3000, 4.5


@pytest.fixture(scope="module")
def setup():
    model = ContextModel(4 + LENGTH, seed=1)
    generator = torch.Generator().manual_seed(0)
    prompt, completion = torch.randint(3, 21, (2, 4), generator=generator), torch.randint(3, 21, (2, LENGTH),
                                                                                         generator=generator)
    with torch.no_grad():
        sums = mask_size_sums(model, prompt, completion, MASK)
    return model, prompt, completion, sums


def replicate_estimates(setup, estimator, forwards, seed, **kwargs):
    model, prompt, completion, _ = setup
    generator = torch.Generator().manual_seed(seed)
    plan = draw_elbo_plan(estimator, 2 * REPLICATES, LENGTH, forwards, generator, **kwargs)
    prompts, completions = prompt.repeat(REPLICATES, 1), completion.repeat(REPLICATES, 1)
    with torch.no_grad():
        values = plan_estimate(model, prompts, completions, plan, MASK)
    return values.double().view(REPLICATES, 2)


def assert_unbiased(values, target):
    z = (values.mean(0) - target) / (values.std(0) / math.sqrt(REPLICATES))
    assert (z.abs() < Z_TOL).all(), f"z-scores {z.tolist()}"


def test_exact_elbo_equals_the_any_order_autoregressive_average():
    """ELBO = E over orders sigma of sum_k log p(y_sigma(k) | y_sigma(<k)), enumerated for L = 4."""
    model = ContextModel(7, seed=2)
    prompt, completion = torch.randint(3, 21, (1, 3)), torch.randint(3, 21, (1, 4))
    masks = []
    for order in itertools.permutations(range(4)):
        for k in range(4):  # step k reveals order[k]; the rest of order[k:] is still masked
            mask = torch.zeros(4, dtype=torch.bool)
            mask[list(order[k:])] = True
            only = torch.zeros(4, dtype=torch.bool)
            only[order[k]] = True
            masks.append((mask, only))
    with torch.no_grad():
        plan = MaskPlan(torch.stack([m for m, _ in masks]).unsqueeze(1), torch.ones(len(masks), 1))
        logps = masked_token_logps(model, prompt, completion, plan, MASK)
        ao_ar = sum(float(logps[i, 0][only].sum()) for i, (_, only) in enumerate(masks)) / math.factorial(4)
        assert abs(float(exact_elbo(model, prompt, completion, MASK)) - ao_ar) < 1e-4


@pytest.mark.parametrize(("estimator", "forwards"),
                         [("mc", 1), ("mc", 3), ("stratified", 3), ("antithetic", 2), ("antithetic", 4)])
def test_monte_carlo_estimators_are_unbiased(setup, estimator, forwards):
    values = replicate_estimates(setup, estimator, forwards, seed=forwards)
    assert_unbiased(values, exact_elbo_from_sums(setup[3]))


def test_stratified_times_do_not_add_variance(setup):
    """Equal-probability strata never increase variance; 10% slack for the sampled variances."""
    mc = replicate_estimates(setup, "mc", 4, seed=10).var(0)
    assert (replicate_estimates(setup, "stratified", 4, seed=11).var(0) < 1.1 * mc).all()


@pytest.mark.parametrize(("rule", "nodes"), [("gauss", 1), ("gauss", 2), ("simpson", 3)])
def test_bernoulli_quadrature_is_unbiased_for_its_rule(setup, rule, nodes):
    """With Bernoulli masks the estimator's mean is the rule applied to the exact integrand g(t)."""
    t, w = quadrature_rule(rule, nodes)
    target = (elbo_integrand_from_sums(setup[3], torch.tensor(t)) * torch.tensor(w)).sum(-1)
    values = replicate_estimates(setup, "quadrature", nodes, seed=20 + nodes, rule=rule, fixed_count=False)
    assert_unbiased(values, target)


def test_gauss_quadrature_error_vanishes_at_l_over_2_nodes(setup):
    """g(t) is a polynomial of degree L-1: Gauss-Legendre with N >= L/2 nodes integrates it exactly."""
    exact = exact_elbo_from_sums(setup[3])
    errors = []
    for nodes in (1, 2, 3):
        t, w = quadrature_rule("gauss", nodes)
        errors.append(float(((elbo_integrand_from_sums(setup[3], torch.tensor(t)) * torch.tensor(w)).sum(-1)
                             - exact).abs().max()))
    assert errors[0] > errors[1] > errors[2] and errors[2] < 1e-4 * float(exact.abs().max())
    values = replicate_estimates(setup, "quadrature", 3, seed=30, rule="gauss", fixed_count=False)
    assert_unbiased(values, exact)


def test_fixed_count_quadrature_matches_its_deterministic_target(setup):
    """Fixed counts l_n = round(t_n L): mean = sum_n w_n (L / l_n) a_{l_n} / C(L, l_n), biased."""
    sums = setup[3]
    t, w = quadrature_rule("gauss", 2)
    target = sum(wn * LENGTH / ln * sums[:, ln - 1] / math.comb(LENGTH, ln)
                 for tn, wn in zip(t, w, strict=True) for ln in [min(max(round(tn * LENGTH), 1), LENGTH)])
    values = replicate_estimates(setup, "quadrature", 2, seed=40, rule="gauss", fixed_count=True)
    assert_unbiased(values, target)
    assert (target - exact_elbo_from_sums(sums)).abs().max() > 0  # deterministic quadrature bias
