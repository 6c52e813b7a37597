"""two_moons and slcp: noise laws, the exact two_moons posterior, the shipped reference samples."""

import math

import pytest
import torch
from sbitk_simulators import observations
from sbitk_simulators.slcp import mean_and_covariance
from sbitk_simulators.two_moons import inverse_noise, mean_function, two_moons_posterior
from scipy import stats
from simulator_stats import K, assert_covariance, assert_mean, sbc_pvalues

from sbitk import get_simulator
from sbitk.errors import ObservationError

N = 20_000


def _assert_two_moons_noise(p: torch.Tensor) -> None:
    """p (n, 2) is the two_moons noise: radius N(0.1, 0.01²) around (0.25, 0), angle U(±π/2)."""
    u, v = p[:, 0].double() - 0.25, p[:, 1].double()
    assert (u >= -1e-6).all()  # the noise only covers the right half circle
    radius = (u**2 + v**2).sqrt()
    angle = torch.atan2(v, u)
    assert_mean(radius[:, None], [0.1])
    assert_covariance(radius[:, None], [[0.01**2]])
    assert stats.kstest(angle.numpy(), stats.uniform(-math.pi / 2, math.pi).cdf).pvalue > 1e-3


def test_two_moons_noise_is_recovered_by_the_inverse():
    sim = get_simulator("two_moons")
    theta = torch.tensor([0.3, -0.6])
    x = sim(theta.expand(N, 2), torch.Generator().manual_seed(0))
    _assert_two_moons_noise(inverse_noise(theta.expand(N, 2), x))


def test_two_moons_mean_function_is_a_folded_rotation():
    theta = torch.tensor([[0.5, 0.5], [-0.5, -0.5], [1.0, 0.0], [0.0, 1.0]])
    h = math.sqrt(0.5)
    expected = torch.tensor([[-h, 0.0], [-h, 0.0], [-h, -h], [-h, h]])
    assert torch.allclose(mean_function(theta), expected)


def test_two_moons_posterior_samples_reproduce_the_observation():
    """Each posterior sample θ maps x_o back to a noise point the simulator can draw, and the
    points have the noise's own law (the prior box does not bind at observation 1)."""
    x_o = observations.load_observation("two_moons", 1)
    theta = two_moons_posterior(x_o, N, torch.Generator().manual_seed(1))
    _assert_two_moons_noise(inverse_noise(theta.double(), x_o.double()))
    # Both crescents are present: θ and its reflection through the fold are equally likely.
    fold = theta.sum(-1) > 0
    assert abs(fold.double().mean().item() - 0.5) < K * 0.5 / math.sqrt(N)


def test_two_moons_posterior_is_calibrated():
    sim = get_simulator("two_moons")
    p = sbc_pvalues(sim.prior, sim, sim.reference_posterior, trials=400, draws=99, seed=2)
    assert p.min() > 1e-3 / 2, p


@pytest.mark.parametrize("k", range(1, 11))
def test_two_moons_posterior_agrees_with_sbibm_reference(k):
    x_o = observations.load_observation("two_moons", k)
    ours = two_moons_posterior(x_o, 10_000, torch.Generator().manual_seed(k)).double()
    ref = observations.load_reference_posterior("two_moons", k).double()
    z = (ours.mean(0) - ref.mean(0)) / ((ours.var(0) + ref.var(0)) / 10_000).sqrt()
    assert z.abs().max() < K, z
    for d in range(2):
        assert stats.ks_2samp(ours[:, d].numpy(), ref[:, d].numpy()).pvalue > 1e-4


def test_two_moons_posterior_refuses_impossible_observations():
    with pytest.raises(ObservationError, match="impossible"):
        two_moons_posterior(torch.tensor([5.0, 5.0]), 10, torch.Generator(), max_rounds=3)
    with pytest.raises(ObservationError, match="2 finite numbers"):
        two_moons_posterior(torch.zeros(3), 10, torch.Generator())


def test_slcp_points_have_the_defined_mean_and_covariance():
    theta = observations.load_true_parameters("slcp", 1)
    x = get_simulator("slcp")(theta.expand(N, 5), torch.Generator().manual_seed(3))
    m, cov = mean_and_covariance(theta.double())
    # By hand from the definition: s = θ₃², θ₄², ρ = tanh θ₅, ε = 10⁻⁶.
    s1, s2, rho = theta[2].double() ** 2, theta[3].double() ** 2, math.tanh(theta[4])
    by_hand = torch.tensor([[s1**2 + 1e-6, rho * s1 * s2], [rho * s1 * s2, s2**2 + 1e-6]])
    assert torch.allclose(cov, by_hand.double())
    assert_mean(x, m.repeat(4))
    # The four points are independent draws: the covariance of x is block diagonal.
    assert_covariance(x, torch.block_diag(cov, cov, cov, cov))


def test_slcp_observations_are_plausible():
    """Σ over points and observations of the squared Mahalanobis distance is χ²₈₀."""
    total = 0.0
    for k in range(1, 11):
        x_o = observations.load_observation("slcp", k).double().reshape(4, 2)
        m, cov = mean_and_covariance(observations.load_true_parameters("slcp", k).double())
        d = x_o - m
        total += float((d @ torch.linalg.inv(cov) * d).sum())
    assert stats.chi2(80).ppf(1e-4) < total < stats.chi2(80).ppf(1 - 1e-4)


@pytest.mark.parametrize("k", [1, 5, 10])
def test_slcp_reference_posterior_is_in_the_prior_and_sign_symmetric(k):
    ref = observations.load_reference_posterior("slcp", k)
    assert ref.shape == (10_000, 5) and ref.dtype == torch.float32
    assert bool(get_simulator("slcp").prior.support_contains(ref).all())
    # The likelihood depends on θ₃ and θ₄ through their squares only.
    for d in (2, 3):
        share = (ref[:, d] > 0).double().mean().item()
        assert abs(share - 0.5) < K * 0.5 / 100
    # The true θ, folded onto θ₃, θ₄ > 0, lies inside the bulk of the folded samples.
    folded = ref.clone()
    folded[:, 2:4] = folded[:, 2:4].abs()
    truth = observations.load_true_parameters("slcp", k).clone()
    truth[2:4] = truth[2:4].abs()
    rank = (folded < truth).double().mean(0)
    assert ((rank > 1e-3) & (rank < 1 - 1e-3)).all(), rank
