"""x learned in log coordinates: the choice of columns, NPE and NLE through it, model files."""

import math

import pytest
import torch

from sbitk.errors import SbitkError
from sbitk.inference.data import choose_x_bijection
from sbitk.inference.nle import NLE
from sbitk.inference.npe import NPE
from sbitk.inference.training import TrainConfig
from sbitk.io.modelfile import load_model, save_model
from sbitk.simulation.bijections import logged_columns
from sbitk.simulation.priors import Normal

FAST = TrainConfig(max_epochs=200, patience=10, progress=False, seed=0)
SIGMA = 0.3


def _columns(n: int = 4000, seed: int = 0) -> torch.Tensor:
    """Columns: normal; log-normal; uniform on [1, 2] (positive, symmetric); counts with zeros."""
    g = torch.Generator().manual_seed(seed)
    return torch.stack(
        [
            torch.randn(n, generator=g),
            (1.0 + torch.randn(n, generator=g)).exp(),
            1.0 + torch.rand(n, generator=g),
            torch.poisson(torch.full((n,), 0.5), generator=g),
        ],
        -1,
    )


def test_the_log_is_chosen_for_positive_right_skewed_columns_only():
    x = _columns()
    assert logged_columns(choose_x_bijection(x, None)) == [1]
    assert logged_columns(choose_x_bijection(x, False)) == []
    assert logged_columns(choose_x_bijection(x[:, 1:3], True)) == [0, 1]
    with pytest.raises(SbitkError, match="column 0 is not positive in every training row"):
        choose_x_bijection(x, True)
    x[5, 1] = math.nan  # rows with NaN are ignored, not a reason to give up the log
    assert logged_columns(choose_x_bijection(x, None)) == [1]


def test_the_trials_of_a_block_share_one_decision():
    g = torch.Generator().manual_seed(1)
    e = torch.randn(3000, 2, generator=g)
    # Alone, trial 0's column is barely skewed (skewness below 1) and trial 1's is log-normal:
    # pooled as two trials of one output, both are logged, so that permuting trials is harmless.
    x = torch.stack([(0.25 * e[:, 0]).exp(), (1.5 * e[:, 1]).exp()], -1)
    assert logged_columns(choose_x_bijection(x, None)) == [1]
    assert logged_columns(choose_x_bijection(x, None, [(0, 2, 1)])) == [0, 1]
    # And the other way: a symmetric trial pooled with a skewed one keeps both as they are.
    x = torch.stack([1.5 * e[:, 0] + 5.0, (1.5 * e[:, 1]).exp()], -1)
    assert logged_columns(choose_x_bijection(x, None)) == [1]
    assert logged_columns(choose_x_bijection(x, None, [(0, 2, 1)])) == []


def _lognormal_pairs(n: int, seed: int):
    """θ ~ N(2, 0.5²) (2-D); x = exp(θ + SIGMA ε): log-normal, its log-density known exactly."""
    g = torch.Generator().manual_seed(seed)
    theta = 2.0 + 0.5 * torch.randn(n, 2, generator=g)
    return theta, (theta + SIGMA * torch.randn(n, 2, generator=g)).exp()


def _true_log_likelihood(x, theta):
    log_x = x.log()
    normal = torch.distributions.Normal(theta, SIGMA)
    return (normal.log_prob(log_x) - log_x).sum(-1)


def test_nle_learns_the_log_of_x_and_its_density_is_of_x_itself(tmp_path):
    theta, x = _lognormal_pairs(4000, 0)
    nle = NLE(Normal(2.0, 0.5, dim=2), estimator="gaussian", config=FAST)
    posterior = nle.fit(theta, x)
    surrogate = posterior.likelihood
    assert surrogate.logged_x == [0, 1]
    # The Jacobian is in: the density is of x, not of log x (they differ by -Σ log x ≈ -4).
    t, xs = _lognormal_pairs(200, 1)
    with torch.no_grad():
        learned = torch.stack([surrogate.log_prob(xs[i], t[i]) for i in range(200)])
    error = learned - _true_log_likelihood(xs, t)
    # Measured over training seeds 0-3: mean |error| 0.06-0.11 (the fitted σ and mean), mean
    # error -0.045 to -0.004. Without the Jacobian the mean error is about -4.
    assert error.abs().mean() < 0.25 and error.mean().abs() < 0.15, error
    draws = surrogate.sample(4000, torch.tensor([2.0, 1.5]), seed=0)
    assert (draws > 0).all()
    # Draws of x, not of log x (whose log would be near 0.7 and 0.4): the fitted mean is off
    # by up to 0.035 at this seed, the Monte Carlo error is 0.005.
    assert torch.allclose(draws.log().mean(0), torch.tensor([2.0, 1.5]), atol=0.1)
    assert torch.allclose(draws.log().std(0), torch.tensor([SIGMA, SIGMA]), atol=0.05)
    path = tmp_path / "nle.safetensors"
    save_model(path, posterior)
    loaded = load_model(path).likelihood
    assert loaded.logged_x == [0, 1]
    assert torch.equal(loaded.log_prob(xs[0], t[0]), surrogate.log_prob(xs[0], t[0]))


def test_npe_conditions_on_log_x_and_refuses_an_observation_outside_its_domain(tmp_path):
    theta, x = _lognormal_pairs(4000, 2)
    posterior = NPE(Normal(2.0, 0.5, dim=2), estimator="gaussian", config=FAST).fit(theta, x)
    assert posterior.logged_x == [0, 1]
    # Conjugate: log x ~ N(θ, SIGMA²) and θ ~ N(2, 0.5²) give the posterior mean exactly.
    x_o = torch.tensor([math.exp(2.5), math.exp(1.2)])
    w = 0.5**2 / (0.5**2 + SIGMA**2)
    mean = w * x_o.log() + (1 - w) * 2.0
    draws = posterior.sample(4000, x=x_o, seed=0)
    assert torch.allclose(draws.mean(0), mean, atol=0.03), (draws.mean(0), mean)
    with pytest.raises(SbitkError, match=r"x has -1 in x\[1\], where every training"):
        posterior.sample(10, x=torch.tensor([1.0, -1.0]))
    path = tmp_path / "npe.safetensors"
    save_model(path, posterior)
    assert torch.equal(
        load_model(path).log_prob(draws[:5], x=x_o), posterior.log_prob(draws[:5], x=x_o)
    )


def test_log_x_false_keeps_x_as_it_is_and_bad_values_are_refused():
    theta, x = _lognormal_pairs(500, 3)
    posterior = NPE(Normal(2.0, 0.5, dim=2), estimator="gaussian", log_x=False,
                    config=FAST).fit(theta, x)  # fmt: skip
    assert posterior.logged_x == []
    with pytest.raises(SbitkError, match="log_x must be True, False or None"):
        NPE(Normal(0.0, 1.0), log_x="auto")
