"""sir and lotka_volterra: the batched RK4 against scipy's adaptive solver, then the noise laws."""

import math

import numpy as np
import pytest
import torch
from sbitk_simulators import observations
from sbitk_simulators._ode import rk4
from sbitk_simulators.lotka_volterra import SAMPLE_TIMES, populations
from sbitk_simulators.sir import SAMPLE_DAYS, infected_fraction
from scipy import stats
from scipy.integrate import solve_ivp
from simulator_stats import K, assert_covariance, assert_mean

from sbitk import get_simulator

M = 4000


def _thetas(name: str, n: int = 30) -> torch.Tensor:
    """The benchmark's θ of observation 1 and n prior draws, in float64."""
    sim = get_simulator(name)
    draws = sim.prior.sample(n, generator=torch.Generator().manual_seed(0))
    return torch.cat((observations.load_true_parameters(name, 1)[None], draws)).double()


def _sir_scipy(beta: float, gamma: float) -> np.ndarray:
    def rhs(t, u):
        s, i, _ = u
        return [-beta * s * i, beta * s * i - gamma * i, gamma * i]

    sol = solve_ivp(
        rhs,
        (0, SAMPLE_DAYS[-1]),
        [1 - 1e-6, 1e-6, 0.0],
        t_eval=SAMPLE_DAYS,
        method="DOP853",
        rtol=1e-12,
        atol=1e-30,
    )
    assert sol.success
    return sol.y[1]


def _lv_scipy(alpha: float, beta: float, gamma: float, delta: float) -> np.ndarray:
    def rhs(t, u):
        x, y = u
        return [alpha * x - beta * x * y, -gamma * y + delta * x * y]

    sol = solve_ivp(
        rhs,
        (0, SAMPLE_TIMES[-1]),
        [30.0, 1.0],
        t_eval=SAMPLE_TIMES,
        method="DOP853",
        rtol=1e-12,
        atol=1e-30,
    )
    assert sol.success
    return sol.y


def test_rk4_is_fourth_order():
    """Halving the step divides the error on y' = -y by 2⁴ (asymptotically)."""
    y0 = torch.ones(1, 1, dtype=torch.float64)
    errors = [
        abs(float(rk4(lambda y: -y, y0, 1.0 / n, n, 2)[0, 1, 0]) - math.exp(-1)) for n in (16, 32)
    ]
    assert 3.9 < math.log2(errors[0] / errors[1]) < 4.1


def test_sir_ode_matches_scipy():
    theta = _thetas("sir")
    ours = infected_fraction(theta).numpy()
    ref = np.stack([_sir_scipy(*row) for row in theta.tolist()])
    np.testing.assert_allclose(ours, ref, rtol=1e-6, atol=0)


def test_lotka_volterra_ode_matches_scipy():
    theta = _thetas("lotka_volterra")
    ours = populations(theta).numpy()
    ref = np.stack([_lv_scipy(*row) for row in theta.tolist()])
    np.testing.assert_allclose(ours, ref, rtol=1e-6, atol=0)


def test_sir_noise_is_binomial_around_the_trajectory():
    theta = observations.load_true_parameters("sir", 1)
    x = get_simulator("sir")(theta.expand(M, 2), torch.Generator().manual_seed(1)).double()
    p = infected_fraction(theta[None])[0]
    mean, var = 1000 * p, 1000 * p * (1 - p)
    z = (x.mean(0) - mean) / (var / M).sqrt()
    assert z.abs().max() < K, z
    assert (x == x.round()).all() and (x >= 0).all() and (x <= 1000).all()
    busy = p > 0.01  # the days with enough cases for a variance check
    assert_covariance(x[:, busy], torch.diag(var[busy]))


def test_lotka_volterra_noise_is_lognormal_around_the_trajectory():
    theta = observations.load_true_parameters("lotka_volterra", 1)
    x = get_simulator("lotka_volterra")(theta.expand(M, 4), torch.Generator().manual_seed(2))
    log_u = populations(theta[None])[0].clamp(1e-10, 1e4).log().reshape(-1)
    assert_mean(x.double().log(), log_u)
    assert_covariance(x.double().log(), 0.01 * torch.eye(20))


def test_sir_observations_are_plausible():
    """Each count of each observation is a plausible Binomial(1000, I(t)/N) draw at θ_o."""
    ks = range(1, 11)
    theta_o = torch.stack([observations.load_true_parameters("sir", k) for k in ks])
    x_o = torch.stack([observations.load_observation("sir", k) for k in ks]).double().numpy()
    p = infected_fraction(theta_o).numpy()
    law = stats.binom(1000, p)
    two_sided = np.minimum(1, 2 * np.minimum(law.cdf(x_o), law.sf(x_o - 1)))
    assert two_sided.min() > 1e-6, two_sided  # Bonferroni: 1e-4 over 100 counts


def test_lotka_volterra_observations_are_plausible():
    """(log x_o - log X(t)) / 0.1 over all 200 entries is standard normal: Σz² ~ χ²₂₀₀."""
    ks = range(1, 11)
    theta_o = torch.stack([observations.load_true_parameters("lotka_volterra", k) for k in ks])
    x_o = torch.stack([observations.load_observation("lotka_volterra", k) for k in ks])
    log_u = populations(theta_o).clamp(1e-10, 1e4).log().flatten(1)
    z = (x_o.double().log() - log_u) / 0.1
    z2 = float((z**2).sum())
    assert stats.chi2(200).ppf(1e-4) < z2 < stats.chi2(200).ppf(1 - 1e-4)


@pytest.mark.parametrize("name", ["sir", "lotka_volterra"])
def test_priors_follow_sbibm(name):
    sim = get_simulator(name)
    loc = torch.cat([torch.tensor(p.spec()["loc"]) for p in sim.parameters.values()])
    scale = torch.cat([torch.tensor(p.spec()["scale"]) for p in sim.parameters.values()])
    if name == "sir":
        expected = ([math.log(0.4), math.log(0.125)], [0.5, 0.2])
    else:
        expected = ([-0.125, -3.0, -0.125, -3.0], [0.5] * 4)
    assert torch.allclose(loc.double(), torch.tensor(expected[0], dtype=torch.float64))
    assert torch.allclose(scale.double(), torch.tensor(expected[1], dtype=torch.float64))
    assert all(p.spec()["type"] == "lognormal" for p in sim.parameters.values())
