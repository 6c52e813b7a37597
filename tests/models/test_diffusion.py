"""Score-based diffusion against independent computations (float64): with the analytic score of
a Gaussian target, the probability-flow density is the target's and integrates to one, and both
samplers reproduce its moments; a short training run learns a conditional density."""

import math

import pytest
import torch

from sbitk.errors import SbitkError
from sbitk.inference.training import TrainConfig, train
from sbitk.models.diffusion import Diffusion

MU = torch.tensor([0.5, -1.0], dtype=torch.float64)
SIGMA = torch.tensor([[1.0, 0.6], [0.6, 0.8]], dtype=torch.float64)


class GaussianTargetNoise(Diffusion):
    """A diffusion model whose noise prediction is the exact one for a N(μ, Σ) target:
    a_t ~ N(m μ, m² Σ + s² I), so ∇ log p_t(a) = -(m² Σ + s² I)⁻¹ (a - m μ) and
    ε̂ = -s ∇ log p_t."""

    def noise(self, a, t, c):
        m, s = self.marginal(t)
        var = m[..., None, None] ** 2 * SIGMA + s[..., None, None] ** 2 * torch.eye(2).double()
        centred = (a - m.unsqueeze(-1) * MU).unsqueeze(-1)
        score = -(torch.linalg.solve(var, centred)).squeeze(-1)
        return -s.unsqueeze(-1) * score


TARGET = torch.distributions.MultivariateNormal(MU, SIGMA)


@pytest.mark.parametrize(("sde", "solver"), [("vp", "rk4"), ("vp", "dopri5"), ("ve", "dopri5")])
def test_the_probability_flow_density_of_the_exact_score_is_the_target(sde, solver):
    # Both ends are approximations the settings make small: at t_min the target is blurred by
    # s(t_min)² (2e-6 for VP at t_min=1e-5, 1e-6 for VE), and at t = 1 the marginal is taken
    # to be N(0, s(1)² I) while it is N(m μ, m² Σ + s² I): the log density errs by about
    # m |ε| |μ| (VP, m = e^-10 at beta_max 40) or |ε| |μ| / σ_max (VE, ε the noise the point
    # maps to: 1e-4 at σ_max = 10⁴, and 0.01 at 100, which fails).
    model = GaussianTargetNoise(2, 0, sde=sde, solver=solver, steps=200, t_min=1e-5,
                                beta_max=40.0, sigma_min=1e-3, sigma_max=1e4, rtol=1e-7,
                                atol=1e-7).double()  # fmt: skip
    torch.manual_seed(0)
    a = TARGET.sample((50,))
    assert torch.allclose(model().log_prob(a), TARGET.log_prob(a), atol=2e-3)
    axis = torch.linspace(-6, 6, 161, dtype=torch.float64)
    grid = torch.stack(torch.meshgrid(axis, axis - 0.5, indexing="ij"), -1).reshape(-1, 2)
    density = model().log_prob(grid).exp().reshape(161, 161)
    mass = torch.trapezoid(torch.trapezoid(density, axis, dim=1), axis)
    assert float(mass) == pytest.approx(1.0, abs=2e-3)


@pytest.mark.parametrize(("sde", "sampler"), [("vp", "ode"), ("vp", "sde"), ("ve", "sde")])
def test_both_samplers_reproduce_the_target(sde, sampler):
    model = GaussianTargetNoise(2, 0, sde=sde, sampler=sampler, sde_steps=400, steps=100,
                                t_min=1e-4, sigma_min=1e-3).double()  # fmt: skip
    n = 20_000
    draws = model().sample((n,), generator=torch.Generator().manual_seed(0))
    # the SDE's discretisation error at 400 steps is below the tolerance: 5 standard errors
    # of the mean and of the covariance
    assert torch.allclose(draws.mean(0), MU, atol=5 * math.sqrt(1.0 / n))
    assert torch.allclose(torch.cov(draws.T), SIGMA, atol=5 * math.sqrt(2 / n))


def test_the_ve_ode_takes_equal_steps_in_t_so_that_few_steps_suffice():
    # σ(t) is geometric in t: 24 equal steps in t shrink it by equal ratios, from 1e3 to 1e-2.
    # Equal steps in log t, right for VP, would take it from 1e3 to 56 in the first step: the
    # covariance then came out wrong by 4e3, against 0.03 here (5 standard errors: 0.05).
    model = GaussianTargetNoise(2, 0, sde="ve", sampler="ode", steps=24, sigma_max=1e3).double()
    n = 20_000
    draws = model().sample((n,), generator=torch.Generator().manual_seed(0))
    assert torch.allclose(draws.mean(0), MU, atol=5 * math.sqrt(1.0 / n))
    assert torch.allclose(torch.cov(draws.T), SIGMA, atol=5 * math.sqrt(2 / n))


def test_a_wrong_score_is_caught_by_the_density_check():
    """The checks above fail for a wrong score: the exact noise prediction scaled by 1.1."""

    class Wrong(GaussianTargetNoise):
        def noise(self, a, t, c):
            return super().noise(a, t, c) * 1.1

    model = Wrong(2, 0, steps=200, t_min=1e-5).double()
    torch.manual_seed(0)
    a = TARGET.sample((50,))
    assert (model().log_prob(a) - TARGET.log_prob(a)).abs().max() > 0.05


def test_the_samplers_agree_on_the_marginal_schedule():
    model = Diffusion(2, 0, sde="vp").double()
    t = torch.tensor([1e-3, 0.5, 1.0], dtype=torch.float64)
    m, s = model.marginal(t)
    assert torch.allclose(m.square() + s.square(), torch.ones(3, dtype=torch.float64))
    # dm/dt = f's coefficient times m, d(s²)/dt = g² - β s² (VP): finite differences
    h = 1e-6
    m2, s2 = model.marginal(t + h)
    _, g2 = model.drift_and_diffusion(torch.zeros(3, 2, dtype=torch.float64), t)
    assert torch.allclose((m2 - m) / h, -0.5 * g2 * m, rtol=1e-4)
    ve = Diffusion(2, 0, sde="ve", sigma_min=0.01, sigma_max=10.0).double()
    _, s = ve.marginal(t)
    _, s2 = ve.marginal(t + h)
    _, g2 = ve.drift_and_diffusion(torch.zeros(3, 2, dtype=torch.float64), t)
    assert torch.allclose((s2.square() - s.square()) / h, g2, rtol=1e-4)


def test_bad_options_are_refused_by_name():
    with pytest.raises(SbitkError, match="sde among"):
        Diffusion(2, 1, sde="subvp")
    with pytest.raises(SbitkError, match="sampler among"):
        Diffusion(2, 1, sampler="langevin")
    with pytest.raises(SbitkError, match="0 < t_min < 1"):
        Diffusion(2, 1, t_min=0.0)
    with pytest.raises(SbitkError, match="unexpected keyword"):
        Diffusion(2, 1, bins=3)
    with pytest.raises(SbitkError, match=r"context of shape \(\*, 1\)"):
        Diffusion(2, 1)(torch.zeros(3, 2))


@pytest.mark.slow
def test_trained_on_a_linear_gaussian_it_learns_the_conditional_density():
    """a = (2c, -c) + 0.5 ε: held-out log-likelihood within 0.08 nats of the truth (measured
    0.054 below it; its Monte Carlo standard error over 1,000 rows is about 0.02)."""
    g = torch.Generator().manual_seed(0)
    c = torch.randn(6000, 1, generator=g)
    a = torch.cat([2 * c, -c], -1) + 0.5 * torch.randn(6000, 2, generator=g)
    torch.manual_seed(0)
    model = Diffusion(2, 1, hidden_features=(64, 64, 64), steps=30)
    train(model, a[:5000], c[:5000], TrainConfig(max_epochs=60, progress=False))
    held_a, held_c = a[5000:], c[5000:]
    truth = torch.distributions.Normal(torch.cat([2 * held_c, -held_c], -1), 0.5)
    exact = truth.log_prob(held_a).sum(-1).mean()
    learnt = model(held_c).log_prob(held_a).mean()
    assert float(learnt) == pytest.approx(float(exact), abs=0.08)
