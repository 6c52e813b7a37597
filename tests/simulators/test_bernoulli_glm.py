"""bernoulli_glm: sbibm's stimulus and prior, sufficient statistics, moments given θ."""

import torch
from sbitk_simulators import observations
from sbitk_simulators.bernoulli_glm import design_matrix, filter_covariance, stimulus
from scipy import stats
from simulator_stats import assert_covariance, assert_mean, sbibm_tasks_dir

from sbitk import get_simulator

N = 20_000


def test_stimulus_and_design_matrix_are_sbibms():
    files = sbibm_tasks_dir() / "bernoulli_glm" / "files"
    assert torch.equal(stimulus(), torch.load(files / "stimulus_I.pt"))
    assert torch.equal(design_matrix().float(), torch.load(files / "design_matrix.pt"))


def test_prior_is_sbibms():
    """sbibm's prior precision: 0.5 for the offset, FᵀF for the filter, F = D² + diag(√(i/9))."""
    m = 9
    d = torch.eye(m, dtype=torch.float64) - torch.diag(torch.ones(m - 1, dtype=torch.float64), -1)
    f = d @ d + torch.diag(torch.arange(m, dtype=torch.float64) / m) ** 0.5
    precision = torch.zeros(10, 10, dtype=torch.float64)
    precision[0, 0] = 0.5
    precision[1:, 1:] = f.T @ f
    prior = get_simulator("bernoulli_glm").prior
    offset, filt = prior.components
    covariance = torch.block_diag(torch.diag(offset.scale**2), filt.covariance)
    assert torch.allclose(covariance @ precision, torch.eye(10, dtype=torch.float64), atol=1e-9)
    assert torch.allclose(filter_covariance(), filt.covariance)


def test_sufficient_statistics_match_a_direct_computation():
    """Spike count and spike-triggered sums computed as sbibm does (a 1-D convolution)."""
    sim = get_simulator("bernoulli_glm")
    theta = sim.prior.sample(50, generator=torch.Generator().manual_seed(0))
    x = sim(theta, torch.Generator().manual_seed(1))
    # Replay the same uniforms to recover the spike trains the simulator drew.
    u = torch.rand((50, 100), generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    rate = torch.sigmoid(theta.double() @ design_matrix().T)
    y = (u < rate).double()
    sta = torch.nn.functional.conv1d(
        y[:, None, :], stimulus().double().reshape(1, 1, -1), padding=8
    )[:, 0, -9:]
    direct = torch.cat((y.sum(-1, keepdim=True), sta), dim=-1)
    assert torch.allclose(x.double(), direct, atol=1e-5)
    assert (x[:, 0] == x[:, 0].round()).all() and (x[:, 0] >= 0).all() and (x[:, 0] <= 100).all()


def _moments(theta: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """E[x | θ] = Vᵀσ(Vθ) and Cov[x | θ] = Vᵀ diag(σ(1 - σ)) V for x = Vᵀy, y_t ~ Bern(σ_t)."""
    v = design_matrix()
    p = torch.sigmoid(v @ theta.double())
    return v.T @ p, v.T @ torch.diag(p * (1 - p)) @ v


def test_moments_given_theta():
    theta = observations.load_true_parameters("bernoulli_glm", 1)
    x = get_simulator("bernoulli_glm")(theta.expand(N, 10), torch.Generator().manual_seed(2))
    mean, cov = _moments(theta)
    assert_mean(x, mean)
    assert_covariance(x, cov)


def test_shipped_observations_are_plausible():
    """x_o is a sum of 100 independent Bernoulli terms: its squared Mahalanobis distance to the
    mean at θ_o is close to χ²₁₀, and the total over the ten observations close to χ²₁₀₀."""
    total = 0.0
    for k in range(1, 11):
        mean, cov = _moments(observations.load_true_parameters("bernoulli_glm", k))
        d = observations.load_observation("bernoulli_glm", k).double() - mean
        total += float(d @ torch.linalg.solve(cov, d))
    assert stats.chi2(100).ppf(1e-4) < total < stats.chi2(100).ppf(1 - 1e-4)
