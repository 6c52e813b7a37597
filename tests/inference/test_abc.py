"""ABC baselines: rejection ABC and SMC-ABC against known Gaussian posteriors."""

import math

import numpy as np
import pytest
import torch

from sbitk import get_simulator
from sbitk.errors import SbitkError
from sbitk.inference.abc import rejection_abc, smc_abc
from sbitk.simulation.priors import BoxUniform, Normal

# Toy problem: theta ~ N(0, 9 I) in 2-D, x = theta + N(0, 0.25 I); the posterior is
# N(4 x_o / (1/9 + 4), 1 / (1/9 + 4) I), variance 0.243.
PRIOR = Normal(0.0, 3.0, dim=2)
X_O = torch.tensor([1.0, -0.5])
POST_MEAN = 4 * X_O / (1 / 9 + 4)


def _toy(theta: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    return theta + 0.5 * torch.randn(theta.shape, generator=generator)


def _moments(result) -> tuple[torch.Tensor, float]:
    mean = result.weights @ result.samples
    return mean, float((result.weights @ (result.samples - mean).square()).mean())


def test_rejection_abc_concentrates_on_gaussian_linear_as_the_tolerance_shrinks():
    # gaussian_linear: posterior N(x_o / 2, 0.05 I) in 10-D. Posterior variance (mean over the
    # dimensions) of the kept draws over 5 seeds of 100,000 simulations: 0.0732 (sd 0.0004),
    # 0.0646 (sd 0.0005), 0.0575 (sd 0.0023) keeping 10%, 1%, 0.1%.
    task = get_simulator("gaussian_linear")
    x_o = torch.full((10,), 0.3)
    results = [
        rejection_abc(task, x_o, num_simulations=100_000, quantile=q, seed=0)
        for q in (0.1, 0.01, 0.001)
    ]
    variances = [float(r.samples.var(0).mean()) for r in results]
    assert variances[0] > variances[1] > variances[2] > 0.05
    assert variances[2] < 0.064
    assert [r.tolerance for r in results] == sorted((r.tolerance for r in results), reverse=True)
    assert all(r.num_simulations == 100_000 for r in results)
    assert results[1].samples.shape == (1000, 10)


def test_regression_adjustment_recovers_the_linear_gaussian_posterior():
    # Over 5 seeds (1% of 100,000 kept): adjusted variance 0.0499 (sd 0.0006), largest error of
    # a posterior mean 0.032; unadjusted variance 0.0646.
    task = get_simulator("gaussian_linear")
    x_o = torch.full((10,), 0.3)
    plain = rejection_abc(task, x_o, num_simulations=100_000, quantile=0.01, seed=1)
    adjusted = rejection_abc(
        task, x_o, num_simulations=100_000, quantile=0.01, regression=True, seed=1
    )
    assert adjusted.adjusted and not plain.adjusted
    assert float(adjusted.samples.var(0).mean()) == pytest.approx(0.05, abs=0.003)
    assert float((adjusted.samples.mean(0) - x_o / 2).abs().max()) < 0.05
    assert float(plain.samples.var(0).mean()) > 0.06  # the check tells adjusted from not


def test_smc_abc_beats_rejection_at_the_same_budget():
    # Over 20 seeds at 20,000 simulations: SMC tolerance 0.234 (sd 0.013), posterior variance
    # 0.291 (sd 0.020) with Silverman's kernel width (0.349 and 0.361 with the population's
    # covariance); rejection keeping 1,000 draws: 0.491 (sd 0.009) and 0.480 (sd 0.019);
    # largest error of an SMC posterior mean 0.061.
    smc, rejection = [], []
    for seed in range(3):
        smc.append(smc_abc(_toy, X_O, prior=PRIOR, num_simulations=20_000, seed=seed))
        rejection.append(
            rejection_abc(_toy, X_O, prior=PRIOR, num_simulations=20_000, quantile=0.05, seed=seed)
        )
    assert np.mean([r.tolerance for r in smc]) < 0.9 * np.mean([r.tolerance for r in rejection])
    assert np.mean([_moments(r)[1] for r in smc]) < np.mean([_moments(r)[1] for r in rejection])
    for r in smc:
        assert float((_moments(r)[0] - POST_MEAN).abs().max()) < 0.12
        assert list(r.tolerances) == sorted(r.tolerances, reverse=True)
        assert r.num_simulations <= 20_000
        assert float(r.weights.sum()) == pytest.approx(1.0)
        assert r.effective_sample_size > 500


def test_smc_importance_weights_undo_the_proposal():
    # theta ~ N(0, 1), x = theta + N(0, 1), x_o = 1.5: the posterior is N(0.75, 0.5), and the
    # prior pulls against the likelihood, so weights that ignore the proposal drift to the
    # likelihood (measured without the correction: mean 1.375, variance 0.63). Over 8 seeds with
    # it (1,000 particles, 15,000 simulations): mean 0.738 (sd 0.019), variance 0.498 (sd 0.021).
    def simulate(theta, generator):
        return theta + torch.randn(theta.shape, generator=generator)

    result = smc_abc(
        simulate,
        torch.tensor([1.5]),
        prior=Normal(0.0, 1.0, dim=1),
        num_particles=1000,
        num_simulations=15_000,
        seed=0,
    )
    mean, variance = _moments(result)
    assert float(mean) == pytest.approx(0.75, abs=0.1)
    assert variance == pytest.approx(0.5, abs=0.1)


def test_the_number_of_simulations_is_recorded_exactly():
    calls = []

    def counting(theta, generator):
        calls.append(theta.shape[0])
        x = _toy(theta, generator)
        x[theta[:, 0] > 4.0] = math.nan  # failed simulations still count, and are never kept
        return x

    result = smc_abc(counting, X_O, prior=PRIOR, num_particles=300, num_simulations=5000, seed=0)
    assert result.num_simulations == sum(calls)
    assert bool(torch.isfinite(result.distances).all())
    calls.clear()
    result = rejection_abc(counting, X_O, prior=PRIOR, num_simulations=3000, batch_size=1000)
    assert result.num_simulations == sum(calls) == 3000 and calls == [1000] * 3


@pytest.mark.parametrize("budget", [3000, 5000, 7777, 20_000])
def test_smc_abc_spends_the_whole_budget_on_the_rounds_it_returns(budget):
    # Each round's simulations are num_particles / its acceptance rate: together they must make
    # up num_simulations, which is the budget. Before rounds were sized from the budget left, a
    # round it could not finish was dropped with its simulations counted (on two_moons with the
    # defaults: 18,700 of 20,000 simulations in the rounds returned, tolerance 0.62).
    result = smc_abc(_toy, X_O, prior=PRIOR, num_particles=300, num_simulations=budget, seed=0)
    spent = [round(300 / rate) for rate in result.acceptance_rates]
    assert result.num_simulations == sum(spent) == budget
    assert list(result.tolerances) == sorted(result.tolerances, reverse=True)
    assert float(result.distances.max()) == result.tolerance


def test_smc_abc_on_two_moons_uses_its_last_simulations():
    from sbitk_simulators.observations import load_observation

    task = get_simulator("two_moons")
    result = smc_abc(task, load_observation("two_moons", 1).reshape(-1), seed=0)
    spent = [round(1000 / rate) for rate in result.acceptance_rates]
    assert result.num_simulations == sum(spent) == 20_000
    assert result.tolerance < 0.6


def test_adjusted_particles_stay_in_a_bounded_prior():
    box = BoxUniform(-1.0, 1.0, dim=2)
    x_o = torch.tensor([0.95, -0.9])
    result = rejection_abc(
        _toy, x_o, prior=box, num_simulations=20_000, quantile=0.02, regression=True
    )
    assert bool(box.support_contains(result.samples).all())
    smc = smc_abc(_toy, x_o, prior=box, num_particles=300, num_simulations=5000, regression=True)
    assert bool(box.support_contains(smc.samples).all())


def test_same_seed_same_result_and_resampling():
    a = smc_abc(_toy, X_O, prior=PRIOR, num_particles=200, num_simulations=3000, seed=5)
    b = smc_abc(_toy, X_O, prior=PRIOR, num_particles=200, num_simulations=3000, seed=5)
    assert torch.equal(a.samples, b.samples) and a.tolerances == b.tolerances
    assert a.sample(50, seed=1).shape == (50, 2)
    assert torch.equal(a.sample(50, seed=1), b.sample(50, seed=1))


def test_rejection_abc_keeps_the_first_simulated_of_equal_distances():
    # A sign simulator: a quarter of the simulations (both signs positive) land on x_o
    # exactly, and the closest tenth is kept, so it is chosen among equal distances. The
    # first simulated are kept, whatever the sort's algorithm (the default one picked others
    # on the CPU, and a GPU picks its own).
    def sign(theta: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        return (theta > 0).to(theta)

    result = rejection_abc(sign, torch.ones(2), prior=PRIOR, num_simulations=400, quantile=0.1)
    theta = PRIOR.sample(400, torch.Generator().manual_seed(0))
    torch.testing.assert_close(result.samples, theta[(theta > 0).all(-1)][:40])


def test_tolerance_mode_and_summaries():
    result = rejection_abc(
        _toy,
        X_O,
        prior=PRIOR,
        num_simulations=5000,
        quantile=None,
        tolerance=0.3,
        summary=lambda x: x.sum(-1, keepdim=True),  # one summary: theta_1 + theta_2 only
    )
    assert result.tolerance <= 0.3 and result.scale.shape == (1,)
    total = result.samples.sum(-1)
    assert float((total - float(X_O.sum())).abs().mean()) < 1.5


@pytest.mark.parametrize(
    ("call", "match"),
    [
        (lambda: rejection_abc(_toy, X_O), "needs a prior"),
        (lambda: rejection_abc(_toy, X_O, prior=PRIOR, tolerance=1.0), "exactly one"),
        (lambda: rejection_abc(_toy, X_O, prior=PRIOR, quantile=1.5), "quantile"),
        (lambda: rejection_abc(_toy, torch.zeros(2, 2), prior=PRIOR), "one finite observation"),
        (lambda: rejection_abc(_toy, torch.zeros(3), prior=PRIOR), r"must return \(10000, 3\)"),
        (lambda: smc_abc(_toy, X_O, prior=PRIOR, alpha=1.0), "alpha"),
        (lambda: smc_abc(_toy, X_O, prior=PRIOR, num_simulations=10), "num_particles"),
        (
            lambda: rejection_abc(_toy, X_O, prior=PRIOR, quantile=None, tolerance=1e-9),
            "no simulation within",
        ),
    ],
)
def test_bad_inputs_raise_package_errors(call, match):
    with pytest.raises(SbitkError, match=match):
        call()
