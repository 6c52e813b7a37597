"""Vectorized slice sampling against analytic targets: moments within Monte Carlo error."""

import math

import pytest
import torch

from sbitk.errors import SbitkError
from sbitk.posteriors.mcmc import MCMCConfig, effective_sample_size, slice_sample, split_rhat


def within_mc_error(estimate, truth, sd, ess, k=4.0):
    """|estimate - truth| below k Monte Carlo standard errors sd / sqrt(ESS)."""
    return torch.all((estimate - truth).abs() <= k * sd / ess.sqrt())


def correlated_gaussian():
    cov = torch.tensor([[1.0, 0.95, 0.0], [0.95, 1.0, 0.3], [0.0, 0.3, 2.0]], dtype=torch.float64)
    mean = torch.tensor([1.0, -2.0, 0.5], dtype=torch.float64)
    prec = torch.linalg.inv(cov)

    def log_prob(z):
        d = z - mean.to(z)
        return -0.5 * ((d @ prec.to(z)) * d).sum(-1)

    return mean, cov, log_prob


def test_correlated_gaussian_moments_within_monte_carlo_error():
    mean, cov, log_prob = correlated_gaussian()
    init = torch.randn(64, 3, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    result = slice_sample(log_prob, 3 * init, 100, warmup=60, seed=0)
    s = result.samples.reshape(-1, 3)
    sd = cov.diagonal().sqrt()
    assert result.samples.shape == (64, 100, 3)
    assert (result.rhat < 1.02).all(), result.rhat
    assert (result.ess > 1000).all(), result.ess
    assert within_mc_error(s.mean(0), mean, sd, result.ess)
    # The variance of a Gaussian sample has standard error var * sqrt(2 / ESS).
    var_err = cov.diagonal() * (2 / result.ess).sqrt()
    assert torch.all((s.var(0) - cov.diagonal()).abs() <= 4 * var_err)
    corr = torch.corrcoef(s.T)[0, 1]
    assert corr == pytest.approx(0.95, abs=0.02)
    assert result.stuck == 0 and result.n_evaluations > 0


def test_banana_moments_within_monte_carlo_error():
    # a ~ N(0, 1), b | a ~ N((a² - 1) / 2, 0.7²): E[b] = 0, Var[b] = 2 / 4 + 0.49.
    def log_prob(z):
        a, b = z[:, 0], z[:, 1]
        return -0.5 * a**2 - 0.5 * ((b - (a**2 - 1) / 2) / 0.7) ** 2

    init = torch.randn(100, 2, generator=torch.Generator().manual_seed(2), dtype=torch.float64)
    result = slice_sample(log_prob, init, 150, warmup=100, seed=3)
    s = result.samples.reshape(-1, 2)
    sd = torch.tensor([1.0, math.sqrt(0.99)], dtype=torch.float64)
    assert (result.rhat < 1.05).all(), result.rhat
    assert within_mc_error(s.mean(0), torch.zeros(2, dtype=torch.float64), sd, result.ess)
    # b is not Gaussian (its kurtosis is larger): allow twice the Gaussian standard error.
    assert s[:, 1].var() == pytest.approx(0.99, rel=8 * math.sqrt(2 / result.ess[1].item()))


def test_bimodal_mixture_chains_visit_both_modes_in_proportion():
    # 0.3 N(-3, 1) + 0.7 N(3, 1) in one dimension, times an independent N(0, 1).
    def log_prob(z):
        m1 = math.log(0.3) - 0.5 * (z[:, 0] + 3) ** 2
        m2 = math.log(0.7) - 0.5 * (z[:, 0] - 3) ** 2
        return torch.logaddexp(m1, m2) - 0.5 * z[:, 1] ** 2

    init = torch.randn(100, 2, generator=torch.Generator().manual_seed(4), dtype=torch.float64)
    result = slice_sample(log_prob, 4 * init, 200, warmup=100, seed=5)
    right = (result.samples[..., 0] > 0).double()
    share = right.mean()
    ess = effective_sample_size(right.unsqueeze(-1))[0]
    assert share == pytest.approx(0.7, abs=4 * math.sqrt(0.21 / ess.item()))
    # Each chain hops between modes, so the chains agree.
    assert split_rhat(right.unsqueeze(-1))[0] < 1.05


def test_rhat_flags_chains_that_disagree_and_ess_counts_independent_draws():
    g = torch.Generator().manual_seed(0)
    iid = torch.randn(8, 500, 2, generator=g, dtype=torch.float64)
    assert (split_rhat(iid) < 1.01).all()
    ess = effective_sample_size(iid)
    assert torch.all((ess > 0.8 * 4000) & (ess < 1.2 * 4000)), ess
    shifted = iid + torch.arange(8, dtype=torch.float64).view(8, 1, 1)
    assert (split_rhat(shifted) > 1.5).all()
    # An AR(1) chain with coefficient 0.9 has ESS about N (1 - 0.9) / (1 + 0.9).
    ar = torch.zeros(4, 4000, 1, dtype=torch.float64)
    noise = torch.randn(4, 4000, 1, generator=g, dtype=torch.float64)
    for t in range(1, 4000):
        ar[:, t] = 0.9 * ar[:, t - 1] + noise[:, t]
    assert effective_sample_size(ar)[0] == pytest.approx(16000 * 0.1 / 1.9, rel=0.25)


def test_the_same_seed_gives_the_same_chains():
    _, _, log_prob = correlated_gaussian()
    init = torch.zeros(10, 3, dtype=torch.float64)
    a = slice_sample(log_prob, init, 20, warmup=10, seed=7).samples
    b = slice_sample(log_prob, init, 20, warmup=10, seed=7).samples
    c = slice_sample(log_prob, init, 20, warmup=10, seed=8).samples
    assert torch.equal(a, b) and not torch.equal(a, c)


def test_thinning_keeps_every_kth_sweep():
    _, _, log_prob = correlated_gaussian()
    init = torch.zeros(16, 3, dtype=torch.float64)
    result = slice_sample(log_prob, init, 30, warmup=20, thin=3, seed=0)
    assert result.samples.shape == (16, 30, 3)
    # the same chains unthinned, kept at every third sweep
    every = slice_sample(log_prob, init, 90, warmup=20, thin=1, seed=0).samples
    assert torch.equal(result.samples, every[:, 2::3])
    assert not torch.equal(result.samples, every[:, :30])
    assert (result.rhat < 1.1).all()


def test_bounded_target_stays_in_support_and_bad_starts_are_refused():
    def log_prob(z):  # uniform on the unit square
        inside = ((z > 0) & (z < 1)).all(-1)
        return torch.where(inside, torch.zeros(len(z)), torch.full((len(z),), -math.inf))

    result = slice_sample(log_prob, torch.full((20, 2), 0.5), 50, warmup=10, seed=0)
    assert ((result.samples > 0) & (result.samples < 1)).all()
    assert result.samples.reshape(-1, 2).mean(0) == pytest.approx(torch.full((2,), 0.5), abs=0.05)
    with pytest.raises(SbitkError, match="initial MCMC states"):
        slice_sample(log_prob, torch.full((4, 2), 2.0), 5)
    with pytest.raises(SbitkError, match=r"MCMCConfig\.thin"):
        MCMCConfig(thin=0)
