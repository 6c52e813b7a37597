"""The set-up the direct posterior (NPE) and the surrogate likelihood (NLE) share."""

import math

import pytest
import torch

from sbitk.errors import SbitkError
from sbitk.models.gaussian import ConditionalGaussian
from sbitk.posteriors.base import TrainedEstimator
from sbitk.posteriors.direct import DirectPosterior
from sbitk.posteriors.likelihood import SurrogateLikelihood
from sbitk.simulation.bijections import IdentityBijection
from sbitk.simulation.priors import BoxUniform

PRIOR = BoxUniform(-1.0, 1.0, dim=2)


def roles():
    """A posterior q(θ | x) and a likelihood q(x | θ) over θ in 2-D and x in 3-D."""
    return DirectPosterior(ConditionalGaussian(2, 3), PRIOR), SurrogateLikelihood(
        ConditionalGaussian(3, 2), PRIOR
    )


def test_both_roles_read_the_sizes_the_right_way_round():
    for role in roles():
        assert isinstance(role, TrainedEstimator)
        assert (role.theta_dim, role.x_dim) == (2, 3)
        assert role.parameter_names == ["theta[0]", "theta[1]"]
        assert role.output_names == ["x[0]", "x[1]", "x[2]"]
        assert not role.estimator.training
        assert role.device == torch.device("cpu")
        assert repr(role).startswith(f"{type(role).__name__}(estimator=ConditionalGaussian")


def test_an_estimator_of_the_wrong_size_is_refused_by_role():
    with pytest.raises(SbitkError, match=r"has features=3 for theta but the prior has dim 2"):
        DirectPosterior(ConditionalGaussian(3, 2), PRIOR)
    with pytest.raises(SbitkError, match=r"has context=3 for theta but the prior has dim 2"):
        SurrogateLikelihood(ConditionalGaussian(2, 3), PRIOR)
    with pytest.raises(SbitkError, match="expected 3 x names, got 1"):
        SurrogateLikelihood(ConditionalGaussian(3, 2), PRIOR, output_names=["a"])


def test_the_bijection_follows_the_role():
    """A posterior trained on θ itself needs no map; a likelihood's MCMC always runs in u."""
    direct = DirectPosterior(ConditionalGaussian(2, 3), PRIOR, unconstrained=False)
    likelihood = SurrogateLikelihood(ConditionalGaussian(3, 2), PRIOR, unconstrained=False)
    assert isinstance(direct.bijection, IdentityBijection)
    assert not isinstance(likelihood.bijection, IdentityBijection)


def test_both_roles_check_x_and_theta_alike():
    posterior, likelihood = roles()
    with pytest.raises(SbitkError, match=r"x must have shape \(3,\) or \(B, 3\), got \(2,\)"):
        posterior.sample(1, x=torch.zeros(2))
    with pytest.raises(SbitkError, match=r"x must have shape \(3,\) or \(n_trials, 3\)"):
        likelihood.log_prob(torch.zeros(2), torch.zeros(2))
    for call in (
        lambda: posterior.sample(1, x=torch.tensor([0.0, math.nan, 0.0])),
        lambda: likelihood.log_prob(torch.tensor([0.0, math.inf, 0.0]), torch.zeros(2)),
    ):
        with pytest.raises(SbitkError, match="x must be finite, found NaN or Inf"):
            call()
    for call in (
        lambda theta: posterior.log_prob(theta, x=torch.zeros(3)),
        lambda theta: likelihood.log_prob(torch.zeros(3), theta),
    ):
        with pytest.raises(SbitkError, match=r"theta must have shape \(\*, 2\), got \(\)"):
            call(torch.tensor(0.0))
        with pytest.raises(SbitkError, match=r"theta must have shape \(\*, 2\), got \(4, 3\)"):
            call(torch.zeros(4, 3))
    with pytest.raises(SbitkError, match=r"theta must have shape \(2,\) or \(B, 2\)"):
        likelihood.sample(1, torch.zeros(2, 2, 2))


def test_sampling_and_densities_from_python_follow_the_thread_rule(monkeypatch):
    """A posterior's sample, log_prob and map run on SBITK_THREADS threads, else 1, and leave
    torch's setting as it was (torch's default, one per core, is slower on busy cores)."""
    from sbitk.nn.threads import THREADS_ENV

    posterior, likelihood = roles()
    seen = []
    for role in (posterior.estimator, likelihood.estimator):
        forward = role.forward
        monkeypatch.setattr(role, "forward", lambda *a, f=forward: seen.append(
            torch.get_num_threads()) or f(*a))  # fmt: skip
    before = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        monkeypatch.setenv(THREADS_ENV, "3")
        x, theta = torch.zeros(3), torch.zeros(2)
        posterior.sample(5, x)
        posterior.log_prob(theta, x)
        likelihood.sample(5, theta)
        likelihood.log_prob(x, theta)
        assert seen and set(seen) == {3}
        assert torch.get_num_threads() == 2
        monkeypatch.delenv(THREADS_ENV)
        seen.clear()
        posterior.sample(5, x)
        assert set(seen) == {1} and torch.get_num_threads() == 2
    finally:
        torch.set_num_threads(before)
