"""gaussian_linear, gaussian_linear_uniform, gaussian_mixture: moments and posteriors vs theory."""

import math

import numpy as np
import pytest
import torch
from sbitk_simulators import observations
from sbitk_simulators.gaussian_linear import truncated_normal
from scipy import stats
from simulator_stats import assert_covariance, assert_mean, sbc_pvalues

from sbitk import get_simulator
from sbitk.errors import ObservationError

N = 20_000


@pytest.mark.parametrize("name", ["gaussian_linear", "gaussian_linear_uniform"])
def test_likelihood_mean_and_covariance(name):
    sim = get_simulator(name)
    theta = torch.linspace(-0.9, 0.9, 10)
    x = sim(theta.expand(N, 10), torch.Generator().manual_seed(0))
    assert_mean(x, theta)
    assert_covariance(x, 0.1 * torch.eye(10))


def test_priors_follow_sbibm():
    gl = get_simulator("gaussian_linear").prior
    assert torch.allclose(gl.covariance, 0.1 * torch.eye(10, dtype=torch.float64))
    glu = get_simulator("gaussian_linear_uniform").prior
    assert glu.low.tolist() == [-1.0] * 10 and glu.high.tolist() == [1.0] * 10
    gm = get_simulator("gaussian_mixture").prior
    assert gm.low.tolist() == [-10.0] * 2 and gm.high.tolist() == [10.0] * 2


def test_gaussian_linear_posterior_is_the_conjugate_one():
    sim = get_simulator("gaussian_linear")
    x_o = observations.load_observation("gaussian_linear", 1)
    samples = sim.reference_posterior(x_o, N, torch.Generator().manual_seed(1))
    # Precisions add: (10 + 10)⁻¹ = 0.05; the mean is 0.05 · 10 x_o = x_o / 2.
    assert_mean(samples, x_o.double() / 2)
    assert_covariance(samples, 0.05 * torch.eye(10))


def _truncnorm_moments(mu: np.ndarray, sigma: float) -> tuple[np.ndarray, np.ndarray]:
    a, b = (-1 - mu) / sigma, (1 - mu) / sigma
    dist = stats.truncnorm(a, b, loc=mu, scale=sigma)
    return dist.mean(), dist.var()


def test_gaussian_linear_uniform_posterior_is_the_truncated_normal():
    sim = get_simulator("gaussian_linear_uniform")
    # Components inside, at and far outside the box (3.0 and -2.5 are 6 and 5 σ beyond it).
    x_o = torch.tensor([-2.5, -1.2, -0.9, -0.3, 0.0, 0.2, 0.7, 1.1, 1.5, 3.0])
    samples = sim.reference_posterior(x_o, N, torch.Generator().manual_seed(2))
    assert samples.abs().max() <= 1.0
    mean, var = _truncnorm_moments(x_o.double().numpy(), math.sqrt(0.1))
    assert_mean(samples, torch.from_numpy(mean))
    assert_covariance(samples, torch.diag(torch.from_numpy(var)))


def test_truncated_normal_against_rejection():
    """The inverse-CDF sampler and plain rejection agree on every quantile (KS test)."""
    g = torch.Generator().manual_seed(3)
    loc = torch.tensor([0.3, -0.8])
    fast = truncated_normal(loc, 0.5, -1.0, 1.0, 5000, g)
    slow = loc + 0.5 * torch.randn(40_000, 2, generator=g, dtype=torch.float64)
    slow = slow[(slow.abs() <= 1).all(-1)][:5000]
    for d in range(2):
        assert stats.ks_2samp(fast[:, d].numpy(), slow[:, d].numpy()).pvalue > 1e-3


@pytest.mark.parametrize("name", ["gaussian_linear", "gaussian_linear_uniform"])
def test_exact_posteriors_are_calibrated(name):
    sim = get_simulator(name)
    p = sbc_pvalues(sim.prior, sim, sim.reference_posterior, trials=1000, draws=99, seed=4)
    assert p.min() > 1e-3 / 10, p  # Bonferroni over the ten dimensions

    # The check has power: a posterior 30% too wide fails it.
    def too_wide(x_o, n, g):
        s = sim.reference_posterior(x_o, n, g)
        return s.mean(0) + 1.3 * (s - s.mean(0))

    assert sbc_pvalues(sim.prior, sim, too_wide, trials=1000, draws=99, seed=4).min() < 1e-4


def test_reference_posterior_rejects_bad_observations():
    sim = get_simulator("gaussian_linear")
    with pytest.raises(ObservationError, match="10 entries"):
        sim.reference_posterior(torch.zeros(3), 10, None)
    with pytest.raises(ObservationError, match="finite"):
        sim.reference_posterior(torch.full((10,), math.nan), 10, None)


@pytest.mark.parametrize("name", ["gaussian_linear", "gaussian_linear_uniform"])
def test_shipped_observations_are_plausible(name):
    """Σ‖x_o - θ_o‖² / 0.1 over the ten observations is χ² with 100 degrees of freedom."""
    d2 = (
        sum(
            float(
                (
                    (
                        observations.load_observation(name, k)
                        - observations.load_true_parameters(name, k)
                    )
                    ** 2
                ).sum()
            )
            for k in range(1, 11)
        )
        / 0.1
    )
    assert stats.chi2(100).ppf(1e-4) < d2 < stats.chi2(100).ppf(1 - 1e-4)


def test_gaussian_mixture_moments_and_shared_component():
    sim = get_simulator("gaussian_mixture")
    theta = torch.tensor([3.0, -7.0])
    d = (sim(theta.expand(N, 2), torch.Generator().manual_seed(5)) - theta).double()
    assert_mean(d, torch.zeros(2))
    assert_covariance(d, 0.5 * (1.0 + 0.01) * torch.eye(2))
    # One component per simulation for both coordinates: E[d₀² d₁²] = ½ (1 + 10⁻⁴), where
    # independent components per coordinate would give 0.505² ≈ 0.255.
    assert_mean((d[:, 0] ** 2 * d[:, 1] ** 2)[:, None], torch.tensor([0.5 * (1 + 1e-4)]))


def test_gaussian_mixture_observations_are_plausible():
    for k in range(1, 11):
        x_o = observations.load_observation("gaussian_mixture", k)
        theta_o = observations.load_true_parameters("gaussian_mixture", k)
        d2 = float(((x_o - theta_o) ** 2).sum())
        # P(‖x - θ‖² ≥ d2) under ½ N(θ, I) + ½ N(θ, 0.01 I): the χ²₂ tails of both components.
        tail = 0.5 * math.exp(-d2 / 2) + 0.5 * math.exp(-d2 / 0.02)
        assert tail > 1e-5, (k, d2)
