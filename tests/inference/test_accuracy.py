"""Accuracy against reference posteriors, following the C2ST protocol of sbibm (0.5 is perfect).

Budgets as in the issue: 10,000 simulations, fixed seeds, observation 1 of each task. The
classifier test runs on fewer samples than sbibm's 10,000 per side (2,000, and 1,000 in ten
dimensions) to keep the suite fast; the bounds are the issue's, unchanged. BLAS is held to one
thread around the classifier: scikit-learn's MLP is several times slower with two threads
competing for two cores. NPE on two_moons is checked with the defaults of ``sbitk run`` (an
ensemble of spline flows), in tests/test_workflow.py, to a tighter bound.
"""

import dataclasses

import pytest
import torch
from threadpoolctl import threadpool_limits

import sbitk
from sbitk.diagnostics.c2st import c2st
from sbitk.inference.nle import NLE
from sbitk.inference.npe import NPE
from sbitk.inference.training import TrainConfig
from sbitk.posteriors.mcmc import MCMCConfig

observations = pytest.importorskip("sbitk_simulators.observations")

pytestmark = pytest.mark.slow
CONFIG = TrainConfig(progress=False, seed=0)


def bank(task: str, n: int = 10_000, seed: int = 0):
    sim = sbitk.get_simulator(task)
    g = torch.Generator().manual_seed(seed)
    theta = sim.prior.sample(n, g)
    return sim, theta, sim(theta, g)


def accuracy(task: str, samples: torch.Tensor, n: int) -> float:
    reference = observations.load_reference_posterior(task, 1)[:n]
    with threadpool_limits(1):
        return c2st(reference, samples[:n], seed=0).accuracy


@pytest.mark.parametrize("estimator", ["nsf", "realnvp"])
def test_gaussian_linear_npe_c2st_at_most_0_60(estimator):
    # Spline couplings fit this ten-dimensional linear problem only with conditioners that
    # start linear in the context and bin logits scaled down (both NSF defaults); with plain
    # MLP conditioners and unscaled bins they overfit 10,000 simulations (C2ST 0.65 measured).
    sim, theta, x = bank("gaussian_linear")
    posterior = NPE(sim.prior, estimator, config=CONFIG).fit(theta, x)
    samples = posterior.sample(1000, x=observations.load_observation("gaussian_linear", 1), seed=1)
    assert accuracy("gaussian_linear", samples, 1000) <= 0.60


def test_two_moons_nle_c2st_at_most_0_65():
    # 40 epochs of the 119 that the training rule takes here (its best epoch 110): C2ST 0.507
    # against 0.492 with the whole training, in a third of the time. 20 and 30 epochs gave 0.510
    # and 0.550; a likelihood or a sampler that is wrong scores well above the bound.
    sim, theta, x = bank("two_moons")
    mcmc = MCMCConfig(progress=False, seed=1)
    config = dataclasses.replace(CONFIG, max_epochs=40)
    posterior = NLE(sim.prior, "nsf", config=config, mcmc=mcmc).fit(theta, x)
    samples = posterior.sample(2000, x=observations.load_observation("two_moons", 1))
    assert sim.prior.support_contains(samples).all()
    # The crescents are two separate modes here: chains rarely cross between them (R-hat is
    # large across chains), but initialisation by importance resampling puts chains in each
    # mode in proportion, so the pooled samples are right.
    assert posterior.last_result.ess.min() > 100
    assert accuracy("two_moons", samples, 2000) <= 0.65
