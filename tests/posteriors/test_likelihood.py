"""The NLE posterior's initialisation: sampling-importance-resampling that grows its candidates."""

import math
from types import SimpleNamespace

import pytest
import torch
from torch import nn
from torch.distributions import Independent, Normal

from sbitk.posteriors.likelihood import MCMCPosterior, SurrogateLikelihood
from sbitk.posteriors.mcmc import MCMCConfig
from sbitk.simulation.priors import Normal as NormalPrior

NOISE = 0.05
X_O = torch.tensor([4.0])


class Squared(nn.Module):
    """The exact likelihood x ~ N(θ², 0.05²): two narrow modes at θ = ±2 for x = 4."""

    config = SimpleNamespace(features=1, context=1)
    density = "exact"

    def __init__(self):
        super().__init__()
        self.register_buffer("noise", torch.tensor(NOISE))

    def forward(self, u):
        return Independent(Normal(u**2, self.noise), 1)


def exact_right_share(prior) -> float:
    """P(θ > 0 | x_o) by quadrature on a fine grid."""
    theta = torch.linspace(-4, 4, 400_001, dtype=torch.float64).unsqueeze(-1)
    log_post = prior.log_prob(theta).double() + Normal(theta[:, 0] ** 2, NOISE).log_prob(X_O)
    w = torch.softmax(log_post, 0)
    return float(w[theta[:, 0] > 0].sum())


@pytest.mark.parametrize("seed", [0, 1])
def test_sir_grows_its_candidates_until_the_weights_are_worth_min_ess_draws(seed):
    # The prior favours θ = +2 (weight 0.88). A few hundred prior draws put one or two candidates
    # in the modes, and chains started from them keep their mode for a short run: the share of
    # draws in each mode is the initialisation's.
    prior = NormalPrior(0.5, 1.0, dim=1)
    likelihood = SurrogateLikelihood(Squared(), prior)
    truth = exact_right_share(prior)
    base = {"num_chains": 1000, "warmup": 5, "sir_candidates": 500, "progress": False}
    grown = MCMCPosterior(likelihood, MCMCConfig(**base, sir_min_ess=400))
    draws = grown.sample(10_000, X_O, seed=seed)
    result = grown.last_result
    assert result.init_ess >= 400
    assert result.init_candidates > 500
    # Within 4 standard errors: the weights are worth 400 draws, and 1,000 chains are drawn
    # from them. Without the growth (500 candidates, an ESS of 1 to 5) the share was 0.67 or 1.
    se = math.sqrt(truth * (1 - truth) * (1 / 400 + 1 / 1000))
    share = float((draws[:, 0] > 0).double().mean())
    assert share == pytest.approx(truth, abs=4 * se)

    fixed = MCMCPosterior(likelihood, MCMCConfig(**base, sir_min_ess=400, sir_max_candidates=500))
    fixed.sample(10_000, X_O, seed=seed)
    assert fixed.last_result.init_candidates == 500
    assert fixed.last_result.init_ess < 20  # what the growth is for
    assert fixed.last_result.summary()["init_ess"] == round(fixed.last_result.init_ess, 1)


def test_sir_settings_are_checked():
    with pytest.raises(Exception, match="sir_max_candidates must be >= sir_candidates"):
        MCMCConfig(sir_candidates=1000, sir_max_candidates=999)
    with pytest.raises(Exception, match="sir_min_ess must be >= 1"):
        MCMCConfig(sir_min_ess=0.5)
