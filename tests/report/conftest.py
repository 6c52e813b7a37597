"""Real diagnostics results on a conjugate Gaussian model, calibrated and overconfident."""

import matplotlib
import pytest
import torch

matplotlib.use("Agg")

from sbitk import diagnostics as dg

NAMES = ("mu", "log <sigma>")  # the angle brackets check escaping
OUTPUTS = ("x[0]", "x[1]")


def _simulate(theta, generator):
    return theta + torch.randn(theta.shape, generator=generator, dtype=theta.dtype)


def _results(scale: float, seed: int = 0) -> dict:
    """Diagnostics of ``q(θ | x) = N(x / 2, scale² / 2)``; exact when ``scale = 1``.

    θ ~ N(0, I) and x = θ + N(0, I) give the posterior N(x / 2, I / 2).
    """
    g = torch.Generator().manual_seed(seed)
    n, n_draws = 200, 99
    theta = torch.randn(n, 2, generator=g)
    x = _simulate(theta, g)
    sd = scale * 0.5**0.5
    draws = x / 2 + sd * torch.randn(n_draws, n, 2, generator=g)

    def log_prob(th, xx):
        return torch.distributions.Normal(xx / 2, sd).log_prob(th).sum(-1)

    x_o = torch.tensor([[0.3, -0.2], [6.0, 6.0]])  # the second is far out in the tails
    post_o = x_o / 2 + sd * torch.randn(500, 2, 2, generator=g)
    return {
        "history": {"train_loss": [3.0, 2.5, 2.2, 2.1], "val_loss": [3.1, 2.6, 2.4, 2.45]},
        "posterior": post_o,
        "parameter_names": NAMES,
        "sbc": dg.sbc(theta, x, draws, parameter_names=NAMES),
        "coverage": dg.expected_coverage(theta, x, draws, log_prob),
        "tarp": dg.tarp(theta, x, draws),
        "contraction": dg.zscore_contraction(
            theta, x, draws, parameter_names=NAMES, prior_variance=torch.ones(2)
        ),
        "ppc": [
            dg.posterior_predictive_check(x_o[b], post_o[:, b], _simulate, output_names=OUTPUTS)
            for b in range(2)
        ],
        "misspecification": dg.mmd_test(x_o, _simulate(torch.randn(400, 2, generator=g), g)),
    }


@pytest.fixture(scope="session")
def calibrated() -> dict:
    return _results(1.0)


@pytest.fixture(scope="session")
def overconfident() -> dict:
    return _results(0.4)
