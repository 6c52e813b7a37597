"""APT's atomic loss: its value against the formula, one term per ensemble member, and the
posterior it learns from proposal draws where maximum likelihood learns the proposal
posterior."""

import math

import pytest
import torch

from sbitk.errors import SbitkError
from sbitk.inference.apt import AtomicLoss
from sbitk.inference.npe import NPE
from sbitk.inference.training import TrainConfig
from sbitk.models.ensemble import Ensemble
from sbitk.models.gaussian import ConditionalGaussian
from sbitk.simulation.priors import Normal


def log_prior(a):
    return -0.5 * (a**2).sum(-1)


def test_with_every_row_an_atom_the_loss_is_the_softmax_over_the_batch():
    torch.manual_seed(0)
    model = ConditionalGaussian(2, 3, hidden_features=[8]).eval()
    theta, x = torch.randn(6, 2), torch.randn(6, 3)
    loss = AtomicLoss(model, log_prior, atoms=6).eval().loss(theta, x)
    with torch.no_grad():
        logits = torch.stack(
            [model(x[i].expand(6, 3)).log_prob(theta) - log_prior(theta) for i in range(6)]
        )  # row i: log q(θ_j | x_i) - log p(θ_j) for every j
        expected = torch.logsumexp(logits, 1) - logits.diagonal()
    torch.testing.assert_close(loss.detach(), expected)
    # Fewer atoms than rows: each row's loss is over a subset including its own θ, so it is
    # smaller, and the same in eval mode on every call (early stopping watches it).
    atomic = AtomicLoss(model, log_prior, atoms=3).eval()
    three = atomic.loss(theta, x).detach()
    assert (three < expected).all() and torch.equal(three, atomic.loss(theta, x).detach())
    assert torch.equal(atomic.loss(theta[:1], x[:1]), torch.zeros(1))


def test_an_ensemble_gets_one_atomic_loss_per_member():
    torch.manual_seed(0)
    ensemble = Ensemble(2, 3, member="gaussian", members=2, options={"hidden_features": [8]})
    theta, x = torch.randn(8, 2), torch.randn(8, 3)
    both = AtomicLoss(ensemble, log_prior, atoms=4).eval().loss(theta, x)
    parts = [AtomicLoss(m, log_prior, atoms=4).eval().loss(theta, x) for m in ensemble.members]
    torch.testing.assert_close(both, parts[0] + parts[1])


@pytest.mark.parametrize("atoms", [1, 2.5, True])
def test_the_number_of_atoms_is_checked(atoms):
    with pytest.raises(SbitkError, match="atoms must be an integer >= 2"):
        NPE(Normal(0.0, 1.0), estimator="gaussian", atoms=atoms)
    with pytest.raises(SbitkError, match="needs a density"):
        NPE(Normal(0.0, 1.0), estimator="gan", atoms=10)


def test_atoms_learn_the_posterior_from_proposal_draws():
    # θ ~ N(0, 1), x = θ + 0.5 ε: at x = 1 the posterior is N(0.8, 0.447²). Trained on θ drawn
    # from the proposal N(1, 0.5²), maximum likelihood learns the proposal posterior N(1.0,
    # 0.354²); the atomic loss learns the posterior. Over seeds 0-12 the atomic fit's mean was
    # 0.756-0.812 and its standard deviation 0.443-0.500.
    g = torch.Generator().manual_seed(0)
    theta = 1.0 + 0.5 * torch.randn(4000, 1, generator=g)
    x = theta + 0.5 * torch.randn(4000, 1, generator=g)
    fits = {}
    for atoms in (None, 10):
        npe = NPE(Normal(0.0, 1.0), estimator="gaussian", atoms=atoms,
                  config=TrainConfig(progress=False))  # fmt: skip
        draws = npe.fit(theta, x).sample(20_000, x=torch.ones(1), seed=0)
        fits[atoms] = (float(draws.mean()), float(draws.std()))
    assert fits[10][0] == pytest.approx(0.8, abs=0.05)
    assert fits[10][1] == pytest.approx(math.sqrt(0.2), abs=0.06)
    assert fits[None][0] == pytest.approx(1.0, abs=0.05)
    assert fits[None][1] == pytest.approx(math.sqrt(0.125), abs=0.06)
