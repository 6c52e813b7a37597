"""Langevin samplers against known targets: moments of Gaussians and mixtures within Monte Carlo
error, the exact bias of unadjusted Langevin on a Gaussian, and annealed Langevin on a mixture
whose perturbed score is analytic."""

import math

import pytest
import torch

from sbitk.errors import SbitkError
from sbitk.models.divergences import mmd
from sbitk.models.langevin import (
    TARGET_ACCEPTANCE,
    annealed_langevin,
    geometric_sigmas,
    log_prob_and_grad,
    mala,
    ula,
)

COV = torch.tensor([[1.0, 0.8], [0.8, 1.0]], dtype=torch.float64)
MEAN = torch.tensor([1.0, -2.0], dtype=torch.float64)


def gaussian_log_prob(x):
    d = x - MEAN
    return -0.5 * (d * torch.linalg.solve(COV, d.unsqueeze(-1)).squeeze(-1)).sum(-1)


def gen(seed):
    return torch.Generator().manual_seed(seed)


def mixture_log_prob(x, weights=(0.3, 0.7), locs=(-1.0, 1.0), sd=0.6, extra=0.0):
    """A two-component mixture along the first axis (component variance sd² + extra), standard
    normal along the second."""
    var = sd**2 + extra
    parts = [
        math.log(w) - 0.5 * (x[..., 0] - m) ** 2 / var - 0.5 * math.log(var)
        for w, m in zip(weights, locs)
    ]
    return torch.logsumexp(torch.stack(parts), 0) - 0.5 * x[..., 1] ** 2


def test_the_gradient_is_autograd_s_and_non_finite_densities_are_masked():
    x = torch.randn(5, 2, dtype=torch.float64, generator=gen(0))
    lp, g = log_prob_and_grad(gaussian_log_prob, x)
    assert torch.allclose(g, -torch.linalg.solve(COV, (x - MEAN).T).T)
    lp, g = log_prob_and_grad(lambda x: torch.log(x[..., 0]), torch.tensor([[-1.0], [2.0]]))
    assert lp[0] == -math.inf and g[0, 0] == 0 and g[1, 0] == 0.5


def test_mala_matches_a_correlated_gaussian_within_monte_carlo_error():
    n = 4000
    init = torch.randn(n, 2, dtype=torch.float64, generator=gen(1)) * 3
    result = mala(gaussian_log_prob, init, 100, warmup=150, generator=gen(2))
    x = result.samples
    # chains are independent: standard errors of a mean sqrt(var/n), of a covariance entry
    # sqrt((s_ii s_jj + s_ij^2)/n); 5 standard errors
    assert torch.allclose(x.mean(0), MEAN, atol=5 * math.sqrt(1 / n))
    se_cov = torch.sqrt((COV.diagonal().outer(COV.diagonal()) + COV**2) / n)
    assert ((torch.cov(x.T) - COV).abs() < 5 * se_cov).all()
    assert abs(float(result.acceptance) - TARGET_ACCEPTANCE) < 0.1


def test_mala_mixes_between_the_modes_of_a_mixture():
    """Every chain starts in the heavier mode; the lighter one must fill to its weight 0.3."""
    n = 4000
    init = torch.tensor([1.0, 0.0], dtype=torch.float64).expand(n, 2)
    x = mala(mixture_log_prob, init, 400, warmup=100, generator=gen(3)).samples
    left = float((x[:, 0] < 0).double().mean())
    # P(x < 0) = 0.3 Φ(1/0.6) + 0.7 Φ(-1/0.6)
    phi = 0.5 * (1 + math.erf((1 / 0.6) / math.sqrt(2)))
    expected = 0.3 * phi + 0.7 * (1 - phi)
    assert left == pytest.approx(expected, abs=5 * math.sqrt(expected * (1 - expected) / n))
    # E[x0] = 0.4, Var[x0] = 0.36 + 1 - 0.16
    assert float(x[:, 0].mean()) == pytest.approx(0.4, abs=5 * math.sqrt(1.2 / n))
    assert float(x[:, 1].var()) == pytest.approx(1.0, abs=5 * math.sqrt(2 / n))


def test_ula_has_its_known_bias_and_mala_removes_it():
    """On N(0, 1) ULA with step h is an AR(1) chain of stationary variance 1 / (1 - h/4)."""
    n, h = 20000, 0.8
    log_prob = lambda x: -0.5 * x.square().sum(-1)  # noqa: E731
    init = torch.randn(n, 1, dtype=torch.float64, generator=gen(4))
    x = ula(log_prob, init, 60, h, generator=gen(5))
    se = math.sqrt(2 / n) * 1.25
    assert float(x.var()) == pytest.approx(1 / (1 - h / 4), abs=5 * se)
    fixed = mala(log_prob, init, 60, h, generator=gen(5))  # no warm-up: the step stays h
    assert float(fixed.samples.var()) == pytest.approx(1.0, abs=5 * math.sqrt(2 / n))


def test_mala_adapts_a_step_and_scale_per_context():
    """Chains of three targets of very different scales, (chains, contexts, D)."""
    scales = torch.tensor([0.01, 1.0, 30.0], dtype=torch.float64).reshape(3, 1)
    log_prob = lambda x: -0.5 * (x / scales).square().sum(-1)  # noqa: E731
    init = torch.randn(1000, 3, 2, dtype=torch.float64, generator=gen(6))
    result = mala(log_prob, init, 100, warmup=150, chain_dims=1, generator=gen(7))
    sd = result.samples.std(0)  # (3, 2)
    assert torch.allclose(sd / scales, torch.ones(3, 2, dtype=torch.float64), atol=0.12)
    assert result.acceptance.shape == (1, 3)
    assert ((result.acceptance - TARGET_ACCEPTANCE).abs() < 0.1).all()
    assert result.scale[0, :, 0].argsort().tolist() == [0, 1, 2]


def test_annealed_langevin_samples_a_mixture_from_its_perturbed_score():
    """The score of the mixture convolved with N(0, σ²) is the mixture's with variance + σ²."""

    def score(x, sigma):
        s2 = float(sigma) ** 2
        return log_prob_and_grad(
            lambda y: mixture_log_prob(y, extra=s2) - 0.5 * y[..., 1] ** 2 * (1 / (1 + s2) - 1),
            x,
        )[1]

    g = gen(8)
    init = 3 * torch.randn(2000, 2, dtype=torch.float64, generator=g)
    sigmas = geometric_sigmas(3.0, 0.01, 10, dtype=torch.float64)
    x = annealed_langevin(score, init, sigmas, 50, 2e-5, generator=g)
    comp = (torch.rand(2000, generator=g) < 0.7).double() * 2 - 1
    truth = torch.stack([comp + 0.6 * torch.randn(2000, generator=g),
                         torch.randn(2000, generator=g)], -1).double()  # fmt: skip
    again = torch.stack([(torch.rand(2000, generator=g) < 0.7).double() * 2 - 1
                         + 0.6 * torch.randn(2000, generator=g),
                         torch.randn(2000, generator=g)], -1).double()  # fmt: skip
    # the MMD of two exact samples of this size: 1e-4 to 1e-3
    assert float(mmd(x, truth)) < 3e-3
    assert float(mmd(again, truth)) < 3e-3
    assert float(x[:, 0].mean()) == pytest.approx(0.4, abs=0.1)
    # without the anneal (one narrow level) the chains do not find the weights
    stuck = annealed_langevin(score, init[:, :] * 0 + torch.tensor([-1.0, 0.0]).double(),
                              sigmas[-1:], 200, 2e-5, generator=g)  # fmt: skip
    assert float(mmd(stuck, truth)) > 3e-3


def test_samplers_are_reproducible_from_a_seed():
    init = torch.zeros(50, 2, dtype=torch.float64)
    a = mala(gaussian_log_prob, init, 10, warmup=10, generator=gen(9)).samples
    b = mala(gaussian_log_prob, init, 10, warmup=10, generator=gen(9)).samples
    assert torch.equal(a, b)
    assert torch.equal(
        ula(gaussian_log_prob, init, 10, generator=gen(9)),
        ula(gaussian_log_prob, init, 10, generator=gen(9)),
    )


def test_bad_input_is_refused_with_a_message():
    with pytest.raises(SbitkError, match="non-finite log density"):
        mala(lambda x: torch.log(x[..., 0]), -torch.ones(3, 1), 5)
    with pytest.raises(SbitkError, match="chain_dims"):
        mala(gaussian_log_prob, torch.zeros(3, 2), 5, chain_dims=2)
    with pytest.raises(SbitkError, match="step sizes > 0"):
        ula(gaussian_log_prob, torch.zeros(3, 2), 5, step_size=0.0)
    with pytest.raises(SbitkError, match="decreasing positive sigmas"):
        annealed_langevin(lambda x, s: -x, torch.zeros(3, 2), [0.1, 1.0])
    with pytest.raises(SbitkError, match="sigma_min < sigma_max"):
        geometric_sigmas(0.1, 1.0, 5)
